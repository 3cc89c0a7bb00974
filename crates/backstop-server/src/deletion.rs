//! Deleting backups and archives, and the garbage collection that follows.
//!
//! A deletion marks the catalog rows deleted, removes the backups'
//! manifests from the repository, then collects garbage: chunks no manifest
//! references any more are deleted. Two rules keep chunks that running work
//! still needs:
//! - a backup that a running recovery reads, or that a running backup uses
//!   as its previous backup, cannot be deleted until that work ends;
//! - garbage collection is skipped while any backup runs, because a running
//!   backup may reuse a chunk it found in the repository before its
//!   manifest exists. Chunks skipped this way are reclaimed by the next
//!   deletion that finds no backup running.

use std::{collections::HashSet, time::Duration};

use backstop_catalog::{Backup, CatalogError, Operation, TaskType};
use backstop_chunkstore::{GcOptions, ManifestId};
use backstop_proto::backup::{DeleteArchiveMetadata, DeleteBackupMetadata};
use tonic::Code;

use crate::{
    auth::Caller,
    operations::{empty_response, OperationRequest},
    services::ApiContext,
    tasks::TaskPayload,
    ApiError,
};

const DELETE_BACKUP_METHOD: &str = "/yandex.cloud.backup.v1.BackupService/Delete";
const DELETE_ARCHIVE_METHOD: &str = "/yandex.cloud.backup.v1.BackupService/DeleteArchive";

/// Starts the deletion of one backup of `instance`.
pub async fn delete_backup(
    ctx: &ApiContext,
    caller: &Caller,
    idempotency_key: Option<String>,
    instance: &str,
    backup_id: &str,
) -> Result<Operation, ApiError> {
    if let Some(operation) = ctx
        .operations
        .find_earlier(caller, DELETE_BACKUP_METHOD, idempotency_key.as_deref())
        .await?
    {
        return Ok(operation);
    }
    let backup = live_backup(ctx, backup_id).await?;
    if backup.compute_instance_id != instance {
        return Err(ApiError::NotFound(format!(
            "backup {backup_id} of instance {instance} not found"
        )));
    }
    caller.check_folder(&backup.folder_id)?;
    check_not_in_use(ctx, std::slice::from_ref(&backup.id)).await?;

    let metadata = DeleteBackupMetadata {
        compute_instance_id: instance.to_owned(),
        backup_id: backup_id.to_owned(),
    };
    let (operation, created) = ctx
        .operations
        .create(
            caller,
            OperationRequest {
                method: DELETE_BACKUP_METHOD,
                idempotency_key,
                description: format!("Delete backup {backup_id}"),
                metadata: &metadata,
                resource_id: Some(instance.to_owned()),
            },
        )
        .await?;
    if created {
        // Registered as the worker, the deletion makes Cancel only flag the
        // operation: a deletion under way always runs to its end.
        ctx.operations.attach_worker(&operation.id);
        let ctx = ctx.clone();
        let operation_id = operation.id.clone();
        let backup_id = backup.id.clone();
        tokio::spawn(async move {
            let result = async {
                ctx.catalog.mark_backup_deleted(&backup_id).await?;
                remove_manifests(&ctx, std::slice::from_ref(&backup_id)).await;
                collect_garbage(&ctx).await;
                Ok::<(), ApiError>(())
            }
            .await;
            finish(&ctx, &operation_id, result).await;
        });
    }
    Ok(operation)
}

/// Starts the deletion of an archive and every backup in it.
pub async fn delete_archive(
    ctx: &ApiContext,
    caller: &Caller,
    idempotency_key: Option<String>,
    archive_id: &str,
) -> Result<Operation, ApiError> {
    if archive_id.is_empty() {
        return Err(ApiError::invalid_field(
            "archive_id",
            "required; give the id of the archive to delete",
        ));
    }
    if let Some(operation) = ctx
        .operations
        .find_earlier(caller, DELETE_ARCHIVE_METHOD, idempotency_key.as_deref())
        .await?
    {
        return Ok(operation);
    }
    let archive = match ctx.catalog.get_archive(archive_id).await {
        Ok(archive) if !archive.deleted => archive,
        Ok(_) | Err(CatalogError::NotFound { .. }) => {
            return Err(ApiError::NotFound(format!(
                "archive {archive_id} not found"
            )))
        }
        Err(error) => return Err(error.into()),
    };
    caller.check_folder(&archive.folder_id)?;
    let mut ids = Vec::new();
    let mut token = None;
    loop {
        let page = ctx
            .catalog
            .list_backups(&backstop_catalog::BackupQuery {
                selector: backstop_catalog::BackupSelector::Archive {
                    archive_id: archive.id.clone(),
                    folder_id: archive.folder_id.clone(),
                },
                order: backstop_catalog::SortOrder::Ascending,
                created_at: Vec::new(),
                page: backstop_catalog::PageRequest { size: 1000, token },
            })
            .await?;
        ids.extend(page.items.into_iter().map(|b| b.id));
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    check_not_in_use(ctx, &ids).await?;

    let metadata = DeleteArchiveMetadata {
        archive_id: archive.id.clone(),
        folder_id: archive.folder_id.clone(),
    };
    let (operation, created) = ctx
        .operations
        .create(
            caller,
            OperationRequest {
                method: DELETE_ARCHIVE_METHOD,
                idempotency_key,
                description: format!("Delete archive {}", archive.id),
                metadata: &metadata,
                resource_id: Some(archive.compute_instance_id.clone()),
            },
        )
        .await?;
    if created {
        // Registered as the worker, the deletion makes Cancel only flag the
        // operation: a deletion under way always runs to its end.
        ctx.operations.attach_worker(&operation.id);
        let ctx = ctx.clone();
        let operation_id = operation.id.clone();
        tokio::spawn(async move {
            let result = async {
                ctx.catalog.mark_archive_deleted(&archive.id).await?;
                remove_manifests(&ctx, &ids).await;
                collect_garbage(&ctx).await;
                Ok::<(), ApiError>(())
            }
            .await;
            finish(&ctx, &operation_id, result).await;
        });
    }
    Ok(operation)
}

async fn live_backup(ctx: &ApiContext, backup_id: &str) -> Result<Backup, ApiError> {
    match ctx.catalog.get_backup(backup_id).await {
        Ok(backup) if !backup.deleted => Ok(backup),
        Ok(_) | Err(CatalogError::NotFound { .. }) => {
            Err(ApiError::NotFound(format!("backup {backup_id} not found")))
        }
        Err(error) => Err(error.into()),
    }
}

/// Rejects the deletion of backups that running recoveries read or that
/// running backups build on.
async fn check_not_in_use(ctx: &ApiContext, backup_ids: &[String]) -> Result<(), ApiError> {
    let ids: HashSet<&str> = backup_ids.iter().map(String::as_str).collect();
    for task in ctx.catalog.list_active_tasks().await? {
        let used = match TaskPayload::from_json(&task.payload)? {
            TaskPayload::Recovery(p) => Some(p.backup_id),
            TaskPayload::Backup(p) => p.previous_backup_id,
        };
        if let Some(id) = used.filter(|id| ids.contains(id.as_str())) {
            return Err(ApiError::FailedPrecondition(format!(
                "backup {id} is in use by operation {} ({}); wait for it to finish or cancel it",
                task.operation_id,
                if task.task_type == TaskType::Recovery {
                    "a recovery"
                } else {
                    "a backup"
                }
            )));
        }
    }
    Ok(())
}

async fn remove_manifests(ctx: &ApiContext, backup_ids: &[String]) {
    for id in backup_ids {
        let removed = match ManifestId::new(id) {
            Ok(manifest) => ctx.repository.delete_manifest(&manifest).await.map(|_| ()),
            Err(error) => Err(error),
        };
        if let Err(error) = removed {
            // The backup is already deleted in the catalog; a manifest left
            // behind only keeps its chunks until it is removed by hand.
            tracing::warn!(backup_id = %id, error = %error, "cannot remove the manifest of a deleted backup");
        }
    }
}

/// Deletes chunks no manifest references, unless a backup is running.
pub async fn collect_garbage(ctx: &ApiContext) {
    let running = match ctx.catalog.list_active_tasks().await {
        Ok(tasks) => tasks.iter().any(|t| t.task_type == TaskType::Backup),
        Err(error) => {
            tracing::warn!(error = ?error, "cannot list running tasks; skipping garbage collection");
            return;
        }
    };
    if running {
        tracing::info!("a backup is running; garbage collection waits for a later deletion");
        return;
    }
    let options = GcOptions {
        grace_period: ctx.gc_grace_period,
        dry_run: false,
    };
    match ctx
        .repository
        .garbage_collect(&HashSet::new(), &options)
        .await
    {
        Ok(report) => tracing::info!(
            deleted = report.deleted,
            deleted_bytes = report.deleted_bytes,
            kept_live = report.kept_live,
            "garbage collection finished"
        ),
        Err(error) => {
            tracing::error!(error = %error, "garbage collection failed; chunks stay until the next run")
        }
    }
}

async fn finish(ctx: &ApiContext, operation_id: &str, result: Result<(), ApiError>) {
    let result = result.map(|()| empty_response()).map_err(|error| {
        tracing::error!(error = ?error, operation_id, "deletion failed");
        (
            Code::Internal,
            "the deletion failed; see the server log".to_owned(),
        )
    });
    if let Err(error) = ctx.operations.finish(operation_id, result).await {
        tracing::error!(error = ?error, operation_id, "cannot finish the deletion operation");
    }
}

/// Default grace period of garbage collection: chunks written this recently
/// are kept, in case a backup that started since the check still needs them.
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(600);
