//! `yandex.cloud.endpoint.ApiEndpointService`: endpoint discovery.
//!
//! The official SDKs ask this service where each API lives before they open
//! a channel. Every entry points at this server, so discovery followed by
//! any call (operation polling included) stays on Backstop.

use backstop_proto::endpoint::{
    api_endpoint_service_server::ApiEndpointService, ApiEndpoint, GetApiEndpointRequest,
    ListApiEndpointsRequest, ListApiEndpointsResponse,
};
use tonic::{Request, Response, Status};

use super::ApiContext;
use crate::ApiError;

/// Endpoint ids this server serves. `backup`, `cloudbackup` and `baas`
/// are the aliases the public API lists for the backup service; `iam` is
/// needed because the SDKs resolve it before anything else.
const ENDPOINT_IDS: &[&str] = &[
    "backup",
    "cloudbackup",
    "baas",
    "operation",
    "iam",
    "endpoint",
];

pub struct EndpointApi(pub ApiContext);

impl EndpointApi {
    fn endpoint(&self, id: &str) -> ApiEndpoint {
        ApiEndpoint {
            id: id.to_owned(),
            address: self.0.advertised_address.clone(),
        }
    }
}

#[tonic::async_trait]
impl ApiEndpointService for EndpointApi {
    async fn get(
        &self,
        request: Request<GetApiEndpointRequest>,
    ) -> Result<Response<ApiEndpoint>, Status> {
        let id = request.into_inner().api_endpoint_id;
        if !ENDPOINT_IDS.contains(&id.as_str()) {
            return Err(ApiError::NotFound(format!(
                "endpoint {id:?} not found; this server serves {}",
                ENDPOINT_IDS.join(", ")
            ))
            .into());
        }
        Ok(Response::new(self.endpoint(&id)))
    }

    async fn list(
        &self,
        _request: Request<ListApiEndpointsRequest>,
    ) -> Result<Response<ListApiEndpointsResponse>, Status> {
        Ok(Response::new(ListApiEndpointsResponse {
            endpoints: ENDPOINT_IDS.iter().map(|id| self.endpoint(id)).collect(),
            next_page_token: String::new(),
        }))
    }
}
