//! Recovery on the agent: hooks around it, then every disk of the backup
//! written onto the matching disk of the instance.

use std::sync::Arc;

use backstop_chunkstore::{ManifestId, Repository};
use backstop_engine::{Progress, RestoreOptions};
use backstop_proto::agent::{RecoveryResult, RecoveryWork};
use tonic::Code;

use crate::{
    remote::Client,
    runner::{engine_failure, failure, stopped_failure, ProgressReporter, TaskFailure},
    AgentConfig,
};

/// Runs a recovery task and returns its byte counts.
pub(crate) async fn run_recovery(
    client: &Client,
    config: &AgentConfig,
    repository: &Repository,
    task_id: i64,
    work: &RecoveryWork,
) -> Result<RecoveryResult, TaskFailure> {
    tracing::info!(task_id, backup_id = %work.backup_id, "recovery started");
    let id =
        ManifestId::new(&work.manifest_id).map_err(|e| failure(Code::Internal, e.to_string()))?;
    let manifest = repository.get_disk_manifest(&id).await.map_err(|error| {
        let code = if error.is_not_found() {
            Code::DataLoss
        } else {
            Code::Unavailable
        };
        failure(
            code,
            format!(
                "cannot read the manifest of backup {}: {error}",
                work.backup_id
            ),
        )
    })?;
    if manifest.disks.len() > config.disks.len() {
        return Err(failure(
            Code::FailedPrecondition,
            format!(
                "backup {} has {} disks but this instance has {}; attach more disks",
                work.backup_id,
                manifest.disks.len(),
                config.disks.len()
            ),
        ));
    }

    let total: u64 = manifest.disks.iter().map(|d| d.size_bytes).sum();
    let reporter = Arc::new(ProgressReporter::new(client, config, task_id, total as i64));
    // The heartbeat timeout may have failed the task while this agent was
    // paused after taking it, so ask the server before the hook runs and
    // before anything is written.
    reporter.confirm(work.resume_offset).await?;

    run_hook("pre-recovery", config.hooks.pre_recovery.as_deref()).await?;

    let mut result = RecoveryResult::default();
    let mut done_before: u64 = 0;
    let resume = work.resume_offset.max(0) as u64;
    for (disk, target) in manifest.disks.iter().zip(&config.disks) {
        if resume >= done_before + disk.size_bytes {
            done_before += disk.size_bytes;
            continue;
        }
        let options = RestoreOptions {
            resume_offset: resume.saturating_sub(done_before),
            verify: config.verify_after_restore,
            ..RestoreOptions::default()
        };
        let sink = {
            let reporter = reporter.clone();
            let base = done_before;
            move |progress: Progress| {
                reporter.report((base + progress.processed_bytes) as i64, false)
            }
        };
        let stats = backstop_engine::restore_disk(repository, disk, &target.path, &options, &sink, &reporter.cancel)
            .await
            .map_err(|error| match error {
                cancelled @ backstop_engine::Error::Cancelled { .. } => {
                    stopped_failure(&reporter, "recovery", cancelled, |processed| {
                        format!(
                            "disk `{}` ({}) contains a partial restore up to byte {processed} and the disks \
                             after it were not written; run the recovery again to complete it",
                            target.name,
                            target.path.display()
                        )
                    })
                }
                backstop_engine::Error::DataLoss {
                    disk,
                    offset,
                    digest,
                    source,
                } => failure(
                    Code::DataLoss,
                    format!(
                        "backup {}: chunk {digest} of disk `{disk}` at byte offset {offset} is missing or corrupt \
                         in the repository ({source}). Target disk `{}` ({}) now contains a partial restore: \
                         the range of that chunk was not written, other ranges of the disk may have been, and \
                         the disks after it were not written. Run `backstop verify` on the server's data folder \
                         and recover from another backup",
                        work.backup_id,
                        target.name,
                        target.path.display()
                    ),
                ),
                other => engine_failure(other),
            })?;
        result.bytes_written += stats.bytes_written as i64;
        result.bytes_identical += stats.bytes_identical as i64;
        done_before += disk.size_bytes;
        tracing::info!(
            disk = %target.name,
            bytes_written = stats.bytes_written,
            bytes_identical = stats.bytes_identical,
            "disk restored"
        );
    }
    reporter.report_last(total as i64).await;

    run_hook("post-recovery", config.hooks.post_recovery.as_deref()).await?;
    tracing::info!(task_id, backup_id = %work.backup_id, bytes_written = result.bytes_written, "recovery finished");
    Ok(result)
}

/// Runs one hook command; its output goes to the agent log and a non-zero
/// exit fails the recovery with the hook's exit status.
async fn run_hook(name: &str, command: Option<&[String]>) -> Result<(), TaskFailure> {
    let Some((program, args)) = command.and_then(|c| c.split_first()) else {
        return Ok(());
    };
    tracing::info!(hook = name, program = %program, "running hook");
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| {
            failure(
                Code::FailedPrecondition,
                format!("{name} hook `{program}` could not start: {e}"),
            )
        })?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        tracing::info!(hook = name, "{line}");
    }
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        tracing::warn!(hook = name, "{line}");
    }
    if !output.status.success() {
        let status = output
            .status
            .code()
            .map_or_else(|| "a signal".to_owned(), |c| c.to_string());
        return Err(failure(
            Code::FailedPrecondition,
            format!("{name} hook `{program}` exited with status {status}; fix the hook and run the recovery again"),
        ));
    }
    Ok(())
}
