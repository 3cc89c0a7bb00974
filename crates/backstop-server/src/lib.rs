//! The Backstop server: the public gRPC API and its REST mapping over the
//! catalog.
//!
//! [`serve`] opens the catalog, ends operations orphaned by an earlier
//! process, binds the listener and serves until the shutdown future
//! resolves, then drains calls in flight.

mod agents;
mod auth;
mod backups;
mod config;
mod convert;
mod deletion;
mod error;
mod layer;
mod operations;
mod recoveries;
mod rest;
mod services;
mod tasks;
mod validate;
mod verify;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use backstop_catalog::{Catalog, SqliteCatalog};
use backstop_proto::{
    agent::agent_service_server::AgentServiceServer,
    backup::{
        backup_service_server::BackupServiceServer, provider_service_server::ProviderServiceServer,
        resource_service_server::ResourceServiceServer,
    },
    endpoint::api_endpoint_service_server::ApiEndpointServiceServer,
    operation::operation_service_server::OperationServiceServer,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

pub use auth::{AuthMode, Caller, TokenConfig};
pub use config::{
    AuthConfig, LocalDiskConfig, LocalInstanceConfig, RepositoryConfig, ServerConfig, TlsConfig,
};
pub use error::ApiError;
pub use operations::{CancellationSignal, OperationRegistry};
pub use verify::{verify_data_dir, verify_repository, DamagedChunk, VerifyOutcome};

/// How long an idempotency key keeps returning its operation.
const IDEMPOTENCY_KEY_LIFETIME: Duration = Duration::from_secs(48 * 3600);

/// Largest agent API message: a repository object of the largest chunk
/// (64 MiB) plus its header and framing.
const AGENT_MESSAGE_LIMIT: usize = 65 * 1024 * 1024;

/// How long calls in flight may run on after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the server until `shutdown` resolves.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_ready(config, shutdown, None).await
}

/// Runs the server like [`serve`] and, once it accepts connections, sends
/// to `ready` the plaintext address where local agents reach the agent API:
/// the main listener, or a loopback one when the main listener serves TLS.
pub async fn serve_with_ready(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    let problems = config.problems();
    if !problems.is_empty() {
        anyhow::bail!("invalid configuration:\n  {}", problems.join("\n  "));
    }
    let problems = local_disk_problems(&config);
    if !problems.is_empty() {
        anyhow::bail!("cannot serve local instances:\n  {}", problems.join("\n  "));
    }

    // Bind before creating anything, so a start that fails on a busy port
    // leaves no new data folder behind.
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data folder {}", config.data_dir.display()))?;
    let catalog: Arc<dyn Catalog> = Arc::new(
        SqliteCatalog::open(&config.data_dir)
            .await
            .with_context(|| format!("cannot open the catalog in {}", config.data_dir.display()))?,
    );
    let operations = Arc::new(OperationRegistry::new(catalog.clone()));
    let orphaned = operations
        .end_orphaned()
        .await
        .context("cannot end orphaned operations")?;
    if orphaned > 0 {
        tracing::warn!(
            count = orphaned,
            "ended operations left running by a previous server process"
        );
    }
    tokio::spawn(expire_idempotency_keys(catalog.clone()));

    let repository = open_repository(&config.data_dir, &config.repository).await?;
    let backend = repository.backend().clone();
    let hub = Arc::new(agents::AgentHub {
        catalog: catalog.clone(),
        operations: operations.clone(),
        backend,
        task_enqueued: tokio::sync::Notify::new(),
        heartbeat_timeout: Duration::from_secs(config.heartbeat_timeout_s),
        encrypted: repository.is_encrypted(),
    });
    tokio::spawn(hub.clone().run_watchdog());
    if config.verify_interval_h > 0 {
        tokio::spawn(verify_periodically(
            repository.clone(),
            Duration::from_secs(config.verify_interval_h * 3600),
        ));
    }

    let address = listener.local_addr()?;
    let advertised_address = config
        .advertise_address
        .clone()
        .unwrap_or_else(|| address.to_string());

    let auth_mode = config.auth_mode();
    if auth_mode == AuthMode::Development {
        tracing::warn!(
            "development mode: calls without a known token are accepted as subject `development` on every folder; \
             set auth.mode = \"tokens\" to require tokens"
        );
    }
    let authenticator = Arc::new(auth::Authenticator::new(auth_mode, &config.auth.tokens));
    let context = services::ApiContext {
        catalog,
        operations,
        agents: hub.clone(),
        repository,
        gc_grace_period: Duration::from_secs(config.gc_grace_period_s),
        advertised_address: advertised_address.clone(),
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<BackupServiceServer<services::backup::BackupApi>>()
        .await;
    health
        .set_serving::<ResourceServiceServer<services::resource::ResourceApi>>()
        .await;
    health
        .set_serving::<ProviderServiceServer<services::provider::ProviderApi>>()
        .await;
    health
        .set_serving::<OperationServiceServer<services::operation::OperationApi>>()
        .await;
    health
        .set_serving::<backstop_proto::backup::policy_service_server::PolicyServiceServer<
            services::policy::PolicyApi,
        >>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(backstop_proto::DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;

    // HTTP/1.1 is for REST clients; gRPC clients use HTTP/2 either way.
    // TLS is terminated before tonic (see rest::tls) so that ALPN can
    // offer http/1.1 next to h2.
    let builder = Server::builder().accept_http1(true);
    let tls_acceptor = match &config.tls {
        Some(tls) => {
            let cert = std::fs::read(&tls.cert)
                .with_context(|| format!("cannot read {}", tls.cert.display()))?;
            let key = std::fs::read(&tls.key)
                .with_context(|| format!("cannot read {}", tls.key.display()))?;
            Some(rest::tls::acceptor(&cert, &key).context("invalid TLS certificate or key")?)
        }
        None => None,
    };
    // The REST gateway sits outside ApiLayer, so its transcoded calls pass
    // through authentication and request ids like gRPC calls do.
    let router = builder
        .layer(rest::GatewayLayer::new().context("cannot build the REST routes")?)
        .layer(layer::ApiLayer::new(authenticator.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ApiEndpointServiceServer::new(
            services::endpoint::EndpointApi(context.clone()),
        ))
        .add_service(OperationServiceServer::new(
            services::operation::OperationApi(context.clone()),
        ))
        .add_service(BackupServiceServer::new(services::backup::BackupApi(
            context.clone(),
        )))
        .add_service(ResourceServiceServer::new(services::resource::ResourceApi(
            context.clone(),
        )))
        .add_service(
            backstop_proto::backup::policy_service_server::PolicyServiceServer::new(
                services::policy::PolicyApi(context.clone()),
            ),
        )
        .add_service(ProviderServiceServer::new(services::provider::ProviderApi(
            context,
        )))
        .add_service(agent_service(hub.clone()));

    // With TLS on, the agents this process runs for local instances reach
    // the agent API through a plaintext listener on loopback, because the
    // operator's certificate need not name a loopback address.
    let agent_address = if config.tls.is_some() && !config.instances.is_empty() {
        let agent_listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot listen on loopback for local agents")?;
        let agent_address = agent_listener.local_addr()?;
        let agent_router = Server::builder()
            .layer(layer::ApiLayer::new(authenticator.clone()))
            .add_service(agent_service(hub));
        tokio::spawn(async move {
            if let Err(error) = agent_router
                .serve_with_incoming(TcpListenerStream::new(agent_listener))
                .await
            {
                tracing::error!(error = %error, "local agent listener failed");
            }
        });
        tracing::info!(address = %agent_address, "local agents connect on loopback");
        agent_address
    } else {
        address
    };

    tracing::info!(
        address = %address,
        advertised_address = %advertised_address,
        tls = config.tls.is_some(),
        data_dir = %config.data_dir.display(),
        "listening"
    );
    if let Some(ready) = ready {
        let _ = ready.send(agent_address);
    }

    // Calls in flight get DRAIN_TIMEOUT to finish after the shutdown signal;
    // a client that keeps its connection open must not hold the server.
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = signalled_tx.send(());
    };
    let serving: std::pin::Pin<
        Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match tls_acceptor {
        Some(acceptor) => Box::pin(
            router.serve_with_incoming_shutdown(rest::tls::incoming(listener, acceptor), shutdown),
        ),
        None => Box::pin(
            router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown),
        ),
    };
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => result.context("gRPC server failed")?,
        _ = async {
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => tracing::warn!(timeout_s = DRAIN_TIMEOUT.as_secs(), "connections still open after the drain timeout; stopping anyway"),
    }
    tracing::info!("server stopped");
    Ok(())
}

/// Opens every disk of the `[[instances]]` the server runs agents for and
/// lists those that are missing, unreadable, or not a regular file or block
/// device.
fn local_disk_problems(config: &ServerConfig) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt as _;

    let mut problems = Vec::new();
    for (i, instance) in config.instances.iter().enumerate() {
        for (j, disk) in instance.disks.iter().enumerate() {
            let checked = std::fs::File::open(&disk.path)
                .and_then(|file| file.metadata())
                .and_then(|metadata| {
                    let kind = metadata.file_type();
                    if kind.is_file() || kind.is_block_device() {
                        Ok(())
                    } else {
                        Err(std::io::Error::other(
                            "it is neither a regular file nor a block device",
                        ))
                    }
                });
            if let Err(error) = checked {
                problems.push(format!(
                    "instance {}: disk `{}` (instances[{i}].disks[{j}].path = {}) cannot be read: {error}; \
                     set the path of an existing image file or block device that the server can read",
                    instance.compute_instance_id,
                    disk.name,
                    disk.path.display()
                ));
            }
        }
    }
    problems
}

fn agent_service(hub: Arc<agents::AgentHub>) -> AgentServiceServer<agents::AgentApi> {
    AgentServiceServer::new(agents::AgentApi(hub))
        .max_decoding_message_size(AGENT_MESSAGE_LIMIT)
        .max_encoding_message_size(AGENT_MESSAGE_LIMIT)
}

/// Opens the repository under `data_dir/repository`, creating it with the
/// configured encryption on first start.
pub(crate) async fn open_repository(
    data_dir: &std::path::Path,
    settings: &RepositoryConfig,
) -> anyhow::Result<backstop_chunkstore::Repository> {
    use backstop_chunkstore::{LocalBackend, Repository, RepositoryOptions};

    let credentials = settings.credentials().map_err(anyhow::Error::msg)?;
    let path = data_dir.join("repository");
    std::fs::create_dir_all(&path)
        .with_context(|| format!("cannot create repository folder {}", path.display()))?;
    // The server is the only writer of its repository, so chunk fsyncs can
    // be batched (see LocalBackend), and no temporary file left at start
    // belongs to a write in progress: they are leftovers of a crash.
    let local = LocalBackend::new(&path).with_deferred_chunk_sync();
    let removed = local
        .remove_stale_temp_files(Duration::ZERO)
        .await
        .with_context(|| format!("cannot clean up the repository in {}", path.display()))?;
    if removed > 0 {
        tracing::info!(
            removed,
            "removed temporary files left by an interrupted write"
        );
    }
    let backend: Arc<dyn backstop_chunkstore::Backend> = Arc::new(local);
    match Repository::open(backend.clone(), &credentials).await {
        Ok(repository) => Ok(repository),
        Err(backstop_chunkstore::Error::RepositoryNotFound { .. }) => {
            let options = RepositoryOptions {
                encryption: settings.encryption().map_err(anyhow::Error::msg)?,
                ..RepositoryOptions::default()
            };
            let repository = Repository::create(backend.clone(), options)
                .await
                .with_context(|| format!("cannot create the repository in {}", path.display()))?;
            tracing::info!(path = %path.display(), encrypted = repository.is_encrypted(), "created the repository");
            Ok(repository)
        }
        Err(error) => Err(anyhow::Error::from(error)
            .context(format!("cannot open the repository in {}", path.display()))),
    }
}

/// Verifies the repository every `interval` and logs what it finds.
async fn verify_periodically(repository: backstop_chunkstore::Repository, interval: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tick.tick().await;
        match verify::verify_repository(&repository).await {
            Ok(outcome) if outcome.is_clean() => {
                tracing::info!(
                    chunks = outcome.chunks_checked,
                    backups = outcome.backups,
                    "repository verified"
                )
            }
            Ok(outcome) => {
                for chunk in &outcome.damaged {
                    let backups: Vec<&str> =
                        chunk.used_by.iter().map(|u| u.backup_id.as_str()).collect();
                    tracing::error!(digest = %chunk.digest, problem = %chunk.problem, backups = ?backups, "damaged chunk; run `backstop verify` for details");
                }
            }
            Err(error) => tracing::error!(error = ?error, "repository verification failed"),
        }
    }
}

/// Deletes idempotency keys past their lifetime, once an hour.
async fn expire_idempotency_keys(catalog: Arc<dyn Catalog>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let before = time::OffsetDateTime::now_utc() - IDEMPOTENCY_KEY_LIFETIME;
        match catalog.expire_idempotency_keys(before).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "expired idempotency keys"),
            Err(error) => {
                tracing::warn!(error = ?error, "expiring idempotency keys failed; will retry in an hour")
            }
        }
    }
}
