//! End-to-end tests of the REST mapping: the built binary serves REST and
//! gRPC on one listener, and both must agree on every result and error.

mod common;

use std::time::Duration;

use backstop_catalog::{AnyMessage, Catalog, NewOperation};
use backstop_proto::{
    backup::{
        backup_service_client::BackupServiceClient, list_backups_request,
        policy_service_client::PolicyServiceClient, provider_service_client::ProviderServiceClient,
        ActivateProviderRequest, CreatePolicyRequest, ExecuteRequest, GetPolicyRequest,
        ListActivatedProvidersRequest, ListBackupsRequest, ListPoliciesRequest,
        StartRecoveryMetadata,
    },
    operation::{operation_service_client::OperationServiceClient, GetOperationRequest},
};
use common::{
    flows::*,
    open_catalog,
    rest::{grpc_json, tls_get, RestClient},
    with_metadata, ServerOptions, TestServer,
};
use http::{Method, StatusCode};
use prost::Message;
use serde_json::json;
use tonic::Code;

const ACTIVATE_PATH: &str = "/backup/v1/providers/cloudbackup:activate";

fn activate(folder: &str) -> ActivateProviderRequest {
    ActivateProviderRequest {
        folder_id: folder.into(),
        name: "cloudbackup".into(),
        ..Default::default()
    }
}

/// Asserts that a REST error body is the Status of `code` with `message`.
fn assert_status(body: &serde_json::Value, code: Code, message: &str) {
    assert_eq!(body["code"], code as i32, "{body}");
    assert_eq!(body["message"], message, "{body}");
}

#[tokio::test]
async fn provider_activated_over_rest_reads_over_grpc() {
    let server = TestServer::start();
    let rest = RestClient::new(&server.address);
    let channel = server.channel().await;

    let response = rest
        .post(ACTIVATE_PATH, json!({ "folderId": "folder-a" }))
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.json);
    let operation = &response.json;
    assert_eq!(operation["done"], true);
    assert_eq!(operation["createdBy"], "development");
    assert_eq!(
        operation["metadata"]["@type"],
        "type.googleapis.com/yandex.cloud.backup.v1.ActivateProviderMetadata"
    );
    assert_eq!(operation["metadata"]["folderId"], "folder-a");
    assert_eq!(
        operation["response"]["@type"],
        "type.googleapis.com/google.protobuf.Empty"
    );
    let created_at = operation["createdAt"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(created_at, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "createdAt {created_at:?} is not RFC 3339"
    );
    for header in ["x-request-id", "x-server-request-id", "x-server-trace-id"] {
        assert!(response.headers.contains_key(header), "{header} missing");
    }

    let mut providers = ProviderServiceClient::new(channel.clone());
    let listed = providers
        .list_activated(ListActivatedProvidersRequest {
            folder_id: "folder-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.names, vec!["cloudbackup".to_owned()]);
    let rest_listed = rest.get("/backup/v1/providers?folderId=folder-a").await;
    assert_eq!(rest_listed.status, StatusCode::OK);
    assert_eq!(
        rest_listed.json,
        grpc_json(
            "yandex.cloud.backup.v1.ListActivatedProvidersResponse",
            &listed
        )
    );

    // The operation reads the same through both APIs.
    let id = operation["id"].as_str().unwrap();
    let mut operations = OperationServiceClient::new(channel);
    let fetched = operations
        .get(GetOperationRequest {
            operation_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let rest_fetched = rest.get(&format!("/operations/{id}")).await;
    assert_eq!(rest_fetched.status, StatusCode::OK);
    assert_eq!(
        rest_fetched.json,
        grpc_json("yandex.cloud.operation.Operation", &fetched)
    );
    assert_eq!(&rest_fetched.json, operation);
}

#[tokio::test]
async fn policy_lists_equal_across_apis() {
    let server = TestServer::start();
    let rest = RestClient::new(&server.address);
    let mut policies = PolicyServiceClient::new(server.channel().await);

    // One policy created over gRPC, one over REST with the same settings.
    policies
        .create(CreatePolicyRequest {
            folder_id: FOLDER.into(),
            name: "from-grpc".into(),
            settings: Some(nightly_settings()),
        })
        .await
        .unwrap();
    let settings = grpc_json("yandex.cloud.backup.v1.PolicySettings", &nightly_settings());
    let created = rest
        .post(
            "/backup/v1/policies",
            json!({ "folderId": FOLDER, "name": "from-rest", "settings": settings }),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.json);
    let policy_id = created.json["metadata"]["policyId"].as_str().unwrap();

    let fetched = policies
        .get(GetPolicyRequest {
            policy_id: policy_id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.name, "from-rest");
    assert_eq!(fetched.settings, Some(nightly_settings()));

    let listed = policies
        .list(ListPoliciesRequest {
            folder_id: FOLDER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.policies.len(), 2);
    // Both spellings of the query parameter name reach the same field.
    for query in ["folderId", "folder_id"] {
        let rest_listed = rest
            .get(&format!("/backup/v1/policies?{query}={FOLDER}"))
            .await;
        assert_eq!(rest_listed.status, StatusCode::OK);
        assert_eq!(
            rest_listed.json,
            grpc_json("yandex.cloud.backup.v1.ListPoliciesResponse", &listed)
        );
    }
    let rest_fetched = rest.get(&format!("/backup/v1/policies/{policy_id}")).await;
    assert_eq!(
        rest_fetched.json,
        grpc_json("yandex.cloud.backup.v1.Policy", &fetched)
    );
}

#[tokio::test]
async fn validation_and_not_found_match_grpc() {
    let server = TestServer::start();
    let rest = RestClient::new(&server.address);
    let channel = server.channel().await;

    // A validation error from the service: same message and BadRequest
    // detail, HTTP 400.
    let mut policies = PolicyServiceClient::new(channel.clone());
    let grpc_error = policies
        .create(CreatePolicyRequest {
            folder_id: FOLDER.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(grpc_error.code(), Code::InvalidArgument);
    let response = rest
        .post("/backup/v1/policies", json!({ "folderId": FOLDER }))
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert_status(&response.json, Code::InvalidArgument, grpc_error.message());
    let details = response.json["details"].as_array().unwrap();
    assert_eq!(
        details[0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
    assert_eq!(details[0]["fieldViolations"][0]["field"], "name");
    let request_id = response.headers["x-request-id"].to_str().unwrap();
    assert!(
        details.iter().any(
            |d| d["@type"] == "type.googleapis.com/google.rpc.RequestInfo"
                && d["requestId"] == request_id
        ),
        "no RequestInfo with {request_id}: {}",
        response.json
    );

    // NOT_FOUND: HTTP 404 with the gRPC message.
    let mut operations = OperationServiceClient::new(channel);
    let grpc_missing = operations
        .get(GetOperationRequest {
            operation_id: "nosuchoperation00000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(grpc_missing.code(), Code::NotFound);
    let missing = rest.get("/operations/nosuchoperation00000").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_status(&missing.json, Code::NotFound, grpc_missing.message());
}

#[tokio::test]
async fn malformed_requests_get_400_naming_input() {
    let server = TestServer::start();
    let rest = RestClient::new(&server.address);

    let malformed = rest
        .send(
            Method::POST,
            ACTIVATE_PATH,
            Some("{\"folderId\": ".into()),
            &[],
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.json["code"], Code::InvalidArgument as i32);
    let message = malformed.json["message"].as_str().unwrap();
    assert!(message.starts_with("invalid request body"), "{message}");

    let unknown_field = rest
        .post(ACTIVATE_PATH, json!({ "folderId": "f", "colour": "red" }))
        .await;
    assert_eq!(unknown_field.status, StatusCode::BAD_REQUEST);
    let message = unknown_field.json["message"].as_str().unwrap();
    assert!(message.contains("colour"), "{message}");

    let wrong_type = rest
        .post(
            ACTIVATE_PATH,
            json!({ "folderId": "f", "skipDefaultPolicy": "maybe" }),
        )
        .await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);

    let bad_query = rest.get("/backup/v1/backups?folderId=f&pageSize=ten").await;
    assert_eq!(bad_query.status, StatusCode::BAD_REQUEST);
    assert_status(
        &bad_query.json,
        Code::InvalidArgument,
        "invalid query parameter \"pageSize\": \"ten\" is not a 64-bit integer",
    );
    assert_eq!(
        bad_query.json["details"][0]["fieldViolations"][0]["field"],
        "pageSize"
    );

    let unknown_query = rest.get("/backup/v1/backups?folderId=f&colour=red").await;
    assert_eq!(unknown_query.status, StatusCode::BAD_REQUEST);
    let message = unknown_query.json["message"].as_str().unwrap();
    assert!(message.contains("\"colour\""), "{message}");

    let unknown_path = rest.get("/backup/v2/everything").await;
    assert_eq!(unknown_path.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown_path.json["code"], Code::NotFound as i32);
    // Requests rejected before any gRPC call still get request ids, in the
    // headers and as a RequestInfo detail, and the log line names them.
    let request_id = unknown_path.headers["x-request-id"].to_str().unwrap();
    assert!(unknown_path.headers.contains_key("x-server-trace-id"));
    assert_eq!(unknown_path.json["details"][0]["requestId"], request_id);
    let logged = server.wait_for_log(|line| {
        line["message"] == "REST request rejected" && line.to_string().contains(request_id)
    });
    assert!(logged.is_some(), "no log line for request {request_id}");

    let wrong_method = rest
        .send(Method::PUT, "/backup/v1/policies/p1", None, &[])
        .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers["allow"], "GET, PATCH, DELETE");
    let message = wrong_method.json["message"].as_str().unwrap();
    assert!(message.contains("PUT"), "{message}");
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
async fn tokens_mode_errors_match_grpc() {
    let server = TestServer::start_with(ServerOptions {
        config: Some(TOKEN_CONFIG.into()),
        ..Default::default()
    });
    let mut providers = ProviderServiceClient::new(server.channel().await);

    let grpc_missing = providers.activate(activate("folder-a")).await.unwrap_err();
    assert_eq!(grpc_missing.code(), Code::Unauthenticated);
    let missing = RestClient::new(&server.address)
        .post(ACTIVATE_PATH, json!({ "folderId": "folder-a" }))
        .await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_status(&missing.json, Code::Unauthenticated, grpc_missing.message());
    assert!(missing.headers.contains_key("x-request-id"));

    let grpc_denied = providers
        .activate(with_metadata(
            activate("folder-b"),
            Some("token-for-alice"),
            &[],
        ))
        .await
        .unwrap_err();
    assert_eq!(grpc_denied.code(), Code::PermissionDenied);
    let alice = RestClient::new(&server.address).with_token("token-for-alice");
    let denied = alice
        .post(ACTIVATE_PATH, json!({ "folderId": "folder-b" }))
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_status(&denied.json, Code::PermissionDenied, grpc_denied.message());

    let allowed = alice
        .post(ACTIVATE_PATH, json!({ "folderId": "folder-a" }))
        .await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.json);
    assert_eq!(allowed.json["createdBy"], "aje1alice0000000000a");
}

#[tokio::test]
async fn idempotency_key_honoured_over_rest() {
    let server = TestServer::start();
    let rest = RestClient::new(&server.address);
    let body = || Some(json!({ "folderId": "folder-a" }).to_string());
    let keyed = |key: &'static str| [("idempotency-key", key)];

    let first = rest
        .send(Method::POST, ACTIVATE_PATH, body(), &keyed("rest-key-1"))
        .await;
    let again = rest
        .send(Method::POST, ACTIVATE_PATH, body(), &keyed("rest-key-1"))
        .await;
    let other = rest
        .send(Method::POST, ACTIVATE_PATH, body(), &keyed("rest-key-2"))
        .await;
    let unkeyed = rest.send(Method::POST, ACTIVATE_PATH, body(), &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json["id"], again.json["id"]);
    assert_ne!(first.json["id"], other.json["id"]);
    assert_ne!(first.json["id"], unkeyed.json["id"]);

    // The key reaches the same store as a gRPC call's metadata.
    let mut providers = ProviderServiceClient::new(server.channel().await);
    let grpc = providers
        .activate(with_metadata(
            activate("folder-a"),
            None,
            &[("idempotency-key", "rest-key-1")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.json["id"], grpc.id.as_str());
}

/// Records an unfinished operation in the server's catalog and returns
/// its id.
async fn unfinished_operation(catalog: &impl Catalog) -> String {
    catalog
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
        .operation
        .id
}

#[tokio::test]
async fn cancel_answers_get_and_post() {
    let server = TestServer::start();
    let catalog = open_catalog(&server.data_dir).await;
    let rest = RestClient::new(&server.address);
    let mut operations = OperationServiceClient::new(server.channel().await);

    for method in [Method::GET, Method::POST] {
        let id = unfinished_operation(&catalog).await;
        let before = rest.get(&format!("/operations/{id}")).await;
        assert_eq!(before.json["done"], serde_json::Value::Null, "not done yet");

        let cancelled = rest
            .send(
                method.clone(),
                &format!("/operations/{id}:cancel"),
                None,
                &[],
            )
            .await;
        assert_eq!(
            cancelled.status,
            StatusCode::OK,
            "{method}: {}",
            cancelled.json
        );
        assert_eq!(cancelled.json["id"], id.as_str());
        assert_eq!(cancelled.json["done"], true, "{method}");
        assert_eq!(
            cancelled.json["error"]["code"],
            Code::Cancelled as i32,
            "{method}"
        );

        let fetched = operations
            .get(GetOperationRequest {
                operation_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            cancelled.json,
            grpc_json("yandex.cloud.operation.Operation", &fetched),
            "{method}"
        );
    }
}

#[tokio::test]
async fn openapi_served_matches_checked_in() {
    let server = TestServer::start();
    let served = RestClient::new(&server.address).get("/openapi.json").await;
    assert_eq!(served.status, StatusCode::OK);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let checked_in: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        served.json == checked_in,
        "GET /openapi.json differs from docs/openapi.json; regenerate it with \
         `BACKSTOP_UPDATE_OPENAPI=1 cargo test -p backstop-server openapi`"
    );
    assert_eq!(served.json["openapi"], "3.0.3");

    let head = RestClient::new(&server.address)
        .send(Method::HEAD, "/openapi.json", None, &[])
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.json, serde_json::Value::Null, "HEAD has no body");
    let post = RestClient::new(&server.address)
        .send(Method::POST, "/openapi.json", None, &[])
        .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn http2_rest_carries_client_request_id() {
    let server = TestServer::start();
    let rest = RestClient::http2(&server.address);
    let response = rest
        .send(
            Method::POST,
            ACTIVATE_PATH,
            Some(json!({ "folderId": "folder-a" }).to_string()),
            &[("x-client-request-id", "client-id-5d8e")],
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.json);
    let request_id = response.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let line = server.wait_for_log(|line| line.to_string().contains("client-id-5d8e"));
    let line = line.expect("a log line with the client request id");
    assert!(
        line.to_string().contains(&request_id),
        "log line lacks the request id {request_id}: {line}"
    );
}

#[tokio::test]
async fn tls_listener_serves_rest_both_versions() {
    let server = TestServer::start_with(ServerOptions {
        tls: true,
        ..Default::default()
    });
    let ca = std::fs::read(server.data_dir.with_extension("support").join("cert.pem")).unwrap();
    let path = "/backup/v1/providers?folderId=folder-a";
    for (alpn, version) in [
        (&b"h2"[..], http::Version::HTTP_2),
        (&b"http/1.1"[..], http::Version::HTTP_11),
    ] {
        let (status, used, body) = tls_get(&server.address, &ca, alpn, path).await;
        assert_eq!(status, StatusCode::OK, "{version:?}: {body}");
        assert_eq!(used, version);
        assert_eq!(body, json!({ "folderId": "folder-a" }), "{version:?}");
    }

    // gRPC still works on the same TLS listener.
    let mut providers = ProviderServiceClient::new(server.channel().await);
    providers
        .list_activated(ListActivatedProvidersRequest {
            folder_id: "folder-a".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_started_over_rest_watched_through_both() {
    let dir = tempfile::tempdir().unwrap();
    let (ext4, gpt) = build_disks(dir.path());
    let server = TestServer::start_with(ServerOptions {
        config: Some(server_config(&ext4, &gpt)),
        ..Default::default()
    });
    let channel = server.channel().await;
    let rest = RestClient::new(&server.address);
    wait_online(channel.clone()).await;
    let policy_id = create_and_apply_policy(channel.clone()).await;
    execute_and_wait(channel.clone(), &policy_id).await;

    // The backup list reads the same through both APIs.
    let mut backups = BackupServiceClient::new(channel.clone());
    let listed = backups
        .list(ListBackupsRequest {
            id: Some(list_backups_request::Id::ComputeInstanceId(INSTANCE.into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rest_listed = rest
        .get(&format!("/backup/v1/backups?computeInstanceId={INSTANCE}"))
        .await;
    assert_eq!(rest_listed.status, StatusCode::OK);
    assert_eq!(
        rest_listed.json,
        grpc_json("yandex.cloud.backup.v1.ListBackupsResponse", &listed)
    );
    let backup_id = listed.backups[0].id.clone();

    // FAILED_PRECONDITION maps to HTTP 400 with the gRPC message.
    let mut policies = PolicyServiceClient::new(channel.clone());
    let created = policies
        .create(CreatePolicyRequest {
            folder_id: FOLDER.into(),
            name: "unapplied".into(),
            settings: Some(nightly_settings()),
        })
        .await
        .unwrap()
        .into_inner();
    let unapplied = backstop_proto::backup::CreatePolicyMetadata::decode(
        created.metadata.unwrap().value.as_slice(),
    )
    .unwrap()
    .policy_id;
    let grpc_error = policies
        .execute(ExecuteRequest {
            policy_id: unapplied.clone(),
            compute_instance_id: INSTANCE.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(grpc_error.code(), Code::FailedPrecondition);
    let rest_error = rest
        .post(
            &format!("/backup/v1/policies/{unapplied}:execute"),
            json!({ "computeInstanceId": INSTANCE }),
        )
        .await;
    assert_eq!(rest_error.status, StatusCode::BAD_REQUEST);
    assert_status(
        &rest_error.json,
        Code::FailedPrecondition,
        grpc_error.message(),
    );

    let started = rest
        .post(
            &format!("/backup/v1/backups/{backup_id}:startRecovery"),
            json!({ "computeInstanceId": INSTANCE }),
        )
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.json);
    let id = started.json["id"].as_str().unwrap().to_owned();
    assert_eq!(
        started.json["metadata"]["@type"],
        "type.googleapis.com/yandex.cloud.backup.v1.StartRecoveryMetadata"
    );
    assert_eq!(started.json["metadata"]["srcBackupId"], backup_id.as_str());

    // Watch over REST while gRPC polls the same operation.
    let grpc_watch = tokio::spawn({
        let (channel, id) = (channel.clone(), id.clone());
        async move {
            wait_done_with(
                channel,
                &id,
                "yandex.cloud.backup.v1.StartRecoveryMetadata",
                |bytes| {
                    StartRecoveryMetadata::decode(bytes)
                        .unwrap()
                        .progress_percentage
                },
            )
            .await
        }
    });
    let mut rest_progress = Vec::new();
    let done = loop {
        let polled = rest.get(&format!("/operations/{id}")).await;
        assert_eq!(polled.status, StatusCode::OK);
        rest_progress.push(
            polled.json["metadata"]["progressPercentage"]
                .as_f64()
                .unwrap_or(0.0),
        );
        if polled.json["done"] == true {
            break polled.json;
        }
        assert!(rest_progress.len() < 1200, "recovery did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (grpc_done, grpc_progress) = grpc_watch.await.unwrap();
    assert_eq!(
        done["response"]["@type"], "type.googleapis.com/google.protobuf.Empty",
        "recovery failed: {done}"
    );
    assert!(
        rest_progress.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {rest_progress:?}"
    );
    assert_eq!(*rest_progress.last().unwrap(), 100.0);
    assert_eq!(*grpc_progress.last().unwrap(), 100.0);
    assert_eq!(
        done,
        grpc_json("yandex.cloud.operation.Operation", &grpc_done)
    );
}
