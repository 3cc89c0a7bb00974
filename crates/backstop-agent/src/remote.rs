//! A repository storage backend that tunnels object calls through the
//! agent API, so the engine's `Repository` runs unchanged on the agent.

use std::sync::Arc;

use async_trait::async_trait;
use backstop_chunkstore::{Backend, Error, ObjectKey, ObjectMeta, PutMode, PutOutcome, Result};
use backstop_proto::agent::{
    agent_service_client::AgentServiceClient, GetObjectRequest, ObjectSizeRequest,
    ObjectsExistRequest, PutObjectRequest,
};
use bytes::Bytes;
use tonic::{service::interceptor::InterceptedService, transport::Channel, Code};

use crate::runner::AuthInterceptor;

pub(crate) type Client = AgentServiceClient<InterceptedService<Channel, AuthInterceptor>>;

/// Repository objects on the server, reached through the agent API.
#[derive(Clone)]
pub struct RemoteBackend {
    client: Client,
    instance: Arc<str>,
    location: String,
}

impl std::fmt::Debug for RemoteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBackend")
            .field("location", &self.location)
            .finish()
    }
}

impl RemoteBackend {
    pub(crate) fn new(client: Client, instance: &str, server: &str) -> Self {
        RemoteBackend {
            client,
            instance: instance.into(),
            location: format!("repository of server {server}"),
        }
    }

    fn error(&self, action: &'static str, key: &str, status: tonic::Status) -> Error {
        if status.code() == Code::NotFound {
            return Error::ObjectNotFound {
                key: key.to_owned(),
                location: self.location.clone(),
            };
        }
        Error::Backend {
            action,
            key: key.to_owned(),
            location: self.location.clone(),
            source: Box::new(status),
        }
    }

    fn unsupported(&self, action: &'static str, key: &str) -> Error {
        Error::Backend {
            action,
            key: key.to_owned(),
            location: self.location.clone(),
            source: "agents may not list or delete repository objects; the server does".into(),
        }
    }
}

#[async_trait]
impl Backend for RemoteBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<PutOutcome> {
        let response = self
            .client
            .clone()
            .put_object(PutObjectRequest {
                compute_instance_id: self.instance.to_string(),
                key: key.as_str().to_owned(),
                // Takes over the encoder's buffer, which has no other owner,
                // without copying it.
                data: Vec::from(data),
                create_only: matches!(mode, PutMode::Create),
            })
            .await
            .map_err(|s| self.error("put", key.as_str(), s))?;
        Ok(if response.into_inner().already_existed {
            PutOutcome::AlreadyExists
        } else {
            PutOutcome::Written
        })
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        let response = self
            .client
            .clone()
            .get_object(GetObjectRequest {
                compute_instance_id: self.instance.to_string(),
                key: key.as_str().to_owned(),
            })
            .await
            .map_err(|s| self.error("get", key.as_str(), s))?;
        Ok(Bytes::from(response.into_inner().data))
    }

    async fn exists(&self, key: &ObjectKey) -> Result<bool> {
        Ok(self.exists_many(std::slice::from_ref(key)).await?[0])
    }

    async fn exists_many(&self, keys: &[ObjectKey]) -> Result<Vec<bool>> {
        let response = self
            .client
            .clone()
            .objects_exist(ObjectsExistRequest {
                compute_instance_id: self.instance.to_string(),
                keys: keys.iter().map(|k| k.as_str().to_owned()).collect(),
            })
            .await
            .map_err(|s| self.error("check", keys.first().map(|k| k.as_str()).unwrap_or(""), s))?;
        let exists = response.into_inner().exists;
        if exists.len() != keys.len() {
            return Err(Error::Backend {
                action: "check",
                key: String::new(),
                location: self.location.clone(),
                source: format!(
                    "server answered {} results for {} keys",
                    exists.len(),
                    keys.len()
                )
                .into(),
            });
        }
        Ok(exists)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        Err(self.unsupported("list", prefix))
    }

    async fn delete(&self, key: &ObjectKey) -> Result<bool> {
        Err(self.unsupported("delete", key.as_str()))
    }

    async fn size(&self, key: &ObjectKey) -> Result<u64> {
        let response = self
            .client
            .clone()
            .object_size(ObjectSizeRequest {
                compute_instance_id: self.instance.to_string(),
                key: key.as_str().to_owned(),
            })
            .await
            .map_err(|s| self.error("size", key.as_str(), s))?;
        Ok(response.into_inner().size as u64)
    }
}
