//! Compiles the repository's `.proto` files with protox (a pure-Rust protobuf
//! compiler, so no system `protoc` is needed), generates prost messages and
//! tonic stubs, and keeps the encoded descriptor set for reflection,
//! validation and JSON transcoding at run time.

use std::{env, fs, path::PathBuf};

const PROTO_FILES: &[&str] = &[
    "yandex/cloud/backup/v1/backup_service.proto",
    "yandex/cloud/backup/v1/policy_service.proto",
    "yandex/cloud/backup/v1/resource_service.proto",
    "yandex/cloud/backup/v1/provider_service.proto",
    "yandex/cloud/operation/operation_service.proto",
    "yandex/cloud/endpoint/api_endpoint_service.proto",
    "google/rpc/status.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_imports(true);
    compiler.open_files(PROTO_FILES)?;
    // The encoded set keeps custom options such as (yandex.cloud.length),
    // which prost_types drops because it does not know the extensions.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("descriptor_set.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let descriptor_set = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_well_known_types(false)
        .compile_fds_with_config(descriptor_set, type_names_config())?;
    Ok(())
}

/// Generates `prost::Name` for every message, so packing a message into
/// `google.protobuf.Any` takes its type URL from the message itself.
fn type_names_config() -> prost_build::Config {
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");
    config
}
