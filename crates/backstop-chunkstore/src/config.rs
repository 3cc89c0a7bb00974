//! The repository config object, `config.json`: format version, repository
//! id, default compression and the wrapped master key.
//!
//! The config is plain JSON so that an operator can read it. It is written
//! once, at creation, and never changed. Example of an encrypted repository:
//!
//! ```json
//! {
//!   "format_version": 1,
//!   "repository_id": "5f0c3b6e9a1d4c2b8e7f6a5d4c3b2a19",
//!   "created_at": "2025-01-31T12:00:00Z",
//!   "compression": "normal",
//!   "chunk_digest": "blake3_keyed",
//!   "encryption": {
//!     "key_source": "passphrase",
//!     "kdf": { "algorithm": "argon2id", "version": 19, "memory_kib": 65536,
//!              "iterations": 3, "parallelism": 4, "salt": "<32 hex>" },
//!     "wrapped_master_key": { "algorithm": "aes_256_gcm", "nonce": "<24 hex>",
//!                             "ciphertext": "<96 hex>" }
//!   }
//! }
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::codec::Compression;
use crate::error::{Error, Result};

/// Repository format version written by this build and the only one it opens.
pub const FORMAT_VERSION: u32 = 1;

/// Object key of the config.
pub(crate) const CONFIG_KEY: &str = "config.json";

/// Random 128-bit repository id, shown as 32 lowercase hexadecimal
/// characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RepositoryId([u8; 16]);

impl RepositoryId {
    pub(crate) fn generate() -> Self {
        Self(rand::random())
    }

    /// Returns the id as 32 lowercase hexadecimal characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for RepositoryId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_hex())
    }
}

impl fmt::Debug for RepositoryId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "RepositoryId({})", self.to_hex())
    }
}

impl Serialize for RepositoryId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for RepositoryId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(&text, &mut bytes).map_err(|_| {
            serde::de::Error::custom(format!(
                "repository_id {text:?} is not 32 hexadecimal characters"
            ))
        })?;
        Ok(Self(bytes))
    }
}

/// Name of the chunk digest function, recorded for readers of the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DigestAlgorithm {
    Blake3,
    Blake3Keyed,
}

/// Contents of `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepositoryConfig {
    pub format_version: u32,
    pub repository_id: RepositoryId,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub compression: Compression,
    pub chunk_digest: DigestAlgorithm,
    pub encryption: Option<EncryptionConfig>,
}

/// Wrapped master key, and the source of the key-encryption key that
/// unwraps it: a passphrase or a key file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "key_source", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum EncryptionConfig {
    Passphrase {
        kdf: KdfConfig,
        wrapped_master_key: WrappedKey,
    },
    KeyFile {
        wrapped_master_key: WrappedKey,
    },
}

/// Argon2id salt and cost parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KdfConfig {
    /// Always `argon2id`.
    pub algorithm: String,
    /// Argon2 version number, 19 (0x13).
    pub version: u32,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    #[serde(with = "hex::serde")]
    pub salt: Vec<u8>,
}

/// Master key encrypted with AES-256-GCM under the key-encryption key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WrappedKey {
    /// Always `aes_256_gcm`.
    pub algorithm: String,
    #[serde(with = "hex::serde")]
    pub nonce: Vec<u8>,
    /// The 32-byte master key followed by the 16-byte tag.
    #[serde(with = "hex::serde")]
    pub ciphertext: Vec<u8>,
}

impl RepositoryConfig {
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(self).expect("config serializes to JSON");
        json.push(b'\n');
        json
    }

    /// Parses `config.json`, checking the format version before the other
    /// fields so that a newer format gets a clear version error.
    pub(crate) fn from_json(data: &[u8], location: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidConfig {
            location: location.to_owned(),
            reason,
        };

        let value: serde_json::Value =
            serde_json::from_slice(data).map_err(|error| invalid(error.to_string()))?;
        let found = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| invalid("format_version is missing or not a number".to_owned()))?;
        if found != u64::from(FORMAT_VERSION) {
            return Err(Error::UnsupportedFormatVersion {
                location: location.to_owned(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            });
        }

        let config: RepositoryConfig =
            serde_json::from_value(value).map_err(|error| invalid(error.to_string()))?;
        let expected_digest = match config.encryption {
            Some(_) => DigestAlgorithm::Blake3Keyed,
            None => DigestAlgorithm::Blake3,
        };
        if config.chunk_digest != expected_digest {
            return Err(invalid(format!(
                "chunk_digest is {:?}, which does not match the encryption setting",
                config.chunk_digest
            )));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_config() -> RepositoryConfig {
        RepositoryConfig {
            format_version: FORMAT_VERSION,
            repository_id: RepositoryId::generate(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            compression: Compression::High,
            chunk_digest: DigestAlgorithm::Blake3,
            encryption: None,
        }
    }

    #[test]
    fn config_json_round_trip() {
        let config = plain_config();

        let parsed = RepositoryConfig::from_json(&config.to_json(), "/repo").unwrap();

        assert_eq!(parsed.repository_id, config.repository_id);
        assert_eq!(parsed.compression, Compression::High);
        assert_eq!(parsed.created_at, OffsetDateTime::UNIX_EPOCH);
        assert!(parsed.encryption.is_none());
    }

    #[test]
    fn newer_format_version_is_rejected() {
        let mut value: serde_json::Value =
            serde_json::from_slice(&plain_config().to_json()).unwrap();
        value["format_version"] = 2.into();
        value["new_field"] = "from a newer build".into();

        let error = RepositoryConfig::from_json(value.to_string().as_bytes(), "/repo").unwrap_err();

        assert!(
            matches!(
                error,
                Error::UnsupportedFormatVersion {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn malformed_config_is_invalid() {
        let cases: [&[u8]; 3] = [
            b"not json",
            b"{\"repository_id\": \"00\"}",
            b"{\"format_version\": 1, \"repository_id\": \"zz\"}",
        ];

        for case in cases {
            let error = RepositoryConfig::from_json(case, "/repo").unwrap_err();
            assert!(matches!(error, Error::InvalidConfig { .. }), "{error}");
            assert!(error.to_string().contains("/repo"), "{error}");
        }
    }

    #[test]
    fn digest_must_match_encryption() {
        let mut config = plain_config();
        config.chunk_digest = DigestAlgorithm::Blake3Keyed;

        let error = RepositoryConfig::from_json(&config.to_json(), "/repo").unwrap_err();

        assert!(matches!(error, Error::InvalidConfig { .. }), "{error}");
    }
}
