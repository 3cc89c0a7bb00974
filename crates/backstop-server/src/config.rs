//! Typed server configuration, read from a TOML file and overridden by
//! command-line flags and environment variables in the binary.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use crate::auth::{AuthMode, TokenConfig};

/// Every setting of `backstop server`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the gRPC server listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Folder holding the catalog database and, later, the repository.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `host:port` that endpoint discovery returns; defaults to `listen`.
    #[serde(default)]
    pub advertise_address: Option<String>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Seconds without a heartbeat after which an agent counts as offline
    /// and its running task fails with UNAVAILABLE.
    #[serde(default = "default_heartbeat_timeout_s")]
    pub heartbeat_timeout_s: u64,
    /// Seconds a newly written chunk is safe from garbage collection, so a
    /// backup that starts during a collection keeps the chunks it reuses.
    #[serde(default = "default_gc_grace_period_s")]
    pub gc_grace_period_s: u64,
    /// Hours between verifications of the whole repository; 0 turns the
    /// job off.
    #[serde(default = "default_verify_interval_h")]
    pub verify_interval_h: u64,
    /// Instances on this host whose agents the server runs in its own
    /// process; they still talk to it through the agent API.
    #[serde(default)]
    pub instances: Vec<LocalInstanceConfig>,
    /// Encryption of the repository under the data folder.
    #[serde(default)]
    pub repository: RepositoryConfig,
}

/// Encryption settings of the repository. With neither setting it is not
/// encrypted. The choice is fixed when the repository is created on first
/// start.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// File with the 256-bit repository key in hex; created with a random
    /// key on first start if missing. Keep a copy: without it no backup
    /// can be read.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Name of the environment variable that contains the repository
    /// passphrase, from which Argon2id derives the key.
    #[serde(default)]
    pub passphrase_env: Option<String>,
}

impl RepositoryConfig {
    /// Returns the credentials that open the repository.
    pub fn credentials(&self) -> Result<backstop_chunkstore::Credentials, String> {
        backstop_chunkstore::Credentials::from_settings(
            self.key_file.as_deref(),
            self.passphrase_env.as_deref(),
        )
        .map_err(|problem| format!("repository: {problem}"))
    }

    /// Returns the encryption a new repository gets.
    pub fn encryption(&self) -> Result<backstop_chunkstore::EncryptionOptions, String> {
        use backstop_chunkstore::{Credentials, EncryptionOptions};
        Ok(match self.credentials()? {
            Credentials::None => EncryptionOptions::None,
            Credentials::KeyFile(path) => EncryptionOptions::KeyFile(path),
            Credentials::Passphrase(passphrase) => EncryptionOptions::Passphrase {
                passphrase,
                kdf: Default::default(),
            },
        })
    }
}

/// An instance served by an agent inside the server process.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalInstanceConfig {
    pub compute_instance_id: String,
    pub folder_id: String,
    pub disks: Vec<LocalDiskConfig>,
}

/// A disk of a local instance: a raw image file or block device.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalDiskConfig {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub device_model: Option<String>,
}

/// Certificate and private key, both PEM files, for serving TLS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Authentication settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `tokens` or `development`; when unset, development on a loopback
    /// address and tokens elsewhere.
    #[serde(default)]
    pub mode: Option<AuthMode>,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            data_dir: default_data_dir(),
            advertise_address: None,
            tls: None,
            auth: AuthConfig::default(),
            heartbeat_timeout_s: default_heartbeat_timeout_s(),
            instances: Vec::new(),
            repository: RepositoryConfig::default(),
            gc_grace_period_s: default_gc_grace_period_s(),
            verify_interval_h: default_verify_interval_h(),
        }
    }
}

impl ServerConfig {
    /// Parses a TOML configuration file's text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Returns the authentication mode in force.
    pub fn auth_mode(&self) -> AuthMode {
        self.auth.mode.unwrap_or(if self.listen.ip().is_loopback() {
            AuthMode::Development
        } else {
            AuthMode::Tokens
        })
    }

    /// Lists every problem of the configuration at once, so an operator
    /// fixes them in one pass.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(tls) = &self.tls {
            for (name, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if !path.is_file() {
                    problems.push(format!("{name}: file {} does not exist", path.display()));
                }
            }
        }
        if self.auth_mode() == AuthMode::Tokens && self.auth.tokens.is_empty() {
            problems.push(
                "auth: mode is `tokens` but no [[auth.tokens]] entry is configured, so no call could succeed"
                    .to_owned(),
            );
        }
        for (i, token) in self.auth.tokens.iter().enumerate() {
            if token.token.len() < 8 {
                problems.push(format!(
                    "auth.tokens[{i}]: the token must be at least 8 characters long"
                ));
            }
            if token.subject.is_empty() {
                problems.push(format!("auth.tokens[{i}]: subject must not be empty"));
            }
            if token.folders.is_empty() {
                problems.push(format!(
                    "auth.tokens[{i}]: folders is empty; list folder ids or \"*\" for all folders"
                ));
            }
        }
        if let Err(problem) = self.repository.credentials() {
            problems.push(problem);
        }
        if self.heartbeat_timeout_s < 2 {
            problems.push(format!(
                "heartbeat_timeout_s: {} s is too short for agents on a busy host; use 2 or more",
                self.heartbeat_timeout_s
            ));
        }
        for (i, instance) in self.instances.iter().enumerate() {
            if instance.compute_instance_id.is_empty() || instance.folder_id.is_empty() {
                problems.push(format!(
                    "instances[{i}]: compute_instance_id and folder_id must not be empty"
                ));
            }
            for (j, disk) in instance.disks.iter().enumerate() {
                if !disk.path.exists() {
                    problems.push(format!(
                        "instances[{i}].disks[{j}]: {} does not exist; create the image or fix the path",
                        disk.path.display()
                    ));
                }
            }
        }
        if let Some(address) = &self.advertise_address {
            if !address.contains(':') {
                problems.push(format!("advertise_address: {address:?} must be host:port"));
            }
        }
        problems
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9000))
}

fn default_verify_interval_h() -> u64 {
    24
}

fn default_gc_grace_period_s() -> u64 {
    crate::deletion::DEFAULT_GC_GRACE.as_secs()
}

fn default_heartbeat_timeout_s() -> u64 {
    15
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("backstop-data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let config = ServerConfig::from_toml("").unwrap();
        assert_eq!(config.listen, default_listen());
        assert_eq!(config.auth_mode(), AuthMode::Development);
        assert!(config.problems().is_empty());
    }

    #[test]
    fn unknown_setting_is_rejected() {
        let error = ServerConfig::from_toml("lisen = \"127.0.0.1:1\"").unwrap_err();
        assert!(error.to_string().contains("lisen"));
    }

    #[test]
    fn all_problems_are_reported_together() {
        let config = ServerConfig::from_toml(
            "listen = \"0.0.0.0:9000\"\n[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n",
        )
        .unwrap();
        let problems = config.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
