//! Backstop's disk data path: backup of a raw disk image or block device
//! into a chunk repository, restore of a disk onto a file or block device,
//! and reading of partition tables.
//!
//! # Backup pipeline
//!
//! [`backup_disk`] cuts the disk into fixed-size chunks (4 MiB by default).
//! A chunk that `lseek(SEEK_DATA)` reports as a hole in a sparse file is not
//! read. Every other chunk is read with a positioned read. An all-zero chunk
//! becomes a hole, and any other chunk is hashed with the repository's
//! hasher (BLAKE3, keyed in an encrypted repository). Chunks are read and
//! hashed in parallel. Batches of digests go to [`ChunkSession::missing_chunks`], which
//! pins them and returns the absent ones, and only those are compressed,
//! encrypted and stored, again in parallel. With the previous backup's
//! [`DiskManifest`], a chunk whose digest is unchanged at the same index
//! skips the existence query. The result is a [`DiskManifest`] and
//! [`DiskBackupStats`]. The caller stores the manifest before it drops the
//! [`ChunkSession`].
//!
//! # Restore pipeline
//!
//! [`restore_disk`] walks the manifest from the resume offset. For every
//! chunk range it reads what the target contains and hashes it. It fetches the
//! chunk only when the hashes differ, and the repository verifies the
//! chunk's digest before the engine writes it with one positioned write at a
//! chunk-aligned offset. A hole is skipped when the target already reads as
//! zeros, and otherwise punched out of a file or overwritten with zeros on a
//! block device. Ranges run in parallel but complete in disk order, so every
//! reported progress value is an offset below which the target is fully
//! restored.
//!
//! # Memory bound
//!
//! Chunk buffers are bounded by the options and independent of the disk
//! size. What grows with the disk is per-chunk bookkeeping: the manifest
//! (40 bytes per entry) and the session's pins (roughly 100 bytes per
//! distinct chunk, an estimate), about 36 MiB for a 1 TiB disk in 4 MiB
//! chunks. The buffers take:
//!
//! - backup: about `(max_chunks_in_flight + 2 * parallelism) * chunk_size`,
//!   96 MiB with the defaults (16 + 2 * 4 chunks of 4 MiB);
//! - restore: about `2 * max_chunks_in_flight * chunk_size`, 64 MiB with
//!   the defaults (8 chunks of 4 MiB).
//!
//! These are estimates from the buffers the code allocates, plus zstd's
//! working memory, which is small at the default compression level.
//!
//! # Durability
//!
//! A backup is durable once its manifest is stored: the repository writes
//! every chunk durably before its store call returns. A restore does not sync
//! per chunk. It calls `fsync` on the target once, after the last write,
//! and returns only after that, also when a range fails or the restore is
//! cancelled. With the `verify` option, the target is then read back,
//! bypassing the page cache where the kernel honours `POSIX_FADV_DONTNEED`.
//!
//! # Running at the same time
//!
//! | operations on one disk | allowed? |
//! |---|---|
//! | two backups | yes: both only read the disk, and identical chunks race to one object in the repository |
//! | a backup and a restore | no: the backup would read a mix of old and new data |
//! | two restores | no: their writes would interleave |
//! | [`read_volumes`] and a backup | yes |
//! | [`read_volumes`] and a restore | yes, but it may see the old or the new partition table |
//!
//! Operations on different disks are independent. The engine takes no lock:
//! the caller enforces this table. A restore to a block device opens it with
//! `O_EXCL`, so Linux rejects a device that is mounted.
//!
//! # Cancellation and progress
//!
//! Both pipelines take a [`CancellationToken`], check it before each chunk,
//! let the chunks already started finish, and return
//! [`Error::Cancelled`]. They report [`Progress`] to a [`ProgressSink`] at
//! least once per chunk.
//!
//! [`ChunkSession`]: backstop_chunkstore::ChunkSession
//! [`ChunkSession::missing_chunks`]: backstop_chunkstore::ChunkSession::missing_chunks
//! [`DiskManifest`]: backstop_chunkstore::DiskManifest

mod backup;
mod buffers;
mod device;
mod error;
mod progress;
mod restore;
mod verify;
mod volumes;

pub use backup::{backup_disk, BackupOptions, DiskBackup, DiskBackupStats, DEFAULT_CHUNK_SIZE};
pub use device::{disk_size, TargetKind};
pub use error::{Error, Result};
pub use progress::{CancellationToken, NoProgress, Phase, Progress, ProgressSink};
pub use restore::{check_target_size, restore_disk, RestoreOptions, RestoreStats};
pub use volumes::{read_volumes, PartitionType, Volume};
