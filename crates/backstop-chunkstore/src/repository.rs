//! [`Repository`] and its chunk operations. Creating and opening are in
//! module `open`, manifests in `manifest_store`, pins in `session`, garbage
//! collection in `gc` and verification in `verify`.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{Backend, ObjectKey, ObjectMeta, PutMode, PutOutcome};
use crate::codec::{is_zero, ChunkCodec, Compression, MAX_CHUNK_LEN};
use crate::config::{RepositoryConfig, RepositoryId};
use crate::digest::{ChunkDigest, ChunkHasher};
use crate::error::{Error, Result};
use crate::keys::{EncryptionOptions, MasterKey};
use crate::local::run_blocking;
use crate::session::PinRegistry;

pub(crate) const CHUNKS_PREFIX: &str = "chunks/";

/// Settings for [`Repository::create`].
#[derive(Clone, Debug, Default)]
pub struct RepositoryOptions {
    pub encryption: EncryptionOptions,
    /// Default compression for chunks and manifests written through this
    /// repository.
    pub compression: Compression,
}

/// Result of [`Repository::put_chunk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredChunk {
    pub digest: ChunkDigest,
    /// Size of the stored object in bytes, after compression and encryption.
    /// For an existing chunk, the size of the object already stored.
    pub stored_len: u64,
    /// False when the repository already had the chunk and nothing was
    /// written.
    pub was_new: bool,
}

/// Whether [`Repository::put_chunk_with_digest`] checks the backend for the
/// chunk before encoding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExistenceCheck {
    /// Ask first and skip the encoding when the chunk exists.
    First,
    /// The caller just learned that the chunk is missing. A create-only
    /// write still keeps a chunk that another writer stored meanwhile.
    Skip,
}

/// A content-addressed chunk store with one manifest per backup.
///
/// Cloning is cheap and clones share state, including the chunk pins that
/// protect running backups from garbage collection (see [`ChunkSession`](crate::ChunkSession)).
#[derive(Clone, Debug)]
pub struct Repository {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    location: String,
    config: RepositoryConfig,
    codec: ChunkCodec,
    pins: Arc<PinRegistry>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Repository")
            .field("location", &self.location)
            .field("id", &self.config.repository_id)
            .field("encrypted", &self.config.encryption.is_some())
            .finish()
    }
}

impl Repository {
    /// Builds the repository from its parsed config and, when encrypted, the
    /// unlocked master key.
    pub(crate) fn from_parts(
        backend: Arc<dyn Backend>,
        config: RepositoryConfig,
        master: Option<&MasterKey>,
    ) -> Result<Self> {
        let hasher = match master {
            Some(master) => ChunkHasher::keyed(master.digest_key()),
            None => ChunkHasher::plain(),
        };
        let data_key = master.map(MasterKey::data_key);
        let codec = ChunkCodec::new(hasher, config.compression, data_key.as_deref())?;
        Ok(Self {
            inner: Arc::new(Inner {
                location: backend.location(),
                backend,
                config,
                codec,
                pins: Arc::new(PinRegistry::default()),
            }),
        })
    }

    /// Returns the random id recorded at creation.
    pub fn id(&self) -> RepositoryId {
        self.inner.config.repository_id
    }

    /// Returns the backend location, as used in error messages.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    pub fn is_encrypted(&self) -> bool {
        self.inner.config.encryption.is_some()
    }

    pub fn compression(&self) -> Compression {
        self.inner.codec.compression()
    }

    /// Returns a handle on the same repository that stores new chunks at
    /// another compression level, as a policy's setting requires. Reading is
    /// unaffected, since every stored chunk records its own encoding. The
    /// handle shares the pins of this one, so garbage collection sees them.
    pub fn with_compression(&self, compression: Compression) -> Repository {
        Repository {
            inner: Arc::new(Inner {
                backend: self.inner.backend.clone(),
                location: self.inner.location.clone(),
                config: self.inner.config.clone(),
                codec: self.inner.codec.with_compression(compression),
                pins: self.inner.pins.clone(),
            }),
        }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// Returns the hasher that names this repository's chunks, for callers
    /// that hash data before asking which chunks are missing.
    pub fn chunk_hasher(&self) -> ChunkHasher {
        self.inner.codec.hasher().clone()
    }

    pub(crate) fn codec(&self) -> &ChunkCodec {
        &self.inner.codec
    }

    pub(crate) fn pins(&self) -> &Arc<PinRegistry> {
        &self.inner.pins
    }

    /// Computes the chunk digest of `data` as this repository names it.
    pub fn digest(&self, data: &[u8]) -> ChunkDigest {
        self.inner.codec.hasher().digest(data)
    }

    /// Stores a chunk unless the repository already has it.
    ///
    /// Rejects an all-zero or empty chunk with [`Error::ZeroChunk`]. When the
    /// chunk exists, nothing is written and `was_new` is false.
    ///
    /// NOTE: this does not pin the chunk. A garbage collection running at the
    /// same time may delete an existing chunk right after this call reported
    /// it present. A backup that relies on existing chunks uses a
    /// [`crate::ChunkSession`] instead.
    pub async fn put_chunk(&self, data: &[u8]) -> Result<StoredChunk> {
        let data = Bytes::copy_from_slice(data);
        let codec = self.inner.codec.clone();
        let digest = run_blocking("hash a chunk", {
            let data = data.clone();
            move || Ok(codec.hasher().digest(&data))
        })
        .await?;
        self.put_chunk_with_digest(digest, data, ExistenceCheck::First)
            .await
    }

    /// Stores a chunk whose digest the caller has just computed with
    /// [`Repository::digest`].
    pub(crate) async fn put_chunk_with_digest(
        &self,
        digest: ChunkDigest,
        data: Bytes,
        check: ExistenceCheck,
    ) -> Result<StoredChunk> {
        // Checked again by the encoder; checking here skips the existence
        // lookup for data that can never be stored.
        if data.len() > MAX_CHUNK_LEN {
            return Err(Error::ChunkTooLarge {
                len: data.len(),
                max: MAX_CHUNK_LEN,
            });
        }
        if is_zero(&data) {
            return Err(Error::ZeroChunk { len: data.len() });
        }

        let key = chunk_key(&digest);
        if check == ExistenceCheck::First {
            match self.inner.backend.size(&key).await {
                Ok(stored_len) => {
                    return Ok(StoredChunk {
                        digest,
                        stored_len,
                        was_new: false,
                    })
                }
                Err(error) if error.is_not_found() => {}
                Err(error) => return Err(error),
            }
        }

        let codec = self.inner.codec.clone();
        let stored =
            run_blocking("encode a chunk", move || codec.encode_chunk(&digest, &data)).await?;
        let stored_len = stored.len() as u64;
        let outcome = self
            .inner
            .backend
            .put(&key, Bytes::from(stored), PutMode::Create)
            .await?;
        match outcome {
            PutOutcome::Written => Ok(StoredChunk {
                digest,
                stored_len,
                was_new: true,
            }),
            // A concurrent writer stored the same chunk first.
            PutOutcome::AlreadyExists => Ok(StoredChunk {
                digest,
                stored_len: self.inner.backend.size(&key).await?,
                was_new: false,
            }),
        }
    }

    /// Returns the digests from `digests` that the repository lacks, in the
    /// order given and without duplicates.
    pub async fn missing_chunks(&self, digests: &[ChunkDigest]) -> Result<Vec<ChunkDigest>> {
        let mut seen = HashSet::with_capacity(digests.len());
        let unique: Vec<ChunkDigest> = digests
            .iter()
            .copied()
            .filter(|digest| seen.insert(*digest))
            .collect();
        let keys: Vec<ObjectKey> = unique.iter().map(chunk_key).collect();
        let found = self.inner.backend.exists_many(&keys).await?;
        Ok(unique
            .into_iter()
            .zip(found)
            .filter(|(_, found)| !found)
            .map(|(digest, _)| digest)
            .collect())
    }

    pub async fn has_chunk(&self, digest: &ChunkDigest) -> Result<bool> {
        self.inner.backend.exists(&chunk_key(digest)).await
    }

    /// Reads a chunk and verifies it: header, authentication tag when
    /// encrypted, length and content digest.
    ///
    /// A missing chunk is [`Error::ChunkNotFound`], a damaged one
    /// [`Error::ChunkCorrupt`].
    pub async fn get_chunk(&self, digest: &ChunkDigest) -> Result<Vec<u8>> {
        self.read_chunk(digest, |codec, digest, stored| {
            codec.decode_chunk(digest, stored)
        })
        .await
    }

    /// Reads a chunk as [`Repository::get_chunk`] does, but decodes it into
    /// `out`, whose length must be the chunk's length, and returns `out`. Saves an allocation
    /// and lets the caller reuse its buffers. A chunk of another length is
    /// [`Error::ChunkCorrupt`].
    pub async fn get_chunk_into<B>(&self, digest: &ChunkDigest, mut out: B) -> Result<B>
    where
        B: AsMut<[u8]> + Send + 'static,
    {
        let len = out.as_mut().len();
        if len > MAX_CHUNK_LEN {
            return Err(Error::ChunkTooLarge {
                len,
                max: MAX_CHUNK_LEN,
            });
        }
        self.read_chunk(digest, move |codec, digest, stored| {
            codec.decode_chunk_into(digest, stored, out.as_mut())?;
            Ok(out)
        })
        .await
    }

    /// Fetches a stored chunk and runs `decode` on it on the blocking thread
    /// pool. Maps a missing object to [`Error::ChunkNotFound`] and a decode
    /// failure to [`Error::ChunkCorrupt`].
    async fn read_chunk<T, F>(&self, digest: &ChunkDigest, decode: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&ChunkCodec, &ChunkDigest, &[u8]) -> Result<T, String> + Send + 'static,
    {
        let stored = match self.inner.backend.get(&chunk_key(digest)).await {
            Ok(stored) => stored,
            Err(error) if error.is_not_found() => {
                return Err(Error::ChunkNotFound {
                    digest: *digest,
                    location: self.inner.location.clone(),
                })
            }
            Err(error) => return Err(error),
        };

        let codec = self.inner.codec.clone();
        let digest = *digest;
        let decoded = run_blocking("decode a chunk", move || {
            Ok(decode(&codec, &digest, &stored))
        })
        .await?;
        decoded.map_err(|reason| Error::ChunkCorrupt {
            digest,
            location: self.inner.location.clone(),
            reason,
        })
    }

    /// Lists the digests of all stored chunks, sorted.
    pub async fn list_chunks(&self) -> Result<Vec<ChunkDigest>> {
        let objects = self.list_chunk_objects().await?;
        Ok(objects.into_iter().map(|(digest, _)| digest).collect())
    }

    /// Lists stored chunks with their object metadata. Objects under
    /// `chunks/` whose key is not a chunk key are logged and skipped.
    pub(crate) async fn list_chunk_objects(&self) -> Result<Vec<(ChunkDigest, ObjectMeta)>> {
        let objects = self.inner.backend.list(CHUNKS_PREFIX).await?;
        let mut chunks = Vec::with_capacity(objects.len());
        for object in objects {
            match digest_of_chunk_key(&object.key) {
                Some(digest) => chunks.push((digest, object)),
                None => tracing::warn!(
                    location = %self.inner.location,
                    key = %object.key,
                    "skipped object under chunks/ that is not named like a chunk"
                ),
            }
        }
        Ok(chunks)
    }

    /// Deletes a chunk. Returns false when it did not exist.
    ///
    /// NOTE: this ignores pins and manifests. Garbage collection is the safe
    /// way to remove chunks while backups run.
    pub async fn delete_chunk(&self, digest: &ChunkDigest) -> Result<bool> {
        self.inner.backend.delete(&chunk_key(digest)).await
    }

    /// Returns the stored size of a chunk in bytes.
    pub async fn chunk_stored_size(&self, digest: &ChunkDigest) -> Result<u64> {
        match self.inner.backend.size(&chunk_key(digest)).await {
            Err(error) if error.is_not_found() => Err(Error::ChunkNotFound {
                digest: *digest,
                location: self.inner.location.clone(),
            }),
            result => result,
        }
    }
}

/// Returns the object key of a chunk: `chunks/<first 2 hex digits>/<64 hex
/// digits>`. The 256 subfolders keep a folder near 40 000 entries at ten
/// million chunks.
pub(crate) fn chunk_key(digest: &ChunkDigest) -> ObjectKey {
    let hex = digest.to_hex();
    ObjectKey::new(format!("{CHUNKS_PREFIX}{}/{hex}", &hex[..2])).expect("chunk keys are valid")
}

fn digest_of_chunk_key(key: &ObjectKey) -> Option<ChunkDigest> {
    let rest = key.as_str().strip_prefix(CHUNKS_PREFIX)?;
    let (folder, name) = rest.split_once('/')?;
    let digest = ChunkDigest::from_hex(name).ok()?;
    (folder == &name[..2]).then_some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{chunk_path, create_at, passphrase_options, sample_chunk};

    #[tokio::test]
    async fn put_chunk_twice_stores_once() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let data = sample_chunk(1);

        let first = repository.put_chunk(&data).await.unwrap();
        let second = repository.put_chunk(&data).await.unwrap();

        assert!(first.was_new);
        assert!(!second.was_new);
        assert_eq!(first.digest, second.digest);
        assert_eq!(first.stored_len, second.stored_len);
        assert!(first.stored_len < data.len() as u64);
        assert_eq!(repository.list_chunks().await.unwrap(), [first.digest]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_puts_store_each_chunk_once() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), passphrase_options()).await;

        let mut tasks = Vec::new();
        for task in 0..16u8 {
            let repository = repository.clone();
            tasks.push(tokio::spawn(async move {
                let data = sample_chunk(task % 4);
                repository.put_chunk(&data).await.unwrap()
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }

        let written = results.iter().filter(|stored| stored.was_new).count();
        assert_eq!(written, 4);
        assert_eq!(repository.list_chunks().await.unwrap().len(), 4);
        for stored in &results {
            repository.get_chunk(&stored.digest).await.unwrap();
        }
    }

    #[tokio::test]
    async fn chunk_files_fan_out_by_digest_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;

        let stored = repository.put_chunk(&sample_chunk(1)).await.unwrap();

        let hex = stored.digest.to_hex();
        let path = dir.path().join("chunks").join(&hex[..2]).join(&hex);
        assert!(path.is_file(), "{}", path.display());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), stored.stored_len);
        assert_eq!(
            repository.chunk_stored_size(&stored.digest).await.unwrap(),
            stored.stored_len
        );
    }

    #[tokio::test]
    async fn zero_chunk_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;

        let error = repository.put_chunk(&[0u8; 4096]).await.unwrap_err();

        assert!(matches!(error, Error::ZeroChunk { len: 4096 }), "{error}");
        assert!(repository.list_chunks().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn get_chunk_returns_content_for_every_setting() {
        let dir = tempfile::tempdir().unwrap();
        for (index, compression) in [
            Compression::Off,
            Compression::Normal,
            Compression::High,
            Compression::Max,
        ]
        .into_iter()
        .enumerate()
        {
            for encrypted in [false, true] {
                let path = dir.path().join(format!("repo-{index}-{encrypted}"));
                let mut options = match encrypted {
                    true => passphrase_options(),
                    false => RepositoryOptions::default(),
                };
                options.compression = compression;
                let repository = create_at(&path, options).await;
                let data = sample_chunk(index as u8);

                let stored = repository.put_chunk(&data).await.unwrap();

                let read = repository.get_chunk(&stored.digest).await.unwrap();
                assert_eq!(read, data, "{compression:?}, encrypted: {encrypted}");
                let into = vec![0xEE; data.len()];
                let read_into = repository
                    .get_chunk_into(&stored.digest, into)
                    .await
                    .unwrap();
                assert_eq!(read_into, data, "{compression:?}, encrypted: {encrypted}");
            }
        }
    }

    #[tokio::test]
    async fn get_chunk_into_rejects_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        for compression in [Compression::Off, Compression::Normal] {
            let path = dir.path().join(format!("repo-{compression:?}"));
            let options = RepositoryOptions {
                compression,
                ..RepositoryOptions::default()
            };
            let repository = create_at(&path, options).await;
            let data = sample_chunk(3);
            let stored = repository.put_chunk(&data).await.unwrap();

            for len in [data.len() - 1, data.len() + 1] {
                let error = repository
                    .get_chunk_into(&stored.digest, vec![0; len])
                    .await
                    .unwrap_err();
                assert!(
                    matches!(error, Error::ChunkCorrupt { .. }),
                    "{compression:?}, {len} bytes: {error}"
                );
            }
        }
    }

    #[tokio::test]
    async fn missing_chunk_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let digest = repository.digest(b"never stored");

        let error = repository.get_chunk(&digest).await.unwrap_err();

        assert!(matches!(error, Error::ChunkNotFound { .. }), "{error}");
        assert!(error.to_string().contains(&digest.to_hex()), "{error}");
        assert!(repository
            .chunk_stored_size(&digest)
            .await
            .unwrap_err()
            .is_not_found());
    }

    #[tokio::test]
    async fn corrupt_chunk_is_detected_on_read() {
        let dir = tempfile::tempdir().unwrap();
        for encrypted in [false, true] {
            let path = dir.path().join(format!("repo-{encrypted}"));
            let options = match encrypted {
                true => passphrase_options(),
                false => RepositoryOptions::default(),
            };
            let repository = create_at(&path, options).await;
            let stored = repository.put_chunk(&sample_chunk(1)).await.unwrap();
            let file = chunk_path(&path, &stored.digest);
            let mut bytes = std::fs::read(&file).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x01;
            std::fs::write(&file, bytes).unwrap();

            let error = repository.get_chunk(&stored.digest).await.unwrap_err();

            assert!(matches!(error, Error::ChunkCorrupt { .. }), "{error}");
            assert!(!error.is_not_found());
            assert!(
                error.to_string().contains(&stored.digest.to_hex()),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn missing_chunks_lists_only_absent() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let present = repository.put_chunk(&sample_chunk(1)).await.unwrap().digest;
        let absent_a = repository.digest(&sample_chunk(2));
        let absent_b = repository.digest(&sample_chunk(3));

        let missing = repository
            .missing_chunks(&[absent_b, present, absent_a, absent_b])
            .await
            .unwrap();

        assert_eq!(missing, [absent_b, absent_a]);
        assert!(repository.has_chunk(&present).await.unwrap());
        assert!(!repository.has_chunk(&absent_a).await.unwrap());
    }

    #[tokio::test]
    async fn delete_chunk_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let digest = repository.put_chunk(&sample_chunk(1)).await.unwrap().digest;

        assert!(repository.delete_chunk(&digest).await.unwrap());
        assert!(!repository.delete_chunk(&digest).await.unwrap());
        assert!(!repository.has_chunk(&digest).await.unwrap());
    }

    #[tokio::test]
    async fn stray_files_are_not_listed_as_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let digest = repository.put_chunk(&sample_chunk(1)).await.unwrap().digest;
        let hex = digest.to_hex();
        std::fs::write(dir.path().join("chunks/readme.txt"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("chunks/zz")).unwrap();
        std::fs::write(dir.path().join("chunks/zz").join(&hex), b"x").unwrap();

        assert_eq!(repository.list_chunks().await.unwrap(), [digest]);
    }
}
