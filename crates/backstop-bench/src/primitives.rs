//! Single-core speed of the building blocks a backup and a restore spend
//! their CPU time in: the chunk digest, the cipher and zstd, each next to
//! the alternatives Backstop could have used, on real data from the image.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use anyhow::{bail, Context, Result};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sha2::Digest;

/// Size of each piece a primitive works on, Backstop's default chunk size.
const PIECE: usize = 4 * 1024 * 1024;

/// Bytes of the image's data that the measurements run over.
const SAMPLE: usize = 64 * 1024 * 1024;

/// Shortest time each primitive is run for.
const MIN_DURATION: Duration = Duration::from_secs(1);

/// Speed of one primitive.
#[derive(Clone, Debug)]
pub struct Speed {
    pub name: &'static str,
    /// Whether Backstop uses it, and for what.
    pub role: &'static str,
    pub megabytes_per_second: f64,
}

/// Measures every primitive on data read from `image`.
pub fn measure(image: &Path) -> Result<Vec<Speed>> {
    let sample = read_sample(image)?;
    let pieces: Vec<&[u8]> = sample.chunks(PIECE).collect();
    let key = [7u8; 32];
    let nonce = [9u8; 12];
    let ring_key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &key)
            .map_err(|_| anyhow::anyhow!("ring rejected the key"))?,
    );
    let rust_key = aes_gcm::Aes256Gcm::new_from_slice(&key)?;
    let frames: Vec<Vec<u8>> = pieces
        .iter()
        .map(|piece| zstd::bulk::compress(piece, 1))
        .collect::<std::io::Result<_>>()?;
    let mut scratch = vec![0u8; PIECE];
    let mut level1_compressor = zstd::bulk::Compressor::new(1)?;
    let mut level3_compressor = zstd::bulk::Compressor::new(3)?;
    let mut decompressor = zstd::bulk::Decompressor::new()?;

    let mut speeds = Vec::new();
    let mut record = |name, role, work: &mut dyn FnMut(usize) -> Result<()>| -> Result<()> {
        let megabytes_per_second = throughput(pieces.len(), work)?;
        speeds.push(Speed {
            name,
            role,
            megabytes_per_second,
        });
        Ok(())
    };
    record(
        "BLAKE3 (blake3 crate)",
        "chunk digest of unencrypted repositories",
        &mut |i| {
            std::hint::black_box(blake3::hash(pieces[i]));
            Ok(())
        },
    )?;
    record(
        "keyed BLAKE3 (blake3 crate)",
        "chunk digest of encrypted repositories",
        &mut |i| {
            std::hint::black_box(blake3::keyed_hash(&key, pieces[i]));
            Ok(())
        },
    )?;
    record("SHA-256 (ring)", "not used", &mut |i| {
        std::hint::black_box(ring::digest::digest(&ring::digest::SHA256, pieces[i]));
        Ok(())
    })?;
    record("SHA-256 (sha2 crate)", "not used", &mut |i| {
        std::hint::black_box(sha2::Sha256::digest(pieces[i]));
        Ok(())
    })?;
    record(
        "AES-256-GCM seal (ring)",
        "chunk cipher of encrypted repositories",
        &mut |i| {
            scratch[..pieces[i].len()].copy_from_slice(pieces[i]);
            let _tag = ring_key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut scratch[..pieces[i].len()],
                )
                .map_err(|_| anyhow::anyhow!("ring failed to seal"))?;
            std::hint::black_box(&scratch);
            Ok(())
        },
    )?;
    record(
        "AES-256-GCM seal (aes-gcm crate, pure Rust)",
        "not used",
        &mut |i| {
            scratch[..pieces[i].len()].copy_from_slice(pieces[i]);
            let _tag = rust_key
                .encrypt_in_place_detached(
                    aes_gcm::Nonce::from_slice(&nonce),
                    b"",
                    &mut scratch[..pieces[i].len()],
                )
                .map_err(|_| anyhow::anyhow!("aes-gcm failed to seal"))?;
            std::hint::black_box(&scratch);
            Ok(())
        },
    )?;
    record("zstd level 1 compression", "compression NORMAL", &mut |i| {
        std::hint::black_box(level1_compressor.compress(pieces[i])?);
        Ok(())
    })?;
    record(
        "zstd level 3 compression",
        "not used (NORMAL before)",
        &mut |i| {
            std::hint::black_box(level3_compressor.compress(pieces[i])?);
            Ok(())
        },
    )?;
    record(
        "zstd decompression",
        "every restore of a compressed chunk",
        &mut |i| {
            let written = decompressor.decompress_to_buffer(&frames[i], &mut scratch)?;
            std::hint::black_box(written);
            Ok(())
        },
    )?;
    Ok(speeds)
}

/// Runs `work` over the pieces, round after round, for at least
/// [`MIN_DURATION`], and returns MB (10^6 bytes) of input per second.
fn throughput(pieces: usize, work: &mut dyn FnMut(usize) -> Result<()>) -> Result<f64> {
    let started = Instant::now();
    let mut processed = 0u64;
    while started.elapsed() < MIN_DURATION {
        for index in 0..pieces {
            work(index)?;
            processed += PIECE as u64;
        }
    }
    Ok(processed as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// Reads the first [`SAMPLE`] bytes of the image's 4 MiB blocks that are
/// not all zeros.
fn read_sample(image: &Path) -> Result<Vec<u8>> {
    let file = File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    let size = file.metadata()?.len();
    let mut sample = Vec::with_capacity(SAMPLE);
    let mut block = vec![0u8; PIECE];
    let mut offset = 0;
    while sample.len() < SAMPLE && offset + PIECE as u64 <= size {
        file.read_exact_at(&mut block, offset)?;
        if block.iter().any(|&byte| byte != 0) {
            sample.extend_from_slice(&block);
        }
        offset += PIECE as u64;
    }
    if sample.len() < SAMPLE {
        bail!(
            "{} has only {} MiB of data, expected at least {} MiB",
            image.display(),
            sample.len() >> 20,
            SAMPLE >> 20
        );
    }
    Ok(sample)
}
