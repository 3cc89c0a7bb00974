//! `backstop-bench`: times Backstop's backups and restores of an ext4 disk
//! image through the real server and agent processes, runs restic, borg and
//! casync on the same image, and writes the figures to a Markdown file.
//!
//! `scripts/bench.sh` installs the tools, builds the release binaries and
//! runs this program. It needs root for `drop_caches` (or `--cache warm`)
//! and about 11 GiB free in the work folder.

mod backstop;
mod image;
mod peers;
mod primitives;
mod report;
mod system;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;

use crate::backstop::{Deployment, DeploymentSpec, StepResult};
use crate::peers::{Peer, PeerResult, PeerRun};
use crate::system::{
    assert_same_content, create_blank, disk_usage, remove_path, sync_file, CacheMode, Measured,
    Tool,
};

const MIB: u64 = 1024 * 1024;
const SOURCE_INSTANCE: &str = "bench-vm";
const BLANK_INSTANCE: &str = "bench-blank";

#[derive(Parser, Debug)]
#[command(about = "Benchmark Backstop against restic, borg and casync on one ext4 disk image")]
struct Args {
    /// Folder for the copied tree, images and repositories; needs about
    /// 11 GiB free with the default sizes.
    #[arg(long, default_value = "/var/tmp/backstop-bench")]
    work_dir: PathBuf,

    /// The `backstop` binary to measure.
    #[arg(long, default_value = "target/release/backstop")]
    backstop: PathBuf,

    /// Folders whose files fill the image, copied in this order and in
    /// sorted order within each.
    #[arg(long, value_delimiter = ',', default_value = "/usr/share,/usr/lib")]
    source: Vec<PathBuf>,

    /// MiB of regular files to copy into the image.
    #[arg(long, default_value_t = 1536)]
    data_mib: u64,

    /// Size of the sparse disk image in MiB.
    #[arg(long, default_value_t = 4096)]
    image_mib: u64,

    /// Percent of the image's files that the change rewrites.
    #[arg(long, default_value_t = 1.0)]
    change_percent: f64,

    /// Page cache state before each timed step.
    #[arg(long, value_enum, default_value = "warm")]
    cache: CacheMode,

    /// Skips the extra run with an encrypted repository.
    #[arg(long)]
    no_encrypted: bool,

    /// Skips restic, borg and casync.
    #[arg(long)]
    no_peers: bool,

    /// Keeps the copied tree for the next run instead of removing it once
    /// the image is made.
    #[arg(long)]
    keep_tree: bool,

    /// Keeps each Backstop deployment's folder (logs, catalog and
    /// repository) instead of removing it once its figures are taken.
    #[arg(long)]
    keep_deployments: bool,

    /// Markdown file that receives the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,

    /// Command line recorded in the report as the way to re-run it.
    #[arg(long, default_value = "scripts/bench.sh")]
    command: String,
}

/// Figures of one Backstop deployment.
#[derive(Clone, Debug)]
pub struct BackstopResult {
    pub full_backup: StepResult,
    pub changed_backup: Option<StepResult>,
    pub unchanged_backup: Option<StepResult>,
    pub full_restore: StepResult,
    pub differential_restore: Option<StepResult>,
    pub repository_bytes: u64,
}

/// Everything the report shows.
#[derive(Debug)]
pub struct Results {
    pub image_bytes: u64,
    pub image_allocated_bytes: u64,
    pub tree_files: usize,
    pub tree_bytes: u64,
    pub change_files: usize,
    pub change_bytes: u64,
    pub changed_blocks: u64,
    pub total_blocks: u64,
    pub copy: Measured,
    pub copy_sync_seconds: f64,
    pub plain: BackstopResult,
    pub encrypted: Option<BackstopResult>,
    pub peers: Vec<PeerResult>,
    pub primitives: Vec<primitives::Speed>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let started_at = time::OffsetDateTime::now_utc();
    let load_at_start = report::load_snapshot();
    let backstop_binary = std::fs::canonicalize(&args.backstop).with_context(|| {
        format!(
            "backstop binary {} not found; build it with `cargo build --release -p backstop`",
            args.backstop.display()
        )
    })?;
    let work = &args.work_dir;
    std::fs::create_dir_all(work)
        .with_context(|| format!("cannot create work folder {}", work.display()))?;
    let image_bytes = args.image_mib * MIB;

    check_free_space(work, args.data_mib * MIB, image_bytes)?;
    println!(
        "copying {} MiB of files from {:?}",
        args.data_mib, args.source
    );
    let tree = image::build_tree(&args.source, &work.join("tree"), args.data_mib * MIB)?;
    let image = work.join("vda.raw");
    let reference = work.join("reference.raw");
    println!("making the ext4 image {}", image.display());
    image::make_image(&tree, &image, image_bytes)?;
    let change = image::prepare_change(&tree, work, args.change_percent)?;
    if !args.keep_tree {
        remove_path(&tree.root)?;
    }

    println!("measuring digests, ciphers and zstd on one core");
    let primitives = primitives::measure(&image)?;

    println!("timing cp --sparse=always");
    remove_path(&reference)?;
    args.cache.prepare(&[&image])?;
    let copy = Tool::new("cp", &["--sparse=always"])
        .arg(&image)
        .arg(&reference)
        .run_timed(work)?;
    let copy_sync_seconds = sync_file(&reference)?;

    let blank = work.join("blank.raw");
    create_blank(&blank, image_bytes)?;
    println!("running Backstop");
    let apply_change = |target: &Path| image::apply_change(&change, target);
    let mut changed_blocks = 0;
    let plain = run_backstop(
        &args,
        &backstop_binary,
        &work.join("backstop"),
        [&image, &blank, &reference],
        false,
        Some((&apply_change, &mut changed_blocks)),
    )?;
    let encrypted = if args.no_encrypted {
        None
    } else {
        println!("running Backstop with an encrypted repository");
        Some(run_backstop(
            &args,
            &backstop_binary,
            &work.join("backstop-encrypted"),
            [&image, &blank, &reference],
            true,
            None,
        )?)
    };
    remove_path(&blank)?;

    let mut peer_results = Vec::new();
    if !args.no_peers {
        for peer in Peer::ALL {
            println!("running {}", peer.name());
            let folder = work.join(peer.name());
            remove_path(&folder)?;
            std::fs::create_dir_all(&folder)?;
            // Each peer starts from the original image and changes it.
            Tool::new("cp", &["--sparse=always"])
                .arg(&reference)
                .arg(&image)
                .run()?;
            let run = PeerRun {
                folder: &folder,
                image: &image,
                reference: &reference,
                cache: args.cache,
                change: &apply_change,
            };
            peer_results.push(peers::run_peer(peer, &run)?);
            remove_path(&folder)?;
        }
    }

    let results = Results {
        image_bytes,
        image_allocated_bytes: disk_usage(&reference)?,
        tree_files: tree.files.len(),
        tree_bytes: tree.bytes,
        change_files: change.files.len(),
        change_bytes: change.bytes,
        changed_blocks,
        total_blocks: image_bytes.div_ceil(4 * MIB),
        copy,
        copy_sync_seconds,
        plain,
        encrypted,
        peers: peer_results,
        primitives,
    };
    let context = report::Context {
        command: &args.command,
        started_at,
        load_at_start,
        load_at_end: report::load_snapshot(),
        cache: args.cache,
        sources: &args.source,
        backstop_binary: &backstop_binary,
        work_dir: work,
        change_percent: args.change_percent,
    };
    let mut markdown = report::render(&context, &results)?;
    // Notes on other runs, written by hand below a fixed heading, are kept.
    if let Ok(previous) = std::fs::read_to_string(&args.output) {
        if let Some(start) = previous.find(report::KEPT_SECTION) {
            markdown.push_str(&previous[start..]);
        }
    }
    std::fs::write(&args.output, &markdown)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!("{markdown}");
    println!("wrote {}", args.output.display());
    Ok(())
}

/// A change to apply to an image, and where to record how many 4 MiB blocks
/// it changed.
type ChangeStep<'a> = (&'a dyn Fn(&Path) -> Result<()>, &'a mut u64);

/// Runs the Backstop steps on `[image, blank, reference]`. With `change`,
/// it also backs up after the change and again without a change, then
/// restores differentially onto the changed image. The image matches the
/// original again at the end.
fn run_backstop(
    args: &Args,
    binary: &Path,
    folder: &Path,
    [image, blank, reference]: [&Path; 3],
    encrypted: bool,
    change: Option<ChangeStep<'_>>,
) -> Result<BackstopResult> {
    let instances = [(SOURCE_INSTANCE, image), (BLANK_INSTANCE, blank)];
    let mut deployment = Deployment::start(DeploymentSpec {
        binary,
        folder,
        instances: &instances,
        encrypted,
    })?;

    args.cache.prepare(&[image])?;
    let (full_backup, first_backup) = deployment.backup(SOURCE_INSTANCE)?;
    println!("  full backup: {:.2} s", full_backup.seconds);

    let mut changed_backup = None;
    let mut unchanged_backup = None;
    let mut changed_disk = false;
    if let Some((apply, changed_blocks)) = change {
        apply(image)?;
        *changed_blocks = count_changed_blocks(reference, image)?;
        changed_disk = true;
        args.cache.prepare(&[image])?;
        let (step, _) = deployment.backup(SOURCE_INSTANCE)?;
        println!("  backup after the change: {:.2} s", step.seconds);
        changed_backup = Some(step);
        args.cache.prepare(&[image])?;
        let (step, _) = deployment.backup(SOURCE_INSTANCE)?;
        println!("  backup of the unchanged disk: {:.2} s", step.seconds);
        unchanged_backup = Some(step);
    }

    create_blank(blank, std::fs::metadata(reference)?.len())?;
    let repository = deployment.repository_dir();
    args.cache.prepare(&[&repository])?;
    let full_restore = deployment.recover(&first_backup, BLANK_INSTANCE)?;
    println!("  full restore: {:.2} s", full_restore.seconds);
    assert_same_content(reference, deployment.disk_of(BLANK_INSTANCE)?)
        .context("the full restore differs from the original image")?;

    let mut differential_restore = None;
    if changed_disk {
        args.cache.prepare(&[&repository, image])?;
        let step = deployment.recover(&first_backup, SOURCE_INSTANCE)?;
        println!("  differential restore: {:.2} s", step.seconds);
        assert_same_content(reference, image)
            .context("the differential restore differs from the original image")?;
        differential_restore = Some(step);
    }

    let repository_bytes = disk_usage(&deployment.repository_dir())?;
    drop(deployment);
    if !args.keep_deployments {
        remove_path(folder)?;
    }
    Ok(BackstopResult {
        full_backup,
        changed_backup,
        unchanged_backup,
        full_restore,
        differential_restore,
        repository_bytes,
    })
}

/// Fails early when the work folder's file system has too little free
/// space. The estimate covers the tree, the image, its reference copy, the
/// largest repository, and restic's restore, which writes the whole image
/// without holes.
fn check_free_space(work: &Path, data_bytes: u64, image_bytes: u64) -> Result<()> {
    let output = Tool::new("df", &["--output=avail", "--block-size=1"])
        .arg(work)
        .run()?;
    let available: u64 = output
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .with_context(|| format!("cannot read the free space from df output {output:?}"))?;
    let needed = data_bytes * 4 + data_bytes / 2 + image_bytes;
    if available < needed {
        anyhow::bail!(
            "{} has {} MiB free, but the run needs about {} MiB; free space, choose another \
             --work-dir, or lower --data-mib and --image-mib",
            work.display(),
            available / MIB,
            needed / MIB
        );
    }
    Ok(())
}

/// Counts the 4 MiB blocks in which two images of equal size differ.
fn count_changed_blocks(left: &Path, right: &Path) -> Result<u64> {
    use std::io::Read;

    let mut left = std::fs::File::open(left)?;
    let mut right = std::fs::File::open(right)?;
    let mut left_buffer = vec![0u8; 4 * MIB as usize];
    let mut right_buffer = vec![0u8; 4 * MIB as usize];
    let mut changed = 0;
    loop {
        let left_len = read_full(&mut left, &mut left_buffer)?;
        let right_len = read_full(&mut right, &mut right_buffer)?;
        if left_len == 0 && right_len == 0 {
            return Ok(changed);
        }
        if left_buffer[..left_len] != right_buffer[..right_len] {
            changed += 1;
        }
    }

    fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> Result<usize> {
        let mut filled = 0;
        while filled < buffer.len() {
            let read = file.read(&mut buffer[filled..])?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        Ok(filled)
    }
}
