//! Bearer-token authentication and folder authorization.
//!
//! Tokens, the subject each one stands for and the folders it may act on
//! come from the server's configuration. In development mode (the default
//! on a loopback address) a call without a known token runs as the subject
//! `development` with access to every folder; a known token still maps to
//! its own subject and folders.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use crate::ApiError;

/// The subject of calls accepted in development mode without a known token.
pub const DEVELOPMENT_SUBJECT: &str = "development";

/// Authentication mode of the server.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// Every call must carry a configured token.
    Tokens,
    /// Calls without a known token are accepted as [`DEVELOPMENT_SUBJECT`].
    Development,
}

/// One configured API token.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub token: String,
    /// The id shown as `created_by` of the operations this token starts.
    pub subject: String,
    /// Folder ids the token may act on; `*` stands for every folder.
    pub folders: Vec<String>,
}

/// The authenticated caller of one request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub subject: String,
    folders: FolderAccess,
}

#[derive(Clone, Debug)]
enum FolderAccess {
    All,
    Only(HashSet<String>),
}

/// Maps bearer tokens to callers.
#[derive(Debug)]
pub struct Authenticator {
    mode: AuthMode,
    tokens: HashMap<String, Caller>,
}

impl Caller {
    /// Returns the caller of development mode, allowed on every folder.
    pub fn development() -> Self {
        Caller {
            subject: DEVELOPMENT_SUBJECT.to_owned(),
            folders: FolderAccess::All,
        }
    }

    /// Checks that the caller may act on `folder_id`.
    pub fn check_folder(&self, folder_id: &str) -> Result<(), ApiError> {
        match &self.folders {
            FolderAccess::All => Ok(()),
            FolderAccess::Only(folders) if folders.contains(folder_id) => Ok(()),
            FolderAccess::Only(_) => Err(ApiError::PermissionDenied(format!(
                "subject {} may not act on folder {folder_id}; add the folder to the token's `folders` in the server config",
                self.subject
            ))),
        }
    }
}

impl Authenticator {
    pub fn new(mode: AuthMode, tokens: &[TokenConfig]) -> Self {
        let tokens = tokens
            .iter()
            .map(|t| {
                let folders = if t.folders.iter().any(|f| f == "*") {
                    FolderAccess::All
                } else {
                    FolderAccess::Only(t.folders.iter().cloned().collect())
                };
                let caller = Caller {
                    subject: t.subject.clone(),
                    folders,
                };
                (t.token.clone(), caller)
            })
            .collect();
        Authenticator { mode, tokens }
    }

    /// Authenticates the value of an `authorization` header, if any.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let token = match authorization {
            None => None,
            Some(value) => match value.strip_prefix("Bearer ") {
                Some(token) if !token.trim().is_empty() => Some(token.trim()),
                _ => {
                    return Err(ApiError::Unauthenticated(
                        "the authorization header must read `Bearer <token>`".to_owned(),
                    ))
                }
            },
        };
        if let Some(caller) = token.and_then(|t| self.tokens.get(t)) {
            return Ok(caller.clone());
        }
        match (self.mode, token) {
            (AuthMode::Development, _) => Ok(Caller::development()),
            (AuthMode::Tokens, None) => Err(ApiError::Unauthenticated(
                "missing authorization header; send `authorization: Bearer <token>` with a token from the server config"
                    .to_owned(),
            )),
            (AuthMode::Tokens, Some(_)) => Err(ApiError::Unauthenticated(
                "the bearer token is unknown; use a token listed in the server config".to_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Vec<TokenConfig> {
        vec![TokenConfig {
            token: "secret-a".into(),
            subject: "ajeuser".into(),
            folders: vec!["folder-a".into()],
        }]
    }

    #[test]
    fn token_mode_rejects_missing_and_unknown_tokens() {
        let auth = Authenticator::new(AuthMode::Tokens, &tokens());
        assert!(matches!(
            auth.authenticate(None),
            Err(ApiError::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("Bearer nope")),
            Err(ApiError::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("Basic x")),
            Err(ApiError::Unauthenticated(_))
        ));
    }

    #[test]
    fn known_token_is_limited_to_its_folders() {
        let auth = Authenticator::new(AuthMode::Tokens, &tokens());
        let caller = auth.authenticate(Some("Bearer secret-a")).unwrap();
        assert_eq!(caller.subject, "ajeuser");
        assert!(caller.check_folder("folder-a").is_ok());
        assert!(matches!(
            caller.check_folder("folder-b"),
            Err(ApiError::PermissionDenied(_))
        ));
    }

    #[test]
    fn development_mode_accepts_any_token() {
        let auth = Authenticator::new(AuthMode::Development, &tokens());
        assert_eq!(
            auth.authenticate(None).unwrap().subject,
            DEVELOPMENT_SUBJECT
        );
        assert_eq!(
            auth.authenticate(Some("Bearer x")).unwrap().subject,
            DEVELOPMENT_SUBJECT
        );
        assert_eq!(
            auth.authenticate(Some("Bearer secret-a")).unwrap().subject,
            "ajeuser"
        );
    }
}
