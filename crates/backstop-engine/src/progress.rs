//! Progress reports and cancellation shared by backup and restore.
//!
//! Cancellation uses [`tokio_util::sync::CancellationToken`], re-exported as
//! [`CancellationToken`]. The engine checks it before it starts each chunk,
//! lets the chunks already started finish, and then returns
//! [`Error::Cancelled`](crate::Error::Cancelled).

pub use tokio_util::sync::CancellationToken;

/// Stage of an operation that a [`Progress`] report belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading, hashing and uploading the source disk.
    Backup,
    /// Comparing, fetching and writing chunks onto the target.
    Restore,
    /// Reading the target back after the final sync.
    Verify,
}

/// One progress report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    /// Bytes of the disk handled so far, holes and unchanged chunks
    /// included. A restore counts from byte 0 of the disk, so a resumed
    /// restore starts at its resume offset.
    pub processed_bytes: u64,
    /// Disk size in bytes.
    pub total_bytes: u64,
}

/// Receiver of progress reports. The engine calls it at least once per
/// chunk, from the task that runs the operation, so it must return quickly.
///
/// Closures `Fn(Progress)` implement it.
pub trait ProgressSink: Send + Sync {
    fn report(&self, progress: Progress);
}

impl<F> ProgressSink for F
where
    F: Fn(Progress) + Send + Sync,
{
    fn report(&self, progress: Progress) {
        self(progress)
    }
}

/// Progress sink that drops every report.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn report(&self, _progress: Progress) {}
}
