//! The agent's main loop: register, heartbeat, poll, run tasks.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use backstop_chunkstore::{Compression, Credentials, DiskBackupManifest, ManifestId, Repository};
use backstop_engine::{BackupOptions, CancellationToken, Progress};
use backstop_proto::agent::{
    agent_service_client::AgentServiceClient, complete_task_request, task::Work, BackupDisk,
    BackupResult, BackupVolume, BackupWork, CompleteTaskRequest, DiskInfo, HeartbeatRequest,
    PollTaskRequest, RegisterRequest, ReportProgressRequest, TaskError,
};
use tonic::{
    metadata::MetadataValue,
    service::Interceptor,
    transport::{Certificate, ClientTlsConfig, Endpoint},
    Code, Request, Status,
};

use crate::{remote::Client, AgentConfig, RemoteBackend};

/// How long one PollTask call waits on the server.
const POLL_WAIT_MS: i64 = 10_000;

/// Attempts to report a task's end while the server is unavailable; with
/// the backoff capped at 5 s this covers about five minutes.
const COMPLETE_ATTEMPTS: usize = 64;

/// Minimum time between two progress reports of one task.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Largest agent API message; matches the server's limit.
const MESSAGE_LIMIT: usize = 65 * 1024 * 1024;

/// HTTP/2 receive window of each call, in bytes: room for a whole stored
/// chunk (4 MiB by default). hyper 1.x's client default is 2 MiB, so the
/// server would wait for a window update in the middle of most chunks.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;

/// HTTP/2 receive window of the whole connection, in bytes. A restore
/// fetches up to 8 chunks at once, and hyper's default of 5 MiB has room for about
/// one.
const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct AuthInterceptor(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A task's failure as the agent reports it.
pub(crate) struct TaskFailure {
    pub(crate) code: Code,
    pub(crate) message: String,
}

/// Runs the agent until `shutdown` resolves.
pub async fn run_agent(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let problems = config.problems();
    if !problems.is_empty() {
        anyhow::bail!("invalid agent configuration:\n  {}", problems.join("\n  "));
    }
    let client = connect(&config).await?;
    let instance = config.compute_instance_id.clone();

    let registered = register(&client, &config).await?;
    let interval = Duration::from_millis(registered.heartbeat_interval_ms.max(200) as u64);
    tracing::info!(instance = %instance, server = %config.server, "agent registered");

    let heartbeats = tokio::spawn(heartbeat_loop(client.clone(), config.clone(), interval));
    let backend = Arc::new(RemoteBackend::new(
        client.clone(),
        &instance,
        &config.server,
    ));
    let work = async {
        let mut repository: Option<Repository> = None;
        loop {
            let polled = client
                .clone()
                .poll_task(PollTaskRequest {
                    compute_instance_id: instance.clone(),
                    wait_ms: POLL_WAIT_MS,
                })
                .await;
            let task = match polled {
                Ok(response) => response.into_inner().task,
                Err(status) => {
                    tracing::warn!(error = %status, "polling for tasks failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some(task) = task else { continue };
            if repository.is_none() {
                let credentials = config.repository_credentials().unwrap_or(Credentials::None);
                match Repository::open(backend.clone(), &credentials).await {
                    Ok(opened) => repository = Some(opened),
                    Err(error) => tracing::error!(error = %error, "cannot open the repository"),
                }
            }
            let result = match (&repository, task.work) {
                (None, _) => Err(TaskFailure {
                    code: Code::Unavailable,
                    message: "the agent cannot open the server's repository; see the agent log"
                        .to_owned(),
                }),
                (Some(repository), Some(Work::Backup(work))) => {
                    run_backup(&client, &config, repository, task.task_id, &work)
                        .await
                        .map(complete_task_request::Result::Backup)
                }
                (Some(repository), Some(Work::Recovery(work))) => {
                    crate::recovery::run_recovery(&client, &config, repository, task.task_id, &work)
                        .await
                        .map(complete_task_request::Result::Recovery)
                }
                (Some(_), None) => Err(TaskFailure {
                    code: Code::InvalidArgument,
                    message: "the task has no work; the server and agent versions may differ"
                        .to_owned(),
                }),
            };
            let result = result.unwrap_or_else(|failure| {
                tracing::warn!(task_id = task.task_id, code = ?failure.code, message = %failure.message, "task failed");
                complete_task_request::Result::Error(TaskError {
                    code: failure.code as i32,
                    message: failure.message,
                })
            });
            complete_task(&client, &instance, task.task_id, result).await;
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    tokio::select! {
        result = work => result?,
        _ = shutdown => tracing::info!("agent stopping"),
    }
    heartbeats.abort();
    Ok(())
}

/// Reports the end of a task, retrying while the server is unavailable,
/// so a server restart does not lose a finished backup or recovery.
async fn complete_task(
    client: &Client,
    instance: &str,
    task_id: i64,
    result: complete_task_request::Result,
) {
    let mut delay = Duration::from_millis(200);
    for _ in 0..COMPLETE_ATTEMPTS {
        let request = CompleteTaskRequest {
            compute_instance_id: instance.to_owned(),
            task_id,
            result: Some(result.clone()),
        };
        match client.clone().complete_task(request).await {
            Ok(_) => return,
            Err(status) if status.code() == Code::Unavailable => {
                tracing::warn!(task_id, error = %status, "server unavailable; retrying the task report");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(status) => {
                tracing::error!(task_id, error = %status, "the server rejected the task report");
                return;
            }
        }
    }
    tracing::error!(
        task_id,
        "gave up reporting the end of a task; the server will time it out"
    );
}

async fn connect(config: &AgentConfig) -> anyhow::Result<Client> {
    let mut endpoint = Endpoint::from_shared(config.server.clone())
        .with_context(|| format!("invalid server address {:?}", config.server))?
        .connect_timeout(Duration::from_secs(10))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    if let Some(ca) = &config.tls_ca {
        let pem =
            std::fs::read(ca).with_context(|| format!("cannot read tls_ca {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    }
    let channel = endpoint.connect_lazy();
    let token = match &config.token {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .context("the token contains characters that cannot go into a header")?,
        ),
        None => None,
    };
    Ok(
        AgentServiceClient::with_interceptor(channel, AuthInterceptor(token))
            .max_decoding_message_size(MESSAGE_LIMIT)
            .max_encoding_message_size(MESSAGE_LIMIT),
    )
}

fn disk_infos(config: &AgentConfig) -> Vec<DiskInfo> {
    config
        .disks
        .iter()
        .map(|d| DiskInfo {
            name: d.name.clone(),
            size: std::fs::metadata(&d.path)
                .map(|m| m.len() as i64)
                .unwrap_or(0),
            device_model: d.device_model.clone(),
        })
        .collect()
}

async fn register(
    client: &Client,
    config: &AgentConfig,
) -> anyhow::Result<backstop_proto::agent::RegisterResponse> {
    let mut delay = Duration::from_millis(200);
    loop {
        let result = client
            .clone()
            .register(RegisterRequest {
                compute_instance_id: config.compute_instance_id.clone(),
                registration_token: config.registration_token.clone().unwrap_or_default(),
                folder_id: config.folder_id.clone(),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                hostname: String::new(),
                disks: disk_infos(config),
            })
            .await;
        match result {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if status.code() == Code::Unavailable => {
                tracing::warn!(error = %status, "server unavailable; retrying registration");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(status) => anyhow::bail!(
                "registration of instance {} failed: {status}",
                config.compute_instance_id
            ),
        }
    }
}

async fn heartbeat_loop(client: Client, config: AgentConfig, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let result = client
            .clone()
            .heartbeat(HeartbeatRequest {
                compute_instance_id: config.compute_instance_id.clone(),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                disks: disk_infos(&config),
            })
            .await;
        if let Err(status) = result {
            tracing::warn!(error = %status, "heartbeat failed");
        }
    }
}

fn compression_of(number: i32) -> Compression {
    // Numbers of yandex.cloud.backup.v1.PolicySettings.Compression.
    match number {
        2 => Compression::High,
        3 => Compression::Max,
        4 => Compression::Off,
        _ => Compression::Normal,
    }
}

pub(crate) fn failure(code: Code, message: impl Into<String>) -> TaskFailure {
    TaskFailure {
        code,
        message: message.into(),
    }
}

pub(crate) fn engine_failure(error: backstop_engine::Error) -> TaskFailure {
    use backstop_engine::Error as E;
    let code = match &error {
        E::Cancelled { .. } => Code::Cancelled,
        E::DataLoss { .. } | E::VerifyMismatch { .. } => Code::DataLoss,
        E::TargetTooSmall { .. } | E::InvalidTarget { .. } => Code::FailedPrecondition,
        E::Repository { .. } => Code::Unavailable,
        _ => Code::Internal,
    };
    failure(code, error.to_string())
}

/// Sends progress to the server at most every [`PROGRESS_INTERVAL`] and
/// fires `cancel` when the server reports that the user cancelled.
pub(crate) struct ProgressReporter {
    pub(crate) client: Client,
    pub(crate) instance: String,
    pub(crate) task_id: i64,
    pub(crate) total: i64,
    pub(crate) cancel: CancellationToken,
    pub(crate) last: Mutex<(Option<tokio::time::Instant>, i64)>,
}

impl ProgressReporter {
    pub(crate) fn report(&self, current: i64, force: bool) {
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.0.is_none_or(|at| at.elapsed() >= PROGRESS_INTERVAL);
            if !(force || due) || current < last.1 {
                return;
            }
            *last = (Some(tokio::time::Instant::now()), current);
        }
        let mut client = self.client.clone();
        let request = ReportProgressRequest {
            compute_instance_id: self.instance.clone(),
            task_id: self.task_id,
            current,
            total: self.total,
        };
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            match client.report_progress(request).await {
                Ok(response) if response.get_ref().cancel_requested => {
                    tracing::info!("the user cancelled the task");
                    cancel.cancel();
                }
                Ok(_) => {}
                Err(status) => tracing::warn!(error = %status, "progress report failed"),
            }
        });
    }
}

async fn run_backup(
    client: &Client,
    config: &AgentConfig,
    repository: &Repository,
    task_id: i64,
    work: &BackupWork,
) -> Result<BackupResult, TaskFailure> {
    tracing::info!(task_id, backup_id = %work.backup_id, "backup started");
    let repository = repository.with_compression(compression_of(work.compression));
    let previous = if work.previous_manifest_id.is_empty() {
        None
    } else {
        let id = ManifestId::new(&work.previous_manifest_id)
            .map_err(|e| failure(Code::Internal, e.to_string()))?;
        match repository.get_disk_manifest(&id).await {
            Ok(manifest) => Some(manifest),
            Err(error) => {
                tracing::warn!(error = %error, "previous manifest unreadable; every chunk is checked against the repository");
                None
            }
        }
    };

    let sizes: Vec<i64> = config
        .disks
        .iter()
        .map(|d| std::fs::metadata(&d.path).map(|m| m.len() as i64))
        .collect::<Result<_, _>>()
        .map_err(|e| {
            failure(
                Code::FailedPrecondition,
                format!("cannot read a disk of the instance: {e}"),
            )
        })?;
    let reporter = Arc::new(ProgressReporter {
        client: client.clone(),
        instance: config.compute_instance_id.clone(),
        task_id,
        total: sizes.iter().sum(),
        cancel: CancellationToken::new(),
        last: Mutex::new((None, 0)),
    });
    reporter.report(0, true);

    let session = repository.start_session();
    let mut manifest = DiskBackupManifest::new(&work.backup_id, time::OffsetDateTime::now_utc());
    let mut result = BackupResult::default();
    let mut done_before: i64 = 0;
    let options = BackupOptions {
        chunk_size: if work.chunk_size == 0 {
            backstop_engine::DEFAULT_CHUNK_SIZE
        } else {
            work.chunk_size
        },
        ..BackupOptions::default()
    };
    for (disk, size) in config.disks.iter().zip(&sizes) {
        let previous_disk = previous
            .as_ref()
            .and_then(|m| m.disks.iter().find(|d| d.name == disk.name));
        let sink = {
            let reporter = reporter.clone();
            let base = done_before;
            move |progress: Progress| reporter.report(base + progress.processed_bytes as i64, false)
        };
        let taken = backstop_engine::backup_disk(
            &session,
            &disk.name,
            &disk.path,
            previous_disk,
            &options,
            &sink,
            &reporter.cancel,
        )
        .await
        .map_err(engine_failure)?;
        let path = disk.path.clone();
        let volumes = tokio::task::spawn_blocking(move || backstop_engine::read_volumes(&path))
            .await
            .map_err(|e| failure(Code::Internal, e.to_string()))?
            .unwrap_or_else(|error| {
                tracing::warn!(error = %error, disk = %disk.name, "cannot read the partition table");
                Vec::new()
            });
        result.disks.push(BackupDisk {
            name: disk.name.clone(),
            size: *size,
            device_model: disk.device_model.clone(),
            volumes: volumes
                .iter()
                .map(|v| BackupVolume {
                    name: v.name.clone(),
                    size: v.size_bytes as i64,
                    is_bootable: v.bootable,
                    is_system: v.bootable,
                })
                .collect(),
        });
        result.stored_bytes += taken.stats.new_stored_bytes as i64;
        result.data_bytes += taken.stats.data_bytes as i64;
        result.read_bytes += taken.stats.bytes_read as i64;
        result.referenced_bytes += taken.manifest.data_bytes() as i64;
        manifest.disks.push(taken.manifest);
        done_before += size;
    }

    // The manifest makes the backup durable; the session pins its chunks
    // against garbage collection until then.
    repository.put_disk_manifest(&manifest).await.map_err(|e| {
        failure(
            Code::Unavailable,
            format!("cannot store the backup manifest: {e}"),
        )
    })?;
    drop(session);
    reporter.report(done_before, true);
    tracing::info!(task_id, backup_id = %work.backup_id, stored_bytes = result.stored_bytes, "backup finished");
    Ok(result)
}
