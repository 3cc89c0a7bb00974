"""Wire-compatibility vectors between the official Python SDK and Backstop.

`generate` prints, as JSON, one fully populated instance of every message of
the backup and operation packages, encoded by the SDK's generated classes.
Backstop's Rust test decodes each with its own generated types, encodes it
again, and writes the result; `check FILE` decodes those bytes with the SDK
and compares them with the originals, field for field, and compares the
proto3 JSON form that Backstop printed with the SDK's.
"""

import base64
import json
import sys

from google.protobuf import json_format, unknown_fields
from google.protobuf.descriptor import FieldDescriptor

import yandex.cloud.backup.v1.backup_pb2
import yandex.cloud.backup.v1.backup_service_pb2
import yandex.cloud.backup.v1.policy_pb2
import yandex.cloud.backup.v1.policy_service_pb2
import yandex.cloud.backup.v1.provider_service_pb2
import yandex.cloud.backup.v1.resource_pb2
import yandex.cloud.backup.v1.resource_service_pb2
import yandex.cloud.operation.operation_pb2
import yandex.cloud.operation.operation_service_pb2
from google.protobuf import symbol_database

MODULES = [
    yandex.cloud.backup.v1.backup_pb2,
    yandex.cloud.backup.v1.backup_service_pb2,
    yandex.cloud.backup.v1.policy_pb2,
    yandex.cloud.backup.v1.policy_service_pb2,
    yandex.cloud.backup.v1.provider_service_pb2,
    yandex.cloud.backup.v1.resource_pb2,
    yandex.cloud.backup.v1.resource_service_pb2,
    yandex.cloud.operation.operation_pb2,
    yandex.cloud.operation.operation_service_pb2,
]

MAX_DEPTH = 5


def message_class(descriptor):
    return symbol_database.Default().GetSymbol(descriptor.full_name)


def all_descriptors():
    """Yields every message descriptor of MODULES, nested ones included."""
    def walk(descriptor):
        if descriptor.GetOptions().map_entry:
            return
        yield descriptor
        for nested in descriptor.nested_types:
            yield from walk(nested)

    for module in MODULES:
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            yield from walk(descriptor)


def scalar(field, index):
    """Returns a non-default value for a scalar field."""
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-{index}"
    if t == FieldDescriptor.TYPE_BYTES:
        return f"{field.name}-{index}".encode()
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 12.5 + index
    if t == FieldDescriptor.TYPE_ENUM:
        values = field.enum_type.values
        return values[-1].number if index == 0 else values[min(1, len(values) - 1)].number
    # Integers: large enough to need several varint bytes.
    return 1000 * field.number + 7 + index


def populate(message, depth, oneof_choice):
    """Sets every field of `message`; oneofs get member `oneof_choice[name]`."""
    descriptor = message.DESCRIPTOR
    if descriptor.full_name == "google.protobuf.Any":
        inner = yandex.cloud.backup.v1.backup_service_pb2.StartRecoveryMetadata(
            progress_percentage=42.5, src_backup_id="b-1", dst_compute_instance_id="i-1")
        message.Pack(inner)
        return
    if descriptor.full_name == "google.protobuf.Timestamp":
        message.seconds = 1_760_000_000 + depth
        message.nanos = 123_456_000
        return
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):
            if oneof_choice.get(oneof.full_name, oneof.fields[0].name) != field.name:
                continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= MAX_DEPTH:
                continue
            if field.message_type.GetOptions().map_entry:
                key_field = field.message_type.fields_by_name["key"]
                value_field = field.message_type.fields_by_name["value"]
                target = getattr(message, field.name)
                for i in range(2):
                    key = scalar(key_field, i)
                    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        populate(target[key], depth + 1, oneof_choice)
                    else:
                        target[key] = scalar(value_field, i)
                continue
            if field.is_repeated:
                for _ in range(2):
                    populate(getattr(message, field.name).add(), depth + 1, oneof_choice)
            else:
                populate(getattr(message, field.name), depth + 1, oneof_choice)
                getattr(message, field.name).SetInParent()
        elif field.is_repeated:
            getattr(message, field.name).extend([scalar(field, 0), scalar(field, 1)])
        else:
            setattr(message, field.name, scalar(field, 0))


def variants(descriptor):
    """Yields oneof choices that together set every member of every oneof
    of the message itself."""
    oneofs = [o for o in descriptor.oneofs if not o.name.startswith("_")]
    yield {}
    for oneof in oneofs:
        for member in oneof.fields[1:]:
            yield {oneof.full_name: member.name}


def to_json(message):
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def generate():
    vectors = []
    for descriptor in all_descriptors():
        cls = message_class(descriptor)
        for choice in variants(descriptor):
            message = cls()
            populate(message, 0, choice)
            vectors.append({
                "message": descriptor.full_name,
                "encoded": base64.b64encode(message.SerializeToString()).decode(),
                "json": to_json(message),
            })
    json.dump(vectors, sys.stdout)


def check(path):
    """Compares Backstop's re-encoded messages with the originals."""
    with open(path) as f:
        results = json.load(f)
    failures = []
    for result in results:
        name = result["message"]
        cls = symbol_database.Default().GetSymbol(name)
        original = cls.FromString(base64.b64decode(result["encoded"]))
        returned = cls.FromString(base64.b64decode(result["reencoded"]))
        if original != returned:
            failures.append(f"{name}: bytes re-encoded by Backstop decode to\n{returned}\ninstead of\n{original}")
            continue
        if len(unknown_fields.UnknownFieldSet(returned)) > 0:
            failures.append(f"{name}: re-encoded message has unknown fields")
        if normalize(result["backstop_json"]) != normalize(to_json(original)):
            failures.append(
                f"{name}: proto3 JSON differs\nbackstop: {json.dumps(result['backstop_json'], sort_keys=True)}\n"
                f"sdk:      {json.dumps(to_json(original), sort_keys=True)}")
    for failure in failures:
        print(failure, file=sys.stderr)
    print(f"{len(results) - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


def normalize(value):
    """Makes equal JSON values compare equal: RFC 3339 times with different
    fraction digits and floats printed as integers."""
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, str) and len(value) >= 20 and value[4] == "-" and value.endswith("Z") and "T" in value:
        head, _, frac = value[:-1].partition(".")
        frac = frac.rstrip("0")
        return head + ("." + frac if frac else "") + "Z"
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


if __name__ == "__main__":
    if sys.argv[1:] == ["generate"]:
        generate()
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2]))
    else:
        print("usage: wire_vectors.py generate | check FILE", file=sys.stderr)
        sys.exit(2)
