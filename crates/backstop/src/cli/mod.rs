//! Client commands shaped like `yc backup`: `backup`, `policy`, `vm`,
//! `operation` and `provider` call a Backstop server over gRPC.
//!
//! Exit status: 0 on success, 1 when the server rejects a call or an
//! operation fails, 2 for invalid usage (missing settings, bad files).

mod backup;
mod output;
mod policy;
mod resource;
mod settings;
mod wait;

use backstop_proto::operation::{operation, Operation};
use clap::{Subcommand, ValueEnum};

pub use settings::ClientArgs;
use settings::{OutputFormat, Settings, Transport};

/// The client command groups, flattened into the binary's top level.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// List, inspect, recover and delete backups.
    Backup(backup::BackupArgs),
    /// Create, change, apply and run backup policies.
    Policy(policy::PolicyArgs),
    /// Inspect instances (resources), their tasks and operations.
    Vm(resource::VmArgs),
    /// Get, wait for and cancel long-running operations.
    Operation(resource::OperationArgs),
    /// Activate the backup provider for a folder and list activations.
    Provider(resource::ProviderArgs),
}

/// An error in how the command was called: a missing setting, an unreadable
/// or invalid file. Exits with status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A long-running operation that finished with an error.
#[derive(Debug)]
pub struct OperationFailed {
    pub id: String,
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for OperationFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "operation {} failed: {}: {}",
            self.id,
            code_name(self.code),
            self.message
        )
    }
}

impl std::error::Error for OperationFailed {}

/// Runs a client command and returns the process exit status. Errors go to
/// stderr as `error: ...`.
pub fn run(command: ClientCommand) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return 1;
        }
    };
    match runtime.block_on(dispatch(command)) {
        Ok(()) => 0,
        Err(error) => {
            let (text, status) = describe_error(&error);
            eprintln!("error: {text}");
            status
        }
    }
}

async fn dispatch(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Backup(args) => backup::run(args).await,
        ClientCommand::Policy(args) => policy::run(args).await,
        ClientCommand::Vm(args) => resource::run_vm(args).await,
        ClientCommand::Operation(args) => resource::run_operation(args).await,
        ClientCommand::Provider(args) => resource::run_provider(args).await,
    }
}

/// Returns the message and exit status for an error.
fn describe_error(error: &anyhow::Error) -> (String, i32) {
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
        let mut text = format!("{}: {}", code_name(status.code() as i32), status.message());
        if status.code() == tonic::Code::Unavailable {
            text.push_str("; check that the server runs and --endpoint points at it");
        }
        return (text, 1);
    }
    if error.downcast_ref::<UsageError>().is_some() {
        return (format!("{error:#}"), 2);
    }
    (format!("{error:#}"), 1)
}

/// Returns the canonical name of a gRPC status code, as in `google.rpc.Code`.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN_CODE",
    }
}

/// Id of the resource a command acts on, given as yc takes it: as the first
/// argument or with `--id`.
#[derive(clap::Args, Clone, Debug)]
pub struct IdArg {
    /// Id of the resource.
    #[arg(value_name = "ID", conflicts_with = "id_flag")]
    id: Option<String>,

    /// Id of the resource, as an alternative to the argument.
    #[arg(long = "id", value_name = "ID")]
    id_flag: Option<String>,
}

impl IdArg {
    /// Returns the id, or a usage error naming the kind of resource whose id is missing.
    pub fn require(&self, resource: &str) -> anyhow::Result<String> {
        match self.id.as_ref().or(self.id_flag.as_ref()) {
            Some(id) if !id.is_empty() => Ok(id.clone()),
            _ => Err(UsageError(format!(
                "missing {resource} id: pass it as the first argument or with --id"
            ))
            .into()),
        }
    }
}

/// `--async`, shared by the commands that start an operation.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct AsyncArg {
    /// Print the started operation and exit without waiting for it.
    #[arg(long = "async")]
    pub run_async: bool,
}

/// `ResourceType` of the API, for `--type` filters.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ResourceTypeArg {
    Compute,
    Bms,
    ExternalVm,
    ExternalServer,
}

impl ResourceTypeArg {
    fn to_proto(self) -> i32 {
        use backstop_proto::backup::ResourceType;
        (match self {
            ResourceTypeArg::Compute => ResourceType::Compute,
            ResourceTypeArg::Bms => ResourceType::Bms,
            ResourceTypeArg::ExternalVm => ResourceType::ExternalVm,
            ResourceTypeArg::ExternalServer => ResourceType::ExternalServer,
        }) as i32
    }
}

/// Resolved settings and an open connection for one command.
pub struct Context {
    pub settings: Settings,
    pub transport: Transport,
}

impl Context {
    /// Resolves the settings and connects to the server.
    pub async fn connect(args: &ClientArgs) -> anyhow::Result<Self> {
        let settings = Settings::resolve(args)?;
        let transport = settings.connect().await?;
        Ok(Context {
            settings,
            transport,
        })
    }

    pub fn format(&self) -> OutputFormat {
        self.settings.format
    }

    /// Prints one generated message in the chosen format.
    pub fn print<M: prost::Message + prost::Name>(&self, message: &M) -> anyhow::Result<()> {
        output::print_message(self.format(), &output::to_dynamic(message)?)
    }

    /// Prints a list of generated messages in the chosen format.
    pub fn print_list<M: prost::Message + prost::Name>(
        &self,
        items: &[M],
        columns: &[output::Column],
    ) -> anyhow::Result<()> {
        let items = items
            .iter()
            .map(output::to_dynamic)
            .collect::<anyhow::Result<Vec<_>>>()?;
        output::print_list(self.format(), &items, columns)
    }

    /// Finishes a command that started an operation: prints it with
    /// `--async`, else waits for it and prints its result.
    pub async fn finish_operation(
        &self,
        operation: Operation,
        run_async: AsyncArg,
    ) -> anyhow::Result<()> {
        if run_async.run_async {
            return self.print(&operation);
        }
        let done = wait::wait(&self.transport, operation).await?;
        self.print_result(&done)
    }

    /// Prints the result of a finished operation: the response resource,
    /// or, when the response is `google.protobuf.Empty`, `done` as text and
    /// the operation itself as JSON or YAML.
    pub fn print_result(&self, done: &Operation) -> anyhow::Result<()> {
        if let Some(operation::Result::Error(status)) = &done.result {
            return Err(OperationFailed {
                id: done.id.clone(),
                code: status.code,
                message: status.message.clone(),
            }
            .into());
        }
        let response = match &done.result {
            Some(operation::Result::Response(any))
                if !any.type_url.ends_with("/google.protobuf.Empty") =>
            {
                any
            }
            _ => {
                return match self.format() {
                    OutputFormat::Text => output::write_stdout("done\n"),
                    _ => self.print(done),
                };
            }
        };
        let name = response.type_url.rsplit('/').next().unwrap_or_default();
        let message = output::decode_dynamic(name, &response.value)?;
        output::print_message(self.format(), &message)
    }
}

/// Reads pages until `limit` items (0 for all) or the last page. `fetch`
/// gets the page of a token and returns its items and the next token.
pub async fn collect_pages<T, F, Fut>(limit: usize, mut fetch: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = fetch(token).await?;
        items.extend(page);
        if limit > 0 && items.len() >= limit {
            items.truncate(limit);
            return Ok(items);
        }
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}

/// Returns the page size that covers `limit` items in one page, capped at
/// the API's maximum of 1000.
pub fn page_size(limit: usize) -> i64 {
    if limit == 0 {
        1000
    } else {
        limit.min(1000) as i64
    }
}
