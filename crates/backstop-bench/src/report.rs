//! The Markdown report: machine, data, timings, ratios, memory, repository
//! sizes and the targets.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::backstop::StepResult;
use crate::peers::{Peer, PeerResult};
use crate::system::CacheMode;
use crate::{BackstopResult, Results, MIB};

/// Run facts that are not measurements.
pub struct Context<'a> {
    pub command: &'a str,
    pub started_at: time::OffsetDateTime,
    pub load_at_start: String,
    pub load_at_end: String,
    pub cache: CacheMode,
    pub sources: &'a [PathBuf],
    pub backstop_binary: &'a Path,
    pub work_dir: &'a Path,
    pub change_percent: f64,
}

/// Returns the load averages and the number of cargo and rustc processes,
/// which show whether other work competed with the run.
pub fn load_snapshot() -> String {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let averages: Vec<&str> = load.split_whitespace().take(3).collect();
    let mut builds = 0;
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if matches!(comm.trim(), "cargo" | "rustc") {
                builds += 1;
            }
        }
    }
    format!(
        "load average {} (1, 5, 15 min), {builds} cargo/rustc processes",
        averages.join(" ")
    )
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_owned()
}

fn command_output(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program).args(args).output();
    match output {
        Ok(output) => {
            let stdout = first_line(&String::from_utf8_lossy(&output.stdout));
            if stdout.is_empty() {
                first_line(&String::from_utf8_lossy(&output.stderr))
            } else {
                stdout
            }
        }
        Err(_) => "not found".to_owned(),
    }
}

fn machine_lines(context: &Context<'_>) -> Vec<(String, String)> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);

    let os = fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map(|name| name.trim_matches('"').to_owned())
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();

    let work = context.work_dir.display().to_string();
    // `df` prints a header line first.
    let device = std::process::Command::new("df")
        .args(["--output=source,fstype", &work])
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .nth(1)
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();

    let mut lines = vec![
        ("CPU".to_owned(), format!("{cpu}, {cores} cores visible")),
        (
            "RAM".to_owned(),
            format!("{:.1} GiB", ram_kib as f64 / 1024.0 / 1024.0),
        ),
        ("disk".to_owned(), format!("{device}, work folder {work}")),
        ("OS".to_owned(), format!("{os}, kernel {}", kernel.trim())),
        (
            "backstop".to_owned(),
            command_output(
                &context.backstop_binary.display().to_string(),
                &["--version"],
            ),
        ),
        ("rustc".to_owned(), command_output("rustc", &["--version"])),
        ("mkfs.ext4".to_owned(), command_output("mkfs.ext4", &["-V"])),
    ];
    for peer in Peer::ALL {
        let version = peer.version().unwrap_or_else(|error| error.to_string());
        lines.push((peer.name().to_owned(), version));
    }
    lines
}

fn seconds(value: f64) -> String {
    format!("{value:.2}")
}

fn ratio(backstop: f64, other: f64) -> String {
    if other <= 0.0 {
        return "n/a".to_owned();
    }
    format!("{:.2}", backstop / other)
}

fn mib(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

fn size(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / MIB as f64)
}

fn rate(bytes: u64, seconds: f64) -> String {
    format!("{:.0}", bytes as f64 / MIB as f64 / seconds)
}

/// One row of the timing table: a step with Backstop's time and each
/// peer's.
struct Row<'a> {
    step: &'a str,
    backstop: Option<f64>,
    copy: Option<f64>,
    peers: Vec<Option<f64>>,
}

fn peer_times(results: &Results, pick: impl Fn(&PeerResult) -> f64) -> Vec<Option<f64>> {
    Peer::ALL
        .iter()
        .map(|peer| {
            results
                .peers
                .iter()
                .find(|result| result.peer == *peer)
                .map(&pick)
        })
        .collect()
}

/// Renders the report.
/// Heading of a hand-written last section of the report, which a new run
/// keeps instead of replacing.
pub const KEPT_SECTION: &str = "\n## Other runs\n";

pub fn render(context: &Context<'_>, results: &Results) -> Result<String> {
    let mut out = String::new();
    let date = context
        .started_at
        .format(&time::format_description::well_known::Rfc3339)?;
    let plain = &results.plain;

    writeln!(out, "# Benchmarks\n")?;
    writeln!(
        out,
        "Backstop's backup and restore of one ext4 disk image, timed through the release \
         `backstop server` and two `backstop agent` processes over the public gRPC API \
         (`PolicyService.Execute` for backups, `BackupService.StartRecovery` for restores, \
         each timed until `OperationService.Get` returns `done`, polled every 20 ms), next \
         to restic, borg and casync on the same image in the same run. Each step ran once.\n"
    )?;
    writeln!(out, "Re-run with `{}` (as root).\n", context.command)?;
    writeln!(out, "## Run of {date}\n")?;

    writeln!(out, "| | |\n|---|---|")?;
    for (name, value) in machine_lines(context) {
        writeln!(out, "| {name} | {value} |")?;
    }
    writeln!(out, "| load at start | {} |", context.load_at_start)?;
    writeln!(out, "| load at end | {} |", context.load_at_end)?;
    writeln!(out, "| page cache | {} |", context.cache.describe())?;
    writeln!(out)?;

    let sources: Vec<String> = context
        .sources
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    writeln!(out, "Data: a sparse {} raw image holding an ext4 file system made with `mkfs.ext4 -d` from \
         {} files ({}) copied in sorted order from {} on this machine; {} of the image are allocated. \
         The change rewrites {} files ({:.1}% of the files, {}), a run of consecutive files in path order \
         from the middle of the list, each with every byte XOR 0xA5, by `debugfs -w` (`rm`, then `write` \
         under the same path) on the image; `e2fsck -fn` passes afterwards. It changes {} of the {} 4 MiB blocks \
         of the image.\n",
        size(results.image_bytes),
        results.tree_files,
        size(results.tree_bytes),
        sources.join(" and "),
        size(results.image_allocated_bytes),
        results.change_files,
        context.change_percent,
        size(results.change_bytes),
        results.changed_blocks,
        results.total_blocks,
    )?;

    writeln!(out, "### Time in seconds\n")?;
    let mut rows = vec![
        Row {
            step: "full backup",
            backstop: Some(plain.full_backup.seconds),
            copy: None,
            peers: peer_times(results, |peer| peer.full_backup.seconds),
        },
        Row {
            step: "backup after the 1% change",
            backstop: plain.changed_backup.map(|step| step.seconds),
            copy: None,
            peers: peer_times(results, |peer| peer.changed_backup.seconds),
        },
        Row {
            step: "backup of the unchanged disk",
            backstop: plain.unchanged_backup.map(|step| step.seconds),
            copy: None,
            peers: peer_times(results, |peer| peer.unchanged_backup.seconds),
        },
        Row {
            step: "full restore to a blank file, synced",
            backstop: Some(plain.full_restore.seconds),
            copy: Some(results.copy.seconds + results.copy_sync_seconds),
            peers: peer_times(results, |peer| {
                peer.restore.seconds + peer.restore_sync_seconds
            }),
        },
        Row {
            step: "full restore, without the final sync",
            backstop: None,
            copy: Some(results.copy.seconds),
            peers: peer_times(results, |peer| peer.restore.seconds),
        },
        Row {
            step: "differential restore onto the 1%-changed disk",
            backstop: plain.differential_restore.map(|step| step.seconds),
            copy: None,
            peers: vec![None; Peer::ALL.len()],
        },
    ];
    if let Some(encrypted) = &results.encrypted {
        rows.push(Row {
            step: "full backup, encrypted repository",
            backstop: Some(encrypted.full_backup.seconds),
            copy: None,
            peers: peer_times(results, |peer| peer.full_backup.seconds),
        });
        rows.push(Row {
            step: "full restore, encrypted repository, synced",
            backstop: Some(encrypted.full_restore.seconds),
            copy: Some(results.copy.seconds + results.copy_sync_seconds),
            peers: peer_times(results, |peer| {
                peer.restore.seconds + peer.restore_sync_seconds
            }),
        });
    }

    let names: Vec<&str> = Peer::ALL.iter().map(|peer| peer.name()).collect();
    writeln!(
        out,
        "| step | Backstop | Backstop MiB/s of disk size | cp --sparse=always | {} | {} |",
        names.join(" | "),
        names
            .iter()
            .map(|name| format!("Backstop / {name}"))
            .collect::<Vec<_>>()
            .join(" | ")
    )?;
    writeln!(
        out,
        "|---|---:|---:|---:|{}",
        "---:|".repeat(names.len() * 2)
    )?;
    for row in &rows {
        let cell = |value: Option<f64>| value.map_or("".to_owned(), seconds);
        let peers: Vec<String> = row.peers.iter().map(|value| cell(*value)).collect();
        let ratios: Vec<String> = row
            .peers
            .iter()
            .map(|peer| match (row.backstop, peer) {
                (Some(backstop), Some(peer)) => ratio(backstop, *peer),
                _ => "".to_owned(),
            })
            .collect();
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.step,
            cell(row.backstop),
            row.backstop
                .map_or("".to_owned(), |value| rate(results.image_bytes, value)),
            cell(row.copy),
            peers.join(" | "),
            ratios.join(" | ")
        )?;
    }
    writeln!(
        out,
        "\nA ratio below 1 means Backstop took less time. Backstop's restore returns only after \
         `fsync` of the target, so the synced rows add `sync FILE` to cp and the peers. The \
         encrypted rows repeat the peers' figures of the same step, which ran once. \
         MiB/s is the disk size (holes included) divided by the time.\n"
    )?;

    writeln!(out, "### Peak memory in MiB\n")?;
    writeln!(out, "Backstop: `VmHWM` of each process, reset through `/proc/PID/clear_refs` before each step. Peers: maximum RSS from GNU time.\n")?;
    writeln!(
        out,
        "| step | Backstop server | Backstop agent | {} |",
        names.join(" | ")
    )?;
    writeln!(out, "|---|---:|---:|{}", "---:|".repeat(names.len()))?;
    let memory_row = |out: &mut String,
                      step: &str,
                      backstop: Option<StepResult>,
                      pick: &dyn Fn(&PeerResult) -> Option<u64>|
     -> Result<()> {
        let peers: Vec<String> = Peer::ALL
            .iter()
            .map(|peer| {
                results
                    .peers
                    .iter()
                    .find(|result| result.peer == *peer)
                    .and_then(pick)
                    .map_or("".to_owned(), mib)
            })
            .collect();
        let (server, agent) = backstop.map_or(("".to_owned(), "".to_owned()), |step| {
            (mib(step.server_peak_kib), mib(step.agent_peak_kib))
        });
        writeln!(
            out,
            "| {step} | {server} | {agent} | {} |",
            peers.join(" | ")
        )?;
        Ok(())
    };
    memory_row(&mut out, "full backup", Some(plain.full_backup), &|peer| {
        Some(peer.full_backup.max_rss_kib)
    })?;
    memory_row(
        &mut out,
        "backup after the change",
        plain.changed_backup,
        &|peer| Some(peer.changed_backup.max_rss_kib),
    )?;
    memory_row(
        &mut out,
        "backup of the unchanged disk",
        plain.unchanged_backup,
        &|peer| Some(peer.unchanged_backup.max_rss_kib),
    )?;
    memory_row(
        &mut out,
        "full restore",
        Some(plain.full_restore),
        &|peer| Some(peer.restore.max_rss_kib),
    )?;
    memory_row(
        &mut out,
        "differential restore",
        plain.differential_restore,
        &|_| None,
    )?;
    if let Some(encrypted) = &results.encrypted {
        memory_row(
            &mut out,
            "full backup, encrypted",
            Some(encrypted.full_backup),
            &|peer| Some(peer.full_backup.max_rss_kib),
        )?;
        memory_row(
            &mut out,
            "full restore, encrypted",
            Some(encrypted.full_restore),
            &|peer| Some(peer.restore.max_rss_kib),
        )?;
    }
    writeln!(
        out,
        "\n`cp --sparse=always`: {} MiB.\n",
        mib(results.copy.max_rss_kib)
    )?;

    writeln!(out, "### Repository size on disk after all backups\n")?;
    writeln!(out, "| tool | size | backups |\n|---|---:|---|")?;
    writeln!(
        out,
        "| Backstop | {} | full, after the change, unchanged |",
        size(plain.repository_bytes)
    )?;
    if let Some(encrypted) = &results.encrypted {
        writeln!(
            out,
            "| Backstop, encrypted | {} | full |",
            size(encrypted.repository_bytes)
        )?;
    }
    for peer in &results.peers {
        writeln!(
            out,
            "| {} | {} | full, after the change, unchanged |",
            peer.peer.name(),
            size(peer.repository_bytes)
        )?;
    }
    writeln!(out)?;

    render_targets(&mut out, results)?;

    writeln!(out, "### Digests, ciphers and zstd on one core\n")?;
    writeln!(
        out,
        "Each primitive runs on 4 MiB pieces of the first 64 MiB of the image's data, \
         one thread, for at least a second. MB/s counts input bytes (10^6).\n"
    )?;
    writeln!(out, "| primitive | in Backstop | MB/s |\n|---|---|---:|")?;
    for speed in &results.primitives {
        writeln!(
            out,
            "| {} | {} | {:.0} |",
            speed.name, speed.role, speed.megabytes_per_second
        )?;
    }
    writeln!(out)?;

    writeln!(out, "### Settings and commands\n")?;
    writeln!(out, "- Backstop: policy with `compression = NORMAL` (zstd level 1), 4 MiB chunks, unencrypted repository in the server's data folder; the encrypted rows use `repository.key_file` (AES-256-GCM, keyed BLAKE3).")?;
    for peer in &results.peers {
        writeln!(out, "- {}: {}.", peer.peer.name(), peer.peer.settings())?;
        for command in &peer.commands {
            writeln!(out, "  - `{command}`")?;
        }
    }
    writeln!(out)?;
    Ok(out)
}

fn render_targets(out: &mut String, results: &Results) -> Result<()> {
    let plain: &BackstopResult = &results.plain;
    let restore = plain.full_restore.seconds;
    let copy_synced = results.copy.seconds + results.copy_sync_seconds;
    let peer = |name: Peer| results.peers.iter().find(|result| result.peer == name);
    let mut targets: Vec<(String, String, bool)> = Vec::new();

    targets.push((
        "full restore within 2x of cp --sparse=always (both synced)".to_owned(),
        format!("{:.2}x", restore / copy_synced),
        restore <= 2.0 * copy_synced,
    ));
    for name in [Peer::Restic, Peer::Borg] {
        if let Some(result) = peer(name) {
            let theirs = result.restore.seconds + result.restore_sync_seconds;
            targets.push((
                format!(
                    "full restore at least 5x faster than {} restore",
                    name.name()
                ),
                format!("{:.1}x", theirs / restore),
                theirs >= 5.0 * restore,
            ));
        }
    }
    if let Some(differential) = plain.differential_restore {
        targets.push((
            "differential restore at least 5x faster than a full restore".to_owned(),
            format!("{:.1}x", restore / differential.seconds),
            restore >= 5.0 * differential.seconds,
        ));
    }
    if let Some(result) = peer(Peer::Restic) {
        targets.push((
            "full backup at least 2x faster than restic backup".to_owned(),
            format!(
                "{:.1}x",
                result.full_backup.seconds / plain.full_backup.seconds
            ),
            result.full_backup.seconds >= 2.0 * plain.full_backup.seconds,
        ));
    }
    if let Some(unchanged) = plain.unchanged_backup {
        let rate = results.image_bytes as f64 / unchanged.seconds / 1e9;
        targets.push((
            "backup of an unchanged disk at 1 GB/s of disk size or more".to_owned(),
            format!("{rate:.2} GB/s"),
            rate >= 1.0,
        ));
    }
    let mut steps = vec![
        Some(plain.full_backup),
        plain.changed_backup,
        plain.unchanged_backup,
        Some(plain.full_restore),
        plain.differential_restore,
    ];
    if let Some(encrypted) = &results.encrypted {
        steps.push(Some(encrypted.full_backup));
        steps.push(Some(encrypted.full_restore));
    }
    let steps: Vec<StepResult> = steps.into_iter().flatten().collect();
    let server_peak = steps
        .iter()
        .map(|step| step.server_peak_kib)
        .max()
        .unwrap_or(0);
    let agent_peak = steps
        .iter()
        .map(|step| step.agent_peak_kib)
        .max()
        .unwrap_or(0);
    targets.push((
        "server peak memory below 256 MiB".to_owned(),
        format!("{} MiB", mib(server_peak)),
        server_peak < 256 * 1024,
    ));
    targets.push((
        "agent peak memory below 256 MiB".to_owned(),
        format!("{} MiB", mib(agent_peak)),
        agent_peak < 256 * 1024,
    ));

    writeln!(out, "### Targets\n")?;
    writeln!(out, "| target | measured | met |\n|---|---:|---|")?;
    for (target, measured, met) in targets {
        writeln!(
            out,
            "| {target} | {measured} | {} |",
            if met { "yes" } else { "no" }
        )?;
    }
    writeln!(out)?;

    // A restore writes the image's data like cp does, so cp's synced time
    // bounds how much faster than a peer any restore can be on this disk.
    let ceilings: Vec<String> = [Peer::Restic, Peer::Borg]
        .into_iter()
        .filter_map(peer)
        .map(|result| {
            let theirs = result.restore.seconds + result.restore_sync_seconds;
            format!(
                "{} {:.2} s, so at most {:.1}x",
                result.peer.name(),
                theirs,
                theirs / copy_synced
            )
        })
        .collect();
    if !ceilings.is_empty() {
        writeln!(
            out,
            "A full restore writes the same {} MiB that `cp --sparse=always` writes, so \
             no restore here can beat cp's {copy_synced:.2} s (synced). Against the \
             peers' synced restores that caps the speed-up: {}.\n",
            mib(results.image_allocated_bytes / 1024),
            ceilings.join("; ")
        )?;
    }
    Ok(())
}
