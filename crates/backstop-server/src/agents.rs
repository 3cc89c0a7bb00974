//! The agent API (`backstop.agent.v1.AgentService`) and the watchdog that
//! fails the tasks of agents that stop sending heartbeats.
//!
//! Agents poll for tasks, report progress and complete tasks; every report
//! moves the task, the operation's metadata and the resource's status
//! together. Repository objects pass through unchanged: agents encode and
//! encrypt chunks themselves, the server only stores bytes under keys.

use std::{sync::Arc, time::Duration};

use backstop_catalog::{
    Archive, Backup, BackupType, Catalog, CatalogError, Disk, InitStatus, Resource, ResourceStatus,
    ResourceType, Task, TaskCode, TaskStatus, TaskType, Volume,
};
use backstop_chunkstore::{Backend, ObjectKey, PutMode, PutOutcome};
use backstop_proto::agent::{
    self as pb, agent_service_server::AgentService, complete_task_request, task::Work,
};
use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tonic::{Code, Request, Response, Status};

use crate::{
    operations::{empty_response, OperationRegistry},
    services::caller,
    tasks::{percent, TaskPayload},
    ApiError,
};

/// Maximum time a PollTask call waits for a task.
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

/// How often the watchdog looks for silent agents.
const WATCHDOG_PERIOD: Duration = Duration::from_secs(1);

/// Shared state of the agent API.
pub struct AgentHub {
    pub catalog: Arc<dyn Catalog>,
    pub operations: Arc<OperationRegistry>,
    pub backend: Arc<dyn Backend>,
    /// Wakes PollTask calls when a task is enqueued.
    pub task_enqueued: Notify,
    /// An agent silent for longer is offline and its task fails.
    pub heartbeat_timeout: Duration,
    /// Whether the repository encrypts chunks, as archives report it.
    pub encrypted: bool,
}

/// The gRPC face of [`AgentHub`].
///
/// NOTE: only Register checks the caller's folders. Every other call trusts
/// any caller the API layer authenticated to speak for the instance it
/// names; per-agent credentials are not built yet.
pub struct AgentApi(pub Arc<AgentHub>);

fn internal(error: impl Into<anyhow::Error>) -> Status {
    ApiError::Internal(error.into()).into()
}

fn instance_disks(disks: &[pb::DiskInfo]) -> Vec<backstop_catalog::InstanceDisk> {
    disks
        .iter()
        .map(|d| backstop_catalog::InstanceDisk {
            name: d.name.clone(),
            size: d.size,
            device_model: d.device_model.clone(),
        })
        .collect()
}

/// Returns the reply to an agent that reports on a task that has already
/// ended, with the reason the server recorded.
fn task_ended(task: &Task) -> Status {
    let reason = if task.error.is_empty() {
        format!("it ended with result {:?}", task.result_code)
    } else {
        task.error.clone()
    };
    Status::failed_precondition(format!(
        "task {} has already ended: {reason}; stop working on it",
        task.id
    ))
}

fn object_key(key: &str) -> Result<ObjectKey, Status> {
    ObjectKey::new(key).map_err(|e| ApiError::invalid_field("key", e.to_string()).into())
}

impl AgentHub {
    /// Ends a task and its operation and returns the resource to idle.
    pub async fn end_task(
        &self,
        task: &Task,
        result: Result<(), (Code, String)>,
    ) -> Result<(), ApiError> {
        let code = match &result {
            Ok(()) => TaskCode::Ok,
            Err((Code::Cancelled, _)) => TaskCode::Cancelled,
            Err((Code::Unavailable, _)) => TaskCode::Abandoned,
            Err(_) => TaskCode::Error,
        };
        let message = result.as_ref().err().map(|(_, m)| m.as_str()).unwrap_or("");
        self.catalog.finish_task(task.id, code, message).await?;
        if result.is_ok() {
            // Progress reports travel apart from the completion, so the last
            // one may not have arrived; a finished task is at 100 percent.
            if let Ok(payload) = TaskPayload::from_json(&task.payload) {
                self.operations
                    .set_metadata_any(
                        &task.operation_id,
                        payload.metadata(&task.compute_instance_id, 100.0),
                    )
                    .await?;
            }
        }
        let details = match &result {
            Ok(()) => String::new(),
            Err((_, message)) => message.clone(),
        };
        if let Err(error) = self
            .catalog
            .set_resource_status(&task.compute_instance_id, ResourceStatus::Idle, 0, &details)
            .await
        {
            tracing::warn!(error = ?error, instance = %task.compute_instance_id, "cannot reset the resource status");
        }
        // A failed backup's chunks are kept for the next one, which skips
        // them, so they are made durable now rather than with a later backup.
        if let Err(error) = self.backend.flush().await {
            tracing::warn!(%error, task_id = task.id, "cannot make the task's chunks durable");
        }
        self.operations
            .finish(&task.operation_id, result.map(|()| empty_response()))
            .await?;
        Ok(())
    }

    /// Fails the running tasks of agents whose heartbeat stopped, once per
    /// [`WATCHDOG_PERIOD`], forever.
    pub async fn run_watchdog(self: Arc<Self>) {
        let mut tick = tokio::time::interval(WATCHDOG_PERIOD);
        loop {
            tick.tick().await;
            let before = OffsetDateTime::now_utc() - self.heartbeat_timeout;
            let silent = match self.catalog.mark_silent_offline(before).await {
                Ok(silent) => silent,
                Err(error) => {
                    tracing::warn!(error = ?error, "watchdog cannot read heartbeats; retrying");
                    continue;
                }
            };
            for instance in silent {
                tracing::warn!(instance = %instance, "agent stopped sending heartbeats; instance is offline");
                let task = match self.catalog.active_task(&instance).await {
                    Ok(Some(task)) => task,
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::warn!(error = ?error, instance = %instance, "cannot read the instance's task");
                        continue;
                    }
                };
                let message = format!(
                    "the agent of instance {instance} stopped sending heartbeats for {} s, so its {} did not \
                     finish; check that the agent runs and can reach the server, then start the operation again",
                    self.heartbeat_timeout.as_secs(),
                    match task.task_type {
                        TaskType::Recovery => "recovery",
                        _ => "backup",
                    }
                );
                if let Err(error) = self
                    .end_task(&task, Err((Code::Unavailable, message)))
                    .await
                {
                    tracing::error!(error = ?error, task_id = task.id, "cannot fail the task of a silent agent");
                }
            }
        }
    }

    /// Puts back in the queue the task a previous run of this instance's
    /// agent was running when it stopped: a recovery resumes from its last
    /// reported position, a backup starts again and reuses the chunks it
    /// already stored.
    async fn requeue_interrupted(&self, instance: &str) -> Result<(), ApiError> {
        let Some(task) = self.catalog.active_task(instance).await? else {
            return Ok(());
        };
        if task.status == backstop_catalog::TaskStatus::Enqueued {
            return Ok(());
        }
        let payload = match TaskPayload::from_json(&task.payload)? {
            TaskPayload::Recovery(mut recovery) => {
                recovery.resume_offset = task.progress_current;
                TaskPayload::Recovery(recovery)
            }
            backup => backup,
        };
        self.catalog
            .requeue_task(task.id, &payload.to_json())
            .await?;
        tracing::warn!(
            task_id = task.id,
            operation_id = %task.operation_id,
            resume_offset = task.progress_current,
            "the agent restarted during a task; the task is queued again"
        );
        self.task_enqueued.notify_waiters();
        Ok(())
    }

    async fn task_for(&self, instance: &str, task_id: i64) -> Result<Task, Status> {
        let task = self
            .catalog
            .get_task(task_id)
            .await
            .map_err(ApiError::from)?;
        if task.compute_instance_id != instance {
            return Err(ApiError::NotFound(format!(
                "task {task_id} of instance {instance} not found"
            ))
            .into());
        }
        Ok(task)
    }

    async fn complete_backup(&self, task: &Task, result: pb::BackupResult) -> Result<(), ApiError> {
        let TaskPayload::Backup(payload) = TaskPayload::from_json(&task.payload)? else {
            return Err(ApiError::FailedPrecondition(format!(
                "task {} is not a backup",
                task.id
            )));
        };
        let now = OffsetDateTime::now_utc();
        let resource = self.catalog.get_resource(&task.compute_instance_id).await?;
        let disks: Vec<Disk> = result
            .disks
            .iter()
            .map(|d| Disk {
                device_model: d.device_model.clone(),
                name: d.name.clone(),
                size: d.size,
                volumes: d
                    .volumes
                    .iter()
                    .map(|v| Volume {
                        free_space: 0,
                        is_bootable: v.is_bootable,
                        is_system: v.is_system,
                        name: v.name.clone(),
                        size: v.size,
                        mount_strid: String::new(),
                    })
                    .collect(),
            })
            .collect();
        let original_size: i64 = disks.iter().map(|d| d.size).sum();

        let mut archive = match self.catalog.get_archive(&payload.archive_id).await {
            Ok(archive) => archive,
            Err(CatalogError::NotFound { .. }) => Archive {
                id: payload.archive_id.clone(),
                name: format!("{}-{}", task.compute_instance_id, payload.policy_name),
                folder_id: payload.folder_id.clone(),
                compute_instance_id: task.compute_instance_id.clone(),
                resource_id: resource.resource_id.clone(),
                policy_id: payload.policy_id.clone(),
                policy_name: payload.policy_name.clone(),
                size: 0,
                compressed_data_size: 0,
                data_size: 0,
                original_data_size: 0,
                logical_size: 0,
                format: 3,
                created_at: now,
                updated_at: now,
                last_backup_created_at: None,
                last_seen_at: None,
                encrypted: self.encrypted,
                deleted: false,
            },
            Err(error) => return Err(error.into()),
        };
        // Archive sizes add up what each backup stored, so they show the
        // archive's share of the repository after deduplication.
        archive.size += result.stored_bytes;
        archive.compressed_data_size += result.stored_bytes;
        archive.data_size += result.data_bytes;
        archive.original_data_size += original_size;
        archive.logical_size = archive.logical_size.max(original_size);
        archive.updated_at = now;
        archive.last_backup_created_at = Some(now);
        archive.last_seen_at = Some(now);

        // `size` and `deduplicated_size` are what this backup added to the
        // repository; `backed_up_data_size` the data it captured, holes
        // excluded; `original_data_size` the disks' capacity.
        let backup = Backup {
            id: payload.backup_id.clone(),
            archive_id: payload.archive_id.clone(),
            folder_id: payload.folder_id.clone(),
            compute_instance_id: task.compute_instance_id.clone(),
            resource_id: resource.resource_id.clone(),
            policy_id: payload.policy_id.clone(),
            created_at: now,
            last_seen_at: now,
            size: result.stored_bytes,
            deduplicated_size: result.stored_bytes,
            backed_up_data_size: result.data_bytes,
            original_data_size: original_size,
            backup_type: if payload.full {
                BackupType::Full
            } else {
                BackupType::Incremental
            },
            disks,
            deleted: false,
        };
        self.catalog.record_backup(&archive, &backup).await?;

        let mut resource = resource;
        resource.last_backup_time = Some(now);
        resource.updated_at = now;
        self.catalog.upsert_resource(&resource).await?;
        tracing::info!(backup_id = %backup.id, instance = %backup.compute_instance_id, stored_bytes = backup.size, "backup recorded");
        Ok(())
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    #[tracing::instrument(skip_all, fields(instance = %request.get_ref().compute_instance_id))]
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let now = OffsetDateTime::now_utc();
        let mut request = request;
        if !request.registration_token.is_empty() {
            let token =
                match self
                    .0
                    .catalog
                    .get_registration_token(&request.registration_token)
                    .await
                {
                    Ok(token) => token,
                    Err(CatalogError::NotFound { .. }) => return Err(ApiError::invalid_field(
                        "registration_token",
                        "unknown token; get one with ResourceService.GetInstanceRegistrationToken",
                    )
                    .into()),
                    Err(error) => return Err(ApiError::from(error).into()),
                };
            if token.expires_at < now {
                return Err(ApiError::invalid_field(
                    "registration_token",
                    "the token has expired; get a new one with ResourceService.GetInstanceRegistrationToken",
                )
                .into());
            }
            if !request.folder_id.is_empty() && request.folder_id != token.folder_id {
                return Err(ApiError::invalid_field(
                    "folder_id",
                    format!(
                        "the registration token is for folder {}, not {}",
                        token.folder_id, request.folder_id
                    ),
                )
                .into());
            }
            request.folder_id = token.folder_id;
            if request.compute_instance_id.is_empty() {
                request.compute_instance_id = backstop_catalog::new_api_id();
            }
        }
        if request.compute_instance_id.is_empty() {
            return Err(ApiError::invalid_field(
                "compute_instance_id",
                "required unless a registration token is given",
            )
            .into());
        }
        let resource = match self
            .0
            .catalog
            .get_resource(&request.compute_instance_id)
            .await
        {
            Ok(resource) => {
                caller.check_folder(&resource.folder_id)?;
                resource
            }
            Err(CatalogError::NotFound { .. }) => {
                if request.folder_id.is_empty() {
                    return Err(ApiError::invalid_field(
                        "folder_id",
                        format!(
                            "instance {} is new, so give the folder it belongs to",
                            request.compute_instance_id
                        ),
                    )
                    .into());
                }
                caller.check_folder(&request.folder_id)?;
                let resource = Resource {
                    compute_instance_id: request.compute_instance_id.clone(),
                    resource_id: backstop_catalog::new_api_id(),
                    folder_id: request.folder_id.clone(),
                    created_at: now,
                    updated_at: now,
                    online: true,
                    enabled: true,
                    status: ResourceStatus::Idle,
                    status_details: String::new(),
                    status_progress: 0,
                    last_backup_time: None,
                    next_backup_time: None,
                    init_status: InitStatus::Registered,
                    metadata: serde_json::json!({ "hostname": request.hostname }).to_string(),
                    resource_type: ResourceType::ExternalVm,
                    agent_version: request.agent_version.clone(),
                    last_heartbeat_at: Some(now),
                };
                self.0
                    .catalog
                    .upsert_resource(&resource)
                    .await
                    .map_err(ApiError::from)?;
                tracing::info!(folder_id = %resource.folder_id, "instance registered");
                resource
            }
            Err(error) => return Err(ApiError::from(error).into()),
        };
        self.0
            .catalog
            .record_heartbeat(&resource.compute_instance_id, now, &request.agent_version)
            .await
            .map_err(ApiError::from)?;
        self.0
            .catalog
            .set_instance_disks(
                &resource.compute_instance_id,
                &instance_disks(&request.disks),
            )
            .await
            .map_err(ApiError::from)?;
        self.0
            .requeue_interrupted(&resource.compute_instance_id)
            .await?;
        Ok(Response::new(pb::RegisterResponse {
            compute_instance_id: resource.compute_instance_id,
            resource_id: resource.resource_id,
            heartbeat_interval_ms: (self.0.heartbeat_timeout.as_millis() / 4) as i64,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let instance = &request.compute_instance_id;
        self.0
            .catalog
            .record_heartbeat(instance, OffsetDateTime::now_utc(), &request.agent_version)
            .await
            .map_err(ApiError::from)?;
        self.0
            .catalog
            .set_instance_disks(instance, &instance_disks(&request.disks))
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    async fn poll_task(
        &self,
        request: Request<pb::PollTaskRequest>,
    ) -> Result<Response<pb::PollTaskResponse>, Status> {
        let request = request.into_inner();
        let wait = Duration::from_millis(request.wait_ms.max(0) as u64).min(MAX_POLL_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register for the wake-up before looking, so a task enqueued in
            // between is not missed.
            let notified = self.0.task_enqueued.notified();
            if let Some(task) = self
                .0
                .catalog
                .claim_next_task(&request.compute_instance_id)
                .await
                .map_err(ApiError::from)?
            {
                let work = match TaskPayload::from_json(&task.payload).map_err(internal)? {
                    TaskPayload::Backup(p) => Work::Backup(pb::BackupWork {
                        backup_id: p.backup_id.clone(),
                        compression: p.compression,
                        chunk_size: p.chunk_size,
                        previous_manifest_id: p.previous_backup_id.unwrap_or_default(),
                        manifest_id: p.backup_id,
                    }),
                    TaskPayload::Recovery(p) => Work::Recovery(pb::RecoveryWork {
                        backup_id: p.backup_id.clone(),
                        manifest_id: p.backup_id,
                        resume_offset: p.resume_offset,
                        disk_mapping: Default::default(),
                    }),
                };
                tracing::info!(task_id = task.id, operation_id = %task.operation_id, "task assigned to agent");
                return Ok(Response::new(pb::PollTaskResponse {
                    task: Some(pb::Task {
                        task_id: task.id,
                        operation_id: task.operation_id,
                        work: Some(work),
                    }),
                }));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Response::new(pb::PollTaskResponse { task: None }));
            }
        }
    }

    async fn report_progress(
        &self,
        request: Request<pb::ReportProgressRequest>,
    ) -> Result<Response<pb::ReportProgressResponse>, Status> {
        let request = request.into_inner();
        let task = self
            .0
            .task_for(&request.compute_instance_id, request.task_id)
            .await?;
        let task = self
            .0
            .catalog
            .update_task_progress(task.id, request.current, request.total)
            .await
            .map_err(ApiError::from)?;
        // The update leaves an ended task unchanged. The agent learns from
        // this reply that it must stop, and why, before it writes anything.
        if task.status == TaskStatus::Completed {
            return Err(task_ended(&task));
        }
        let payload = TaskPayload::from_json(&task.payload).map_err(internal)?;
        let done = percent(task.progress_current, task.progress_total);
        let operation = self
            .0
            .operations
            .set_metadata_any(
                &task.operation_id,
                payload.metadata(&task.compute_instance_id, done),
            )
            .await?;
        let status = match task.task_type {
            TaskType::Recovery => ResourceStatus::Recovering,
            _ => ResourceStatus::Backuping,
        };
        self.0
            .catalog
            .set_resource_progress(&task.compute_instance_id, task.id, status, done as i64)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ReportProgressResponse {
            cancel_requested: operation.cancel_requested || operation.done,
        }))
    }

    #[tracing::instrument(skip_all, fields(task_id = request.get_ref().task_id))]
    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let request = request.into_inner();
        let task = self
            .0
            .task_for(&request.compute_instance_id, request.task_id)
            .await?;
        if task.status == TaskStatus::Completed {
            return Err(task_ended(&task));
        }
        let outcome = match request.result {
            Some(complete_task_request::Result::Backup(result)) => {
                match self.0.complete_backup(&task, result).await {
                    Ok(()) => Ok(()),
                    Err(error) => {
                        tracing::error!(error = ?error, "recording the backup failed");
                        Err((Code::Internal, "the backup was taken but recording it in the catalog failed; see the server log".to_owned()))
                    }
                }
            }
            Some(complete_task_request::Result::Recovery(result)) => {
                tracing::info!(
                    bytes_written = result.bytes_written,
                    bytes_identical = result.bytes_identical,
                    "recovery finished"
                );
                Ok(())
            }
            Some(complete_task_request::Result::Error(error)) => {
                let code = Code::from_i32(error.code);
                Err((
                    if code == Code::Ok {
                        Code::Unknown
                    } else {
                        code
                    },
                    error.message,
                ))
            }
            None => return Err(ApiError::invalid_field("result", "required").into()),
        };
        self.0.end_task(&task, outcome).await?;
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn put_object(
        &self,
        request: Request<pb::PutObjectRequest>,
    ) -> Result<Response<pb::PutObjectResponse>, Status> {
        let request = request.into_inner();
        let key = object_key(&request.key)?;
        let mode = if request.create_only {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        let outcome = self
            .0
            .backend
            .put(&key, Bytes::from(request.data), mode)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::PutObjectResponse {
            already_existed: matches!(outcome, PutOutcome::AlreadyExists),
        }))
    }

    async fn get_object(
        &self,
        request: Request<pb::GetObjectRequest>,
    ) -> Result<Response<pb::GetObjectResponse>, Status> {
        let request = request.into_inner();
        let key = object_key(&request.key)?;
        match self.0.backend.get(&key).await {
            // The backend's buffer usually has no other owner, so this
            // conversion takes it over without copying.
            Ok(data) => Ok(Response::new(pb::GetObjectResponse {
                data: Vec::from(data),
            })),
            Err(error) if error.is_not_found() => Err(Status::not_found(format!(
                "repository object {} not found",
                request.key
            ))),
            Err(error) => Err(internal(error)),
        }
    }

    async fn objects_exist(
        &self,
        request: Request<pb::ObjectsExistRequest>,
    ) -> Result<Response<pb::ObjectsExistResponse>, Status> {
        let request = request.into_inner();
        let keys = request
            .keys
            .iter()
            .map(|k| object_key(k))
            .collect::<Result<Vec<_>, _>>()?;
        let exists = self.0.backend.exists_many(&keys).await.map_err(internal)?;
        Ok(Response::new(pb::ObjectsExistResponse { exists }))
    }

    async fn object_size(
        &self,
        request: Request<pb::ObjectSizeRequest>,
    ) -> Result<Response<pb::ObjectSizeResponse>, Status> {
        let request = request.into_inner();
        let key = object_key(&request.key)?;
        match self.0.backend.size(&key).await {
            Ok(size) => Ok(Response::new(pb::ObjectSizeResponse { size: size as i64 })),
            Err(error) if error.is_not_found() => Err(Status::not_found(format!(
                "repository object {} not found",
                request.key
            ))),
            Err(error) => Err(internal(error)),
        }
    }
}
