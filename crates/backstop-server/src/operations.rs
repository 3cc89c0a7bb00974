//! The operation registry: the one way handlers and workers create, update,
//! finish and cancel long-running operations.
//!
//! Handlers validate and authorize, then call [`OperationRegistry::create`]
//! and return at once. Workers report progress with
//! [`OperationRegistry::set_metadata_any`] and end with
//! [`OperationRegistry::finish`]. `Get` and `Cancel` only read and flag.
//! A worker registered for the operation receives the cancellation through
//! its [`CancellationSignal`]. An operation that an agent task runs is
//! flagged for the agent, and one that nothing runs ends `CANCELLED` at once.

use std::{collections::HashMap, sync::Arc};

use backstop_catalog::{
    AnyMessage, Catalog, CatalogError, CreatedOperation, IdempotencyKey, NewOperation, NewTask,
    Operation, OperationError, OperationResult, TaskStatus,
};
use backstop_proto::{google::rpc, operation as pb};
use prost::{Message, Name};
use tokio::sync::watch;
use tonic::Code;

use crate::{auth::Caller, ApiError};

/// Fires when the user cancels an operation.
#[derive(Clone, Debug)]
pub struct CancellationSignal(watch::Receiver<bool>);

/// Creates and tracks long-running operations.
pub struct OperationRegistry {
    catalog: Arc<dyn Catalog>,
    workers: std::sync::Mutex<HashMap<String, watch::Sender<bool>>>,
}

/// Input of [`OperationRegistry::create`] besides the caller.
pub struct OperationRequest<'a, M> {
    /// Full gRPC method path, the scope of the idempotency key.
    pub method: &'a str,
    pub idempotency_key: Option<String>,
    pub description: String,
    pub metadata: &'a M,
    pub resource_id: Option<String>,
}

impl CancellationSignal {
    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the operation is cancelled.
    pub async fn cancelled(&mut self) {
        // An error means the registry dropped the sender, which only happens
        // when the operation ended; nothing is left to cancel then.
        let _ = self.0.wait_for(|cancelled| *cancelled).await;
    }
}

impl OperationRegistry {
    pub fn new(catalog: Arc<dyn Catalog>) -> Self {
        OperationRegistry {
            catalog,
            workers: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Records a new operation, or returns the caller's earlier operation for
    /// the same method and idempotency key. The flag is true for a new one.
    pub async fn create<M: Message + Name>(
        &self,
        caller: &Caller,
        request: OperationRequest<'_, M>,
    ) -> Result<(Operation, bool), ApiError> {
        let created = self.record(caller, request, None).await?;
        Ok((created.operation, created.created))
    }

    /// Records a new operation together with its agent task in one
    /// transaction. An idempotent repeat returns the first operation and no
    /// task.
    pub async fn create_with_task<M: Message + Name>(
        &self,
        caller: &Caller,
        request: OperationRequest<'_, M>,
        task: NewTask,
    ) -> Result<CreatedOperation, ApiError> {
        self.record(caller, request, Some(task)).await
    }

    async fn record<M: Message + Name>(
        &self,
        caller: &Caller,
        request: OperationRequest<'_, M>,
        task: Option<NewTask>,
    ) -> Result<CreatedOperation, ApiError> {
        let idempotency = request.idempotency_key.map(|key| IdempotencyKey {
            subject: caller.subject.clone(),
            method: request.method.to_owned(),
            key,
        });
        let created = self
            .catalog
            .create_operation(NewOperation {
                description: request.description,
                created_by: caller.subject.clone(),
                metadata: pack(request.metadata),
                resource_id: request.resource_id,
                idempotency,
                task,
            })
            .await?;
        if created.created {
            tracing::info!(
                operation_id = %created.operation.id,
                task_id = created.task.as_ref().map(|t| t.id),
                method = request.method,
                "operation created"
            );
        } else {
            tracing::info!(operation_id = %created.operation.id, "idempotency key matched an earlier operation");
        }
        Ok(created)
    }

    /// Returns the operation an earlier call of `method` by the same caller
    /// recorded under `key`, if any. Handlers whose checks a running
    /// operation would fail look here first, so a retried call gets its first
    /// operation back.
    pub async fn find_earlier(
        &self,
        caller: &Caller,
        method: &str,
        key: Option<&str>,
    ) -> Result<Option<Operation>, ApiError> {
        let Some(key) = key else { return Ok(None) };
        let scope = IdempotencyKey {
            subject: caller.subject.clone(),
            method: method.to_owned(),
            key: key.to_owned(),
        };
        Ok(self.catalog.find_idempotent_operation(&scope).await?)
    }

    /// Registers the worker of an operation and returns the signal it polls.
    pub fn attach_worker(&self, operation_id: &str) -> CancellationSignal {
        let (sender, receiver) = watch::channel(false);
        self.lock_workers().insert(operation_id.to_owned(), sender);
        CancellationSignal(receiver)
    }

    pub async fn get(&self, id: &str) -> Result<Operation, ApiError> {
        Ok(self.catalog.get_operation(id).await?)
    }

    /// Replaces the metadata of a running operation with an encoded message.
    pub async fn set_metadata_any(
        &self,
        id: &str,
        metadata: AnyMessage,
    ) -> Result<Operation, ApiError> {
        Ok(self.catalog.update_operation_metadata(id, metadata).await?)
    }

    /// Ends an operation with a response or an error and releases its worker.
    pub async fn finish(
        &self,
        id: &str,
        result: Result<AnyMessage, (Code, String)>,
    ) -> Result<Operation, ApiError> {
        let result = match result {
            Ok(response) => OperationResult::Response(response),
            Err((code, message)) => {
                // A code of 0 would read as success to the SDKs' waiters.
                let code = if code == Code::Ok {
                    Code::Unknown
                } else {
                    code
                };
                tracing::info!(operation_id = id, code = ?code, message = %message, "operation failed");
                OperationResult::Error(OperationError {
                    code: code as i32,
                    message,
                    details: Vec::new(),
                })
            }
        };
        let operation = self.catalog.finish_operation(id, result).await?;
        self.lock_workers().remove(id);
        Ok(operation)
    }

    /// Requests cancellation and returns the operation as it is afterwards.
    /// A finished operation is returned unchanged.
    pub async fn cancel(&self, id: &str) -> Result<Operation, ApiError> {
        let operation = self.catalog.get_operation(id).await?;
        if operation.done {
            return Ok(operation);
        }
        let operation = self.catalog.request_cancel(id).await?;
        let worker = self.lock_workers().get(id).cloned();
        match worker {
            Some(sender) => {
                sender.send_replace(true);
                tracing::info!(operation_id = id, "cancellation sent to the worker");
                Ok(operation)
            }
            // An agent runs the task and reads the flag with its next
            // progress report.
            None if self.has_active_task(id).await? => {
                tracing::info!(operation_id = id, "cancellation flagged for the agent");
                Ok(operation)
            }
            None => {
                self.finish(
                    id,
                    Err((
                        Code::Cancelled,
                        "operation cancelled by the user".to_owned(),
                    )),
                )
                .await
            }
        }
    }

    /// Ends operations that were running when the server last stopped and
    /// that no worker has picked up again.
    pub async fn end_orphaned(&self) -> Result<usize, ApiError> {
        let unfinished = self.catalog.list_unfinished_operations().await?;
        let mut ended = 0;
        for operation in unfinished {
            // Operations whose task an agent still runs continue; the agent
            // watchdog ends them if the agent is gone.
            if self.lock_workers().contains_key(&operation.id)
                || self.has_active_task(&operation.id).await?
            {
                continue;
            }
            tracing::warn!(operation_id = %operation.id, "ending an operation left running by a previous server process");
            self.finish(
                &operation.id,
                Err((
                    Code::Aborted,
                    "the server restarted while this operation ran; start it again".to_owned(),
                )),
            )
            .await?;
            ended += 1;
        }
        Ok(ended)
    }

    async fn has_active_task(&self, operation_id: &str) -> Result<bool, ApiError> {
        match self.catalog.get_task_by_operation(operation_id).await {
            Ok(task) => Ok(task.status != TaskStatus::Completed),
            Err(CatalogError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    fn lock_workers(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<bool>>> {
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Packs a message as `google.protobuf.Any` with a `type.googleapis.com/`
/// type URL.
pub fn pack<M: Message + Name>(message: &M) -> AnyMessage {
    AnyMessage {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// Returns `google.protobuf.Empty` packed as the response of an operation
/// whose method returns nothing.
pub fn empty_response() -> AnyMessage {
    AnyMessage {
        type_url: "type.googleapis.com/google.protobuf.Empty".to_owned(),
        value: Vec::new(),
    }
}

/// Converts a catalog operation into its public form.
pub fn to_proto(operation: &Operation) -> pb::Operation {
    let result = operation.result.as_ref().map(|result| match result {
        OperationResult::Error(error) => pb::operation::Result::Error(rpc::Status {
            code: error.code,
            message: error.message.clone(),
            details: error.details.iter().map(to_any).collect(),
        }),
        OperationResult::Response(response) => pb::operation::Result::Response(to_any(response)),
    });
    pb::Operation {
        id: operation.id.clone(),
        description: operation.description.clone(),
        created_at: Some(crate::convert::timestamp(operation.created_at)),
        created_by: operation.created_by.clone(),
        modified_at: Some(crate::convert::timestamp(operation.modified_at)),
        done: operation.done,
        metadata: Some(to_any(&operation.metadata)),
        result,
    }
}

fn to_any(message: &AnyMessage) -> prost_types::Any {
    prost_types::Any {
        type_url: message.type_url.clone(),
        value: message.value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use backstop_catalog::SqliteCatalog;
    use backstop_proto::backup::StartRecoveryMetadata;

    use super::*;

    async fn registry() -> OperationRegistry {
        OperationRegistry::new(Arc::new(SqliteCatalog::in_memory().await.unwrap()))
    }

    fn metadata() -> StartRecoveryMetadata {
        StartRecoveryMetadata {
            progress_percentage: 0.0,
            src_backup_id: "backup".into(),
            dst_compute_instance_id: "instance".into(),
        }
    }

    fn request<'a>(
        metadata: &'a StartRecoveryMetadata,
        key: Option<&str>,
    ) -> OperationRequest<'a, StartRecoveryMetadata> {
        OperationRequest {
            method: "/yandex.cloud.backup.v1.BackupService/StartRecovery",
            idempotency_key: key.map(str::to_owned),
            description: "Start recovery".into(),
            metadata,
            resource_id: Some("instance".into()),
        }
    }

    #[tokio::test]
    async fn metadata_type_url_names_the_message() {
        let registry = registry().await;
        let metadata = metadata();
        let (operation, _) = registry
            .create(&Caller::development(), request(&metadata, None))
            .await
            .unwrap();
        let public = to_proto(&operation);
        assert_eq!(
            public.metadata.unwrap().type_url,
            "type.googleapis.com/yandex.cloud.backup.v1.StartRecoveryMetadata"
        );
        assert!(!public.done);
        assert!(public.result.is_none());
    }

    #[tokio::test]
    async fn same_idempotency_key_returns_first_operation() {
        let registry = registry().await;
        let metadata = metadata();
        let (first, created) = registry
            .create(&Caller::development(), request(&metadata, Some("k1")))
            .await
            .unwrap();
        assert!(created);
        let (second, created) = registry
            .create(&Caller::development(), request(&metadata, Some("k1")))
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(first.id, second.id);
        let (third, _) = registry
            .create(&Caller::development(), request(&metadata, Some("k2")))
            .await
            .unwrap();
        assert_ne!(first.id, third.id);
    }

    #[tokio::test]
    async fn cancel_without_worker_ends_cancelled() {
        let registry = registry().await;
        let metadata = metadata();
        let (operation, _) = registry
            .create(&Caller::development(), request(&metadata, None))
            .await
            .unwrap();
        let cancelled = registry.cancel(&operation.id).await.unwrap();
        assert!(cancelled.done);
        match cancelled.result {
            Some(OperationResult::Error(error)) => assert_eq!(error.code, Code::Cancelled as i32),
            other => panic!("expected an error result, got {other:?}"),
        }
        assert!(cancelled.modified_at > operation.modified_at);
    }

    #[tokio::test]
    async fn cancel_with_worker_signals_it() {
        let registry = registry().await;
        let metadata = metadata();
        let (operation, _) = registry
            .create(&Caller::development(), request(&metadata, None))
            .await
            .unwrap();
        let mut signal = registry.attach_worker(&operation.id);
        let flagged = registry.cancel(&operation.id).await.unwrap();
        assert!(!flagged.done);
        assert!(flagged.cancel_requested);
        signal.cancelled().await;
        assert!(signal.is_cancelled());
    }

    #[tokio::test]
    async fn error_code_zero_is_never_stored() {
        let registry = registry().await;
        let metadata = metadata();
        let (operation, _) = registry
            .create(&Caller::development(), request(&metadata, None))
            .await
            .unwrap();
        let finished = registry
            .finish(&operation.id, Err((Code::Ok, "odd".into())))
            .await
            .unwrap();
        match finished.result {
            Some(OperationResult::Error(error)) => assert_ne!(error.code, 0),
            other => panic!("expected an error result, got {other:?}"),
        }
    }
}
