//! Printing API messages as proto JSON, YAML, tables and `key: value` lines.
//!
//! Every format starts from the message's proto JSON form, made with
//! prost-reflect and the API's descriptors: proto field names in snake_case,
//! 64-bit integers as strings, RFC 3339 timestamps, enums by name and `Any`
//! with its `@type`.

use std::{io::Write as _, sync::OnceLock};

use anyhow::Context as _;
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde::Serialize;
use serde_yaml_ng::Value;

use super::settings::OutputFormat;

/// Returns the API's descriptors plus `google.protobuf.Empty`, which
/// operation responses name in their `Any` but no API file imports.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = backstop_proto::descriptor_pool().clone();
        if pool.get_message_by_name("google.protobuf.Empty").is_none() {
            let empty = prost_types::FileDescriptorProto {
                name: Some("google/protobuf/empty.proto".to_owned()),
                package: Some("google.protobuf".to_owned()),
                message_type: vec![prost_types::DescriptorProto {
                    name: Some("Empty".to_owned()),
                    ..Default::default()
                }],
                syntax: Some("proto3".to_owned()),
                ..Default::default()
            };
            pool.add_file_descriptor_proto(empty)
                .expect("google.protobuf.Empty is a valid file descriptor");
        }
        pool
    })
}

/// Converts a generated message to a dynamic one of the same type.
pub fn to_dynamic<M: Message + Name>(message: &M) -> anyhow::Result<DynamicMessage> {
    decode_dynamic(&M::full_name(), &message.encode_to_vec())
}

/// Decodes `bytes` as the message type `full_name` of the API's descriptors.
pub fn decode_dynamic(full_name: &str, bytes: &[u8]) -> anyhow::Result<DynamicMessage> {
    let descriptor = descriptor_pool()
        .get_message_by_name(full_name)
        .with_context(|| format!("message type {full_name} is not in the API's descriptors"))?;
    DynamicMessage::decode(descriptor, bytes)
        .with_context(|| format!("cannot decode a {full_name} from the server"))
}

/// Serializes a dynamic message in proto JSON form with proto field names.
struct ProtoJson<'a>(&'a DynamicMessage);

impl Serialize for ProtoJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let options = SerializeOptions::new().use_proto_field_name(true);
        self.0.serialize_with_options(serializer, &options)
    }
}

/// Returns the message's proto JSON form as an ordered YAML value, which
/// keeps the field order of the descriptor for text output.
fn ordered_value(message: &DynamicMessage) -> anyhow::Result<Value> {
    serde_yaml_ng::to_value(ProtoJson(message)).context("cannot convert the message to JSON form")
}

/// Content kind of a table cell.
#[derive(Clone, Copy)]
pub enum Cell {
    /// The value as it is.
    Plain,
    /// A byte count, shown with a binary unit (KiB, MiB, ...).
    Bytes,
}

/// A table column: its header, the dotted path of the field in proto JSON
/// form, and how to show the value.
pub struct Column {
    pub header: &'static str,
    pub path: &'static str,
    pub cell: Cell,
}

/// Shorthand for a [`Column`] of [`Cell::Plain`] values.
pub const fn col(header: &'static str, path: &'static str) -> Column {
    Column {
        header,
        path,
        cell: Cell::Plain,
    }
}

/// Shorthand for a [`Column`] of byte counts.
pub const fn bytes_col(header: &'static str, path: &'static str) -> Column {
    Column {
        header,
        path,
        cell: Cell::Bytes,
    }
}

/// Prints one message: JSON, YAML, or `key: value` lines.
pub fn print_message(format: OutputFormat, message: &DynamicMessage) -> anyhow::Result<()> {
    let text = render_message(format, message)?;
    write_stdout(&text)
}

/// Prints a list of messages: a JSON or YAML sequence, or a table.
pub fn print_list(
    format: OutputFormat,
    items: &[DynamicMessage],
    columns: &[Column],
) -> anyhow::Result<()> {
    let text = match format {
        OutputFormat::Json => {
            let wrapped: Vec<ProtoJson> = items.iter().map(ProtoJson).collect();
            let mut text = serde_json::to_string_pretty(&wrapped)?;
            text.push('\n');
            text
        }
        OutputFormat::Yaml => {
            let wrapped: Vec<ProtoJson> = items.iter().map(ProtoJson).collect();
            serde_yaml_ng::to_string(&wrapped)?
        }
        OutputFormat::Text => {
            let values = items
                .iter()
                .map(ordered_value)
                .collect::<anyhow::Result<Vec<_>>>()?;
            render_table(&values, columns)
        }
    };
    write_stdout(&text)
}

/// Renders one message in `format`.
pub fn render_message(format: OutputFormat, message: &DynamicMessage) -> anyhow::Result<String> {
    Ok(match format {
        OutputFormat::Json => {
            let mut text = serde_json::to_string_pretty(&ProtoJson(message))?;
            text.push('\n');
            text
        }
        OutputFormat::Yaml => serde_yaml_ng::to_string(&ProtoJson(message))?,
        OutputFormat::Text => {
            let mut lines = Vec::new();
            flatten(&ordered_value(message)?, String::new(), &mut lines);
            let mut text = String::new();
            for (key, value) in lines {
                text.push_str(&key);
                text.push_str(": ");
                text.push_str(&value);
                text.push('\n');
            }
            text
        }
    })
}

/// Writes to stdout, ending quietly when the reader has gone (`| head`).
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

/// Collects `dotted.key: value` pairs of the leaves of `value`. List items
/// get `[index]` and empty lists and objects are left out.
fn flatten(value: &Value, prefix: String, lines: &mut Vec<(String, String)>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                let key = scalar_text(key);
                let path = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(child, path, lines);
            }
        }
        Value::Sequence(items) => {
            for (index, child) in items.iter().enumerate() {
                flatten(child, format!("{prefix}[{index}]"), lines);
            }
        }
        other => lines.push((prefix, scalar_text(other))),
    }
}

/// Returns a scalar as plain text, and a list as its items joined by commas.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => text.clone(),
        Value::Sequence(items) => items.iter().map(scalar_text).collect::<Vec<_>>().join(","),
        Value::Mapping(_) | Value::Tagged(_) => serde_yaml_ng::to_string(value)
            .unwrap_or_default()
            .trim()
            .replace('\n', " "),
    }
}

/// Looks up a dotted path such as `progress.current` in an object.
fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |current, key| current.as_mapping()?.get(key))
}

/// Formats a table cell. A missing field gives an empty cell.
fn cell_text(value: Option<&Value>, cell: Cell) -> String {
    let Some(value) = value else {
        return String::new();
    };
    let text = scalar_text(value);
    match cell {
        Cell::Plain => text,
        Cell::Bytes => match text.parse::<u64>() {
            Ok(bytes) => indicatif::BinaryBytes(bytes).to_string(),
            Err(_) => text,
        },
    }
}

/// Renders rows as a table with a header line and columns aligned by two
/// spaces.
fn render_table(rows: &[Value], columns: &[Column]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|column| cell_text(lookup(row, column.path), column.cell))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(index, column)| {
            cells
                .iter()
                .map(|row| row[index].chars().count())
                .chain([column.header.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();

    let mut text = String::new();
    let headers: Vec<String> = columns.iter().map(|c| c.header.to_owned()).collect();
    for line in std::iter::once(&headers).chain(cells.iter()) {
        let mut rendered = String::new();
        for (index, value) in line.iter().enumerate() {
            if index > 0 {
                rendered.push_str("  ");
            }
            rendered.push_str(value);
            let padding = widths[index].saturating_sub(value.chars().count());
            rendered.extend(std::iter::repeat_n(' ', padding));
        }
        text.push_str(rendered.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use backstop_proto::backup::{Backup, Task};

    use super::*;

    fn sample_backup() -> Backup {
        Backup {
            id: "b-1".into(),
            size: 3 << 20,
            compute_instance_id: "vm-1".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            r#type: 1,
            ..Default::default()
        }
    }

    #[test]
    fn json_uses_proto_names_and_string_int64() {
        let message = to_dynamic(&sample_backup()).unwrap();
        let text = render_message(OutputFormat::Json, &message).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["compute_instance_id"], "vm-1");
        assert_eq!(value["size"], "3145728");
        assert_eq!(value["created_at"], "2023-11-14T22:13:20Z");
        assert_eq!(value["type"], "FULL");
    }

    #[test]
    fn operation_with_empty_response_serializes() {
        let operation = backstop_proto::operation::Operation {
            id: "op-1".into(),
            done: true,
            result: Some(backstop_proto::operation::operation::Result::Response(
                prost_types::Any {
                    type_url: "type.googleapis.com/google.protobuf.Empty".into(),
                    value: Vec::new(),
                },
            )),
            ..Default::default()
        };
        let text = render_message(OutputFormat::Json, &to_dynamic(&operation).unwrap()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value["response"]["@type"],
            "type.googleapis.com/google.protobuf.Empty"
        );
    }

    #[test]
    fn text_flattens_nested_fields() {
        let task = Task {
            id: 7,
            progress: Some(backstop_proto::backup::Progress {
                current: 5,
                total: 10,
            }),
            ..Default::default()
        };
        let text = render_message(OutputFormat::Text, &to_dynamic(&task).unwrap()).unwrap();
        assert!(text.contains("id: 7\n"), "{text}");
        assert!(text.contains("progress.current: 5\n"), "{text}");
        assert!(text.contains("progress.total: 10\n"), "{text}");
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            ordered_value(&to_dynamic(&sample_backup()).unwrap()).unwrap(),
            ordered_value(
                &to_dynamic(&Backup {
                    id: "backup-long-id".into(),
                    ..Default::default()
                })
                .unwrap(),
            )
            .unwrap(),
        ];
        let text = render_table(&rows, &[col("ID", "id"), bytes_col("SIZE", "size")]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID              SIZE");
        assert_eq!(lines[1], "b-1             3.00 MiB");
        assert_eq!(lines[2], "backup-long-id");
    }
}
