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
    /// True when the server had already ended the task, so there is no
    /// result to report.
    pub(crate) ended_by_server: bool,
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
    let problems = disk_problems(&config);
    if !problems.is_empty() {
        anyhow::bail!(
            "cannot serve the disks of instance {}:\n  {}",
            config.compute_instance_id,
            problems.join("\n  ")
        );
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
                (None, _) => Err(failure(
                    Code::Unavailable,
                    "the agent cannot open the server's repository; see the agent log",
                )),
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
                (Some(_), None) => Err(failure(
                    Code::InvalidArgument,
                    "the task has no work; the server and agent versions may differ",
                )),
            };
            if let Err(failure) = &result {
                if failure.ended_by_server {
                    tracing::warn!(task_id = task.task_id, message = %failure.message, "task stopped because the server had ended it");
                    continue;
                }
            }
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
    } else if config.server.starts_with("https://") {
        // Without tls_ca the server's certificate must chain to a CA that the
        // system trusts; SSL_CERT_FILE and SSL_CERT_DIR override the system
        // store, as in OpenSSL.
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().with_native_roots())
            .context(
                "server is https:// and tls_ca is not set, but the system's trusted CA certificates \
                 cannot be loaded; set tls_ca to the PEM file of the CA that signed the server's certificate",
            )?;
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

/// Opens every configured disk once and lists those that cannot be read, so
/// that a wrong path stops the agent at start and not at the first backup.
fn disk_problems(config: &AgentConfig) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        if let Err(error) = backstop_engine::disk_size(&disk.path) {
            problems.push(format!(
                "disk `{}` (disks[{i}].path = {}): {error}; set the path of an existing image file or \
                 block device that the agent can read",
                disk.name,
                disk.path.display()
            ));
        }
    }
    problems
}

/// Describes the disks for the server. A disk that became unreadable after
/// the start-up check is reported with size 0.
fn disk_infos(config: &AgentConfig) -> Vec<DiskInfo> {
    config
        .disks
        .iter()
        .map(|d| DiskInfo {
            name: d.name.clone(),
            size: backstop_engine::disk_size(&d.path)
                .map(|size| size as i64)
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
        ended_by_server: false,
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

/// Attempts to confirm a task with the server before it touches any data;
/// with the backoff capped at 5 s this covers about 30 s.
const CONFIRM_ATTEMPTS: usize = 8;

/// Reason the server gave for stopping a task.
#[derive(Clone, Debug)]
pub(crate) enum StopReason {
    /// The user cancelled the operation.
    CancelledByUser,
    /// The server had already ended the task, for example because the
    /// heartbeat timeout failed it; the message is the server's.
    EndedByServer(String),
}

/// Sends progress to the server at most every [`PROGRESS_INTERVAL`] and
/// fires `cancel` when the server replies that the user cancelled the task
/// or that the task has already ended.
pub(crate) struct ProgressReporter {
    client: Client,
    instance: String,
    task_id: i64,
    total: i64,
    pub(crate) cancel: CancellationToken,
    last: Mutex<(Option<tokio::time::Instant>, i64)>,
    stop_reason: Arc<Mutex<Option<StopReason>>>,
}

impl ProgressReporter {
    pub(crate) fn new(client: &Client, config: &AgentConfig, task_id: i64, total: i64) -> Self {
        ProgressReporter {
            client: client.clone(),
            instance: config.compute_instance_id.clone(),
            task_id,
            total,
            cancel: CancellationToken::new(),
            last: Mutex::new((None, 0)),
            stop_reason: Arc::new(Mutex::new(None)),
        }
    }

    /// Returns why the server stopped the task, if it did.
    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        self.stop_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn request(&self, current: i64) -> ReportProgressRequest {
        ReportProgressRequest {
            compute_instance_id: self.instance.clone(),
            task_id: self.task_id,
            current,
            total: self.total,
        }
    }

    /// Reports `current` and waits for the reply, so that nothing is read
    /// or written for a task that the user cancelled or the server already
    /// ended. Retries while the server is unavailable.
    pub(crate) async fn confirm(&self, current: i64) -> Result<(), TaskFailure> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            let reply = self
                .client
                .clone()
                .report_progress(self.request(current))
                .await;
            match reply {
                Err(status) if status.code() == Code::Unavailable && attempt < CONFIRM_ATTEMPTS => {
                    tracing::warn!(task_id = self.task_id, error = %status, "server unavailable; retrying the task confirmation");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                Err(status) if is_task_ended(&status) => {
                    record_stop(&self.stop_reason, &self.cancel, self.task_id, Err(&status));
                    return Err(TaskFailure {
                        code: Code::Aborted,
                        message: format!(
                            "the server had already ended task {} ({}); nothing was written",
                            self.task_id,
                            status.message()
                        ),
                        ended_by_server: true,
                    });
                }
                Err(status) => {
                    return Err(failure(
                        Code::Unavailable,
                        format!(
                            "cannot confirm task {} with the server: {status}; nothing was written, start the \
                             operation again once the agent reaches the server",
                            self.task_id
                        ),
                    ));
                }
                Ok(response) if response.get_ref().cancel_requested => {
                    record_stop(&self.stop_reason, &self.cancel, self.task_id, Ok(()));
                    return Err(failure(
                        Code::Cancelled,
                        "cancelled by the user before the agent started; nothing was written",
                    ));
                }
                Ok(_) => {
                    *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
                        (Some(tokio::time::Instant::now()), current);
                    return Ok(());
                }
            }
        }
    }

    /// Sends `current` in the background unless a report went out less
    /// than [`PROGRESS_INTERVAL`] ago; `force` sends it anyway.
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
        let request = self.request(current);
        let cancel = self.cancel.clone();
        let stop_reason = self.stop_reason.clone();
        let task_id = self.task_id;
        tokio::spawn(async move {
            match client.report_progress(request).await {
                Ok(response) if response.get_ref().cancel_requested => {
                    record_stop(&stop_reason, &cancel, task_id, Ok(()));
                }
                Ok(_) => {}
                Err(status) if is_task_ended(&status) => {
                    record_stop(&stop_reason, &cancel, task_id, Err(&status));
                }
                Err(status) => tracing::warn!(task_id, error = %status, "progress report failed"),
            }
        });
    }

    /// Sends the last report of a finished task and waits for it, so that
    /// it reaches the server before the task's result does.
    pub(crate) async fn report_last(&self, current: i64) {
        match self
            .client
            .clone()
            .report_progress(self.request(current))
            .await
        {
            Ok(_) => {}
            Err(status) if is_task_ended(&status) => {
                record_stop(&self.stop_reason, &self.cancel, self.task_id, Err(&status));
            }
            Err(status) => {
                tracing::warn!(task_id = self.task_id, error = %status, "progress report failed")
            }
        }
    }
}

/// Returns true for the replies the server sends about a task that ended
/// or that it does not know.
fn is_task_ended(status: &Status) -> bool {
    matches!(status.code(), Code::FailedPrecondition | Code::NotFound)
}

/// Records why the task stops, logs it once and fires `cancel`. `Ok` means
/// the user cancelled; `Err` carries the server's reply about an ended task.
fn record_stop(
    stop_reason: &Mutex<Option<StopReason>>,
    cancel: &CancellationToken,
    task_id: i64,
    reply: Result<(), &Status>,
) {
    let mut reason = stop_reason.lock().unwrap_or_else(|p| p.into_inner());
    if reason.is_none() {
        match reply {
            Ok(()) => {
                tracing::info!(task_id, "the user cancelled the task");
                *reason = Some(StopReason::CancelledByUser);
            }
            Err(status) => {
                tracing::warn!(task_id, error = %status.message(), "the server has ended the task; stopping it");
                *reason = Some(StopReason::EndedByServer(status.message().to_owned()));
            }
        }
    }
    cancel.cancel();
}

/// Maps an engine error of a task that the reporter may have stopped: a
/// cancellation caused by the server's end of the task carries the
/// server's reason and is not reported back.
pub(crate) fn stopped_failure(
    reporter: &ProgressReporter,
    kind: &str,
    error: backstop_engine::Error,
    what_was_written: impl FnOnce(u64) -> String,
) -> TaskFailure {
    let backstop_engine::Error::Cancelled { processed } = error else {
        return engine_failure(error);
    };
    match reporter.stop_reason() {
        Some(StopReason::EndedByServer(reason)) => TaskFailure {
            code: Code::Aborted,
            message: format!(
                "the server ended {kind} task {} while it ran ({reason}); {}",
                reporter.task_id,
                what_was_written(processed)
            ),
            ended_by_server: true,
        },
        _ => failure(
            Code::Cancelled,
            format!(
                "{kind} cancelled by the user; {}",
                what_was_written(processed)
            ),
        ),
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
        .map(|d| backstop_engine::disk_size(&d.path).map(|size| size as i64))
        .collect::<Result<_, _>>()
        .map_err(|e| {
            failure(
                Code::FailedPrecondition,
                format!("cannot read a disk of the instance: {e}"),
            )
        })?;
    let reporter = Arc::new(ProgressReporter::new(
        client,
        config,
        task_id,
        sizes.iter().sum(),
    ));
    reporter.confirm(0).await?;

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
        .map_err(|error| {
            stopped_failure(&reporter, "backup", error, |_| {
                "no backup was stored".to_owned()
            })
        })?;
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
    reporter.report_last(done_before).await;
    tracing::info!(task_id, backup_id = %work.backup_id, stored_bytes = result.stored_bytes, "backup finished");
    Ok(result)
}
