//! `backstop backup ...`: BackupService.

use backstop_proto::backup::{
    backup_service_client::BackupServiceClient, list_archives_request, list_backups_request,
    DeleteBackupRequest, GetBackupRequest, ListArchivesRequest, ListBackupsRequest,
    ListFilesRequest, StartRecoveryRequest,
};
use clap::Subcommand;

use super::{
    collect_pages,
    output::{bytes_col, col, Column},
    page_size, AsyncArg, ClientArgs, Context, IdArg, ResourceTypeArg,
};

#[derive(clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    client: ClientArgs,

    #[command(subcommand)]
    command: BackupCommand,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// List backups of the folder, an instance, a policy or an archive.
    List {
        /// Only backups of this instance.
        #[arg(long)]
        instance_id: Option<String>,
        /// Only backups made by this policy.
        #[arg(long)]
        policy_id: Option<String>,
        /// Only backups in this archive (with the folder id).
        #[arg(long, conflicts_with_all = ["instance_id", "policy_id"])]
        archive_id: Option<String>,
        /// Only backups of this resource type.
        #[arg(long = "type", value_enum)]
        resource_type: Option<ResourceTypeArg>,
        /// Sort order, as the API's `order_by`, for example `created_at desc`.
        #[arg(long)]
        order_by: Option<String>,
        /// Filter expression, as the API's `filter`.
        #[arg(long)]
        filter: Option<String>,
        /// Maximum number of backups to print, or 0 for all.
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Show one backup of the folder.
    Get {
        #[command(flatten)]
        id: IdArg,
    },
    /// Restore a backup onto an instance.
    Recover {
        /// Backup to restore.
        #[arg(long, required = true)]
        source_backup_id: Option<String>,
        /// Instance whose disks the backup overwrites.
        #[arg(long, required = true)]
        destination_instance_id: Option<String>,
        #[command(flatten)]
        run_async: AsyncArg,
    },
    /// Delete a backup of an instance.
    Delete {
        #[command(flatten)]
        id: IdArg,
        /// Instance the backup belongs to.
        #[arg(long, required = true)]
        instance_id: Option<String>,
        #[command(flatten)]
        run_async: AsyncArg,
    },
    /// List archives of the folder or of one instance.
    ListArchives {
        /// Only archives of this instance instead of the whole folder.
        #[arg(long)]
        instance_id: Option<String>,
    },
    /// List the files and folders inside a backup.
    ListFiles {
        #[command(flatten)]
        id: IdArg,
        /// Folder inside the backup to list [default: the top level].
        #[arg(long)]
        source_id: Option<String>,
    },
}

const BACKUP_COLUMNS: &[Column] = &[
    col("ID", "id"),
    col("INSTANCE ID", "compute_instance_id"),
    col("POLICY ID", "policy_id"),
    col("CREATED AT", "created_at"),
    col("TYPE", "type"),
    bytes_col("SIZE", "size"),
];

const ARCHIVE_COLUMNS: &[Column] = &[
    col("ID", "id"),
    col("NAME", "name"),
    col("INSTANCE ID", "compute_instance_id"),
    col("POLICY ID", "backup_plan_id"),
    col("LAST BACKUP AT", "last_backup_created_at"),
    bytes_col("SIZE", "size"),
];

const FILE_COLUMNS: &[Column] = &[
    col("ID", "id"),
    col("TYPE", "type"),
    col("NAME", "name"),
    col("FULL PATH", "full_path"),
    bytes_col("SIZE", "size"),
    col("MODIFIED AT", "modified_at"),
];

pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    let context = Context::connect(&args.client).await?;
    let mut client = BackupServiceClient::new(context.transport.clone());
    match args.command {
        BackupCommand::List {
            instance_id,
            policy_id,
            archive_id,
            resource_type,
            order_by,
            filter,
            limit,
        } => {
            let id = match (instance_id, policy_id, archive_id) {
                (Some(instance), Some(policy), _) => {
                    list_backups_request::Id::InstancePolicy(list_backups_request::InstancePolicy {
                        compute_instance_id: instance,
                        policy_id: policy,
                    })
                }
                (Some(instance), None, _) => list_backups_request::Id::ComputeInstanceId(instance),
                (None, Some(policy), _) => list_backups_request::Id::PolicyId(policy),
                (None, None, Some(archive)) => {
                    list_backups_request::Id::Archive(list_backups_request::ArchiveParameters {
                        archive_id: archive,
                        folder_id: context.settings.folder_id()?,
                    })
                }
                (None, None, None) => {
                    list_backups_request::Id::FolderId(context.settings.folder_id()?)
                }
            };
            let backups = collect_pages(limit, |page_token| {
                let mut client = client.clone();
                let request = ListBackupsRequest {
                    id: Some(id.clone()),
                    order_by: order_by.clone().unwrap_or_default(),
                    filter: filter.clone().unwrap_or_default(),
                    r#type: resource_type.map_or(0, ResourceTypeArg::to_proto),
                    page_size: page_size(limit),
                    page_token,
                };
                async move {
                    let response = client.list(request).await?.into_inner();
                    Ok((response.backups, response.next_page_token))
                }
            })
            .await?;
            context.print_list(&backups, BACKUP_COLUMNS)
        }
        BackupCommand::Get { id } => {
            let backup = client
                .get(GetBackupRequest {
                    backup_id: id.require("backup")?,
                    folder_id: context.settings.folder_id()?,
                })
                .await?
                .into_inner();
            context.print(&backup)
        }
        BackupCommand::Recover {
            source_backup_id,
            destination_instance_id,
            run_async,
        } => {
            let operation = client
                .start_recovery(StartRecoveryRequest {
                    compute_instance_id: destination_instance_id.unwrap_or_default(),
                    backup_id: source_backup_id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            context.finish_operation(operation, run_async).await
        }
        BackupCommand::Delete {
            id,
            instance_id,
            run_async,
        } => {
            let operation = client
                .delete(DeleteBackupRequest {
                    compute_instance_id: instance_id.unwrap_or_default(),
                    backup_id: id.require("backup")?,
                })
                .await?
                .into_inner();
            context.finish_operation(operation, run_async).await
        }
        BackupCommand::ListArchives { instance_id } => {
            let id = match instance_id {
                Some(instance) => list_archives_request::Id::ComputeInstanceId(instance),
                None => list_archives_request::Id::FolderId(context.settings.folder_id()?),
            };
            let archives = client
                .list_archives(ListArchivesRequest { id: Some(id) })
                .await?
                .into_inner()
                .archives;
            context.print_list(&archives, ARCHIVE_COLUMNS)
        }
        BackupCommand::ListFiles { id, source_id } => {
            let files = client
                .list_files(ListFilesRequest {
                    folder_id: context.settings.folder_id()?,
                    backup_id: id.require("backup")?,
                    source_id: source_id.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .files;
            context.print_list(&files, FILE_COLUMNS)
        }
    }
}
