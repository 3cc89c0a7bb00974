//! Backstop's backup repository: a content-addressed chunk store with one
//! manifest per backup, on a pluggable object storage backend.
//!
//! A backup agent cuts a disk image into fixed-size ranges and records
//! all-zero ranges ([`is_zero`]) as holes. It names every other range by its
//! [`ChunkDigest`] and uploads only the chunks the repository lacks. Then it
//! stores a [`DiskBackupManifest`] that lists the hole or chunk of each
//! range. Identical data is stored once across all backups.
//!
//! # On-disk layout
//!
//! With [`LocalBackend`] every object key is a file path below the root
//! folder. Other backends use the same keys.
//!
//! ```text
//! <root>/config.json                 repository config, plain JSON (see `config`)
//! <root>/chunks/<aa>/<aabbcc…>       one chunk; <aa> = first 2 of the 64 hex digits
//! <root>/manifests/<manifest-id>     one manifest per backup
//! <root>/**/.tmp-<16 hex>            temporary file of a write in progress or
//!                                    interrupted by a crash; never an object
//! ```
//!
//! Chunks and manifests share one stored format (module `codec`). It starts
//! with a 16-byte header: magic `BSCK` or `BSMF`, format version, flags for
//! zstd and AES-256-GCM, and the uncompressed length. Then come a 12-byte
//! nonce when encrypted, the zstd frame or raw bytes, and a 16-byte tag when
//! encrypted. The AEAD's associated data is the chunk digest or manifest id
//! plus the header, so in an encrypted repository an object moved to another
//! name fails its tag check. In an unencrypted one the content digest catches
//! a moved chunk, but not a moved manifest.
//!
//! Reading a chunk checks the header, the tag, the length and finally the
//! BLAKE3 digest of the content. Any failure is [`Error::ChunkCorrupt`],
//! which names the digest. A missing object is [`Error::ChunkNotFound`].
//!
//! An encrypted repository has a random 256-bit master key, stored in
//! `config.json` wrapped by a key from an Argon2id passphrase hash or from a
//! key file (module `keys`). Chunk names are then keyed BLAKE3 hashes, so
//! they reveal nothing about content to someone who can only list the
//! storage.
//!
//! # Durable writes
//!
//! Every file write goes through one helper: write a temporary file in the
//! target folder, fsync it, rename (or hard-link, for create-only writes) it
//! to the final name, fsync the folder. An object is therefore visible whole
//! or not at all, also after a crash. Leftover temporary files are skipped
//! by listings and removed by [`LocalBackend::remove_stale_temp_files`].
//!
//! A backend made with [`LocalBackend::with_deferred_chunk_sync`] batches
//! the fsyncs of new chunks instead: a chunk is readable at once, and
//! durable under its name before any other object, such as the manifest
//! that refers to it, is written (module `local`).
//!
//! # Garbage collection and why it cannot delete a chunk in use
//!
//! A collection run ([`Repository::begin_garbage_collection`], then
//! [`GarbageCollection::sweep`]) deletes a chunk only if all of these hold:
//!
//! 1. it is not in the live set, which the caller builds from every manifest
//!    *after* the run began;
//! 2. it is not in the caller's protected set;
//! 3. it was last modified before `start - grace_period`;
//! 4. no [`ChunkSession`] of the same `Repository` (or a clone) pins it, and
//!    none released a pin on it since the run began.
//!
//! A backup uses a `ChunkSession`: it pins each digest *before* asking
//! whether the chunk exists or uploading it, writes its manifest, and only
//! then drops the session. Take a chunk that such a backup's manifest
//! references:
//!
//! - The backup is still running when the sweep reaches the chunk: the pin
//!   is there and the chunk is kept (rule 4). The sweep checks the pins and
//!   deletes while holding a lock that placing a pin also takes. So either
//!   the sweep finds the pin, or the pin comes after the delete. In that
//!   case the backup's existence check, which follows its pin, finds the
//!   chunk missing and the backup uploads it again.
//! - The backup finished after the run began: its released pins are kept
//!   until the run ends (rule 4).
//! - The backup finished before the run began: its manifest existed before
//!   the live set was built, so the chunk is live (rule 1).
//!
//! A recovery pins the digests of its manifest before reading, so deleting
//! that manifest during the recovery does not free its chunks. Writers that
//! do not share the `Repository` (another process) are covered only by the
//! grace period, and only for chunks they wrote themselves: reusing an old
//! unreferenced chunk is safe only if the caller passes those digests in the
//! protected set.
//!
//! | operation | may run with a GC run? | notes |
//! |---|---|---|
//! | backup through a `ChunkSession` of the same `Repository` | yes | rule 4 |
//! | recovery that pinned its digests | yes | rule 4 |
//! | backup from another process, writing new chunks only | yes | manifest written within the grace period after each chunk |
//! | backup from another process that reuses existing chunks | no | unless the caller protects those digests |
//! | [`Repository::put_chunk`] without a session | new chunks only | same as another process |
//! | `delete_manifest` | yes | a live set built before it only keeps more |
//! | `verify_chunks` | yes | reports chunks the run deleted as missing if their manifest was deleted |
//! | a second GC run | no | `begin_garbage_collection` rejects it on one `Repository`; across processes the caller must prevent it |
//! | backups, recoveries and verifies among themselves | yes | identical chunks race to one object; `Create` keeps the first |
//! | `Repository::create` | no | run it once, before anything else |
//!
//! NOTE: the grace period compares object modification times, by the
//! storage's clock, with the local clock at the run's start. The clocks must
//! agree to well within the grace period.

#![forbid(unsafe_code)]

mod backend;
mod codec;
mod config;
mod digest;
mod durable;
mod error;
mod gc;
mod keys;
mod local;
mod manifest;
mod manifest_store;
mod open;
mod repository;
mod session;
#[cfg(test)]
mod test_support;
mod verify;

pub use backend::{Backend, ObjectKey, ObjectMeta, PutMode, PutOutcome, MAX_KEY_LEN};
pub use codec::{is_zero, Compression, MAX_CHUNK_LEN, MAX_MANIFEST_LEN};
pub use config::{RepositoryId, FORMAT_VERSION};
pub use digest::{ChunkDigest, ChunkHasher, DIGEST_LEN};
pub use error::{Error, Result};
pub use gc::{GarbageCollection, GcOptions, GcReport};
pub use keys::{Credentials, EncryptionOptions, KdfParams, Passphrase};
pub use local::LocalBackend;
pub use manifest::{
    ChunkEntry, DiskBackupManifest, DiskManifest, Extent, ManifestId, DISK_MANIFEST_FORMAT_VERSION,
    MAX_MANIFEST_ID_LEN,
};
pub use repository::{Repository, RepositoryOptions, StoredChunk};
pub use session::ChunkSession;
pub use verify::{ChunkProblem, VerifyReport};
