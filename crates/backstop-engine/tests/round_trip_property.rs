//! Property test: restoring a backup of a random image gives the image back,
//! for random data, random holes, small chunk sizes and random targets.

mod common;

use std::os::unix::fs::FileExt;

use backstop_engine::{BackupOptions, RestoreOptions};
use common::*;
use proptest::prelude::*;

/// One stretch of an image.
#[derive(Clone, Debug)]
enum Segment {
    /// Zero bytes, written as a hole (never written to the file).
    Hole(usize),
    /// Explicitly written zero bytes.
    Zeros(usize),
    /// One repeated byte, which makes equal chunks that deduplicate.
    Fill(u8, usize),
    /// Random bytes.
    Random(Vec<u8>),
}

fn segment() -> impl Strategy<Value = Segment> {
    prop_oneof![
        (1usize..40_000).prop_map(Segment::Hole),
        (1usize..20_000).prop_map(Segment::Zeros),
        (1u8..=255, 1usize..30_000).prop_map(|(byte, len)| Segment::Fill(byte, len)),
        proptest::collection::vec(any::<u8>(), 1..20_000).prop_map(Segment::Random),
    ]
}

/// What the restore target looks like before the restore.
#[derive(Clone, Debug)]
enum Target {
    Missing,
    /// A file of this length filled with 0xEE.
    Filled(usize),
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        Just(Target::Missing),
        (0usize..300_000).prop_map(Target::Filled),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn restore_of_backup_equals_image(
        segments in proptest::collection::vec(segment(), 0..12),
        chunk_size in prop_oneof![Just(512u32), Just(1000), Just(4096), Just(16384), Just(65536)],
        target in target(),
        max_chunks_in_flight in 1usize..6,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.raw");
        let file = std::fs::File::create(&image).unwrap();
        let mut offset = 0u64;
        for segment in &segments {
            let len = match segment {
                Segment::Hole(len) => *len,
                Segment::Zeros(len) => {
                    file.write_all_at(&vec![0u8; *len], offset).unwrap();
                    *len
                }
                Segment::Fill(byte, len) => {
                    file.write_all_at(&vec![*byte; *len], offset).unwrap();
                    *len
                }
                Segment::Random(bytes) => {
                    file.write_all_at(bytes, offset).unwrap();
                    bytes.len()
                }
            };
            offset += len as u64;
        }
        file.set_len(offset).unwrap();
        drop(file);

        let restored = dir.path().join("restored.raw");
        if let Target::Filled(len) = target {
            std::fs::write(&restored, vec![0xEEu8; len]).unwrap();
        }

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        runtime.block_on(async {
            let repository = create_repository(&dir.path().join("repo")).await;
            let options = BackupOptions {
                chunk_size,
                max_chunks_in_flight,
                parallelism: max_chunks_in_flight.min(3),
                batch_size: 4,
            };
            let backup = backup(&repository, &image, None, &options).await;
            prop_assert_eq!(backup.manifest.size_bytes, offset);

            let restore_options = RestoreOptions {
                truncate: true,
                max_chunks_in_flight,
                ..RestoreOptions::default()
            };
            restore(&repository, &backup.manifest, &restored, &restore_options).await;
            Ok(())
        })?;

        let expected = std::fs::read(&image).unwrap();
        let actual = std::fs::read(&restored).unwrap();
        prop_assert_eq!(expected.len(), actual.len());
        prop_assert!(expected == actual, "restored image differs from the original");
    }
}
