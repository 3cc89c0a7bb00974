//! The crate's one error type, [`Error`], and its `Result` alias.
//!
//! Each message names the disk or path, the action that failed and the
//! cause, and where there is one, what to do next. The server maps
//! [`Error::DataLoss`] and [`Error::VerifyMismatch`] to gRPC `DATA_LOSS`,
//! [`Error::TargetTooSmall`] to `FAILED_PRECONDITION` and
//! [`Error::Cancelled`] to `CANCELLED`, so those stay separate variants.

use std::io;
use std::path::PathBuf;

use backstop_chunkstore::ChunkDigest;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of backup, restore and partition table reading.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A read, write, sync or open of a disk image or block device failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        path: PathBuf,
        /// Failed action, completed by the path in the message, for example
        /// "read 4194304 bytes at offset 0 of".
        action: String,
        #[source]
        source: io::Error,
    },

    /// A chunk that the restore needs is missing from the repository or
    /// fails its checks. Nothing of that range was written to the target.
    #[error(
        "cannot restore disk `{disk}` at byte offset {offset}: chunk {digest} is missing or corrupt in the repository ({source}); \
         nothing from this chunk was written, so the target contains a partial restore; restore from another backup or repair the repository"
    )]
    DataLoss {
        disk: String,
        offset: u64,
        digest: ChunkDigest,
        /// Boxed because the repository's error type is large.
        #[source]
        source: Box<backstop_chunkstore::Error>,
    },

    /// A block device target is smaller than the disk in the backup. Block
    /// devices are never resized.
    #[error(
        "target disk {} is {target_size} bytes but backup disk `{disk}` needs {disk_size} bytes; grow the disk or choose another instance",
        target.display()
    )]
    TargetTooSmall {
        target: PathBuf,
        disk: String,
        target_size: u64,
        disk_size: u64,
    },

    /// The cancellation token fired. The operation stopped at a chunk
    /// boundary.
    ///
    /// For a backup, `processed` counts the bytes of the disk that were
    /// handled, and nothing of the backup is usable. For a restore it is the
    /// byte offset up to which the target matches the backup. Everything
    /// before it was written and synced, so it can be passed as
    /// `RestoreOptions::resume_offset`. Bytes past it are partly restored.
    #[error(
        "cancelled after processing {processed} bytes; the operation stopped at a chunk boundary"
    )]
    Cancelled { processed: u64 },

    /// A repository operation other than reading a chunk for a restore
    /// failed, for example an existence check or a chunk upload.
    #[error("failed to {action}: {source}")]
    Repository {
        action: String,
        #[source]
        source: Box<backstop_chunkstore::Error>,
    },

    /// After the final sync, the target does not read back what was
    /// written: the device or file system lost or changed data.
    #[error(
        "verification of disk `{disk}` on {} failed at byte offset {offset}: the target does not contain the restored data; \
         check the target device for errors and restore again",
        target.display()
    )]
    VerifyMismatch {
        disk: String,
        target: PathBuf,
        offset: u64,
    },

    /// The source or target path is neither a regular file nor a block
    /// device, or cannot be used as one.
    #[error("invalid target {}: {reason}", path.display())]
    InvalidTarget { path: PathBuf, reason: String },

    /// An option has a value the engine cannot work with.
    #[error("invalid option: {reason}")]
    InvalidOptions { reason: String },

    /// A disk manifest's entries do not match its declared sizes.
    #[error("invalid manifest for disk `{disk}`: {reason}")]
    InvalidManifest { disk: String, reason: String },

    /// A partition table was found but is damaged, for example a protective
    /// MBR with no valid GPT header behind it.
    #[error("invalid partition table on {}: {reason}", path.display())]
    InvalidPartitionTable { path: PathBuf, reason: String },

    /// A blocking task (file I/O or hashing) panicked.
    #[error("background task to {action} failed: {source}")]
    TaskFailed {
        action: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Error {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: impl Into<String>,
        source: io::Error,
    ) -> Self {
        Error::Io {
            path: path.into(),
            action: action.into(),
            source,
        }
    }
}

/// Runs blocking work (file I/O, hashing) on tokio's blocking thread pool.
pub(crate) async fn run_blocking<T, F>(action: &'static str, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| Error::TaskFailed { action, source })?
}
