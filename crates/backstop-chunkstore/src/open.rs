//! Creating and opening a [`Repository`]: writing `config.json`, generating
//! or unlocking the master key.

use std::sync::Arc;

use bytes::Bytes;
use time::OffsetDateTime;

use crate::backend::{Backend, ObjectKey, PutMode, PutOutcome};
use crate::config::{DigestAlgorithm, RepositoryConfig, RepositoryId, CONFIG_KEY, FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::keys::{self, Credentials};
use crate::repository::{Repository, RepositoryOptions};

impl Repository {
    /// Creates a new repository: generates the master key if `options` ask
    /// for encryption, and writes `config.json` with the durable write.
    ///
    /// Fails with [`Error::RepositoryExists`] when the backend already has a
    /// config, and leaves it unchanged.
    pub async fn create(backend: Arc<dyn Backend>, options: RepositoryOptions) -> Result<Self> {
        let location = backend.location();
        let config_key = ObjectKey::new(CONFIG_KEY)?;
        if backend.exists(&config_key).await? {
            return Err(Error::RepositoryExists { location });
        }

        let repository_id = RepositoryId::generate();
        let master = keys::create_master_key(&options.encryption, repository_id).await?;
        let (master, encryption) = match master {
            Some((master, encryption)) => (Some(master), Some(encryption)),
            None => (None, None),
        };
        let config = RepositoryConfig {
            format_version: FORMAT_VERSION,
            repository_id,
            created_at: OffsetDateTime::now_utc(),
            compression: options.compression,
            chunk_digest: match encryption {
                Some(_) => DigestAlgorithm::Blake3Keyed,
                None => DigestAlgorithm::Blake3,
            },
            encryption,
        };

        let outcome = backend
            .put(&config_key, Bytes::from(config.to_json()), PutMode::Create)
            .await?;
        if outcome == PutOutcome::AlreadyExists {
            // Another process created a repository here at the same moment.
            return Err(Error::RepositoryExists { location });
        }
        tracing::info!(%location, id = %repository_id, encrypted = master.is_some(), "created repository");
        Self::from_parts(backend, config, master.as_ref())
    }

    /// Opens an existing repository, checking the format version and
    /// unlocking the master key with `credentials`.
    pub async fn open(backend: Arc<dyn Backend>, credentials: &Credentials) -> Result<Self> {
        let location = backend.location();
        let config_key = ObjectKey::new(CONFIG_KEY)?;
        let data = match backend.get(&config_key).await {
            Ok(data) => data,
            Err(Error::ObjectNotFound { .. }) => {
                return Err(Error::RepositoryNotFound { location })
            }
            Err(error) => return Err(error),
        };
        let config = RepositoryConfig::from_json(&data, &location)?;
        let master = keys::unlock_master_key(
            config.encryption.as_ref(),
            credentials,
            config.repository_id,
            &location,
        )
        .await?;
        Self::from_parts(backend, config, master.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::LocalBackend;
    use crate::test_support::{
        chunk_path, create_at, open_at, passphrase_options, sample_chunk, PASSPHRASE,
    };
    use crate::{Compression, EncryptionOptions};

    #[tokio::test]
    async fn create_twice_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let first = create_at(dir.path(), RepositoryOptions::default()).await;

        let backend = Arc::new(LocalBackend::new(dir.path()));
        let error = Repository::create(backend, passphrase_options())
            .await
            .unwrap_err();

        assert!(matches!(error, Error::RepositoryExists { .. }), "{error}");
        let reopened = open_at(dir.path(), &Credentials::None).await.unwrap();
        assert_eq!(reopened.id(), first.id());
    }

    #[tokio::test]
    async fn open_without_config_is_not_found() {
        let dir = tempfile::tempdir().unwrap();

        let error = open_at(&dir.path().join("absent"), &Credentials::None)
            .await
            .unwrap_err();

        assert!(matches!(error, Error::RepositoryNotFound { .. }), "{error}");
    }

    #[tokio::test]
    async fn reopened_repository_reads_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("repo.key");
        let cases = [
            (RepositoryOptions::default(), Credentials::None),
            (
                passphrase_options(),
                Credentials::Passphrase(PASSPHRASE.into()),
            ),
            (
                RepositoryOptions {
                    encryption: EncryptionOptions::KeyFile(key_file.clone()),
                    compression: Compression::High,
                },
                Credentials::KeyFile(key_file.clone()),
            ),
        ];

        for (index, (options, credentials)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("repo-{index}"));
            let created = create_at(&path, options).await;
            let digest = created.put_chunk(&sample_chunk(7)).await.unwrap().digest;

            let reopened = open_at(&path, &credentials).await.unwrap();

            assert_eq!(reopened.id(), created.id());
            assert_eq!(reopened.compression(), created.compression());
            assert_eq!(reopened.get_chunk(&digest).await.unwrap(), sample_chunk(7));
        }
    }

    #[tokio::test]
    async fn wrong_passphrase_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        create_at(dir.path(), passphrase_options()).await;

        let error = open_at(dir.path(), &Credentials::Passphrase("guess".into()))
            .await
            .unwrap_err();

        assert!(matches!(error, Error::WrongPassphrase { .. }), "{error}");
        let expected = format!(
            "wrong passphrase for repository at {}",
            dir.path().display()
        );
        assert_eq!(error.to_string(), expected);
    }

    #[tokio::test]
    async fn wrong_key_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("repo.key");
        let other_key_file = dir.path().join("other.key");
        std::fs::write(&other_key_file, "11".repeat(32)).unwrap();
        let options = RepositoryOptions {
            encryption: EncryptionOptions::KeyFile(key_file),
            compression: Compression::Normal,
        };
        let repo_path = dir.path().join("repo");
        create_at(&repo_path, options).await;

        let error = open_at(&repo_path, &Credentials::KeyFile(other_key_file))
            .await
            .unwrap_err();

        assert!(matches!(error, Error::WrongKey { .. }), "{error}");
        assert!(error.to_string().contains("other.key"), "{error}");
    }

    #[tokio::test]
    async fn credentials_of_wrong_kind_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        let encrypted = dir.path().join("encrypted");
        create_at(&plain, RepositoryOptions::default()).await;
        create_at(&encrypted, passphrase_options()).await;
        let cases = [
            (&plain, Credentials::Passphrase("x".into())),
            (&plain, Credentials::KeyFile(dir.path().join("k"))),
            (&encrypted, Credentials::None),
            (&encrypted, Credentials::KeyFile(dir.path().join("k"))),
        ];

        for (path, credentials) in cases {
            let error = open_at(path, &credentials).await.unwrap_err();
            assert!(
                matches!(error, Error::CredentialsMismatch { .. }),
                "{credentials:?}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn encrypted_repository_hides_content_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let repository = create_at(dir.path(), passphrase_options()).await;
        let data = sample_chunk(1);

        let digest = repository.put_chunk(&data).await.unwrap().digest;

        assert_ne!(digest.as_bytes(), blake3::hash(&data).as_bytes());
        let stored = std::fs::read(chunk_path(dir.path(), &digest)).unwrap();
        assert!(!stored.windows(12).any(|window| window == &data[..12]));
        let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        assert!(config.contains("\"format_version\": 1"), "{config}");
        assert!(config.contains("argon2id"), "{config}");
        assert!(!config.contains(PASSPHRASE), "{config}");
    }

    #[tokio::test]
    async fn newer_config_version_is_rejected_on_open() {
        let dir = tempfile::tempdir().unwrap();
        create_at(dir.path(), RepositoryOptions::default()).await;
        let config_path = dir.path().join("config.json");
        let config = std::fs::read_to_string(&config_path).unwrap();
        std::fs::write(
            &config_path,
            config.replace("\"format_version\": 1", "\"format_version\": 9"),
        )
        .unwrap();

        let error = open_at(dir.path(), &Credentials::None).await.unwrap_err();

        assert!(
            matches!(error, Error::UnsupportedFormatVersion { found: 9, .. }),
            "{error}"
        );
    }
}
