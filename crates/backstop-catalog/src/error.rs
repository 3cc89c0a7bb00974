//! The catalog's error type.

/// A failed catalog call.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },

    #[error(
        "page token {0:?} is invalid; pass the next_page_token of the previous response unchanged"
    )]
    InvalidPageToken(String),

    #[error("catalog row is damaged: {0}")]
    Corrupt(String),

    #[error("catalog database failed")]
    Database(#[from] sqlx::Error),

    #[error("catalog migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),

    /// A write would duplicate a unique key, such as a policy name within
    /// its folder. `key` names the value and its scope.
    #[error("{kind} {key} already exists")]
    AlreadyExists { kind: &'static str, key: String },
}

impl CatalogError {
    pub(crate) fn not_found(kind: &'static str, id: &str) -> Self {
        CatalogError::NotFound {
            kind,
            id: id.to_owned(),
        }
    }
}
