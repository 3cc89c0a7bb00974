//! GPT partition tables (UEFI specification 2.10, section 5.3).
//!
//! The primary header is at LBA 1 and the backup header at the disk's last
//! LBA. Both carry a CRC32 of themselves and of the partition entry array.
//! Each entry contains a type GUID, a unique GUID, the first and last LBA
//! (inclusive), attribute bits and a 36-character UTF-16LE name.

use super::{filesystem, u16_at, u32_at, u64_at, Image, PartitionType, Volume};
use crate::error::Result;

const SIGNATURE: &[u8; 8] = b"EFI PART";
const MIN_HEADER_LEN: u32 = 92;
const MIN_ENTRY_LEN: u32 = 128;
/// Upper bound on the entry array. Tools write 16 KiB (128 entries of 128
/// bytes), so a larger value means a damaged header.
const MAX_ENTRY_ARRAY_LEN: u64 = 1 << 20;
const EFI_SYSTEM_GUID: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// Attribute bit 2: legacy BIOS bootable.
const LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;

/// The header fields the entry array needs.
struct Header {
    entries_lba: u64,
    entry_count: u32,
    entry_len: u32,
    entries_crc32: u32,
}

/// Reads the GPT from the primary or backup header, trying 512- and
/// 4096-byte logical blocks. Returns `None` when no header exists and the
/// MBR is not protective.
pub(super) fn read_volumes(image: &Image, protective_mbr: bool) -> Result<Option<Vec<Volume>>> {
    let mut problems = Vec::new();
    for block_size in [512u64, 4096] {
        let last_lba = (image.size / block_size).saturating_sub(1);
        for (copy, lba) in [("primary", 1), ("backup", last_lba)] {
            if lba == 0 {
                continue;
            }
            let Some(block) = image.read(lba * block_size, block_size)? else {
                continue;
            };
            if &block[..8] != SIGNATURE {
                continue;
            }
            let parsed = match parse_header(&block, lba) {
                Ok(header) => read_entries(image, &header, block_size)?,
                Err(reason) => Err(reason),
            };
            match parsed {
                Ok(volumes) => return Ok(Some(volumes)),
                Err(reason) => problems.push(format!(
                    "{copy} GPT header at LBA {lba} ({block_size}-byte blocks): {reason}"
                )),
            }
        }
    }

    if problems.is_empty() {
        if !protective_mbr {
            return Ok(None);
        }
        problems.push("the MBR is a GPT protective MBR, but no GPT header was found".to_owned());
    }
    Err(image.invalid(format!(
        "{}; repair the table with `sgdisk` or `gdisk`, or restore the disk from a backup",
        problems.join("; ")
    )))
}

fn parse_header(block: &[u8], lba: u64) -> Result<Header, String> {
    let header_len = u32_at(block, 12);
    if header_len < MIN_HEADER_LEN || header_len as usize > block.len() {
        return Err(format!("invalid header size {header_len}"));
    }
    let mut header = block[..header_len as usize].to_vec();
    let stored_crc = u32_at(&header, 16);
    header[16..20].fill(0);
    let computed_crc = crc32fast::hash(&header);
    if stored_crc != computed_crc {
        return Err(format!(
            "header CRC32 is {stored_crc:#010x}, computed {computed_crc:#010x}"
        ));
    }
    let my_lba = u64_at(&header, 24);
    if my_lba != lba {
        return Err(format!("header claims to be at LBA {my_lba}"));
    }

    let entry_len = u32_at(&header, 84);
    if entry_len < MIN_ENTRY_LEN || !entry_len.is_multiple_of(8) {
        return Err(format!("invalid partition entry size {entry_len}"));
    }
    Ok(Header {
        entries_lba: u64_at(&header, 72),
        entry_count: u32_at(&header, 80),
        entry_len,
        entries_crc32: u32_at(&header, 88),
    })
}

fn read_entries(
    image: &Image,
    header: &Header,
    block_size: u64,
) -> Result<Result<Vec<Volume>, String>> {
    let array_len = u64::from(header.entry_count) * u64::from(header.entry_len);
    if array_len > MAX_ENTRY_ARRAY_LEN {
        return Ok(Err(format!(
            "partition entry array of {array_len} bytes is larger than {MAX_ENTRY_ARRAY_LEN}"
        )));
    }
    let Some(array_offset) = header.entries_lba.checked_mul(block_size) else {
        return Ok(Err(format!(
            "entry array LBA {} is out of range",
            header.entries_lba
        )));
    };
    let Some(array) = image.read(array_offset, array_len)? else {
        return Ok(Err(format!(
            "partition entry array at LBA {} extends past the end of the disk",
            header.entries_lba
        )));
    };
    let computed_crc = crc32fast::hash(&array);
    if computed_crc != header.entries_crc32 {
        return Ok(Err(format!(
            "partition entry array CRC32 is {:#010x}, computed {computed_crc:#010x}",
            header.entries_crc32
        )));
    }

    let mut volumes = Vec::new();
    for (index, raw) in array.chunks_exact(header.entry_len as usize).enumerate() {
        let type_guid = format_guid(&raw[..16]);
        if raw[..16].iter().all(|&byte| byte == 0) {
            continue;
        }
        let number = index as u32 + 1;
        let first_lba = u64_at(raw, 32);
        let last_lba = u64_at(raw, 40);
        let attributes = u64_at(raw, 48);
        let end_offset = last_lba
            .checked_add(1)
            .and_then(|end| end.checked_mul(block_size));
        let end_offset = match end_offset {
            Some(end) if first_lba <= last_lba && end <= image.size => end,
            _ => {
                return Ok(Err(format!(
                "partition {number} spans LBA {first_lba} to {last_lba}, outside the {}-byte disk",
                image.size
            )))
            }
        };
        let offset_bytes = first_lba * block_size;
        let name = decode_name(&raw[56..128]);
        let bootable = type_guid == EFI_SYSTEM_GUID || attributes & LEGACY_BIOS_BOOTABLE != 0;
        volumes.push(Volume {
            name: if name.is_empty() {
                format!("partition {number}")
            } else {
                name
            },
            number: Some(number),
            offset_bytes,
            size_bytes: end_offset - offset_bytes,
            bootable,
            partition_type: PartitionType::Gpt { type_guid },
            filesystem: filesystem::detect(image, offset_bytes)?,
        });
    }
    Ok(Ok(volumes))
}

/// Formats a GUID stored in the GPT's mixed-endian layout: the first three
/// fields little-endian, the last eight bytes as they are.
fn format_guid(bytes: &[u8]) -> String {
    let tail: String = bytes[10..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{tail}",
        u32_at(bytes, 0),
        u16_at(bytes, 4),
        u16_at(bytes, 6),
        bytes[8],
        bytes[9]
    )
}

/// Decodes the UTF-16LE name, which ends at the first NUL.
fn decode_name(raw: &[u8]) -> String {
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// Returns the common name of a well-known GPT partition type GUID.
pub(super) fn describe_type(type_guid: &str) -> Option<&'static str> {
    let name = match type_guid {
        EFI_SYSTEM_GUID => "EFI System",
        "21686148-6449-6e6f-744e-656564454649" => "BIOS boot",
        "0fc63daf-8483-4772-8e79-3d69d8477de4" => "Linux filesystem",
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709" => "Linux root (x86-64)",
        "bc13c2ff-59e6-4262-a352-b275fd6f7172" => "Linux extended boot",
        "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" => "Linux swap",
        "e6d6d379-f507-44c2-a23c-238f2a3df928" => "Linux LVM",
        "a19d880f-05fc-4d3b-a006-743f0f84911e" => "Linux RAID",
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7" => "Microsoft basic data",
        "e3c9e316-0b5c-4db8-817d-f92df00215ae" => "Microsoft reserved",
        "de94bba4-06d1-4d40-a16a-bfd50179d6ac" => "Windows recovery environment",
        _ => return None,
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_is_formatted_mixed_endian() {
        // The EFI system partition type as it is stored on disk.
        let stored = [
            0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
            0xC9, 0x3B,
        ];

        assert_eq!(format_guid(&stored), EFI_SYSTEM_GUID);
    }

    #[test]
    fn name_ends_at_first_nul() {
        let mut raw = [0u8; 72];
        for (index, unit) in "Données".encode_utf16().enumerate() {
            raw[index * 2..index * 2 + 2].copy_from_slice(&unit.to_le_bytes());
        }
        raw[20] = b'x';

        assert_eq!(decode_name(&raw), "Données");
    }
}
