//! Repository keys: the options and credentials a caller gives, key files,
//! Argon2id key derivation, and wrapping of the master key.
//!
//! Every encrypted repository has a random 256-bit master key. The config
//! stores it encrypted with AES-256-GCM under a key-encryption key (KEK):
//!
//! - passphrase: KEK = Argon2id(passphrase, salt, cost), with salt and cost
//!   stored in the config;
//! - key file: KEK = the 32 bytes in the file, which the operator keeps.
//!
//! A wrong passphrase or key fails the AES-GCM tag check on the wrapped
//! master key, so it is reported as such and never yields a wrong key. The
//! chunk digest key and the data key are derived from the master key with
//! BLAKE3's `derive_key`, each with its own context string.

use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::backend::PutMode;
use crate::config::{EncryptionConfig, KdfConfig, RepositoryId, WrappedKey};
use crate::durable::write_file_durably;
use crate::error::{Error, Result};
use crate::local::run_blocking;

const KEY_LEN: usize = 32;
const SALT_LEN: usize = 16;
const WRAP_CONTEXT: &[u8] = b"Backstop chunk store v1 master key wrap ";
const DIGEST_KEY_CONTEXT: &str = "Backstop chunk store v1 chunk digest key";
const DATA_KEY_CONTEXT: &str = "Backstop chunk store v1 data encryption key";

/// Limits on KDF costs read from a config. The config is not authenticated,
/// so without them a tampered file could make `open` allocate any amount of
/// memory.
const MAX_KDF_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const MAX_KDF_ITERATIONS: u32 = 100;
const MAX_KDF_PARALLELISM: u32 = 64;

/// Passphrase kept in memory that is zeroed on drop. `Debug` hides it.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    pub fn new(passphrase: impl Into<String>) -> Self {
        Self(Zeroizing::new(passphrase.into()))
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Passphrase(<hidden>)")
    }
}

impl From<&str> for Passphrase {
    fn from(passphrase: &str) -> Self {
        Self::new(passphrase)
    }
}

/// Argon2id cost parameters for a new passphrase-protected repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes over the memory.
    pub iterations: u32,
    /// Number of lanes. The argon2 crate computes them one after another, so
    /// this changes the result but not the wall time.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 4 lanes. One derivation took about 0.3 s on one
    /// core of an AMD EPYC server (argon2 0.6, release build, timed with
    /// `Argon2::hash_password_into`).
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 4,
        }
    }
}

/// Encryption setting for a new repository.
#[derive(Clone, Debug, Default)]
pub enum EncryptionOptions {
    /// Chunks and manifests are stored in plain text (still compressed).
    #[default]
    None,
    /// The key-encryption key is read from this file. If the file does not
    /// exist, a new random key is written to it as 64 hexadecimal
    /// characters, with mode 0600.
    KeyFile(PathBuf),
    /// The key-encryption key is derived from the passphrase with Argon2id.
    Passphrase {
        passphrase: Passphrase,
        kdf: KdfParams,
    },
}

impl EncryptionOptions {
    /// Passphrase encryption with the default Argon2id costs.
    pub fn passphrase(passphrase: impl Into<String>) -> Self {
        EncryptionOptions::Passphrase {
            passphrase: Passphrase::new(passphrase),
            kdf: KdfParams::default(),
        }
    }
}

/// Secret needed by `Repository::open`. The kind must match how the
/// repository was created.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// For an unencrypted repository.
    None,
    /// Path of the key file given at creation.
    KeyFile(PathBuf),
    /// The passphrase given at creation.
    Passphrase(Passphrase),
}

impl Credentials {
    /// Builds credentials from the two usual settings: a key file, or the
    /// name of an environment variable that holds a passphrase. With neither
    /// the repository is unencrypted. The error says which setting to fix.
    pub fn from_settings(
        key_file: Option<&Path>,
        passphrase_env: Option<&str>,
    ) -> std::result::Result<Self, String> {
        match (key_file, passphrase_env) {
            (Some(_), Some(_)) => Err("set a key file or a passphrase variable, not both".to_owned()),
            (Some(path), None) => Ok(Credentials::KeyFile(path.to_owned())),
            (None, Some(name)) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => Ok(Credentials::Passphrase(Passphrase::new(value))),
                _ => Err(format!(
                    "environment variable {name} for the repository passphrase is unset or empty; export the passphrase"
                )),
            },
            (None, None) => Ok(Credentials::None),
        }
    }
}

/// The repository's 256-bit master key, zeroed on drop.
pub(crate) struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    /// Key for keyed BLAKE3 chunk digests.
    pub(crate) fn digest_key(&self) -> [u8; KEY_LEN] {
        blake3::derive_key(DIGEST_KEY_CONTEXT, &self.0[..])
    }

    /// AES-256-GCM key for chunks and manifests.
    pub(crate) fn data_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(blake3::derive_key(DATA_KEY_CONTEXT, &self.0[..]))
    }
}

/// Generates a master key and wraps it as `options` ask. Returns `None` for
/// an unencrypted repository.
pub(crate) async fn create_master_key(
    options: &EncryptionOptions,
    repository_id: RepositoryId,
) -> Result<Option<(MasterKey, EncryptionConfig)>> {
    let master = match options {
        EncryptionOptions::None => return Ok(None),
        _ => MasterKey(Zeroizing::new(random_bytes("generate the master key")?)),
    };

    let config = match options {
        EncryptionOptions::None => unreachable!("handled above"),
        EncryptionOptions::KeyFile(path) => {
            let kek = create_or_read_key_file(path.clone()).await?;
            let wrapped_master_key = wrap_master_key(&kek, &master, repository_id)?;
            EncryptionConfig::KeyFile { wrapped_master_key }
        }
        EncryptionOptions::Passphrase { passphrase, kdf } => {
            let salt: [u8; SALT_LEN] = random_bytes("generate the Argon2id salt")?;
            let kdf = KdfConfig {
                algorithm: "argon2id".to_owned(),
                version: Version::V0x13 as u32,
                memory_kib: kdf.memory_kib,
                iterations: kdf.iterations,
                parallelism: kdf.parallelism,
                salt: salt.to_vec(),
            };
            let kek = derive_kek(passphrase.clone(), kdf.clone()).await?;
            let wrapped_master_key = wrap_master_key(&kek, &master, repository_id)?;
            EncryptionConfig::Passphrase {
                kdf,
                wrapped_master_key,
            }
        }
    };
    Ok(Some((master, config)))
}

/// Unwraps the master key with `credentials`. Returns `None` for an
/// unencrypted repository.
pub(crate) async fn unlock_master_key(
    encryption: Option<&EncryptionConfig>,
    credentials: &Credentials,
    repository_id: RepositoryId,
    location: &str,
) -> Result<Option<MasterKey>> {
    let mismatch = |expected, given| Error::CredentialsMismatch {
        location: location.to_owned(),
        expected,
        given,
    };

    match (encryption, credentials) {
        (None, Credentials::None) => Ok(None),
        (None, Credentials::KeyFile(_)) => Err(mismatch("is not encrypted", "a key file")),
        (None, Credentials::Passphrase(_)) => Err(mismatch("is not encrypted", "a passphrase")),
        (Some(EncryptionConfig::KeyFile { .. }), Credentials::Passphrase(_)) => {
            Err(mismatch("is encrypted with a key file", "a passphrase"))
        }
        (Some(EncryptionConfig::Passphrase { .. }), Credentials::KeyFile(_)) => {
            Err(mismatch("is encrypted with a passphrase", "a key file"))
        }
        (Some(EncryptionConfig::KeyFile { .. }), Credentials::None) => {
            Err(mismatch("is encrypted with a key file", "no credential"))
        }
        (Some(EncryptionConfig::Passphrase { .. }), Credentials::None) => {
            Err(mismatch("is encrypted with a passphrase", "no credential"))
        }
        (
            Some(EncryptionConfig::KeyFile { wrapped_master_key }),
            Credentials::KeyFile(key_file),
        ) => {
            let kek = read_key_file(key_file.clone()).await?;
            let master = unwrap_master_key(&kek, wrapped_master_key, repository_id, location)
                .ok_or_else(|| Error::WrongKey {
                    location: location.to_owned(),
                    key_file: key_file.clone(),
                })?;
            Ok(Some(master))
        }
        (
            Some(EncryptionConfig::Passphrase {
                kdf,
                wrapped_master_key,
            }),
            Credentials::Passphrase(passphrase),
        ) => {
            validate_kdf(kdf, location)?;
            let kek = derive_kek(passphrase.clone(), kdf.clone()).await?;
            let master = unwrap_master_key(&kek, wrapped_master_key, repository_id, location)
                .ok_or_else(|| Error::WrongPassphrase {
                    location: location.to_owned(),
                })?;
            Ok(Some(master))
        }
    }
}

fn validate_kdf(kdf: &KdfConfig, location: &str) -> Result<()> {
    let problem = if kdf.algorithm != "argon2id" {
        Some(format!(
            "kdf algorithm is {:?}, expected \"argon2id\"",
            kdf.algorithm
        ))
    } else if kdf.version != Version::V0x13 as u32 {
        Some(format!("Argon2 version is {}, expected 19", kdf.version))
    } else if kdf.memory_kib > MAX_KDF_MEMORY_KIB {
        Some(format!(
            "kdf memory_kib {} is above the limit of {MAX_KDF_MEMORY_KIB}",
            kdf.memory_kib
        ))
    } else if kdf.iterations > MAX_KDF_ITERATIONS {
        Some(format!(
            "kdf iterations {} is above the limit of {MAX_KDF_ITERATIONS}",
            kdf.iterations
        ))
    } else if kdf.parallelism > MAX_KDF_PARALLELISM {
        Some(format!(
            "kdf parallelism {} is above the limit of {MAX_KDF_PARALLELISM}",
            kdf.parallelism
        ))
    } else {
        None
    };
    match problem {
        Some(reason) => Err(Error::InvalidConfig {
            location: location.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Runs Argon2id on the blocking pool, because at the default cost it keeps
/// a core busy for a large fraction of a second.
async fn derive_kek(passphrase: Passphrase, kdf: KdfConfig) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    run_blocking("derive the key-encryption key", move || {
        let argon2_error = |error: argon2::Error| Error::Crypto {
            action: "derive the key-encryption key with Argon2id",
            reason: error.to_string(),
        };
        let params = Params::new(
            kdf.memory_kib,
            kdf.iterations,
            kdf.parallelism,
            Some(KEY_LEN),
        )
        .map_err(argon2_error)?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut kek = Zeroizing::new([0u8; KEY_LEN]);
        argon2
            .hash_password_into(passphrase.as_bytes(), &kdf.salt, &mut kek[..])
            .map_err(argon2_error)?;
        Ok(kek)
    })
    .await
}

fn wrap_aad(repository_id: RepositoryId) -> Vec<u8> {
    let mut aad = WRAP_CONTEXT.to_vec();
    aad.extend_from_slice(repository_id.to_hex().as_bytes());
    aad
}

fn wrap_master_key(
    kek: &[u8; KEY_LEN],
    master: &MasterKey,
    repository_id: RepositoryId,
) -> Result<WrappedKey> {
    let crypto_error = |action| Error::Crypto {
        action,
        reason: "ring reported an error".to_owned(),
    };
    let cipher = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, kek)
            .map_err(|_| crypto_error("set up the key-encryption key"))?,
    );
    let nonce: [u8; NONCE_LEN] = random_bytes("generate a nonce")?;
    let mut ciphertext = master.0.to_vec();
    cipher
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(wrap_aad(repository_id)),
            &mut ciphertext,
        )
        .map_err(|_| crypto_error("wrap the master key"))?;
    Ok(WrappedKey {
        algorithm: "aes_256_gcm".to_owned(),
        nonce: nonce.to_vec(),
        ciphertext,
    })
}

/// Returns `None` when the tag check fails, which means a wrong KEK, or a
/// changed wrapped key or repository id.
fn unwrap_master_key(
    kek: &[u8; KEY_LEN],
    wrapped: &WrappedKey,
    repository_id: RepositoryId,
    location: &str,
) -> Option<MasterKey> {
    let nonce: [u8; NONCE_LEN] = wrapped.nonce.as_slice().try_into().ok()?;
    if wrapped.algorithm != "aes_256_gcm" {
        tracing::warn!(location, algorithm = %wrapped.algorithm, "unknown master key wrapping algorithm");
        return None;
    }
    let cipher = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek).ok()?);
    let mut buffer = Zeroizing::new(wrapped.ciphertext.clone());
    let plaintext = cipher
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(wrap_aad(repository_id)),
            &mut buffer[..],
        )
        .ok()?;
    let key: [u8; KEY_LEN] = (&*plaintext).try_into().ok()?;
    Some(MasterKey(Zeroizing::new(key)))
}

fn random_bytes<const N: usize>(action: &'static str) -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Crypto {
            action,
            reason: "the system random number generator failed".to_owned(),
        })?;
    Ok(bytes)
}

/// Reads the key file, or writes a new random key to it when it is missing.
async fn create_or_read_key_file(path: PathBuf) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let key = Zeroizing::new(random_bytes::<KEY_LEN>("generate a key file")?);
    let written = run_blocking("write the key file", {
        let path = path.clone();
        move || {
            let mut text = Zeroizing::new(hex::encode(key.as_slice()));
            text.push('\n');
            write_file_durably(&path, text.as_bytes(), PutMode::Create, 0o600).map_err(|error| {
                Error::InvalidKeyFile {
                    path: path.clone(),
                    reason: format!("failed to create it: {error}"),
                }
            })
        }
    })
    .await?;
    if written == crate::backend::PutOutcome::Written {
        tracing::info!(path = %path.display(), "created new repository key file");
    }
    // Read back in both cases, so that an existing file is used as it is.
    read_key_file(path).await
}

/// Reads a key file: exactly 32 raw bytes, or 64 hexadecimal characters with
/// optional surrounding whitespace.
async fn read_key_file(path: PathBuf) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let invalid = |path: &Path, reason: String| Error::InvalidKeyFile {
        path: path.to_owned(),
        reason,
    };
    let contents = Zeroizing::new(tokio::fs::read(&path).await.map_err(|error| {
        let reason = match error.kind() {
            ErrorKind::NotFound => "the file does not exist".to_owned(),
            _ => format!("failed to read it: {error}"),
        };
        invalid(&path, reason)
    })?);

    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if contents.len() == KEY_LEN {
        key.copy_from_slice(&contents);
        return Ok(key);
    }
    let text = contents.trim_ascii();
    if text.len() == KEY_LEN * 2 && hex::decode_to_slice(text, &mut key[..]).is_ok() {
        return Ok(key);
    }
    Err(invalid(
        &path,
        format!(
            "expected 32 raw bytes or 64 hexadecimal characters, found {} bytes",
            contents.len()
        ),
    ))
}

/// Cheap Argon2id costs so that tests run fast.
#[cfg(test)]
pub(crate) const TEST_KDF: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn key_file_is_created_with_hex_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo.key");

        let key = create_or_read_key_file(path.clone()).await.unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim_end(), hex::encode(&key[..]));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }

    #[tokio::test]
    async fn existing_key_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo.key");
        std::fs::write(&path, [7u8; 32]).unwrap();

        let key = create_or_read_key_file(path.clone()).await.unwrap();

        assert_eq!(*key, [7u8; 32]);
        assert_eq!(std::fs::read(&path).unwrap(), [7u8; 32]);
    }

    #[tokio::test]
    async fn key_file_formats_are_parsed() {
        let dir = tempfile::tempdir().unwrap();
        // File name, file contents, and the key expected from them (None
        // means the file is rejected).
        type Case = (&'static str, Vec<u8>, Option<[u8; 32]>);
        let cases: [Case; 5] = [
            ("raw", vec![9u8; 32], Some([9u8; 32])),
            (
                "hex",
                format!("  {}\n", "0a".repeat(32)).into_bytes(),
                Some([10u8; 32]),
            ),
            ("short", vec![1u8; 31], None),
            ("bad-hex", "zz".repeat(32).into_bytes(), None),
            ("empty", Vec::new(), None),
        ];

        for (name, contents, expected) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            let result = read_key_file(path).await;
            match expected {
                Some(key) => assert_eq!(*result.unwrap(), key, "{name}"),
                None => assert!(
                    matches!(result, Err(Error::InvalidKeyFile { .. })),
                    "{name}"
                ),
            }
        }
    }

    #[tokio::test]
    async fn missing_key_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.key");

        let error = read_key_file(path.clone()).await.unwrap_err();

        assert!(error.to_string().contains("does not exist"), "{error}");
        assert!(error.to_string().contains("absent.key"), "{error}");
    }

    #[tokio::test]
    async fn passphrase_unwraps_master_key() {
        let id = RepositoryId::generate();
        let options = EncryptionOptions::Passphrase {
            passphrase: "correct horse".into(),
            kdf: TEST_KDF,
        };
        let (master, config) = create_master_key(&options, id).await.unwrap().unwrap();

        let unlocked = unlock_master_key(
            Some(&config),
            &Credentials::Passphrase("correct horse".into()),
            id,
            "/repo",
        )
        .await
        .unwrap()
        .unwrap();

        assert_eq!(*unlocked.0, *master.0);
        assert_eq!(unlocked.data_key(), master.data_key());
        assert_ne!(*master.data_key(), master.digest_key());
    }

    #[tokio::test]
    async fn wrapped_key_is_bound_to_repository_id() {
        let id = RepositoryId::generate();
        let options = EncryptionOptions::Passphrase {
            passphrase: "pass".into(),
            kdf: TEST_KDF,
        };
        let (_, config) = create_master_key(&options, id).await.unwrap().unwrap();

        let result = unlock_master_key(
            Some(&config),
            &Credentials::Passphrase("pass".into()),
            RepositoryId::generate(),
            "/repo",
        )
        .await;

        assert!(matches!(result, Err(Error::WrongPassphrase { .. })));
    }

    #[tokio::test]
    async fn excessive_kdf_cost_is_rejected() {
        let id = RepositoryId::generate();
        let options = EncryptionOptions::Passphrase {
            passphrase: "pass".into(),
            kdf: TEST_KDF,
        };
        let (_, mut config) = create_master_key(&options, id).await.unwrap().unwrap();
        if let EncryptionConfig::Passphrase { kdf, .. } = &mut config {
            kdf.memory_kib = u32::MAX;
        }

        let result = unlock_master_key(
            Some(&config),
            &Credentials::Passphrase("pass".into()),
            id,
            "/repo",
        )
        .await;

        assert!(matches!(result, Err(Error::InvalidConfig { .. })));
    }

    #[test]
    fn passphrase_debug_is_hidden() {
        let text = format!("{:?}", Passphrase::new("secret words"));

        assert!(!text.contains("secret"), "{text}");
    }
}
