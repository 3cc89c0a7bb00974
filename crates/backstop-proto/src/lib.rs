//! Protocol types of the public Yandex Cloud Backup API and of the operation,
//! endpoint and error-model packages it uses, generated from the `.proto`
//! files under `proto/` at the repository root.
//!
//! The module tree mirrors the protobuf packages, so a message's Rust path
//! reads like its full name: `yandex::cloud::backup::v1::Backup`.
//! [`DESCRIPTOR_SET`] and [`descriptor_pool`] expose the same files at run
//! time, options included, for gRPC reflection, request validation and JSON
//! transcoding.

use std::sync::OnceLock;

use prost_reflect::DescriptorPool;

/// The encoded `google.protobuf.FileDescriptorSet` of every compiled file and
/// its imports.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));

/// Returns the descriptor pool decoded from [`DESCRIPTOR_SET`], built once.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTOR_SET)
            .expect("descriptor set embedded at build time decodes")
    })
}

pub mod google {
    pub mod api {
        include!(concat!(env!("OUT_DIR"), "/google.api.rs"));
    }
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

pub mod yandex {
    pub mod cloud {
        include!(concat!(env!("OUT_DIR"), "/yandex.cloud.rs"));

        pub mod api {
            include!(concat!(env!("OUT_DIR"), "/yandex.cloud.api.rs"));
        }
        pub mod backup {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/yandex.cloud.backup.v1.rs"));
            }
        }
        pub mod endpoint {
            include!(concat!(env!("OUT_DIR"), "/yandex.cloud.endpoint.rs"));
        }
        pub mod operation {
            include!(concat!(env!("OUT_DIR"), "/yandex.cloud.operation.rs"));
        }
    }
}

/// Short paths to the packages the server and clients use most.
pub use yandex::cloud::backup::v1 as backup;
pub use yandex::cloud::endpoint;
pub use yandex::cloud::operation;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_pool_has_backup_services() {
        let pool = descriptor_pool();
        for name in [
            "yandex.cloud.backup.v1.BackupService",
            "yandex.cloud.backup.v1.PolicyService",
            "yandex.cloud.backup.v1.ResourceService",
            "yandex.cloud.backup.v1.ProviderService",
            "yandex.cloud.operation.OperationService",
            "yandex.cloud.endpoint.ApiEndpointService",
        ] {
            assert!(pool.get_service_by_name(name).is_some(), "{name} missing");
        }
    }
}
