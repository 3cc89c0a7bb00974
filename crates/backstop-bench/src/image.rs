//! The benchmark's disk image: a tree copied from system folders, an ext4
//! file system made from it with `mkfs.ext4 -d`, and a change that rewrites
//! 1% of its files in place with `debugfs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::system::run_quiet;

/// Name of the file that marks a finished tree copy and records its
/// sources and size limit.
const TREE_DONE_MARKER: &str = ".backstop-bench-tree";

/// A regular file of the copied tree.
#[derive(Clone, Debug)]
pub struct TreeFile {
    /// Path relative to the tree root, with `/` separators.
    pub relative: String,
    pub size: u64,
}

/// The copied tree and its regular files.
#[derive(Debug)]
pub struct Tree {
    pub root: PathBuf,
    /// Regular files, sorted by path.
    pub files: Vec<TreeFile>,
    pub bytes: u64,
}

/// Copies regular files, symbolic links and folders from `sources`, in
/// sorted order, until the regular files add up to `limit` bytes. Reuses a
/// tree that an earlier run finished with the same sources and limit.
pub fn build_tree(sources: &[PathBuf], root: &Path, limit: u64) -> Result<Tree> {
    let marker = root.join(TREE_DONE_MARKER);
    let signature = format!("{sources:?} {limit}");
    let reusable = fs::read_to_string(&marker).is_ok_and(|text| text == signature);
    if !reusable {
        crate::system::remove_path(root)?;
        fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        let mut copied = 0u64;
        for source in sources {
            let name = source
                .file_name()
                .with_context(|| format!("source folder {} has no name", source.display()))?;
            copy_folder(source, &root.join(name), limit, &mut copied)?;
            if copied >= limit {
                break;
            }
        }
        fs::write(&marker, &signature)
            .with_context(|| format!("cannot write {}", marker.display()))?;
    }

    let mut files = Vec::new();
    list_files(root, root, &mut files)?;
    files.retain(|file| file.relative != TREE_DONE_MARKER);
    files.sort_by(|left, right| left.relative.cmp(&right.relative));
    let bytes = files.iter().map(|file| file.size).sum();
    Ok(Tree {
        root: root.to_owned(),
        files,
        bytes,
    })
}

fn copy_folder(source: &Path, target: &Path, limit: u64, copied: &mut u64) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("cannot create {}", target.display()))?;
    let mut entries: Vec<_> = match fs::read_dir(source) {
        Ok(entries) => entries.filter_map(|entry| entry.ok()).collect(),
        // Folders that only root may read are skipped, like unreadable files.
        Err(_) => return Ok(()),
    };
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        if *copied >= limit {
            return Ok(());
        }
        let from = entry.path();
        let to = target.join(entry.file_name());
        let Ok(metadata) = fs::symlink_metadata(&from) else {
            continue;
        };
        let file_type = metadata.file_type();
        if file_type.is_dir() {
            copy_folder(&from, &to, limit, copied)?;
        } else if file_type.is_symlink() {
            if let Ok(link) = fs::read_link(&from) {
                std::os::unix::fs::symlink(link, &to)
                    .with_context(|| format!("cannot create symbolic link {}", to.display()))?;
            }
        } else if file_type.is_file() && fs::copy(&from, &to).is_ok() {
            *copied += metadata.len();
        }
    }
    Ok(())
}

fn list_files(root: &Path, folder: &Path, files: &mut Vec<TreeFile>) -> Result<()> {
    for entry in
        fs::read_dir(folder).with_context(|| format!("cannot list {}", folder.display()))?
    {
        let entry = entry?;
        let metadata = fs::symlink_metadata(entry.path())?;
        if metadata.is_dir() {
            list_files(root, &entry.path(), files)?;
        } else if metadata.is_file() {
            let relative = entry
                .path()
                .strip_prefix(root)
                .expect("listed below the root")
                .to_string_lossy()
                .into_owned();
            files.push(TreeFile {
                relative,
                size: metadata.len(),
            });
        }
    }
    Ok(())
}

/// Makes `image`, a sparse file of `size` bytes that contains an ext4
/// file system with the tree's content.
pub fn make_image(tree: &Tree, image: &Path, size: u64) -> Result<()> {
    crate::system::remove_path(image)?;
    let mut command = Command::new("mkfs.ext4");
    command
        .args(["-q", "-F", "-d"])
        .arg(&tree.root)
        .arg(image)
        .arg(format!("{}k", size / 1024));
    run_quiet(command).context("mkfs.ext4 failed; install e2fsprogs 1.43 or newer")?;
    Ok(())
}

/// The files one change rewrites and the `debugfs` script that does it.
#[derive(Debug)]
pub struct Change {
    pub files: Vec<TreeFile>,
    pub bytes: u64,
    pub script: PathBuf,
}

/// Prepares a change of `percent` percent of the tree's files: a run of
/// consecutive files in path order, starting in the middle of the list,
/// each rewritten with every byte XOR 0xA5 (same length, different
/// content). `debugfs` removes each file and writes the new content under
/// the same path, so ext4 allocates new blocks for it.
pub fn prepare_change(tree: &Tree, work: &Path, percent: f64) -> Result<Change> {
    // debugfs splits commands at whitespace, so only plain paths qualify.
    let candidates: Vec<&TreeFile> = tree
        .files
        .iter()
        .filter(|file| file.size > 0)
        .filter(|file| {
            !file
                .relative
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\\')
        })
        .collect();
    let count = ((tree.files.len() as f64 * percent / 100.0).ceil() as usize).max(1);
    if candidates.len() < count {
        bail!(
            "the tree has {} files that debugfs can rewrite, fewer than the {count} a change of {percent}% needs",
            candidates.len()
        );
    }
    let start = (candidates.len() - count) / 2;
    let chosen: Vec<TreeFile> = candidates[start..start + count]
        .iter()
        .map(|file| (*file).clone())
        .collect();

    let content_folder = work.join("change");
    crate::system::remove_path(&content_folder)?;
    fs::create_dir_all(&content_folder)?;
    let mut script = String::new();
    for (index, file) in chosen.iter().enumerate() {
        let original = tree.root.join(&file.relative);
        let mut data =
            fs::read(&original).with_context(|| format!("cannot read {}", original.display()))?;
        for byte in &mut data {
            *byte ^= 0xA5;
        }
        let replacement = content_folder.join(format!("{index}"));
        fs::write(&replacement, &data)?;
        script.push_str(&format!("rm /{}\n", file.relative));
        script.push_str(&format!(
            "write {} /{}\n",
            replacement.display(),
            file.relative
        ));
    }
    let script_path = work.join("change.debugfs");
    fs::write(&script_path, script)?;
    Ok(Change {
        bytes: chosen.iter().map(|file| file.size).sum(),
        files: chosen,
        script: script_path,
    })
}

/// Applies the change to an image made by [`make_image`] and checks the
/// file system afterwards with `e2fsck -fn`.
pub fn apply_change(change: &Change, image: &Path) -> Result<()> {
    let mut command = Command::new("debugfs");
    command.arg("-w").arg("-f").arg(&change.script).arg(image);
    let output = command.output().context("cannot run debugfs")?;
    // debugfs exits 0 even when a command fails, so its messages are read.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.starts_with("debugfs ") && !line.trim().is_empty())
        .collect();
    if !output.status.success() || !problems.is_empty() {
        bail!(
            "debugfs -f {} failed: {}",
            change.script.display(),
            problems.join("; ")
        );
    }
    let mut check = Command::new("e2fsck");
    check.arg("-fn").arg(image);
    run_quiet(check).with_context(|| format!("e2fsck -fn {} found errors", image.display()))?;
    Ok(())
}
