//! Manifest storage on a [`Repository`]: one object per backup under
//! `manifests/<id>`, stored with the same codec as chunks.

use bytes::Bytes;

use crate::backend::{ObjectKey, PutMode};
use crate::error::{Error, Result};
use crate::local::run_blocking;
use crate::manifest::{DiskBackupManifest, ManifestId};
use crate::repository::Repository;

const MANIFESTS_PREFIX: &str = "manifests/";

impl Repository {
    /// Stores a manifest, compressed and, in an encrypted repository,
    /// encrypted and bound to its id. Replaces an existing manifest with the
    /// same id atomically.
    pub async fn put_manifest(&self, id: &ManifestId, data: &[u8]) -> Result<()> {
        let codec = self.codec().clone();
        let data = data.to_vec();
        let id_text = id.as_str().to_owned();
        let stored = run_blocking("encode a manifest", move || {
            codec.encode_manifest(&id_text, &data)
        })
        .await?;
        self.backend()
            .put(&manifest_key(id)?, Bytes::from(stored), PutMode::Overwrite)
            .await?;
        Ok(())
    }

    /// Reads and decodes a manifest.
    pub async fn get_manifest(&self, id: &ManifestId) -> Result<Vec<u8>> {
        let stored = match self.backend().get(&manifest_key(id)?).await {
            Ok(stored) => stored,
            Err(error) if error.is_not_found() => {
                return Err(Error::ManifestNotFound {
                    id: id.to_string(),
                    location: self.location().to_owned(),
                })
            }
            Err(error) => return Err(error),
        };
        let codec = self.codec().clone();
        let id_text = id.as_str().to_owned();
        let decoded = run_blocking("decode a manifest", move || {
            Ok(codec.decode_manifest(&id_text, &stored))
        })
        .await?;
        decoded.map_err(|reason| Error::ManifestCorrupt {
            id: id.to_string(),
            location: self.location().to_owned(),
            reason,
        })
    }

    /// Lists the ids of all stored manifests, sorted.
    pub async fn list_manifests(&self) -> Result<Vec<ManifestId>> {
        let objects = self.backend().list(MANIFESTS_PREFIX).await?;
        let mut ids = Vec::with_capacity(objects.len());
        for object in objects {
            let name = &object.key.as_str()[MANIFESTS_PREFIX.len()..];
            match ManifestId::new(name) {
                Ok(id) => ids.push(id),
                Err(error) => tracing::warn!(
                    location = %self.location(),
                    key = %object.key,
                    %error,
                    "skipped object under manifests/ that is not named like a manifest"
                ),
            }
        }
        Ok(ids)
    }

    /// Deletes a manifest. Returns false when it did not exist. The chunks
    /// it referenced stay until garbage collection removes them.
    pub async fn delete_manifest(&self, id: &ManifestId) -> Result<bool> {
        self.backend().delete(&manifest_key(id)?).await
    }

    /// Validates a disk manifest and stores it under its backup id.
    pub async fn put_disk_manifest(&self, manifest: &DiskBackupManifest) -> Result<ManifestId> {
        let id = manifest.manifest_id()?;
        let json = manifest.to_json()?;
        self.put_manifest(&id, &json).await?;
        Ok(id)
    }

    /// Reads a manifest and parses it as a disk manifest.
    pub async fn get_disk_manifest(&self, id: &ManifestId) -> Result<DiskBackupManifest> {
        let json = self.get_manifest(id).await?;
        let manifest = DiskBackupManifest::from_json(&json)?;
        if manifest.backup_id != id.as_str() {
            return Err(Error::ManifestCorrupt {
                id: id.to_string(),
                location: self.location().to_owned(),
                reason: format!("it contains backup id {:?}", manifest.backup_id),
            });
        }
        Ok(manifest)
    }
}

fn manifest_key(id: &ManifestId) -> Result<ObjectKey> {
    ObjectKey::new(format!("{MANIFESTS_PREFIX}{id}"))
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::test_support::{create_at, passphrase_options, sample_chunk};
    use crate::{ChunkEntry, DiskManifest, RepositoryOptions};

    fn id(text: &str) -> ManifestId {
        ManifestId::new(text).unwrap()
    }

    #[tokio::test]
    async fn manifests_round_trip_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;

        repository.put_manifest(&id("b"), b"second").await.unwrap();
        repository.put_manifest(&id("a"), b"first").await.unwrap();

        assert_eq!(
            repository.list_manifests().await.unwrap(),
            [id("a"), id("b")]
        );
        assert_eq!(repository.get_manifest(&id("a")).await.unwrap(), b"first");
        assert!(dir.path().join("manifests/a").is_file());

        assert!(repository.delete_manifest(&id("a")).await.unwrap());
        assert!(!repository.delete_manifest(&id("a")).await.unwrap());
        assert_eq!(repository.list_manifests().await.unwrap(), [id("b")]);
    }

    #[tokio::test]
    async fn put_manifest_replaces_existing() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;

        repository.put_manifest(&id("a"), b"old").await.unwrap();
        repository.put_manifest(&id("a"), b"new").await.unwrap();

        assert_eq!(repository.get_manifest(&id("a")).await.unwrap(), b"new");
    }

    #[tokio::test]
    async fn missing_manifest_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;

        let error = repository.get_manifest(&id("absent")).await.unwrap_err();

        assert!(matches!(error, Error::ManifestNotFound { .. }), "{error}");
        assert!(error.to_string().contains("absent"), "{error}");
    }

    #[tokio::test]
    async fn encrypted_manifest_is_unreadable_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), passphrase_options()).await;

        repository
            .put_manifest(&id("a"), b"{\"backup\": \"visible text\"}")
            .await
            .unwrap();

        let stored = std::fs::read(dir.path().join("manifests/a")).unwrap();
        assert!(!stored.windows(7).any(|window| window == b"visible"));
        assert_eq!(
            repository.get_manifest(&id("a")).await.unwrap(),
            b"{\"backup\": \"visible text\"}"
        );
    }

    #[tokio::test]
    async fn renamed_encrypted_manifest_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), passphrase_options()).await;
        repository.put_manifest(&id("a"), b"content").await.unwrap();
        std::fs::rename(
            dir.path().join("manifests/a"),
            dir.path().join("manifests/b"),
        )
        .unwrap();

        let error = repository.get_manifest(&id("b")).await.unwrap_err();

        assert!(matches!(error, Error::ManifestCorrupt { .. }), "{error}");
    }

    #[tokio::test]
    async fn disk_manifest_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), passphrase_options()).await;
        let data = sample_chunk(1);
        let stored = repository.put_chunk(&data).await.unwrap();
        let mut disk = DiskManifest::new("vda", 2 * data.len() as u64, data.len() as u32);
        disk.entries = vec![
            ChunkEntry::Hole,
            ChunkEntry::Chunk {
                digest: stored.digest,
                len: data.len() as u32,
            },
        ];
        let mut manifest = DiskBackupManifest::new("backup-1", OffsetDateTime::UNIX_EPOCH);
        manifest.uploaded_bytes = stored.stored_len;
        manifest.disks.push(disk);

        let manifest_id = repository.put_disk_manifest(&manifest).await.unwrap();

        assert_eq!(manifest_id, id("backup-1"));
        let read = repository.get_disk_manifest(&manifest_id).await.unwrap();
        assert_eq!(read, manifest);
    }

    #[tokio::test]
    async fn disk_manifest_under_other_id_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), RepositoryOptions::default()).await;
        let manifest = DiskBackupManifest::new("backup-1", OffsetDateTime::UNIX_EPOCH);
        repository
            .put_manifest(&id("backup-2"), &manifest.to_json().unwrap())
            .await
            .unwrap();

        let error = repository
            .get_disk_manifest(&id("backup-2"))
            .await
            .unwrap_err();

        assert!(error.to_string().contains("backup-1"), "{error}");
    }
}
