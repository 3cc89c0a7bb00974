//! End-to-end tests of the public API foundation: the built binary, real
//! gRPC clients, a catalog on a temporary folder.

mod common;

use backstop_catalog::{
    AnyMessage, Archive, Backup, BackupType, Catalog, Disk, InitStatus, NewOperation, Resource,
    ResourceStatus, ResourceType, Volume,
};
use backstop_proto::{
    backup::{
        backup_service_client::BackupServiceClient, list_archives_request, list_backups_request,
        provider_service_client::ProviderServiceClient,
        resource_service_client::ResourceServiceClient, ActivateProviderMetadata,
        ActivateProviderRequest, GetBackupRequest, GetResourceRequest,
        ListActivatedProvidersRequest, ListArchivesRequest, ListBackupsRequest,
        ListResourcesRequest,
    },
    endpoint::{api_endpoint_service_client::ApiEndpointServiceClient, ListApiEndpointsRequest},
    operation::{
        operation, operation_service_client::OperationServiceClient, CancelOperationRequest,
        GetOperationRequest, Operation,
    },
};
use common::{open_catalog, with_metadata, ServerOptions, TestServer};
use prost::Message;
use time::{Duration, OffsetDateTime};
use tonic::{Code, Request};
use tonic_types::StatusExt;

fn activate(folder: &str) -> ActivateProviderRequest {
    ActivateProviderRequest {
        folder_id: folder.into(),
        name: "cloudbackup".into(),
        skip_default_policy: false,
        instance_registration_id: String::new(),
    }
}

fn assert_api_id(id: &str) {
    assert_eq!(id.len(), 20, "id {id:?}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "id {id:?}"
    );
}

#[tokio::test]
async fn health_reports_serving() {
    let server = TestServer::start();
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "yandex.cloud.backup.v1.BackupService".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        response.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn reflection_lists_public_services() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let server = TestServer::start();
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "yandex.cloud.backup.v1.BackupService",
        "yandex.cloud.operation.OperationService",
        "yandex.cloud.endpoint.ApiEndpointService",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn responses_carry_request_and_trace_ids() {
    let server = TestServer::start();
    let mut providers = ProviderServiceClient::new(server.channel().await);

    let ok = providers
        .list_activated(ListActivatedProvidersRequest {
            folder_id: "folder-a".into(),
            instance_registration_id: String::new(),
        })
        .await
        .unwrap();
    let request_id = ok
        .metadata()
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        ok.metadata()
            .get("x-server-request-id")
            .unwrap()
            .to_str()
            .unwrap(),
        request_id
    );
    let trace_id = ok
        .metadata()
        .get("x-server-trace-id")
        .expect("x-server-trace-id")
        .to_str()
        .unwrap();
    assert_eq!(trace_id.split(':').count(), 4, "trace id {trace_id}");

    let error = providers
        .list_activated(ListActivatedProvidersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.metadata().get("x-request-id").is_some());
    assert!(error.metadata().get("x-server-trace-id").is_some());

    // Every log line of the first call carries its request id.
    let handled = server.wait_for_log(|line| {
        line["span"]["request_id"] == request_id.as_str() && line["message"] == "call handled"
    });
    assert!(
        handled.is_some(),
        "no log line with request id {request_id}"
    );
}

#[tokio::test]
async fn invalid_request_names_the_field() {
    let server = TestServer::start();
    let mut backups = BackupServiceClient::new(server.channel().await);

    let error = backups
        .get(GetBackupRequest {
            backup_id: "b1".into(),
            folder_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        error.message(),
        "Request validation error: FolderId: required"
    );
    let details = error.get_error_details();
    let violation = &details
        .bad_request()
        .expect("BadRequest detail")
        .field_violations[0];
    assert_eq!(violation.field, "folder_id");

    let error = backups
        .list(ListBackupsRequest {
            id: Some(list_backups_request::Id::FolderId("f".into())),
            page_size: 1001,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        error.message(),
        "Request validation error: PageSize: value must be <= 1000, got 1001"
    );

    let error = backups
        .list(ListBackupsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error
            .message()
            .starts_with("Request validation error: Id: exactly one of"),
        "{}",
        error.message()
    );
}

#[tokio::test]
async fn invalid_request_creates_no_operation() {
    let server = TestServer::start();
    let mut providers = ProviderServiceClient::new(server.channel().await);
    let error = providers
        .activate(with_metadata(
            activate(&"f".repeat(51)),
            None,
            &[("idempotency-key", "k-invalid")],
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        error.message(),
        "Request validation error: FolderId: length must be <= 50 characters, got 51"
    );

    // The same key on a valid request starts a fresh operation, so the
    // rejected call recorded nothing under it.
    let operation = providers
        .activate(with_metadata(
            activate("folder-a"),
            None,
            &[("idempotency-key", "k-invalid")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(operation.done);
    let listed = providers
        .list_activated(ListActivatedProvidersRequest {
            folder_id: "f".repeat(50),
            instance_registration_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.names.is_empty());
}

#[tokio::test]
async fn operation_get_and_cancel_follow_the_contract() {
    let server = TestServer::start();
    let channel = server.channel().await;
    let mut providers = ProviderServiceClient::new(channel.clone());
    let mut operations = OperationServiceClient::new(channel);

    let started = providers
        .activate(activate("folder-a"))
        .await
        .unwrap()
        .into_inner();
    assert_api_id(&started.id);
    assert_eq!(started.created_by, "development");
    assert!(started.done);
    let metadata = started.metadata.clone().expect("metadata");
    assert_eq!(
        metadata.type_url,
        "type.googleapis.com/yandex.cloud.backup.v1.ActivateProviderMetadata"
    );
    assert_eq!(
        ActivateProviderMetadata::decode(metadata.value.as_slice())
            .unwrap()
            .folder_id,
        "folder-a"
    );
    match &started.result {
        Some(operation::Result::Response(any)) => {
            assert_eq!(any.type_url, "type.googleapis.com/google.protobuf.Empty")
        }
        other => panic!("expected a response, got {other:?}"),
    }
    assert!(
        started.modified_at.as_ref().unwrap().seconds
            >= started.created_at.as_ref().unwrap().seconds
    );

    // The SDKs send an idempotency key on reads too; it must be ignored.
    let fetched = operations
        .get(with_metadata(
            GetOperationRequest {
                operation_id: started.id.clone(),
            },
            None,
            &[("idempotency-key", "read-key")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, started);

    let cancelled = operations
        .cancel(CancelOperationRequest {
            operation_id: started.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cancelled, started,
        "cancelling a finished operation changes nothing"
    );

    let missing = operations
        .get(GetOperationRequest {
            operation_id: "nosuchoperation00000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let empty = operations
        .get(GetOperationRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        empty.message(),
        "Request validation error: OperationId: required"
    );
}

#[tokio::test]
async fn cancel_ends_unfinished_operation_cancelled() {
    let server = TestServer::start();
    let catalog = open_catalog(&server.data_dir).await;
    let created = catalog
        .create_operation(NewOperation {
            description: "Long work".into(),
            created_by: "development".into(),
            metadata: AnyMessage {
                type_url: "type.googleapis.com/yandex.cloud.backup.v1.ActivateProviderMetadata"
                    .into(),
                value: Vec::new(),
            },
            resource_id: None,
            idempotency: None,
            task: None,
        })
        .await
        .unwrap()
        .operation;

    let mut operations = OperationServiceClient::new(server.channel().await);
    let cancelled = operations
        .cancel(CancelOperationRequest {
            operation_id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.done);
    match cancelled.result {
        Some(operation::Result::Error(status)) => {
            assert_eq!(status.code, Code::Cancelled as i32);
            assert!(!status.message.is_empty());
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn idempotency_key_returns_first_operation() {
    let server = TestServer::start();
    let mut providers = ProviderServiceClient::new(server.channel().await);
    let call =
        |key: &'static str| with_metadata(activate("folder-a"), None, &[("idempotency-key", key)]);

    let first = providers
        .activate(call("key-1"))
        .await
        .unwrap()
        .into_inner();
    let again = providers
        .activate(call("key-1"))
        .await
        .unwrap()
        .into_inner();
    let other = providers
        .activate(call("key-2"))
        .await
        .unwrap()
        .into_inner();
    let unkeyed = providers
        .activate(activate("folder-a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.id, again.id);
    assert_ne!(first.id, other.id);
    assert_ne!(first.id, unkeyed.id);
}

#[tokio::test]
async fn operations_survive_restart() {
    let server = TestServer::start();
    let mut providers = ProviderServiceClient::new(server.channel().await);
    let started = providers
        .activate(activate("folder-a"))
        .await
        .unwrap()
        .into_inner();
    drop(providers);

    let (data_dir, temp) = server.stop_keep_data();
    let restarted = TestServer::start_with(ServerOptions {
        data_dir: Some(data_dir),
        ..Default::default()
    });
    let mut operations = OperationServiceClient::new(restarted.channel().await);
    let fetched = operations
        .get(GetOperationRequest {
            operation_id: started.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, started);
    drop(restarted);
    drop(temp);
}

#[tokio::test]
async fn restart_ends_orphaned_operation_with_error() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let orphan = {
        let catalog = open_catalog(&data_dir).await;
        catalog
            .create_operation(NewOperation {
                description: "Left running".into(),
                created_by: "development".into(),
                metadata: AnyMessage {
                    type_url: "type.googleapis.com/yandex.cloud.backup.v1.ActivateProviderMetadata"
                        .into(),
                    value: Vec::new(),
                },
                resource_id: None,
                idempotency: None,
                task: None,
            })
            .await
            .unwrap()
            .operation
    };

    let server = TestServer::start_with(ServerOptions {
        data_dir: Some(data_dir),
        ..Default::default()
    });
    let mut operations = OperationServiceClient::new(server.channel().await);
    let fetched = operations
        .get(GetOperationRequest {
            operation_id: orphan.id,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(fetched.done);
    match fetched.result {
        Some(operation::Result::Error(status)) => {
            assert_eq!(status.code, Code::Aborted as i32);
            assert!(status.message.contains("restarted"), "{}", status.message);
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

const TOKEN_CONFIG: &str = r#"
[auth]
mode = "tokens"

[[auth.tokens]]
token = "token-for-alice"
subject = "aje1alice0000000000a"
folders = ["folder-a"]
"#;

#[tokio::test]
async fn tokens_mode_authenticates_and_authorizes() {
    let server = TestServer::start_with(ServerOptions {
        config: Some(TOKEN_CONFIG.into()),
        ..Default::default()
    });
    let channel = server.channel().await;
    let mut providers = ProviderServiceClient::new(channel.clone());

    let missing = providers.activate(activate("folder-a")).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(missing.metadata().get("x-request-id").is_some());

    let unknown = providers
        .activate(with_metadata(
            activate("folder-a"),
            Some("wrong-token"),
            &[],
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);

    let other_folder = providers
        .activate(with_metadata(
            activate("folder-b"),
            Some("token-for-alice"),
            &[],
        ))
        .await
        .unwrap_err();
    assert_eq!(other_folder.code(), Code::PermissionDenied);
    assert!(
        other_folder.message().contains("folder-b"),
        "{}",
        other_folder.message()
    );

    let allowed = providers
        .activate(with_metadata(
            activate("folder-a"),
            Some("token-for-alice"),
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.created_by, "aje1alice0000000000a");

    // Endpoint discovery needs no token, as the SDKs call it without one.
    let mut endpoints = ApiEndpointServiceClient::new(channel);
    endpoints
        .list(ListApiEndpointsRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn endpoint_discovery_points_at_advertised_address() {
    let server = TestServer::start_with(ServerOptions {
        extra_args: vec!["--advertise-address".into(), "localhost:4443".into()],
        ..Default::default()
    });
    let mut endpoints = ApiEndpointServiceClient::new(server.channel().await);
    let list = endpoints
        .list(ListApiEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner();
    for id in ["backup", "operation", "iam"] {
        let entry = list
            .endpoints
            .iter()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("{id} missing"));
        assert_eq!(entry.address, "localhost:4443");
    }
}

#[tokio::test]
async fn tls_serves_with_operator_certificate() {
    let server = TestServer::start_with(ServerOptions {
        tls: true,
        ..Default::default()
    });
    let mut providers = ProviderServiceClient::new(server.channel().await);
    let operation: Operation = providers
        .activate(activate("folder-a"))
        .await
        .unwrap()
        .into_inner();
    assert!(operation.done);
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let mut server = TestServer::start();
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(server
        .logs()
        .iter()
        .any(|line| line["message"] == "server stopped"));
}

fn resource(instance: &str, folder: &str, created_at: OffsetDateTime) -> Resource {
    Resource {
        compute_instance_id: instance.into(),
        resource_id: format!("res-{instance}"),
        folder_id: folder.into(),
        created_at,
        updated_at: created_at,
        online: true,
        enabled: true,
        status: ResourceStatus::Idle,
        status_details: String::new(),
        status_progress: 0,
        last_backup_time: None,
        next_backup_time: None,
        init_status: InitStatus::Registered,
        metadata: String::new(),
        resource_type: ResourceType::Compute,
        agent_version: "0.1.0".into(),
        last_heartbeat_at: Some(created_at),
    }
}

fn archive(id: &str, instance: &str, folder: &str, created_at: OffsetDateTime) -> Archive {
    Archive {
        id: id.into(),
        name: format!("{instance}-daily"),
        folder_id: folder.into(),
        compute_instance_id: instance.into(),
        resource_id: format!("res-{instance}"),
        policy_id: "policy-1".into(),
        policy_name: "daily".into(),
        size: 1 << 30,
        compressed_data_size: 1 << 29,
        data_size: 1 << 30,
        original_data_size: 1 << 31,
        logical_size: 1 << 31,
        format: 1,
        created_at,
        updated_at: created_at,
        last_backup_created_at: Some(created_at),
        last_seen_at: Some(created_at),
        encrypted: false,
        deleted: false,
    }
}

fn backup(
    id: &str,
    archive_id: &str,
    instance: &str,
    folder: &str,
    created_at: OffsetDateTime,
) -> Backup {
    Backup {
        id: id.into(),
        archive_id: archive_id.into(),
        folder_id: folder.into(),
        compute_instance_id: instance.into(),
        resource_id: format!("res-{instance}"),
        policy_id: "policy-1".into(),
        created_at,
        last_seen_at: created_at,
        size: 4096,
        deduplicated_size: 2048,
        backed_up_data_size: 4096,
        original_data_size: 8192,
        backup_type: BackupType::Full,
        disks: vec![Disk {
            device_model: "virtio-blk".into(),
            name: "vda".into(),
            size: 8192,
            volumes: vec![Volume {
                free_space: 0,
                is_bootable: true,
                is_system: true,
                name: "root".into(),
                size: 8192,
                mount_strid: String::new(),
            }],
        }],
        deleted: false,
    }
}

/// Writes two instances in two folders with five and one backups.
async fn seed_catalog(catalog: &impl Catalog) -> OffsetDateTime {
    let base = OffsetDateTime::parse(
        "2026-01-01T00:00:00Z",
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    catalog
        .upsert_resource(&resource("instance-a", "folder-a", base))
        .await
        .unwrap();
    catalog
        .upsert_resource(&resource("instance-b", "folder-b", base))
        .await
        .unwrap();
    catalog
        .upsert_archive(&archive("archive-a", "instance-a", "folder-a", base))
        .await
        .unwrap();
    catalog
        .upsert_archive(&archive("archive-b", "instance-b", "folder-b", base))
        .await
        .unwrap();
    for i in 0..5 {
        let at = base + Duration::hours(i);
        catalog
            .insert_backup(&backup(
                &format!("backup-a{i}"),
                "archive-a",
                "instance-a",
                "folder-a",
                at,
            ))
            .await
            .unwrap();
    }
    catalog
        .insert_backup(&backup(
            "backup-b0",
            "archive-b",
            "instance-b",
            "folder-b",
            base,
        ))
        .await
        .unwrap();
    base
}

fn ids(response: &backstop_proto::backup::ListBackupsResponse) -> Vec<&str> {
    response.backups.iter().map(|b| b.id.as_str()).collect()
}

#[tokio::test]
async fn backup_reads_come_from_the_catalog() {
    let server = TestServer::start();
    seed_catalog(&open_catalog(&server.data_dir).await).await;
    let mut backups = BackupServiceClient::new(server.channel().await);

    let got = backups
        .get(GetBackupRequest {
            backup_id: "backup-a2".into(),
            folder_id: "folder-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.archive_id, "archive-a");
    assert_eq!(got.disks[0].volumes[0].name, "root");
    assert_eq!(got.r#type, 1);

    let wrong_folder = backups
        .get(GetBackupRequest {
            backup_id: "backup-a2".into(),
            folder_id: "folder-b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_folder.code(), Code::NotFound);

    let list = |id: list_backups_request::Id, order: &str, filter: &str, size: i64, token: &str| {
        ListBackupsRequest {
            id: Some(id),
            order_by: order.into(),
            filter: filter.into(),
            page_size: size,
            page_token: token.into(),
            ..Default::default()
        }
    };
    let folder = || list_backups_request::Id::FolderId("folder-a".into());

    let desc = backups
        .list(list(folder(), "", "", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ids(&desc),
        [
            "backup-a4",
            "backup-a3",
            "backup-a2",
            "backup-a1",
            "backup-a0"
        ]
    );
    let asc = backups
        .list(list(folder(), "createdAt asc", "", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ids(&asc),
        [
            "backup-a0",
            "backup-a1",
            "backup-a2",
            "backup-a3",
            "backup-a4"
        ]
    );

    let first = backups
        .list(list(folder(), "createdAt desc", "", 2, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&first), ["backup-a4", "backup-a3"]);
    let second = backups
        .list(list(
            folder(),
            "createdAt desc",
            "",
            2,
            &first.next_page_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&second), ["backup-a2", "backup-a1"]);
    let third = backups
        .list(list(
            folder(),
            "createdAt desc",
            "",
            2,
            &second.next_page_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&third), ["backup-a0"]);
    assert!(third.next_page_token.is_empty());

    let filtered = backups
        .list(list(
            folder(),
            "createdAt asc",
            "created_at > \"2026-01-01T01:00:00Z\" AND created_at <= \"2026-01-01T03:00:00Z\"",
            0,
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&filtered), ["backup-a2", "backup-a3"]);

    let bad_filter = backups
        .list(list(folder(), "", "size > 1", 0, ""))
        .await
        .unwrap_err();
    assert_eq!(bad_filter.code(), Code::InvalidArgument);
    assert!(bad_filter
        .message()
        .starts_with("Request validation error: Filter:"));
    let bad_order = backups
        .list(list(folder(), "size desc", "", 0, ""))
        .await
        .unwrap_err();
    assert!(bad_order
        .message()
        .starts_with("Request validation error: OrderBy:"));

    let selectors = [
        list_backups_request::Id::ComputeInstanceId("instance-a".into()),
        list_backups_request::Id::Archive(list_backups_request::ArchiveParameters {
            archive_id: "archive-a".into(),
            folder_id: "folder-a".into(),
        }),
        list_backups_request::Id::InstancePolicy(list_backups_request::InstancePolicy {
            compute_instance_id: "instance-a".into(),
            policy_id: "policy-1".into(),
        }),
        list_backups_request::Id::ResourceId("res-instance-a".into()),
    ];
    for selector in selectors {
        let response = backups
            .list(list(selector.clone(), "", "", 0, ""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.backups.len(), 5, "selector {selector:?}");
    }
    let by_policy = backups
        .list(list(
            list_backups_request::Id::PolicyId("policy-1".into()),
            "",
            "",
            0,
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_policy.backups.len(), 6);
    let one = backups
        .list(list(
            list_backups_request::Id::Backup(list_backups_request::BackupParameters {
                backup_id: "backup-b0".into(),
                folder_id: "folder-b".into(),
            }),
            "",
            "",
            0,
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&one), ["backup-b0"]);

    let archives = backups
        .list_archives(ListArchivesRequest {
            id: Some(list_archives_request::Id::ComputeInstanceId(
                "instance-b".into(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(archives.archives.len(), 1);
    assert_eq!(archives.archives[0].id, "archive-b");
    let archives = backups
        .list_archives(ListArchivesRequest {
            id: Some(list_archives_request::Id::FolderId("folder-a".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(archives.archives[0].id, "archive-a");
}

#[tokio::test]
async fn backup_reads_respect_token_folders() {
    let server = TestServer::start_with(ServerOptions {
        config: Some(TOKEN_CONFIG.into()),
        ..Default::default()
    });
    seed_catalog(&open_catalog(&server.data_dir).await).await;
    let mut backups = BackupServiceClient::new(server.channel().await);
    let denied = backups
        .get(with_metadata(
            GetBackupRequest {
                backup_id: "backup-b0".into(),
                folder_id: "folder-b".into(),
            },
            Some("token-for-alice"),
            &[],
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let by_policy = backups
        .list(with_metadata(
            ListBackupsRequest {
                id: Some(list_backups_request::Id::PolicyId("policy-1".into())),
                ..Default::default()
            },
            Some("token-for-alice"),
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(by_policy
        .backups
        .iter()
        .all(|b| b.compute_instance_id == "instance-a"));
    assert_eq!(by_policy.backups.len(), 5);
}

#[tokio::test]
async fn resource_reads_come_from_the_catalog() {
    let server = TestServer::start();
    seed_catalog(&open_catalog(&server.data_dir).await).await;
    let mut resources = ResourceServiceClient::new(server.channel().await);

    let listed = resources
        .list(ListResourcesRequest {
            folder_id: "folder-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.resources.len(), 1);
    assert_eq!(listed.resources[0].compute_instance_id, "instance-a");
    assert!(listed.resources[0].online);

    let got = resources
        .get(Request::new(GetResourceRequest {
            compute_instance_id: "instance-b".into(),
            include_tenant_info: true,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.resource.unwrap().tenant_info.unwrap().folder_id,
        "folder-b"
    );

    let missing = resources
        .get(GetResourceRequest {
            compute_instance_id: "instance-z".into(),
            include_tenant_info: false,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("instance-z"));
}
