//! `backstop vm ...` (ResourceService), `backstop operation ...`
//! (OperationService) and `backstop provider ...` (ProviderService).

use backstop_proto::{
    backup::{
        provider_service_client::ProviderServiceClient,
        resource_service_client::ResourceServiceClient, ActivateProviderRequest,
        GetResourceRequest, ListActivatedProvidersRequest, ListResourceOperationsRequest,
        ListResourcesRequest, ListTasksRequest,
    },
    operation::{
        operation_service_client::OperationServiceClient, CancelOperationRequest,
        GetOperationRequest,
    },
};
use clap::Subcommand;

use super::{
    collect_pages,
    output::{bytes_col, col, Column},
    page_size, wait, AsyncArg, ClientArgs, Context, IdArg, ResourceTypeArg,
};

#[derive(clap::Args)]
pub struct VmArgs {
    #[command(flatten)]
    client: ClientArgs,

    #[command(subcommand)]
    command: VmCommand,
}

#[derive(Subcommand)]
enum VmCommand {
    /// List the instances of the folder.
    List {
        /// Only instances of this resource type.
        #[arg(long = "type", value_enum)]
        resource_type: Option<ResourceTypeArg>,
        /// Maximum number of instances to print, or 0 for all.
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Show one instance.
    Get {
        #[command(flatten)]
        id: IdArg,
        /// Also show the folder and tenant the instance belongs to.
        #[arg(long)]
        include_tenant_info: bool,
    },
    /// List the tasks (backups, recoveries, ...) of an instance.
    ListTasks {
        #[command(flatten)]
        id: IdArg,
        /// Maximum number of tasks to print, or 0 for all.
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// List the operations on an instance.
    ListOperations {
        #[command(flatten)]
        id: IdArg,
        /// Maximum number of operations to print, or 0 for all.
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
}

#[derive(clap::Args)]
pub struct OperationArgs {
    #[command(flatten)]
    client: ClientArgs,

    #[command(subcommand)]
    command: OperationCommand,
}

#[derive(Subcommand)]
enum OperationCommand {
    /// Show an operation.
    Get {
        #[command(flatten)]
        id: IdArg,
    },
    /// Wait for an operation to finish and print its result.
    Wait {
        #[command(flatten)]
        id: IdArg,
    },
    /// Ask the server to cancel an operation and print it.
    Cancel {
        #[command(flatten)]
        id: IdArg,
    },
}

#[derive(clap::Args)]
pub struct ProviderArgs {
    #[command(flatten)]
    client: ClientArgs,

    #[command(subcommand)]
    command: ProviderCommand,
}

#[derive(Subcommand)]
enum ProviderCommand {
    /// Activate the backup provider for the folder.
    Activate {
        /// Provider name.
        #[arg(long, default_value = "cloudbackup")]
        name: String,
        /// Do not create the provider's default policies.
        #[arg(long)]
        skip_default_policy: bool,
        #[command(flatten)]
        run_async: AsyncArg,
    },
    /// List the providers activated for the folder (ListActivated).
    List,
}

const RESOURCE_COLUMNS: &[Column] = &[
    col("INSTANCE ID", "compute_instance_id"),
    col("ONLINE", "online"),
    col("ENABLED", "enabled"),
    col("STATUS", "status"),
    col("LAST BACKUP", "last_backup_time"),
    col("NEXT BACKUP", "next_backup_time"),
];

const TASK_COLUMNS: &[Column] = &[
    col("ID", "id"),
    col("TYPE", "type"),
    col("STATUS", "status"),
    col("RESULT", "result_code"),
    bytes_col("DONE", "progress.current"),
    bytes_col("TOTAL", "progress.total"),
    col("POLICY ID", "policy_id"),
    col("ENQUEUED AT", "enqueued_at"),
];

const OPERATION_COLUMNS: &[Column] = &[
    col("ID", "id"),
    col("DESCRIPTION", "description"),
    col("CREATED AT", "created_at"),
    col("MODIFIED AT", "modified_at"),
    col("DONE", "done"),
    col("ERROR", "error.message"),
];

pub async fn run_vm(args: VmArgs) -> anyhow::Result<()> {
    let context = Context::connect(&args.client).await?;
    let client = ResourceServiceClient::new(context.transport.clone());
    match args.command {
        VmCommand::List {
            resource_type,
            limit,
        } => {
            let folder_id = context.settings.folder_id()?;
            let resources = collect_pages(limit, |page_token| {
                let mut client = client.clone();
                let request = ListResourcesRequest {
                    folder_id: folder_id.clone(),
                    page_size: page_size(limit),
                    page_token,
                    r#type: resource_type.map_or(0, ResourceTypeArg::to_proto),
                };
                async move {
                    let response = client.list(request).await?.into_inner();
                    Ok((response.resources, response.next_page_token))
                }
            })
            .await?;
            context.print_list(&resources, RESOURCE_COLUMNS)
        }
        VmCommand::Get {
            id,
            include_tenant_info,
        } => {
            let response = client
                .clone()
                .get(GetResourceRequest {
                    compute_instance_id: id.require("instance")?,
                    include_tenant_info,
                })
                .await?
                .into_inner();
            match response.resource {
                Some(resource) => context.print(&resource),
                None => context.print(&response),
            }
        }
        VmCommand::ListTasks { id, limit } => {
            let instance = id.require("instance")?;
            let tasks = collect_pages(limit, |page_token| {
                let mut client = client.clone();
                let request = ListTasksRequest {
                    compute_instance_id: instance.clone(),
                    page_size: page_size(limit),
                    page_token,
                };
                async move {
                    let response = client.list_tasks(request).await?.into_inner();
                    Ok((response.tasks, response.next_page_token))
                }
            })
            .await?;
            context.print_list(&tasks, TASK_COLUMNS)
        }
        VmCommand::ListOperations { id, limit } => {
            let instance = id.require("instance")?;
            let operations = collect_pages(limit, |page_token| {
                let mut client = client.clone();
                let request = ListResourceOperationsRequest {
                    compute_instance_id: instance.clone(),
                    page_size: page_size(limit),
                    page_token,
                };
                async move {
                    let response = client.list_operations(request).await?.into_inner();
                    Ok((response.operations, response.next_page_token))
                }
            })
            .await?;
            context.print_list(&operations, OPERATION_COLUMNS)
        }
    }
}

pub async fn run_operation(args: OperationArgs) -> anyhow::Result<()> {
    let context = Context::connect(&args.client).await?;
    let mut client = OperationServiceClient::new(context.transport.clone());
    match args.command {
        OperationCommand::Get { id } => {
            let operation = client
                .get(GetOperationRequest {
                    operation_id: id.require("operation")?,
                })
                .await?
                .into_inner();
            context.print(&operation)
        }
        OperationCommand::Wait { id } => {
            let operation = client
                .get(GetOperationRequest {
                    operation_id: id.require("operation")?,
                })
                .await?
                .into_inner();
            let done = wait::wait(&context.transport, operation).await?;
            context.print_result(&done)
        }
        OperationCommand::Cancel { id } => {
            let operation = client
                .cancel(CancelOperationRequest {
                    operation_id: id.require("operation")?,
                })
                .await?
                .into_inner();
            context.print(&operation)
        }
    }
}

pub async fn run_provider(args: ProviderArgs) -> anyhow::Result<()> {
    let context = Context::connect(&args.client).await?;
    let mut client = ProviderServiceClient::new(context.transport.clone());
    match args.command {
        ProviderCommand::Activate {
            name,
            skip_default_policy,
            run_async,
        } => {
            let operation = client
                .activate(ActivateProviderRequest {
                    folder_id: context.settings.folder_id()?,
                    name,
                    skip_default_policy,
                    instance_registration_id: String::new(),
                })
                .await?
                .into_inner();
            context.finish_operation(operation, run_async).await
        }
        ProviderCommand::List => {
            let response = client
                .list_activated(ListActivatedProvidersRequest {
                    folder_id: context.settings.folder_id()?,
                    instance_registration_id: String::new(),
                })
                .await?
                .into_inner();
            context.print(&response)
        }
    }
}
