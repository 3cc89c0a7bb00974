//! Chunk pins: the [`ChunkSession`] that a running backup or recovery holds,
//! and the registry that garbage collection checks before each delete.
//!
//! A session pins every digest it stores, checks or is asked to protect,
//! until it is dropped. Garbage collection checks the pins and deletes under
//! a lock that placing a pin also takes, so a pin is either seen by the
//! collection or placed after the chunk is gone. In the second case the
//! session's existence check, which runs after the pin, finds the chunk
//! missing and the chunk is uploaded again. The crate-level docs give the
//! whole safety argument.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use crate::digest::ChunkDigest;
use crate::error::Result;
use crate::local::run_blocking;
use crate::repository::{ExistenceCheck, Repository, StoredChunk};

/// Pins held by the sessions of one [`Repository`] and its clones.
#[derive(Debug, Default)]
pub(crate) struct PinRegistry {
    state: Mutex<PinState>,
    /// Sessions take it shared to add pins. Garbage collection takes it
    /// exclusively around each "check pins, then delete" step.
    pub(crate) gate: tokio::sync::RwLock<()>,
}

#[derive(Debug, Default)]
pub(crate) struct PinState {
    /// Number of sessions pinning each digest.
    counts: HashMap<ChunkDigest, usize>,
    pub(crate) collection_running: bool,
    /// Digests unpinned while a collection runs. They stay protected until
    /// it ends, because the collection's live set may predate the manifest
    /// that the finished session wrote.
    pub(crate) released_during_collection: HashSet<ChunkDigest>,
}

impl PinRegistry {
    pub(crate) fn state(&self) -> MutexGuard<'_, PinState> {
        // Each update is a few map operations that leave the state valid
        // even if a panic interrupts them, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn pin(&self, digests: &[ChunkDigest]) {
        let _gate = self.gate.read().await;
        let mut state = self.state();
        for digest in digests {
            *state.counts.entry(*digest).or_default() += 1;
        }
    }

    fn unpin(&self, digests: impl IntoIterator<Item = ChunkDigest>) {
        let mut state = self.state();
        for digest in digests {
            if let Some(count) = state.counts.get_mut(&digest) {
                *count -= 1;
                if *count == 0 {
                    state.counts.remove(&digest);
                }
            }
            if state.collection_running {
                state.released_during_collection.insert(digest);
            }
        }
    }

    pub(crate) fn is_protected(&self, digest: &ChunkDigest) -> bool {
        let state = self.state();
        state.counts.contains_key(digest) || state.released_during_collection.contains(digest)
    }

    fn pinned_count(&self) -> usize {
        self.state().counts.len()
    }
}

/// Chunks pinned by one running backup or recovery. Dropping the session
/// releases its pins.
///
/// A backup agent calls [`missing_chunks`](Self::missing_chunks) with the
/// digests it computed, uploads the missing ones with
/// [`put_chunk`](Self::put_chunk), writes its manifest, and then drops the
/// session. A recovery calls [`pin`](Self::pin) with the manifest's digests
/// before reading chunks.
#[derive(Debug)]
pub struct ChunkSession {
    repository: Repository,
    /// Digests this session has pinned. The async lock keeps two concurrent
    /// calls from returning before the shared pin is placed.
    pinned: tokio::sync::Mutex<HashSet<ChunkDigest>>,
}

impl Repository {
    /// Starts a session whose chunks garbage collection will not delete.
    pub fn start_session(&self) -> ChunkSession {
        ChunkSession {
            repository: self.clone(),
            pinned: tokio::sync::Mutex::new(HashSet::new()),
        }
    }

    /// Returns the number of distinct digests pinned by all sessions.
    pub fn pinned_chunk_count(&self) -> usize {
        self.pins().pinned_count()
    }
}

impl ChunkSession {
    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// Pins `digests` until the session is dropped. The chunks need not
    /// exist yet.
    pub async fn pin(&self, digests: &[ChunkDigest]) {
        let mut pinned = self.pinned.lock().await;
        let mut new_digests: Vec<ChunkDigest> = digests
            .iter()
            .copied()
            .filter(|digest| !pinned.contains(digest))
            .collect();
        new_digests.sort_unstable();
        new_digests.dedup();

        // The session records a digest only after the shared pin is placed,
        // so a call cancelled while waiting leaves nothing for Drop to
        // release twice.
        self.repository.pins().pin(&new_digests).await;
        pinned.extend(new_digests);
    }

    /// Pins `digests`, then returns those the repository lacks, in the order
    /// given and without duplicates. Because the pins come first, a chunk
    /// reported present stays present for the session's lifetime.
    pub async fn missing_chunks(&self, digests: &[ChunkDigest]) -> Result<Vec<ChunkDigest>> {
        self.pin(digests).await;
        self.repository.missing_chunks(digests).await
    }

    /// Pins the chunk, then stores it unless it exists. See
    /// [`Repository::put_chunk`].
    pub async fn put_chunk(&self, data: &[u8]) -> Result<StoredChunk> {
        let data = Bytes::copy_from_slice(data);
        let hasher = self.repository.chunk_hasher();
        let digest = run_blocking("hash a chunk", {
            let data = data.clone();
            move || Ok(hasher.digest(&data))
        })
        .await?;
        self.pin(&[digest]).await;
        self.repository
            .put_chunk_with_digest(digest, data, ExistenceCheck::First)
            .await
    }

    /// Pins the chunk, then stores it, like [`put_chunk`](Self::put_chunk)
    /// but for a caller that has already computed `digest` with
    /// [`Repository::chunk_hasher`] and learned from
    /// [`missing_chunks`](Self::missing_chunks) that the chunk is absent.
    /// It skips hashing the data again and asking whether the chunk exists.
    /// A chunk stored meanwhile by another writer is kept, and the result's
    /// `was_new` is false.
    ///
    /// The digest is not recomputed in release builds: a digest that does
    /// not match the data stores the data under the wrong name, which reads
    /// later report as [`Error::ChunkCorrupt`](crate::Error::ChunkCorrupt).
    pub async fn put_missing_chunk(&self, digest: ChunkDigest, data: Bytes) -> Result<StoredChunk> {
        debug_assert_eq!(
            self.repository.digest(&data),
            digest,
            "put_missing_chunk got a digest that does not match the data"
        );
        self.pin(&[digest]).await;
        self.repository
            .put_chunk_with_digest(digest, data, ExistenceCheck::Skip)
            .await
    }

    /// Returns the number of distinct digests this session has pinned.
    pub async fn pinned_count(&self) -> usize {
        self.pinned.lock().await.len()
    }
}

impl Drop for ChunkSession {
    fn drop(&mut self) {
        let pinned = std::mem::take(self.pinned.get_mut());
        self.repository.pins().unpin(pinned);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::test_support::create_at;
    use crate::RepositoryOptions;

    #[tokio::test]
    async fn pin_waits_for_running_delete() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let digest = repository.digest(b"chunk being deleted");
        let pins = std::sync::Arc::clone(repository.pins());
        let session = repository.start_session();

        // Hold the lock that a sweep holds while it checks pins and deletes.
        let gate = pins.gate.write().await;
        let digests = [digest];
        let pin = session.pin(&digests);
        tokio::pin!(pin);
        let finished_early = tokio::time::timeout(Duration::from_millis(50), &mut pin)
            .await
            .is_ok();
        assert!(!finished_early, "the pin did not wait for the delete step");
        assert!(!pins.is_protected(&digest));

        drop(gate);
        pin.await;
        assert!(pins.is_protected(&digest));
    }

    #[tokio::test]
    async fn shared_pin_lasts_until_last_session() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let digest = repository.digest(b"shared chunk");
        let first = repository.start_session();
        let second = repository.start_session();
        first.pin(&[digest, digest]).await;
        second.pin(&[digest]).await;

        drop(first);
        assert!(repository.pins().is_protected(&digest));
        assert_eq!(repository.pinned_chunk_count(), 1);

        drop(second);
        assert!(!repository.pins().is_protected(&digest));
        assert_eq!(repository.pinned_chunk_count(), 0);
    }

    #[tokio::test]
    async fn cancelled_pin_releases_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let digest = repository.digest(b"shared chunk");
        let holder = repository.start_session();
        holder.pin(&[digest]).await;
        let cancelled = repository.start_session();

        let gate = repository.pins().gate.write().await;
        let timed_out = tokio::time::timeout(Duration::from_millis(20), cancelled.pin(&[digest]))
            .await
            .is_err();
        drop(gate);
        drop(cancelled);

        assert!(timed_out);
        assert!(repository.pins().is_protected(&digest));
        assert_eq!(holder.pinned_count().await, 1);
    }
}
