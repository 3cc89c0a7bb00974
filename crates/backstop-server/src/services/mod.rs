//! gRPC handlers of the public API. Each handler validates the request,
//! authorizes the caller, converts proto types to catalog types, and calls
//! the catalog or the operation registry. No handler keeps state of its own.

pub mod backup;
pub mod endpoint;
pub mod operation;
pub mod policy;
pub mod provider;
pub mod resource;

use std::sync::Arc;

use backstop_catalog::{Catalog, PageRequest};
use tonic::Request;

use crate::{auth::Caller, operations::OperationRegistry, ApiError};

/// Page size used when a request leaves `page_size` at 0.
const DEFAULT_PAGE_SIZE: usize = 100;

/// Everything a handler may use.
#[derive(Clone)]
pub struct ApiContext {
    pub catalog: Arc<dyn Catalog>,
    pub operations: Arc<OperationRegistry>,
    /// Agent tasks: handlers that enqueue one wake the agents' polls here.
    pub agents: Arc<crate::agents::AgentHub>,
    /// The repository, for manifest removal and garbage collection.
    pub repository: backstop_chunkstore::Repository,
    /// Chunks written this recently survive garbage collection.
    pub gc_grace_period: std::time::Duration,
    /// The `host:port` that endpoint discovery hands to clients.
    pub advertised_address: String,
}

/// Returns the caller that [`crate::layer::ApiLayer`] authenticated.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, ApiError> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "request reached a handler without a caller"
            ))
        })
}

/// Returns the `idempotency-key` metadata of a request, if any.
pub fn idempotency_key<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
}

/// Builds a catalog page request from a proto `page_size` and `page_token`;
/// validation has already limited `page_size` to 0..=1000.
pub fn page_request(page_size: i64, page_token: &str) -> PageRequest {
    PageRequest {
        size: if page_size <= 0 {
            DEFAULT_PAGE_SIZE
        } else {
            page_size as usize
        },
        token: Some(page_token.to_owned()).filter(|t| !t.is_empty()),
    }
}
