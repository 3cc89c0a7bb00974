//! Disk backup: [`backup_disk`] reads a disk in fixed-size chunks, records
//! all-zero chunks as holes, and uploads only the chunks the repository
//! lacks.
//!
//! The pipeline has three stages, all driven by the caller's task:
//!
//! 1. read and hash: up to `parallelism` chunks at once on the blocking
//!    thread pool. A chunk first takes a permit from a semaphore of
//!    `max_chunks_in_flight` permits and keeps it until its data is dropped.
//! 2. existence check: chunks are grouped into batches of `batch_size` and
//!    one [`ChunkSession::missing_chunks`] call per batch pins them and
//!    returns the absent ones. Two batches are in this stage at once, so
//!    reading continues while a batch waits for the repository.
//! 3. upload: absent chunks go to [`ChunkSession::put_missing_chunk`], at most
//!    `parallelism` at once across all batches.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use backstop_chunkstore::{
    is_zero, ChunkDigest, ChunkEntry, ChunkHasher, ChunkSession, DiskManifest, MAX_CHUNK_LEN,
};
use bytes::Bytes;
use futures::{future, stream, StreamExt, TryStreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::buffers::{BufferPool, PooledBuffer};
use crate::device::DiskFile;
use crate::error::{run_blocking, Error, Result};
use crate::progress::{CancellationToken, Phase, Progress, ProgressSink};

/// Default chunk size: 4 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 * 1024 * 1024;

/// Settings of [`backup_disk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupOptions {
    /// Chunk size in bytes, from 1 to [`MAX_CHUNK_LEN`]. Default 4 MiB.
    pub chunk_size: u32,
    /// Maximum number of chunk buffers alive at once. Peak memory is about
    /// `(max_chunks_in_flight + 2 * parallelism) * chunk_size`, because each
    /// running upload also keeps a copy and the compressed form. Default 16.
    pub max_chunks_in_flight: usize,
    /// Number of chunks read and hashed at once, and also the number
    /// uploaded at once. Default 4.
    pub parallelism: usize,
    /// Number of digests per existence query to the repository, capped at
    /// `max_chunks_in_flight`. Default 8.
    pub batch_size: usize,
}

impl Default for BackupOptions {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_chunks_in_flight: 16,
            parallelism: 4,
            batch_size: 8,
        }
    }
}

impl BackupOptions {
    fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidOptions { reason });
        if self.chunk_size == 0 || self.chunk_size as usize > MAX_CHUNK_LEN {
            return invalid(format!(
                "chunk_size is {} bytes, expected 1 to {MAX_CHUNK_LEN}",
                self.chunk_size
            ));
        }
        if self.max_chunks_in_flight == 0 || self.parallelism == 0 || self.batch_size == 0 {
            return invalid(format!(
                "max_chunks_in_flight ({}), parallelism ({}) and batch_size ({}) must be at least 1",
                self.max_chunks_in_flight, self.parallelism, self.batch_size
            ));
        }
        Ok(())
    }
}

/// Counters of one disk backup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskBackupStats {
    /// Bytes read from the source. Ranges that the file system reports as
    /// holes are not read and not counted.
    pub bytes_read: u64,
    /// Bytes in holes: all-zero chunks, which are not stored.
    pub hole_bytes: u64,
    /// Bytes in chunks that are not holes: the disk's original data size.
    pub data_bytes: u64,
    /// Chunks this backup added to the repository.
    pub chunks_new: u64,
    /// Chunks the repository already had, including those matched with the
    /// previous backup.
    pub chunks_reused: u64,
    /// Chunks equal to the same range of the previous backup, which skipped
    /// the existence query.
    pub chunks_unchanged: u64,
    /// Stored size of the new chunks in bytes, after compression and
    /// encryption.
    pub new_stored_bytes: u64,
}

impl DiskBackupStats {
    fn add(&mut self, other: &DiskBackupStats) {
        self.bytes_read += other.bytes_read;
        self.hole_bytes += other.hole_bytes;
        self.data_bytes += other.data_bytes;
        self.chunks_new += other.chunks_new;
        self.chunks_reused += other.chunks_reused;
        self.chunks_unchanged += other.chunks_unchanged;
        self.new_stored_bytes += other.new_stored_bytes;
    }
}

/// Result of [`backup_disk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskBackup {
    /// The disk's manifest, to be added to a `DiskBackupManifest` and stored
    /// while the session is still alive.
    pub manifest: DiskManifest,
    pub stats: DiskBackupStats,
}

/// Backs up the raw image file or block device at `source` as disk
/// `disk_name`.
///
/// Every chunk the returned manifest references is pinned by `session`.
/// The caller stores the `DiskBackupManifest` and only then drops the
/// session, so that garbage collection cannot delete a chunk in between.
///
/// `previous` is the same disk's manifest from an earlier backup. A chunk
/// whose digest equals the previous entry at the same index is pinned
/// without asking the repository whether it exists. It is still read and
/// hashed, because without changed-block tracking only the content shows
/// whether it changed. The previous manifest is used only when its chunk
/// size equals `options.chunk_size`.
///
/// NOTE: chunks matched with `previous` are trusted to exist. The caller
/// must keep the previous backup's manifest stored until this backup's
/// manifest is stored, or a garbage collection could delete such a chunk
/// before this session pins it.
///
/// Returns [`Error::Cancelled`] when `cancel` fires before the last chunk
/// was started.
pub async fn backup_disk(
    session: &ChunkSession,
    disk_name: &str,
    source: &Path,
    previous: Option<&DiskManifest>,
    options: &BackupOptions,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<DiskBackup> {
    options.validate()?;
    if disk_name.is_empty() {
        return Err(Error::InvalidOptions {
            reason: "the disk name is empty".to_owned(),
        });
    }
    let (disk, size) = {
        let source = source.to_owned();
        run_blocking("open the source disk", move || {
            let disk = DiskFile::open_source(&source)?;
            let size = disk.size()?;
            Ok((Arc::new(disk), size))
        })
        .await?
    };
    let mut manifest = DiskManifest::new(disk_name, size, options.chunk_size);
    let chunk_count =
        usize::try_from(manifest.expected_entry_count()).map_err(|_| Error::InvalidOptions {
            reason: format!("disk of {size} bytes has too many chunks for this platform"),
        })?;
    let previous = previous.filter(|previous| {
        let usable = previous.chunk_size == options.chunk_size;
        if !usable {
            tracing::info!(
                disk = disk_name,
                previous_chunk_size = previous.chunk_size,
                chunk_size = options.chunk_size,
                "ignored the previous manifest because its chunk size differs"
            );
        }
        usable
    });
    tracing::info!(disk = disk_name, source = %source.display(), size, chunk_size = options.chunk_size, "backup started");

    let pipeline = Pipeline {
        session,
        disk_name,
        previous,
        upload_limiter: Semaphore::new(options.parallelism),
        parallelism: options.parallelism,
        processed: AtomicU64::new(0),
        size,
        progress,
    };
    progress.report(pipeline.progress_at(0));

    let hasher = session.repository().chunk_hasher();
    let buffer_limiter = Arc::new(Semaphore::new(options.max_chunks_in_flight));
    let buffers = BufferPool::new(options.max_chunks_in_flight);
    let batch_size = options.batch_size.min(options.max_chunks_in_flight);
    let reads = stream::iter(0..chunk_count)
        .take_while(|_| future::ready(!cancel.is_cancelled()))
        .map(|index| {
            let offset = index as u64 * u64::from(options.chunk_size);
            let len = manifest.range_len(index as u64) as usize;
            let range = ChunkRange { index, offset, len };
            read_chunk(&disk, &hasher, &buffer_limiter, &buffers, range)
        })
        .buffer_unordered(options.parallelism);
    let mut batches = reads
        .chunks(batch_size)
        .map(|batch| pipeline.store_batch(batch))
        .buffer_unordered(2);

    let mut entries: Vec<Option<ChunkEntry>> = vec![None; chunk_count];
    let mut stats = DiskBackupStats::default();
    while let Some(outcome) = batches.next().await {
        let outcome = outcome?;
        for (index, entry) in outcome.entries {
            entries[index] = Some(entry);
        }
        stats.add(&outcome.stats);
    }
    drop(batches);

    let Some(entries) = entries.into_iter().collect::<Option<Vec<ChunkEntry>>>() else {
        let processed = pipeline.processed.load(Ordering::Relaxed);
        tracing::info!(disk = disk_name, processed, "backup cancelled");
        return Err(Error::Cancelled { processed });
    };
    manifest.entries = entries;
    tracing::info!(disk = disk_name, ?stats, "backup finished");
    Ok(DiskBackup { manifest, stats })
}

#[derive(Clone, Copy, Debug)]
struct ChunkRange {
    index: usize,
    offset: u64,
    len: usize,
}

/// A chunk after stage 1.
struct ReadChunk {
    range: ChunkRange,
    /// 0 when the file system reported the range as a hole.
    bytes_read: u64,
    content: Content,
}

enum Content {
    Hole,
    Data {
        digest: ChunkDigest,
        data: PooledBuffer,
        /// Released when the data is dropped.
        _permit: OwnedSemaphorePermit,
    },
}

async fn read_chunk(
    disk: &Arc<DiskFile>,
    hasher: &ChunkHasher,
    buffer_limiter: &Arc<Semaphore>,
    buffers: &Arc<BufferPool>,
    range: ChunkRange,
) -> Result<ReadChunk> {
    let permit = Arc::clone(buffer_limiter)
        .acquire_owned()
        .await
        .expect("the buffer semaphore is never closed");
    let disk = Arc::clone(disk);
    let hasher = hasher.clone();
    let buffers = Arc::clone(buffers);
    run_blocking("read and hash a chunk", move || {
        if disk.range_is_hole(range.offset, range.len as u64) {
            return Ok(ReadChunk {
                range,
                bytes_read: 0,
                content: Content::Hole,
            });
        }
        let mut data = buffers.take(range.len);
        disk.read_range(range.offset, &mut data)?;
        let content = if is_zero(&data) {
            Content::Hole
        } else {
            Content::Data {
                digest: hasher.digest(&data),
                data,
                _permit: permit,
            }
        };
        Ok(ReadChunk {
            range,
            bytes_read: range.len as u64,
            content,
        })
    })
    .await
}

/// Entries and counters of one batch.
#[derive(Default)]
struct BatchOutcome {
    entries: Vec<(usize, ChunkEntry)>,
    stats: DiskBackupStats,
}

/// State shared by the batches of one backup.
struct Pipeline<'a> {
    session: &'a ChunkSession,
    disk_name: &'a str,
    previous: Option<&'a DiskManifest>,
    /// Shared by all batches, so at most `parallelism` uploads run at once.
    upload_limiter: Semaphore,
    parallelism: usize,
    processed: AtomicU64,
    size: u64,
    progress: &'a dyn ProgressSink,
}

impl Pipeline<'_> {
    fn progress_at(&self, processed_bytes: u64) -> Progress {
        Progress {
            phase: Phase::Backup,
            processed_bytes,
            total_bytes: self.size,
        }
    }

    /// Counts `len` more bytes as done and reports progress.
    fn advance(&self, len: usize) {
        let processed = self.processed.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
        self.progress.report(self.progress_at(processed));
    }

    fn is_unchanged(&self, index: usize, digest: &ChunkDigest) -> bool {
        let Some(previous) = self.previous else {
            return false;
        };
        matches!(
            previous.entries.get(index),
            Some(ChunkEntry::Chunk { digest: old, .. }) if old == digest
        )
    }

    fn repository_error(&self, action: String, source: backstop_chunkstore::Error) -> Error {
        Error::Repository {
            action: format!(
                "{action} for disk `{}` in repository at {}",
                self.disk_name,
                self.session.repository().location()
            ),
            source: Box::new(source),
        }
    }

    /// Records holes, pins unchanged chunks, queries which of the others the
    /// repository lacks and uploads those.
    async fn store_batch(&self, batch: Vec<Result<ReadChunk>>) -> Result<BatchOutcome> {
        let mut outcome = BatchOutcome::default();
        let mut unchanged = Vec::new();
        let mut candidates = Vec::new();
        for item in batch {
            let item = item?;
            outcome.stats.bytes_read += item.bytes_read;
            let range = item.range;
            match &item.content {
                Content::Hole => {
                    outcome.entries.push((range.index, ChunkEntry::Hole));
                    outcome.stats.hole_bytes += range.len as u64;
                    self.advance(range.len);
                }
                Content::Data { digest, .. } if self.is_unchanged(range.index, digest) => {
                    unchanged.push((range, *digest));
                }
                Content::Data { digest, .. } => candidates.push((*digest, item)),
            }
        }

        if !unchanged.is_empty() {
            let digests: Vec<ChunkDigest> = unchanged.iter().map(|(_, digest)| *digest).collect();
            self.session.pin(&digests).await;
            for (range, digest) in unchanged {
                outcome
                    .entries
                    .push((range.index, chunk_entry(digest, range)));
                outcome.stats.data_bytes += range.len as u64;
                outcome.stats.chunks_reused += 1;
                outcome.stats.chunks_unchanged += 1;
                self.advance(range.len);
            }
        }
        if candidates.is_empty() {
            return Ok(outcome);
        }

        let digests: Vec<ChunkDigest> = candidates.iter().map(|(digest, _)| *digest).collect();
        let first_offset = candidates[0].1.range.offset;
        let missing = self
            .session
            .missing_chunks(&digests)
            .await
            .map_err(|source| {
                let action = format!(
                    "check which of {} chunks from offset {first_offset} exist",
                    digests.len()
                );
                self.repository_error(action, source)
            })?;
        let mut missing: HashSet<ChunkDigest> = missing.into_iter().collect();

        let mut uploads = Vec::new();
        for (digest, item) in candidates {
            let range = item.range;
            outcome
                .entries
                .push((range.index, chunk_entry(digest, range)));
            outcome.stats.data_bytes += range.len as u64;
            // A digest that appears twice in the batch is uploaded once.
            if missing.remove(&digest) {
                uploads.push(item);
            } else {
                outcome.stats.chunks_reused += 1;
                drop(item);
                self.advance(range.len);
            }
        }

        let mut stored = stream::iter(uploads)
            .map(|item| self.upload(item))
            .buffer_unordered(self.parallelism);
        while let Some((len, chunk)) = stored.try_next().await? {
            if chunk.was_new {
                outcome.stats.chunks_new += 1;
                outcome.stats.new_stored_bytes += chunk.stored_len;
            } else {
                // Another backup stored the same chunk since the query.
                outcome.stats.chunks_reused += 1;
            }
            self.advance(len);
        }
        Ok(outcome)
    }

    async fn upload(&self, item: ReadChunk) -> Result<(usize, backstop_chunkstore::StoredChunk)> {
        let _upload = self
            .upload_limiter
            .acquire()
            .await
            .expect("the upload semaphore is never closed");
        let Content::Data {
            digest,
            data,
            _permit: permit,
        } = item.content
        else {
            unreachable!("only chunks with data are uploaded");
        };
        let range = item.range;
        // The buffer moves into `Bytes` without a copy, and goes back to
        // the pool when the repository drops the last reference. The permit
        // is held until the upload ends, so the buffer counts as in flight.
        let stored = self
            .session
            .put_missing_chunk(digest, Bytes::from_owner(data))
            .await
            .map_err(|source| {
                let action = format!("store the chunk at offset {}", range.offset);
                self.repository_error(action, source)
            })?;
        drop(permit);
        Ok((range.len, stored))
    }
}

fn chunk_entry(digest: ChunkDigest, range: ChunkRange) -> ChunkEntry {
    ChunkEntry::Chunk {
        digest,
        len: range.len as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_options_are_rejected() {
        let cases = [
            BackupOptions {
                chunk_size: 0,
                ..BackupOptions::default()
            },
            BackupOptions {
                chunk_size: MAX_CHUNK_LEN as u32 + 1,
                ..BackupOptions::default()
            },
            BackupOptions {
                max_chunks_in_flight: 0,
                ..BackupOptions::default()
            },
            BackupOptions {
                parallelism: 0,
                ..BackupOptions::default()
            },
            BackupOptions {
                batch_size: 0,
                ..BackupOptions::default()
            },
        ];

        for options in cases {
            let error = options.validate().unwrap_err();
            assert!(
                matches!(error, Error::InvalidOptions { .. }),
                "{options:?}: {error}"
            );
        }
        assert!(BackupOptions::default().validate().is_ok());
    }
}
