//! The stored form of chunks and manifests: a 16-byte header, then the
//! content, zstd-compressed and optionally sealed with AES-256-GCM.
//!
//! Layout of a stored object (integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic: `BSCK` for a chunk, `BSMF` for a manifest |
//! | 1 | format version, currently 1 |
//! | 1 | flags: bit 0 = zstd-compressed, bit 1 = AES-256-GCM; other bits 0 |
//! | 2 | reserved, 0 |
//! | 8 | length of the uncompressed content |
//! | 12 | nonce, only when encrypted |
//! | n | content: zstd frame or raw bytes, encrypted when bit 1 is set |
//! | 16 | AES-GCM tag, only when encrypted |
//!
//! The associated data of the AEAD is a context (the chunk digest, or the
//! manifest id) followed by the 16 header bytes. So a sealed object cannot be
//! moved to another name, and its flags and length cannot be changed, without
//! failing the tag check.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::digest::{ChunkDigest, ChunkHasher};
use crate::error::{Error, Result};

/// Maximum chunk length in bytes (64 MiB). Decoding rejects a header that
/// claims more, so a damaged length field cannot make the reader allocate
/// gigabytes.
pub const MAX_CHUNK_LEN: usize = 64 * 1024 * 1024;

/// Maximum manifest length in bytes (1 GiB) before compression.
pub const MAX_MANIFEST_LEN: usize = 1024 * 1024 * 1024;

const HEADER_LEN: usize = 16;
const TAG_LEN: usize = 16;
const FORMAT_VERSION: u8 = 1;
const FLAG_ZSTD: u8 = 1;
const FLAG_AES_256_GCM: u8 = 2;
const KNOWN_FLAGS: u8 = FLAG_ZSTD | FLAG_AES_256_GCM;

/// zstd compression setting for new chunks and manifests.
///
/// The level is not stored: the decoder needs only the header's zstd flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Store content uncompressed.
    Off,
    /// zstd level 1: fast enough that a backup is seldom held up by it.
    /// On the benchmark machine it compressed about 1.8 times as fast as
    /// level 3, zstd's own default, for output about 10% larger.
    #[default]
    Normal,
    /// zstd level 9: slower than `Normal`, for a smaller output.
    High,
    /// zstd level 19: much slower, for data written once and kept long.
    Max,
}

impl Compression {
    /// Returns the zstd level, or `None` for [`Compression::Off`].
    pub const fn zstd_level(self) -> Option<i32> {
        match self {
            Compression::Off => None,
            Compression::Normal => Some(1),
            Compression::High => Some(9),
            Compression::Max => Some(19),
        }
    }
}

/// Returns true when every byte of `data` is zero, or `data` is empty.
///
/// Callers record such ranges as holes: the repository rejects them.
pub fn is_zero(data: &[u8]) -> bool {
    // Each 64-byte block is compared as eight u64 words so that the compiler
    // can use wide registers. The loop still stops at the first non-zero block.
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        let mut combined = 0u64;
        for word in block.chunks_exact(8) {
            combined |= u64::from_ne_bytes(word.try_into().expect("8-byte word"));
        }
        if combined != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&byte| byte == 0)
}

/// Kind of stored object, which selects the header magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ObjectKind {
    Chunk,
    Manifest,
}

impl ObjectKind {
    const fn magic(self) -> [u8; 4] {
        match self {
            ObjectKind::Chunk => *b"BSCK",
            ObjectKind::Manifest => *b"BSMF",
        }
    }
}

thread_local! {
    // One zstd context per thread, reused across chunks, because creating
    // one allocates and initializes its working memory each time.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Encoder and decoder for one repository's chunks and manifests: digest,
/// compression level and, when encrypted, the AES-256-GCM data key.
#[derive(Clone)]
pub(crate) struct ChunkCodec {
    hasher: ChunkHasher,
    compression: Compression,
    cipher: Option<Arc<LessSafeKey>>,
    random: SystemRandom,
}

impl ChunkCodec {
    /// Creates a codec. `data_key` enables encryption.
    pub(crate) fn new(
        hasher: ChunkHasher,
        compression: Compression,
        data_key: Option<&[u8; 32]>,
    ) -> Result<Self> {
        let cipher = match data_key {
            Some(key) => {
                let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| Error::Crypto {
                    action: "set up the AES-256-GCM data key",
                    reason: "ring rejected the key".to_owned(),
                })?;
                Some(Arc::new(LessSafeKey::new(unbound)))
            }
            None => None,
        };
        Ok(Self {
            hasher,
            compression,
            cipher,
            random: SystemRandom::new(),
        })
    }

    pub(crate) fn hasher(&self) -> &ChunkHasher {
        &self.hasher
    }

    /// Returns a codec with the same keys that compresses at another level.
    pub(crate) fn with_compression(&self, compression: Compression) -> Self {
        Self {
            hasher: self.hasher.clone(),
            compression,
            cipher: self.cipher.clone(),
            random: SystemRandom::new(),
        }
    }

    pub(crate) fn compression(&self) -> Compression {
        self.compression
    }

    /// Encodes a chunk whose digest the caller has computed with this
    /// codec's hasher.
    pub(crate) fn encode_chunk(&self, digest: &ChunkDigest, data: &[u8]) -> Result<Vec<u8>> {
        if data.len() > MAX_CHUNK_LEN {
            return Err(Error::ChunkTooLarge {
                len: data.len(),
                max: MAX_CHUNK_LEN,
            });
        }
        if is_zero(data) {
            return Err(Error::ZeroChunk { len: data.len() });
        }
        self.seal(ObjectKind::Chunk, digest.as_bytes(), data)
    }

    /// Decodes a stored chunk and checks that its content has `digest`.
    /// Returns the reason on any mismatch.
    pub(crate) fn decode_chunk(
        &self,
        digest: &ChunkDigest,
        stored: &[u8],
    ) -> Result<Vec<u8>, String> {
        let data = self.open(ObjectKind::Chunk, digest.as_bytes(), stored, MAX_CHUNK_LEN)?;
        let actual = self.hasher.digest(&data);
        if actual != *digest {
            return Err(format!("content digest is {actual}"));
        }
        Ok(data)
    }

    /// Decodes a chunk as [`ChunkCodec::decode_chunk`] does, but into `out`,
    /// which must have the chunk's length.
    pub(crate) fn decode_chunk_into(
        &self,
        digest: &ChunkDigest,
        stored: &[u8],
        out: &mut [u8],
    ) -> Result<(), String> {
        self.open_into(ObjectKind::Chunk, digest.as_bytes(), stored, out)?;
        let actual = self.hasher.digest(out);
        if actual != *digest {
            return Err(format!("content digest is {actual}"));
        }
        Ok(())
    }

    pub(crate) fn encode_manifest(&self, id: &str, data: &[u8]) -> Result<Vec<u8>> {
        self.seal(ObjectKind::Manifest, id.as_bytes(), data)
    }

    pub(crate) fn decode_manifest(&self, id: &str, stored: &[u8]) -> Result<Vec<u8>, String> {
        self.open(
            ObjectKind::Manifest,
            id.as_bytes(),
            stored,
            MAX_MANIFEST_LEN,
        )
    }

    /// Builds the stored form: header, optional nonce, content, optional tag.
    /// `context` becomes part of the AEAD associated data.
    fn seal(&self, kind: ObjectKind, context: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        let nonce_len = if self.cipher.is_some() { NONCE_LEN } else { 0 };
        let prefix_len = HEADER_LEN + nonce_len;
        let mut stored =
            Vec::with_capacity(prefix_len + zstd::compress_bound(data.len()) + TAG_LEN);
        stored.resize(prefix_len, 0);

        let mut flags = 0;
        let compressed = match self.compression.zstd_level() {
            Some(level) => compress_after_prefix(level, data, &mut stored).map_err(|source| {
                Error::CompressionFailed {
                    object: match kind {
                        ObjectKind::Chunk => "a chunk",
                        ObjectKind::Manifest => "a manifest",
                    },
                    source,
                }
            })?,
            None => false,
        };
        if compressed {
            flags |= FLAG_ZSTD;
        } else {
            // Uncompressed, or zstd did not make it smaller: store as is.
            stored.truncate(prefix_len);
            stored.extend_from_slice(data);
        }
        if self.cipher.is_some() {
            flags |= FLAG_AES_256_GCM;
        }

        let header = encode_header(kind, flags, data.len() as u64);
        stored[..HEADER_LEN].copy_from_slice(&header);

        if let Some(cipher) = &self.cipher {
            let mut nonce = [0u8; NONCE_LEN];
            self.random.fill(&mut nonce).map_err(|_| Error::Crypto {
                action: "generate a nonce",
                reason: "the system random number generator failed".to_owned(),
            })?;
            stored[HEADER_LEN..prefix_len].copy_from_slice(&nonce);

            let aad = associated_data(context, &header);
            let tag = cipher
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut stored[prefix_len..],
                )
                .map_err(|_| Error::Crypto {
                    action: "encrypt content with AES-256-GCM",
                    reason: "ring reported an error".to_owned(),
                })?;
            stored.extend_from_slice(tag.as_ref());
        }
        Ok(stored)
    }

    /// Checks and decodes a stored object. Returns the reason on failure.
    fn open(
        &self,
        kind: ObjectKind,
        context: &[u8],
        stored: &[u8],
        max_len: usize,
    ) -> Result<Vec<u8>, String> {
        let (declared_len, body) = self.unseal(kind, context, stored, max_len)?;
        let content = match body {
            Body::Plain(content) => content.to_vec(),
            Body::Decrypted(content) => content,
            Body::Compressed(frame) => decompress(frame, declared_len)
                .map_err(|error| format!("zstd decompression failed: {error}"))?,
            Body::DecryptedCompressed(frame) => decompress(&frame, declared_len)
                .map_err(|error| format!("zstd decompression failed: {error}"))?,
        };
        if content.len() != declared_len {
            return Err(format!(
                "content is {} bytes, but the header declares {declared_len}",
                content.len()
            ));
        }
        Ok(content)
    }

    /// Decodes an object as [`ChunkCodec::open`] does, but into `out`, whose
    /// length must be the content length the header declares.
    fn open_into(
        &self,
        kind: ObjectKind,
        context: &[u8],
        stored: &[u8],
        out: &mut [u8],
    ) -> Result<(), String> {
        let (declared_len, body) = self.unseal(kind, context, stored, out.len())?;
        if declared_len != out.len() {
            return Err(format!(
                "header declares {declared_len} bytes of content, expected {}",
                out.len()
            ));
        }
        let written = match body {
            Body::Plain(content) => copy_exact(content, out)?,
            Body::Decrypted(content) => copy_exact(&content, out)?,
            Body::Compressed(frame) => decompress_into(frame, out)
                .map_err(|error| format!("zstd decompression failed: {error}"))?,
            Body::DecryptedCompressed(frame) => decompress_into(&frame, out)
                .map_err(|error| format!("zstd decompression failed: {error}"))?,
        };
        if written != declared_len {
            return Err(format!(
                "content is {written} bytes, but the header declares {declared_len}"
            ));
        }
        Ok(())
    }

    /// Checks the header and, when the object is sealed, the tag, and returns
    /// the declared content length and the body still to be decompressed.
    fn unseal<'a>(
        &self,
        kind: ObjectKind,
        context: &[u8],
        stored: &'a [u8],
        max_len: usize,
    ) -> Result<(usize, Body<'a>), String> {
        if stored.len() < HEADER_LEN {
            return Err(format!(
                "stored object is {} bytes, shorter than the {HEADER_LEN}-byte header",
                stored.len()
            ));
        }
        let header: [u8; HEADER_LEN] = stored[..HEADER_LEN].try_into().expect("header length");
        if header[..4] != kind.magic() {
            return Err(format!(
                "header magic is {:?}, expected {:?}",
                String::from_utf8_lossy(&header[..4]),
                String::from_utf8_lossy(&kind.magic())
            ));
        }
        if header[4] != FORMAT_VERSION {
            return Err(format!(
                "format version is {}, but this build reads only version {FORMAT_VERSION}",
                header[4]
            ));
        }
        let flags = header[5];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(format!("header has unknown flags {flags:#04x}"));
        }
        if header[6..8] != [0, 0] {
            return Err("reserved header bytes are not zero".to_owned());
        }
        let declared_len = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if declared_len > max_len as u64 {
            return Err(format!(
                "header declares {declared_len} bytes, more than the maximum of {max_len}"
            ));
        }
        let declared_len = declared_len as usize;

        let encrypted = flags & FLAG_AES_256_GCM != 0;
        let compressed = flags & FLAG_ZSTD != 0;
        let body = match (&self.cipher, encrypted) {
            (Some(cipher), true) => {
                if stored.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
                    return Err("encrypted object is too short for nonce and tag".to_owned());
                }
                let nonce: [u8; NONCE_LEN] = stored[HEADER_LEN..HEADER_LEN + NONCE_LEN]
                    .try_into()
                    .expect("nonce length");
                let mut sealed = stored[HEADER_LEN + NONCE_LEN..].to_vec();
                let aad = associated_data(context, &header);
                let plain_len = cipher
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut sealed,
                    )
                    .map_err(|_| {
                        "AES-GCM authentication failed: the stored bytes were changed".to_owned()
                    })?
                    .len();
                sealed.truncate(plain_len);
                if compressed {
                    Body::DecryptedCompressed(sealed)
                } else {
                    Body::Decrypted(sealed)
                }
            }
            (None, true) => {
                return Err("object is encrypted, but the repository has no key".to_owned())
            }
            // An attacker with write access could otherwise replace an
            // encrypted chunk with plaintext of their choice.
            (Some(_), false) => {
                return Err("object is not encrypted, but the repository is".to_owned())
            }
            // Unsealed content is read in place from `stored`, so it is copied
            // only once, by decompression or into the caller's buffer.
            (None, false) if compressed => Body::Compressed(&stored[HEADER_LEN..]),
            (None, false) => Body::Plain(&stored[HEADER_LEN..]),
        };
        Ok((declared_len, body))
    }
}

/// Content of a stored object after its header and tag were checked.
enum Body<'a> {
    /// Uncompressed content, read in place.
    Plain(&'a [u8]),
    /// A zstd frame, read in place.
    Compressed(&'a [u8]),
    /// Uncompressed content after decryption.
    Decrypted(Vec<u8>),
    /// A zstd frame after decryption.
    DecryptedCompressed(Vec<u8>),
}

/// Copies `content` into `out` when the lengths agree, and returns the length.
fn copy_exact(content: &[u8], out: &mut [u8]) -> Result<usize, String> {
    if content.len() != out.len() {
        return Err(format!(
            "content is {} bytes, but the header declares {}",
            content.len(),
            out.len()
        ));
    }
    out.copy_from_slice(content);
    Ok(content.len())
}

fn encode_header(kind: ObjectKind, flags: u8, len: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&kind.magic());
    header[4] = FORMAT_VERSION;
    header[5] = flags;
    header[8..16].copy_from_slice(&len.to_le_bytes());
    header
}

fn associated_data(context: &[u8], header: &[u8; HEADER_LEN]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(context.len() + HEADER_LEN);
    aad.extend_from_slice(context);
    aad.extend_from_slice(header);
    aad
}

/// Appends the zstd frame of `data` after the bytes already in `stored`.
/// Returns false, with `stored` unspecified past its prefix, when the frame
/// would not be smaller than `data`.
fn compress_after_prefix(level: i32, data: &[u8], stored: &mut Vec<u8>) -> io::Result<bool> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            Some((current, compressor)) if *current != level => {
                compressor.set_compression_level(level)?;
                *current = level;
            }
            Some(_) => {}
            None => *slot = Some((level, zstd::bulk::Compressor::new(level)?)),
        }
        let (_, compressor) = slot.as_mut().expect("compressor was just set");

        let prefix_len = stored.len();
        let mut cursor = io::Cursor::new(stored);
        cursor.set_position(prefix_len as u64);
        let written = compressor.compress_to_buffer(data, &mut cursor)?;
        Ok(written < data.len())
    })
}

fn decompress(frame: &[u8], expected_len: usize) -> io::Result<Vec<u8>> {
    with_decompressor(|decompressor| decompressor.decompress(frame, expected_len))
}

/// Decompresses `frame` into `out` and returns the number of bytes written.
/// A frame whose content does not fit in `out` is an error.
fn decompress_into(frame: &[u8], out: &mut [u8]) -> io::Result<usize> {
    with_decompressor(|decompressor| decompressor.decompress_to_buffer(frame, out))
}

fn with_decompressor<T>(
    work: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> io::Result<T>,
) -> io::Result<T> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        work(slot.as_mut().expect("decompressor was just set"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL_LEVELS: [Compression; 4] = [
        Compression::Off,
        Compression::Normal,
        Compression::High,
        Compression::Max,
    ];

    fn codec(compression: Compression, key: Option<[u8; 32]>) -> ChunkCodec {
        let hasher = match key {
            Some(_) => ChunkHasher::keyed([9u8; 32]),
            None => ChunkHasher::plain(),
        };
        ChunkCodec::new(hasher, compression, key.as_ref()).unwrap()
    }

    fn encode(codec: &ChunkCodec, data: &[u8]) -> (ChunkDigest, Vec<u8>) {
        let digest = codec.hasher().digest(data);
        (digest, codec.encode_chunk(&digest, data).unwrap())
    }

    fn chunk_content() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            // Random bytes, which zstd cannot shrink.
            proptest::collection::vec(any::<u8>(), 1..20_000),
            // Repetitive bytes, which zstd shrinks a lot.
            (1u8..=255, 1usize..200_000).prop_map(|(byte, len)| vec![byte; len]),
            (proptest::collection::vec(any::<u8>(), 1..64), 1usize..2000)
                .prop_map(|(pattern, repeats)| pattern.repeat(repeats)),
        ]
        .prop_filter("all-zero chunks are rejected", |data| !is_zero(data))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn codec_round_trip_any_setting(
            data in chunk_content(),
            level in 0usize..4,
            key in proptest::option::of(any::<[u8; 32]>()),
        ) {
            let codec = codec(ALL_LEVELS[level], key);
            let (digest, stored) = encode(&codec, &data);

            let decoded = codec.decode_chunk(&digest, &stored).unwrap();

            prop_assert_eq!(decoded, data);
        }
    }

    #[test]
    fn is_zero_finds_any_nonzero_byte() {
        for len in [0usize, 1, 7, 63, 64, 65, 1000, 4096] {
            assert!(is_zero(&vec![0u8; len]), "len {len}");
            for position in [0, len / 2, len.saturating_sub(1)] {
                if len == 0 {
                    continue;
                }
                let mut data = vec![0u8; len];
                data[position] = 1;
                assert!(!is_zero(&data), "len {len}, byte {position}");
            }
        }
    }

    #[test]
    fn compressible_chunk_is_stored_compressed() {
        let codec = codec(Compression::Normal, None);
        let (_, stored) = encode(&codec, &[5u8; 100_000]);

        assert!(stored.len() < 1000, "stored {} bytes", stored.len());
        assert_eq!(stored[5] & FLAG_ZSTD, FLAG_ZSTD);
    }

    #[test]
    fn incompressible_chunk_is_stored_raw() {
        let mut data = vec![0u8; 10_000];
        SystemRandom::new().fill(&mut data).unwrap();
        let codec = codec(Compression::Max, None);

        let (digest, stored) = encode(&codec, &data);

        assert_eq!(stored[5] & FLAG_ZSTD, 0);
        assert_eq!(stored.len(), HEADER_LEN + data.len());
        assert_eq!(codec.decode_chunk(&digest, &stored).unwrap(), data);
    }

    #[test]
    fn encrypted_chunk_hides_plaintext() {
        let codec = codec(Compression::Off, Some([1u8; 32]));
        let data = b"a recognizable plaintext sentence".repeat(10);

        let (_, stored) = encode(&codec, &data);

        let needle = b"recognizable";
        assert!(!stored.windows(needle.len()).any(|window| window == needle));
        assert_eq!(stored[5], FLAG_AES_256_GCM);
    }

    #[test]
    fn zero_and_oversized_chunks_are_rejected() {
        let codec = codec(Compression::Normal, None);
        let zero = vec![0u8; 4096];
        let digest = codec.hasher().digest(&zero);
        let large = vec![1u8; MAX_CHUNK_LEN + 1];

        let zero_error = codec.encode_chunk(&digest, &zero).unwrap_err();
        let empty_error = codec.encode_chunk(&digest, &[]).unwrap_err();
        let large_error = codec.encode_chunk(&digest, &large).unwrap_err();

        assert!(matches!(zero_error, Error::ZeroChunk { len: 4096 }));
        assert!(matches!(empty_error, Error::ZeroChunk { len: 0 }));
        assert!(matches!(large_error, Error::ChunkTooLarge { .. }));
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let data = b"chunk content that compresses: ".repeat(50);
        for key in [None, Some([3u8; 32])] {
            let codec = codec(Compression::Normal, key);
            let (digest, stored) = encode(&codec, &data);

            for position in 0..stored.len() {
                let mut damaged = stored.clone();
                damaged[position] ^= 0x40;
                let result = codec.decode_chunk(&digest, &damaged);
                assert!(result.is_err(), "byte {position} (key: {})", key.is_some());
            }
        }
    }

    #[test]
    fn truncated_chunk_is_detected() {
        let codec = codec(Compression::Normal, Some([3u8; 32]));
        let (digest, stored) = encode(&codec, &b"some content".repeat(100));

        for len in [0, 5, HEADER_LEN, HEADER_LEN + NONCE_LEN, stored.len() - 1] {
            let result = codec.decode_chunk(&digest, &stored[..len]);
            assert!(result.is_err(), "length {len}");
        }
    }

    #[test]
    fn chunk_under_other_digest_is_rejected() {
        for key in [None, Some([3u8; 32])] {
            let codec = codec(Compression::Normal, key);
            let (_, stored) = encode(&codec, b"first chunk");
            let other = codec.hasher().digest(b"second chunk");

            let reason = codec.decode_chunk(&other, &stored).unwrap_err();

            if key.is_some() {
                assert!(reason.contains("authentication failed"), "{reason}");
            } else {
                assert!(reason.contains("content digest"), "{reason}");
            }
        }
    }

    #[test]
    fn wrong_data_key_fails_authentication() {
        let writer = codec(Compression::Normal, Some([1u8; 32]));
        let reader = codec(Compression::Normal, Some([2u8; 32]));
        let (digest, stored) = encode(&writer, b"secret chunk");

        let reason = reader.decode_chunk(&digest, &stored).unwrap_err();

        assert!(reason.contains("authentication failed"), "{reason}");
    }

    #[test]
    fn encryption_mismatch_is_rejected() {
        let plain = codec(Compression::Normal, None);
        let encrypted = codec(Compression::Normal, Some([1u8; 32]));
        let (plain_digest, plain_stored) = encode(&plain, b"content");
        let (sealed_digest, sealed_stored) = encode(&encrypted, b"content");

        let unexpected_plain = encrypted.decode_chunk(&plain_digest, &plain_stored);
        let missing_key = plain.decode_chunk(&sealed_digest, &sealed_stored);

        assert!(unexpected_plain.unwrap_err().contains("not encrypted"));
        assert!(missing_key.unwrap_err().contains("no key"));
    }

    #[test]
    fn manifest_and_chunk_magic_differ() {
        let codec = codec(Compression::Normal, None);
        let stored = codec.encode_manifest("backup-1", b"{}").unwrap();
        let digest = codec.hasher().digest(b"{}");

        assert_eq!(&stored[..4], b"BSMF");
        assert_eq!(codec.decode_manifest("backup-1", &stored).unwrap(), b"{}");
        assert!(codec
            .decode_chunk(&digest, &stored)
            .unwrap_err()
            .contains("magic"));
    }

    #[test]
    fn encrypted_manifest_is_bound_to_its_id() {
        let codec = codec(Compression::Normal, Some([4u8; 32]));
        let stored = codec
            .encode_manifest("backup-1", b"{\"disks\":[]}")
            .unwrap();

        let moved = codec.decode_manifest("backup-2", &stored);

        assert!(moved.unwrap_err().contains("authentication failed"));
    }

    #[test]
    fn compressors_switch_levels_on_one_thread() {
        let data = b"level switching content ".repeat(1000);
        for compression in ALL_LEVELS.iter().chain(ALL_LEVELS.iter().rev()) {
            let codec = codec(*compression, None);
            let (digest, stored) = encode(&codec, &data);
            assert_eq!(codec.decode_chunk(&digest, &stored).unwrap(), data);
        }
    }
}
