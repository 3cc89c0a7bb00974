"""The official Python SDK (`yandexcloud`) against a Backstop server."""

import grpc
import pytest
import yandexcloud
from google.rpc import error_details_pb2, status_pb2
from yandex.cloud.backup.v1 import provider_service_pb2, provider_service_pb2_grpc
from yandex.cloud.backup.v1 import backup_service_pb2, backup_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc

TOKEN_CONFIG = """
[auth]
mode = "tokens"

[[auth.tokens]]
token = "sdk-test-token"
subject = "ajesdktest000000000a"
folders = ["folder-sdk"]
"""


def backup_channel(server, token):
    """Opens a TLS channel with bearer credentials by hand, because the SDK's
    `client()` does not know the backup package."""
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=server.cert_pem),
        grpc.access_token_call_credentials(token),
    )
    return grpc.secure_channel(server.address, credentials)


def activate_request(folder):
    return provider_service_pb2.ActivateProviderRequest(folder_id=folder, name="cloudbackup")


def status_details(error):
    """Decodes the google.rpc.Status carried in an RpcError's trailers."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return None


def test_sdk_discovers_endpoints_and_waits_for_operation(start_server):
    server = start_server(tls=True)
    sdk = yandexcloud.SDK(iam_token="any-token", endpoint=server.address, root_certificates=server.cert_pem)

    providers = provider_service_pb2_grpc.ProviderServiceStub(backup_channel(server, "any-token"))
    operation = providers.Activate(activate_request("folder-sdk"))
    assert len(operation.id) == 20
    assert operation.created_by == "development"

    result = sdk.wait_operation_and_get_result(
        operation, meta_type=provider_service_pb2.ActivateProviderMetadata, timeout=30)
    assert result.meta.folder_id == "folder-sdk"

    # The SDK's own operation client goes through endpoint discovery, TLS and
    # its retry interceptor, which adds an idempotency key to every read.
    operations = sdk.client(operation_service_pb2_grpc.OperationServiceStub)
    fetched = operations.Get(operation_service_pb2.GetOperationRequest(operation_id=operation.id))
    assert fetched.id == operation.id
    assert fetched.done
    assert fetched.response.type_url == "type.googleapis.com/google.protobuf.Empty"
    meta = provider_service_pb2.ActivateProviderMetadata()
    assert fetched.metadata.Unpack(meta)
    assert meta.folder_id == "folder-sdk"

    listed = providers.ListActivated(provider_service_pb2.ListActivatedProvidersRequest(folder_id="folder-sdk"))
    assert list(listed.names) == ["cloudbackup"]


def test_sdk_token_is_checked_in_tokens_mode(start_server):
    server = start_server(tls=True, config=TOKEN_CONFIG)
    good = provider_service_pb2_grpc.ProviderServiceStub(backup_channel(server, "sdk-test-token"))
    operation = good.Activate(activate_request("folder-sdk"))
    assert operation.created_by == "ajesdktest000000000a"

    bad = provider_service_pb2_grpc.ProviderServiceStub(backup_channel(server, "not-a-token"))
    with pytest.raises(grpc.RpcError) as raised:
        bad.Activate(activate_request("folder-sdk"))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with pytest.raises(grpc.RpcError) as raised:
        good.Activate(activate_request("folder-other"))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED

    sdk = yandexcloud.SDK(iam_token="sdk-test-token", endpoint=server.address, root_certificates=server.cert_pem)
    operations = sdk.client(operation_service_pb2_grpc.OperationServiceStub)
    fetched = operations.Get(operation_service_pb2.GetOperationRequest(operation_id=operation.id))
    assert fetched.done


def test_validation_error_reaches_the_sdk_with_details(start_server):
    server = start_server(tls=True)
    backups = backup_service_pb2_grpc.BackupServiceStub(backup_channel(server, "any-token"))
    with pytest.raises(grpc.RpcError) as raised:
        backups.Get(backup_service_pb2.GetBackupRequest(backup_id="b-1"))
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Request validation error: FolderId: required"
    status = status_details(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "folder_id"

    metadata = dict(error.initial_metadata() or ())
    metadata.update(dict(error.trailing_metadata() or ()))
    assert "x-request-id" in metadata
    assert "x-server-trace-id" in metadata


def test_plaintext_server_works_with_insecure_sdk_channel(start_server):
    server = start_server()
    sdk = yandexcloud.SDK(iam_token="unused")
    operations = sdk.client(operation_service_pb2_grpc.OperationServiceStub, endpoint=server.address, insecure=True)
    providers = provider_service_pb2_grpc.ProviderServiceStub(grpc.insecure_channel(server.address))
    operation = providers.Activate(activate_request("folder-plain"))
    fetched = operations.Get(operation_service_pb2.GetOperationRequest(operation_id=operation.id))
    assert fetched.done
