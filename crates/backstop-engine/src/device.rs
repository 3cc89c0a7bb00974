//! Disk access: opening raw image files and block devices, their sizes,
//! positioned reads and writes, and the holes of sparse files.
//!
//! All methods block. Callers run them on tokio's blocking thread pool. Reads
//! and writes are positioned (`pread`/`pwrite`), so several threads can share
//! one open file without a seek position to race on.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::num::NonZeroU64;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// Zero bytes written in place of a hole where a hole cannot be punched.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Kind of the file behind a disk path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// A regular file holding a raw disk image. It can be resized and can
    /// have holes.
    File,
    /// A block device. It is never resized and holes are written as zeros.
    BlockDevice,
}

/// An open disk image or block device.
#[derive(Debug)]
pub(crate) struct DiskFile {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) kind: TargetKind,
}

/// A restore target as [`DiskFile::open_target`] found it.
#[derive(Debug)]
pub(crate) struct OpenedTarget {
    pub(crate) disk: DiskFile,
    /// False when the file did not exist and was created.
    pub(crate) existed: bool,
}

impl DiskFile {
    /// Opens a disk image or block device for reading.
    pub(crate) fn open_source(path: &Path) -> Result<Self> {
        let file =
            File::open(path).map_err(|source| Error::io(path, "open source disk", source))?;
        let kind = kind_of(&file, path)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            kind,
        })
    }

    /// Opens a restore target for reading and writing, creating a regular
    /// file when nothing exists at `path`.
    ///
    /// A block device is opened with `O_EXCL`, which Linux rejects with
    /// `EBUSY` while the device is mounted or otherwise claimed (open(2)),
    /// so a restore cannot overwrite a file system in use.
    ///
    /// NOTE: the block device paths of a restore (`O_EXCL`, zeros in place of
    /// holes) are not covered by the tests. Only [`disk_size`] has a block
    /// device test, which needs root and `losetup` and is ignored by default.
    pub(crate) fn open_target(path: &Path) -> Result<OpenedTarget> {
        let existing = match std::fs::metadata(path) {
            Ok(metadata) => Some(metadata),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(source) => return Err(Error::io(path, "inspect target", source)),
        };

        let Some(metadata) = existing else {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|source| Error::io(path, "create target file", source))?;
            let disk = Self {
                file,
                path: path.to_owned(),
                kind: TargetKind::File,
            };
            return Ok(OpenedTarget {
                disk,
                existed: false,
            });
        };

        let file_type = metadata.file_type();
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        let kind = if file_type.is_block_device() {
            options.custom_flags(OFlags::EXCL.bits() as i32);
            TargetKind::BlockDevice
        } else if file_type.is_file() {
            TargetKind::File
        } else {
            return Err(Error::InvalidTarget {
                path: path.to_owned(),
                reason: "it is neither a regular file nor a block device".to_owned(),
            });
        };
        let file = options.open(path).map_err(|source| {
            let action = match (kind, source.raw_os_error()) {
                (TargetKind::BlockDevice, Some(code)) if code == Errno::BUSY.raw_os_error() => {
                    "open block device exclusively (unmount it and stop whatever uses it) at"
                }
                _ => "open target",
            };
            Error::io(path, action, source)
        })?;
        let disk = Self {
            file,
            path: path.to_owned(),
            kind,
        };
        Ok(OpenedTarget {
            disk,
            existed: true,
        })
    }

    /// Returns the size in bytes: the file length, or for a block device the
    /// end offset that `lseek(SEEK_END)` reports.
    pub(crate) fn size(&self) -> Result<u64> {
        let size = match self.kind {
            TargetKind::File => self.file.metadata().map(|metadata| metadata.len()),
            TargetKind::BlockDevice => (&self.file).seek(SeekFrom::End(0)),
        };
        size.map_err(|source| Error::io(&self.path, "get the size of", source))
    }

    /// Sets the length of a regular file. Gaps it adds are holes.
    pub(crate) fn set_len(&self, len: u64) -> Result<()> {
        self.file.set_len(len).map_err(|source| {
            Error::io(&self.path, format!("set length to {len} bytes of"), source)
        })
    }

    /// Fills `buffer` from byte `offset`.
    pub(crate) fn read_range(&self, offset: u64, buffer: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buffer, offset).map_err(|source| {
            let action = format!("read {} bytes at offset {offset} of", buffer.len());
            Error::io(&self.path, action, source)
        })
    }

    /// Writes all of `data` at byte `offset`.
    pub(crate) fn write_range(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file.write_all_at(data, offset).map_err(|source| {
            let action = format!("write {} bytes at offset {offset} of", data.len());
            Error::io(&self.path, action, source)
        })
    }

    /// Returns true when the file system reports `[offset, offset + len)` as
    /// one hole, so it reads as zeros without being read.
    ///
    /// Uses `lseek(SEEK_DATA)`. Returns false for block devices, and when the
    /// file system does not support it, which only means "unknown".
    pub(crate) fn range_is_hole(&self, offset: u64, len: u64) -> bool {
        if self.kind != TargetKind::File || len == 0 {
            return false;
        }
        match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(offset)) {
            Ok(next_data) => next_data >= offset + len,
            // ENXIO: no data at or after `offset`.
            Err(Errno::NXIO) => true,
            Err(_) => false,
        }
    }

    /// Makes `[offset, offset + len)` read as zeros: punches a hole in a
    /// regular file, or writes zeros to a block device or to a file system
    /// that cannot punch holes.
    pub(crate) fn clear_range(&self, offset: u64, len: u64) -> Result<()> {
        if self.kind == TargetKind::File {
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            match rustix::fs::fallocate(&self.file, flags, offset, len) {
                Ok(()) => return Ok(()),
                Err(Errno::OPNOTSUPP | Errno::NOSYS) => {}
                Err(error) => {
                    let action = format!("punch a hole of {len} bytes at offset {offset} in");
                    return Err(Error::io(&self.path, action, error.into()));
                }
            }
        }
        self.write_zeros(offset, len)
    }

    fn write_zeros(&self, offset: u64, len: u64) -> Result<()> {
        let mut position = offset;
        let end = offset + len;
        while position < end {
            let piece = (end - position).min(ZEROS.len() as u64) as usize;
            self.write_range(position, &ZEROS[..piece])?;
            position += piece as u64;
        }
        Ok(())
    }

    /// Starts writing the dirty cached pages of `[offset, offset + len)` to
    /// the device without waiting for it, and drops the pages of the range
    /// that are already clean. Best effort: a failure is logged.
    ///
    /// A restore calls this after each range. Otherwise the kernel starts
    /// writing only once dirty pages pass `dirty_background_ratio` (10% of
    /// RAM by default). A restore of a disk smaller than that then wrote
    /// nothing while chunks were decoded, and waited in the final `fsync`
    /// for all of it. Linux implements `POSIX_FADV_DONTNEED` by
    /// starting writeback of the range, then dropping its clean pages, which
    /// also keeps a restore from filling the page cache.
    pub(crate) fn start_writeback(&self, offset: u64, len: u64) {
        if let Some(len) = NonZeroU64::new(len) {
            self.advise_dont_need(offset, Some(len));
        }
    }

    /// Flushes written data and metadata to stable storage (`fsync`).
    pub(crate) fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|source| Error::io(&self.path, "sync", source))
    }

    /// Asks the kernel to drop this file's clean cached pages, so that the
    /// next reads come from the device. Best effort: a failure is logged.
    pub(crate) fn drop_cached_pages(&self) {
        self.advise_dont_need(0, None);
    }

    /// `posix_fadvise(POSIX_FADV_DONTNEED)` from `offset` for `len` bytes, or
    /// to the end of the file. A failure is logged.
    fn advise_dont_need(&self, offset: u64, len: Option<NonZeroU64>) {
        let advice = rustix::fs::Advice::DontNeed;
        if let Err(error) = rustix::fs::fadvise(&self.file, offset, len, advice) {
            tracing::debug!(path = %self.path.display(), %error, "posix_fadvise(DONTNEED) failed");
        }
    }
}

/// Opens a disk image or block device for reading and returns its size in
/// bytes. A block device's size comes from `lseek(SEEK_END)`, because Linux
/// reports 0 as the file length of block devices.
///
/// Blocks; async callers run it on the blocking thread pool.
pub fn disk_size(path: &Path) -> Result<u64> {
    DiskFile::open_source(path)?.size()
}

fn kind_of(file: &File, path: &Path) -> Result<TargetKind> {
    let metadata = file
        .metadata()
        .map_err(|source| Error::io(path, "inspect", source))?;
    let file_type = metadata.file_type();
    if file_type.is_block_device() {
        Ok(TargetKind::BlockDevice)
    } else if file_type.is_file() {
        Ok(TargetKind::File)
    } else {
        Err(Error::InvalidTarget {
            path: path.to_owned(),
            reason: "it is neither a regular file nor a block device".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_size_of_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let file = File::create(&path).unwrap();
        file.set_len(3 * 1024 * 1024 + 512).unwrap();

        assert_eq!(disk_size(&path).unwrap(), 3 * 1024 * 1024 + 512);
    }

    #[test]
    fn disk_size_rejects_missing_and_folder() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.img");

        let error = disk_size(&missing).unwrap_err().to_string();
        assert!(error.contains("missing.img"), "{error}");
        assert!(error.contains("No such file"), "{error}");

        let error = disk_size(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("neither a regular file nor a block device"),
            "{error}"
        );
    }

    /// Attaches a loop device to an 8 MiB image and checks that its size is
    /// read from the device, not from the file length, which Linux reports
    /// as 0 for block devices. Run with `cargo test -- --ignored` as root.
    #[test]
    #[ignore = "needs root and losetup"]
    fn disk_size_of_loop_device() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("loop.img");
        File::create(&image)
            .unwrap()
            .set_len(8 * 1024 * 1024)
            .unwrap();
        let output = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .expect("losetup must be installed");
        assert!(
            output.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let device = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());

        let metadata_len = std::fs::metadata(&device).map(|m| m.len());
        let size = disk_size(&device);
        let detached = std::process::Command::new("losetup")
            .arg("--detach")
            .arg(&device)
            .status();

        assert_eq!(
            metadata_len.unwrap(),
            0,
            "file length of {}",
            device.display()
        );
        assert_eq!(size.unwrap(), 8 * 1024 * 1024);
        assert!(
            detached.unwrap().success(),
            "losetup --detach {} failed",
            device.display()
        );
    }
}
