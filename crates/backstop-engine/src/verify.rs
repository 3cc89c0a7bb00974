//! Post-restore verification: re-reads the restored ranges of a target
//! after the final sync and checks each against its manifest entry.

use std::sync::Arc;

use backstop_chunkstore::{is_zero, ChunkEntry, ChunkHasher, DiskManifest, Extent};
use futures::{future, stream, StreamExt};

use crate::device::DiskFile;
use crate::error::{run_blocking, Error, Result};
use crate::progress::{CancellationToken, Phase, Progress, ProgressSink};

/// Target, manifest and settings of one verification.
pub(crate) struct VerifyRequest<'a> {
    pub(crate) target: &'a Arc<DiskFile>,
    pub(crate) disk: &'a DiskManifest,
    /// Hasher of the repository the manifest came from.
    pub(crate) hasher: &'a ChunkHasher,
    /// Index of the first range to check.
    pub(crate) start_index: u64,
    pub(crate) max_chunks_in_flight: usize,
}

/// Reads the ranges of the disk from `start_index` on back from the target
/// and returns the number of bytes checked.
///
/// The target's cached pages are dropped first, so that on most file systems
/// and devices the reads come from storage rather than from the page cache.
/// A mismatch is [`Error::VerifyMismatch`]. When `cancel` fires, the result
/// is [`Error::Cancelled`] with the disk size as `processed`, because the
/// restore itself is complete and synced.
pub(crate) async fn verify_target(
    request: VerifyRequest<'_>,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<u64> {
    let VerifyRequest {
        target,
        disk,
        hasher,
        start_index,
        max_chunks_in_flight,
    } = request;
    {
        let target = Arc::clone(target);
        run_blocking("drop cached pages of the target", move || {
            target.drop_cached_pages();
            Ok(())
        })
        .await?;
    }

    let start = start_index * u64::from(disk.chunk_size);
    let report = |processed_bytes| {
        progress.report(Progress {
            phase: Phase::Verify,
            processed_bytes,
            total_bytes: disk.size_bytes,
        })
    };
    report(start);

    let mut checks = stream::iter(disk.extents().skip(start_index as usize))
        .take_while(|_| future::ready(!cancel.is_cancelled()))
        .map(|extent| check_range(Arc::clone(target), hasher.clone(), extent))
        .buffered(max_chunks_in_flight);
    let mut processed = start;
    while let Some(result) = checks.next().await {
        let (offset, matches) = result?;
        if !matches {
            return Err(Error::VerifyMismatch {
                disk: disk.name.clone(),
                target: target.path.clone(),
                offset,
            });
        }
        processed = offset + u64::from(disk.range_len(offset / u64::from(disk.chunk_size)));
        report(processed);
    }

    if processed < disk.size_bytes {
        return Err(Error::Cancelled {
            processed: disk.size_bytes,
        });
    }
    Ok(processed - start)
}

/// Returns the range offset and whether the target contains the entry's
/// data.
async fn check_range(
    target: Arc<DiskFile>,
    hasher: ChunkHasher,
    extent: Extent,
) -> Result<(u64, bool)> {
    run_blocking("verify a restored range", move || {
        let len = u64::from(extent.len);
        let matches = match extent.entry {
            ChunkEntry::Hole if target.range_is_hole(extent.offset, len) => true,
            ChunkEntry::Chunk { .. } if target.range_is_hole(extent.offset, len) => false,
            entry => {
                let mut current = vec![0u8; extent.len as usize];
                target.read_range(extent.offset, &mut current)?;
                match entry {
                    ChunkEntry::Hole => is_zero(&current),
                    ChunkEntry::Chunk { digest, .. } => hasher.digest(&current) == digest,
                }
            }
        };
        Ok((extent.offset, matches))
    })
    .await
}
