//! `read_volumes` on images partitioned with `sfdisk` and formatted with
//! `mkfs.ext*`, checked against the layout `sfdisk --json` reports.

mod common;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use backstop_engine::{read_volumes, Error, PartitionType};
use common::*;

const EFI_SYSTEM: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
const LINUX_SWAP: &str = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f";
const LINUX_FILESYSTEM: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

/// Creates a zero-filled image of `size` bytes and partitions it with an
/// `sfdisk` script.
fn partition_image(image: &Path, size: u64, script: &str) {
    std::fs::File::create(image).unwrap().set_len(size).unwrap();
    let sfdisk = require_tool("sfdisk", "fdisk");
    let mut child = Command::new(sfdisk)
        .arg("-q")
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "sfdisk failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Partition (start, size) pairs in bytes as `sfdisk --json` lists them,
/// without extended partitions.
fn sfdisk_layout(image: &Path) -> Vec<(u64, u64)> {
    let sfdisk = require_tool("sfdisk", "fdisk");
    let json = run(Command::new(sfdisk).arg("--json").arg(image));
    let table: serde_json::Value = serde_json::from_str(&json).unwrap();
    let sector_size = table["partitiontable"]["sectorsize"]
        .as_u64()
        .unwrap_or(512);
    table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|partition| partition["type"].as_str() != Some("5"))
        .map(|partition| {
            let start = partition["start"].as_u64().unwrap();
            let size = partition["size"].as_u64().unwrap();
            (start * sector_size, size * sector_size)
        })
        .collect()
}

fn gpt_image(image: &Path) {
    let script = format!(
        "label: gpt\n\
         size=16MiB, type={EFI_SYSTEM}, name=\"EFI system\"\n\
         size=8MiB, type={LINUX_SWAP}, name=\"swap\"\n\
         size=30MiB, type={LINUX_FILESYSTEM}, name=\"root\", attrs=\"LegacyBIOSBootable\"\n\
         type={LINUX_FILESYSTEM}\n"
    );
    partition_image(image, 64 * MIB, &script);
}

#[test]
fn gpt_volumes_match_sfdisk_layout() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("gpt.raw");
    gpt_image(&image);
    let layout = sfdisk_layout(&image);
    let (root_offset, root_size) = layout[2];
    let mkfs = require_tool("mkfs.ext4", "e2fsprogs");
    run(Command::new(mkfs)
        .args(["-q", "-F", "-E", &format!("offset={root_offset}")])
        .arg(&image)
        .arg(format!("{}k", root_size / 1024)));

    let volumes = read_volumes(&image).unwrap();

    let names: Vec<&str> = volumes.iter().map(|volume| volume.name.as_str()).collect();
    assert_eq!(names, ["EFI system", "swap", "root", "partition 4"]);
    let numbers: Vec<Option<u32>> = volumes.iter().map(|volume| volume.number).collect();
    assert_eq!(numbers, [Some(1), Some(2), Some(3), Some(4)]);
    let found_layout: Vec<(u64, u64)> = volumes
        .iter()
        .map(|volume| (volume.offset_bytes, volume.size_bytes))
        .collect();
    assert_eq!(found_layout, layout);
    assert_eq!(volumes[0].size_bytes, 16 * MIB);
    let bootable: Vec<bool> = volumes.iter().map(|volume| volume.bootable).collect();
    assert_eq!(bootable, [true, false, true, false]);
    assert_eq!(
        volumes[0].partition_type,
        PartitionType::Gpt {
            type_guid: EFI_SYSTEM.to_owned()
        }
    );
    let descriptions: Vec<Option<&str>> = volumes
        .iter()
        .map(|volume| volume.partition_type.description())
        .collect();
    assert_eq!(
        descriptions,
        [
            Some("EFI System"),
            Some("Linux swap"),
            Some("Linux filesystem"),
            Some("Linux filesystem")
        ]
    );
    let filesystems: Vec<Option<&str>> = volumes.iter().map(|volume| volume.filesystem).collect();
    assert_eq!(filesystems, [None, None, Some("ext4"), None]);
}

#[test]
fn damaged_primary_gpt_falls_back_to_backup() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("gpt.raw");
    gpt_image(&image);
    let intact = read_volumes(&image).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();

    // Byte 56 of the header is the disk GUID, covered by the header CRC.
    file.write_all_at(&[0xFF; 4], 512 + 56).unwrap();
    let from_backup = read_volumes(&image).unwrap();
    assert_eq!(from_backup, intact);

    let last_sector = 64 * MIB - 512;
    file.write_all_at(&[0xFF; 4], last_sector + 56).unwrap();
    let error = read_volumes(&image).unwrap_err();
    assert!(
        matches!(error, Error::InvalidPartitionTable { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("primary GPT header at LBA 1"), "{message}");
    assert!(message.contains("backup GPT header"), "{message}");
    assert!(message.contains("CRC32"), "{message}");
}

#[test]
fn protective_mbr_without_gpt_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("gpt.raw");
    gpt_image(&image);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    file.write_all_at(&[0; 8], 512).unwrap();
    file.write_all_at(&[0; 8], 64 * MIB - 512).unwrap();

    let error = read_volumes(&image).unwrap_err();

    assert!(
        matches!(error, Error::InvalidPartitionTable { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("protective MBR"), "{error}");
}

#[test]
fn mbr_volumes_include_active_and_logical_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("mbr.raw");
    let script = "label: dos\n\
                  size=16MiB, type=83, bootable\n\
                  size=8MiB, type=82\n\
                  type=5\n\
                  size=8MiB, type=83\n\
                  type=c\n";
    partition_image(&image, 64 * MIB, script);
    let layout = sfdisk_layout(&image);

    let volumes = read_volumes(&image).unwrap();

    let names: Vec<&str> = volumes.iter().map(|volume| volume.name.as_str()).collect();
    assert_eq!(
        names,
        ["partition 1", "partition 2", "partition 5", "partition 6"]
    );
    let found_layout: Vec<(u64, u64)> = volumes
        .iter()
        .map(|volume| (volume.offset_bytes, volume.size_bytes))
        .collect();
    assert_eq!(found_layout, layout);
    let bootable: Vec<bool> = volumes.iter().map(|volume| volume.bootable).collect();
    assert_eq!(bootable, [true, false, false, false]);
    let types: Vec<PartitionType> = volumes
        .iter()
        .map(|volume| volume.partition_type.clone())
        .collect();
    assert_eq!(
        types,
        [0x83, 0x82, 0x83, 0x0C].map(|type_code| PartitionType::Mbr { type_code })
    );
    assert_eq!(volumes[1].partition_type.description(), Some("Linux swap"));
}

#[test]
fn bare_filesystems_are_named_by_type() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["ext2", "ext3", "ext4"] {
        let image = dir.path().join(format!("{kind}.raw"));
        let mkfs = require_tool(&format!("mkfs.{kind}"), "e2fsprogs");
        run(Command::new(mkfs).args(["-q", "-F"]).arg(&image).arg("8M"));

        let volumes = read_volumes(&image).unwrap();

        assert_eq!(volumes.len(), 1, "{kind}");
        assert_eq!(volumes[0].name, kind);
        assert_eq!(volumes[0].filesystem, Some(kind));
        assert_eq!(volumes[0].partition_type, PartitionType::WholeDisk);
        assert_eq!(volumes[0].size_bytes, 8 * MIB);
        assert_eq!(volumes[0].number, None);
        assert!(!volumes[0].bootable);
    }
}

#[test]
fn blank_disk_is_one_volume_named_disk() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("blank.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();

    let volumes = read_volumes(&image).unwrap();

    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].name, "disk");
    assert_eq!(volumes[0].size_bytes, 4 * MIB);
    assert_eq!(volumes[0].filesystem, None);
}
