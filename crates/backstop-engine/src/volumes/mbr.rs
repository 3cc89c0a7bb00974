//! MBR partition tables: the four primary entries at byte 446 of the first
//! sector, and the chain of extended boot records (EBRs) that contains logical
//! partitions.
//!
//! Each 16-byte entry has a status byte (0x80 active, 0x00 inactive), a CHS
//! start, a type byte at +4, a CHS end, and the start LBA and sector count as
//! little-endian u32 at +8 and +12. The sector ends with 0x55 0xAA.

use std::collections::HashSet;

use super::{filesystem, u32_at, Image, PartitionType, Volume};
use crate::error::Result;

/// MBR addresses are in 512-byte sectors.
///
/// NOTE: disks with 4096-byte logical sectors that use MBR count LBAs in
/// 4096-byte units. They are rare and are read wrongly here.
pub(super) const SECTOR_SIZE: u64 = 512;

const TABLE_OFFSET: usize = 446;
const ENTRY_LEN: usize = 16;
const PROTECTIVE_TYPE: u8 = 0xEE;
const EFI_SYSTEM_TYPE: u8 = 0xEF;
const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0F, 0x85];
/// Upper bound on the EBR chain, far above what partitioning tools create.
const MAX_LOGICAL_PARTITIONS: u32 = 256;

/// A used entry of a partition table sector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// Position in the table, 0 to 3.
    slot: u32,
    active: bool,
    type_code: u8,
    start_lba: u32,
    sectors: u32,
}

/// Parses the partition table of a first sector. Returns `None` when the
/// sector is not an MBR: no 0x55AA signature, a status byte other than 0x00
/// or 0x80, or a used entry that starts at sector 0 or has no sectors.
pub(super) fn parse_table(sector: &[u8]) -> Option<Vec<Entry>> {
    let entries = parse_entries(sector)?;
    let valid = entries
        .iter()
        .all(|entry| entry.start_lba > 0 && entry.sectors > 0);
    valid.then_some(entries)
}

/// Parses the used entries of an MBR or EBR sector, checking only the
/// signature and status bytes.
fn parse_entries(sector: &[u8]) -> Option<Vec<Entry>> {
    if sector.len() < 512 || sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    let mut entries = Vec::new();
    for slot in 0..4 {
        let raw = &sector[TABLE_OFFSET + slot * ENTRY_LEN..][..ENTRY_LEN];
        let status = raw[0];
        if status != 0x00 && status != 0x80 {
            return None;
        }
        let type_code = raw[4];
        if type_code == 0 {
            continue;
        }
        entries.push(Entry {
            slot: slot as u32,
            active: status == 0x80,
            type_code,
            start_lba: u32_at(raw, 8),
            sectors: u32_at(raw, 12),
        });
    }
    Some(entries)
}

/// Returns true for the protective MBR that guards a GPT disk.
pub(super) fn is_protective(entries: &[Entry]) -> bool {
    entries
        .iter()
        .any(|entry| entry.type_code == PROTECTIVE_TYPE)
}

/// Lists the primary and logical partitions. Extended partitions are
/// containers and are not listed themselves.
pub(super) fn read_volumes(image: &Image, entries: &[Entry]) -> Result<Vec<Volume>> {
    let mut volumes = Vec::new();
    for entry in entries {
        let start = u64::from(entry.start_lba);
        if EXTENDED_TYPES.contains(&entry.type_code) {
            read_logical_volumes(image, start, &mut volumes)?;
            continue;
        }
        volumes.push(volume(image, entry.slot + 1, start, entry)?);
    }
    Ok(volumes)
}

/// Walks the EBR chain of the extended partition at `extended_start` (in
/// sectors). Each EBR's first entry is a logical partition relative to the
/// EBR itself, and its second entry points to the next EBR relative to the
/// extended partition's start.
fn read_logical_volumes(
    image: &Image,
    extended_start: u64,
    volumes: &mut Vec<Volume>,
) -> Result<()> {
    let mut ebr_lba = extended_start;
    let mut visited = HashSet::new();
    for number in 5..5 + MAX_LOGICAL_PARTITIONS {
        if !visited.insert(ebr_lba) {
            return Err(image.invalid(format!(
                "the extended partition's EBR chain loops back to sector {ebr_lba}"
            )));
        }
        let sector = image.read(ebr_lba * SECTOR_SIZE, SECTOR_SIZE)?;
        let Some(entries) = sector.as_deref().and_then(parse_entries) else {
            return Err(image.invalid(format!(
                "the extended boot record at sector {ebr_lba} is missing or has no 0x55AA signature"
            )));
        };

        if let Some(logical) = entries.iter().find(|entry| entry.slot == 0) {
            if logical.sectors > 0 {
                let start = ebr_lba + u64::from(logical.start_lba);
                volumes.push(volume(image, number, start, logical)?);
            }
        }
        let next = entries
            .iter()
            .find(|entry| entry.slot == 1 && EXTENDED_TYPES.contains(&entry.type_code));
        match next {
            Some(next) if next.start_lba > 0 => {
                ebr_lba = extended_start + u64::from(next.start_lba);
            }
            _ => return Ok(()),
        }
    }
    Err(image.invalid(format!(
        "the extended partition has more than {MAX_LOGICAL_PARTITIONS} logical partitions"
    )))
}

fn volume(image: &Image, number: u32, start_lba: u64, entry: &Entry) -> Result<Volume> {
    let offset_bytes = start_lba * SECTOR_SIZE;
    let size_bytes = u64::from(entry.sectors) * SECTOR_SIZE;
    if offset_bytes + size_bytes > image.size {
        return Err(image.invalid(format!(
            "MBR partition {number} ends at byte {}, past the end of the {}-byte disk",
            offset_bytes + size_bytes,
            image.size
        )));
    }
    Ok(Volume {
        name: format!("partition {number}"),
        number: Some(number),
        offset_bytes,
        size_bytes,
        bootable: entry.active || entry.type_code == EFI_SYSTEM_TYPE,
        partition_type: PartitionType::Mbr {
            type_code: entry.type_code,
        },
        filesystem: filesystem::detect(image, offset_bytes)?,
    })
}

/// Returns the common name of an MBR partition type byte.
pub(super) fn describe_type(type_code: u8) -> Option<&'static str> {
    let name = match type_code {
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0E => "FAT16",
        0x05 | 0x0F | 0x85 => "Extended",
        0x07 => "HPFS/NTFS/exFAT",
        0x0B | 0x0C => "FAT32",
        0x27 => "Windows recovery",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8E => "Linux LVM",
        0xA5 => "FreeBSD",
        0xEE => "GPT protective",
        0xEF => "EFI System",
        0xFD => "Linux RAID autodetect",
        _ => return None,
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DiskFile;
    use crate::error::Error;

    fn write_entry(sector: &mut [u8], slot: usize, type_code: u8, start_lba: u32, sectors: u32) {
        let entry = &mut sector[TABLE_OFFSET + slot * ENTRY_LEN..][..ENTRY_LEN];
        entry[4] = type_code;
        entry[8..12].copy_from_slice(&start_lba.to_le_bytes());
        entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    }

    #[test]
    fn looping_ebr_chain_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loop.raw");
        let mut bytes = vec![0u8; 64 * 512];
        // An extended partition from sector 8. Its first EBR points to a
        // second EBR at sector 16, which points to itself.
        bytes[510..512].copy_from_slice(&[0x55, 0xAA]);
        write_entry(&mut bytes, 0, 0x05, 8, 48);
        for (ebr_lba, logical_start) in [(8usize, 1u32), (16, 1)] {
            let ebr = &mut bytes[ebr_lba * 512..(ebr_lba + 1) * 512];
            ebr[510..512].copy_from_slice(&[0x55, 0xAA]);
            write_entry(ebr, 0, 0x83, logical_start, 4);
            write_entry(ebr, 1, 0x05, 8, 8);
        }
        std::fs::write(&path, &bytes).unwrap();
        let disk = DiskFile::open_source(&path).unwrap();
        let size = disk.size().unwrap();
        let image = Image { disk, size };
        let entries = parse_table(&bytes[..512]).unwrap();

        let error = read_volumes(&image, &entries).unwrap_err();

        assert!(
            matches!(error, Error::InvalidPartitionTable { .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("loops back to sector 16"),
            "{error}"
        );
    }
}
