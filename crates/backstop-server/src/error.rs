//! The server's error type and its one mapping onto gRPC status codes.

use backstop_catalog::CatalogError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// A failed API call, as the handler decided it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is invalid. `field` is the snake_case path as the
    /// proto spells it; `message` is the full text shown to the caller.
    #[error("{message}")]
    InvalidArgument {
        field: String,
        description: String,
        message: String,
    },

    #[error("{0}")]
    NotFound(String),

    #[error("{0}")]
    AlreadyExists(String),

    #[error("{0}")]
    PermissionDenied(String),

    #[error("{0}")]
    Unauthenticated(String),

    #[error("{0}")]
    FailedPrecondition(String),

    #[error("{0}")]
    Unimplemented(String),

    #[error("{0}")]
    Unavailable(String),

    #[error("catalog call failed")]
    Catalog(#[from] CatalogError),

    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// Builds the validation error of one field in the public API's wording:
    /// `Request validation error: <FieldName>: <reason>`.
    pub fn invalid_field(field_path: &str, reason: impl Into<String>) -> Self {
        let description = reason.into();
        let message = format!(
            "Request validation error: {}: {}",
            upper_camel_path(field_path),
            description
        );
        ApiError::InvalidArgument {
            field: field_path.to_owned(),
            description,
            message,
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument {
                field,
                description,
                message,
            } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(field, description),
            ),
            ApiError::NotFound(message) => Status::not_found(message),
            ApiError::AlreadyExists(message) => Status::already_exists(message),
            ApiError::PermissionDenied(message) => Status::permission_denied(message),
            ApiError::Unauthenticated(message) => Status::unauthenticated(message),
            ApiError::FailedPrecondition(message) => Status::failed_precondition(message),
            ApiError::Unimplemented(message) => Status::unimplemented(message),
            ApiError::Unavailable(message) => Status::unavailable(message),
            ApiError::Catalog(CatalogError::NotFound { kind, id }) => {
                Status::not_found(format!("{kind} {id} not found"))
            }
            ApiError::Catalog(error @ CatalogError::AlreadyExists { .. }) => {
                Status::already_exists(error.to_string())
            }
            ApiError::Catalog(error @ CatalogError::InvalidPageToken(_)) => {
                ApiError::invalid_field("page_token", error.to_string()).into()
            }
            ApiError::Catalog(
                error @ (CatalogError::Corrupt(_)
                | CatalogError::Database(_)
                | CatalogError::Migration(_)),
            ) => {
                tracing::error!(error = ?anyhow::Error::from(error), "catalog call failed");
                Status::internal("internal error in the catalog; see the server log")
            }
            ApiError::Internal(error) => {
                tracing::error!(error = ?error, "request failed");
                Status::internal("internal error; see the server log")
            }
        }
    }
}

/// Turns `archive.archive_id` into `Archive.ArchiveId`, the Go-style field
/// path that the public API puts into validation messages.
pub fn upper_camel_path(path: &str) -> String {
    path.split('.')
        .map(|segment| {
            segment
                .split('_')
                .map(|word| {
                    let mut chars = word.chars();
                    match chars.next() {
                        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                        None => String::new(),
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_path_becomes_upper_camel() {
        assert_eq!(upper_camel_path("compute_instance_id"), "ComputeInstanceId");
        assert_eq!(upper_camel_path("archive.archive_id"), "Archive.ArchiveId");
        assert_eq!(upper_camel_path("id"), "Id");
    }

    #[test]
    fn invalid_field_carries_bad_request_detail() {
        let status = Status::from(ApiError::invalid_field("backup_id", "required"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "Request validation error: BackupId: required"
        );
        let details = status.get_error_details();
        let violations = &details
            .bad_request()
            .expect("BadRequest detail")
            .field_violations;
        assert_eq!(violations[0].field, "backup_id");
        assert_eq!(violations[0].description, "required");
    }
}
