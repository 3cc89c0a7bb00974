//! `yandex.cloud.backup.v1.PolicyService`: backup policies and the instances
//! they are applied to.
//!
//! Every mutating call follows the same order. It validates the request,
//! loads what the request names, and checks that the caller may act on its
//! folder. Then it records the operation under the `idempotency-key`, and
//! only after that checks the state that the call itself changes: the name
//! of a new policy, a policy not yet deleted, an existing application. A
//! retry with the same key therefore returns the first operation even after
//! that operation changed the state. When a check after the operation fails,
//! the operation ends with that error and the call returns the same error.
//!
//! Each mutation is one catalog write, so its operation is done before the
//! call returns. `Execute` needs the backup agent and is not available yet.

use backstop_catalog::{
    self as catalog, AnyMessage, ApplicationScope, CatalogError, NewPolicy, PolicyQuery,
};
use backstop_proto::{
    backup::{
        list_applications_request, policy_service_server::PolicyService, ApplyPolicyMetadata,
        ApplyPolicyRequest, CreatePolicyMetadata, CreatePolicyRequest, DeletePolicyMetadata,
        DeletePolicyRequest, ExecuteRequest, GetPolicyRequest, ListApplicationsRequest,
        ListApplicationsResponse, ListPoliciesRequest, ListPoliciesResponse, Policy,
        PolicyApplication, PolicySettings, RevokeMetadata, RevokeRequest, UpdatePolicyMetadata,
        UpdatePolicyRequest,
    },
    operation::Operation,
};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{caller, idempotency_key, ApiContext};
use crate::{
    auth::Caller,
    convert::timestamp,
    operations::{empty_response, pack, to_proto, OperationRequest},
    validate::validate_request,
    ApiError,
};

const CREATE_METHOD: &str = "/yandex.cloud.backup.v1.PolicyService/Create";
const UPDATE_METHOD: &str = "/yandex.cloud.backup.v1.PolicyService/Update";
const DELETE_METHOD: &str = "/yandex.cloud.backup.v1.PolicyService/Delete";
const APPLY_METHOD: &str = "/yandex.cloud.backup.v1.PolicyService/Apply";
const EXECUTE_METHOD: &str = "/yandex.cloud.backup.v1.PolicyService/Execute";
const REVOKE_METHOD: &str = "/yandex.cloud.backup.v1.PolicyService/Revoke";

pub struct PolicyApi(pub ApiContext);

impl PolicyApi {
    /// Loads a policy that is not deleted and checks that the caller may act
    /// on its folder. A deleted policy is NOT_FOUND, like a missing one.
    async fn load_policy(
        &self,
        caller: &Caller,
        policy_id: &str,
    ) -> Result<catalog::Policy, ApiError> {
        let policy = self.0.catalog.get_policy(policy_id).await?;
        if policy.deleted {
            return Err(policy_not_found(policy_id));
        }
        caller.check_folder(&policy.folder_id)?;
        Ok(policy)
    }

    /// Loads a registered instance and checks that the caller may act on its
    /// folder.
    async fn load_instance(
        &self,
        caller: &Caller,
        compute_instance_id: &str,
    ) -> Result<catalog::Resource, ApiError> {
        let resource = match self.0.catalog.get_resource(compute_instance_id).await {
            Ok(resource) => resource,
            Err(CatalogError::NotFound { .. }) => {
                return Err(instance_not_found(compute_instance_id))
            }
            Err(error) => return Err(error.into()),
        };
        caller.check_folder(&resource.folder_id)?;
        Ok(resource)
    }

    /// Ends a new operation with the outcome of its catalog write. A failure
    /// ends the operation with the error's code and message, and the call
    /// returns the same error.
    async fn finish(
        &self,
        operation_id: &str,
        outcome: Result<AnyMessage, ApiError>,
    ) -> Result<Response<Operation>, Status> {
        match outcome {
            Ok(response) => {
                let operation = self.0.operations.finish(operation_id, Ok(response)).await?;
                Ok(Response::new(to_proto(&operation)))
            }
            Err(error) => {
                let status = Status::from(error);
                self.0
                    .operations
                    .finish(
                        operation_id,
                        Err((status.code(), status.message().to_owned())),
                    )
                    .await?;
                Err(status)
            }
        }
    }
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    /// Lists policies that are not deleted, oldest first. With `folder_id`,
    /// lists that folder, and a `compute_instance_id` as well keeps only the
    /// policies applied to that instance without looking the instance up.
    /// With only `compute_instance_id`, the instance must be registered, and
    /// the list keeps only the policies in folders the caller may act on.
    #[tracing::instrument(skip_all, fields(folder_id = %request.get_ref().folder_id))]
    async fn list(
        &self,
        request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        validate_request(&request)?;
        let folder_id = Some(request.folder_id).filter(|id| !id.is_empty());
        let compute_instance_id = Some(request.compute_instance_id).filter(|id| !id.is_empty());

        match (&folder_id, &compute_instance_id) {
            (None, None) => {
                return Err(ApiError::invalid_field(
                    "folder_id",
                    "required unless compute_instance_id is set",
                )
                .into())
            }
            (Some(folder_id), _) => caller.check_folder(folder_id)?,
            (None, Some(instance)) => {
                self.load_instance(&caller, instance).await?;
            }
        }
        let policies = self
            .0
            .catalog
            .list_policies(&PolicyQuery {
                folder_id,
                compute_instance_id,
            })
            .await
            .map_err(ApiError::from)?;

        let mut visible = Vec::with_capacity(policies.len());
        for policy in policies
            .iter()
            .filter(|p| caller.check_folder(&p.folder_id).is_ok())
        {
            visible.push(policy_to_proto(policy)?);
        }
        Ok(Response::new(ListPoliciesResponse { policies: visible }))
    }

    /// Creates an enabled policy. The name must be unique within the folder
    /// among policies that are not deleted, so a taken name fails with
    /// ALREADY_EXISTS.
    #[tracing::instrument(skip_all, fields(folder_id = %request.get_ref().folder_id))]
    async fn create(
        &self,
        request: Request<CreatePolicyRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let key = idempotency_key(&request);
        let request = request.into_inner();
        validate_request(&request)?;
        caller.check_folder(&request.folder_id)?;
        let settings = request.settings.unwrap_or_default();

        let metadata = CreatePolicyMetadata {
            policy_id: catalog::new_api_id(),
        };
        let (operation, created) = self
            .0
            .operations
            .create(
                &caller,
                OperationRequest {
                    method: CREATE_METHOD,
                    idempotency_key: key,
                    description: format!("Create policy {}", request.name),
                    metadata: &metadata,
                    resource_id: None,
                },
            )
            .await?;
        if !created {
            return Ok(Response::new(to_proto(&operation)));
        }

        let new = NewPolicy {
            id: metadata.policy_id.clone(),
            folder_id: request.folder_id.clone(),
            name: request.name.clone(),
            enabled: true,
            settings: settings.encode_to_vec(),
        };
        let outcome = match self.0.catalog.create_policy(&new).await {
            Ok(policy) => {
                tracing::info!(policy_id = %policy.id, name = %policy.name, "policy created");
                policy_to_proto(&policy).map(|p| pack(&p))
            }
            Err(CatalogError::AlreadyExists { .. }) => Err(ApiError::AlreadyExists(format!(
                "policy {:?} already exists in folder {}; choose another name, or update or delete that policy",
                request.name, request.folder_id
            ))),
            Err(error) => Err(error.into()),
        };
        self.finish(&operation.id, outcome).await
    }

    #[tracing::instrument(skip_all, fields(policy_id = %request.get_ref().policy_id))]
    async fn get(&self, request: Request<GetPolicyRequest>) -> Result<Response<Policy>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        validate_request(&request)?;
        let policy = self.load_policy(&caller, &request.policy_id).await?;
        Ok(Response::new(policy_to_proto(&policy)?))
    }

    /// Replaces the settings of a policy. The request carries only settings,
    /// so the name and folder do not change.
    #[tracing::instrument(skip_all, fields(policy_id = %request.get_ref().policy_id))]
    async fn update(
        &self,
        request: Request<UpdatePolicyRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let key = idempotency_key(&request);
        let request = request.into_inner();
        validate_request(&request)?;
        let policy = self.load_policy(&caller, &request.policy_id).await?;
        let settings = request.settings.unwrap_or_default();

        let metadata = UpdatePolicyMetadata {
            policy_id: policy.id.clone(),
        };
        let (operation, created) = self
            .0
            .operations
            .create(
                &caller,
                OperationRequest {
                    method: UPDATE_METHOD,
                    idempotency_key: key,
                    description: format!("Update policy {}", policy.name),
                    metadata: &metadata,
                    resource_id: None,
                },
            )
            .await?;
        if !created {
            return Ok(Response::new(to_proto(&operation)));
        }

        // A policy deleted since it was loaded is NOT_FOUND here.
        let outcome = match self
            .0
            .catalog
            .update_policy_settings(&policy.id, &settings.encode_to_vec())
            .await
        {
            Ok(updated) => policy_to_proto(&updated).map(|p| pack(&p)),
            Err(error) => Err(error.into()),
        };
        self.finish(&operation.id, outcome).await
    }

    /// Marks a policy deleted and removes its applications. The policy is
    /// NOT_FOUND afterwards, and its name can be used again.
    #[tracing::instrument(skip_all, fields(policy_id = %request.get_ref().policy_id))]
    async fn delete(
        &self,
        request: Request<DeletePolicyRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let key = idempotency_key(&request);
        let request = request.into_inner();
        validate_request(&request)?;
        // A deleted policy is loaded too, so that a retry of this call with
        // the same key still finds its folder and returns the first
        // operation. The catalog rejects deleting it a second time.
        let policy = self
            .0
            .catalog
            .get_policy(&request.policy_id)
            .await
            .map_err(ApiError::from)?;
        caller.check_folder(&policy.folder_id)?;

        let metadata = DeletePolicyMetadata {
            policy_id: policy.id.clone(),
        };
        let (operation, created) = self
            .0
            .operations
            .create(
                &caller,
                OperationRequest {
                    method: DELETE_METHOD,
                    idempotency_key: key,
                    description: format!("Delete policy {}", policy.name),
                    metadata: &metadata,
                    resource_id: None,
                },
            )
            .await?;
        if !created {
            return Ok(Response::new(to_proto(&operation)));
        }

        let outcome = match self.0.catalog.delete_policy(&policy.id).await {
            Ok(()) => {
                tracing::info!(name = %policy.name, "policy deleted");
                Ok(empty_response())
            }
            Err(CatalogError::NotFound { .. }) => Err(policy_not_found(&policy.id)),
            Err(error) => Err(error.into()),
        };
        self.finish(&operation.id, outcome).await
    }

    /// Applies a policy to a registered instance. The two may be in different
    /// folders, and the caller must be allowed on both. Applying a policy
    /// that is already applied succeeds and changes nothing.
    #[tracing::instrument(skip_all, fields(
        policy_id = %request.get_ref().policy_id,
        compute_instance_id = %request.get_ref().compute_instance_id,
    ))]
    async fn apply(
        &self,
        request: Request<ApplyPolicyRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let key = idempotency_key(&request);
        let request = request.into_inner();
        validate_request(&request)?;
        let policy = self.load_policy(&caller, &request.policy_id).await?;
        self.load_instance(&caller, &request.compute_instance_id)
            .await?;

        let metadata = ApplyPolicyMetadata {
            policy_id: policy.id.clone(),
            compute_instance_id: request.compute_instance_id.clone(),
        };
        let (operation, created) = self
            .0
            .operations
            .create(
                &caller,
                OperationRequest {
                    method: APPLY_METHOD,
                    idempotency_key: key,
                    description: format!(
                        "Apply policy {} to instance {}",
                        policy.name, request.compute_instance_id
                    ),
                    metadata: &metadata,
                    resource_id: Some(request.compute_instance_id.clone()),
                },
            )
            .await?;
        if !created {
            return Ok(Response::new(to_proto(&operation)));
        }

        let outcome = match self
            .0
            .catalog
            .apply_policy(&policy.id, &request.compute_instance_id)
            .await
        {
            Ok(_) => {
                tracing::info!("policy applied");
                Ok(empty_response())
            }
            Err(CatalogError::NotFound { .. }) => Err(policy_not_found(&policy.id)),
            Err(error) => Err(error.into()),
        };
        self.finish(&operation.id, outcome).await
    }

    /// Lists applications by exactly one of folder (the applications of the
    /// folder's policies), policy or instance, oldest first.
    /// `show_processing` is accepted, but nothing runs yet, so
    /// `is_processing` is always false.
    #[tracing::instrument(skip_all)]
    async fn list_applications(
        &self,
        request: Request<ListApplicationsRequest>,
    ) -> Result<Response<ListApplicationsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        validate_request(&request)?;

        let scope = match request.id {
            Some(list_applications_request::Id::FolderId(folder_id)) => {
                caller.check_folder(&folder_id)?;
                ApplicationScope::Folder(folder_id)
            }
            Some(list_applications_request::Id::PolicyId(policy_id)) => {
                self.load_policy(&caller, &policy_id).await?;
                ApplicationScope::Policy(policy_id)
            }
            Some(list_applications_request::Id::ComputeInstanceId(instance)) => {
                self.load_instance(&caller, &instance).await?;
                ApplicationScope::Instance(instance)
            }
            None => {
                return Err(ApiError::invalid_field(
                    "id",
                    "exactly one of folder_id, policy_id, compute_instance_id must be set",
                )
                .into())
            }
        };
        let mut applications = self
            .0
            .catalog
            .list_policy_applications(&scope)
            .await
            .map_err(ApiError::from)?;

        // Policies applied to one instance may come from several folders, so
        // hide those of folders the caller may not act on.
        if let ApplicationScope::Instance(instance) = &scope {
            let allowed: Vec<String> = self
                .0
                .catalog
                .list_policies(&PolicyQuery {
                    folder_id: None,
                    compute_instance_id: Some(instance.clone()),
                })
                .await
                .map_err(ApiError::from)?
                .into_iter()
                .filter(|p| caller.check_folder(&p.folder_id).is_ok())
                .map(|p| p.id)
                .collect();
            applications.retain(|a| allowed.contains(&a.policy_id));
        }
        Ok(Response::new(ListApplicationsResponse {
            applications: applications.iter().map(application_to_proto).collect(),
        }))
    }

    /// Checks that a backup on demand could start, then returns UNIMPLEMENTED
    /// because the backup agent does not exist yet. A policy that is not
    /// applied to the instance is FAILED_PRECONDITION, because both exist
    /// and only their link is missing.
    #[tracing::instrument(skip_all, fields(
        policy_id = %request.get_ref().policy_id,
        compute_instance_id = %request.get_ref().compute_instance_id,
    ))]
    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let key = idempotency_key(&request);
        let request = request.into_inner();
        validate_request(&request)?;
        let policy = self.load_policy(&caller, &request.policy_id).await?;
        self.load_instance(&caller, &request.compute_instance_id)
            .await?;
        match self
            .0
            .catalog
            .get_policy_application(&policy.id, &request.compute_instance_id)
            .await
        {
            Ok(_) => {}
            Err(CatalogError::NotFound { .. }) => {
                return Err(ApiError::FailedPrecondition(format!(
                    "policy {} is not applied to instance {}; call Apply first",
                    policy.id, request.compute_instance_id
                ))
                .into())
            }
            Err(error) => return Err(ApiError::from(error).into()),
        }

        let settings = PolicySettings::decode(policy.settings.as_slice()).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!(
                "settings of policy {} do not decode: {e}",
                policy.id
            ))
        })?;
        let operation = crate::backups::start_backup(
            &self.0,
            &caller,
            crate::backups::BackupRequest {
                method: EXECUTE_METHOD,
                idempotency_key: key,
                policy_id: &policy.id,
                policy_name: &policy.name,
                compression: settings.compression,
                compute_instance_id: &request.compute_instance_id,
            },
        )
        .await?;
        Ok(Response::new(to_proto(&operation)))
    }

    /// Removes the application of a policy to an instance. The instance
    /// need not be registered any more, so that an unregistered instance can
    /// still be detached. When it is registered, the caller must be allowed
    /// on its folder too.
    #[tracing::instrument(skip_all, fields(
        policy_id = %request.get_ref().policy_id,
        compute_instance_id = %request.get_ref().compute_instance_id,
    ))]
    async fn revoke(&self, request: Request<RevokeRequest>) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let key = idempotency_key(&request);
        let request = request.into_inner();
        validate_request(&request)?;
        let policy = self.load_policy(&caller, &request.policy_id).await?;
        match self
            .load_instance(&caller, &request.compute_instance_id)
            .await
        {
            Ok(_) | Err(ApiError::NotFound(_)) => {}
            Err(error) => return Err(error.into()),
        }

        let metadata = RevokeMetadata {
            policy_id: policy.id.clone(),
            compute_instance_id: request.compute_instance_id.clone(),
        };
        let (operation, created) = self
            .0
            .operations
            .create(
                &caller,
                OperationRequest {
                    method: REVOKE_METHOD,
                    idempotency_key: key,
                    description: format!(
                        "Revoke policy {} from instance {}",
                        policy.name, request.compute_instance_id
                    ),
                    metadata: &metadata,
                    resource_id: Some(request.compute_instance_id.clone()),
                },
            )
            .await?;
        if !created {
            return Ok(Response::new(to_proto(&operation)));
        }

        let outcome = match self
            .0
            .catalog
            .revoke_policy(&policy.id, &request.compute_instance_id)
            .await
        {
            Ok(()) => {
                tracing::info!("policy revoked");
                Ok(empty_response())
            }
            Err(CatalogError::NotFound { .. }) => Err(ApiError::NotFound(format!(
                "policy {} is not applied to instance {}",
                policy.id, request.compute_instance_id
            ))),
            Err(error) => Err(error.into()),
        };
        self.finish(&operation.id, outcome).await
    }
}

fn policy_not_found(policy_id: &str) -> ApiError {
    ApiError::NotFound(format!("policy {policy_id} not found"))
}

fn instance_not_found(compute_instance_id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "instance {compute_instance_id} not found; an instance appears after its backup agent registers it"
    ))
}

/// Converts a catalog policy, decoding its stored settings.
fn policy_to_proto(policy: &catalog::Policy) -> Result<Policy, ApiError> {
    let settings = PolicySettings::decode(policy.settings.as_slice()).map_err(|error| {
        CatalogError::Corrupt(format!(
            "settings of policy {} do not decode as PolicySettings: {error}",
            policy.id
        ))
    })?;
    Ok(Policy {
        id: policy.id.clone(),
        name: policy.name.clone(),
        created_at: Some(timestamp(policy.created_at)),
        updated_at: Some(timestamp(policy.updated_at)),
        enabled: policy.enabled,
        settings: Some(settings),
        folder_id: policy.folder_id.clone(),
    })
}

fn application_to_proto(application: &catalog::PolicyApplication) -> PolicyApplication {
    PolicyApplication {
        policy_id: application.policy_id.clone(),
        compute_instance_id: application.compute_instance_id.clone(),
        enabled: application.enabled,
        status: application.status as i32,
        created_at: Some(timestamp(application.created_at)),
        is_processing: false,
    }
}
