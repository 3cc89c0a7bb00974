//! Partition tables: [`read_volumes`] lists the volumes of a disk image or
//! block device from its GPT or MBR partition table, or returns the whole
//! disk as one volume when there is no table.
//!
//! The formats are parsed here (modules `gpt` and `mbr`), following the UEFI
//! specification 2.10, chapter 5 for GPT and the classic IBM PC layout for
//! MBR. Filesystem signatures are checked in module `filesystem`.

mod filesystem;
mod gpt;
mod mbr;

use std::path::Path;

use crate::device::DiskFile;
use crate::error::{Error, Result};

/// One volume of a disk: a partition, or the whole disk when it has no
/// partition table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// GPT partition name, `partition N` for an MBR partition or an unnamed
    /// GPT partition, and for a whole disk its filesystem type (for example
    /// `ext4`) or `disk`.
    pub name: String,
    /// Partition number as Linux numbers them: the GPT entry index plus one,
    /// 1 to 4 for MBR primary partitions and 5 on for logical ones. `None`
    /// for a whole disk.
    pub number: Option<u32>,
    /// Byte offset of the volume on the disk.
    pub offset_bytes: u64,
    pub size_bytes: u64,
    /// MBR active flag, MBR type 0xEF, GPT legacy-BIOS-bootable attribute or
    /// GPT EFI system partition type.
    pub bootable: bool,
    pub partition_type: PartitionType,
    /// Filesystem or volume format found at the volume's start, named as
    /// `blkid` names it (`ext4`, `xfs`, `vfat`, `swap`, ...), or `None`.
    pub filesystem: Option<&'static str>,
}

/// Partition type of a [`Volume`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionType {
    /// GPT partition type GUID in lowercase canonical form, for example
    /// `c12a7328-f81f-11d2-ba4b-00a0c93ec93b` for an EFI system partition.
    Gpt { type_guid: String },
    /// MBR partition type byte, for example 0x83 for Linux.
    Mbr { type_code: u8 },
    /// No partition table: the volume is the whole disk.
    WholeDisk,
}

impl PartitionType {
    /// Returns the common name of a well-known partition type, such as
    /// "EFI System" or "Linux filesystem".
    pub fn description(&self) -> Option<&'static str> {
        match self {
            PartitionType::Gpt { type_guid } => gpt::describe_type(type_guid),
            PartitionType::Mbr { type_code } => mbr::describe_type(*type_code),
            PartitionType::WholeDisk => None,
        }
    }
}

/// Reads the partition table of the disk image or block device at `path`.
///
/// GPT is tried first, with 512- and 4096-byte logical blocks, from the
/// primary header and then from the backup header at the disk's end. Then
/// MBR, with extended partitions. A disk without either is one volume.
/// A damaged table that is clearly present, such as a protective MBR
/// without any valid GPT header, is [`Error::InvalidPartitionTable`].
///
/// This function blocks. Async callers run it with `spawn_blocking`.
pub fn read_volumes(path: &Path) -> Result<Vec<Volume>> {
    let disk = DiskFile::open_source(path)?;
    let size = disk.size()?;
    let image = Image { disk, size };

    let first_sector = image.read(0, mbr::SECTOR_SIZE)?;
    let mbr_entries = first_sector.as_deref().and_then(mbr::parse_table);
    let protective = mbr_entries.as_deref().is_some_and(mbr::is_protective);

    if let Some(volumes) = gpt::read_volumes(&image, protective)? {
        return Ok(volumes);
    }
    let boot_sector_filesystem = first_sector
        .as_deref()
        .and_then(filesystem::boot_sector_type);
    if let (Some(entries), None) = (mbr_entries, boot_sector_filesystem) {
        return mbr::read_volumes(&image, &entries);
    }

    let filesystem = filesystem::detect(&image, 0)?;
    Ok(vec![Volume {
        name: filesystem.unwrap_or("disk").to_owned(),
        number: None,
        offset_bytes: 0,
        size_bytes: size,
        bootable: false,
        partition_type: PartitionType::WholeDisk,
        filesystem,
    }])
}

/// A disk opened for reading partition tables.
struct Image {
    disk: DiskFile,
    size: u64,
}

impl Image {
    /// Reads `len` bytes at `offset`, or returns `None` when the range
    /// extends past the end of the disk.
    fn read(&self, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let end = offset.checked_add(len);
        if end.is_none_or(|end| end > self.size) {
            return Ok(None);
        }
        let mut buffer = vec![0u8; len as usize];
        self.disk.read_range(offset, &mut buffer)?;
        Ok(Some(buffer))
    }

    fn invalid(&self, reason: String) -> Error {
        Error::InvalidPartitionTable {
            path: self.disk.path.clone(),
            reason,
        }
    }
}

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(bytes[offset..offset + 2].try_into().expect("2 bytes"))
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}
