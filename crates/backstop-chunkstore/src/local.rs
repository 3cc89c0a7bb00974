//! [`LocalBackend`], a [`Backend`] on a local folder.
//!
//! An object key maps to a path below the root folder: `chunks/ab/abcd…`
//! becomes `<root>/chunks/ab/abcd…`. Files whose name starts with `.` are not
//! objects. Temporary files of writes in progress, or left behind by a crash,
//! are named `.tmp-<random>`, and [`LocalBackend::list`] skips them.
//!
//! Writes go through [`crate::durable::write_file_durably`], which fsyncs
//! the file and its folder before it returns.
//!
//! A backend made with [`LocalBackend::with_deferred_chunk_sync`], as the
//! server's is, handles create-only writes of chunks differently: a backup
//! stores hundreds of them, and two fsyncs each took about a tenth of a full
//! backup's time. Such a write leaves the data in a temporary file and
//! records it as pending; reads, size and existence checks find it there.
//! A flush makes all pending chunks durable in one batch: each file is
//! fsynced and linked to its final name, then each folder is fsynced once.
//! A flush runs before any other object is written (so before the manifest
//! that refers to the chunks), before a listing or a delete, on
//! [`Backend::flush`], and whenever [`FLUSH_BYTES`] are pending. A crash loses only pending chunks, which no durable manifest
//! refers to, and leaves no partial file under a chunk's name.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{stream, StreamExt, TryStreamExt};

use crate::backend::{Backend, ObjectKey, ObjectMeta, PutMode, PutOutcome};
use crate::durable::{
    commit_temp_file, parent_folder, remove_file_durably, sync_folder, write_file_durably,
    write_temp_file, TEMP_PREFIX,
};
use crate::error::{Error, Result};
use crate::repository::CHUNKS_PREFIX;

/// Bytes of pending chunk writes that start a flush on their own, so that
/// a long backup does not keep an unbounded number of them pending.
const FLUSH_BYTES: u64 = 512 * 1024 * 1024;

/// Number of pending chunk files fsynced at once by a flush.
const FLUSH_PARALLELISM: usize = 16;

/// File permissions for new objects, before the process umask applies.
const OBJECT_FILE_MODE: u32 = 0o644;

/// Storage backend on a local folder (or a mounted network file system that
/// supports fsync, rename and hard links).
///
/// Clones share their pending chunk writes, so a process should open one
/// backend per folder and clone it.
#[derive(Clone, Debug)]
pub struct LocalBackend {
    root: PathBuf,
    /// Whether create-only chunk writes are deferred.
    defer_chunk_sync: bool,
    deferred: Arc<Deferred>,
}

/// Chunk writes not yet durable (see the module documentation).
#[derive(Debug, Default)]
struct Deferred {
    pending: Mutex<Pending>,
    /// Held by the one flush that runs at a time.
    flushing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Pending {
    files: HashMap<ObjectKey, PendingFile>,
    /// Sum of the files' lengths.
    bytes: u64,
}

#[derive(Clone, Debug)]
struct PendingFile {
    temp: PathBuf,
    len: u64,
}

impl Deferred {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the temporary file of a pending object.
    fn temp_file(&self, key: &ObjectKey) -> Option<PathBuf> {
        self.lock().files.get(key).map(|file| file.temp.clone())
    }
}

impl LocalBackend {
    /// Creates a backend rooted at `root`. The folder is created on the first
    /// write, so this does no I/O.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            defer_chunk_sync: false,
            deferred: Arc::default(),
        }
    }

    /// Defers the fsyncs of create-only chunk writes and makes the chunks
    /// durable in batches (see the module documentation). Only one backend
    /// (and its clones) per folder and process may use this, because other
    /// instances do not see pending chunks.
    pub fn with_deferred_chunk_sync(mut self) -> Self {
        self.defer_chunk_sync = true;
        self
    }

    /// Makes every pending chunk write durable under its final name. Called
    /// before every write of another object and through [`Backend::flush`].
    async fn commit_pending(&self) -> Result<()> {
        let _flushing = self.deferred.flushing.lock().await;
        let batch: Vec<(ObjectKey, PathBuf)> = self
            .deferred
            .lock()
            .files
            .iter()
            .map(|(key, file)| (key.clone(), file.temp.clone()))
            .collect();
        if batch.is_empty() {
            return Ok(());
        }

        // Step 1: fsync each temporary file and link it to its final name.
        // The fsyncs run in parallel, so the file system can commit them
        // together.
        let committed: Vec<(ObjectKey, PathBuf)> = stream::iter(batch)
            .map(|(key, temp)| {
                let path = self.path_of(&key);
                let location = self.location();
                run_blocking("commit chunk", move || {
                    match commit_temp_file(&temp, &path) {
                        Ok(_) => Ok((key, temp)),
                        Err(source) => Err(Error::Io {
                            action: "commit",
                            key: key.to_string(),
                            location,
                            source,
                        }),
                    }
                })
            })
            .buffer_unordered(FLUSH_PARALLELISM)
            .try_collect()
            .await?;

        // Step 2: fsync each folder once, which makes the new names durable.
        let folders: BTreeSet<PathBuf> = committed
            .iter()
            .map(|(key, _)| parent_folder(&self.path_of(key)).to_owned())
            .collect();
        let location = self.location();
        run_blocking("sync chunk folders", move || {
            for folder in folders {
                sync_folder(&folder).map_err(|source| Error::Io {
                    action: "sync folder",
                    key: folder.display().to_string(),
                    location: location.clone(),
                    source,
                })?;
            }
            Ok(())
        })
        .await?;

        // Step 3: remove the pending entries, then the temporary names. A
        // reader that found a temporary name just before falls back to the
        // final one.
        {
            let mut pending = self.deferred.lock();
            for (key, _) in &committed {
                if let Some(file) = pending.files.remove(key) {
                    pending.bytes -= file.len;
                }
            }
        }
        for (_, temp) in &committed {
            let _ = fs::remove_file(temp);
        }
        tracing::debug!(objects = committed.len(), "flushed pending chunk writes");
        Ok(())
    }

    /// Writes a chunk as pending (see the module documentation).
    async fn put_deferred(&self, key: &ObjectKey, data: Bytes) -> Result<PutOutcome> {
        let path = self.path_of(key);
        let deferred = Arc::clone(&self.deferred);
        let owned_key = key.clone();
        let result = run_blocking("write object", move || {
            let exists =
                |pending: &Pending| pending.files.contains_key(&owned_key) || path.exists();
            if exists(&deferred.lock()) {
                return Ok(Ok(PutOutcome::AlreadyExists));
            }
            let temp = match write_temp_file(&path, &data, OBJECT_FILE_MODE) {
                Ok(temp) => temp,
                Err(error) => return Ok(Err(error)),
            };
            let mut pending = deferred.lock();
            // Checked again: another writer may have stored it meanwhile.
            if exists(&pending) {
                drop(pending);
                let _ = fs::remove_file(&temp);
                return Ok(Ok(PutOutcome::AlreadyExists));
            }
            let len = data.len() as u64;
            pending.files.insert(owned_key, PendingFile { temp, len });
            pending.bytes += len;
            Ok(Ok(PutOutcome::Written))
        })
        .await?;
        let outcome = result.map_err(|source| self.io_error("write", key, source))?;
        if self.deferred.lock().bytes >= FLUSH_BYTES {
            self.commit_pending().await?;
        }
        Ok(outcome)
    }

    /// Returns the root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns the file path of an object.
    pub fn path_of(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// Removes temporary files left by interrupted writes and returns how
    /// many were removed.
    ///
    /// Only files last modified more than `min_age` ago are removed, because
    /// a younger one may belong to a write still in progress. An age of a few
    /// minutes is safe when no single object write takes that long.
    pub async fn remove_stale_temp_files(&self, min_age: Duration) -> Result<usize> {
        let root = self.root.clone();
        let location = self.location();
        let deferred = Arc::clone(&self.deferred);
        run_blocking("remove stale temporary files", move || {
            let mut removed = 0;
            let now = SystemTime::now();
            for entry in walk_files(&root).map_err(|source| Error::Io {
                action: "list",
                key: String::new(),
                location: location.clone(),
                source,
            })? {
                if !entry.is_temp {
                    continue;
                }
                let is_pending = |pending: &Pending| {
                    pending.files.values().any(|file| file.temp == entry.path)
                };
                if is_pending(&deferred.lock()) {
                    continue;
                }
                let age = now.duration_since(entry.modified).unwrap_or_default();
                if age < min_age {
                    continue;
                }
                match fs::remove_file(&entry.path) {
                    Ok(()) => {
                        tracing::info!(path = %entry.path.display(), "removed stale temporary file");
                        removed += 1;
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(Error::Io {
                            action: "remove temporary file",
                            key: entry.path.display().to_string(),
                            location,
                            source,
                        })
                    }
                }
            }
            Ok(removed)
        })
        .await
    }

    fn io_error(&self, action: &'static str, key: &ObjectKey, source: io::Error) -> Error {
        if source.kind() == io::ErrorKind::NotFound {
            return Error::ObjectNotFound {
                key: key.to_string(),
                location: self.location(),
            };
        }
        Error::Io {
            action,
            key: key.to_string(),
            location: self.location(),
            source,
        }
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<PutOutcome> {
        if self.defer_chunk_sync
            && mode == PutMode::Create
            && key.as_str().starts_with(CHUNKS_PREFIX)
        {
            return self.put_deferred(key, data).await;
        }
        // Chunks written before this object become durable before it does,
        // so a manifest never refers to a chunk that a crash could lose.
        self.commit_pending().await?;
        let path = self.path_of(key);
        let result = run_blocking("write object", move || {
            Ok(write_file_durably(&path, &data, mode, OBJECT_FILE_MODE))
        })
        .await?;
        result.map_err(|source| Error::Io {
            action: "write",
            key: key.to_string(),
            location: self.location(),
            source,
        })
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        if let Some(temp) = self.deferred.temp_file(key) {
            // Gone if a flush committed the object meanwhile.
            if let Ok(data) = tokio::fs::read(&temp).await {
                return Ok(Bytes::from(data));
            }
        }
        let path = self.path_of(key);
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err(source) => Err(self.io_error("read", key, source)),
        }
    }

    async fn exists(&self, key: &ObjectKey) -> Result<bool> {
        let found = self.exists_many(std::slice::from_ref(key)).await?;
        Ok(found[0])
    }

    async fn exists_many(&self, keys: &[ObjectKey]) -> Result<Vec<bool>> {
        let paths: Vec<(ObjectKey, PathBuf)> = keys
            .iter()
            .map(|key| (key.clone(), self.path_of(key)))
            .collect();
        let location = self.location();
        let deferred = Arc::clone(&self.deferred);
        run_blocking("check objects", move || {
            let mut found = Vec::with_capacity(paths.len());
            for (key, path) in paths {
                // Looked up first: a flush links the final name before it
                // removes the pending entry.
                if deferred.lock().files.contains_key(&key) {
                    found.push(true);
                    continue;
                }
                match fs::metadata(&path) {
                    Ok(metadata) => found.push(metadata.is_file()),
                    Err(error) if error.kind() == io::ErrorKind::NotFound => found.push(false),
                    Err(source) => {
                        return Err(Error::Io {
                            action: "check",
                            key: key.to_string(),
                            location,
                            source,
                        })
                    }
                }
            }
            Ok(found)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        // Lists, and garbage collection with them, see every written chunk.
        self.commit_pending().await?;
        // Walk only the folder that the prefix's complete segments name.
        let folder_part = match prefix.rfind('/') {
            Some(index) => &prefix[..index],
            None => "",
        };
        let walk_root = if folder_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(ObjectKey::new(folder_part)?.as_str())
        };

        let root = self.root.clone();
        let prefix = prefix.to_owned();
        let location = self.location();
        run_blocking("list objects", move || {
            let entries = walk_files(&walk_root).map_err(|source| Error::Io {
                action: "list",
                key: prefix.clone(),
                location,
                source,
            })?;

            let mut objects = Vec::new();
            for entry in entries {
                if entry.is_temp {
                    continue;
                }
                let Some(key) = key_of_path(&root, &entry.path) else {
                    tracing::warn!(path = %entry.path.display(), "skipped file whose name is not a valid object key");
                    continue;
                };
                if key.as_str().starts_with(&prefix) {
                    objects.push(ObjectMeta {
                        key,
                        size: entry.size,
                        last_modified: entry.modified,
                    });
                }
            }
            objects.sort_by(|left, right| left.key.cmp(&right.key));
            Ok(objects)
        })
        .await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<bool> {
        self.commit_pending().await?;
        let path = self.path_of(key);
        let result = run_blocking("delete object", move || Ok(remove_file_durably(&path))).await?;
        result.map_err(|source| self.io_error("delete", key, source))
    }

    async fn flush(&self) -> Result<()> {
        self.commit_pending().await
    }

    async fn size(&self, key: &ObjectKey) -> Result<u64> {
        if let Some(temp) = self.deferred.temp_file(key) {
            if let Ok(metadata) = tokio::fs::metadata(&temp).await {
                return Ok(metadata.len());
            }
        }
        match tokio::fs::metadata(self.path_of(key)).await {
            Ok(metadata) => Ok(metadata.len()),
            Err(source) => Err(self.io_error("read size of", key, source)),
        }
    }
}

/// Runs blocking file work on tokio's blocking thread pool.
pub(crate) async fn run_blocking<T, F>(action: &'static str, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| Error::TaskFailed { action, source })?
}

/// File found by [`walk_files`].
struct WalkedFile {
    path: PathBuf,
    is_temp: bool,
    size: u64,
    modified: SystemTime,
}

/// Lists every regular file below `folder`, including temporary files and
/// skipping other dot-names. A missing folder has no files.
fn walk_files(folder: &Path) -> io::Result<Vec<WalkedFile>> {
    let mut files = Vec::new();
    let mut pending = vec![folder.to_path_buf()];

    while let Some(current) = pending.pop() {
        let entries = match fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_temp = name.starts_with(TEMP_PREFIX);
            if name.starts_with('.') && !is_temp {
                continue;
            }

            // A file deleted between read_dir and metadata is skipped.
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            if metadata.is_dir() && !is_temp {
                pending.push(entry.path());
            } else if metadata.is_file() {
                files.push(WalkedFile {
                    path: entry.path(),
                    is_temp,
                    size: metadata.len(),
                    modified: metadata.modified()?,
                });
            }
        }
    }
    Ok(files)
}

/// Converts a file path below `root` back to its object key.
fn key_of_path(root: &Path, path: &Path) -> Option<ObjectKey> {
    let relative = path.strip_prefix(root).ok()?;
    let segments: Option<Vec<&str>> = relative.iter().map(|part| part.to_str()).collect();
    ObjectKey::new(segments?.join("/")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> ObjectKey {
        ObjectKey::new(text).unwrap()
    }

    fn temp_files_in(folder: &Path) -> Vec<PathBuf> {
        walk_files(folder)
            .unwrap()
            .into_iter()
            .filter(|file| file.is_temp)
            .map(|file| file.path)
            .collect()
    }

    fn deferred_backend(root: &Path) -> LocalBackend {
        LocalBackend::new(root).with_deferred_chunk_sync()
    }

    #[tokio::test]
    async fn deferred_chunk_durable_before_next_object() {
        let dir = tempfile::tempdir().unwrap();
        let backend = deferred_backend(dir.path());
        let chunk = key("chunks/ab/abc");
        let payload = Bytes::from_static(b"payload");

        let first = backend.put(&chunk, payload.clone(), PutMode::Create).await;
        let second = backend.put(&chunk, payload.clone(), PutMode::Create).await;

        assert_eq!(first.unwrap(), PutOutcome::Written);
        assert_eq!(second.unwrap(), PutOutcome::AlreadyExists);
        assert!(!dir.path().join("chunks/ab/abc").exists());
        assert_eq!(temp_files_in(dir.path()).len(), 1);
        assert_eq!(backend.get(&chunk).await.unwrap(), payload);
        assert_eq!(backend.size(&chunk).await.unwrap(), 7);
        assert!(backend.exists(&chunk).await.unwrap());

        let manifest = key("manifests/backup-1");
        backend
            .put(
                &manifest,
                Bytes::from_static(b"refers to abc"),
                PutMode::Overwrite,
            )
            .await
            .unwrap();

        assert_eq!(
            std::fs::read(dir.path().join("chunks/ab/abc")).unwrap(),
            b"payload"
        );
        assert!(temp_files_in(dir.path()).is_empty());
        assert_eq!(backend.get(&chunk).await.unwrap(), payload);
    }

    #[tokio::test]
    async fn pending_chunk_lost_without_flush() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = key("chunks/cd/cde");
        {
            let backend = deferred_backend(dir.path());
            backend
                .put(&chunk, Bytes::from_static(b"unsaved"), PutMode::Create)
                .await
                .unwrap();
        }

        let after_crash = LocalBackend::new(dir.path());

        assert!(!after_crash.exists(&chunk).await.unwrap());
        assert!(after_crash.list("chunks/").await.unwrap().is_empty());
        let removed = after_crash
            .remove_stale_temp_files(Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(removed, 1);
    }

    #[tokio::test]
    async fn list_delete_and_flush_commit_pending_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let backend = deferred_backend(dir.path());
        let chunks = [key("chunks/01/0123"), key("chunks/02/0234")];
        for chunk in &chunks {
            backend
                .put(chunk, Bytes::from_static(b"x"), PutMode::Create)
                .await
                .unwrap();
        }
        // A stale temporary file of this backend is still pending, so the
        // clean-up keeps it.
        assert_eq!(
            backend
                .remove_stale_temp_files(Duration::ZERO)
                .await
                .unwrap(),
            0
        );

        let listed = backend.list("chunks/").await.unwrap();

        assert_eq!(listed.len(), 2);
        assert!(temp_files_in(dir.path()).is_empty());

        backend
            .put(
                &key("chunks/03/0345"),
                Bytes::from_static(b"y"),
                PutMode::Create,
            )
            .await
            .unwrap();
        assert!(backend.delete(&chunks[0]).await.unwrap());
        assert!(dir.path().join("chunks/03/0345").is_file());

        backend
            .put(
                &key("chunks/04/0456"),
                Bytes::from_static(b"z"),
                PutMode::Create,
            )
            .await
            .unwrap();
        backend.flush().await.unwrap();
        assert!(dir.path().join("chunks/04/0456").is_file());
    }

    #[tokio::test]
    async fn concurrent_deferred_puts_write_once() {
        let dir = tempfile::tempdir().unwrap();
        let backend = deferred_backend(dir.path());
        let chunk = key("chunks/ef/ef01");

        let outcomes = futures::future::join_all((0..16).map(|_| {
            let backend = backend.clone();
            let chunk = chunk.clone();
            async move {
                backend
                    .put(&chunk, Bytes::from_static(b"same"), PutMode::Create)
                    .await
                    .unwrap()
            }
        }))
        .await;

        let written = outcomes
            .iter()
            .filter(|outcome| **outcome == PutOutcome::Written)
            .count();
        assert_eq!(written, 1);
        assert_eq!(temp_files_in(dir.path()).len(), 1);
        backend.flush().await.unwrap();
        assert!(temp_files_in(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn put_then_get_returns_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        let object = key("chunks/ab/abc");

        let outcome = backend
            .put(&object, Bytes::from_static(b"payload"), PutMode::Create)
            .await
            .unwrap();

        assert_eq!(outcome, PutOutcome::Written);
        assert_eq!(backend.get(&object).await.unwrap(), &b"payload"[..]);
        assert!(dir.path().join("chunks/ab/abc").is_file());
    }

    #[tokio::test]
    async fn put_create_keeps_existing_object() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        let object = key("config.json");
        backend
            .put(&object, Bytes::from_static(b"first"), PutMode::Create)
            .await
            .unwrap();

        let outcome = backend
            .put(&object, Bytes::from_static(b"second"), PutMode::Create)
            .await
            .unwrap();

        assert_eq!(outcome, PutOutcome::AlreadyExists);
        assert_eq!(backend.get(&object).await.unwrap(), &b"first"[..]);
    }

    #[tokio::test]
    async fn put_overwrite_replaces_object() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        let object = key("manifests/backup-1");
        backend
            .put(&object, Bytes::from_static(b"old"), PutMode::Overwrite)
            .await
            .unwrap();

        let outcome = backend
            .put(&object, Bytes::from_static(b"new"), PutMode::Overwrite)
            .await
            .unwrap();

        assert_eq!(outcome, PutOutcome::Written);
        assert_eq!(backend.get(&object).await.unwrap(), &b"new"[..]);
        assert!(temp_files_in(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn get_missing_object_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());

        let error = backend.get(&key("chunks/00/missing")).await.unwrap_err();

        assert!(matches!(error, Error::ObjectNotFound { .. }), "{error}");
        assert!(error.to_string().contains("chunks/00/missing"), "{error}");
    }

    #[tokio::test]
    async fn stale_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        let folder = dir.path().join("chunks/ab");
        fs::create_dir_all(&folder).unwrap();
        let old_temp = folder.join(".tmp-old");
        let new_temp = folder.join(".tmp-new");
        fs::write(&old_temp, b"partial").unwrap();
        fs::write(&new_temp, b"in progress").unwrap();
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&old_temp)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();

        let removed = backend
            .remove_stale_temp_files(Duration::from_secs(600))
            .await
            .unwrap();

        assert_eq!(removed, 1);
        assert!(!old_temp.exists());
        assert!(new_temp.exists());
    }

    #[tokio::test]
    async fn list_filters_by_prefix_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        for (name, data) in [
            ("chunks/bb/b2", &b"22"[..]),
            ("chunks/aa/a1", &b"1"[..]),
            ("manifests/m1", &b"333"[..]),
            ("config.json", &b"{}"[..]),
        ] {
            backend
                .put(&key(name), Bytes::copy_from_slice(data), PutMode::Create)
                .await
                .unwrap();
        }
        fs::write(dir.path().join("chunks/aa/.tmp-leftover"), b"x").unwrap();
        fs::write(dir.path().join("chunks/aa/not a key"), b"x").unwrap();

        let chunks = backend.list("chunks/").await.unwrap();
        let chunk_keys: Vec<&str> = chunks.iter().map(|meta| meta.key.as_str()).collect();
        assert_eq!(chunk_keys, ["chunks/aa/a1", "chunks/bb/b2"]);
        assert_eq!(chunks[0].size, 1);
        assert_eq!(chunks[1].size, 2);

        let partial_prefix = backend.list("chunks/a").await.unwrap();
        assert_eq!(partial_prefix.len(), 1);

        let everything = backend.list("").await.unwrap();
        assert_eq!(everything.len(), 4);

        assert!(backend.list("missing/").await.unwrap().is_empty());
        assert!(backend.list("../").await.is_err());
    }

    #[tokio::test]
    async fn exists_many_reports_each_key() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        backend
            .put(&key("a/present"), Bytes::from_static(b"x"), PutMode::Create)
            .await
            .unwrap();

        let found = backend
            .exists_many(&[key("a/present"), key("a/absent"), key("b/absent")])
            .await
            .unwrap();

        assert_eq!(found, [true, false, false]);
    }

    #[tokio::test]
    async fn delete_reports_whether_object_existed() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        let object = key("a/object");
        backend
            .put(&object, Bytes::from_static(b"x"), PutMode::Create)
            .await
            .unwrap();

        assert!(backend.delete(&object).await.unwrap());
        assert!(!backend.delete(&object).await.unwrap());
        assert!(!backend.exists(&object).await.unwrap());
    }

    #[tokio::test]
    async fn size_returns_stored_length() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        let object = key("a/object");
        backend
            .put(&object, Bytes::from(vec![1u8; 1234]), PutMode::Create)
            .await
            .unwrap();

        assert_eq!(backend.size(&object).await.unwrap(), 1234);
        assert!(backend
            .size(&key("a/missing"))
            .await
            .unwrap_err()
            .is_not_found());
    }
}
