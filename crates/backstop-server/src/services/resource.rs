//! `yandex.cloud.backup.v1.ResourceService`: the instances agents serve.

use backstop_catalog::{ResourceQuery, ResourceType};
use backstop_proto::{
    backup::{
        resource_service_server::ResourceService, CreateDirectoryRequest, DeleteResourceRequest,
        GetInstanceRegistrationTokenRequest, GetInstanceRegistrationTokenResponse,
        GetResourceRequest, GetResourceResponse, ListDirectoryRequest, ListDirectoryResponse,
        ListResourceOperationsRequest, ListResourceOperationsResponse, ListResourcesRequest,
        ListResourcesResponse, ListTasksRequest, ListTasksResponse,
    },
    operation::Operation,
};
use tonic::{Request, Response, Status};

use super::{caller, page_request, ApiContext};
use crate::{convert, validate::validate_request, ApiError};

pub struct ResourceApi(pub ApiContext);

impl ResourceApi {
    /// Loads an instance and checks that the caller may act on its folder.
    async fn load_resource(
        &self,
        caller: &crate::auth::Caller,
        compute_instance_id: &str,
    ) -> Result<backstop_catalog::Resource, ApiError> {
        let resource = self.0.catalog.get_resource(compute_instance_id).await?;
        caller.check_folder(&resource.folder_id)?;
        Ok(resource)
    }
}

/// How long a registration token lets agents register instances.
const REGISTRATION_TOKEN_LIFETIME: time::Duration = time::Duration::hours(24);

#[tonic::async_trait]
impl ResourceService for ResourceApi {
    #[tracing::instrument(skip_all, fields(folder_id = %request.get_ref().folder_id))]
    async fn list(
        &self,
        request: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        validate_request(&request)?;
        caller.check_folder(&request.folder_id)?;
        let resource_type = match request.r#type {
            0 => None,
            n => Some(ResourceType::from_i32(n).ok_or_else(|| {
                ApiError::invalid_field("type", format!("unknown resource type {n}"))
            })?),
        };
        let page = self
            .0
            .catalog
            .list_resources(&ResourceQuery {
                folder_id: request.folder_id,
                resource_type,
                page: page_request(request.page_size, &request.page_token),
            })
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ListResourcesResponse {
            resources: page.items.iter().map(convert::resource).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(compute_instance_id = %request.get_ref().compute_instance_id))]
    async fn get(
        &self,
        request: Request<GetResourceRequest>,
    ) -> Result<Response<GetResourceResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        validate_request(&request)?;
        let resource = self
            .load_resource(&caller, &request.compute_instance_id)
            .await?;
        let mut resource = convert::resource(&resource);
        if !request.include_tenant_info {
            resource.tenant_info = None;
        }
        Ok(Response::new(GetResourceResponse {
            resource: Some(resource),
        }))
    }

    async fn delete(
        &self,
        _request: Request<DeleteResourceRequest>,
    ) -> Result<Response<Operation>, Status> {
        Err(ApiError::Unimplemented("ResourceService.Delete is not implemented yet".into()).into())
    }

    #[tracing::instrument(skip_all, fields(compute_instance_id = %request.get_ref().compute_instance_id))]
    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        validate_request(&request)?;
        self.load_resource(&caller, &request.compute_instance_id)
            .await?;
        let page = self
            .0
            .catalog
            .list_tasks(
                &request.compute_instance_id,
                &page_request(request.page_size, &request.page_token),
            )
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ListTasksResponse {
            tasks: page.items.iter().map(convert::task).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn list_directory(
        &self,
        _request: Request<ListDirectoryRequest>,
    ) -> Result<Response<ListDirectoryResponse>, Status> {
        Err(ApiError::Unimplemented("ListDirectory is not implemented yet".into()).into())
    }

    async fn create_directory(
        &self,
        _request: Request<CreateDirectoryRequest>,
    ) -> Result<Response<Operation>, Status> {
        Err(ApiError::Unimplemented("CreateDirectory is not implemented yet".into()).into())
    }

    #[tracing::instrument(skip_all, fields(compute_instance_id = %request.get_ref().compute_instance_id))]
    async fn list_operations(
        &self,
        request: Request<ListResourceOperationsRequest>,
    ) -> Result<Response<ListResourceOperationsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        validate_request(&request)?;
        self.load_resource(&caller, &request.compute_instance_id)
            .await?;
        let page = self
            .0
            .catalog
            .list_operations_of(
                &request.compute_instance_id,
                &page_request(request.page_size, &request.page_token),
            )
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ListResourceOperationsResponse {
            operations: page.items.iter().map(crate::operations::to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    /// Issues a token with which an agent registers a new instance in the
    /// folder. The token is valid for [`REGISTRATION_TOKEN_LIFETIME`].
    #[tracing::instrument(skip_all, fields(folder_id = %request.get_ref().folder_id))]
    async fn get_instance_registration_token(
        &self,
        request: Request<GetInstanceRegistrationTokenRequest>,
    ) -> Result<Response<GetInstanceRegistrationTokenResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        validate_request(&request)?;
        caller.check_folder(&request.folder_id)?;
        let now = time::OffsetDateTime::now_utc();
        let token = backstop_catalog::RegistrationToken {
            // Two ids give 40 random characters, enough that tokens cannot
            // be guessed.
            id: format!(
                "{}{}",
                backstop_catalog::new_api_id(),
                backstop_catalog::new_api_id()
            ),
            folder_id: request.folder_id,
            created_by: caller.subject.clone(),
            created_at: now,
            expires_at: now + REGISTRATION_TOKEN_LIFETIME,
        };
        self.0
            .catalog
            .insert_registration_token(&token)
            .await
            .map_err(ApiError::from)?;
        tracing::info!("registration token issued");
        Ok(Response::new(GetInstanceRegistrationTokenResponse {
            instance_registration_id: token.id,
            expired_at: Some(convert::timestamp(token.expires_at)),
        }))
    }
}
