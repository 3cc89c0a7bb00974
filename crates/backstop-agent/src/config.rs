//! Typed agent configuration, read from a TOML file or built by the server
//! for the agents it runs itself.

use std::path::PathBuf;

use serde::Deserialize;

/// Every setting of `backstop agent`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Server address, e.g. `http://127.0.0.1:9000` or `https://backup.example:443`.
    pub server: String,
    /// Bearer token the server accepts; not needed in development mode.
    #[serde(default)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// The instance this agent serves.
    pub compute_instance_id: String,
    /// Folder of the instance, needed when it registers for the first time
    /// without a registration token.
    #[serde(default)]
    pub folder_id: String,
    /// Token from `ResourceService.GetInstanceRegistrationToken`; registers
    /// the instance in the token's folder.
    #[serde(default)]
    pub registration_token: Option<String>,
    /// The instance's disks, in the order backups list them.
    pub disks: Vec<DiskConfig>,
    /// Folders for file-level backups, which later versions will use.
    #[serde(default)]
    pub file_roots: Vec<PathBuf>,
    /// Key file of an encrypted repository, the same file the server uses.
    #[serde(default)]
    pub repository_key_file: Option<PathBuf>,
    /// Environment variable holding the passphrase of an encrypted
    /// repository.
    #[serde(default)]
    pub repository_passphrase_env: Option<String>,
    /// Commands run around a recovery, e.g. to stop and start the VM.
    #[serde(default)]
    pub hooks: HooksConfig,
    /// Re-read every restored disk after the final sync and compare it
    /// with the backup.
    #[serde(default)]
    pub verify_after_restore: bool,
}

/// Commands the agent runs around a recovery; each is a program and its
/// arguments, run without a shell.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    #[serde(default)]
    pub pre_recovery: Option<Vec<String>>,
    #[serde(default)]
    pub post_recovery: Option<Vec<String>>,
}

/// One disk of the instance.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Name shown in backups, e.g. `vda`.
    pub name: String,
    /// Raw image file or block device.
    pub path: PathBuf,
    #[serde(default = "default_device_model")]
    pub device_model: String,
}

fn default_device_model() -> String {
    "virtio-blk".to_owned()
}

impl AgentConfig {
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Returns the credentials that open the server's repository.
    pub fn repository_credentials(&self) -> Result<backstop_chunkstore::Credentials, String> {
        backstop_chunkstore::Credentials::from_settings(
            self.repository_key_file.as_deref(),
            self.repository_passphrase_env.as_deref(),
        )
        .map_err(|problem| format!("repository_key_file or repository_passphrase_env: {problem}"))
    }

    /// Lists every problem of the configuration at once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.server.starts_with("http://") || self.server.starts_with("https://")) {
            problems.push(format!(
                "server: {:?} must start with http:// or https://",
                self.server
            ));
        }
        if self.compute_instance_id.is_empty() {
            problems.push("compute_instance_id: must not be empty".to_owned());
        }
        if let Err(problem) = self.repository_credentials() {
            problems.push(problem);
        }
        if self.disks.is_empty() {
            problems.push("disks: list at least one disk".to_owned());
        }
        for (i, disk) in self.disks.iter().enumerate() {
            if disk.name.is_empty() {
                problems.push(format!("disks[{i}].name: must not be empty"));
            }
            if self.disks[..i].iter().any(|d| d.name == disk.name) {
                problems.push(format!("disks[{i}].name: {:?} is used twice", disk.name));
            }
        }
        problems
    }
}
