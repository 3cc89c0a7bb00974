//! Helpers shared by the unit tests of several modules.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::keys::TEST_KDF;
use crate::repository::chunk_key;
use crate::{
    ChunkDigest, Compression, Credentials, EncryptionOptions, LocalBackend, Repository,
    RepositoryOptions, Result,
};

pub(crate) const PASSPHRASE: &str = "correct horse battery staple";

/// Passphrase encryption with cheap Argon2id costs.
pub(crate) fn passphrase_options() -> RepositoryOptions {
    RepositoryOptions {
        encryption: EncryptionOptions::Passphrase {
            passphrase: PASSPHRASE.into(),
            kdf: TEST_KDF,
        },
        compression: Compression::Normal,
    }
}

pub(crate) async fn create_at(path: &Path, options: RepositoryOptions) -> Repository {
    Repository::create(Arc::new(LocalBackend::new(path)), options)
        .await
        .unwrap()
}

pub(crate) async fn open_at(path: &Path, credentials: &Credentials) -> Result<Repository> {
    Repository::open(Arc::new(LocalBackend::new(path)), credentials).await
}

/// Returns the file of a chunk in a repository on a `LocalBackend`.
pub(crate) fn chunk_path(root: &Path, digest: &ChunkDigest) -> PathBuf {
    root.join(chunk_key(digest).as_str())
}

/// Content that differs per seed and compresses well.
pub(crate) fn sample_chunk(seed: u8) -> Vec<u8> {
    format!("chunk {seed} content. ").repeat(200).into_bytes()
}
