//! The storage backend interface: [`Backend`], [`ObjectKey`] and the types
//! its methods return.
//!
//! A backend stores opaque byte objects under `/`-separated keys, like an S3
//! bucket does. It does not interpret chunks, encryption or manifests. The
//! trait is shaped after what S3 offers (conditional put, list with metadata,
//! delete) so that an `object_store`-based backend can implement it without
//! changing the repository code.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};

/// Maximum length of an object key in bytes, the S3 limit.
pub const MAX_KEY_LEN: usize = 1024;

/// Validated object key: `/`-separated segments of ASCII letters, digits,
/// `.`, `_` and `-`.
///
/// No segment may be empty or start with `.`. That rules out `..` path
/// traversal in file-based backends and keeps dot-names free for a backend's
/// own files, such as the temporary files of [`crate::LocalBackend`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Validates `key` and wraps it.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        let invalid = |reason| Error::InvalidObjectKey {
            key: key.clone(),
            reason,
        };

        if key.is_empty() {
            return Err(invalid("the key is empty"));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(invalid("the key is longer than 1024 bytes"));
        }
        for segment in key.split('/') {
            if segment.is_empty() {
                return Err(invalid("a segment between slashes is empty"));
            }
            if segment.starts_with('.') {
                return Err(invalid("a segment starts with '.'"));
            }
            let valid_chars = segment
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
            if !valid_chars {
                return Err(invalid(
                    "only ASCII letters, digits, '.', '_', '-' and '/' are allowed",
                ));
            }
        }
        Ok(Self(key))
    }

    /// Returns the key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "ObjectKey({:?})", self.0)
    }
}

impl AsRef<str> for ObjectKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Behavior of [`Backend::put`] when an object already exists under the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Keep the existing object and return [`PutOutcome::AlreadyExists`].
    /// Maps to S3's `If-None-Match: *`.
    Create,
    /// Replace the existing object atomically.
    Overwrite,
}

/// Result of a successful [`Backend::put`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written.
    Written,
    /// [`PutMode::Create`] found an existing object and left it unchanged.
    AlreadyExists,
}

/// Key, size and modification time of a stored object, as returned by
/// [`Backend::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: ObjectKey,
    /// Stored size in bytes.
    pub size: u64,
    /// Time of the last write, by the storage's clock. Garbage collection
    /// compares it with its own start time, so the two clocks must agree to
    /// within the grace period.
    pub last_modified: SystemTime,
}

/// Object storage used by a [`crate::Repository`].
///
/// Implementations must make [`put`](Backend::put) atomic: a concurrent or
/// later reader sees either the whole new object or no object (or the old one
/// for [`PutMode::Overwrite`]), never a partial one, also after a crash.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Human-readable location for messages, such as a folder path or
    /// `s3://bucket/prefix`.
    fn location(&self) -> String;

    /// Stores `data` under `key`, atomically and durably.
    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<PutOutcome>;

    /// Reads the whole object. A missing object is [`Error::ObjectNotFound`].
    async fn get(&self, key: &ObjectKey) -> Result<Bytes>;

    /// Returns whether an object exists under `key`.
    async fn exists(&self, key: &ObjectKey) -> Result<bool>;

    /// Returns, for each key in order, whether an object exists under it.
    ///
    /// The default calls [`exists`](Backend::exists) once per key. Backends
    /// with a cheaper bulk form (one listing, one blocking task) override it.
    async fn exists_many(&self, keys: &[ObjectKey]) -> Result<Vec<bool>> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(self.exists(key).await?);
        }
        Ok(found)
    }

    /// Lists all objects whose key starts with `prefix` (a plain string
    /// prefix, as in S3), sorted by key.
    ///
    /// NOTE: the whole listing is collected in memory, an estimated 150 bytes
    /// per object. A streaming form may be needed for repositories with tens of
    /// millions of chunks.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Deletes the object. Returns false when there was nothing to delete.
    async fn delete(&self, key: &ObjectKey) -> Result<bool>;

    /// Returns the stored size of the object in bytes.
    async fn size(&self, key: &ObjectKey) -> Result<u64>;

    /// Makes every object written so far durable, for backends that batch
    /// that work. Writes of other backends are durable when `put` returns,
    /// and for them this does nothing.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_key_accepts_normal_keys() {
        for key in ["config.json", "chunks/ab/abcdef", "manifests/backup-1_a.b"] {
            assert_eq!(ObjectKey::new(key).unwrap().as_str(), key);
        }
    }

    #[test]
    fn object_key_rejects_unsafe_keys() {
        let long_key = "a".repeat(MAX_KEY_LEN + 1);
        let cases = [
            "",
            "/absolute",
            "trailing/",
            "double//slash",
            "../escape",
            "chunks/../config.json",
            ".tmp-123",
            "chunks/.hidden",
            "space here",
            "back\\slash",
            "nul\0byte",
            long_key.as_str(),
        ];

        for key in cases {
            let result = ObjectKey::new(key);
            assert!(
                matches!(result, Err(Error::InvalidObjectKey { .. })),
                "accepted {key:?}"
            );
        }
    }
}
