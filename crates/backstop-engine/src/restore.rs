//! Disk restore: [`restore_disk`] writes a [`DiskManifest`] onto a raw image
//! file or block device, skipping every range that already contains the
//! backed-up data.
//!
//! Each chunk range goes through one task: read the target range and hash
//! it (differential restore), fetch and verify the chunk only if the hashes
//! differ, decode it into a reused buffer, write it with one positioned
//! write (into a hole, without its long runs of zeros), then start the
//! range's writeback, so the device writes while later chunks decode. Up to
//! `max_chunks_in_flight` ranges run at once. Their results are consumed in
//! disk order, so progress is always a byte offset below which the whole
//! target is restored. Post-restore verification lives in module `verify`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use backstop_chunkstore::{
    is_zero, ChunkDigest, ChunkEntry, ChunkHasher, DiskManifest, Extent, Repository, MAX_CHUNK_LEN,
};
use futures::{future, stream, StreamExt};

use crate::buffers::BufferPool;
use crate::device::{DiskFile, OpenedTarget, TargetKind};
use crate::error::{run_blocking, Error, Result};
use crate::progress::{CancellationToken, Phase, Progress, ProgressSink};
use crate::verify::{verify_target, VerifyRequest};

/// Settings of [`restore_disk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Byte offset of the disk to start at, rounded down to a chunk
    /// boundary. Ranges before it are left as they are. Used to resume a
    /// restore after [`Error::Cancelled`] or a server restart. Default 0.
    pub resume_offset: u64,
    /// Shrinks a regular-file target that is larger than the disk to the
    /// disk size. When false (the default), the file keeps its size and
    /// [`RestoreStats::target_size_bytes`] reports it.
    pub truncate: bool,
    /// Reads each target range before writing and skips the write when the
    /// range already contains the chunk. Default true. Turning it off saves the
    /// reads when the target is known to differ everywhere.
    pub differential: bool,
    /// Re-reads the restored ranges after the final sync and checks them
    /// against the manifest. Default false.
    pub verify: bool,
    /// Maximum number of chunk ranges handled at once. Peak memory is about
    /// `2 * max_chunks_in_flight * chunk_size`, because a range keeps the
    /// stored and the decoded chunk while it decodes. Default 8.
    pub max_chunks_in_flight: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            resume_offset: 0,
            truncate: false,
            differential: true,
            verify: false,
            max_chunks_in_flight: 8,
        }
    }
}

/// Counters of one disk restore. Byte counts cover the ranges from the
/// resume offset to the end of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreStats {
    /// Bytes of chunk data written to the target.
    pub bytes_written: u64,
    /// Bytes in chunk ranges that already matched and were not written.
    pub bytes_identical: u64,
    /// Bytes in the disk's holes.
    pub hole_bytes: u64,
    /// Hole bytes where the target held data, which were punched out of a
    /// file or overwritten with zeros on a block device.
    pub hole_bytes_cleared: u64,
    /// Chunks read from the repository.
    pub chunks_fetched: u64,
    pub target_kind: TargetKind,
    /// Target size in bytes after the restore. A regular file larger than
    /// the disk keeps its size unless `truncate` was set.
    pub target_size_bytes: u64,
    /// Bytes read back and checked after the sync, when `verify` was set.
    pub bytes_verified: u64,
}

/// Checks that a block device of `target_size` bytes can hold disk
/// `disk_name` of `disk_size` bytes.
pub fn check_target_size(
    disk_name: &str,
    target: &Path,
    disk_size: u64,
    target_size: u64,
) -> Result<()> {
    if target_size < disk_size {
        return Err(Error::TargetTooSmall {
            target: target.to_owned(),
            disk: disk_name.to_owned(),
            target_size,
            disk_size,
        });
    }
    Ok(())
}

/// Restores `disk` from `repository` onto the raw image file or block
/// device at `target`.
///
/// A missing target is created as a regular file. A file target is grown to
/// the disk size, and shrunk only with `options.truncate`. A block device is
/// never resized, and one smaller than the disk is rejected with
/// [`Error::TargetTooSmall`] before anything is written.
///
/// Every chunk is verified against its digest before it is written, so a
/// missing or damaged chunk fails with [`Error::DataLoss`] and its range is
/// left untouched. Ranges before it may already be written. The target is
/// synced once, after the last write. Once the target is open, the function
/// returns only after that sync, also when a range fails or the restore is
/// cancelled.
///
/// Returns [`Error::Cancelled`] when `cancel` fires before the last range
/// was started.
pub async fn restore_disk(
    repository: &Repository,
    disk: &DiskManifest,
    target: &Path,
    options: &RestoreOptions,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<RestoreStats> {
    validate_manifest(disk)?;
    if options.max_chunks_in_flight == 0 {
        return Err(Error::InvalidOptions {
            reason: "max_chunks_in_flight is 0, expected at least 1".to_owned(),
        });
    }
    if options.resume_offset > disk.size_bytes {
        return Err(Error::InvalidOptions {
            reason: format!(
                "resume_offset {} is past the end of disk `{}` of {} bytes",
                options.resume_offset, disk.name, disk.size_bytes
            ),
        });
    }
    let chunk_size = u64::from(disk.chunk_size);
    let start_index = options.resume_offset / chunk_size;
    let start = start_index * chunk_size;

    let (target, target_size_bytes) = {
        let target_path = target.to_owned();
        let disk_name = disk.name.clone();
        let disk_size = disk.size_bytes;
        let truncate = options.truncate;
        run_blocking("open the restore target", move || {
            let opened = DiskFile::open_target(&target_path)?;
            let size = prepare_target(&opened, &disk_name, disk_size, truncate)?;
            Ok((Arc::new(opened.disk), size))
        })
        .await?
    };
    tracing::info!(
        disk = %disk.name,
        target = %target.path.display(),
        size = disk.size_bytes,
        start,
        "restore started"
    );

    // Pins keep garbage collection from deleting the chunks while they are
    // read, even if the backup's manifest is deleted meanwhile.
    let session = repository.start_session();
    let digests: Vec<ChunkDigest> = disk
        .extents()
        .skip(start_index as usize)
        .filter_map(|extent| match extent.entry {
            ChunkEntry::Chunk { digest, .. } => Some(digest),
            ChunkEntry::Hole => None,
        })
        .collect();
    session.pin(&digests).await;

    let mut stats = RestoreStats {
        bytes_written: 0,
        bytes_identical: 0,
        hole_bytes: 0,
        hole_bytes_cleared: 0,
        chunks_fetched: 0,
        target_kind: target.kind,
        target_size_bytes,
        bytes_verified: 0,
    };
    let writer = RangeWriter {
        repository,
        disk_name: &disk.name,
        target: Arc::clone(&target),
        hasher: repository.chunk_hasher(),
        differential: options.differential,
        buffers: BufferPool::new(options.max_chunks_in_flight),
    };
    let report = |processed_bytes| {
        progress.report(Progress {
            phase: Phase::Restore,
            processed_bytes,
            total_bytes: disk.size_bytes,
        })
    };
    report(start);

    // Set on the first error so that no new range starts while the ranges
    // already running are drained.
    let failed = AtomicBool::new(false);
    let mut outcomes = stream::iter(disk.extents().skip(start_index as usize))
        .take_while(|_| {
            let stop = cancel.is_cancelled() || failed.load(Ordering::Relaxed);
            future::ready(!stop)
        })
        .map(|extent| writer.restore_range(extent))
        .buffered(options.max_chunks_in_flight);
    let mut processed = start;
    let mut first_error = None;
    while let Some(result) = outcomes.next().await {
        match result {
            Ok((len, outcome)) if first_error.is_none() => {
                stats.record(len, outcome);
                processed += len;
                report(processed);
            }
            Ok(_) => {}
            Err(error) => {
                failed.store(true, Ordering::Relaxed);
                first_error.get_or_insert(error);
            }
        }
    }
    drop(outcomes);

    let synced = {
        let target = Arc::clone(&target);
        run_blocking("sync the restore target", move || target.sync()).await
    };
    if let Some(error) = first_error {
        tracing::warn!(disk = %disk.name, processed, %error, "restore failed");
        return Err(error);
    }
    synced?;
    if processed < disk.size_bytes {
        tracing::info!(disk = %disk.name, processed, "restore cancelled");
        return Err(Error::Cancelled { processed });
    }

    if options.verify {
        let request = VerifyRequest {
            target: &target,
            disk,
            hasher: &writer.hasher,
            start_index,
            max_chunks_in_flight: options.max_chunks_in_flight,
        };
        stats.bytes_verified = verify_target(request, progress, cancel).await?;
    }
    tracing::info!(disk = %disk.name, ?stats, "restore finished");
    Ok(stats)
}

/// Action taken on one chunk range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RangeOutcome {
    /// The target already held the chunk.
    Identical,
    /// The chunk was fetched and written.
    Written,
    /// A hole where the target already read as zeros.
    AlreadyZero,
    /// A hole where the target held data, now punched or zeroed.
    Cleared,
}

impl RestoreStats {
    fn record(&mut self, len: u64, outcome: RangeOutcome) {
        match outcome {
            RangeOutcome::Identical => self.bytes_identical += len,
            RangeOutcome::Written => {
                self.bytes_written += len;
                self.chunks_fetched += 1;
            }
            RangeOutcome::AlreadyZero => self.hole_bytes += len,
            RangeOutcome::Cleared => {
                self.hole_bytes += len;
                self.hole_bytes_cleared += len;
            }
        }
    }
}

/// State shared by the range tasks of one restore.
struct RangeWriter<'a> {
    repository: &'a Repository,
    disk_name: &'a str,
    target: Arc<DiskFile>,
    hasher: ChunkHasher,
    differential: bool,
    /// Buffers for the target's current content and for decoded chunks.
    buffers: Arc<BufferPool>,
}

impl RangeWriter<'_> {
    /// Brings one range of the target to the manifest's content. Returns the
    /// range length and what was done.
    async fn restore_range(&self, extent: Extent) -> Result<(u64, RangeOutcome)> {
        let len = u64::from(extent.len);
        let outcome = match extent.entry {
            ChunkEntry::Hole => self.restore_hole(extent.offset, len).await?,
            ChunkEntry::Chunk { digest, .. } => self.restore_chunk(extent, digest).await?,
        };
        Ok((len, outcome))
    }

    async fn restore_hole(&self, offset: u64, len: u64) -> Result<RangeOutcome> {
        let target = Arc::clone(&self.target);
        let buffers = Arc::clone(&self.buffers);
        run_blocking("restore a hole", move || {
            if target.range_is_hole(offset, len) {
                return Ok(RangeOutcome::AlreadyZero);
            }
            let mut current = buffers.take(len as usize);
            target.read_range(offset, &mut current)?;
            if is_zero(&current) {
                return Ok(RangeOutcome::AlreadyZero);
            }
            target.clear_range(offset, len)?;
            target.start_writeback(offset, len);
            Ok(RangeOutcome::Cleared)
        })
        .await
    }

    async fn restore_chunk(&self, extent: Extent, digest: ChunkDigest) -> Result<RangeOutcome> {
        let current = self.current_content(extent, digest).await?;
        if current == Current::Identical {
            return Ok(RangeOutcome::Identical);
        }

        let buffer = self.buffers.take(extent.len as usize);
        let data = self
            .repository
            .get_chunk_into(&digest, buffer)
            .await
            .map_err(|source| {
                let is_data_loss = source.is_not_found()
                    || matches!(source, backstop_chunkstore::Error::ChunkCorrupt { .. });
                if is_data_loss {
                    Error::DataLoss {
                        disk: self.disk_name.to_owned(),
                        offset: extent.offset,
                        digest,
                        source: Box::new(source),
                    }
                } else {
                    Error::Repository {
                        action: format!(
                            "read chunk {digest} for disk `{}` at offset {}",
                            self.disk_name, extent.offset
                        ),
                        source: Box::new(source),
                    }
                }
            })?;

        let target = Arc::clone(&self.target);
        run_blocking("write a chunk", move || {
            if current == Current::Hole {
                write_skipping_zeros(&target, extent.offset, &data)?;
            } else {
                target.write_range(extent.offset, &data)?;
            }
            target.start_writeback(extent.offset, u64::from(extent.len));
            Ok(RangeOutcome::Written)
        })
        .await
    }

    /// Returns what the target range contains now. Without `differential`, only
    /// holes are recognized, since that costs no read.
    async fn current_content(&self, extent: Extent, digest: ChunkDigest) -> Result<Current> {
        let target = Arc::clone(&self.target);
        let hasher = self.hasher.clone();
        let buffers = Arc::clone(&self.buffers);
        let differential = self.differential;
        run_blocking("compare a target range", move || {
            // A stored chunk is never all zeros, so it cannot match a hole.
            if target.range_is_hole(extent.offset, u64::from(extent.len)) {
                return Ok(Current::Hole);
            }
            if !differential {
                return Ok(Current::Differs);
            }
            let mut current = buffers.take(extent.len as usize);
            target.read_range(extent.offset, &mut current)?;
            Ok(if hasher.digest(&current) == digest {
                Current::Identical
            } else {
                Current::Differs
            })
        })
        .await
    }
}

/// Content of a target range before a chunk is written to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Current {
    /// A hole of a sparse file: it reads as zeros.
    Hole,
    /// The chunk's content.
    Identical,
    /// Something else, or content that was not read.
    Differs,
}

/// Size in bytes of the blocks that a write into a hole checks for zeros:
/// the block size of common file systems, so a skipped block stays a hole.
const ZERO_BLOCK: usize = 4096;

/// Shortest run of zero bytes that a write into a hole skips. Shorter runs
/// are written, so that a chunk is not split into many small writes.
const MIN_SKIPPED_ZEROS: usize = 64 * 1024;

/// Writes `data` at `offset` into a range that is a hole, leaving out runs of
/// at least [`MIN_SKIPPED_ZEROS`] zero bytes, which already read as zeros
/// there. So a restored image stays as sparse as `cp --sparse=always` would
/// make it, and fewer bytes reach the disk.
fn write_skipping_zeros(target: &DiskFile, offset: u64, data: &[u8]) -> Result<()> {
    let mut run_start = None;
    let mut zeros_start = None;
    for (index, block) in data.chunks(ZERO_BLOCK).enumerate() {
        let position = index * ZERO_BLOCK;
        if is_zero(block) {
            zeros_start.get_or_insert(position);
            continue;
        }
        if let Some(zeros) = zeros_start.take() {
            if let Some(start) = run_start {
                if position - zeros >= MIN_SKIPPED_ZEROS {
                    target.write_range(offset + start as u64, &data[start..zeros])?;
                    run_start = Some(position);
                }
            }
        }
        run_start.get_or_insert(position);
    }
    if let Some(start) = run_start {
        let end = zeros_start.unwrap_or(data.len());
        target.write_range(offset + start as u64, &data[start..end])?;
    }
    Ok(())
}

/// Sizes the target for a disk of `disk_size` bytes and returns the
/// target's size in bytes afterwards.
fn prepare_target(
    opened: &OpenedTarget,
    disk_name: &str,
    disk_size: u64,
    truncate: bool,
) -> Result<u64> {
    let target = &opened.disk;
    let current = target.size()?;
    match target.kind {
        TargetKind::BlockDevice => {
            check_target_size(disk_name, &target.path, disk_size, current)?;
            Ok(current)
        }
        TargetKind::File => {
            if !opened.existed {
                tracing::debug!(target = %target.path.display(), "created restore target file");
            }
            if current < disk_size || (truncate && current > disk_size) {
                target.set_len(disk_size)?;
                return Ok(disk_size);
            }
            if current > disk_size {
                tracing::warn!(
                    target = %target.path.display(),
                    target_size = current,
                    disk = disk_name,
                    disk_size,
                    "restore target file is larger than the disk; keeping the bytes past the disk's end"
                );
            }
            Ok(current)
        }
    }
}

/// Checks what restore relies on: a usable chunk size, one entry per range
/// and chunk lengths equal to range lengths.
pub(crate) fn validate_manifest(disk: &DiskManifest) -> Result<()> {
    let invalid = |reason: String| {
        Err(Error::InvalidManifest {
            disk: disk.name.clone(),
            reason,
        })
    };
    if disk.chunk_size == 0 || disk.chunk_size as usize > MAX_CHUNK_LEN {
        return invalid(format!(
            "chunk_size is {}, expected 1 to {MAX_CHUNK_LEN}",
            disk.chunk_size
        ));
    }
    let expected = disk.expected_entry_count();
    if disk.entries.len() as u64 != expected {
        return invalid(format!(
            "{} entries, but {} bytes in chunks of {} need {expected}",
            disk.entries.len(),
            disk.size_bytes,
            disk.chunk_size
        ));
    }
    for extent in disk.extents() {
        if let ChunkEntry::Chunk { digest, len } = extent.entry {
            if len != extent.len {
                return invalid(format!(
                    "chunk {digest} at offset {} has len {len}, expected {}",
                    extent.offset, extent.len
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_small_block_device_is_rejected() {
        let target = Path::new("/dev/vdb");

        let error = check_target_size("vda", target, 21_474_836_480, 10_737_418_240).unwrap_err();

        assert!(matches!(error, Error::TargetTooSmall { .. }), "{error}");
        assert_eq!(
            error.to_string(),
            "target disk /dev/vdb is 10737418240 bytes but backup disk `vda` needs 21474836480 bytes; \
             grow the disk or choose another instance"
        );
    }

    #[test]
    fn equal_or_larger_block_device_is_accepted() {
        let target = Path::new("/dev/vdb");

        assert!(check_target_size("vda", target, 4096, 4096).is_ok());
        assert!(check_target_size("vda", target, 4096, 8192).is_ok());
    }

    #[test]
    fn hole_write_skips_long_zero_runs() {
        use std::os::unix::fs::MetadataExt;

        const MIB: usize = 1024 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target.img");
        // Data at 0..4 KiB, a 1 MiB zero run, data, a short zero run of
        // 8 KiB inside data, then zeros to the end.
        let mut data = vec![0u8; 4 * MIB];
        data[..4096].fill(1);
        data[4096 + MIB..2 * MIB].fill(2);
        data[2 * MIB + 8192..3 * MIB].fill(3);
        let offset = 8 * MIB as u64;
        let opened = DiskFile::open_target(&path).unwrap();
        opened.disk.set_len(16 * MIB as u64).unwrap();

        write_skipping_zeros(&opened.disk, offset, &data).unwrap();
        opened.disk.sync().unwrap();

        let content = std::fs::read(&path).unwrap();
        assert!(content[..offset as usize].iter().all(|&b| b == 0));
        assert!(content[offset as usize + data.len()..]
            .iter()
            .all(|&b| b == 0));
        assert!(content[offset as usize..offset as usize + data.len()] == data[..]);
        // Written: 4 KiB, then 1 MiB - 4 KiB + 1 MiB, with the 8 KiB run.
        // The 1 MiB run after the first block and the last 1 MiB stay holes.
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        let written = (4096 + 2 * MIB - 4096) as u64;
        assert!(
            allocated >= written && allocated < written + 64 * 1024,
            "{allocated} bytes allocated, expected about {written}"
        );
        assert!(opened.disk.range_is_hole(offset + 4096, MIB as u64));
        assert!(opened
            .disk
            .range_is_hole(offset + 3 * MIB as u64, MIB as u64));
    }

    #[test]
    fn manifest_with_wrong_entries_is_rejected() {
        let digest = ChunkDigest::from_bytes([7; 32]);
        let mut missing_entry = DiskManifest::new("vda", 10_000, 4096);
        missing_entry.entries = vec![ChunkEntry::Hole, ChunkEntry::Hole];
        let mut wrong_len = DiskManifest::new("vda", 10_000, 4096);
        wrong_len.entries = vec![
            ChunkEntry::Hole,
            ChunkEntry::Hole,
            ChunkEntry::Chunk { digest, len: 4096 },
        ];
        let zero_chunk_size = DiskManifest::new("vda", 10_000, 0);

        for (disk, expected) in [
            (missing_entry, "2 entries"),
            (wrong_len, "offset 8192"),
            (zero_chunk_size, "chunk_size is 0"),
        ] {
            let error = validate_manifest(&disk).unwrap_err();
            assert!(matches!(error, Error::InvalidManifest { .. }), "{error}");
            assert!(error.to_string().contains(expected), "{error}");
        }
    }
}
