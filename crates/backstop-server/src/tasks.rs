//! Task payloads: the work the server gives an agent, stored as JSON with
//! each task, and the operation metadata that shows a task's progress.

use backstop_proto::backup::{ExecuteMetadata, StartRecoveryMetadata};
use serde::{Deserialize, Serialize};

use crate::operations::pack;

/// Version of the payload JSON; a server refuses payloads of a newer one.
pub const PAYLOAD_VERSION: u32 = 1;

/// The work of one task.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskPayload {
    Backup(BackupPayload),
    Recovery(RecoveryPayload),
}

/// A backup of every disk of an instance into an archive.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackupPayload {
    pub version: u32,
    pub backup_id: String,
    pub archive_id: String,
    pub folder_id: String,
    pub policy_id: String,
    pub policy_name: String,
    /// A `PolicySettings.Compression` number.
    pub compression: i32,
    pub chunk_size: u32,
    /// The archive's latest backup, whose manifest lets unchanged chunks
    /// skip the existence query.
    pub previous_backup_id: Option<String>,
    /// Whether this is the archive's first backup.
    pub full: bool,
}

/// A recovery of a backup onto an instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RecoveryPayload {
    pub version: u32,
    pub backup_id: String,
    pub source_instance_id: String,
    pub resume_offset: i64,
}

impl TaskPayload {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("task payloads serialize")
    }

    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let payload: TaskPayload = serde_json::from_str(text)?;
        let version = match &payload {
            TaskPayload::Backup(p) => p.version,
            TaskPayload::Recovery(p) => p.version,
        };
        anyhow::ensure!(
            version <= PAYLOAD_VERSION,
            "task payload version {version} is newer than this server's {PAYLOAD_VERSION}"
        );
        Ok(payload)
    }

    /// Builds the operation metadata that shows `percent` of this task.
    pub fn metadata(&self, instance: &str, percent: f64) -> backstop_catalog::AnyMessage {
        match self {
            TaskPayload::Backup(p) => pack(&ExecuteMetadata {
                policy_id: p.policy_id.clone(),
                compute_instance_id: instance.to_owned(),
                progress_percentage: percent,
            }),
            TaskPayload::Recovery(p) => pack(&StartRecoveryMetadata {
                progress_percentage: percent,
                src_backup_id: p.backup_id.clone(),
                dst_compute_instance_id: instance.to_owned(),
            }),
        }
    }
}

/// Converts bytes done of a total to a percentage in 0..=100.
pub fn percent(current: i64, total: i64) -> f64 {
    if total <= 0 {
        return 0.0;
    }
    (current.clamp(0, total) as f64 * 100.0 / total as f64).clamp(0.0, 100.0)
}
