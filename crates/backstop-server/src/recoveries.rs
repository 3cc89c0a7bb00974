//! Starting a recovery: the synchronous checks of `StartRecovery` and the
//! operation with its agent task.

use backstop_catalog::{CatalogError, NewTask, Operation, TaskType};
use backstop_proto::backup::StartRecoveryMetadata;

use crate::{
    auth::Caller,
    operations::OperationRequest,
    services::ApiContext,
    tasks::{RecoveryPayload, TaskPayload, PAYLOAD_VERSION},
    ApiError,
};

const METHOD: &str = "/yandex.cloud.backup.v1.BackupService/StartRecovery";

/// Checks that `backup_id` can be applied to `instance` now and records
/// the operation with its task. A repeated idempotency key returns the first
/// operation and starts nothing.
pub async fn start_recovery(
    ctx: &ApiContext,
    caller: &Caller,
    idempotency_key: Option<String>,
    backup_id: &str,
    instance: &str,
) -> Result<Operation, ApiError> {
    let earlier = ctx
        .operations
        .find_earlier(caller, METHOD, idempotency_key.as_deref())
        .await?;
    if let Some(operation) = earlier {
        return Ok(operation);
    }

    let backup = match ctx.catalog.get_backup(backup_id).await {
        Ok(backup) if !backup.deleted => backup,
        Ok(_) | Err(CatalogError::NotFound { .. }) => {
            return Err(ApiError::NotFound(format!(
                "backup {backup_id} not found; list backups to find one that exists"
            )))
        }
        Err(error) => return Err(error.into()),
    };
    let resource = match ctx.catalog.get_resource(instance).await {
        Ok(resource) => resource,
        Err(CatalogError::NotFound { .. }) => {
            return Err(ApiError::NotFound(format!(
                "instance {instance} not found; an agent must register it first"
            )))
        }
        Err(error) => return Err(error.into()),
    };
    caller.check_folder(&backup.folder_id)?;
    caller.check_folder(&resource.folder_id)?;

    crate::backups::check_instance_ready(ctx, &resource).await?;
    let targets = ctx.catalog.list_instance_disks(instance).await?;
    if targets.len() < backup.disks.len() {
        return Err(ApiError::FailedPrecondition(format!(
            "instance {instance} has {} disks but backup {backup_id} has {}; attach more disks or choose another instance",
            targets.len(),
            backup.disks.len()
        )));
    }
    for (source, target) in backup.disks.iter().zip(&targets) {
        if target.size < source.size {
            return Err(ApiError::FailedPrecondition(format!(
                "target disk `{}` of instance {instance} is {} bytes but backup disk `{}` needs {} bytes; \
                 grow the disk or choose another instance",
                target.name, target.size, source.name, source.size
            )));
        }
    }

    let payload = TaskPayload::Recovery(RecoveryPayload {
        version: PAYLOAD_VERSION,
        backup_id: backup.id.clone(),
        source_instance_id: backup.compute_instance_id.clone(),
        resume_offset: 0,
    });
    let metadata = StartRecoveryMetadata {
        progress_percentage: 0.0,
        src_backup_id: backup.id.clone(),
        dst_compute_instance_id: instance.to_owned(),
    };
    let created = ctx
        .operations
        .create_with_task(
            caller,
            OperationRequest {
                method: METHOD,
                idempotency_key,
                description: format!("Recover backup {} onto instance {instance}", backup.id),
                metadata: &metadata,
                resource_id: Some(instance.to_owned()),
            },
            NewTask {
                compute_instance_id: instance.to_owned(),
                policy_id: backup.policy_id.clone(),
                task_type: TaskType::Recovery,
                payload: payload.to_json(),
            },
        )
        .await?;
    ctx.agents.task_enqueued.notify_waiters();
    Ok(created.operation)
}
