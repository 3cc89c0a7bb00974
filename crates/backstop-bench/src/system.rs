//! Process, cache and file system helpers: running timed commands, dropping
//! the page cache, reading peak memory from `/proc`, and disk usage.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Page cache state before each timed step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheMode {
    /// `sync`, then `echo 3 > /proc/sys/vm/drop_caches`, so every tool
    /// reads its input from the disk. Needs root.
    Cold,
    /// `sync`, then the step's input (the image for a backup, the
    /// repository for a restore) is read once, so every tool reads it from
    /// the page cache.
    Warm,
}

impl CacheMode {
    pub fn describe(self) -> &'static str {
        match self {
            CacheMode::Cold => {
                "cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before every timed step"
            }
            CacheMode::Warm => {
                "warm: `sync`, then the step's input (the image for a backup, the repository \
                 for a restore) read once before every timed step"
            }
        }
    }

    /// Prepares the cache for the next timed step, whose input is below
    /// `inputs`. Both modes first write back what earlier steps left dirty,
    /// so that no step pays for another's writes.
    pub fn prepare(self, inputs: &[&Path]) -> Result<()> {
        run_quiet(Command::new("sync"))?;
        match self {
            CacheMode::Cold => fs::write("/proc/sys/vm/drop_caches", "3")
                .context("cannot write /proc/sys/vm/drop_caches; run as root or pass --cache warm"),
            CacheMode::Warm => {
                for input in inputs {
                    read_all(input)?;
                }
                Ok(())
            }
        }
    }
}

/// Reads every regular file below `path` once and discards the bytes.
fn read_all(path: &Path) -> Result<()> {
    let metadata =
        fs::symlink_metadata(path).with_context(|| format!("cannot inspect {}", path.display()))?;
    if metadata.is_dir() {
        for entry in
            fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))?
        {
            read_all(&entry?.path())?;
        }
    } else if metadata.is_file() {
        let mut file =
            fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        std::io::copy(&mut file, &mut std::io::sink())
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(())
}

/// Wall time and peak memory of one external command.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub seconds: f64,
    /// Maximum resident set size in KiB, as GNU time reports it (`%M`).
    pub max_rss_kib: u64,
}

/// A command line to time, with its environment and working folder.
#[derive(Clone, Debug)]
pub struct Tool {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

impl Tool {
    pub fn new(program: &str, args: &[&str]) -> Self {
        Self {
            program: program.to_owned(),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            env: Vec::new(),
            cwd: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.args.push(arg.as_ref().to_string_lossy().into_owned());
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    pub fn cwd(mut self, folder: &Path) -> Self {
        self.cwd = Some(folder.to_owned());
        self
    }

    /// Returns the command line as a shell user would type it, for the
    /// report.
    pub fn display(&self) -> String {
        let mut words = vec![self.program.clone()];
        words.extend(self.args.iter().cloned());
        words.join(" ")
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.envs(self.env.iter().map(|(key, value)| (key, value)));
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        command
    }

    /// Runs the command under GNU time and returns its wall time and peak
    /// memory. Fails with the command's output when it exits non-zero.
    pub fn run_timed(&self, scratch: &Path) -> Result<Measured> {
        let report = scratch.join("time.out");
        let mut command = self.command("/usr/bin/time");
        command
            .arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&report)
            .arg(&self.program)
            .args(&self.args);
        let started = Instant::now();
        let output = command
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run /usr/bin/time {}", self.display()))?;
        let seconds = started.elapsed().as_secs_f64();
        if !output.status.success() {
            bail!(
                "`{}` failed with {}:\n{}{}",
                self.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let text = fs::read_to_string(&report)
            .with_context(|| format!("cannot read GNU time output {}", report.display()))?;
        let max_rss_kib = text
            .lines()
            .last()
            .and_then(|line| line.trim().parse().ok())
            .with_context(|| format!("GNU time wrote {text:?}, expected a number of KiB"))?;
        Ok(Measured {
            seconds,
            max_rss_kib,
        })
    }

    /// Runs the command without timing it and returns its standard output.
    pub fn run(&self) -> Result<String> {
        let mut command = self.command(&self.program);
        command.args(&self.args).stdin(Stdio::null());
        let output = command
            .output()
            .with_context(|| format!("cannot run {}", self.display()))?;
        if !output.status.success() {
            bail!(
                "`{}` failed with {}:\n{}{}",
                self.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Runs `command` and fails with its standard error when it exits non-zero.
pub fn run_quiet(mut command: Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Returns the bytes allocated on disk below `path` (the sum of `st_blocks`
/// times 512, like `du -s --block-size=1`). Hard links count once per link.
pub fn disk_usage(path: &Path) -> Result<u64> {
    let metadata =
        fs::symlink_metadata(path).with_context(|| format!("cannot inspect {}", path.display()))?;
    let mut total = metadata.blocks() * 512;
    if metadata.is_dir() {
        for entry in
            fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))?
        {
            total += disk_usage(&entry?.path())?;
        }
    }
    Ok(total)
}

/// Peak resident set size of a running process in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{path} has no VmHWM line"))
}

/// Resets the peak resident set size of a process to its current size, so
/// that the next [`peak_rss_kib`] covers only what follows (Linux 4.0 and
/// later, `clear_refs` value 5).
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    fs::write(&path, "5").with_context(|| format!("cannot write 5 to {path}"))
}

/// Fails unless the two files have the same length and bytes.
pub fn assert_same_content(expected: &Path, actual: &Path) -> Result<()> {
    use std::io::Read;

    let open = |path: &Path| {
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))
    };
    let (mut left, mut right) = (open(expected)?, open(actual)?);
    let (left_len, right_len) = (left.metadata()?.len(), right.metadata()?.len());
    if left_len != right_len {
        bail!(
            "{} is {right_len} bytes, expected {left_len} like {}",
            actual.display(),
            expected.display()
        );
    }
    let mut left_buffer = vec![0u8; 4 << 20];
    let mut right_buffer = vec![0u8; 4 << 20];
    let mut offset = 0u64;
    while offset < left_len {
        let piece = (left_len - offset).min(left_buffer.len() as u64) as usize;
        left.read_exact(&mut left_buffer[..piece])?;
        right.read_exact(&mut right_buffer[..piece])?;
        if left_buffer[..piece] != right_buffer[..piece] {
            bail!(
                "{} differs from {} in the 4 MiB block at offset {offset}",
                actual.display(),
                expected.display()
            );
        }
        offset += piece as u64;
    }
    Ok(())
}

/// Creates an all-zero sparse file of `size` bytes, replacing any file at
/// `path`.
pub fn create_blank(path: &Path, size: u64) -> Result<()> {
    // Made under another name and renamed, because an agent that reads the
    // disk's size in between would otherwise report 0 bytes to the server.
    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(".new");
    let temp = PathBuf::from(temp_name);
    let file =
        fs::File::create(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
    file.set_len(size)
        .with_context(|| format!("cannot set the length of {}", temp.display()))?;
    fs::rename(&temp, path)
        .with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))
}

/// Removes a file or folder tree if it exists.
pub fn remove_path(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => Err(error),
    };
    result.with_context(|| format!("cannot remove {}", path.display()))
}

/// Runs `sync FILE` (an fsync of the file) and returns its seconds.
pub fn sync_file(path: &Path) -> Result<f64> {
    let started = Instant::now();
    let mut command = Command::new("sync");
    command.arg(path);
    run_quiet(command)?;
    Ok(started.elapsed().as_secs_f64())
}
