//! Conversions between REST requests and gRPC messages: JSON body, path
//! variables and query parameters into the request message, and the
//! response message into proto3 JSON.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value,
};
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

use super::routes::Route;

/// Well-known message types that proto3 JSON writes as one string, so a
/// path variable or query parameter can carry them.
const STRING_MESSAGES: &[&str] = &[
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
];

/// Wrapper types whose JSON form is a number or a bool.
const SCALAR_WRAPPERS: &[(&str, ScalarKind)] = &[
    ("google.protobuf.Int32Value", ScalarKind::I32),
    ("google.protobuf.UInt32Value", ScalarKind::U32),
    ("google.protobuf.FloatValue", ScalarKind::Float),
    ("google.protobuf.DoubleValue", ScalarKind::Float),
    ("google.protobuf.BoolValue", ScalarKind::Bool),
];

#[derive(Clone, Copy)]
enum ScalarKind {
    I32,
    U32,
    I64,
    U64,
    Float,
    Bool,
    Text,
}

/// The part of the request that a value came from, named in error messages.
#[derive(Clone, Copy)]
pub enum Source {
    Path,
    Query,
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Source::Path => "path variable",
            Source::Query => "query parameter",
        }
    }
}

/// Builds the request message of `route` from the JSON body, the path
/// variables and the raw query string. Path variables win over body
/// fields of the same name.
pub fn request_message(
    route: &Route,
    variables: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, Status> {
    let descriptor = route.method.input();
    let body_present = body.iter().any(|b| !b.is_ascii_whitespace());
    let mut message = match route.body.as_deref() {
        Some("*") if body_present => parse_json(&descriptor, body)?,
        Some(field_name) if field_name != "*" && body_present => {
            let field = descriptor.get_field_by_name(field_name).ok_or_else(|| {
                Status::internal(format!(
                    "{}: body field {field_name} is missing from the request message",
                    route.method.full_name()
                ))
            })?;
            let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
                invalid(
                    field.json_name(),
                    format!("invalid JSON in the request body: {e}"),
                )
            })?;
            let wrapped = serde_json::json!({ field.name(): value });
            deserialize_value(&descriptor, wrapped)
                .map_err(|e| invalid(field.json_name(), format!("invalid request body: {e}")))?
        }
        _ => DynamicMessage::new(descriptor.clone()),
    };

    if let Some(query) = query.filter(|q| !q.is_empty()) {
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if route.body.as_deref() == Some("*") {
                return Err(invalid(
                    &name,
                    format!(
                        "query parameter {name:?} is not accepted: {} {} takes its fields in the JSON body",
                        route.http_method, route.template
                    ),
                ));
            }
            set_by_path(&mut message, &name, &value, Source::Query)?;
        }
    }
    for (name, value) in variables {
        set_by_path(&mut message, name, value, Source::Path)?;
    }
    Ok(message)
}

fn parse_json(descriptor: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, Status> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let message = DynamicMessage::deserialize_with_options(
        descriptor.clone(),
        &mut deserializer,
        &DeserializeOptions::new(),
    )
    .and_then(|message| deserializer.end().map(|()| message))
    .map_err(|e| {
        Status::invalid_argument(format!(
            "invalid request body for {}: {e}",
            descriptor.full_name()
        ))
    })?;
    Ok(message)
}

fn deserialize_value(
    descriptor: &MessageDescriptor,
    value: serde_json::Value,
) -> Result<DynamicMessage, serde_json::Error> {
    DynamicMessage::deserialize_with_options(descriptor.clone(), value, &DeserializeOptions::new())
}

/// Sets the field named by the dotted `path` (proto or lowerCamelCase
/// names) from its text form. A repeated field gets `text` appended.
fn set_by_path(
    message: &mut DynamicMessage,
    path: &str,
    text: &str,
    source: Source,
) -> Result<(), Status> {
    let mut current = message;
    let segments: Vec<&str> = path.split('.').collect();
    let (last, parents) = segments.split_last().expect("split yields one item");
    for (depth, segment) in parents.iter().enumerate() {
        let walked = segments[..=depth].join(".");
        let field = find_field(&current.descriptor(), segment)
            .ok_or_else(|| unknown_field(path, &walked, source))?;
        if field.is_list() || field.is_map() || !matches!(field.kind(), Kind::Message(_)) {
            return Err(invalid(
                path,
                format!(
                    "invalid {} {path:?}: {walked} is not a message field",
                    source.describe()
                ),
            ));
        }
        current = match current.get_field_mut(&field) {
            Value::Message(inner) => inner,
            _ => unreachable!("a singular message field holds a message"),
        };
    }

    let descriptor = current.descriptor();
    let field = find_field(&descriptor, last).ok_or_else(|| unknown_field(path, path, source))?;
    if field.is_map() {
        return Err(invalid(
            path,
            format!(
                "{} {path:?} is a map, which only the JSON body can set",
                source.describe()
            ),
        ));
    }
    let json = text_to_json(&field, text).map_err(|expected| {
        invalid(
            path,
            format!(
                "invalid {} {path:?}: {text:?} is not {expected}",
                source.describe()
            ),
        )
    })?;
    let wrapped = if field.is_list() {
        serde_json::json!({ field.name(): [json] })
    } else {
        serde_json::json!({ field.name(): json })
    };
    let mut parsed = deserialize_value(&descriptor, wrapped).map_err(|e| {
        invalid(
            path,
            format!("invalid {} {path:?}: {text:?}: {e}", source.describe()),
        )
    })?;
    let value = parsed
        .take_field(&field)
        .unwrap_or_else(|| field.default_value());
    match (current.get_field_mut(&field), value) {
        (Value::List(existing), Value::List(added)) => existing.extend(added),
        (slot, value) => *slot = value,
    }
    Ok(())
}

fn find_field(descriptor: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    descriptor
        .get_field_by_name(name)
        .or_else(|| descriptor.get_field_by_json_name(name))
}

/// Turns the text of a path variable or query parameter into the JSON
/// value that proto3 JSON expects for `field`. On failure it returns a
/// description of the expected text, such as "a 64-bit integer".
fn text_to_json(field: &FieldDescriptor, text: &str) -> Result<serde_json::Value, String> {
    let kind = match field.kind() {
        Kind::Bool => ScalarKind::Bool,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => ScalarKind::I32,
        Kind::Uint32 | Kind::Fixed32 => ScalarKind::U32,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => ScalarKind::I64,
        Kind::Uint64 | Kind::Fixed64 => ScalarKind::U64,
        Kind::Float | Kind::Double => ScalarKind::Float,
        Kind::String | Kind::Bytes => ScalarKind::Text,
        Kind::Enum(enumeration) => {
            return match text.parse::<i32>() {
                Ok(number) => Ok(number.into()),
                Err(_) if enumeration.get_value_by_name(text).is_some() => Ok(text.into()),
                Err(_) => {
                    let names: Vec<String> =
                        enumeration.values().map(|v| v.name().to_owned()).collect();
                    Err(format!("one of {}", names.join(", ")))
                }
            };
        }
        Kind::Message(message) => {
            let name = message.full_name();
            if STRING_MESSAGES.contains(&name) {
                ScalarKind::Text
            } else if let Some((_, kind)) = SCALAR_WRAPPERS.iter().find(|(n, _)| *n == name) {
                *kind
            } else {
                return Err(format!(
                    "settable this way because it is a message ({name}); set its fields as {}.<field>",
                    field.json_name()
                ));
            }
        }
    };
    let parsed = match kind {
        ScalarKind::Bool => match text {
            "true" => Some(true.into()),
            "false" => Some(false.into()),
            _ => None,
        },
        ScalarKind::I32 => text.parse::<i32>().ok().map(Into::into),
        ScalarKind::U32 => text.parse::<u32>().ok().map(Into::into),
        // proto3 JSON writes 64-bit integers as strings.
        ScalarKind::I64 => text.parse::<i64>().ok().map(|n| n.to_string().into()),
        ScalarKind::U64 => text.parse::<u64>().ok().map(|n| n.to_string().into()),
        ScalarKind::Float => match text {
            "NaN" | "Infinity" | "-Infinity" => Some(text.into()),
            _ => text
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .map(Into::into),
        },
        ScalarKind::Text => Some(text.into()),
    };
    parsed.ok_or_else(|| {
        match kind {
            ScalarKind::Bool => "true or false",
            ScalarKind::I32 => "a 32-bit integer",
            ScalarKind::U32 => "an unsigned 32-bit integer",
            ScalarKind::I64 => "a 64-bit integer",
            ScalarKind::U64 => "an unsigned 64-bit integer",
            ScalarKind::Float => "a number",
            ScalarKind::Text => unreachable!("text always parses"),
        }
        .to_owned()
    })
}

/// Builds an INVALID_ARGUMENT status with a BadRequest violation on `field`.
pub fn invalid(field: &str, message: String) -> Status {
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        message.clone(),
        ErrorDetails::with_bad_request_violation(field, message),
    )
}

fn unknown_field(path: &str, walked: &str, source: Source) -> Status {
    invalid(
        path,
        format!(
            "unknown {} {path:?}: the request message has no field {walked}",
            source.describe()
        ),
    )
}

/// Frames an encoded message as one gRPC length-prefixed message.
pub fn grpc_frame(message: &DynamicMessage) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut framed = BytesMut::with_capacity(encoded.len() + 5);
    framed.put_u8(0);
    framed.put_u32(encoded.len() as u32);
    framed.put_slice(&encoded);
    framed.freeze()
}

/// Decodes the single message of a unary gRPC response body.
pub fn grpc_unframe(descriptor: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, String> {
    if body.len() < 5 {
        return Err(format!(
            "response body of {} bytes has no gRPC message",
            body.len()
        ));
    }
    if body[0] != 0 {
        return Err("response message is compressed, which the gateway never requests".into());
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let payload = body
        .get(5..5 + length)
        .ok_or_else(|| format!("response message of {length} bytes is truncated"))?;
    DynamicMessage::decode(descriptor.clone(), payload).map_err(|e| e.to_string())
}

/// Writes `message` as proto3 JSON: lowerCamelCase names, 64-bit integers
/// as strings, enums as names, `Any` with `@type`, defaults omitted.
///
/// An `Any` holding `google.protobuf.Empty` is written as `{"@type": ...}`
/// alone, the form the C++ library behind Envoy's transcoder and the Python
/// and Java parsers use. prost-reflect, like Go, adds `"value": {}`, which
/// those parsers reject, so it is dropped here.
pub fn message_json(message: &DynamicMessage) -> Result<serde_json::Value, serde_json::Error> {
    let mut json =
        message.serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())?;
    drop_empty_any_values(&mut json);
    Ok(json)
}

/// Removes the `value` key of every `Any` object that contains `Empty`.
fn drop_empty_any_values(json: &mut serde_json::Value) {
    match json {
        serde_json::Value::Object(map) => {
            let holds_empty = map
                .get("@type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.ends_with("/google.protobuf.Empty"));
            if holds_empty
                && map
                    .get("value")
                    .is_some_and(|v| v.as_object().is_some_and(|o| o.is_empty()))
            {
                map.remove("value");
            }
            map.values_mut().for_each(drop_empty_any_values);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_empty_any_values),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rest::routes::{Lookup, RouteTable};
    use http::Method;

    fn build(
        method: Method,
        path: &str,
        query: Option<&str>,
        body: &str,
    ) -> Result<serde_json::Value, Status> {
        let table = RouteTable::from_pool(crate::rest::gateway_pool()).unwrap();
        let Lookup::Found(matched) = table.lookup(&method, path) else {
            panic!("no route for {method} {path}");
        };
        let message = request_message(matched.route, &matched.variables, query, body.as_bytes())?;
        Ok(message_json(&message).unwrap())
    }

    #[test]
    fn empty_any_has_no_value_key() {
        let mut json = serde_json::json!({
            "done": true,
            "response": {"@type": "type.googleapis.com/google.protobuf.Empty", "value": {}},
            "metadata": {"@type": "type.googleapis.com/x.Y", "value": {}},
        });
        drop_empty_any_values(&mut json);
        assert_eq!(
            json["response"],
            serde_json::json!({"@type": "type.googleapis.com/google.protobuf.Empty"})
        );
        assert_eq!(json["metadata"]["value"], serde_json::json!({}));
    }

    #[test]
    fn query_accepts_camel_and_proto_names() {
        let json = build(
            Method::GET,
            "/backup/v1/backups",
            Some("folderId=f1&page_size=5&pageToken=t"),
            "",
        )
        .unwrap();
        assert_eq!(json["folderId"], "f1");
        assert_eq!(json["pageSize"], "5");
        assert_eq!(json["pageToken"], "t");
    }

    #[test]
    fn query_sets_nested_fields() {
        let json = build(
            Method::GET,
            "/backup/v1/backups",
            Some("archive.archiveId=a1&archive.folder_id=f1"),
            "",
        )
        .unwrap();
        assert_eq!(json["archive"]["archiveId"], "a1");
        assert_eq!(json["archive"]["folderId"], "f1");
    }

    #[test]
    fn query_wrong_type_names_parameter() {
        let error = build(Method::GET, "/backup/v1/backups", Some("pageSize=ten"), "").unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(
            error.message().contains("\"pageSize\""),
            "{}",
            error.message()
        );
        assert!(
            error.message().contains("64-bit integer"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn query_unknown_parameter_rejected() {
        let error = build(Method::GET, "/backup/v1/backups", Some("colour=red"), "").unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(
            error.message().contains("\"colour\""),
            "{}",
            error.message()
        );
    }

    #[test]
    fn body_star_with_path_variable() {
        let json = build(
            Method::POST,
            "/backup/v1/policies/p1:apply",
            None,
            r#"{"computeInstanceId": "vm1", "policyId": "ignored"}"#,
        )
        .unwrap();
        assert_eq!(json["policyId"], "p1");
        assert_eq!(json["computeInstanceId"], "vm1");
    }

    #[test]
    fn body_unknown_field_rejected() {
        let error = build(
            Method::POST,
            "/backup/v1/policies/p1:apply",
            None,
            r#"{"bogus": 1}"#,
        )
        .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().contains("bogus"), "{}", error.message());
    }

    #[test]
    fn body_malformed_json_rejected() {
        let error = build(Method::POST, "/backup/v1/policies", None, "{\"name\": ").unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(
            error.message().starts_with("invalid request body"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn query_on_body_star_route_rejected() {
        let error = build(
            Method::POST,
            "/backup/v1/policies",
            Some("folderId=f1"),
            "{}",
        )
        .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().contains("JSON body"), "{}", error.message());
    }

    #[test]
    fn repeated_fields_append() {
        let descriptor = crate::rest::gateway_pool()
            .get_message_by_name("yandex.cloud.backup.v1.StartFilesRecoveryRequest")
            .unwrap();
        let mut message = DynamicMessage::new(descriptor);
        set_by_path(&mut message, "sourceIds", "a", Source::Query).unwrap();
        set_by_path(&mut message, "source_ids", "b", Source::Query).unwrap();
        let json = message_json(&message).unwrap();
        assert_eq!(json["sourceIds"], serde_json::json!(["a", "b"]));
    }

    #[test]
    fn bool_query_rejects_other_words() {
        let json = build(
            Method::GET,
            "/backup/v1/policies/p1/applications",
            Some("showProcessing=true"),
            "",
        )
        .unwrap();
        assert_eq!(json["showProcessing"], true);
        let error = build(
            Method::GET,
            "/backup/v1/policies/p1/applications",
            Some("showProcessing=yes"),
            "",
        )
        .unwrap_err();
        assert!(
            error.message().contains("true or false"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn enum_query_accepts_name_and_rejects_others() {
        let json = build(Method::GET, "/backup/v1/backups", Some("type=COMPUTE"), "").unwrap();
        assert_eq!(json["type"], "COMPUTE");
        let error = build(Method::GET, "/backup/v1/backups", Some("type=DISK"), "").unwrap_err();
        assert!(error.message().contains("one of"), "{}", error.message());
    }
}
