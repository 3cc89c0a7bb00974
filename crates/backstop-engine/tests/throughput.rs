//! Rough throughput of backup and restore on a 1 GiB image, printed rather
//! than asserted. Ignored by default because it writes several GiB:
//!
//! ```text
//! cargo test -p backstop-engine --release --test throughput -- --ignored --nocapture
//! ```
//!
//! The image and repository live in the system's temporary folder, so reads
//! mostly come from the page cache and the figures measure CPU work
//! (hashing, zstd, copies) and fsyncs more than the disk.

mod common;

use std::os::unix::fs::FileExt;
use std::time::Instant;

use backstop_engine::{BackupOptions, RestoreOptions};
use common::*;
use rand::SeedableRng;

/// 1 GiB: a quarter random bytes, a quarter compressible text, a quarter
/// repeated 4 MiB blocks and a quarter holes, in 16 MiB stripes.
fn write_mixed_image(path: &std::path::Path) -> u64 {
    let size = 1024 * MIB;
    let stripe = 16 * MIB;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let file = std::fs::File::create(path).unwrap();
    file.set_len(size).unwrap();
    let repeated = random_bytes(&mut rng, 4 * MIB as usize);
    for (index, offset) in (0..size).step_by(stripe as usize).enumerate() {
        let data = match index % 4 {
            0 => random_bytes(&mut rng, stripe as usize),
            1 => {
                let line = format!("log line {index}: request served in 12 ms\n");
                let mut text = line.repeat(stripe as usize / line.len() + 1).into_bytes();
                text.truncate(stripe as usize);
                text
            }
            2 => repeated.repeat(4),
            _ => continue,
        };
        file.write_all_at(&data, offset).unwrap();
    }
    size
}

fn report(label: &str, bytes: u64, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    let rate = bytes as f64 / MIB as f64 / seconds;
    println!("{label}: {bytes} bytes in {seconds:.2} s, {rate:.0} MiB/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes several GiB; run by hand to measure throughput"]
async fn backup_and_restore_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    let size = write_mixed_image(&image);
    let repository = create_repository(&dir.path().join("repo")).await;
    let options = BackupOptions::default();

    let started = Instant::now();
    let first = backup(&repository, &image, None, &options).await;
    report("first backup (new chunks)", size, started);
    println!("  {:?}", first.stats);

    let started = Instant::now();
    let second = backup(&repository, &image, None, &options).await;
    report("second backup (existence queries)", size, started);

    let started = Instant::now();
    backup(&repository, &image, Some(&second.manifest), &options).await;
    report("third backup (previous manifest)", size, started);

    let target = dir.path().join("restored.raw");
    let started = Instant::now();
    let stats = restore(
        &repository,
        &first.manifest,
        &target,
        &RestoreOptions::default(),
    )
    .await;
    report("restore to a new file", size, started);
    println!("  {stats:?}");

    let started = Instant::now();
    let stats = restore(
        &repository,
        &first.manifest,
        &target,
        &RestoreOptions::default(),
    )
    .await;
    report("differential restore onto an identical file", size, started);
    println!("  {stats:?}");

    assert_same_content(&image, &target);
}
