"""The REST mapping from a plain HTTP/1.1 client (urllib) over TLS, checked
against the official SDK's messages and a real OpenAPI validator."""

import json
import ssl
import urllib.error
import urllib.request

import grpc
from google.protobuf import empty_pb2, json_format
from openapi_spec_validator import validate
from yandex.cloud.backup.v1 import provider_service_pb2, provider_service_pb2_grpc
from yandex.cloud.operation import operation_pb2, operation_service_pb2, operation_service_pb2_grpc

TOKEN_CONFIG = """
[auth]
mode = "tokens"

[[auth.tokens]]
token = "rest-test-token"
subject = "ajeresttest00000000a"
folders = ["folder-rest"]
"""


def rest_call(server, method, path, body=None, token=None, headers=None):
    """Sends one REST request over TLS; returns (HTTP status, headers, JSON body)."""
    context = ssl.create_default_context(cadata=server.cert_pem.decode())
    request = urllib.request.Request(f"https://{server.address}{path}", method=method)
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def grpc_channel(server, token):
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=server.cert_pem),
        grpc.access_token_call_credentials(token),
    )
    return grpc.secure_channel(server.address, credentials)


def test_rest_operation_parses_as_sdk_message(start_server):
    server = start_server(tls=True)
    status, headers, body = rest_call(
        server, "POST", "/backup/v1/providers/cloudbackup:activate", {"folderId": "folder-rest"})
    assert status == 200, body
    assert headers["x-request-id"]
    assert body["metadata"]["@type"] == "type.googleapis.com/yandex.cloud.backup.v1.ActivateProviderMetadata"

    # An Empty inside Any comes as {"@type": ...} alone, which the SDK's
    # json_format reads. Importing empty_pb2 lets the parser resolve the type.
    empty_type = "type.googleapis.com/" + empty_pb2.Empty.DESCRIPTOR.full_name
    assert body["response"] == {"@type": empty_type}
    parsable = body
    # The SDK's own JSON parser accepts the body, and the result equals what
    # gRPC returns for the same operation.
    from_rest = json_format.ParseDict(parsable, operation_pb2.Operation())
    operations = operation_service_pb2_grpc.OperationServiceStub(grpc_channel(server, "any-token"))
    from_grpc = operations.Get(operation_service_pb2.GetOperationRequest(operation_id=body["id"]))
    assert from_rest == from_grpc
    metadata = provider_service_pb2.ActivateProviderMetadata()
    assert from_rest.metadata.Unpack(metadata)
    assert metadata.folder_id == "folder-rest"

    status, _, fetched = rest_call(server, "GET", f"/operations/{body['id']}")
    assert status == 200
    assert fetched == body


def test_rest_errors_match_grpc_status(start_server):
    server = start_server(tls=True, config=TOKEN_CONFIG)
    providers = provider_service_pb2_grpc.ProviderServiceStub(grpc_channel(server, "wrong-token"))
    request = provider_service_pb2.ActivateProviderRequest(folder_id="folder-rest", name="cloudbackup")
    try:
        providers.Activate(request)
        raise AssertionError("Activate with an unknown token succeeded")
    except grpc.RpcError as error:
        grpc_code, grpc_message = error.code(), error.details()
    assert grpc_code == grpc.StatusCode.UNAUTHENTICATED

    status, headers, body = rest_call(
        server, "POST", "/backup/v1/providers/cloudbackup:activate", {"folderId": "folder-rest"},
        token="wrong-token")
    assert status == 401
    assert body["code"] == grpc_code.value[0]
    assert body["message"] == grpc_message
    assert {"@type": "type.googleapis.com/google.rpc.RequestInfo",
            "requestId": headers["x-request-id"]} in body["details"]

    status, _, body = rest_call(
        server, "POST", "/backup/v1/providers/cloudbackup:activate", {"folderId": "folder-rest"},
        token="rest-test-token", headers={"Idempotency-Key": "python-rest-key"})
    assert status == 200, body
    status, _, again = rest_call(
        server, "POST", "/backup/v1/providers/cloudbackup:activate", {"folderId": "folder-rest"},
        token="rest-test-token", headers={"Idempotency-Key": "python-rest-key"})
    assert again["id"] == body["id"]


def test_openapi_document_passes_validator(start_server):
    server = start_server(tls=True)
    status, _, document = rest_call(server, "GET", "/openapi.json")
    assert status == 200
    validate(document)
    assert "/backup/v1/backups/{backup_id}:startRecovery" in document["paths"]
