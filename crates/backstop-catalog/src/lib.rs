//! The catalog: Backstop's metadata database.
//!
//! It stores operations (with their idempotency keys), resources (the
//! instances an agent serves), archives, backups and provider activations.
//! Callers see only the [`Catalog`] trait and the plain types in [`model`];
//! the embedded SQLite backend ([`SqliteCatalog`]) is the default, and a
//! PostgreSQL backend can implement the same trait without callers changing.
//!
//! Guarantees every backend keeps:
//! - [`Catalog::create_operation`] records an operation and its idempotency
//!   key in one transaction, so a repeated key never yields a second
//!   operation, even when two calls race.
//! - A finished operation contains exactly one of an error (with a non-zero code)
//!   and a response, and never changes again.
//! - Every update of an operation moves `modified_at` forward.

mod error;
mod ids;
pub mod model;
mod sqlite;
mod sqlite_policies;
mod sqlite_tasks;
pub mod suite;

use async_trait::async_trait;

pub use error::CatalogError;
pub use ids::new_api_id;
pub use model::*;
pub use sqlite::SqliteCatalog;

/// Result type of catalog calls.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// The metadata store behind the public API.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Records a new operation, or returns the operation already recorded
    /// under the same idempotency key (then `created` is false).
    async fn create_operation(&self, new: NewOperation) -> Result<CreatedOperation>;

    async fn get_operation(&self, id: &str) -> Result<Operation>;

    /// Returns the operation recorded under an idempotency key, if any.
    async fn find_idempotent_operation(&self, key: &IdempotencyKey) -> Result<Option<Operation>>;

    /// Replaces the metadata of an unfinished operation. Updates of a finished
    /// operation are ignored and return it unchanged.
    async fn update_operation_metadata(&self, id: &str, metadata: AnyMessage) -> Result<Operation>;

    /// Marks an operation done with its result, unless it is already done.
    async fn finish_operation(&self, id: &str, result: OperationResult) -> Result<Operation>;

    /// Flags an unfinished operation for cancellation; the worker that runs
    /// it reads the flag and ends it.
    async fn request_cancel(&self, id: &str) -> Result<Operation>;

    /// Lists the operations on one instance, newest first.
    async fn list_operations_of(
        &self,
        resource_id: &str,
        page: &PageRequest,
    ) -> Result<Page<Operation>>;

    /// Lists operations that are not done, oldest first, so a restarted
    /// server can resume or end them.
    async fn list_unfinished_operations(&self) -> Result<Vec<Operation>>;

    /// Deletes idempotency keys created before `before`.
    async fn expire_idempotency_keys(&self, before: Timestamp) -> Result<u64>;

    async fn upsert_resource(&self, resource: &Resource) -> Result<()>;

    async fn get_resource(&self, compute_instance_id: &str) -> Result<Resource>;

    async fn list_resources(&self, query: &ResourceQuery) -> Result<Page<Resource>>;

    async fn upsert_archive(&self, archive: &Archive) -> Result<()>;

    async fn get_archive(&self, id: &str) -> Result<Archive>;

    async fn list_archives(&self, scope: &ArchiveScope) -> Result<Vec<Archive>>;

    async fn insert_backup(&self, backup: &Backup) -> Result<()>;

    async fn get_backup(&self, id: &str) -> Result<Backup>;

    async fn list_backups(&self, query: &BackupQuery) -> Result<Page<Backup>>;

    async fn activate_provider(&self, folder_id: &str, name: &str) -> Result<()>;

    async fn list_activated_providers(&self, folder_id: &str) -> Result<Vec<String>>;

    /// Records an agent heartbeat: the instance is online as of `at`.
    async fn record_heartbeat(
        &self,
        compute_instance_id: &str,
        at: Timestamp,
        agent_version: &str,
    ) -> Result<()>;

    /// Marks instances whose last heartbeat is older than `before` offline
    /// and returns their ids.
    async fn mark_silent_offline(&self, before: Timestamp) -> Result<Vec<String>>;

    /// Sets what an instance is doing, as `Resource.status` shows it.
    async fn set_resource_status(
        &self,
        compute_instance_id: &str,
        status: ResourceStatus,
        progress: i64,
        details: &str,
    ) -> Result<()>;

    /// Sets the status and progress of an instance while task `task_id`
    /// runs. Once the task has finished it does nothing, so a late progress
    /// report cannot override the idle status that the completion set.
    async fn set_resource_progress(
        &self,
        compute_instance_id: &str,
        task_id: i64,
        status: ResourceStatus,
        progress: i64,
    ) -> Result<()>;

    async fn get_task(&self, id: i64) -> Result<Task>;

    async fn get_task_by_operation(&self, operation_id: &str) -> Result<Task>;

    /// Returns the instance's task that is enqueued or running, if any.
    async fn active_task(&self, compute_instance_id: &str) -> Result<Option<Task>>;

    /// Moves the instance's oldest enqueued task to `Assigned` and returns it.
    async fn claim_next_task(&self, compute_instance_id: &str) -> Result<Option<Task>>;

    /// Puts an unfinished task back in the queue with a new payload, for an
    /// agent that restarted while it ran the task.
    async fn requeue_task(&self, id: i64, payload: &str) -> Result<Task>;

    /// Records progress of an unfinished task and marks it started.
    async fn update_task_progress(&self, id: i64, current: i64, total: i64) -> Result<Task>;

    /// Ends a task; a completed task is returned unchanged.
    async fn finish_task(&self, id: i64, code: TaskCode, error: &str) -> Result<Task>;

    /// Lists the tasks of an instance, newest first.
    async fn list_tasks(&self, compute_instance_id: &str, page: &PageRequest)
        -> Result<Page<Task>>;

    async fn insert_registration_token(&self, token: &RegistrationToken) -> Result<()>;

    async fn get_registration_token(&self, id: &str) -> Result<RegistrationToken>;

    /// Lists every task that is enqueued or running, oldest first.
    async fn list_active_tasks(&self) -> Result<Vec<Task>>;

    /// Marks a backup deleted; listings skip it from then on.
    async fn mark_backup_deleted(&self, id: &str) -> Result<()>;

    /// Marks an archive and all its backups deleted in one transaction.
    async fn mark_archive_deleted(&self, id: &str) -> Result<()>;

    /// Records a finished backup and the archive it joins in one transaction.
    async fn record_backup(&self, archive: &Archive, backup: &Backup) -> Result<()>;

    /// Replaces the disk list an instance's agent reported.
    async fn set_instance_disks(
        &self,
        compute_instance_id: &str,
        disks: &[InstanceDisk],
    ) -> Result<()>;

    /// Returns the disks an instance's agent last reported, in its order.
    async fn list_instance_disks(&self, compute_instance_id: &str) -> Result<Vec<InstanceDisk>>;

    /// Inserts a policy with `created_at` and `updated_at` set to now and
    /// returns it as stored. Fails with [`CatalogError::AlreadyExists`] when
    /// a policy of the same folder that is not deleted has the same name.
    async fn create_policy(&self, new: &NewPolicy) -> Result<Policy>;

    /// Returns a policy, also when it is deleted.
    async fn get_policy(&self, id: &str) -> Result<Policy>;

    /// Lists the policies that are not deleted, oldest first.
    async fn list_policies(&self, query: &PolicyQuery) -> Result<Vec<Policy>>;

    /// Replaces the settings of a policy that is not deleted and moves its
    /// `updated_at` forward. A deleted policy is [`CatalogError::NotFound`].
    async fn update_policy_settings(&self, id: &str, settings: &[u8]) -> Result<Policy>;

    /// Marks a policy deleted and removes its applications in one
    /// transaction. A policy that is missing or already deleted is
    /// [`CatalogError::NotFound`].
    async fn delete_policy(&self, id: &str) -> Result<()>;

    /// Records that a policy applies to an instance, enabled and with status
    /// OK, and returns the application. Applying again returns the existing
    /// application unchanged. A policy that is missing or deleted is
    /// [`CatalogError::NotFound`]. The instance is not looked up.
    async fn apply_policy(
        &self,
        policy_id: &str,
        compute_instance_id: &str,
    ) -> Result<PolicyApplication>;

    /// Removes the application of a policy to an instance, or fails with
    /// [`CatalogError::NotFound`] when there is none.
    async fn revoke_policy(&self, policy_id: &str, compute_instance_id: &str) -> Result<()>;

    async fn get_policy_application(
        &self,
        policy_id: &str,
        compute_instance_id: &str,
    ) -> Result<PolicyApplication>;

    /// Lists applications, oldest first.
    async fn list_policy_applications(
        &self,
        scope: &ApplicationScope,
    ) -> Result<Vec<PolicyApplication>>;
}
