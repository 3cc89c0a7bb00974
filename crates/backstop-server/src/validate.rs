//! Request validation from the `(yandex.cloud.*)` annotations in the protos.
//!
//! Every handler passes its request through [`validate_request`] before any
//! work. The message is re-read as a `prost_reflect::DynamicMessage`, so the
//! rules come from the descriptors compiled into the binary and no request
//! type needs its own checks. The first violation wins and becomes an
//! `INVALID_ARGUMENT` naming the field.
//!
//! Rules: `required` (non-empty string, present message, non-zero enum or
//! number, non-empty list); `length`, `value` and `size` ranges written as
//! `<=N`, `<N`, `>=N`, `>N`, `N` or `A-B`; `pattern` as a full match;
//! `unique` list elements; `map_key` on map keys; `exactly_one` oneofs.
//! Except for `size`, empty optional values are exempt.

use std::{collections::HashMap, sync::Mutex};

use prost::Message;
use prost_reflect::{
    DynamicMessage, ExtensionDescriptor, FieldDescriptor, MapKey, MessageDescriptor,
    ReflectMessage, Value,
};
use regex::Regex;

use crate::ApiError;

/// Checks `message` against the annotations of the message type named
/// `full_name`.
pub fn validate_request<M: Message + prost::Name>(message: &M) -> Result<(), ApiError> {
    let pool = backstop_proto::descriptor_pool();
    let full_name = M::full_name();
    let descriptor = pool
        .get_message_by_name(&full_name)
        .ok_or_else(|| anyhow::anyhow!("no descriptor for request type {full_name}"))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|e| anyhow::anyhow!("re-decoding {full_name} failed: {e}"))?;
    validate_message(&dynamic, "")
}

/// The validation extensions, looked up once.
struct Extensions {
    required: ExtensionDescriptor,
    pattern: ExtensionDescriptor,
    value: ExtensionDescriptor,
    size: ExtensionDescriptor,
    length: ExtensionDescriptor,
    unique: ExtensionDescriptor,
    map_key: ExtensionDescriptor,
    exactly_one: ExtensionDescriptor,
}

fn extensions() -> &'static Extensions {
    static EXTENSIONS: std::sync::OnceLock<Extensions> = std::sync::OnceLock::new();
    EXTENSIONS.get_or_init(|| {
        let pool = backstop_proto::descriptor_pool();
        let get = |name: &str| {
            pool.get_extension_by_name(name)
                .unwrap_or_else(|| panic!("extension {name} is compiled into the descriptor pool"))
        };
        Extensions {
            required: get("yandex.cloud.required"),
            pattern: get("yandex.cloud.pattern"),
            value: get("yandex.cloud.value"),
            size: get("yandex.cloud.size"),
            length: get("yandex.cloud.length"),
            unique: get("yandex.cloud.unique"),
            map_key: get("yandex.cloud.map_key"),
            exactly_one: get("yandex.cloud.exactly_one"),
        }
    })
}

fn validate_message(message: &DynamicMessage, prefix: &str) -> Result<(), ApiError> {
    let descriptor: MessageDescriptor = message.descriptor();
    let ext = extensions();

    for oneof in descriptor.oneofs() {
        if oneof.is_synthetic() || !bool_option(&oneof.options(), &ext.exactly_one) {
            continue;
        }
        let set: Vec<FieldDescriptor> = oneof.fields().filter(|f| message.has_field(f)).collect();
        match set.as_slice() {
            [] => {
                let names: Vec<String> = oneof.fields().map(|f| f.name().to_owned()).collect();
                return Err(ApiError::invalid_field(
                    &path(prefix, oneof.name()),
                    format!("exactly one of {} must be set", names.join(", ")),
                ));
            }
            [one] => {
                if let Value::String(text) = message.get_field(one).as_ref() {
                    if text.is_empty() {
                        return Err(ApiError::invalid_field(
                            &path(prefix, one.name()),
                            "required",
                        ));
                    }
                }
            }
            [first, second, ..] => {
                return Err(ApiError::invalid_field(
                    &path(prefix, oneof.name()),
                    format!(
                        "only one of {} and {} may be set",
                        first.name(),
                        second.name()
                    ),
                ));
            }
        }
    }

    for field in descriptor.fields() {
        let field_path = path(prefix, field.name());
        let options = field.options();
        let value = message.get_field(&field);
        let present = message.has_field(&field) && !is_default(&value);

        if bool_option(&options, &ext.required) && !present {
            return Err(ApiError::invalid_field(&field_path, "required"));
        }
        if let Some(spec) = string_option(&options, &ext.size) {
            let count = match value.as_ref() {
                Value::List(items) => items.len(),
                Value::Map(entries) => entries.len(),
                _ => 0,
            };
            let range = Range::parse(&spec).map_err(|e| anyhow::anyhow!("{field_path}: {e}"))?;
            if !range.contains(count as f64) {
                return Err(ApiError::invalid_field(
                    &field_path,
                    format!(
                        "number of elements must be {}, got {count}",
                        range.describe()
                    ),
                ));
            }
        }
        if !present {
            continue;
        }
        if bool_option(&options, &ext.unique) {
            if let Value::List(items) = value.as_ref() {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        return Err(ApiError::invalid_field(
                            &field_path,
                            format!("elements must be unique, {} repeats", show(item)),
                        ));
                    }
                }
            }
        }
        let scalars: Vec<&Value> = match value.as_ref() {
            Value::List(items) => items.iter().collect(),
            Value::Map(_) => Vec::new(),
            other => vec![other],
        };
        for item in scalars {
            check_scalar(item, &options, &field_path)?;
        }
        if let (Value::Map(entries), Some(spec)) = (
            value.as_ref(),
            options.get_extension(&ext.map_key).as_message(),
        ) {
            for key in entries.keys() {
                if let MapKey::String(key) = key {
                    check_string_rules(key, spec, &format!("{field_path}[{key}]"))?;
                }
            }
        }
        match value.as_ref() {
            Value::Message(nested) => validate_message(nested, &field_path)?,
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(nested) = item {
                        validate_message(nested, &format!("{field_path}[{i}]"))?;
                    }
                }
            }
            Value::Map(entries) => {
                for (key, item) in entries {
                    if let Value::Message(nested) = item {
                        validate_message(nested, &format!("{field_path}[{}]", show_key(key)))?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Applies `length`, `pattern` and `value` to one present scalar.
fn check_scalar(value: &Value, options: &DynamicMessage, field_path: &str) -> Result<(), ApiError> {
    let ext = extensions();
    match value {
        Value::String(text) if !text.is_empty() => {
            let spec = options
                .descriptor()
                .parent_pool()
                .get_message_by_name("yandex.cloud.MapKeySpec");
            // Reuse the map-key checks by viewing the field's own options as
            // a MapKeySpec-shaped set of rules.
            let mut rules =
                DynamicMessage::new(spec.ok_or_else(|| anyhow::anyhow!("MapKeySpec missing"))?);
            if let Some(p) = string_option(options, &ext.pattern) {
                rules.set_field_by_name("pattern", Value::String(p));
            }
            if let Some(l) = string_option(options, &ext.length) {
                rules.set_field_by_name("length", Value::String(l));
            }
            check_string_rules(text, &rules, field_path)
        }
        Value::I32(_)
        | Value::I64(_)
        | Value::U32(_)
        | Value::U64(_)
        | Value::F32(_)
        | Value::F64(_) => {
            let Some(spec) = string_option(options, &ext.value) else {
                return Ok(());
            };
            let number = as_f64(value);
            let range = Range::parse(&spec).map_err(|e| anyhow::anyhow!("{field_path}: {e}"))?;
            if !range.contains(number) {
                return Err(ApiError::invalid_field(
                    field_path,
                    format!("value must be {}, got {}", range.describe(), show(value)),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks a string against the `length` and `pattern` of a MapKeySpec-shaped
/// message.
fn check_string_rules(
    text: &str,
    rules: &DynamicMessage,
    field_path: &str,
) -> Result<(), ApiError> {
    let get = |name: &str| match rules.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    if let Some(spec) = get("length") {
        let length = text.chars().count();
        let range = Range::parse(&spec).map_err(|e| anyhow::anyhow!("{field_path}: {e}"))?;
        if !range.contains(length as f64) {
            return Err(ApiError::invalid_field(
                field_path,
                format!(
                    "length must be {} characters, got {length}",
                    range.describe()
                ),
            ));
        }
    }
    if let Some(pattern) = get("pattern") {
        if !full_match(&pattern, text)? {
            return Err(ApiError::invalid_field(
                field_path,
                format!("value {text:?} must match the regular expression {pattern}"),
            ));
        }
    }
    Ok(())
}

fn full_match(pattern: &str, text: &str) -> Result<bool, ApiError> {
    static CACHE: Mutex<Option<HashMap<String, Regex>>> = Mutex::new(None);
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if !cache.contains_key(pattern) {
        let anchored = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
            anyhow::anyhow!("pattern {pattern:?} in the protos does not compile: {e}")
        })?;
        cache.insert(pattern.to_owned(), anchored);
    }
    Ok(cache[pattern].is_match(text))
}

fn bool_option(options: &DynamicMessage, ext: &ExtensionDescriptor) -> bool {
    options.has_extension(ext) && options.get_extension(ext).as_bool() == Some(true)
}

fn string_option(options: &DynamicMessage, ext: &ExtensionDescriptor) -> Option<String> {
    if !options.has_extension(ext) {
        return None;
    }
    options
        .get_extension(ext)
        .as_str()
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
}

fn is_default(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::I32(n) | Value::EnumNumber(n) => *n == 0,
        Value::I64(n) => *n == 0,
        Value::U32(n) => *n == 0,
        Value::U64(n) => *n == 0,
        Value::F32(n) => *n == 0.0,
        Value::F64(n) => *n == 0.0,
        Value::String(s) => s.is_empty(),
        Value::Bytes(b) => b.is_empty(),
        Value::List(items) => items.is_empty(),
        Value::Map(entries) => entries.is_empty(),
        Value::Message(_) => false,
    }
}

fn as_f64(value: &Value) -> f64 {
    match value {
        Value::I32(n) | Value::EnumNumber(n) => f64::from(*n),
        Value::I64(n) => *n as f64,
        Value::U32(n) => f64::from(*n),
        Value::U64(n) => *n as f64,
        Value::F32(n) => f64::from(*n),
        Value::F64(n) => *n,
        _ => f64::NAN,
    }
}

fn show(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::I32(n) | Value::EnumNumber(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        Value::F32(n) => n.to_string(),
        Value::F64(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

fn show_key(key: &MapKey) -> String {
    match key {
        MapKey::String(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// An inclusive or exclusive numeric bound pair from an annotation.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Range {
    min: Option<(f64, bool)>,
    max: Option<(f64, bool)>,
}

impl Range {
    /// Parses `<=N`, `<N`, `>=N`, `>N`, `N` or `A-B` (both ends inclusive).
    fn parse(spec: &str) -> Result<Range, String> {
        let spec = spec.trim();
        let number = |s: &str| {
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("bad range annotation {spec:?}"))
        };
        let range = if let Some(rest) = spec.strip_prefix("<=") {
            Range {
                min: None,
                max: Some((number(rest)?, true)),
            }
        } else if let Some(rest) = spec.strip_prefix('<') {
            Range {
                min: None,
                max: Some((number(rest)?, false)),
            }
        } else if let Some(rest) = spec.strip_prefix(">=") {
            Range {
                min: Some((number(rest)?, true)),
                max: None,
            }
        } else if let Some(rest) = spec.strip_prefix('>') {
            Range {
                min: Some((number(rest)?, false)),
                max: None,
            }
        } else if let Some((low, high)) = spec.split_once('-').filter(|(low, _)| !low.is_empty()) {
            Range {
                min: Some((number(low)?, true)),
                max: Some((number(high)?, true)),
            }
        } else {
            let exact = number(spec)?;
            Range {
                min: Some((exact, true)),
                max: Some((exact, true)),
            }
        };
        Ok(range)
    }

    fn contains(&self, x: f64) -> bool {
        let above = match self.min {
            Some((min, true)) => x >= min,
            Some((min, false)) => x > min,
            None => true,
        };
        let below = match self.max {
            Some((max, true)) => x <= max,
            Some((max, false)) => x < max,
            None => true,
        };
        above && below
    }

    fn describe(&self) -> String {
        match (self.min, self.max) {
            (Some((a, true)), Some((b, true))) if a == b => format!("exactly {a}"),
            (Some((a, true)), Some((b, true))) => format!("between {a} and {b}"),
            (None, Some((b, true))) => format!("<= {b}"),
            (None, Some((b, false))) => format!("< {b}"),
            (Some((a, true)), None) => format!(">= {a}"),
            (Some((a, false)), None) => format!("> {a}"),
            (min, max) => format!("in {min:?}..{max:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use backstop_proto::backup::{GetBackupRequest, ListBackupsRequest, StartRecoveryRequest};

    use super::*;

    fn message_of(error: ApiError) -> String {
        match error {
            ApiError::InvalidArgument { message, .. } => message,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn missing_required_field_is_named() {
        let request = StartRecoveryRequest {
            compute_instance_id: "instance".into(),
            backup_id: String::new(),
        };
        let error = validate_request(&request).unwrap_err();
        assert_eq!(
            message_of(error),
            "Request validation error: BackupId: required"
        );
    }

    #[test]
    fn too_long_instance_id_reports_length() {
        let request = StartRecoveryRequest {
            compute_instance_id: "x".repeat(51),
            backup_id: "b".into(),
        };
        let error = validate_request(&request).unwrap_err();
        assert_eq!(
            message_of(error),
            "Request validation error: ComputeInstanceId: length must be <= 50 characters, got 51"
        );
    }

    #[test]
    fn valid_request_passes() {
        let request = GetBackupRequest {
            backup_id: "b".into(),
            folder_id: "f".into(),
        };
        assert!(validate_request(&request).is_ok());
    }

    #[test]
    fn exactly_one_oneof_needs_a_member() {
        let request = ListBackupsRequest::default();
        let error = validate_request(&request).unwrap_err();
        assert!(message_of(error).starts_with("Request validation error: Id: exactly one of"));
    }

    #[test]
    fn page_size_above_limit_is_rejected() {
        let request = ListBackupsRequest {
            id: Some(backstop_proto::backup::list_backups_request::Id::FolderId(
                "f".into(),
            )),
            page_size: 1001,
            ..Default::default()
        };
        let error = validate_request(&request).unwrap_err();
        assert_eq!(
            message_of(error),
            "Request validation error: PageSize: value must be <= 1000, got 1001"
        );
    }

    #[test]
    fn empty_list_fails_size_rule() {
        let request = backstop_proto::backup::StartFilesRecoveryRequest {
            compute_instance_id: "instance".into(),
            backup_id: "backup".into(),
            opts: Some(backstop_proto::backup::FilesRecoveryOptions {
                r#type: Some(
                    backstop_proto::backup::files_recovery_options::Type::Original(
                        backstop_proto::backup::TargetPathOriginal::default(),
                    ),
                ),
                ..Default::default()
            }),
            source_ids: Vec::new(),
        };
        let error = validate_request(&request).unwrap_err();
        assert_eq!(
            message_of(error),
            "Request validation error: SourceIds: number of elements must be > 0, got 0"
        );
    }

    #[test]
    fn pattern_must_match_whole_value() {
        let pool = backstop_proto::descriptor_pool();
        let mut rules =
            DynamicMessage::new(pool.get_message_by_name("yandex.cloud.MapKeySpec").unwrap());
        rules.set_field_by_name("pattern", Value::String("[a-z][-a-z0-9]*".into()));
        assert!(check_string_rules("my-policy", &rules, "name").is_ok());
        let error = check_string_rules("my policy!", &rules, "name").unwrap_err();
        assert!(message_of(error)
            .starts_with("Request validation error: Name: value \"my policy!\" must match"));
    }

    #[test]
    fn range_forms_parse() {
        assert!(Range::parse("1-63").unwrap().contains(63.0));
        assert!(!Range::parse("1-63").unwrap().contains(0.0));
        assert!(!Range::parse(">0").unwrap().contains(0.0));
        assert!(Range::parse("<2048").unwrap().contains(2047.0));
        assert!(!Range::parse("<2048").unwrap().contains(2048.0));
    }
}
