//! The `backstop` command: `backstop server` runs the control plane,
//! `backstop agent` serves an instance's disks, and the client commands
//! (`backup`, `policy`, `vm`, `operation`, `provider`) call a server.

mod cli;

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use backstop_server::{AuthMode, ServerConfig, TlsConfig};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "backstop",
    version,
    about = "Backup and recovery service speaking the Yandex Cloud Backup API"
)]
struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "BACKSTOP_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server with its catalog under the data folder.
    Server(ServerArgs),
    /// Run an agent that serves one instance's disks to a server.
    Agent(AgentArgs),
    /// Read every chunk the backups in a data folder need and check its
    /// digest; exits with status 1 when a chunk is missing or corrupt.
    Verify(VerifyArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The server's TOML configuration, for its data folder and repository
    /// key settings.
    #[arg(long, env = "BACKSTOP_CONFIG")]
    config: Option<PathBuf>,

    /// Data folder of the server [default: the config's, else ./backstop-data].
    #[arg(long, env = "BACKSTOP_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// TOML agent configuration: server, instance id and disks.
    #[arg(long, env = "BACKSTOP_AGENT_CONFIG")]
    config: PathBuf,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "BACKSTOP_CONFIG")]
    config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:9000].
    #[arg(long, env = "BACKSTOP_LISTEN")]
    listen: Option<SocketAddr>,

    /// Folder for the catalog and repository [default: ./backstop-data].
    #[arg(long, env = "BACKSTOP_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// host:port that endpoint discovery hands to clients [default: the listen address].
    #[arg(long, env = "BACKSTOP_ADVERTISE_ADDRESS")]
    advertise_address: Option<String>,

    /// PEM certificate chain; serves TLS together with --tls-key.
    #[arg(long, env = "BACKSTOP_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "BACKSTOP_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Authentication mode [default: development on loopback, tokens elsewhere].
    #[arg(long, env = "BACKSTOP_AUTH_MODE", value_enum)]
    auth_mode: Option<AuthModeArg>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum AuthModeArg {
    Tokens,
    Development,
}

/// Prints an error and its causes without a backtrace, even when
/// `RUST_BACKTRACE` is set, and exits with status 1.
fn main() -> std::process::ExitCode {
    let Err(error) = run() else {
        return std::process::ExitCode::SUCCESS;
    };
    eprintln!("error: {error}");
    for cause in error.chain().skip(1) {
        // Indent continuation lines, such as those of a TOML parse error, so
        // that each cause reads as one block.
        let cause = cause.to_string().replace('\n', "\n    ");
        eprintln!("  caused by: {cause}");
    }
    std::process::ExitCode::FAILURE
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        // Client commands report on stdout and stderr themselves and log nothing.
        Command::Client(command) => std::process::exit(cli::run(command)),
        Command::Server(args) => service_runtime(cli.log_format)?.block_on(run_server(args)),
        Command::Agent(args) => service_runtime(cli.log_format)?.block_on(run_agent(args)),
        Command::Verify(args) => {
            let runtime = service_runtime(cli.log_format)?;
            let config = match &args.config {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| {
                        format!("cannot read configuration file {}", path.display())
                    })?;
                    ServerConfig::from_toml(&text)
                        .with_context(|| format!("invalid configuration file {}", path.display()))?
                }
                None => ServerConfig::default(),
            };
            let data_dir = args.data_dir.unwrap_or(config.data_dir.clone());
            let outcome = runtime.block_on(backstop_server::verify_data_dir(
                &data_dir,
                &config.repository,
            ))?;
            print!("{}", outcome.render());
            if !outcome.is_clean() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// Sets up logging and the async runtime of the server, agent and verify
/// commands.
fn service_runtime(log_format: LogFormat) -> anyhow::Result<tokio::runtime::Runtime> {
    init_logging(log_format);
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let config = server_config(args)?;
    let local_agents = local_agent_configs(&config);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(backstop_server::serve_with_ready(
        config,
        shutdown_signal("draining calls"),
        Some(ready_tx),
    ));

    // Agents of local instances start once the listener is up and reach the
    // server through the agent API on loopback, like remote agents do.
    if let Ok(address) = ready_rx.await {
        for mut agent in local_agents {
            agent.server = format!("http://{}", loopback_of(address));
            let instance = agent.compute_instance_id.clone();
            tokio::spawn(async move {
                if let Err(error) = backstop_agent::run_agent(agent, std::future::pending()).await {
                    tracing::error!(instance = %instance, error = ?error, "local agent stopped");
                }
            });
        }
    }
    server.await.context("server task panicked")?
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read agent configuration {}", args.config.display()))?;
    let config = backstop_agent::AgentConfig::from_toml(&text)
        .with_context(|| format!("invalid agent configuration {}", args.config.display()))?;
    backstop_agent::run_agent(config, shutdown_signal("stopping the agent")).await
}

/// Builds agent configurations for the instances the server runs itself.
fn local_agent_configs(config: &ServerConfig) -> Vec<backstop_agent::AgentConfig> {
    config
        .instances
        .iter()
        .map(|instance| backstop_agent::AgentConfig {
            server: String::new(),
            token: config.auth.tokens.first().map(|t| t.token.clone()),
            tls_ca: None,
            compute_instance_id: instance.compute_instance_id.clone(),
            folder_id: instance.folder_id.clone(),
            registration_token: None,
            repository_key_file: config.repository.key_file.clone(),
            repository_passphrase_env: config.repository.passphrase_env.clone(),
            disks: instance
                .disks
                .iter()
                .map(|d| backstop_agent::DiskConfig {
                    name: d.name.clone(),
                    path: d.path.clone(),
                    device_model: d
                        .device_model
                        .clone()
                        .unwrap_or_else(|| "virtio-blk".to_owned()),
                })
                .collect(),
            file_roots: Vec::new(),
            hooks: Default::default(),
            verify_after_restore: false,
        })
        .collect()
}

/// Returns the loopback address of the same family for a wildcard listen
/// address, so local agents always dial loopback.
fn loopback_of(address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        let ip = if address.is_ipv4() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        };
        SocketAddr::new(ip, address.port())
    } else {
        address
    }
}

/// Builds the configuration: defaults, then the file, then flags and
/// environment variables.
fn server_config(args: ServerArgs) -> anyhow::Result<ServerConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read configuration file {}", path.display()))?;
            ServerConfig::from_toml(&text)
                .with_context(|| format!("invalid configuration file {}", path.display()))?
        }
        None => ServerConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(address) = args.advertise_address {
        config.advertise_address = Some(address);
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(TlsConfig { cert, key });
    }
    if let Some(mode) = args.auth_mode {
        config.auth.mode = Some(match mode {
            AuthModeArg::Tokens => AuthMode::Tokens,
            AuthModeArg::Development => AuthMode::Development,
        });
    }
    Ok(config)
}

fn init_logging(format: LogFormat) {
    const DEFAULT_FILTER: &str = "info,h2=warn,tower=warn,hyper=warn,sqlx=warn";
    let mut rejected = None;
    let filter = match std::env::var("BACKSTOP_LOG") {
        Ok(value) => tracing_subscriber::EnvFilter::try_new(&value).unwrap_or_else(|error| {
            rejected = Some((value, error));
            tracing_subscriber::EnvFilter::new(DEFAULT_FILTER)
        }),
        Err(_) => tracing_subscriber::EnvFilter::new(DEFAULT_FILTER),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
    if let Some((value, error)) = rejected {
        tracing::warn!(
            value = %value,
            error = %error,
            default = DEFAULT_FILTER,
            "invalid BACKSTOP_LOG filter; using the default filter"
        );
    }
}

/// Installs the SIGINT and SIGTERM handlers at once, so that a signal sent
/// during start-up is not lost. The returned future resolves on the first of
/// them and logs the signal followed by `next_step`, the action the process
/// takes next. Must be called inside the tokio runtime.
fn shutdown_signal(next_step: &'static str) -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(handler) => Some(handler),
            Err(error) => {
                tracing::error!(error = %error, "cannot listen for {name}; the signal stops this process at once");
                None
            }
        };
        (
            install(SignalKind::interrupt(), "SIGINT"),
            install(SignalKind::terminate(), "SIGTERM"),
        )
    };
    async move {
        #[cfg(unix)]
        let signal = {
            let (mut interrupt, mut terminate) = handlers;
            tokio::select! {
                Some(()) = async { interrupt.as_mut()?.recv().await } => "SIGINT",
                Some(()) = async { terminate.as_mut()?.recv().await } => "SIGTERM",
                // Neither handler could be installed, so only the default
                // action of a signal stops the process.
                else => std::future::pending::<&str>().await,
            }
        };
        #[cfg(not(unix))]
        let signal = {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        };
        tracing::info!("{signal} received, {next_step}");
    }
}
