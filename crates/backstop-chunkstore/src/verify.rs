//! Chunk verification: read chunks back, check them as
//! [`Repository::get_chunk`] does, and report which are missing or corrupt.

use std::collections::HashSet;

use futures::stream::{self, StreamExt};

use crate::digest::ChunkDigest;
use crate::error::{Error, Result};
use crate::repository::Repository;

/// Number of chunks read at the same time. Enough to overlap the latency of
/// an object store without flooding a local disk.
const VERIFY_CONCURRENCY: usize = 4;

/// A chunk that failed verification, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkProblem {
    pub digest: ChunkDigest,
    pub reason: String,
}

/// Result of [`Repository::verify_chunks`]. All lists are sorted by digest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of distinct digests checked.
    pub checked: usize,
    /// Chunks with no stored object.
    pub missing: Vec<ChunkDigest>,
    /// Chunks whose stored object fails a check: header, authentication
    /// tag, decompression, length or content digest.
    pub corrupt: Vec<ChunkProblem>,
    /// Chunks that could not be read because of a storage error, so their
    /// state is unknown.
    pub unreadable: Vec<ChunkProblem>,
}

impl VerifyReport {
    /// Returns true when every checked chunk was read and verified.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty() && self.unreadable.is_empty()
    }
}

impl Repository {
    /// Reads each chunk in `digests`, verifies it and reports the missing,
    /// corrupt and unreadable ones. Duplicate digests are checked once.
    pub async fn verify_chunks(&self, digests: &[ChunkDigest]) -> VerifyReport {
        let unique: HashSet<ChunkDigest> = digests.iter().copied().collect();
        let mut report = VerifyReport {
            checked: unique.len(),
            ..VerifyReport::default()
        };

        let mut results = stream::iter(unique)
            .map(|digest| async move { (digest, self.get_chunk(&digest).await) })
            .buffer_unordered(VERIFY_CONCURRENCY);
        while let Some((digest, result)) = results.next().await {
            match result {
                Ok(_) => {}
                Err(Error::ChunkNotFound { .. }) => report.missing.push(digest),
                Err(Error::ChunkCorrupt { reason, .. }) => {
                    report.corrupt.push(ChunkProblem { digest, reason })
                }
                Err(error) => report.unreadable.push(ChunkProblem {
                    digest,
                    reason: error.to_string(),
                }),
            }
        }

        report.missing.sort();
        report.corrupt.sort_by_key(|problem| problem.digest);
        report.unreadable.sort_by_key(|problem| problem.digest);
        for problem in &report.corrupt {
            tracing::warn!(location = self.location(), digest = %problem.digest, reason = %problem.reason, "corrupt chunk");
        }
        for digest in &report.missing {
            tracing::warn!(location = self.location(), %digest, "missing chunk");
        }
        report
    }

    /// Verifies every chunk stored in the repository. Finds no missing
    /// chunks by construction; pass a manifest's digests to
    /// [`verify_chunks`](Self::verify_chunks) for that.
    pub async fn verify_all_chunks(&self) -> Result<VerifyReport> {
        let digests = self.list_chunks().await?;
        Ok(self.verify_chunks(&digests).await)
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{chunk_path, create_at, passphrase_options, sample_chunk};
    use crate::RepositoryOptions;

    #[tokio::test]
    async fn damaged_repository_reports_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        for encrypted in [false, true] {
            let root = dir.path().join(format!("repo-{encrypted}"));
            let options = match encrypted {
                true => passphrase_options(),
                false => RepositoryOptions::default(),
            };
            let repository = create_at(&root, options).await;
            let mut digests = Vec::new();
            for seed in 0..4 {
                digests.push(
                    repository
                        .put_chunk(&sample_chunk(seed))
                        .await
                        .unwrap()
                        .digest,
                );
            }
            let flipped = digests[1];
            let deleted = digests[2];
            let flipped_path = chunk_path(&root, &flipped);
            let mut bytes = std::fs::read(&flipped_path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            std::fs::write(&flipped_path, bytes).unwrap();
            std::fs::remove_file(chunk_path(&root, &deleted)).unwrap();

            let report = repository.verify_chunks(&digests).await;

            assert_eq!(report.checked, 4, "encrypted: {encrypted}");
            assert_eq!(report.missing, [deleted], "encrypted: {encrypted}");
            assert_eq!(report.corrupt.len(), 1, "encrypted: {encrypted}");
            assert_eq!(report.corrupt[0].digest, flipped, "encrypted: {encrypted}");
            assert!(report.unreadable.is_empty(), "encrypted: {encrypted}");
            assert!(!report.is_clean());
        }
    }

    #[tokio::test]
    async fn intact_repository_verifies_clean() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), passphrase_options()).await;
        for seed in 0..5 {
            repository.put_chunk(&sample_chunk(seed)).await.unwrap();
        }

        let report = repository.verify_all_chunks().await.unwrap();

        assert_eq!(report.checked, 5);
        assert!(report.is_clean(), "{report:?}");
    }

    #[tokio::test]
    async fn duplicate_digests_are_checked_once() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let digest = repository.put_chunk(&sample_chunk(1)).await.unwrap().digest;

        let report = repository.verify_chunks(&[digest, digest, digest]).await;

        assert_eq!(report.checked, 1);
        assert!(report.is_clean());
    }
}
