//! Backup manifests: the [`ManifestId`] newtype and the
//! [`DiskBackupManifest`] data type for disk image backups.
//!
//! The repository stores a manifest as opaque bytes, so other backup kinds
//! (file trees) can bring their own type. A disk manifest is JSON:
//!
//! ```json
//! {
//!   "format_version": 1,
//!   "backup_id": "backup-2025-01-31",
//!   "created_at": "2025-01-31T12:00:00Z",
//!   "uploaded_bytes": 1048576,
//!   "disks": [
//!     { "name": "vda", "size_bytes": 10485760, "chunk_size": 4194304,
//!       "entries": [["<64 hex digest>", 4194304], null, ["<64 hex digest>", 2097152]] }
//!   ]
//! }
//! ```
//!
//! Entry `i` of a disk covers bytes `[i * chunk_size, min((i + 1) *
//! chunk_size, size_bytes))`. `null` is a hole (all zero bytes, not stored)
//! and `[digest, len]` is a stored chunk. This array form keeps a manifest
//! near 80 bytes per entry before compression, which matters for disks with
//! hundreds of thousands of chunks.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::codec::MAX_CHUNK_LEN;
use crate::digest::ChunkDigest;
use crate::error::{Error, Result};

/// Disk manifest format version written by this build and the only one it
/// reads.
pub const DISK_MANIFEST_FORMAT_VERSION: u32 = 1;

/// Maximum manifest id length in bytes.
pub const MAX_MANIFEST_ID_LEN: usize = 200;

/// Validated manifest id, usually the backup id: 1 to 200 ASCII letters,
/// digits, `.`, `_` or `-`, not starting with `.`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ManifestId(String);

impl ManifestId {
    /// Validates `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("the id is empty")
        } else if id.len() > MAX_MANIFEST_ID_LEN {
            Some("the id is longer than 200 bytes")
        } else if id.starts_with('.') {
            Some("the id starts with '.'")
        } else if !id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
        {
            Some("only ASCII letters, digits, '.', '_' and '-' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidManifestId { id, reason }),
            None => Ok(Self(id)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ManifestId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl fmt::Debug for ManifestId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "ManifestId({:?})", self.0)
    }
}

/// One fixed-size range of a disk: a hole or a stored chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    from = "Option<(ChunkDigest, u32)>",
    into = "Option<(ChunkDigest, u32)>"
)]
pub enum ChunkEntry {
    /// All zero bytes, not stored.
    Hole,
    /// Stored chunk; `len` is the range length in bytes.
    Chunk { digest: ChunkDigest, len: u32 },
}

impl From<Option<(ChunkDigest, u32)>> for ChunkEntry {
    fn from(value: Option<(ChunkDigest, u32)>) -> Self {
        match value {
            Some((digest, len)) => ChunkEntry::Chunk { digest, len },
            None => ChunkEntry::Hole,
        }
    }
}

impl From<ChunkEntry> for Option<(ChunkDigest, u32)> {
    fn from(entry: ChunkEntry) -> Self {
        match entry {
            ChunkEntry::Hole => None,
            ChunkEntry::Chunk { digest, len } => Some((digest, len)),
        }
    }
}

/// An entry with the disk offset it covers, as returned by
/// [`DiskManifest::extents`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset of the range on the disk.
    pub offset: u64,
    /// Length of the range in bytes.
    pub len: u32,
    pub entry: ChunkEntry,
}

/// One disk of a backup, cut into `chunk_size` ranges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskManifest {
    /// Disk name, unique within the backup (for example `vda`).
    pub name: String,
    /// Disk size in bytes.
    pub size_bytes: u64,
    /// Range length in bytes. Only the last range may be shorter.
    pub chunk_size: u32,
    pub entries: Vec<ChunkEntry>,
}

impl DiskManifest {
    /// Creates a disk manifest without entries.
    pub fn new(name: impl Into<String>, size_bytes: u64, chunk_size: u32) -> Self {
        Self {
            name: name.into(),
            size_bytes,
            chunk_size,
            entries: Vec::new(),
        }
    }

    /// Returns how many entries a complete manifest of this disk has.
    pub fn expected_entry_count(&self) -> u64 {
        if self.chunk_size == 0 {
            return 0;
        }
        self.size_bytes.div_ceil(u64::from(self.chunk_size))
    }

    /// Returns the length of range `index`: `chunk_size`, or less for the
    /// last range.
    pub fn range_len(&self, index: u64) -> u32 {
        let offset = index * u64::from(self.chunk_size);
        let remaining = self.size_bytes.saturating_sub(offset);
        remaining.min(u64::from(self.chunk_size)) as u32
    }

    /// Iterates over the entries with their offsets, in disk order.
    pub fn extents(&self) -> impl Iterator<Item = Extent> + '_ {
        self.entries
            .iter()
            .enumerate()
            .map(|(index, entry)| Extent {
                offset: index as u64 * u64::from(self.chunk_size),
                len: self.range_len(index as u64),
                entry: *entry,
            })
    }

    /// Returns the extent that contains byte `offset`, or `None` past the
    /// end of the disk or of the entries.
    pub fn extent_at(&self, offset: u64) -> Option<Extent> {
        if self.chunk_size == 0 || offset >= self.size_bytes {
            return None;
        }
        let index = offset / u64::from(self.chunk_size);
        let entry = *self.entries.get(usize::try_from(index).ok()?)?;
        Some(Extent {
            offset: index * u64::from(self.chunk_size),
            len: self.range_len(index),
            entry,
        })
    }

    /// Returns the number of bytes in stored chunks, that is the disk size
    /// without holes.
    pub fn data_bytes(&self) -> u64 {
        self.extents()
            .filter(|extent| matches!(extent.entry, ChunkEntry::Chunk { .. }))
            .map(|extent| u64::from(extent.len))
            .sum()
    }

    fn validate(&self) -> Result<(), String> {
        let disk = &self.name;
        if disk.is_empty() {
            return Err("a disk has an empty name".to_owned());
        }
        if self.chunk_size == 0 || self.chunk_size as usize > MAX_CHUNK_LEN {
            return Err(format!(
                "disk {disk:?} has chunk_size {}, expected 1 to {MAX_CHUNK_LEN}",
                self.chunk_size
            ));
        }
        let expected = self.expected_entry_count();
        if self.entries.len() as u64 != expected {
            return Err(format!(
                "disk {disk:?} has {} entries, but {} bytes in chunks of {} need {expected}",
                self.entries.len(),
                self.size_bytes,
                self.chunk_size
            ));
        }
        for extent in self.extents() {
            if let ChunkEntry::Chunk { digest, len } = extent.entry {
                if len != extent.len {
                    return Err(format!(
                        "disk {disk:?}: chunk {digest} at offset {} has len {len}, expected {}",
                        extent.offset, extent.len
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Manifest of one disk backup: the chunk or hole for each range of each
/// disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskBackupManifest {
    pub format_version: u32,
    pub backup_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Stored bytes that this backup added to the repository: chunks it
    /// wrote that were not there before, after compression and encryption.
    pub uploaded_bytes: u64,
    pub disks: Vec<DiskManifest>,
}

impl DiskBackupManifest {
    /// Creates a manifest without disks.
    pub fn new(backup_id: impl Into<String>, created_at: OffsetDateTime) -> Self {
        Self {
            format_version: DISK_MANIFEST_FORMAT_VERSION,
            backup_id: backup_id.into(),
            created_at,
            uploaded_bytes: 0,
            disks: Vec::new(),
        }
    }

    /// Returns the id under which the repository stores this manifest.
    pub fn manifest_id(&self) -> Result<ManifestId> {
        ManifestId::new(self.backup_id.clone())
    }

    /// Returns the sum of the disk sizes in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.disks.iter().map(|disk| disk.size_bytes).sum()
    }

    /// Returns the sum of the disk sizes without holes, in bytes.
    pub fn data_bytes(&self) -> u64 {
        self.disks.iter().map(DiskManifest::data_bytes).sum()
    }

    /// Returns every chunk digest the manifest refers to, without duplicates.
    pub fn referenced_digests(&self) -> HashSet<ChunkDigest> {
        self.disks
            .iter()
            .flat_map(|disk| disk.entries.iter())
            .filter_map(|entry| match entry {
                ChunkEntry::Chunk { digest, .. } => Some(*digest),
                ChunkEntry::Hole => None,
            })
            .collect()
    }

    /// Checks the format version, the backup id, unique disk names and that
    /// each disk's entries cover exactly its size.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Error::InvalidManifest {
            backup_id: self.backup_id.clone(),
            reason,
        };
        if self.format_version != DISK_MANIFEST_FORMAT_VERSION {
            return Err(invalid(format!(
                "format_version is {}, but this build reads only version {DISK_MANIFEST_FORMAT_VERSION}",
                self.format_version
            )));
        }
        self.manifest_id()?;

        let mut names = HashSet::new();
        for disk in &self.disks {
            disk.validate().map_err(invalid)?;
            if !names.insert(disk.name.as_str()) {
                return Err(invalid(format!("disk name {:?} appears twice", disk.name)));
            }
        }
        Ok(())
    }

    /// Validates the manifest and serializes it as JSON.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        self.validate()?;
        Ok(serde_json::to_vec(self).expect("manifest serializes to JSON"))
    }

    /// Parses and validates JSON written by [`to_json`](Self::to_json).
    pub fn from_json(data: &[u8]) -> Result<Self> {
        let manifest: Self =
            serde_json::from_slice(data).map_err(|error| Error::InvalidManifest {
                backup_id: String::new(),
                reason: format!("not a valid disk manifest: {error}"),
            })?;
        manifest.validate()?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u32 = 4096;

    fn digest(byte: u8) -> ChunkDigest {
        ChunkDigest::from_bytes([byte; 32])
    }

    /// Disk of 10000 bytes: a chunk, a hole and a 1808-byte tail chunk.
    fn sample_disk() -> DiskManifest {
        let mut disk = DiskManifest::new("vda", 10_000, CHUNK);
        disk.entries = vec![
            ChunkEntry::Chunk {
                digest: digest(1),
                len: CHUNK,
            },
            ChunkEntry::Hole,
            ChunkEntry::Chunk {
                digest: digest(2),
                len: 10_000 - 2 * CHUNK,
            },
        ];
        disk
    }

    fn sample_manifest() -> DiskBackupManifest {
        let mut manifest = DiskBackupManifest::new("backup-1", OffsetDateTime::UNIX_EPOCH);
        manifest.disks.push(sample_disk());
        manifest
    }

    #[test]
    fn extents_walk_disk_offsets() {
        let extents: Vec<Extent> = sample_disk().extents().collect();

        let offsets: Vec<u64> = extents.iter().map(|extent| extent.offset).collect();
        let lens: Vec<u32> = extents.iter().map(|extent| extent.len).collect();
        assert_eq!(offsets, [0, 4096, 8192]);
        assert_eq!(lens, [4096, 4096, 1808]);
        assert_eq!(extents[1].entry, ChunkEntry::Hole);
    }

    #[test]
    fn extent_at_finds_containing_range() {
        let disk = sample_disk();

        assert_eq!(disk.extent_at(0).unwrap().offset, 0);
        assert_eq!(disk.extent_at(4095).unwrap().offset, 0);
        assert_eq!(disk.extent_at(4096).unwrap().entry, ChunkEntry::Hole);
        assert_eq!(disk.extent_at(9_999).unwrap().len, 1808);
        assert_eq!(disk.extent_at(10_000), None);
    }

    #[test]
    fn sizes_count_data_without_holes() {
        let manifest = sample_manifest();

        assert_eq!(manifest.size_bytes(), 10_000);
        assert_eq!(manifest.data_bytes(), 4096 + 1808);
        assert_eq!(
            manifest.referenced_digests(),
            HashSet::from([digest(1), digest(2)])
        );
    }

    #[test]
    fn manifest_json_round_trip() {
        let manifest = sample_manifest();

        let json = manifest.to_json().unwrap();
        let text = String::from_utf8(json.clone()).unwrap();

        assert!(
            text.contains(&format!("[\"{}\",4096],null", digest(1))),
            "{text}"
        );
        assert_eq!(DiskBackupManifest::from_json(&json).unwrap(), manifest);
    }

    #[test]
    fn wrong_entry_count_is_invalid() {
        let mut manifest = sample_manifest();
        manifest.disks[0].entries.pop();

        let error = manifest.to_json().unwrap_err();

        assert!(matches!(error, Error::InvalidManifest { .. }), "{error}");
        assert!(error.to_string().contains("need 3"), "{error}");
    }

    #[test]
    fn wrong_chunk_len_is_invalid() {
        let mut manifest = sample_manifest();
        manifest.disks[0].entries[2] = ChunkEntry::Chunk {
            digest: digest(2),
            len: CHUNK,
        };

        let error = manifest.validate().unwrap_err();

        assert!(error.to_string().contains("offset 8192"), "{error}");
    }

    #[test]
    fn duplicate_disk_name_is_invalid() {
        let mut manifest = sample_manifest();
        manifest.disks.push(sample_disk());

        let error = manifest.validate().unwrap_err();

        assert!(error.to_string().contains("appears twice"), "{error}");
    }

    #[test]
    fn zero_chunk_size_is_invalid() {
        let mut manifest = sample_manifest();
        manifest.disks[0] = DiskManifest::new("vdb", 0, 0);

        assert!(manifest.validate().is_err());
    }

    #[test]
    fn empty_disk_is_valid() {
        let mut manifest = sample_manifest();
        manifest.disks.push(DiskManifest::new("vdb", 0, CHUNK));

        manifest.validate().unwrap();
        assert_eq!(manifest.disks[1].extents().count(), 0);
    }

    #[test]
    fn newer_manifest_version_is_rejected() {
        let mut manifest = sample_manifest();
        manifest.format_version = 2;

        let error = manifest.validate().unwrap_err();

        assert!(error.to_string().contains("format_version is 2"), "{error}");
    }

    #[test]
    fn manifest_id_rejects_unsafe_names() {
        let long_id = "a".repeat(MAX_MANIFEST_ID_LEN + 1);
        for id in ["", ".hidden", "a/b", "../x", "with space", long_id.as_str()] {
            assert!(ManifestId::new(id).is_err(), "accepted {id:?}");
        }
        assert_eq!(
            ManifestId::new("backup-1.2_x").unwrap().as_str(),
            "backup-1.2_x"
        );
    }
}
