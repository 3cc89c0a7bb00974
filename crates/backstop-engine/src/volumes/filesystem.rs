//! Filesystem signatures at the start of a volume, named as `blkid` names
//! them. Only the magic numbers are checked, not the whole superblock.

use super::{u16_at, u32_at, Image};
use crate::error::Result;

/// The probe reads the first 4 KiB of a volume, plus 8 bytes for btrfs.
const PROBE_LEN: u64 = 4096;
const EXT_SUPERBLOCK: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;
const BTRFS_MAGIC_OFFSET: u64 = 0x1_0040;

/// Returns the type of the filesystem or volume format that starts at byte
/// `offset`, or `None` when no known signature is there.
pub(super) fn detect(image: &Image, offset: u64) -> Result<Option<&'static str>> {
    let Some(head) = image.read(offset, PROBE_LEN)? else {
        return Ok(None);
    };
    if let Some(kind) = boot_sector_type(&head) {
        return Ok(Some(kind));
    }
    if let Some(kind) = ext_type(&head) {
        return Ok(Some(kind));
    }
    let found = if head.starts_with(b"XFSB") {
        Some("xfs")
    } else if head.starts_with(b"LUKS\xba\xbe") {
        Some("crypto_LUKS")
    } else if &head[512..520] == b"LABELONE" {
        Some("LVM2_member")
    } else if matches!(&head[4086..4096], b"SWAPSPACE2" | b"SWAP-SPACE") {
        Some("swap")
    } else {
        None
    };
    if found.is_some() {
        return Ok(found);
    }

    let btrfs_magic = image.read(offset + BTRFS_MAGIC_OFFSET, 8)?;
    if btrfs_magic.as_deref() == Some(b"_BHRfS_M") {
        return Ok(Some("btrfs"));
    }
    Ok(None)
}

/// Returns the filesystem type of a FAT, NTFS or exFAT boot sector. These
/// end with 0x55AA like an MBR does, so `read_volumes` checks for them
/// before it parses an MBR.
pub(super) fn boot_sector_type(sector: &[u8]) -> Option<&'static str> {
    if sector.len() < 512 {
        return None;
    }
    match &sector[3..11] {
        b"NTFS    " => return Some("ntfs"),
        b"EXFAT   " => return Some("exfat"),
        _ => {}
    }
    let has_signature = sector[510..512] == [0x55, 0xAA];
    let fat16_label = matches!(&sector[54..62], b"FAT12   " | b"FAT16   " | b"FAT     ");
    let fat32_label = &sector[82..90] == b"FAT32   ";
    (has_signature && (fat16_label || fat32_label)).then_some("vfat")
}

/// Tells ext2, ext3 and ext4 apart by their feature flags, as `blkid` does:
/// ext4-only features make ext4, a journal without them makes ext3.
fn ext_type(head: &[u8]) -> Option<&'static str> {
    let superblock = &head[EXT_SUPERBLOCK..EXT_SUPERBLOCK + 1024];
    if u16_at(superblock, 0x38) != EXT_MAGIC {
        return None;
    }
    let compat = u32_at(superblock, 0x5C);
    let incompat = u32_at(superblock, 0x60);
    let ro_compat = u32_at(superblock, 0x64);

    const COMPAT_HAS_JOURNAL: u32 = 0x4;
    // extents, 64bit, flex_bg, inline_data, ...: everything above the
    // ext3 set of journal_dev, recover, meta_bg and filetype.
    const INCOMPAT_EXT3: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10;
    // sparse_super, large_file and btree_dir are the ext3 set.
    const RO_COMPAT_EXT3: u32 = 0x1 | 0x2 | 0x4;

    if incompat & !INCOMPAT_EXT3 != 0 || ro_compat & !RO_COMPAT_EXT3 != 0 {
        Some("ext4")
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        Some("ext3")
    } else {
        Some("ext2")
    }
}
