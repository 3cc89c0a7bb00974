//! Starting a backup of an instance: the checks made before an operation
//! exists, and the operation with its agent task.

use backstop_catalog::{
    ArchiveScope, BackupQuery, BackupSelector, NewTask, Operation, PageRequest, Resource,
    SortOrder, TaskType,
};

use crate::{
    auth::Caller,
    operations::OperationRequest,
    services::ApiContext,
    tasks::{BackupPayload, TaskPayload, PAYLOAD_VERSION},
    ApiError,
};

/// Chunk size of disk backups: 4 MiB, a common choice for VM images.
const CHUNK_SIZE: u32 = 4 * 1024 * 1024;

/// Checks that an instance's agent is online and runs no other task, as a
/// new backup or recovery requires.
pub async fn check_instance_ready(ctx: &ApiContext, resource: &Resource) -> Result<(), ApiError> {
    let instance = &resource.compute_instance_id;
    if !resource.online {
        return Err(ApiError::FailedPrecondition(format!(
            "the agent of instance {instance} is offline; start the agent and wait until the instance shows online"
        )));
    }
    if let Some(task) = ctx.catalog.active_task(instance).await? {
        return Err(ApiError::FailedPrecondition(format!(
            "instance {instance} is busy with operation {} ({}); wait for it to finish or cancel it",
            task.operation_id,
            if task.task_type == TaskType::Recovery { "a recovery" } else { "a backup" }
        )));
    }
    Ok(())
}

/// Instance and policy of a backup that [`start_backup`] starts.
pub struct BackupRequest<'a> {
    pub method: &'a str,
    pub idempotency_key: Option<String>,
    pub policy_id: &'a str,
    pub policy_name: &'a str,
    /// A `PolicySettings.Compression` number.
    pub compression: i32,
    pub compute_instance_id: &'a str,
}

/// Checks that the instance can take a backup now and records the operation
/// with its task. A repeated idempotency key returns the earlier operation.
pub async fn start_backup(
    ctx: &ApiContext,
    caller: &Caller,
    request: BackupRequest<'_>,
) -> Result<Operation, ApiError> {
    // A retried call must get its first operation back even though that
    // operation now keeps the instance busy.
    let key = request.idempotency_key.as_deref();
    if let Some(operation) = ctx
        .operations
        .find_earlier(caller, request.method, key)
        .await?
    {
        return Ok(operation);
    }

    let instance = request.compute_instance_id;
    let resource = ctx.catalog.get_resource(instance).await?;
    caller.check_folder(&resource.folder_id)?;
    check_instance_ready(ctx, &resource).await?;

    let archives = ctx
        .catalog
        .list_archives(&ArchiveScope::Instance(instance.to_owned()))
        .await?;
    let archive = archives.iter().find(|a| a.policy_id == request.policy_id);
    let previous = match archive {
        Some(archive) => ctx
            .catalog
            .list_backups(&BackupQuery {
                selector: BackupSelector::Archive {
                    archive_id: archive.id.clone(),
                    folder_id: archive.folder_id.clone(),
                },
                order: SortOrder::Descending,
                created_at: Vec::new(),
                page: PageRequest {
                    size: 1,
                    token: None,
                },
            })
            .await?
            .items
            .into_iter()
            .next(),
        None => None,
    };
    let payload = TaskPayload::Backup(BackupPayload {
        version: PAYLOAD_VERSION,
        backup_id: backstop_catalog::new_api_id(),
        archive_id: archive
            .map(|a| a.id.clone())
            .unwrap_or_else(backstop_catalog::new_api_id),
        folder_id: resource.folder_id.clone(),
        policy_id: request.policy_id.to_owned(),
        policy_name: request.policy_name.to_owned(),
        compression: request.compression,
        chunk_size: CHUNK_SIZE,
        full: previous.is_none(),
        previous_backup_id: previous.map(|b| b.id),
    });

    let metadata = backstop_proto::backup::ExecuteMetadata {
        policy_id: request.policy_id.to_owned(),
        compute_instance_id: instance.to_owned(),
        progress_percentage: 0.0,
    };
    let created = ctx
        .operations
        .create_with_task(
            caller,
            OperationRequest {
                method: request.method,
                idempotency_key: request.idempotency_key,
                description: format!(
                    "Back up instance {instance} with policy {}",
                    request.policy_name
                ),
                metadata: &metadata,
                resource_id: Some(instance.to_owned()),
            },
            NewTask {
                compute_instance_id: instance.to_owned(),
                policy_id: request.policy_id.to_owned(),
                task_type: TaskType::Backup,
                payload: payload.to_json(),
            },
        )
        .await?;
    ctx.agents.task_enqueued.notify_waiters();
    Ok(created.operation)
}
