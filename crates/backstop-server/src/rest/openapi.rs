//! The OpenAPI 3 document of the REST API, generated from the same route
//! table and descriptors that the gateway serves.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{json, Map, Value};

use super::routes::{Route, RouteTable};

/// Maximum depth of nested messages that query parameters reach (`a.b.c`).
const MAX_QUERY_DEPTH: usize = 3;

const STATUS_MESSAGE: &str = "google.rpc.Status";

/// Builds the OpenAPI document of every route in `routes`.
pub fn openapi_document(routes: &RouteTable) -> Value {
    let mut schemas = SchemaSet::default();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut operation_ids = BTreeSet::new();

    for route in routes.routes() {
        let operation = operation_object(route, &mut schemas, &mut operation_ids);
        paths
            .entry(route.template.clone())
            .or_default()
            .insert(route.http_method.as_str().to_ascii_lowercase(), operation);
    }
    schemas.reference_message(
        &crate::rest::gateway_pool()
            .get_message_by_name(STATUS_MESSAGE)
            .expect("google.rpc.Status is compiled into the descriptors"),
    );

    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Backstop REST API",
            "version": "v1",
            "description": "The REST mapping of the Yandex Cloud Backup API (yandex.cloud.backup.v1) and of \
                yandex.cloud.operation.OperationService, as served by Backstop. Each operation calls the gRPC \
                method named in its description. Responses use the proto3 JSON mapping: lowerCamelCase field \
                names, 64-bit integers as strings, RFC 3339 timestamps, enum values as names, and fields with \
                default values left out. Errors are google.rpc.Status objects.",
        },
        "security": [{ "bearerAuth": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from the server's auth configuration, sent as \
                        `Authorization: Bearer <token>`. In development mode the server accepts calls without one.",
                },
            },
            "schemas": schemas.finish(),
        },
    })
}

fn operation_object(
    route: &Route,
    schemas: &mut SchemaSet,
    operation_ids: &mut BTreeSet<String>,
) -> Value {
    let method = &route.method;
    let service = method.parent_service();
    let mut operation_id = format!("{}_{}", service.name(), method.name());
    if !operation_ids.insert(operation_id.clone()) {
        operation_id = format!(
            "{operation_id}_{}",
            route.http_method.as_str().to_ascii_lowercase()
        );
        operation_ids.insert(operation_id.clone());
    }

    let input = method.input();
    let path_fields: Vec<&str> = route.variables().collect();
    let mut parameters = Vec::new();
    for variable in &path_fields {
        let schema = field_at_path(&input, variable)
            .map(|field| schemas.field_schema(&field))
            .unwrap_or_else(|| json!({ "type": "string" }));
        parameters.push(json!({
            "name": variable,
            "in": "path",
            "required": true,
            "schema": schema,
        }));
    }

    let mut operation = Map::new();
    operation.insert("operationId".into(), operation_id.into());
    operation.insert("tags".into(), json!([service.name()]));
    operation.insert(
        "description".into(),
        format!("Calls the gRPC method {}.", method.full_name()).into(),
    );

    match route.body.as_deref() {
        Some("*") => {
            operation.insert(
                "requestBody".into(),
                json!({
                    "required": true,
                    "description": "The request message. Path variables replace the body fields of the same name.",
                    "content": { "application/json": { "schema": schemas.reference_message(&input) } },
                }),
            );
        }
        Some(body_field) => {
            let field = input
                .get_field_by_name(body_field)
                .expect("the route table checked the body field");
            operation.insert(
                "requestBody".into(),
                json!({
                    "required": true,
                    "content": { "application/json": { "schema": schemas.field_schema(&field) } },
                }),
            );
            let skip: Vec<&str> = path_fields.iter().copied().chain([body_field]).collect();
            let root = QueryPrefix::default();
            query_parameters(&input, &root, &skip, 0, schemas, &mut parameters);
        }
        None => {
            let root = QueryPrefix::default();
            query_parameters(&input, &root, &path_fields, 0, schemas, &mut parameters)
        }
    }
    if !parameters.is_empty() {
        operation.insert("parameters".into(), parameters.into());
    }

    operation.insert(
        "responses".into(),
        json!({
            "200": {
                "description": "The response message.",
                "content": { "application/json": { "schema": schemas.reference_message(&method.output()) } },
            },
            "default": {
                "description": "An error as google.rpc.Status. The HTTP status follows the gRPC code: \
                    400 for INVALID_ARGUMENT, FAILED_PRECONDITION and OUT_OF_RANGE, 401 for UNAUTHENTICATED, \
                    403 for PERMISSION_DENIED, 404 for NOT_FOUND, 409 for ALREADY_EXISTS and ABORTED, \
                    429 for RESOURCE_EXHAUSTED, 499 for CANCELLED, 501 for UNIMPLEMENTED, 503 for UNAVAILABLE, \
                    504 for DEADLINE_EXCEEDED, 500 otherwise.",
                "content": { "application/json": { "schema": { "$ref": schema_ref(STATUS_MESSAGE) } } },
            },
        }),
    );
    Value::Object(operation)
}

/// Adds a query parameter for every field of `message` that a query string
/// can set: scalars, enums, string-form well-known types and lists of
/// them, and the fields of nested messages under dotted names.
fn query_parameters(
    message: &MessageDescriptor,
    prefix: &QueryPrefix,
    skip: &[&str],
    depth: usize,
    schemas: &mut SchemaSet,
    parameters: &mut Vec<Value>,
) {
    for field in message.fields() {
        let proto_path = format!("{}{}", prefix.proto, field.name());
        if skip.contains(&proto_path.as_str()) || field.is_map() {
            continue;
        }
        let json_path = format!("{}{}", prefix.json, field.json_name());
        if let Kind::Message(nested) = field.kind() {
            if !is_string_form(&nested) {
                if !field.is_list() && depth < MAX_QUERY_DEPTH {
                    let nested_prefix = QueryPrefix {
                        proto: format!("{proto_path}."),
                        json: format!("{json_path}."),
                    };
                    query_parameters(
                        &nested,
                        &nested_prefix,
                        skip,
                        depth + 1,
                        schemas,
                        parameters,
                    );
                }
                continue;
            }
        }
        let mut parameter = json!({
            "name": json_path,
            "in": "query",
            "schema": schemas.field_schema(&field),
        });
        if field.is_list() {
            parameter["description"] = "Repeat the parameter once per value.".into();
        }
        parameters.push(parameter);
    }
}

/// The dotted names of the enclosing message fields, in proto and
/// lowerCamelCase spelling, each ending with a dot unless empty.
#[derive(Default)]
struct QueryPrefix {
    proto: String,
    json: String,
}

fn field_at_path(root: &MessageDescriptor, proto_path: &str) -> Option<FieldDescriptor> {
    let mut message = root.clone();
    let mut found = None;
    for segment in proto_path.split('.') {
        let field = message.get_field_by_name(segment)?;
        if let Kind::Message(nested) = field.kind() {
            message = nested;
        }
        found = Some(field);
    }
    found
}

/// Well-known types that proto3 JSON writes as a single scalar value.
fn is_string_form(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.FloatValue"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.BoolValue"
    )
}

fn schema_ref(full_name: &str) -> String {
    format!("#/components/schemas/{full_name}")
}

/// Component schemas of the messages and enums that the paths refer to.
#[derive(Default)]
struct SchemaSet {
    queued: VecDeque<MessageDescriptor>,
    seen: BTreeSet<String>,
    enums: BTreeMap<String, EnumDescriptor>,
}

impl SchemaSet {
    fn reference_message(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(inline) = well_known_schema(message) {
            return inline;
        }
        if self.seen.insert(message.full_name().to_owned()) {
            self.queued.push_back(message.clone());
        }
        json!({ "$ref": schema_ref(message.full_name()) })
    }

    fn field_schema(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                unreachable!("a map field's kind is its entry message")
            };
            let value = entry.map_entry_value_field();
            return json!({
                "type": "object",
                "additionalProperties": self.kind_schema(&value.kind()),
            });
        }
        let item = self.kind_schema(&field.kind());
        if field.is_list() {
            json!({ "type": "array", "items": item })
        } else {
            item
        }
    }

    fn kind_schema(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295u32 })
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": "string", "format": "int64" })
            }
            Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64" }),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "format": "byte" }),
            Kind::Enum(enumeration) => {
                self.enums
                    .insert(enumeration.full_name().to_owned(), enumeration.clone());
                json!({ "$ref": schema_ref(enumeration.full_name()) })
            }
            Kind::Message(message) => self.reference_message(message),
        }
    }

    fn message_schema(&mut self, message: &MessageDescriptor) -> Value {
        let mut properties = Map::new();
        for field in message.fields() {
            properties.insert(field.json_name().to_owned(), self.field_schema(&field));
        }
        let mut schema = json!({ "type": "object", "properties": properties });
        let oneofs: Vec<String> = message
            .oneofs()
            .filter(|oneof| !oneof.is_synthetic())
            .map(|oneof| {
                let members: Vec<String> =
                    oneof.fields().map(|f| f.json_name().to_owned()).collect();
                format!("`{}` is one of {}", oneof.name(), members.join(", "))
            })
            .collect();
        if !oneofs.is_empty() {
            schema["description"] = format!(
                "Oneofs (set at most one member of each): {}.",
                oneofs.join("; ")
            )
            .into();
        }
        schema
    }

    fn finish(mut self) -> Map<String, Value> {
        let mut schemas = BTreeMap::new();
        while let Some(message) = self.queued.pop_front() {
            let schema = self.message_schema(&message);
            schemas.insert(message.full_name().to_owned(), schema);
        }
        for (name, enumeration) in &self.enums {
            let values: Vec<String> = enumeration.values().map(|v| v.name().to_owned()).collect();
            schemas.insert(name.clone(), json!({ "type": "string", "enum": values }));
        }
        schemas.into_iter().collect()
    }
}

/// Inline schemas of the well-known types with a special JSON form.
fn well_known_schema(message: &MessageDescriptor) -> Option<Value> {
    let schema = match message.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => {
            json!({ "type": "string", "description": "Seconds with an `s` suffix, such as `3.5s`." })
        }
        "google.protobuf.FieldMask" => {
            json!({ "type": "string", "description": "Comma-separated lowerCamelCase field paths." })
        }
        "google.protobuf.Empty" => json!({ "type": "object" }),
        "google.protobuf.Struct" => json!({ "type": "object", "additionalProperties": true }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({ "type": "array", "items": {} }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "required": ["@type"],
            "properties": { "@type": { "type": "string" } },
            "additionalProperties": true,
        }),
        "google.protobuf.StringValue" => json!({ "type": "string", "nullable": true }),
        "google.protobuf.BytesValue" => {
            json!({ "type": "string", "format": "byte", "nullable": true })
        }
        "google.protobuf.BoolValue" => json!({ "type": "boolean", "nullable": true }),
        "google.protobuf.Int32Value" => {
            json!({ "type": "integer", "format": "int32", "nullable": true })
        }
        "google.protobuf.UInt32Value" => {
            json!({ "type": "integer", "format": "int64", "minimum": 0, "nullable": true })
        }
        "google.protobuf.Int64Value" => {
            json!({ "type": "string", "format": "int64", "nullable": true })
        }
        "google.protobuf.UInt64Value" => {
            json!({ "type": "string", "format": "uint64", "nullable": true })
        }
        "google.protobuf.FloatValue" => {
            json!({ "type": "number", "format": "float", "nullable": true })
        }
        "google.protobuf.DoubleValue" => {
            json!({ "type": "number", "format": "double", "nullable": true })
        }
        _ => return None,
    };
    Some(schema)
}

/// Returns the document as the server serves it and as `docs/openapi.json`
/// stores it: pretty-printed JSON with a final newline.
pub fn openapi_text(routes: &RouteTable) -> String {
    let mut text =
        serde_json::to_string_pretty(&openapi_document(routes)).expect("a JSON value serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Value {
        openapi_document(&RouteTable::from_pool(crate::rest::gateway_pool()).unwrap())
    }

    /// Compares `docs/openapi.json` with the generated document. Run with
    /// `BACKSTOP_UPDATE_OPENAPI=1` to rewrite the file after a proto change.
    #[test]
    fn checked_in_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let generated = openapi_text(&RouteTable::from_pool(crate::rest::gateway_pool()).unwrap());
        if std::env::var_os("BACKSTOP_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("write docs/openapi.json");
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json differs from the generated document; regenerate it with \
             `BACKSTOP_UPDATE_OPENAPI=1 cargo test -p backstop-server openapi` and commit the result"
        );
    }

    #[test]
    fn start_recovery_path_has_body_and_path_parameter() {
        let document = document();
        let operation = &document["paths"]["/backup/v1/backups/{backup_id}:startRecovery"]["post"];
        assert_eq!(operation["operationId"], "BackupService_StartRecovery");
        assert_eq!(operation["parameters"][0]["name"], "backup_id");
        assert_eq!(operation["parameters"][0]["in"], "path");
        assert_eq!(
            operation["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/yandex.cloud.backup.v1.StartRecoveryRequest"
        );
        assert_eq!(
            operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/yandex.cloud.operation.Operation"
        );
    }

    #[test]
    fn list_backups_has_nested_query_parameters() {
        let document = document();
        let parameters = document["paths"]["/backup/v1/backups"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let names: Vec<&str> = parameters
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for expected in [
            "folderId",
            "archive.archiveId",
            "instancePolicy.policyId",
            "pageSize",
            "type",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
    }

    #[test]
    fn cancel_has_get_and_post() {
        let document = document();
        let path = &document["paths"]["/operations/{operation_id}:cancel"];
        assert_eq!(path["get"]["operationId"], "OperationService_Cancel");
        assert_eq!(path["post"]["operationId"], "OperationService_Cancel_post");
    }

    #[test]
    fn schemas_use_json_names_and_json_types() {
        let document = document();
        let backup =
            &document["components"]["schemas"]["yandex.cloud.backup.v1.Backup"]["properties"];
        assert_eq!(backup["computeInstanceId"]["type"], "string");
        assert_eq!(backup["createdAt"]["format"], "date-time");
        assert_eq!(backup["size"]["type"], "string");
        assert_eq!(backup["size"]["format"], "int64");
        let status = &document["components"]["schemas"]["google.rpc.Status"]["properties"];
        assert_eq!(status["code"]["type"], "integer");
        assert_eq!(status["details"]["items"]["required"][0], "@type");
    }
}
