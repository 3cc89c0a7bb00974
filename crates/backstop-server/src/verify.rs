//! Verification of the repository: every chunk that a backup's manifest
//! references is read back and checked against its digest, and problems
//! are reported with the backups, disks and offsets they affect.

use std::{collections::HashMap, fmt::Write as _, path::Path, sync::Arc};

use anyhow::Context as _;
use backstop_catalog::SqliteCatalog;
use backstop_chunkstore::{Backend, ChunkDigest, ChunkEntry, LocalBackend, Repository};

/// Location of one chunk in one backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkUse {
    pub backup_id: String,
    pub disk: String,
    pub offset: u64,
}

/// A chunk that failed verification and the backups that need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedChunk {
    pub digest: ChunkDigest,
    /// `missing`, `corrupt: <reason>` or `unreadable: <reason>`.
    pub problem: String,
    pub used_by: Vec<ChunkUse>,
}

/// Result of [`verify_repository`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyOutcome {
    pub backups: usize,
    pub chunks_checked: usize,
    pub damaged: Vec<DamagedChunk>,
    /// Manifests that could not be read, with the reason.
    pub unreadable_manifests: Vec<(String, String)>,
}

impl VerifyOutcome {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.unreadable_manifests.is_empty()
    }

    /// Renders the outcome as the lines `backstop verify` prints.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "checked {} chunks of {} backups",
            self.chunks_checked, self.backups
        );
        for (id, reason) in &self.unreadable_manifests {
            let _ = writeln!(text, "manifest of backup {id} is unreadable: {reason}");
        }
        for chunk in &self.damaged {
            let _ = writeln!(text, "chunk {} is {}", chunk.digest, chunk.problem);
            for use_ in &chunk.used_by {
                let _ = writeln!(
                    text,
                    "  needed by backup {} disk `{}` at byte offset {}",
                    use_.backup_id, use_.disk, use_.offset
                );
            }
        }
        if self.is_clean() {
            let _ = writeln!(text, "no problems found");
        }
        text
    }
}

/// Verifies every backup manifest in `repository`.
pub async fn verify_repository(repository: &Repository) -> anyhow::Result<VerifyOutcome> {
    let mut outcome = VerifyOutcome::default();
    let mut uses: HashMap<ChunkDigest, Vec<ChunkUse>> = HashMap::new();
    for id in repository.list_manifests().await? {
        let manifest = match repository.get_disk_manifest(&id).await {
            Ok(manifest) => manifest,
            Err(error) => {
                outcome
                    .unreadable_manifests
                    .push((id.to_string(), error.to_string()));
                continue;
            }
        };
        outcome.backups += 1;
        for disk in &manifest.disks {
            for extent in disk.extents() {
                if let ChunkEntry::Chunk { digest, .. } = extent.entry {
                    uses.entry(digest).or_default().push(ChunkUse {
                        backup_id: manifest.backup_id.clone(),
                        disk: disk.name.clone(),
                        offset: extent.offset,
                    });
                }
            }
        }
    }

    let digests: Vec<ChunkDigest> = uses.keys().copied().collect();
    let report = repository.verify_chunks(&digests).await;
    outcome.chunks_checked = report.checked;
    let problems = report
        .missing
        .iter()
        .map(|d| (*d, "missing".to_owned()))
        .chain(
            report
                .corrupt
                .iter()
                .map(|p| (p.digest, format!("corrupt: {}", p.reason))),
        )
        .chain(
            report
                .unreadable
                .iter()
                .map(|p| (p.digest, format!("unreadable: {}", p.reason))),
        );
    for (digest, problem) in problems {
        outcome.damaged.push(DamagedChunk {
            digest,
            problem,
            used_by: uses.remove(&digest).unwrap_or_default(),
        });
    }
    Ok(outcome)
}

/// Opens the data folder of a server, running or stopped, and verifies its
/// repository. Creates nothing: a folder without a catalog and a repository
/// is an error.
pub async fn verify_data_dir(
    data_dir: &Path,
    settings: &crate::RepositoryConfig,
) -> anyhow::Result<VerifyOutcome> {
    let catalog_path = data_dir.join("catalog.db");
    let repository_path = data_dir.join("repository");
    if !catalog_path.is_file() || !repository_path.is_dir() {
        anyhow::bail!(
            "{} contains no Backstop data (no catalog.db and repository/ in it); pass the data folder \
             of a server with --data-dir, or its configuration file with --config",
            data_dir.display()
        );
    }
    // Opening the catalog checks that this is a Backstop data folder and
    // applies pending migrations, as the server would.
    SqliteCatalog::open(data_dir).await?;

    let credentials = settings.credentials().map_err(anyhow::Error::msg)?;
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(&repository_path));
    let repository = Repository::open(backend, &credentials)
        .await
        .with_context(|| {
            format!(
                "cannot open the repository in {}",
                repository_path.display()
            )
        })?;
    verify_repository(&repository).await
}
