//! [`LocalBackend`], a [`Backend`] on a local folder.
//!
//! An object key maps to a path below the root folder: `chunks/ab/abcd…`
//! becomes `<root>/chunks/ab/abcd…`. Files whose name starts with `.` are not
//! objects. Temporary files of writes in progress, or left behind by a crash,
//! are named `.tmp-<random>`, and [`LocalBackend::list`] skips them. All writes
//! go through [`crate::durable::write_file_durably`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::{Backend, ObjectKey, ObjectMeta, PutMode, PutOutcome};
use crate::durable::{remove_file_durably, write_file_durably, TEMP_PREFIX};
use crate::error::{Error, Result};

/// File permissions for new objects, before the process umask applies.
const OBJECT_FILE_MODE: u32 = 0o644;

/// Storage backend on a local folder (or a mounted network file system that
/// supports fsync, rename and hard links).
#[derive(Clone, Debug)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    /// Creates a backend rooted at `root`. The folder is created on the first
    /// write, so this does no I/O.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
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
        run_blocking("check objects", move || {
            let mut found = Vec::with_capacity(paths.len());
            for (key, path) in paths {
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
        let path = self.path_of(key);
        let result = run_blocking("delete object", move || Ok(remove_file_durably(&path))).await?;
        result.map_err(|source| self.io_error("delete", key, source))
    }

    async fn size(&self, key: &ObjectKey) -> Result<u64> {
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
