//! Compiles the repository's `.proto` files with protox (a pure-Rust protobuf
//! compiler, so no system `protoc` is needed), generates prost messages and
//! tonic stubs, and keeps the encoded descriptor set for reflection,
//! validation and JSON transcoding at run time.

use std::{env, fs, path::PathBuf};

use heck::{ToSnakeCase, ToUpperCamelCase};

const PROTO_FILES: &[&str] = &[
    "yandex/cloud/backup/v1/backup_service.proto",
    "yandex/cloud/backup/v1/policy_service.proto",
    "yandex/cloud/backup/v1/resource_service.proto",
    "yandex/cloud/backup/v1/provider_service.proto",
    "yandex/cloud/operation/operation_service.proto",
    "yandex/cloud/endpoint/api_endpoint_service.proto",
    "google/rpc/status.proto",
    "backstop/agent/v1/agent_service.proto",
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
    fs::write(
        out_dir.join("wire_dispatch.rs"),
        wire_dispatch(&descriptor_set),
    )?;

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

/// Packages whose messages the SDK wire-compatibility test covers.
const WIRE_TESTED_PACKAGES: &[(&str, &str)] = &[
    ("yandex.cloud.backup.v1", "crate::yandex::cloud::backup::v1"),
    ("yandex.cloud.operation", "crate::yandex::cloud::operation"),
];

/// Generates `reencode(full_name, bytes)`, which decodes bytes with the
/// generated Rust type of the named message and encodes the result again.
/// Only the wire-compatibility test uses it.
fn wire_dispatch(descriptor_set: &prost_types::FileDescriptorSet) -> String {
    let mut arms = String::new();
    for file in &descriptor_set.file {
        let package = file.package();
        let Some((_, module)) = WIRE_TESTED_PACKAGES.iter().find(|(p, _)| *p == package) else {
            continue;
        };
        for message in &file.message_type {
            dispatch_arms(&mut arms, package, module, message);
        }
    }
    format!(
        "fn reencode(full_name: &str, bytes: &[u8]) -> Option<Result<Vec<u8>, prost::DecodeError>> {{\n    \
         use prost::Message;\n    match full_name {{\n{arms}        _ => None,\n    }}\n}}\n"
    )
}

fn dispatch_arms(
    arms: &mut String,
    name_prefix: &str,
    rust_prefix: &str,
    message: &prost_types::DescriptorProto,
) {
    if message.options.as_ref().is_some_and(|o| o.map_entry()) {
        return;
    }
    let name = message.name();
    let full_name = format!("{name_prefix}.{name}");
    let rust_path = format!("{rust_prefix}::{}", name.to_upper_camel_case());
    arms.push_str(&format!(
        "        {full_name:?} => Some({rust_path}::decode(bytes).map(|m| m.encode_to_vec())),\n"
    ));
    let nested_module = format!("{rust_prefix}::{}", name.to_snake_case());
    for nested in &message.nested_type {
        dispatch_arms(arms, &full_name, &nested_module, nested);
    }
}
