//! Connection settings of the client commands: flags, environment variables
//! and the profile file, resolved in that order of precedence.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _};
use clap::ValueEnum;
use serde::Deserialize;
use tonic::{
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use super::UsageError;

/// Endpoint used when no flag, variable or profile sets one.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:9000";

/// Environment variable that overrides the profile file's path.
pub const CONFIG_PATH_ENV: &str = "BACKSTOP_CLI_CONFIG";

/// How long the first connection to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Output format of the client commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Aligned tables for lists, `key: value` lines for one resource.
    Text,
    /// The API message in proto JSON form.
    Json,
    /// The API message in proto JSON form, written as YAML.
    Yaml,
}

/// Flags shared by every client command. Each one falls back to its
/// environment variable, then (except `--profile`) to the selected profile.
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "Global flags")]
pub struct ClientArgs {
    /// Server address: host:port, http://host:port or https://host:port
    /// [default: 127.0.0.1:9000].
    #[arg(long, global = true, env = "BACKSTOP_ENDPOINT")]
    pub endpoint: Option<String>,

    /// Bearer token sent in the `authorization` header.
    #[arg(long, global = true, env = "BACKSTOP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Folder that lists and new resources belong to.
    #[arg(long, global = true, env = "BACKSTOP_FOLDER_ID")]
    pub folder_id: Option<String>,

    /// Output format [default: text].
    #[arg(long, global = true, env = "BACKSTOP_FORMAT", value_enum)]
    pub format: Option<OutputFormat>,

    /// PEM file of the certificate authority that signed the server's TLS
    /// certificate. Turns on TLS for a bare host:port [default: the system
    /// roots for https://].
    #[arg(long, global = true, env = "BACKSTOP_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Profile of the profile file to use [default: the file's `current`].
    #[arg(long, global = true, env = "BACKSTOP_PROFILE")]
    pub profile: Option<String>,
}

/// The profile file: named profiles and the one used by default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    pub current: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// One profile of the profile file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Profile {
    pub endpoint: Option<String>,
    pub token: Option<String>,
    pub folder_id: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub format: Option<OutputFormat>,
}

/// Settings after flags, environment variables and the profile are merged.
#[derive(Clone, Debug)]
pub struct Settings {
    pub endpoint: String,
    pub token: Option<String>,
    folder_id: Option<String>,
    pub format: OutputFormat,
    pub ca_file: Option<PathBuf>,
}

impl Settings {
    /// Merges flags and environment variables (already in `args`) over the
    /// selected profile and the defaults.
    pub fn resolve(args: &ClientArgs) -> anyhow::Result<Self> {
        let profile = load_profile(args.profile.as_deref())?;
        Ok(Settings {
            endpoint: args
                .endpoint
                .clone()
                .or(profile.endpoint)
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()),
            token: args.token.clone().or(profile.token),
            folder_id: args.folder_id.clone().or(profile.folder_id),
            format: args.format.or(profile.format).unwrap_or(OutputFormat::Text),
            ca_file: args.ca_file.clone().or(profile.ca_file),
        })
    }

    /// Returns the folder id, or a usage error naming every place that can
    /// set it.
    pub fn folder_id(&self) -> anyhow::Result<String> {
        match &self.folder_id {
            Some(folder) if !folder.is_empty() => Ok(folder.clone()),
            _ => Err(UsageError(
                "missing folder id: pass --folder-id, set BACKSTOP_FOLDER_ID, or set folder-id in the profile file"
                    .to_owned(),
            )
            .into()),
        }
    }

    /// Connects to the server, failing when it cannot be reached within
    /// [`CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> anyhow::Result<Transport> {
        let endpoint = build_endpoint(&self.endpoint, self.ca_file.as_deref())?;
        let channel = endpoint.connect().await.map_err(|error| {
            anyhow!(
                "cannot connect to the Backstop server at {}: {}; check --endpoint, BACKSTOP_ENDPOINT or the profile's endpoint",
                self.endpoint,
                error_chain(&error)
            )
        })?;
        let authorization = match &self.token {
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                UsageError(
                    "the token contains characters that are not allowed in an HTTP header"
                        .to_owned(),
                )
            })?),
            None => None,
        };
        Ok(InterceptedService::new(
            channel,
            BearerToken { authorization },
        ))
    }
}

/// A channel that adds the bearer token to every call.
pub type Transport = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer <token>` to each request when a token is set.
#[derive(Clone)]
pub struct BearerToken {
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Builds the endpoint from `host:port`, `http://...` or `https://...`.
/// A bare `host:port` uses TLS when a CA file is given.
pub fn build_endpoint(address: &str, ca_file: Option<&Path>) -> anyhow::Result<Endpoint> {
    let has_scheme = address.starts_with("http://") || address.starts_with("https://");
    let url = if has_scheme {
        address.to_owned()
    } else if address.contains("://") {
        return Err(UsageError(format!(
            "invalid endpoint {address:?}: the scheme must be http:// or https://"
        ))
        .into());
    } else if ca_file.is_some() {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|error| {
            UsageError(format!(
                "invalid endpoint {address:?}: {error}; expected host:port, http://host:port or https://host:port"
            ))
        })?
        .connect_timeout(CONNECT_TIMEOUT);
    let uri = endpoint.uri();
    if uri.host().is_none_or(str::is_empty) || (!has_scheme && uri.port_u16().is_none()) {
        return Err(UsageError(format!(
            "invalid endpoint {address:?}: expected host:port, http://host:port or https://host:port"
        ))
        .into());
    }

    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        match ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|error| {
                    UsageError(format!(
                        "cannot read the CA file {} (--ca-file, BACKSTOP_CA_FILE or the profile's ca-file): {error}",
                        path.display()
                    ))
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            None => tls = tls.with_native_roots(),
        }
        endpoint = endpoint
            .tls_config(tls)
            .context("cannot set up TLS for the endpoint")?;
    } else if ca_file.is_some() {
        return Err(UsageError(format!(
            "a CA file is set but the endpoint {address:?} is plain http://; use https:// or remove the CA file"
        ))
        .into());
    }
    Ok(endpoint)
}

/// Returns the profile file's path: `BACKSTOP_CLI_CONFIG`, else
/// `$XDG_CONFIG_HOME/backstop/config.yaml`, else
/// `~/.config/backstop/config.yaml`.
fn profile_file_path() -> Option<(PathBuf, bool)> {
    if let Some(path) = std::env::var_os(CONFIG_PATH_ENV).filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(path), true));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some((base.join("backstop").join("config.yaml"), false))
}

/// Loads the profile named `requested`, else the file's `current` one. A
/// missing default file means no profile. A missing file named by
/// `BACKSTOP_CLI_CONFIG` or a missing profile is an error.
fn load_profile(requested: Option<&str>) -> anyhow::Result<Profile> {
    let Some((path, explicit)) = profile_file_path() else {
        return match requested {
            Some(name) => bail!(UsageError(format!(
                "profile {name:?} requested but no profile file found: set {CONFIG_PATH_ENV} or HOME"
            ))),
            None => Ok(Profile::default()),
        };
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return match requested {
                Some(name) => bail!(UsageError(format!(
                    "profile {name:?} requested but the profile file {} does not exist",
                    path.display()
                ))),
                None => Ok(Profile::default()),
            };
        }
        Err(error) => {
            bail!(UsageError(format!(
                "cannot read the profile file {}: {error}",
                path.display()
            )))
        }
    };
    let file: ProfileFile = if text.trim().is_empty() {
        ProfileFile::default()
    } else {
        serde_yaml_ng::from_str(&text).map_err(|error| {
            UsageError(format!("invalid profile file {}: {error}", path.display()))
        })?
    };
    let name = match requested.or(file.current.as_deref()) {
        Some(name) => name,
        None => return Ok(Profile::default()),
    };
    file.profiles.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = file.profiles.keys().map(String::as_str).collect();
        UsageError(format!(
            "profile {name:?} is not in the profile file {}; its profiles are: {}",
            path.display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))
        .into()
    })
}

/// Formats an error with its sources, since tonic's transport errors keep
/// the useful part (connection refused, certificate invalid) in a source.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        for (input, expected) in [
            ("127.0.0.1:9000", "http://127.0.0.1:9000/"),
            ("localhost:9000", "http://localhost:9000/"),
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000/"),
            ("https://127.0.0.1:9443", "https://127.0.0.1:9443/"),
            ("[::1]:9000", "http://[::1]:9000/"),
        ] {
            let endpoint = build_endpoint(input, None).unwrap();
            assert_eq!(endpoint.uri().to_string(), expected, "input {input}");
        }
    }

    #[test]
    fn endpoint_rejects_other_schemes() {
        let error = build_endpoint("ftp://127.0.0.1:9000", None).unwrap_err();
        assert!(error.to_string().contains("http:// or https://"), "{error}");
    }

    #[test]
    fn endpoint_rejects_missing_port() {
        let error = build_endpoint("127.0.0.1", None).unwrap_err();
        assert!(error.to_string().contains("host:port"), "{error}");
    }

    #[test]
    fn profile_keys_are_kebab_case() {
        let file: ProfileFile = serde_yaml_ng::from_str(
            "current: lab\nprofiles:\n  lab:\n    endpoint: 127.0.0.1:1\n    folder-id: f\n    ca-file: /ca.pem\n    format: yaml\n",
        )
        .unwrap();
        let lab = &file.profiles["lab"];
        assert_eq!(lab.folder_id.as_deref(), Some("f"));
        assert_eq!(lab.ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(lab.format, Some(OutputFormat::Yaml));
    }

    #[test]
    fn profile_rejects_unknown_key() {
        let error = serde_yaml_ng::from_str::<ProfileFile>("profiles:\n  lab:\n    folder_id: f\n")
            .unwrap_err();
        assert!(error.to_string().contains("folder_id"), "{error}");
    }
}
