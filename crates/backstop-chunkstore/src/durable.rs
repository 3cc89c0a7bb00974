//! The one durable write helper, [`write_file_durably`], that every file
//! write in the crate goes through, and the matching durable delete.
//!
//! The steps and the reason for each are commented in the function body.
//! Temporary files are named `.tmp-<16 hex digits>` in the target folder.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::backend::{PutMode, PutOutcome};

/// Name prefix of temporary files. Object keys cannot start a segment with
/// `.`, so no object can have such a name.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// Writes `data` to `path` so that the file appears whole or not at all,
/// also after a crash, and returns whether it was written.
///
/// With [`PutMode::Create`] an existing file is kept and the result is
/// [`PutOutcome::AlreadyExists`], even when two writers race. `file_mode` sets
/// the Unix permissions of a new file (before the umask applies).
pub(crate) fn write_file_durably(
    path: &Path,
    data: &[u8],
    mode: PutMode,
    file_mode: u32,
) -> io::Result<PutOutcome> {
    write_file_durably_with_fault(path, data, mode, file_mode, None)
}

/// Failure injected by tests into [`write_file_durably_with_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
enum SimulatedFault {
    /// The process dies after writing half of the temporary file: nothing
    /// cleans up.
    CrashAfterPartialWrite,
    /// The write fails after half of the data, as on a full disk.
    ErrorAfterPartialWrite,
}

fn write_file_durably_with_fault(
    path: &Path,
    data: &[u8],
    mode: PutMode,
    file_mode: u32,
    fault: Option<SimulatedFault>,
) -> io::Result<PutOutcome> {
    let folder = parent_folder(path);
    create_folder_durably(folder)?;

    // Skip the whole write when the object exists. The hard link below still
    // catches a writer that gets there first.
    if mode == PutMode::Create && path.exists() {
        return Ok(PutOutcome::AlreadyExists);
    }

    // Step 1: write into a new temporary file in the same folder. Readers
    // never open it, because list skips dot-names and no key maps to one. It
    // must be in the same folder, so that the rename below stays on one file
    // system and is atomic.
    let temp_path = new_temp_path(folder);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(file_mode)
        .open(&temp_path)?;

    let result = (|| {
        match fault {
            Some(SimulatedFault::CrashAfterPartialWrite) => {
                file.write_all(&data[..data.len() / 2])?;
                return Err(io::Error::other("simulated crash"));
            }
            Some(SimulatedFault::ErrorAfterPartialWrite) => {
                file.write_all(&data[..data.len() / 2])?;
                return Err(io::Error::other("simulated write error"));
            }
            None => file.write_all(data)?,
        }

        // Step 2: fsync the file before it gets its final name. Otherwise a
        // crash could keep the rename but lose the data, leaving an empty or
        // partial file under the final name.
        file.sync_all()?;
        drop(file);

        // Step 3: give the file its final name in one atomic step. A reader
        // sees the complete old object, the complete new one, or nothing.
        let outcome = match mode {
            PutMode::Overwrite => {
                fs::rename(&temp_path, path)?;
                PutOutcome::Written
            }
            PutMode::Create => {
                // A hard link, unlike rename, fails instead of replacing an
                // existing file, so a racing writer's object is kept.
                let outcome = match fs::hard_link(&temp_path, path) {
                    Ok(()) => PutOutcome::Written,
                    Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                        PutOutcome::AlreadyExists
                    }
                    Err(error) => return Err(error),
                };
                fs::remove_file(&temp_path)?;
                outcome
            }
        };

        // Step 4: fsync the folder, which makes the new name durable. Until
        // then a crash could undo the rename even though it returned.
        sync_folder(folder)?;
        Ok(outcome)
    })();

    if result.is_err() && fault != Some(SimulatedFault::CrashAfterPartialWrite) {
        // Best effort: a leftover is removed later by remove_stale_temp_files.
        let _ = fs::remove_file(&temp_path);
    }
    result
}

/// Returns a fresh temporary file path in `folder`.
fn new_temp_path(folder: &Path) -> PathBuf {
    folder.join(format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>()))
}

/// First half of a deferred durable write: writes `data` into a new
/// temporary file in the folder of `path`, without fsync, starts the
/// kernel's writeback of it, and returns the temporary file's path.
/// [`commit_temp_file`] later gives it its final name.
///
/// Until then the data is readable only under the temporary name, so a
/// crash loses it but can never leave a partial file under `path`.
pub(crate) fn write_temp_file(path: &Path, data: &[u8], file_mode: u32) -> io::Result<PathBuf> {
    let folder = parent_folder(path);
    create_folder_durably(folder)?;
    let temp_path = new_temp_path(folder);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(file_mode)
        .open(&temp_path)?;
    if let Err(error) = file.write_all(data) {
        let _ = fs::remove_file(&temp_path);
        return Err(error);
    }
    // Linux starts writeback of a range's dirty pages for DONTNEED, so the
    // fsync in commit_temp_file finds most of the data already written.
    // Best effort: the fsync writes whatever is left.
    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
    Ok(temp_path)
}

/// Second half of a deferred durable write: fsyncs the temporary file, then
/// hard-links it to `path`, which fails instead of replacing an existing
/// object. Leaves the temporary file in place and does not fsync the folder:
/// the caller calls [`sync_folder`] once per folder after a batch, and only
/// then may treat the objects as durable.
pub(crate) fn commit_temp_file(temp_path: &Path, path: &Path) -> io::Result<PutOutcome> {
    File::open(temp_path)?.sync_all()?;
    match fs::hard_link(temp_path, path) {
        Ok(()) => Ok(PutOutcome::Written),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyExists),
        Err(error) => Err(error),
    }
}

/// Removes a file and fsyncs its folder, so that a deleted object does not
/// come back after a crash. Returns false when the file did not exist.
pub(crate) fn remove_file_durably(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_folder(parent_folder(path))?;
            Ok(true)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

/// Creates `folder` and any missing parents, fsyncing each parent whose
/// entries changed, so that a crash cannot drop a folder together with the
/// objects written into it.
fn create_folder_durably(folder: &Path) -> io::Result<()> {
    if folder.is_dir() {
        return Ok(());
    }
    let parent = parent_folder(folder);
    if parent != folder {
        create_folder_durably(parent)?;
    }
    match fs::create_dir(folder) {
        Ok(()) => {}
        // Another writer created it. Its fsync of the parent may not have
        // run yet, so this writer does its own below.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error),
    }
    sync_folder(parent)
}

pub(crate) fn sync_folder(folder: &Path) -> io::Result<()> {
    File::open(folder)?.sync_all()
}

/// Returns the folder containing `path`, with `.` for a bare file name.
pub(crate) fn parent_folder(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, ObjectKey};
    use crate::local::LocalBackend;
    use bytes::Bytes;
    use std::path::PathBuf;

    const OBJECT_FILE_MODE: u32 = 0o644;

    fn temp_files_in(folder: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(temp_files_in(&path));
            } else if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(TEMP_PREFIX)
            {
                found.push(path);
            }
        }
        found
    }

    fn key(text: &str) -> ObjectKey {
        ObjectKey::new(text).unwrap()
    }

    #[test]
    fn racing_creates_store_exactly_one_object() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunks/ab/abcdef");

        let outcomes: Vec<(u8, PutOutcome)> = std::thread::scope(|scope| {
            let writers: Vec<_> = (1u8..=8)
                .map(|writer| {
                    let path = &path;
                    scope.spawn(move || {
                        let data = vec![writer; 64 * 1024];
                        let outcome =
                            write_file_durably(path, &data, PutMode::Create, OBJECT_FILE_MODE)
                                .unwrap();
                        (writer, outcome)
                    })
                })
                .collect();
            writers
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .collect()
        });

        let winners: Vec<u8> = outcomes
            .iter()
            .filter(|(_, outcome)| *outcome == PutOutcome::Written)
            .map(|(writer, _)| *writer)
            .collect();
        assert_eq!(winners.len(), 1, "outcomes: {outcomes:?}");
        assert_eq!(fs::read(&path).unwrap(), vec![winners[0]; 64 * 1024]);
        assert!(temp_files_in(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn interrupted_write_leaves_no_visible_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        let object = key("chunks/ab/abcdef");
        let path = backend.path_of(&object);

        let result = write_file_durably_with_fault(
            &path,
            &[7u8; 4096],
            PutMode::Create,
            OBJECT_FILE_MODE,
            Some(SimulatedFault::CrashAfterPartialWrite),
        );

        assert!(result.is_err());
        assert!(!path.exists());
        assert!(!backend.exists(&object).await.unwrap());
        assert!(backend.list("").await.unwrap().is_empty());
        assert_eq!(temp_files_in(dir.path()).len(), 1);

        // A retried write succeeds next to the leftover temporary file.
        backend
            .put(&object, Bytes::from(vec![7u8; 4096]), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(backend.get(&object).await.unwrap().len(), 4096);
        assert_eq!(backend.list("chunks/").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn failed_write_removes_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunks/ab/abcdef");

        let result = write_file_durably_with_fault(
            &path,
            &[7u8; 4096],
            PutMode::Overwrite,
            OBJECT_FILE_MODE,
            Some(SimulatedFault::ErrorAfterPartialWrite),
        );

        assert!(result.is_err());
        assert!(!path.exists());
        assert!(temp_files_in(dir.path()).is_empty());
    }
}
