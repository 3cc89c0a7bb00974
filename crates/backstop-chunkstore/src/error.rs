//! The crate's one error type, [`Error`], and its `Result` alias.
//!
//! Each message names the object (key, chunk digest, manifest id or
//! repository location), the action that failed and the cause, so that a log
//! line is enough to find the damaged file or the wrong setting.

use std::io;
use std::path::PathBuf;

use crate::digest::ChunkDigest;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors returned by backends, the codec and the repository.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A storage operation failed with an I/O error.
    #[error("failed to {action} object {key:?} in {location}: {source}")]
    Io {
        action: &'static str,
        key: String,
        location: String,
        #[source]
        source: io::Error,
    },

    /// A storage operation failed in a backend that is not file based.
    #[error("failed to {action} object {key:?} in {location}: {source}")]
    Backend {
        action: &'static str,
        key: String,
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The backend has no object under this key.
    #[error("object {key:?} not found in {location}")]
    ObjectNotFound { key: String, location: String },

    /// The key is not a valid object key (see `ObjectKey`).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidObjectKey { key: String, reason: &'static str },

    /// The repository has no chunk with this digest.
    #[error("chunk {digest} not found in repository at {location}")]
    ChunkNotFound {
        digest: ChunkDigest,
        location: String,
    },

    /// The stored chunk exists but fails a check: header, authentication tag,
    /// decompression, length or plaintext digest.
    #[error("chunk {digest} in repository at {location} is corrupt: {reason}")]
    ChunkCorrupt {
        digest: ChunkDigest,
        location: String,
        reason: String,
    },

    /// The chunk is all zero bytes (or empty). Callers record such a range as
    /// a hole instead of storing it.
    #[error(
        "rejected an all-zero chunk of {len} bytes: record it as a hole instead of storing it"
    )]
    ZeroChunk { len: usize },

    /// The chunk is larger than the codec accepts.
    #[error("chunk of {len} bytes is larger than the maximum of {max} bytes")]
    ChunkTooLarge { len: usize, max: usize },

    /// A chunk digest string is not 64 hexadecimal characters.
    #[error("invalid chunk digest {value:?}: expected 64 lowercase hexadecimal characters")]
    InvalidDigest { value: String },

    /// A manifest id contains characters that cannot be used in an object key.
    #[error("invalid manifest id {id:?}: {reason}")]
    InvalidManifestId { id: String, reason: &'static str },

    /// The repository has no manifest with this id.
    #[error("manifest {id:?} not found in repository at {location}")]
    ManifestNotFound { id: String, location: String },

    /// The stored manifest exists but cannot be decrypted, decompressed or
    /// parsed.
    #[error("manifest {id:?} in repository at {location} is corrupt: {reason}")]
    ManifestCorrupt {
        id: String,
        location: String,
        reason: String,
    },

    /// A disk manifest's entries do not match its declared sizes.
    #[error("invalid disk manifest for backup {backup_id:?}: {reason}")]
    InvalidManifest { backup_id: String, reason: String },

    /// `Repository::create` found an existing `config.json`.
    #[error("repository already exists at {location}")]
    RepositoryExists { location: String },

    /// `Repository::open` found no `config.json`.
    #[error("no repository at {location}: config.json not found")]
    RepositoryNotFound { location: String },

    /// The repository config was written by a newer or unknown format.
    #[error(
        "repository at {location} has format version {found}, but this build supports only version {supported}"
    )]
    UnsupportedFormatVersion {
        location: String,
        found: u32,
        supported: u32,
    },

    /// The repository config is not valid JSON or has invalid values.
    #[error("invalid repository config at {location}: {reason}")]
    InvalidConfig { location: String, reason: String },

    /// The passphrase does not unlock the repository's master key.
    #[error("wrong passphrase for repository at {location}")]
    WrongPassphrase { location: String },

    /// The key file does not unlock the repository's master key.
    #[error("wrong key for repository at {location}: the key in {key_file} does not unlock it")]
    WrongKey { location: String, key_file: PathBuf },

    /// The credentials given to `Repository::open` are of the wrong kind for
    /// this repository, for example a passphrase for an unencrypted one.
    #[error("cannot open repository at {location}: it {expected}, but {given} was given")]
    CredentialsMismatch {
        location: String,
        expected: &'static str,
        given: &'static str,
    },

    /// A key file could not be read, created or parsed.
    #[error("invalid key file {path}: {reason}")]
    InvalidKeyFile { path: PathBuf, reason: String },

    /// Key derivation, random number generation or key setup failed.
    #[error("failed to {action}: {reason}")]
    Crypto {
        action: &'static str,
        reason: String,
    },

    /// zstd failed to compress a chunk or manifest.
    #[error("failed to compress {object} with zstd: {source}")]
    CompressionFailed {
        object: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// Another garbage collection run is active on this `Repository`.
    #[error("garbage collection is already running on repository at {location}")]
    GarbageCollectionRunning { location: String },

    /// A blocking task (file I/O, hashing or compression) panicked or was
    /// cancelled.
    #[error("background task to {action} failed: {source}")]
    TaskFailed {
        action: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Error {
    /// Returns true for the errors that mean "this object does not exist",
    /// as opposed to "it exists but is damaged" or "the storage failed".
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::ObjectNotFound { .. }
                | Error::ChunkNotFound { .. }
                | Error::ManifestNotFound { .. }
                | Error::RepositoryNotFound { .. }
        )
    }
}
