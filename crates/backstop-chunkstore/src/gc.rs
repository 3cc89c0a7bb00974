//! Garbage collection: delete chunks that no manifest references, unless
//! they are protected, pinned by a [`crate::ChunkSession`] or recent. The
//! crate-level docs give the safety argument.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use crate::digest::ChunkDigest;
use crate::error::{Error, Result};
use crate::repository::{chunk_key, Repository};

impl Repository {
    /// Marks the start of a garbage collection run. Build the live set after
    /// this call, then pass it to [`GarbageCollection::sweep`].
    ///
    /// Fails with [`Error::GarbageCollectionRunning`] while another run of
    /// this repository (or a clone) is active.
    pub fn begin_garbage_collection(&self) -> Result<GarbageCollection> {
        let mut state = self.pins().state();
        if state.collection_running {
            return Err(Error::GarbageCollectionRunning {
                location: self.location().to_owned(),
            });
        }
        state.collection_running = true;
        state.released_during_collection.clear();
        Ok(GarbageCollection {
            repository: self.clone(),
            started_at: SystemTime::now(),
        })
    }

    /// Deletes chunks that no disk manifest references, keeping `protected`
    /// chunks, pinned chunks and chunks newer than the grace period.
    ///
    /// Every manifest must be a [`crate::DiskBackupManifest`]. If one cannot
    /// be read or parsed, nothing is deleted and the error is returned.
    /// Repositories with other manifest types use
    /// [`begin_garbage_collection`](Self::begin_garbage_collection) and build
    /// the live set themselves.
    pub async fn garbage_collect(
        &self,
        protected: &HashSet<ChunkDigest>,
        options: &GcOptions,
    ) -> Result<GcReport> {
        let collection = self.begin_garbage_collection()?;
        let mut live = HashSet::new();
        for id in self.list_manifests().await? {
            live.extend(self.get_disk_manifest(&id).await?.referenced_digests());
        }
        collection.sweep(&live, protected, options).await
    }
}

/// Settings for a garbage collection sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcOptions {
    /// Chunks modified less than this long before the collection started are
    /// kept. This covers writers that do not use a [`crate::ChunkSession`] of the
    /// same `Repository`, such as another process, as long as they write the
    /// manifest within this time after the chunk.
    pub grace_period: Duration,
    /// Count what would be deleted without deleting anything.
    pub dry_run: bool,
}

impl Default for GcOptions {
    /// Returns a one-hour grace period with deletion enabled.
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(60 * 60),
            dry_run: false,
        }
    }
}

/// Counts from one sweep. Each examined chunk is counted in one of the
/// `kept_*` fields or in `deleted`, except a chunk that someone else deleted
/// during the sweep, which is in none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub examined: usize,
    /// Chunks deleted, or that would be deleted in a dry run.
    pub deleted: usize,
    /// Stored bytes of the deleted chunks.
    pub deleted_bytes: u64,
    /// Referenced by the live set.
    pub kept_live: usize,
    /// In the caller's protected set.
    pub kept_protected: usize,
    /// Modified within the grace period before the start.
    pub kept_recent: usize,
    /// Pinned by a session, now or at some point during the collection.
    pub kept_pinned: usize,
}

/// One garbage collection run, started by
/// [`Repository::begin_garbage_collection`]. Dropping it ends the run.
#[derive(Debug)]
pub struct GarbageCollection {
    repository: Repository,
    started_at: SystemTime,
}

impl GarbageCollection {
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Deletes every chunk that is not in `live`, not in `protected`, not
    /// pinned, and was last modified before `started_at - grace_period`.
    ///
    /// `live` must contain every chunk referenced by a manifest that exists
    /// or may be read, and must have been built after this run began. On a
    /// storage error the sweep stops and returns it. Chunks deleted until
    /// then stay deleted, which is safe.
    pub async fn sweep(
        self,
        live: &HashSet<ChunkDigest>,
        protected: &HashSet<ChunkDigest>,
        options: &GcOptions,
    ) -> Result<GcReport> {
        let repository = &self.repository;
        let pins = repository.pins();
        let cutoff = self
            .started_at
            .checked_sub(options.grace_period)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        tracing::info!(
            location = repository.location(),
            live = live.len(),
            protected = protected.len(),
            grace_period_seconds = options.grace_period.as_secs(),
            dry_run = options.dry_run,
            "garbage collection started"
        );

        let mut report = GcReport::default();
        for (digest, object) in repository.list_chunk_objects().await? {
            report.examined += 1;
            if live.contains(&digest) {
                report.kept_live += 1;
                continue;
            }
            if protected.contains(&digest) {
                report.kept_protected += 1;
                continue;
            }
            if object.last_modified >= cutoff {
                report.kept_recent += 1;
                continue;
            }

            // New pins wait while this guard is held, so the pin check and
            // the delete act as one step for sessions.
            let _gate = pins.gate.write().await;
            if pins.is_protected(&digest) {
                report.kept_pinned += 1;
                continue;
            }
            if !options.dry_run {
                let deleted = repository.backend().delete(&chunk_key(&digest)).await?;
                if !deleted {
                    // Someone else deleted it since the listing.
                    continue;
                }
                tracing::debug!(location = repository.location(), %digest, "deleted unreferenced chunk");
            }
            report.deleted += 1;
            report.deleted_bytes += object.size;
        }

        tracing::info!(
            location = repository.location(),
            ?report,
            "garbage collection finished"
        );
        Ok(report)
    }
}

impl Drop for GarbageCollection {
    fn drop(&mut self) {
        let mut state = self.repository.pins().state();
        state.collection_running = false;
        state.released_during_collection.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use time::OffsetDateTime;

    use super::*;
    use crate::test_support::{chunk_path, create_at, sample_chunk};
    use crate::{ChunkEntry, DiskBackupManifest, DiskManifest, ManifestId, RepositoryOptions};

    const TWO_HOURS: Duration = Duration::from_secs(2 * 60 * 60);

    /// Sets the modification time of every stored chunk two hours back, so
    /// that the default one-hour grace period does not keep them.
    fn age_chunks(root: &Path, digests: &[ChunkDigest]) {
        let past = SystemTime::now() - TWO_HOURS;
        for digest in digests {
            std::fs::File::options()
                .write(true)
                .open(chunk_path(root, digest))
                .unwrap()
                .set_modified(past)
                .unwrap();
        }
    }

    async fn store_old_chunks(root: &Path, repository: &Repository, count: u8) -> Vec<ChunkDigest> {
        let mut digests = Vec::new();
        for seed in 0..count {
            digests.push(
                repository
                    .put_chunk(&sample_chunk(seed))
                    .await
                    .unwrap()
                    .digest,
            );
        }
        age_chunks(root, &digests);
        digests
    }

    fn manifest_of(backup_id: &str, digests: &[ChunkDigest]) -> DiskBackupManifest {
        let len = sample_chunk(0).len() as u32;
        let mut disk = DiskManifest::new("vda", u64::from(len) * digests.len() as u64, len);
        disk.entries = digests
            .iter()
            .map(|digest| ChunkEntry::Chunk {
                digest: *digest,
                len,
            })
            .collect();
        let mut manifest = DiskBackupManifest::new(backup_id, OffsetDateTime::UNIX_EPOCH);
        manifest.disks.push(disk);
        manifest
    }

    async fn remaining(repository: &Repository) -> HashSet<ChunkDigest> {
        repository
            .list_chunks()
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    #[tokio::test]
    async fn gc_deletes_unreferenced_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let digests = store_old_chunks(dir.path(), &repository, 3).await;

        let report = repository
            .garbage_collect(&HashSet::new(), &GcOptions::default())
            .await
            .unwrap();

        assert_eq!(report.examined, 3);
        assert_eq!(report.deleted, 3);
        assert!(report.deleted_bytes > 0);
        assert!(remaining(&repository).await.is_empty());
        assert!(!chunk_path(dir.path(), &digests[0]).exists());
    }

    #[tokio::test]
    async fn gc_keeps_chunks_of_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let digests = store_old_chunks(dir.path(), &repository, 3).await;
        repository
            .put_disk_manifest(&manifest_of("backup-1", &digests[..2]))
            .await
            .unwrap();

        let report = repository
            .garbage_collect(&HashSet::new(), &GcOptions::default())
            .await
            .unwrap();

        assert_eq!(report.kept_live, 2);
        assert_eq!(report.deleted, 1);
        assert_eq!(
            remaining(&repository).await,
            HashSet::from([digests[0], digests[1]])
        );
    }

    #[tokio::test]
    async fn gc_keeps_protected_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let digests = store_old_chunks(dir.path(), &repository, 2).await;
        let protected = HashSet::from([digests[1]]);

        let report = repository
            .garbage_collect(&protected, &GcOptions::default())
            .await
            .unwrap();

        assert_eq!(report.kept_protected, 1);
        assert_eq!(report.deleted, 1);
        assert_eq!(remaining(&repository).await, protected);
    }

    #[tokio::test]
    async fn gc_keeps_chunks_within_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let old = store_old_chunks(dir.path(), &repository, 1).await;
        let fresh = repository.put_chunk(&sample_chunk(9)).await.unwrap().digest;

        let report = repository
            .garbage_collect(&HashSet::new(), &GcOptions::default())
            .await
            .unwrap();

        assert_eq!(report.kept_recent, 1);
        assert_eq!(report.deleted, 1);
        assert_eq!(remaining(&repository).await, HashSet::from([fresh]));
        assert!(!chunk_path(dir.path(), &old[0]).exists());
    }

    #[tokio::test]
    async fn gc_keeps_chunks_pinned_by_session() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let digests = store_old_chunks(dir.path(), &repository, 3).await;
        let session = repository.start_session();
        // The session finds digests[0] present and will reference it without
        // uploading it again.
        let missing = session.missing_chunks(&digests[..1]).await.unwrap();
        assert!(missing.is_empty());

        let report = repository
            .garbage_collect(&HashSet::new(), &GcOptions::default())
            .await
            .unwrap();

        assert_eq!(report.kept_pinned, 1);
        assert_eq!(remaining(&repository).await, HashSet::from([digests[0]]));
        assert_eq!(session.pinned_count().await, 1);
        assert_eq!(repository.pinned_chunk_count(), 1);
        drop(session);
        assert_eq!(repository.pinned_chunk_count(), 0);
    }

    #[tokio::test]
    async fn gc_keeps_chunks_of_session_finished_during_run() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let digests = store_old_chunks(dir.path(), &repository, 2).await;
        let session = repository.start_session();
        session.pin(&digests[..1]).await;

        // The live set is built before the session writes its manifest.
        let collection = repository.begin_garbage_collection().unwrap();
        let live = HashSet::new();
        repository
            .put_disk_manifest(&manifest_of("backup-1", &digests[..1]))
            .await
            .unwrap();
        drop(session);
        let report = collection
            .sweep(&live, &HashSet::new(), &GcOptions::default())
            .await
            .unwrap();

        assert_eq!(report.kept_pinned, 1);
        assert_eq!(report.deleted, 1);
        assert_eq!(remaining(&repository).await, HashSet::from([digests[0]]));
    }

    #[tokio::test]
    async fn released_pins_stop_protecting_after_run() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let digests = store_old_chunks(dir.path(), &repository, 1).await;
        let session = repository.start_session();
        session.pin(&digests).await;
        let first = repository.begin_garbage_collection().unwrap();
        drop(session);
        drop(first);

        let report = repository
            .garbage_collect(&HashSet::new(), &GcOptions::default())
            .await
            .unwrap();

        assert_eq!(report.deleted, 1);
    }

    #[tokio::test]
    async fn session_put_chunk_pins_new_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let session = repository.start_session();
        let stored = session.put_chunk(&sample_chunk(1)).await.unwrap();
        age_chunks(dir.path(), &[stored.digest]);

        let report = repository
            .garbage_collect(&HashSet::new(), &GcOptions::default())
            .await
            .unwrap();

        assert!(stored.was_new);
        assert_eq!(report.kept_pinned, 1);
        assert!(repository.has_chunk(&stored.digest).await.unwrap());
    }

    #[tokio::test]
    async fn second_gc_run_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let first = repository.begin_garbage_collection().unwrap();

        let error = repository.clone().begin_garbage_collection().unwrap_err();

        assert!(
            matches!(error, Error::GarbageCollectionRunning { .. }),
            "{error}"
        );
        drop(first);
        repository.begin_garbage_collection().unwrap();
    }

    #[tokio::test]
    async fn gc_dry_run_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        store_old_chunks(dir.path(), &repository, 2).await;
        let options = GcOptions {
            dry_run: true,
            ..GcOptions::default()
        };

        let report = repository
            .garbage_collect(&HashSet::new(), &options)
            .await
            .unwrap();

        assert_eq!(report.deleted, 2);
        assert_eq!(remaining(&repository).await.len(), 2);
    }

    #[tokio::test]
    async fn gc_stops_on_unparsable_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        store_old_chunks(dir.path(), &repository, 2).await;
        let other_kind = ManifestId::new("file-backup-1").unwrap();
        repository
            .put_manifest(&other_kind, b"{\"files\": []}")
            .await
            .unwrap();

        let result = repository
            .garbage_collect(&HashSet::new(), &GcOptions::default())
            .await;

        assert!(
            matches!(result, Err(Error::InvalidManifest { .. })),
            "{result:?}"
        );
        assert_eq!(remaining(&repository).await.len(), 2);
        // The failed run ended, so a new one can start.
        repository.begin_garbage_collection().unwrap();
    }
}
