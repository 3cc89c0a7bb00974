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

pub mod backstop {
    pub mod agent {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/backstop.agent.v1.rs"));
        }
    }
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
        // The package and its main message share the name `operation`.
        #[allow(clippy::module_inception)]
        pub mod operation {
            include!(concat!(env!("OUT_DIR"), "/yandex.cloud.operation.rs"));
        }
    }
}

/// Short paths to the packages the server and clients use most.
pub use backstop::agent::v1 as agent;
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

/// Checks wire compatibility with the official Python SDK (`yandexcloud`):
/// the SDK encodes a fully populated instance of every message of the
/// backup and operation packages; the generated Rust types decode and
/// re-encode each one; the SDK decodes the result and compares it with the
/// original, and the proto3 JSON of both sides must match.
#[cfg(test)]
mod sdk_wire_tests {
    use std::{path::PathBuf, process::Command};

    use base64::{engine::general_purpose::STANDARD, Engine};
    use prost_reflect::{DynamicMessage, SerializeOptions};

    include!(concat!(env!("OUT_DIR"), "/wire_dispatch.rs"));

    fn vectors_script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/wire_vectors.py")
    }

    fn proto_json(full_name: &str, bytes: &[u8]) -> serde_json::Value {
        let descriptor = super::descriptor_pool()
            .get_message_by_name(full_name)
            .unwrap_or_else(|| panic!("{full_name} missing from Backstop's descriptors"));
        let message = DynamicMessage::decode(descriptor, bytes).expect("decode with descriptors");
        let options = SerializeOptions::new().use_proto_field_name(true);
        message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .expect("serialize to JSON")
    }

    #[test]
    fn sdk_messages_round_trip_through_rust_types() {
        let output = Command::new("python3")
            .arg(vectors_script())
            .arg("generate")
            .output()
            .expect("run python3; the test command installs the SDK");
        assert!(
            output.status.success(),
            "generating vectors with the Python SDK failed (is `yandexcloud` installed?):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let vectors: Vec<serde_json::Value> =
            serde_json::from_slice(&output.stdout).expect("vectors JSON");
        assert!(vectors.len() > 100, "only {} vectors", vectors.len());

        let mut results = Vec::new();
        for vector in &vectors {
            let name = vector["message"].as_str().unwrap();
            let encoded = STANDARD
                .decode(vector["encoded"].as_str().unwrap())
                .unwrap();
            let reencoded = reencode(name, &encoded)
                .unwrap_or_else(|| panic!("no generated Rust type for {name}"))
                .unwrap_or_else(|e| {
                    panic!("{name}: generated type cannot decode the SDK's bytes: {e}")
                });
            results.push(serde_json::json!({
                "message": name,
                "encoded": vector["encoded"],
                "reencoded": STANDARD.encode(&reencoded),
                "backstop_json": proto_json(name, &reencoded),
            }));
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        std::fs::write(&path, serde_json::to_vec(&results).unwrap()).unwrap();
        let check = Command::new("python3")
            .arg(vectors_script())
            .arg("check")
            .arg(&path)
            .output()
            .expect("run python3");
        assert!(
            check.status.success(),
            "the SDK disagrees with Backstop:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
}
