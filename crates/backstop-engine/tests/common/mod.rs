//! Helpers shared by the integration tests: repositories in temporary
//! folders, real directory trees, ext4 images built with `mkfs.ext4 -d`, and
//! the external tools those need.
//!
//! The tests need the Debian packages `e2fsprogs` (mkfs.ext4, e2fsck,
//! debugfs) and `fdisk` (sfdisk).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use backstop_chunkstore::{
    ChunkDigest, ChunkEntry, DiskManifest, EncryptionOptions, LocalBackend, Repository,
    RepositoryOptions,
};
use backstop_engine::{
    backup_disk, restore_disk, BackupOptions, CancellationToken, DiskBackup, NoProgress,
    RestoreOptions, RestoreStats,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

pub const MIB: u64 = 1024 * 1024;

/// Returns the path of an external tool, or panics with the package that
/// provides it.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    for folder in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let path = Path::new(folder).join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "`{name}` not found: install the Debian package `{package}` (apt-get install -y {package})"
    );
}

/// Runs a command and panics with its output when it fails.
pub fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("failed to start {command:?}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed with {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Creates an unencrypted repository in `root`.
pub async fn create_repository(root: &Path) -> Repository {
    Repository::create(
        Arc::new(LocalBackend::new(root)),
        RepositoryOptions::default(),
    )
    .await
    .expect("create repository")
}

/// Creates a repository encrypted with a key file stored next to it.
pub async fn create_encrypted_repository(root: &Path, key_file: &Path) -> Repository {
    let options = RepositoryOptions {
        encryption: EncryptionOptions::KeyFile(key_file.to_owned()),
        ..RepositoryOptions::default()
    };
    Repository::create(Arc::new(LocalBackend::new(root)), options)
        .await
        .expect("create encrypted repository")
}

/// Returns the file of a chunk in a repository on a `LocalBackend`.
pub fn chunk_file(repository_root: &Path, digest: &ChunkDigest) -> PathBuf {
    let hex = digest.to_hex();
    repository_root.join("chunks").join(&hex[..2]).join(hex)
}

/// Writes a tree of `file_count` files in nested folders: compressible
/// text, random bytes and a few larger files of each kind.
pub fn write_tree(root: &Path, seed: u64, file_count: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    for index in 0..file_count {
        let folder = root.join(format!("dir-{}/sub-{}", index % 7, index % 3));
        std::fs::create_dir_all(&folder).unwrap();
        let len = match index % 10 {
            0 => rng.random_range(256 * 1024..2 * 1024 * 1024),
            1..=4 => rng.random_range(0..4096),
            _ => rng.random_range(4096..64 * 1024),
        };
        let content = if index % 2 == 0 {
            let line = format!("file {index} line of compressible text, seed {seed}\n");
            line.repeat(len / line.len() + 1).into_bytes()[..len].to_vec()
        } else {
            random_bytes(&mut rng, len)
        };
        std::fs::write(folder.join(format!("file-{index}.dat")), content).unwrap();
    }
}

pub fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// Builds an ext4 image of `size` (an `mkfs.ext4` size such as `64M`)
/// from the files in `tree`.
pub fn make_ext4_image(image: &Path, tree: &Path, size: &str) {
    let mkfs = require_tool("mkfs.ext4", "e2fsprogs");
    run(Command::new(mkfs)
        .args(["-q", "-F", "-d"])
        .arg(tree)
        .arg(image)
        .arg(size));
}

/// Runs a read-only `e2fsck -fn` and panics when it reports problems.
pub fn check_ext4(image: &Path) {
    let e2fsck = require_tool("e2fsck", "e2fsprogs");
    run(Command::new(e2fsck).arg("-fn").arg(image));
}

pub async fn backup(
    repository: &Repository,
    source: &Path,
    previous: Option<&DiskManifest>,
    options: &BackupOptions,
) -> DiskBackup {
    let session = repository.start_session();
    backup_disk(
        &session,
        "vda",
        source,
        previous,
        options,
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .expect("backup")
}

pub async fn restore(
    repository: &Repository,
    disk: &DiskManifest,
    target: &Path,
    options: &RestoreOptions,
) -> RestoreStats {
    restore_disk(
        repository,
        disk,
        target,
        options,
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .expect("restore")
}

pub fn backup_options(chunk_size: u64) -> BackupOptions {
    BackupOptions {
        chunk_size: chunk_size as u32,
        ..BackupOptions::default()
    }
}

/// Returns the indexes of the `chunk_size` ranges in which `a` and `b`
/// differ.
pub fn differing_chunks(a: &[u8], b: &[u8], chunk_size: u64) -> Vec<usize> {
    assert_eq!(a.len(), b.len(), "images differ in length");
    a.chunks(chunk_size as usize)
        .zip(b.chunks(chunk_size as usize))
        .enumerate()
        .filter(|(_, (left, right))| left != right)
        .map(|(index, _)| index)
        .collect()
}

pub fn chunk_digest_at(disk: &DiskManifest, index: usize) -> ChunkDigest {
    match disk.entries[index] {
        ChunkEntry::Chunk { digest, .. } => digest,
        ChunkEntry::Hole => panic!("entry {index} of disk `{}` is a hole", disk.name),
    }
}

/// Asserts two files have the same bytes, naming the first differing offset.
pub fn assert_same_content(expected: &Path, actual: &Path) {
    let expected_bytes = std::fs::read(expected).unwrap();
    let actual_bytes = std::fs::read(actual).unwrap();
    assert_eq!(
        expected_bytes.len(),
        actual_bytes.len(),
        "file lengths differ"
    );
    if let Some(offset) = expected_bytes
        .iter()
        .zip(&actual_bytes)
        .position(|(left, right)| left != right)
    {
        panic!(
            "{} differs from {} at byte offset {offset}",
            actual.display(),
            expected.display()
        );
    }
}

/// Writes an image of `chunk_count` chunks of random data, each different,
/// with holes at the given chunk indexes.
pub fn write_random_image(
    path: &Path,
    seed: u64,
    chunk_count: u64,
    chunk_size: u64,
    holes: &[u64],
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let file = std::fs::File::create(path).unwrap();
    file.set_len(chunk_count * chunk_size).unwrap();
    for index in 0..chunk_count {
        if holes.contains(&index) {
            continue;
        }
        let data = random_bytes(&mut rng, chunk_size as usize);
        std::os::unix::fs::FileExt::write_all_at(&file, &data, index * chunk_size).unwrap();
    }
}
