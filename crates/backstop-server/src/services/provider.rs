//! `yandex.cloud.backup.v1.ProviderService`: provider activation.
//!
//! Backstop has one built-in provider. Clients such as infrastructure tools
//! check `ListActivated` before they touch policies, so activation is kept
//! per folder in the catalog.

use backstop_proto::{
    backup::{
        provider_service_server::ProviderService, ActivateProviderMetadata,
        ActivateProviderRequest, ListActivatedProvidersRequest, ListActivatedProvidersResponse,
    },
    operation::Operation,
};
use tonic::{Request, Response, Status};

use super::{caller, idempotency_key, ApiContext};
use crate::{
    operations::{empty_response, to_proto, OperationRequest},
    validate::validate_request,
    ApiError,
};

/// The name of Backstop's one provider.
pub const PROVIDER_NAME: &str = "cloudbackup";

const ACTIVATE_METHOD: &str = "/yandex.cloud.backup.v1.ProviderService/Activate";

pub struct ProviderApi(pub ApiContext);

#[tonic::async_trait]
impl ProviderService for ProviderApi {
    #[tracing::instrument(skip_all, fields(folder_id = %request.get_ref().folder_id))]
    async fn activate(
        &self,
        request: Request<ActivateProviderRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let key = idempotency_key(&request);
        let request = request.into_inner();
        validate_request(&request)?;
        if request.name != PROVIDER_NAME {
            return Err(ApiError::invalid_field(
                "name",
                format!(
                    "unknown provider {:?}; the only provider is {PROVIDER_NAME:?}",
                    request.name
                ),
            )
            .into());
        }
        caller.check_folder(&request.folder_id)?;

        let metadata = ActivateProviderMetadata {
            folder_id: request.folder_id.clone(),
        };
        let (operation, created) = self
            .0
            .operations
            .create(
                &caller,
                OperationRequest {
                    method: ACTIVATE_METHOD,
                    idempotency_key: key,
                    description: format!("Activate provider {PROVIDER_NAME}"),
                    metadata: &metadata,
                    resource_id: None,
                },
            )
            .await?;
        if !created {
            return Ok(Response::new(to_proto(&operation)));
        }

        // Activation is one catalog row, so the operation ends before the
        // call returns.
        let result = match self
            .0
            .catalog
            .activate_provider(&request.folder_id, PROVIDER_NAME)
            .await
        {
            Ok(()) => Ok(empty_response()),
            Err(error) => {
                tracing::error!(error = ?error, "provider activation failed");
                Err((
                    tonic::Code::Internal,
                    "provider activation failed; see the server log".to_owned(),
                ))
            }
        };
        let operation = self.0.operations.finish(&operation.id, result).await?;
        Ok(Response::new(to_proto(&operation)))
    }

    async fn list_activated(
        &self,
        request: Request<ListActivatedProvidersRequest>,
    ) -> Result<Response<ListActivatedProvidersResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        validate_request(&request)?;
        caller.check_folder(&request.folder_id)?;
        let names = self
            .0
            .catalog
            .list_activated_providers(&request.folder_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ListActivatedProvidersResponse {
            folder_id: request.folder_id,
            names,
        }))
    }
}
