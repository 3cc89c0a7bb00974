//! Backup and restore of real disk images: ext4 images built from real
//! directory trees, sparse images and images of random data.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::Command;
use std::sync::Mutex;

use backstop_chunkstore::ChunkEntry;
use backstop_engine::{
    read_volumes, restore_disk, BackupOptions, CancellationToken, Error, NoProgress, Phase,
    Progress, RestoreOptions, TargetKind, DEFAULT_CHUNK_SIZE,
};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_image_round_trips_and_passes_fsck() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    write_tree(&tree, 1, 300);
    let image = dir.path().join("image.raw");
    make_ext4_image(&image, &tree, "64M");
    let repository = create_repository(&dir.path().join("repo")).await;

    let reports = Mutex::new(Vec::new());
    let record = |progress: Progress| reports.lock().unwrap().push(progress);
    let session = repository.start_session();
    let backup = backstop_engine::backup_disk(
        &session,
        "vda",
        &image,
        None,
        &BackupOptions::default(),
        &record,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    drop(session);

    let size = 64 * MIB;
    let stats = backup.stats;
    assert_eq!(backup.manifest.size_bytes, size);
    assert_eq!(backup.manifest.chunk_size, DEFAULT_CHUNK_SIZE);
    assert_eq!(backup.manifest.entries.len(), 16);
    assert_eq!(stats.data_bytes + stats.hole_bytes, size);
    assert!(stats.chunks_new > 0, "{stats:?}");
    assert!(
        stats.new_stored_bytes < stats.data_bytes,
        "no compression: {stats:?}"
    );
    let reports = reports.into_inner().unwrap();
    assert!(reports.len() >= 16, "{} progress reports", reports.len());
    assert!(reports.iter().all(|report| report.phase == Phase::Backup));
    assert!(reports
        .windows(2)
        .all(|pair| pair[0].processed_bytes <= pair[1].processed_bytes));
    assert_eq!(reports.last().unwrap().processed_bytes, size);

    let restored = dir.path().join("restored.raw");
    let options = RestoreOptions {
        verify: true,
        ..RestoreOptions::default()
    };
    let restore_stats = restore(&repository, &backup.manifest, &restored, &options).await;

    assert_same_content(&image, &restored);
    check_ext4(&restored);
    assert_eq!(restore_stats.bytes_written, stats.data_bytes);
    assert_eq!(restore_stats.bytes_identical, 0);
    assert_eq!(restore_stats.bytes_verified, size);
    assert_eq!(restore_stats.target_kind, TargetKind::File);
    assert_eq!(restore_stats.target_size_bytes, size);
    let volumes = read_volumes(&restored).unwrap();
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].name, "ext4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_backup_stores_only_changed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    write_tree(&tree, 2, 200);
    let image = dir.path().join("image.raw");
    make_ext4_image(&image, &tree, "64M");
    let repository = create_repository(&dir.path().join("repo")).await;
    let chunk_size = MIB;
    let options = backup_options(chunk_size);
    let first = backup(&repository, &image, None, &options).await;

    // Add one file of random data without mounting: debugfs writes it and
    // updates the bitmaps, the inode table and the root folder.
    let changed = dir.path().join("changed.raw");
    std::fs::copy(&image, &changed).unwrap();
    let new_file = dir.path().join("new-file.bin");
    std::fs::write(&new_file, {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(9);
        random_bytes(&mut rng, 300 * 1024)
    })
    .unwrap();
    let debugfs = require_tool("debugfs", "e2fsprogs");
    let write_request = format!("write {} new-file.bin", new_file.display());
    run(Command::new(debugfs)
        .args(["-w", "-R", &write_request])
        .arg(&changed));
    check_ext4(&changed);

    let old_bytes = std::fs::read(&image).unwrap();
    let new_bytes = std::fs::read(&changed).unwrap();
    let differing = differing_chunks(&old_bytes, &new_bytes, chunk_size);
    assert!(!differing.is_empty());
    assert!(
        differing.len() <= 8,
        "debugfs changed {} chunks",
        differing.len()
    );

    let second = backup(&repository, &changed, Some(&first.manifest), &options).await;

    let stats = second.stats;
    assert_eq!(
        stats.chunks_new,
        differing.len() as u64,
        "{stats:?}, changed chunks {differing:?}"
    );
    let data_chunks = second
        .manifest
        .entries
        .iter()
        .filter(|entry| matches!(entry, ChunkEntry::Chunk { .. }))
        .count() as u64;
    assert_eq!(stats.chunks_unchanged, data_chunks - differing.len() as u64);
    assert_eq!(stats.chunks_reused, stats.chunks_unchanged);

    // Without the previous manifest every chunk is found by the existence
    // query instead, and nothing new is stored.
    let third = backup(&repository, &changed, None, &options).await;
    assert_eq!(third.stats.chunks_new, 0);
    assert_eq!(third.stats.chunks_unchanged, 0);
    assert_eq!(third.stats.chunks_reused, data_chunks);
    assert_eq!(third.manifest, second.manifest);

    let restored = dir.path().join("restored.raw");
    restore(
        &repository,
        &second.manifest,
        &restored,
        &RestoreOptions::default(),
    )
    .await;
    assert_same_content(&changed, &restored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_restore_writes_only_changed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let chunk_size = MIB;
    let image = dir.path().join("image.raw");
    write_random_image(&image, 3, 32, chunk_size, &[4, 20]);
    let repository = create_repository(&dir.path().join("repo")).await;
    let backup = backup(&repository, &image, None, &backup_options(chunk_size)).await;

    // The target differs in three data chunks and has data in one hole.
    let target = dir.path().join("target.raw");
    std::fs::copy(&image, &target).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap();
    for index in [1u64, 9, 31] {
        file.write_all_at(b"changed bytes", index * chunk_size + 1000)
            .unwrap();
    }
    file.write_all_at(&[0xAB; 4096], 20 * chunk_size + 8192)
        .unwrap();
    drop(file);

    let stats = restore(
        &repository,
        &backup.manifest,
        &target,
        &RestoreOptions::default(),
    )
    .await;

    assert_same_content(&image, &target);
    assert_eq!(stats.chunks_fetched, 3);
    assert_eq!(stats.bytes_written, 3 * chunk_size);
    assert_eq!(stats.hole_bytes, 2 * chunk_size);
    assert_eq!(stats.hole_bytes_cleared, chunk_size);
    assert_eq!(stats.bytes_identical, 27 * chunk_size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_image_restores_to_sparse_file() {
    let dir = tempfile::tempdir().unwrap();
    let chunk_size = MIB;
    let size = 128 * MIB;
    let image = dir.path().join("sparse.raw");
    let file = std::fs::File::create(&image).unwrap();
    file.set_len(size).unwrap();
    for offset in [0, 70 * MIB + 12345, size - 5000] {
        file.write_all_at(&[0x5A; 5000], offset).unwrap();
    }
    drop(file);
    let repository = create_repository(&dir.path().join("repo")).await;

    let backup = backup(&repository, &image, None, &backup_options(chunk_size)).await;

    let stats = backup.stats;
    assert_eq!(stats.data_bytes, 3 * chunk_size, "{stats:?}");
    assert_eq!(stats.hole_bytes, size - 3 * chunk_size);
    assert!(
        stats.bytes_read <= 4 * chunk_size,
        "read {} bytes of holes that SEEK_DATA should skip",
        stats.bytes_read
    );
    // The three chunks hold the same bytes at different positions within
    // the chunk, so their digests differ.
    assert_eq!(stats.chunks_new, 3);

    let restored = dir.path().join("restored.raw");
    let restore_stats = restore(
        &repository,
        &backup.manifest,
        &restored,
        &RestoreOptions::default(),
    )
    .await;

    assert_same_content(&image, &restored);
    assert_eq!(restore_stats.hole_bytes_cleared, 0);
    let allocated = std::fs::metadata(&restored).unwrap().blocks() * 512;
    assert!(
        allocated <= 4 * chunk_size,
        "restored file has {allocated} bytes allocated for 3 data chunks"
    );

    // Restoring onto a fully written file punches the holes back out.
    let full = dir.path().join("full.raw");
    std::fs::write(&full, vec![0xFFu8; size as usize]).unwrap();
    let full_stats = restore(
        &repository,
        &backup.manifest,
        &full,
        &RestoreOptions::default(),
    )
    .await;
    assert_same_content(&image, &full);
    assert_eq!(full_stats.hole_bytes_cleared, size - 3 * chunk_size);
    let allocated = std::fs::metadata(&full).unwrap().blocks() * 512;
    assert!(
        allocated <= 4 * chunk_size,
        "holes were not punched: {allocated} bytes allocated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunk_fails_with_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let chunk_size = MIB;
    let image = dir.path().join("image.raw");
    write_random_image(&image, 5, 12, chunk_size, &[]);
    let repository_root = dir.path().join("repo");
    let repository = create_repository(&repository_root).await;
    let backup = backup(&repository, &image, None, &backup_options(chunk_size)).await;

    let damaged_index = 5;
    let digest = chunk_digest_at(&backup.manifest, damaged_index);
    let path = chunk_file(&repository_root, &digest);
    let mut stored = std::fs::read(&path).unwrap();
    let middle = stored.len() / 2;
    stored[middle] ^= 0x40;
    std::fs::write(&path, stored).unwrap();

    let target = dir.path().join("target.raw");
    let error = restore_disk(
        &repository,
        &backup.manifest,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();

    let offset = damaged_index as u64 * chunk_size;
    match &error {
        Error::DataLoss {
            disk,
            offset: error_offset,
            digest: error_digest,
            ..
        } => {
            assert_eq!(disk, "vda");
            assert_eq!(*error_offset, offset);
            assert_eq!(*error_digest, digest);
        }
        other => panic!("expected DataLoss, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains("`vda`"), "{message}");
    assert!(message.contains(&format!("offset {offset}")), "{message}");
    let restored = std::fs::read(&target).unwrap();
    let range = &restored[offset as usize..(offset + chunk_size) as usize];
    assert!(
        range.iter().all(|&byte| byte == 0),
        "the damaged range was written"
    );

    // A chunk deleted from the repository is data loss too.
    std::fs::remove_file(&path).unwrap();
    let error = restore_disk(
        &repository,
        &backup.manifest,
        &dir.path().join("second-target.raw"),
        &RestoreOptions::default(),
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, Error::DataLoss { offset: found, .. } if found == offset),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_cancellation_stops_within_one_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let chunk_size = 256 * 1024;
    let chunk_count = 40;
    let image = dir.path().join("image.raw");
    write_random_image(&image, 6, chunk_count, chunk_size, &[]);
    let repository = create_repository(&dir.path().join("repo")).await;
    let backup = backup(&repository, &image, None, &backup_options(chunk_size)).await;

    for max_chunks_in_flight in [1usize, 8] {
        let target = dir
            .path()
            .join(format!("target-{max_chunks_in_flight}.raw"));
        let cancel = CancellationToken::new();
        let cancelled_at = Mutex::new(None);
        let cancel_after_three = |progress: Progress| {
            if progress.processed_bytes >= 3 * chunk_size && !cancel.is_cancelled() {
                *cancelled_at.lock().unwrap() = Some(progress.processed_bytes);
                cancel.cancel();
            }
        };
        let options = RestoreOptions {
            max_chunks_in_flight,
            ..RestoreOptions::default()
        };

        let error = restore_disk(
            &repository,
            &backup.manifest,
            &target,
            &options,
            &cancel_after_three,
            &cancel,
        )
        .await
        .unwrap_err();

        let Error::Cancelled { processed } = error else {
            panic!("expected Cancelled, got {error:?}");
        };
        let cancelled_at = cancelled_at.lock().unwrap().unwrap();
        assert!(processed >= cancelled_at);
        let extra_chunks = (processed - cancelled_at) / chunk_size;
        assert!(
            extra_chunks < max_chunks_in_flight as u64,
            "{extra_chunks} chunks finished after cancellation with {max_chunks_in_flight} in flight"
        );
        assert_eq!(processed % chunk_size, 0, "stopped inside a chunk");
        let restored = std::fs::read(&target).unwrap();
        let original = std::fs::read(&image).unwrap();
        assert_eq!(
            restored[..processed as usize],
            original[..processed as usize]
        );

        // Resuming from the reported offset finishes the restore and writes
        // only the rest.
        let resume = RestoreOptions {
            resume_offset: processed,
            ..options
        };
        let stats = restore(&repository, &backup.manifest, &target, &resume).await;
        assert_same_content(&image, &target);
        assert_eq!(
            stats.bytes_written + stats.bytes_identical,
            chunk_count * chunk_size - processed
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_cancellation_stops_within_one_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let chunk_size = 256 * 1024;
    let image = dir.path().join("image.raw");
    write_random_image(&image, 7, 40, chunk_size, &[]);
    let repository = create_repository(&dir.path().join("repo")).await;
    let options = BackupOptions {
        chunk_size: chunk_size as u32,
        max_chunks_in_flight: 1,
        parallelism: 1,
        batch_size: 1,
    };
    let cancel = CancellationToken::new();
    let cancelled_at = Mutex::new(None);
    let cancel_after_three = |progress: Progress| {
        if progress.processed_bytes >= 3 * chunk_size && !cancel.is_cancelled() {
            *cancelled_at.lock().unwrap() = Some(progress.processed_bytes);
            cancel.cancel();
        }
    };
    let session = repository.start_session();

    let error = backstop_engine::backup_disk(
        &session,
        "vda",
        &image,
        None,
        &options,
        &cancel_after_three,
        &cancel,
    )
    .await
    .unwrap_err();

    let Error::Cancelled { processed } = error else {
        panic!("expected Cancelled, got {error:?}");
    };
    let cancelled_at = cancelled_at.lock().unwrap().unwrap();
    assert!(
        processed <= cancelled_at + chunk_size,
        "processed {processed} bytes after cancelling at {cancelled_at}"
    );
    assert!(repository.list_chunks().await.unwrap().len() <= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larger_file_target_is_kept_unless_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let chunk_size = MIB;
    let image = dir.path().join("image.raw");
    write_random_image(&image, 8, 4, chunk_size, &[2]);
    let repository = create_repository(&dir.path().join("repo")).await;
    let backup = backup(&repository, &image, None, &backup_options(chunk_size)).await;
    let target = dir.path().join("target.raw");
    std::fs::write(&target, vec![0x11u8; 6 * MIB as usize]).unwrap();

    let untruncated = restore(
        &repository,
        &backup.manifest,
        &target,
        &RestoreOptions::default(),
    )
    .await;

    assert_eq!(untruncated.target_size_bytes, 6 * MIB);
    let bytes = std::fs::read(&target).unwrap();
    assert_eq!(bytes.len() as u64, 6 * MIB);
    assert_eq!(
        bytes[..4 * MIB as usize],
        std::fs::read(&image).unwrap()[..]
    );
    assert!(bytes[4 * MIB as usize..].iter().all(|&byte| byte == 0x11));

    let options = RestoreOptions {
        truncate: true,
        ..RestoreOptions::default()
    };
    let truncated = restore(&repository, &backup.manifest, &target, &options).await;
    assert_eq!(truncated.target_size_bytes, 4 * MIB);
    assert_eq!(truncated.bytes_identical, 3 * MIB);
    assert_same_content(&image, &target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_repository_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let chunk_size = 512 * 1024;
    let image = dir.path().join("image.raw");
    write_random_image(&image, 10, 9, chunk_size, &[3]);
    let repository =
        create_encrypted_repository(&dir.path().join("repo"), &dir.path().join("repo.key")).await;

    let backup = backup(&repository, &image, None, &backup_options(chunk_size)).await;
    let target = dir.path().join("target.raw");
    let options = RestoreOptions {
        verify: true,
        ..RestoreOptions::default()
    };
    let first = restore(&repository, &backup.manifest, &target, &options).await;
    let second = restore(&repository, &backup.manifest, &target, &options).await;

    assert_same_content(&image, &target);
    assert_eq!(first.chunks_fetched, 8);
    assert_eq!(
        second.chunks_fetched, 0,
        "keyed digests did not match on the second restore"
    );
    assert_eq!(second.bytes_identical, 8 * chunk_size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_that_is_a_folder_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    write_random_image(&image, 11, 2, MIB, &[]);
    let repository = create_repository(&dir.path().join("repo")).await;
    let backup = backup(&repository, &image, None, &backup_options(MIB)).await;

    let error = restore_disk(
        &repository,
        &backup.manifest,
        dir.path(),
        &RestoreOptions::default(),
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();

    assert!(matches!(error, Error::InvalidTarget { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_disk_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("empty.raw");
    std::fs::write(&image, b"").unwrap();
    let repository = create_repository(&dir.path().join("repo")).await;

    let backup = backup(&repository, &image, None, &BackupOptions::default()).await;
    let target = dir.path().join("target.raw");
    let stats = restore(
        &repository,
        &backup.manifest,
        &target,
        &RestoreOptions::default(),
    )
    .await;

    assert!(backup.manifest.entries.is_empty());
    assert_eq!(stats.target_size_bytes, 0);
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 0);
}

#[test]
fn engine_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let dir = tempfile::tempdir().unwrap();
    let repository = runtime.block_on(create_repository(&dir.path().join("repo")));
    let session = repository.start_session();
    let manifest = backstop_chunkstore::DiskManifest::new("vda", 0, DEFAULT_CHUNK_SIZE);
    let cancel = CancellationToken::new();
    let options = BackupOptions::default();
    let restore_options = RestoreOptions::default();

    let backup = backstop_engine::backup_disk(
        &session,
        "vda",
        dir.path(),
        None,
        &options,
        &NoProgress,
        &cancel,
    );
    let restore = restore_disk(
        &repository,
        &manifest,
        dir.path(),
        &restore_options,
        &NoProgress,
        &cancel,
    );

    assert_send(&backup);
    assert_send(&restore);
}
