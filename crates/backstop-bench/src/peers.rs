//! restic, borg and casync run on the same image: a full backup, a restore
//! to a file, a backup after the 1% change, and a backup of the unchanged
//! disk. Settings are chosen to be fast and fair for disk images and are
//! listed in [`Peer::settings`].

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::system::{disk_usage, remove_path, CacheMode, Measured, Tool};

/// Repository password given to restic. It protects nothing, because the
/// repository holds only the benchmark's copy of system files.
const RESTIC_PASSWORD: &str = "backstop-bench";

/// One of the tools Backstop is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Restic,
    Borg,
    Casync,
}

impl Peer {
    pub const ALL: [Peer; 3] = [Peer::Restic, Peer::Borg, Peer::Casync];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Restic => "restic",
            Peer::Borg => "borg",
            Peer::Casync => "casync",
        }
    }

    /// Returns the settings used, in words, for the report.
    pub fn settings(self) -> &'static str {
        match self {
            Peer::Restic => {
                "repository format 2 with its default `--compression auto`, AES-256 + Poly1305 \
                 (restic always encrypts), password from `RESTIC_PASSWORD`, default content-defined \
                 chunking; the unchanged backup uses `--force` so that restic reads the file instead \
                 of trusting its size and mtime"
            }
            Peer::Borg => {
                "`borg init --encryption none`, `--compression lz4` (borg's default), \
                 `--chunker-params fixed,4194304` and `--sparse` (borg's advice for disk images), \
                 extract with `--sparse`; the unchanged backup uses `--files-cache disabled` so \
                 that borg reads the file"
            }
            Peer::Casync => {
                "`casync make --compression=zstd` of the image as a blob into a local store with \
                 the default chunk size (64 KiB average); extract punches holes for zeros (default)"
            }
        }
    }

    /// Returns the version line the tool prints.
    pub fn version(self) -> Result<String> {
        let tool = match self {
            Peer::Restic => Tool::new("restic", &["version"]),
            Peer::Borg => Tool::new("borg", &["--version"]),
            Peer::Casync => Tool::new("casync", &["--version"]),
        };
        Ok(tool
            .run()
            .with_context(|| format!("{} is not installed; run scripts/bench.sh", self.name()))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned())
    }
}

/// Figures of one peer.
#[derive(Clone, Debug)]
pub struct PeerResult {
    pub peer: Peer,
    pub full_backup: Measured,
    pub restore: Measured,
    /// Seconds of `sync FILE` on the restored image right after the
    /// restore, which Backstop's restore includes.
    pub restore_sync_seconds: f64,
    pub changed_backup: Measured,
    pub unchanged_backup: Measured,
    /// Bytes on disk of the repository after the three backups.
    pub repository_bytes: u64,
    /// The commands, for the report.
    pub commands: Vec<String>,
}

/// Paths a peer run uses.
pub struct PeerRun<'a> {
    pub folder: &'a Path,
    /// The image, equal to the original at the start. The run changes it.
    pub image: &'a Path,
    /// The original image, to check the restore against.
    pub reference: &'a Path,
    pub cache: CacheMode,
    /// Applies the 1% change to the image.
    pub change: &'a dyn Fn(&Path) -> Result<()>,
}

/// Runs the peer's four steps. Restores go to a file in `run.folder` and are
/// compared with the reference before the file is removed.
pub fn run_peer(peer: Peer, run: &PeerRun<'_>) -> Result<PeerResult> {
    let repository = run.folder.join("repository");
    let restore_folder = run.folder.join("restored");
    remove_path(&repository)?;
    remove_path(&restore_folder)?;
    fs::create_dir_all(&restore_folder)?;
    let image_folder = run.image.parent().context("the image path has no folder")?;
    let image_name = run
        .image
        .file_name()
        .context("the image path has no file name")?
        .to_string_lossy()
        .into_owned();
    let steps = PeerSteps {
        peer,
        repository: repository.clone(),
        image_folder: image_folder.to_owned(),
        image_name: image_name.clone(),
        restore_folder: restore_folder.clone(),
    };

    steps.init()?;
    let mut commands = Vec::new();
    let timed = |tool: Tool, inputs: &[&Path], commands: &mut Vec<String>| -> Result<Measured> {
        run.cache.prepare(inputs)?;
        commands.push(tool.display());
        tool.run_timed(run.folder)
    };

    let full_backup = timed(steps.backup("full", false), &[run.image], &mut commands)?;
    let full_index = steps.index_path("full");
    let restore_inputs: Vec<&Path> = match peer {
        Peer::Casync => vec![&repository, &full_index],
        Peer::Restic | Peer::Borg => vec![&repository],
    };
    let restore = timed(steps.restore("full"), &restore_inputs, &mut commands)?;
    let restored = find_file(&restore_folder, &image_name)?;
    let restore_sync_seconds = crate::system::sync_file(&restored)?;
    crate::system::assert_same_content(run.reference, &restored)
        .with_context(|| format!("{} restored a different image", peer.name()))?;
    remove_path(&restore_folder)?;

    (run.change)(run.image)?;
    let changed_backup = timed(steps.backup("changed", false), &[run.image], &mut commands)?;
    let unchanged_backup = timed(steps.backup("unchanged", true), &[run.image], &mut commands)?;
    let repository_bytes = disk_usage(&repository)?
        + match peer {
            Peer::Casync => disk_usage(&full_index)?,
            _ => 0,
        };
    Ok(PeerResult {
        peer,
        full_backup,
        restore,
        restore_sync_seconds,
        changed_backup,
        unchanged_backup,
        repository_bytes,
        commands,
    })
}

struct PeerSteps {
    peer: Peer,
    repository: PathBuf,
    image_folder: PathBuf,
    image_name: String,
    restore_folder: PathBuf,
}

impl PeerSteps {
    fn init(&self) -> Result<()> {
        let repository = self.repository.display().to_string();
        match self.peer {
            Peer::Restic => {
                restic(&["init", "--repository-version", "2", "--repo", &repository]).run()?;
            }
            Peer::Borg => {
                borg(&["init", "--encryption", "none", &repository]).run()?;
            }
            Peer::Casync => fs::create_dir_all(&self.repository)?,
        }
        Ok(())
    }

    /// Returns the backup command for snapshot `name`. `force_read` makes
    /// restic and borg read the file even when its metadata is unchanged.
    fn backup(&self, name: &str, force_read: bool) -> Tool {
        let repository = self.repository.display().to_string();
        let index = self.index_path(name);
        let tool = match self.peer {
            Peer::Restic => {
                let mut tool = restic(&["backup", "--repo", &repository, "--host", "bench"]);
                if force_read {
                    tool = tool.arg("--force");
                }
                tool.arg(&self.image_name)
            }
            Peer::Borg => {
                let archive = format!("{repository}::{name}");
                let mut tool = borg(&[
                    "create",
                    "--compression",
                    "lz4",
                    "--chunker-params",
                    "fixed,4194304",
                    "--sparse",
                ]);
                if force_read {
                    tool = tool.arg("--files-cache").arg("disabled");
                }
                tool.arg(archive).arg(&self.image_name)
            }
            Peer::Casync => Tool::new("casync", &["make", "--compression=zstd"])
                .arg(format!("--store={repository}"))
                .arg(index)
                .arg(&self.image_name),
        };
        tool.cwd(&self.image_folder)
    }

    fn restore(&self, name: &str) -> Tool {
        let repository = self.repository.display().to_string();
        let target = self.restore_folder.join(&self.image_name);
        let tool = match self.peer {
            Peer::Restic => restic(&["restore", "latest", "--repo", &repository, "--target"])
                .arg(&self.restore_folder),
            Peer::Borg => borg(&["extract", "--sparse"]).arg(format!("{repository}::{name}")),
            Peer::Casync => Tool::new("casync", &["extract"])
                .arg(format!("--store={repository}"))
                .arg(self.index_path(name))
                .arg(target),
        };
        tool.cwd(&self.restore_folder)
    }

    fn index_path(&self, name: &str) -> PathBuf {
        self.repository
            .parent()
            .expect("the repository is in the peer folder")
            .join(format!("{name}.caibx"))
    }
}

fn restic(args: &[&str]) -> Tool {
    Tool::new("restic", args)
        .env("RESTIC_PASSWORD", RESTIC_PASSWORD)
        .env("RESTIC_PROGRESS_FPS", "0.2")
}

fn borg(args: &[&str]) -> Tool {
    Tool::new("borg", args).env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
}

/// Finds the file named `name` below `folder`: restic restores the full
/// original path below its target.
fn find_file(folder: &Path, name: &str) -> Result<PathBuf> {
    for entry in fs::read_dir(folder)? {
        let path = entry?.path();
        if path.is_dir() {
            if let Ok(found) = find_file(&path, name) {
                return Ok(found);
            }
        } else if path.file_name().is_some_and(|file| file == name) {
            return Ok(path);
        }
    }
    bail!("no file {name} below {}", folder.display())
}
