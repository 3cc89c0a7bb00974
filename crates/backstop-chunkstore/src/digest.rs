//! Chunk names: the [`ChunkDigest`] newtype and the [`ChunkHasher`] that
//! computes it.
//!
//! An unencrypted repository names a chunk by the plain BLAKE3 hash of its
//! content. An encrypted repository uses keyed BLAKE3 with a key derived from
//! the master key, so that someone who can list the storage cannot tell
//! whether it contains a chunk they know the content of.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// Length of a chunk digest in bytes.
pub const DIGEST_LEN: usize = 32;

/// 32-byte BLAKE3 digest of a chunk's uncompressed content, shown and
/// serialized as 64 lowercase hexadecimal characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkDigest([u8; DIGEST_LEN]);

impl ChunkDigest {
    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; DIGEST_LEN]) -> Self {
        Self(bytes)
    }

    /// Returns the raw digest bytes.
    pub const fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }

    /// Returns the digest as 64 lowercase hexadecimal characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 lowercase hexadecimal characters.
    ///
    /// Uppercase is rejected so that one digest has exactly one object key.
    pub fn from_hex(value: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidDigest {
            value: value.to_owned(),
        };
        let is_lower_hex = value
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if value.len() != DIGEST_LEN * 2 || !is_lower_hex {
            return Err(invalid());
        }

        let mut bytes = [0u8; DIGEST_LEN];
        hex::decode_to_slice(value, &mut bytes).map_err(|_| invalid())?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for ChunkDigest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "ChunkDigest({})", self.to_hex())
    }
}

impl FromStr for ChunkDigest {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self, Error> {
        Self::from_hex(value)
    }
}

impl Serialize for ChunkDigest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkDigest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// Computes chunk digests for one repository: plain BLAKE3, or keyed BLAKE3
/// for an encrypted repository.
///
/// The hasher carries no secret that could decrypt data: its key is derived
/// from the master key with a one-way function, so a backup agent can be given
/// a hasher to name chunks locally.
#[derive(Clone)]
pub struct ChunkHasher {
    key: Option<[u8; DIGEST_LEN]>,
}

impl ChunkHasher {
    /// Hasher for an unencrypted repository: plain BLAKE3.
    pub const fn plain() -> Self {
        Self { key: None }
    }

    /// Hasher for an encrypted repository: keyed BLAKE3 with `key`.
    pub const fn keyed(key: [u8; DIGEST_LEN]) -> Self {
        Self { key: Some(key) }
    }

    /// Returns true when digests are keyed.
    pub const fn is_keyed(&self) -> bool {
        self.key.is_some()
    }

    /// Computes the digest of `data`.
    pub fn digest(&self, data: &[u8]) -> ChunkDigest {
        let hash = match &self.key {
            Some(key) => blake3::keyed_hash(key, data),
            None => blake3::hash(data),
        };
        ChunkDigest(*hash.as_bytes())
    }
}

impl fmt::Debug for ChunkHasher {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is left out so it never reaches a log.
        formatter
            .debug_struct("ChunkHasher")
            .field("keyed", &self.is_keyed())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_round_trip() {
        let digest = ChunkHasher::plain().digest(b"hello");
        let text = digest.to_string();

        assert_eq!(text.len(), 64);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(ChunkDigest::from_hex(&text).unwrap(), digest);
    }

    #[test]
    fn plain_digest_is_blake3() {
        let digest = ChunkHasher::plain().digest(b"hello");

        assert_eq!(digest.as_bytes(), blake3::hash(b"hello").as_bytes());
    }

    #[test]
    fn keyed_digest_differs_from_plain() {
        let plain = ChunkHasher::plain().digest(b"hello");
        let keyed = ChunkHasher::keyed([7u8; 32]).digest(b"hello");
        let other_key = ChunkHasher::keyed([8u8; 32]).digest(b"hello");

        assert_ne!(plain, keyed);
        assert_ne!(keyed, other_key);
    }

    #[test]
    fn digest_parse_rejects_bad_text() {
        let valid = "ab".repeat(32);
        let cases = [
            String::new(),
            "ab".repeat(31),
            "ab".repeat(33),
            "AB".repeat(32),
            format!("{}zz", &valid[..62]),
            format!("{}é", &valid[..62]),
        ];

        for case in cases {
            let result = ChunkDigest::from_hex(&case);
            assert!(
                matches!(result, Err(Error::InvalidDigest { .. })),
                "accepted {case:?}"
            );
        }
    }

    #[test]
    fn digest_serializes_as_hex_string() {
        let digest = ChunkDigest::from_bytes([0xab; 32]);
        let json = serde_json::to_string(&digest).unwrap();

        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<ChunkDigest>(&json).unwrap(), digest);
    }
}
