//! `yandex.cloud.operation.OperationService`: Get and Cancel.

use backstop_proto::operation::{
    operation_service_server::OperationService, CancelOperationRequest, GetOperationRequest,
    Operation,
};
use tonic::{Request, Response, Status};

use super::{caller, ApiContext};
use crate::{operations::to_proto, validate::validate_request, ApiError};

pub struct OperationApi(pub ApiContext);

impl OperationApi {
    /// Loads an operation and checks that the caller may see it: operations
    /// are private to the subject that started them, except in development
    /// mode, where every call is the same subject.
    async fn load_for(
        &self,
        caller: &crate::auth::Caller,
        id: &str,
    ) -> Result<backstop_catalog::Operation, ApiError> {
        let operation = self.0.operations.get(id).await?;
        if operation.created_by != caller.subject {
            return Err(ApiError::NotFound(format!("operation {id} not found")));
        }
        Ok(operation)
    }
}

#[tonic::async_trait]
impl OperationService for OperationApi {
    #[tracing::instrument(skip_all, fields(operation_id = %request.get_ref().operation_id))]
    async fn get(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        validate_request(&request)?;
        let operation = self.load_for(&caller, &request.operation_id).await?;
        Ok(Response::new(to_proto(&operation)))
    }

    #[tracing::instrument(skip_all, fields(operation_id = %request.get_ref().operation_id))]
    async fn cancel(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        validate_request(&request)?;
        self.load_for(&caller, &request.operation_id).await?;
        let operation = self.0.operations.cancel(&request.operation_id).await?;
        Ok(Response::new(to_proto(&operation)))
    }
}
