//! End-to-end tests of `yandex.cloud.backup.v1.PolicyService`: the built
//! binary, real gRPC clients, a catalog on a temporary folder.

mod common;

use backstop_catalog::{Catalog, InitStatus, Resource, ResourceStatus, ResourceType};
use backstop_proto::{
    backup::{
        list_applications_request,
        policy_service_client::PolicyServiceClient,
        policy_settings::{
            self, interval, retention, scheduling, volume_shadow_copy_service_settings,
        },
        ApplyPolicyMetadata, ApplyPolicyRequest, CreatePolicyMetadata, CreatePolicyRequest,
        DeletePolicyMetadata, DeletePolicyRequest, ExecuteRequest, Format, GetPolicyRequest,
        ListApplicationsRequest, ListPoliciesRequest, Policy, PolicyApplication, PolicySettings,
        RevokeMetadata, RevokeRequest, UpdatePolicyMetadata, UpdatePolicyRequest,
    },
    operation::{
        operation, operation_service_client::OperationServiceClient, GetOperationRequest, Operation,
    },
};
use common::{open_catalog, with_metadata, ServerOptions, TestServer};
use prost::Message;
use time::OffsetDateTime;
use tonic::{transport::Channel, Code};

type Policies = PolicyServiceClient<Channel>;

fn interval(kind: interval::Type, count: i64) -> policy_settings::Interval {
    policy_settings::Interval {
        r#type: kind as i32,
        count,
    }
}

fn retries(max_attempts: i64) -> policy_settings::RetriesConfiguration {
    policy_settings::RetriesConfiguration {
        enabled: true,
        interval: Some(interval(interval::Type::Minutes, 5)),
        max_attempts,
    }
}

/// Settings of an everyday policy: an incremental backup every night at
/// 03:00, kept for 14 days.
fn daily_settings() -> PolicySettings {
    let nightly = scheduling::BackupSet {
        r#type: scheduling::backup_set::Type::Auto as i32,
        setting: Some(scheduling::backup_set::Setting::Time(
            scheduling::backup_set::Time {
                repeat_at: vec![policy_settings::TimeOfDay { hour: 3, minute: 0 }],
                r#type: policy_settings::RepeatePeriod::Daily as i32,
                ..Default::default()
            },
        )),
    };
    PolicySettings {
        compression: policy_settings::Compression::Normal as i32,
        format: Format::Auto as i32,
        multi_volume_snapshotting_enabled: true,
        reattempts: Some(retries(10)),
        silent_mode_enabled: true,
        splitting: Some(policy_settings::Splitting { size: 1 << 40 }),
        vm_snapshot_reattempts: Some(retries(5)),
        vss: Some(policy_settings::VolumeShadowCopyServiceSettings {
            enabled: true,
            provider: volume_shadow_copy_service_settings::VssProvider::Native as i32,
        }),
        archive: Some(policy_settings::ArchiveProperties {
            name: "[Machine Name]-[Plan ID]-[Unique ID]A".into(),
        }),
        performance_window: Some(policy_settings::PerformanceWindow { enabled: false }),
        retention: Some(policy_settings::Retention {
            rules: vec![retention::RetentionRule {
                backup_set: vec![policy_settings::RepeatePeriod::Daily as i32],
                condition: Some(retention::retention_rule::Condition::MaxAge(interval(
                    interval::Type::Days,
                    14,
                ))),
            }],
            before_backup: false,
        }),
        scheduling: Some(policy_settings::Scheduling {
            backup_sets: vec![nightly],
            enabled: true,
            max_parallel_backups: 2,
            rand_max_delay: Some(interval(interval::Type::Minutes, 30)),
            scheme: scheduling::Scheme::AlwaysIncremental as i32,
            weekly_backup_day: policy_settings::Day::Monday as i32,
            task_failure: None,
        }),
        cbt: policy_settings::ChangedBlockTracking::UseIfEnabled as i32,
        fast_backup_enabled: true,
        ..Default::default()
    }
}

fn create_request(folder_id: &str, name: &str) -> CreatePolicyRequest {
    CreatePolicyRequest {
        folder_id: folder_id.into(),
        name: name.into(),
        settings: Some(daily_settings()),
    }
}

fn resource(instance: &str, folder: &str) -> Resource {
    let now = OffsetDateTime::now_utc();
    Resource {
        compute_instance_id: instance.into(),
        resource_id: format!("res-{instance}"),
        folder_id: folder.into(),
        created_at: now,
        updated_at: now,
        online: false,
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
        last_heartbeat_at: None,
    }
}

/// Registers instances as an agent would, straight in the catalog.
async fn seed_instances(server: &TestServer, instances: &[(&str, &str)]) {
    let catalog = open_catalog(&server.data_dir).await;
    for (instance, folder) in instances {
        catalog
            .upsert_resource(&resource(instance, folder))
            .await
            .unwrap();
    }
}

/// Decodes the metadata of an operation, checking its type URL.
fn metadata_of<M: Message + Default>(operation: &Operation, type_name: &str) -> M {
    let any = operation.metadata.as_ref().expect("operation metadata");
    assert_eq!(any.type_url, format!("type.googleapis.com/{type_name}"));
    M::decode(any.value.as_slice()).unwrap()
}

/// Decodes the response of a finished operation, checking its type URL.
fn response_of<M: Message + Default>(operation: &Operation, type_name: &str) -> M {
    assert!(operation.done, "operation {} is not done", operation.id);
    match &operation.result {
        Some(operation::Result::Response(any)) => {
            assert_eq!(any.type_url, format!("type.googleapis.com/{type_name}"));
            M::decode(any.value.as_slice()).unwrap()
        }
        other => panic!("expected a response, got {other:?}"),
    }
}

fn assert_empty_response(operation: &Operation) {
    assert!(operation.done, "operation {} is not done", operation.id);
    match &operation.result {
        Some(operation::Result::Response(any)) => {
            assert_eq!(any.type_url, "type.googleapis.com/google.protobuf.Empty")
        }
        other => panic!("expected an Empty response, got {other:?}"),
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

fn later(a: &prost_types::Timestamp, b: &prost_types::Timestamp) -> bool {
    (a.seconds, a.nanos) > (b.seconds, b.nanos)
}

/// Creates a policy and returns it from the operation's response.
async fn create_policy(policies: &mut Policies, folder_id: &str, name: &str) -> Policy {
    let operation = policies
        .create(create_request(folder_id, name))
        .await
        .unwrap()
        .into_inner();
    response_of(&operation, "yandex.cloud.backup.v1.Policy")
}

async fn list_names(policies: &mut Policies, folder_id: &str, instance: &str) -> Vec<String> {
    policies
        .list(ListPoliciesRequest {
            folder_id: folder_id.into(),
            compute_instance_id: instance.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .policies
        .into_iter()
        .map(|p| p.name)
        .collect()
}

async fn list_applications(
    policies: &mut Policies,
    id: list_applications_request::Id,
) -> Vec<PolicyApplication> {
    policies
        .list_applications(ListApplicationsRequest {
            id: Some(id),
            show_processing: true,
        })
        .await
        .unwrap()
        .into_inner()
        .applications
}

fn pairs(applications: &[PolicyApplication]) -> Vec<(String, String)> {
    applications
        .iter()
        .map(|a| (a.policy_id.clone(), a.compute_instance_id.clone()))
        .collect()
}

fn pair(policy: &Policy, instance: &str) -> (String, String) {
    (policy.id.clone(), instance.to_owned())
}

#[tokio::test]
async fn health_reports_policy_service_serving() {
    let server = TestServer::start();
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "yandex.cloud.backup.v1.PolicyService".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        response.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn policy_create_get_list_update_delete() {
    let server = TestServer::start();
    let channel = server.channel().await;
    let mut policies = PolicyServiceClient::new(channel.clone());
    let mut operations = OperationServiceClient::new(channel);

    let created = policies
        .create(create_request("folder-a", "daily"))
        .await
        .unwrap()
        .into_inner();
    assert_api_id(&created.id);
    assert_eq!(created.created_by, "development");
    let metadata: CreatePolicyMetadata =
        metadata_of(&created, "yandex.cloud.backup.v1.CreatePolicyMetadata");
    assert_api_id(&metadata.policy_id);
    let policy: Policy = response_of(&created, "yandex.cloud.backup.v1.Policy");
    assert_eq!(policy.id, metadata.policy_id);
    assert_eq!(policy.name, "daily");
    assert_eq!(policy.folder_id, "folder-a");
    assert!(policy.enabled);
    assert_eq!(policy.settings, Some(daily_settings()));
    assert_eq!(policy.created_at, policy.updated_at);
    assert!(policy.created_at.is_some());

    let fetched_operation = operations
        .get(GetOperationRequest {
            operation_id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched_operation, created);

    let fetched = policies
        .get(GetPolicyRequest {
            policy_id: policy.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, policy);

    let listed = policies
        .list(ListPoliciesRequest {
            folder_id: "folder-a".into(),
            compute_instance_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.policies, std::slice::from_ref(&policy));
    assert!(list_names(&mut policies, "folder-b", "").await.is_empty());

    // Keep the last 7 backups, compressed harder.
    let mut weekly = daily_settings();
    weekly.compression = policy_settings::Compression::High as i32;
    weekly.retention.as_mut().unwrap().rules[0].condition =
        Some(retention::retention_rule::Condition::MaxCount(7));
    let updated_operation = policies
        .update(UpdatePolicyRequest {
            policy_id: policy.id.clone(),
            settings: Some(weekly.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let metadata: UpdatePolicyMetadata = metadata_of(
        &updated_operation,
        "yandex.cloud.backup.v1.UpdatePolicyMetadata",
    );
    assert_eq!(metadata.policy_id, policy.id);
    let updated: Policy = response_of(&updated_operation, "yandex.cloud.backup.v1.Policy");
    assert_eq!(updated.settings, Some(weekly));
    assert_eq!(updated.name, "daily");
    assert_eq!(updated.created_at, policy.created_at);
    assert!(later(
        updated.updated_at.as_ref().unwrap(),
        policy.updated_at.as_ref().unwrap()
    ));
    let fetched = policies
        .get(GetPolicyRequest {
            policy_id: policy.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, updated);

    let deleted_operation = policies
        .delete(DeletePolicyRequest {
            policy_id: policy.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let metadata: DeletePolicyMetadata = metadata_of(
        &deleted_operation,
        "yandex.cloud.backup.v1.DeletePolicyMetadata",
    );
    assert_eq!(metadata.policy_id, policy.id);
    assert_empty_response(&deleted_operation);

    let missing = policies
        .get(GetPolicyRequest {
            policy_id: policy.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing.message().contains(&policy.id),
        "{}",
        missing.message()
    );
    assert!(list_names(&mut policies, "folder-a", "").await.is_empty());
    let update_deleted = policies
        .update(UpdatePolicyRequest {
            policy_id: policy.id.clone(),
            settings: Some(daily_settings()),
        })
        .await
        .unwrap_err();
    assert_eq!(update_deleted.code(), Code::NotFound);
    let delete_again = policies
        .delete(DeletePolicyRequest {
            policy_id: policy.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(delete_again.code(), Code::NotFound);

    let unknown = policies
        .get(GetPolicyRequest {
            policy_id: "nosuchpolicy00000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        unknown.message().contains("nosuchpolicy00000000"),
        "{}",
        unknown.message()
    );
}

#[tokio::test]
async fn invalid_settings_rejected_and_nothing_created() {
    let server = TestServer::start();
    let mut policies = PolicyServiceClient::new(server.channel().await);

    let mut cases: Vec<(CreatePolicyRequest, &str)> = Vec::new();
    let mut request = create_request("folder-a", "daily");
    request.settings = None;
    cases.push((request, "Request validation error: Settings: required"));

    let mut request = create_request("folder-a", "daily");
    request.name = "n".repeat(51);
    cases.push((
        request,
        "Request validation error: Name: length must be <= 50 characters, got 51",
    ));

    let mut settings = daily_settings();
    settings.compression = policy_settings::Compression::Unspecified as i32;
    cases.push((
        CreatePolicyRequest {
            settings: Some(settings),
            ..create_request("folder-a", "daily")
        },
        "Request validation error: Settings.Compression: required",
    ));

    let mut settings = daily_settings();
    settings.reattempts.as_mut().unwrap().max_attempts = -1;
    cases.push((
        CreatePolicyRequest {
            settings: Some(settings),
            ..create_request("folder-a", "daily")
        },
        "Request validation error: Settings.Reattempts.MaxAttempts: value must be > 0, got -1",
    ));

    let mut settings = daily_settings();
    settings
        .vm_snapshot_reattempts
        .as_mut()
        .unwrap()
        .interval
        .as_mut()
        .unwrap()
        .r#type = interval::Type::Unspecified as i32;
    cases.push((
        CreatePolicyRequest {
            settings: Some(settings),
            ..create_request("folder-a", "daily")
        },
        "Request validation error: Settings.VmSnapshotReattempts.Interval.Type: required",
    ));

    let mut settings = daily_settings();
    settings.retention.as_mut().unwrap().rules[0].condition = None;
    cases.push((
        CreatePolicyRequest {
            settings: Some(settings),
            ..create_request("folder-a", "daily")
        },
        "Request validation error: Settings.Retention.Rules[0].Condition: exactly one of max_age, max_count must be set",
    ));

    let mut settings = daily_settings();
    settings.scheduling = None;
    cases.push((
        CreatePolicyRequest {
            settings: Some(settings),
            ..create_request("folder-a", "daily")
        },
        "Request validation error: Settings.Scheduling: required",
    ));

    let mut settings = daily_settings();
    settings.scheduling.as_mut().unwrap().backup_sets.clear();
    cases.push((
        CreatePolicyRequest {
            settings: Some(settings),
            ..create_request("folder-a", "daily")
        },
        "Request validation error: Settings.Scheduling.BackupSets: number of elements must be > 0, got 0",
    ));

    let mut settings = daily_settings();
    let Some(scheduling::backup_set::Setting::Time(time)) =
        &mut settings.scheduling.as_mut().unwrap().backup_sets[0].setting
    else {
        panic!("daily settings schedule by time");
    };
    let monday = policy_settings::Day::Monday as i32;
    time.weekdays = vec![monday, monday];
    cases.push((
        CreatePolicyRequest {
            settings: Some(settings),
            ..create_request("folder-a", "daily")
        },
        "Request validation error: Settings.Scheduling.BackupSets[0].Time.Weekdays: elements must be unique, 1 repeats",
    ));

    for (request, expected) in cases {
        let error = policies
            .create(with_metadata(
                request,
                None,
                &[("idempotency-key", "k-invalid")],
            ))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{expected}");
        assert_eq!(error.message(), expected);
    }
    assert!(list_names(&mut policies, "folder-a", "").await.is_empty());

    // The same key on a valid request starts a fresh operation, so the
    // rejected calls recorded nothing under it.
    let operation = policies
        .create(with_metadata(
            create_request("folder-a", "daily"),
            None,
            &[("idempotency-key", "k-invalid")],
        ))
        .await
        .unwrap()
        .into_inner();
    let policy: Policy = response_of(&operation, "yandex.cloud.backup.v1.Policy");
    assert_eq!(policy.name, "daily");
    assert_eq!(list_names(&mut policies, "folder-a", "").await, ["daily"]);

    let invalid_update = policies
        .update(UpdatePolicyRequest {
            policy_id: policy.id.clone(),
            settings: Some(PolicySettings::default()),
        })
        .await
        .unwrap_err();
    assert_eq!(invalid_update.code(), Code::InvalidArgument);
    assert_eq!(
        invalid_update.message(),
        "Request validation error: Settings.Compression: required"
    );
    let unchanged = policies
        .get(GetPolicyRequest {
            policy_id: policy.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged, policy);
}

#[tokio::test]
async fn duplicate_name_returns_already_exists() {
    let server = TestServer::start();
    let mut policies = PolicyServiceClient::new(server.channel().await);

    let first = create_policy(&mut policies, "folder-a", "daily").await;
    let duplicate = policies
        .create(create_request("folder-a", "daily"))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    assert!(
        duplicate.message().contains("\"daily\""),
        "{}",
        duplicate.message()
    );
    assert!(
        duplicate.message().contains("folder-a"),
        "{}",
        duplicate.message()
    );
    assert_eq!(list_names(&mut policies, "folder-a", "").await, ["daily"]);

    let other_folder = create_policy(&mut policies, "folder-b", "daily").await;
    assert_ne!(other_folder.id, first.id);

    // Deleting the policy frees its name.
    policies
        .delete(DeletePolicyRequest {
            policy_id: first.id.clone(),
        })
        .await
        .unwrap();
    let reused = create_policy(&mut policies, "folder-a", "daily").await;
    assert_ne!(reused.id, first.id);
    assert_eq!(list_names(&mut policies, "folder-a", "").await, ["daily"]);
}

#[tokio::test]
async fn create_idempotency_key_returns_same_operation() {
    let server = TestServer::start();
    let mut policies = PolicyServiceClient::new(server.channel().await);
    let call = |name: &str, key: &'static str| {
        with_metadata(
            create_request("folder-a", name),
            None,
            &[("idempotency-key", key)],
        )
    };

    let first = policies
        .create(call("daily", "create-1"))
        .await
        .unwrap()
        .into_inner();
    let again = policies
        .create(call("daily", "create-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    // The key decides, even when the request differs.
    let other_name = policies
        .create(call("weekly", "create-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other_name, first);
    assert_eq!(list_names(&mut policies, "folder-a", "").await, ["daily"]);

    // A conflict ends the operation with the error, and a retry with the
    // same key returns that failed operation.
    let conflict = policies
        .create(call("daily", "create-2"))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);
    let retried = policies
        .create(call("daily", "create-2"))
        .await
        .unwrap()
        .into_inner();
    assert!(retried.done);
    assert_ne!(retried.id, first.id);
    match &retried.result {
        Some(operation::Result::Error(status)) => {
            assert_eq!(status.code, Code::AlreadyExists as i32);
            assert_eq!(status.message, conflict.message());
        }
        other => panic!("expected an error result, got {other:?}"),
    }
    assert_eq!(list_names(&mut policies, "folder-a", "").await, ["daily"]);
}

#[tokio::test]
async fn apply_list_applications_revoke() {
    let server = TestServer::start();
    seed_instances(
        &server,
        &[("instance-a", "folder-a"), ("instance-b", "folder-a")],
    )
    .await;
    let mut policies = PolicyServiceClient::new(server.channel().await);
    let daily = create_policy(&mut policies, "folder-a", "daily").await;
    let weekly = create_policy(&mut policies, "folder-a", "weekly").await;
    let apply = |policy: &Policy, instance: &str| ApplyPolicyRequest {
        policy_id: policy.id.clone(),
        compute_instance_id: instance.into(),
    };

    let applied = policies
        .apply(apply(&daily, "instance-a"))
        .await
        .unwrap()
        .into_inner();
    let metadata: ApplyPolicyMetadata =
        metadata_of(&applied, "yandex.cloud.backup.v1.ApplyPolicyMetadata");
    assert_eq!(metadata.policy_id, daily.id);
    assert_eq!(metadata.compute_instance_id, "instance-a");
    assert_empty_response(&applied);
    let first = list_applications(
        &mut policies,
        list_applications_request::Id::PolicyId(daily.id.clone()),
    )
    .await;

    // Applying again succeeds and adds nothing.
    let again = policies
        .apply(apply(&daily, "instance-a"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.id, applied.id);
    assert_empty_response(&again);
    let after_again = list_applications(
        &mut policies,
        list_applications_request::Id::PolicyId(daily.id.clone()),
    )
    .await;
    assert_eq!(after_again, first);
    assert_eq!(first.len(), 1);
    let application = &first[0];
    assert!(application.enabled);
    assert_eq!(
        application.status,
        backstop_proto::backup::policy_application::Status::Ok as i32
    );
    assert!(application.created_at.is_some());
    assert!(!application.is_processing);

    policies.apply(apply(&weekly, "instance-a")).await.unwrap();
    policies.apply(apply(&daily, "instance-b")).await.unwrap();

    let by_policy = list_applications(
        &mut policies,
        list_applications_request::Id::PolicyId(daily.id.clone()),
    )
    .await;
    assert_eq!(
        pairs(&by_policy),
        [pair(&daily, "instance-a"), pair(&daily, "instance-b")]
    );
    let by_instance = list_applications(
        &mut policies,
        list_applications_request::Id::ComputeInstanceId("instance-a".into()),
    )
    .await;
    assert_eq!(
        pairs(&by_instance),
        [pair(&daily, "instance-a"), pair(&weekly, "instance-a")]
    );
    let by_folder = list_applications(
        &mut policies,
        list_applications_request::Id::FolderId("folder-a".into()),
    )
    .await;
    assert_eq!(by_folder.len(), 3, "{by_folder:?}");
    assert_eq!(list_names(&mut policies, "", "instance-b").await, ["daily"]);
    assert_eq!(
        list_names(&mut policies, "folder-a", "instance-a").await,
        ["daily", "weekly"]
    );
    assert!(list_names(&mut policies, "folder-b", "instance-a")
        .await
        .is_empty());

    let revoked = policies
        .revoke(RevokeRequest {
            policy_id: weekly.id.clone(),
            compute_instance_id: "instance-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let metadata: RevokeMetadata = metadata_of(&revoked, "yandex.cloud.backup.v1.RevokeMetadata");
    assert_eq!(metadata.policy_id, weekly.id);
    assert_eq!(metadata.compute_instance_id, "instance-a");
    assert_empty_response(&revoked);
    let by_instance = list_applications(
        &mut policies,
        list_applications_request::Id::ComputeInstanceId("instance-a".into()),
    )
    .await;
    assert_eq!(pairs(&by_instance), [pair(&daily, "instance-a")]);

    let revoke_again = policies
        .revoke(RevokeRequest {
            policy_id: weekly.id.clone(),
            compute_instance_id: "instance-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(revoke_again.code(), Code::NotFound);
    assert_eq!(
        revoke_again.message(),
        format!("policy {} is not applied to instance instance-a", weekly.id)
    );

    // Deleting a policy removes its applications.
    policies
        .delete(DeletePolicyRequest {
            policy_id: daily.id.clone(),
        })
        .await
        .unwrap();
    let by_folder = list_applications(
        &mut policies,
        list_applications_request::Id::FolderId("folder-a".into()),
    )
    .await;
    assert!(by_folder.is_empty(), "{by_folder:?}");
    let by_deleted_policy = policies
        .list_applications(ListApplicationsRequest {
            id: Some(list_applications_request::Id::PolicyId(daily.id.clone())),
            show_processing: false,
        })
        .await
        .unwrap_err();
    assert_eq!(by_deleted_policy.code(), Code::NotFound);

    let no_selector = policies
        .list_applications(ListApplicationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(no_selector.code(), Code::InvalidArgument);
    assert!(
        no_selector
            .message()
            .starts_with("Request validation error: Id: exactly one of"),
        "{}",
        no_selector.message()
    );
}

#[tokio::test]
async fn apply_to_unknown_instance_not_found() {
    let server = TestServer::start();
    seed_instances(&server, &[("instance-a", "folder-a")]).await;
    let mut policies = PolicyServiceClient::new(server.channel().await);
    let daily = create_policy(&mut policies, "folder-a", "daily").await;

    let unknown_instance = policies
        .apply(ApplyPolicyRequest {
            policy_id: daily.id.clone(),
            compute_instance_id: "instance-z".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_instance.code(), Code::NotFound);
    assert!(
        unknown_instance.message().contains("instance-z"),
        "{}",
        unknown_instance.message()
    );

    let unknown_policy = policies
        .apply(ApplyPolicyRequest {
            policy_id: "nosuchpolicy00000000".into(),
            compute_instance_id: "instance-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_policy.code(), Code::NotFound);
    assert!(
        unknown_policy.message().contains("nosuchpolicy00000000"),
        "{}",
        unknown_policy.message()
    );

    let applications = list_applications(
        &mut policies,
        list_applications_request::Id::FolderId("folder-a".into()),
    )
    .await;
    assert!(applications.is_empty(), "{applications:?}");

    // Revoke accepts an instance that is not registered, so that a removed
    // instance can still be detached, and reports the missing application.
    let revoke_unknown = policies
        .revoke(RevokeRequest {
            policy_id: daily.id.clone(),
            compute_instance_id: "instance-z".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(revoke_unknown.code(), Code::NotFound);
    assert_eq!(
        revoke_unknown.message(),
        format!("policy {} is not applied to instance instance-z", daily.id)
    );

    let unknown_list = policies
        .list(ListPoliciesRequest {
            folder_id: String::new(),
            compute_instance_id: "instance-z".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_list.code(), Code::NotFound);
}

#[tokio::test]
async fn list_without_folder_or_instance_is_invalid() {
    let server = TestServer::start();
    let mut policies = PolicyServiceClient::new(server.channel().await);
    let error = policies
        .list(ListPoliciesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        error.message(),
        "Request validation error: FolderId: required unless compute_instance_id is set"
    );
}

const TOKEN_CONFIG: &str = r#"
[auth]
mode = "tokens"

[[auth.tokens]]
token = "token-for-alice"
subject = "aje1alice0000000000a"
folders = ["folder-a"]

[[auth.tokens]]
token = "token-for-admin"
subject = "aje1admin0000000000a"
folders = ["*"]
"#;

/// Sends a request as the token allowed only on folder-a.
fn alice<T>(message: T) -> tonic::Request<T> {
    with_metadata(message, Some("token-for-alice"), &[])
}

/// Sends a request as the token allowed on every folder.
fn admin<T>(message: T) -> tonic::Request<T> {
    with_metadata(message, Some("token-for-admin"), &[])
}

#[tokio::test]
async fn tokens_mode_denies_other_folders() {
    let server = TestServer::start_with(ServerOptions {
        config: Some(TOKEN_CONFIG.into()),
        ..Default::default()
    });
    seed_instances(
        &server,
        &[("instance-a", "folder-a"), ("instance-b", "folder-b")],
    )
    .await;
    let mut policies = PolicyServiceClient::new(server.channel().await);

    let operation = policies
        .create(alice(create_request("folder-a", "daily")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(operation.created_by, "aje1alice0000000000a");
    let own: Policy = response_of(&operation, "yandex.cloud.backup.v1.Policy");
    let operation = policies
        .create(admin(create_request("folder-b", "daily")))
        .await
        .unwrap()
        .into_inner();
    let foreign: Policy = response_of(&operation, "yandex.cloud.backup.v1.Policy");

    let denied = policies
        .create(alice(create_request("folder-b", "weekly")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("folder-b"),
        "{}",
        denied.message()
    );

    let foreign_id = || foreign.id.clone();
    let denials = [
        (
            "get",
            policies
                .get(alice(GetPolicyRequest {
                    policy_id: foreign_id(),
                }))
                .await
                .map(|_| ()),
        ),
        (
            "list",
            policies
                .list(alice(ListPoliciesRequest {
                    folder_id: "folder-b".into(),
                    compute_instance_id: String::new(),
                }))
                .await
                .map(|_| ()),
        ),
        (
            "list by instance",
            policies
                .list(alice(ListPoliciesRequest {
                    folder_id: String::new(),
                    compute_instance_id: "instance-b".into(),
                }))
                .await
                .map(|_| ()),
        ),
        (
            "update",
            policies
                .update(alice(UpdatePolicyRequest {
                    policy_id: foreign_id(),
                    settings: Some(daily_settings()),
                }))
                .await
                .map(|_| ()),
        ),
        (
            "delete",
            policies
                .delete(alice(DeletePolicyRequest {
                    policy_id: foreign_id(),
                }))
                .await
                .map(|_| ()),
        ),
        (
            "apply a foreign policy",
            policies
                .apply(alice(ApplyPolicyRequest {
                    policy_id: foreign_id(),
                    compute_instance_id: "instance-a".into(),
                }))
                .await
                .map(|_| ()),
        ),
        (
            "apply to a foreign instance",
            policies
                .apply(alice(ApplyPolicyRequest {
                    policy_id: own.id.clone(),
                    compute_instance_id: "instance-b".into(),
                }))
                .await
                .map(|_| ()),
        ),
        (
            "revoke from a foreign instance",
            policies
                .revoke(alice(RevokeRequest {
                    policy_id: own.id.clone(),
                    compute_instance_id: "instance-b".into(),
                }))
                .await
                .map(|_| ()),
        ),
        (
            "list applications by folder",
            policies
                .list_applications(alice(ListApplicationsRequest {
                    id: Some(list_applications_request::Id::FolderId("folder-b".into())),
                    show_processing: false,
                }))
                .await
                .map(|_| ()),
        ),
        (
            "list applications by policy",
            policies
                .list_applications(alice(ListApplicationsRequest {
                    id: Some(list_applications_request::Id::PolicyId(foreign_id())),
                    show_processing: false,
                }))
                .await
                .map(|_| ()),
        ),
        (
            "list applications by instance",
            policies
                .list_applications(alice(ListApplicationsRequest {
                    id: Some(list_applications_request::Id::ComputeInstanceId(
                        "instance-b".into(),
                    )),
                    show_processing: false,
                }))
                .await
                .map(|_| ()),
        ),
        (
            "execute on a foreign instance",
            policies
                .execute(alice(ExecuteRequest {
                    policy_id: own.id.clone(),
                    compute_instance_id: "instance-b".into(),
                }))
                .await
                .map(|_| ()),
        ),
    ];
    for (call, result) in denials {
        let error = result.expect_err(call);
        assert_eq!(error.code(), Code::PermissionDenied, "{call}: {error:?}");
    }

    // A caller allowed on every folder may apply a policy to an instance of
    // another folder. Listings for alice then contain only the application
    // of the policy in her folder.
    policies
        .apply(alice(ApplyPolicyRequest {
            policy_id: own.id.clone(),
            compute_instance_id: "instance-a".into(),
        }))
        .await
        .unwrap();
    policies
        .apply(admin(ApplyPolicyRequest {
            policy_id: foreign.id.clone(),
            compute_instance_id: "instance-a".into(),
        }))
        .await
        .unwrap();
    let seen = policies
        .list_applications(alice(ListApplicationsRequest {
            id: Some(list_applications_request::Id::ComputeInstanceId(
                "instance-a".into(),
            )),
            show_processing: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .applications;
    assert_eq!(pairs(&seen), [pair(&own, "instance-a")]);
    let seen_by_admin = policies
        .list_applications(admin(ListApplicationsRequest {
            id: Some(list_applications_request::Id::ComputeInstanceId(
                "instance-a".into(),
            )),
            show_processing: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .applications;
    assert_eq!(seen_by_admin.len(), 2, "{seen_by_admin:?}");
    let listed = policies
        .list(alice(ListPoliciesRequest {
            folder_id: String::new(),
            compute_instance_id: "instance-a".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .policies;
    let listed_ids: Vec<&str> = listed.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(listed_ids, [own.id.as_str()]);

    let still_there = policies
        .get(admin(GetPolicyRequest {
            policy_id: foreign.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still_there, foreign);
}

#[tokio::test]
async fn execute_checks_preconditions() {
    let server = TestServer::start();
    seed_instances(&server, &[("instance-a", "folder-a")]).await;
    let mut policies = PolicyServiceClient::new(server.channel().await);
    let daily = create_policy(&mut policies, "folder-a", "daily").await;
    let execute = |policy_id: &str, instance: &str| ExecuteRequest {
        policy_id: policy_id.into(),
        compute_instance_id: instance.into(),
    };

    let invalid = policies.execute(execute(&daily.id, "")).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(
        invalid.message(),
        "Request validation error: ComputeInstanceId: required"
    );

    let unknown_policy = policies
        .execute(execute("nosuchpolicy00000000", "instance-a"))
        .await
        .unwrap_err();
    assert_eq!(unknown_policy.code(), Code::NotFound);
    assert!(
        unknown_policy.message().contains("nosuchpolicy00000000"),
        "{}",
        unknown_policy.message()
    );

    let unknown_instance = policies
        .execute(execute(&daily.id, "instance-z"))
        .await
        .unwrap_err();
    assert_eq!(unknown_instance.code(), Code::NotFound);
    assert!(
        unknown_instance.message().contains("instance-z"),
        "{}",
        unknown_instance.message()
    );

    let not_applied = policies
        .execute(execute(&daily.id, "instance-a"))
        .await
        .unwrap_err();
    assert_eq!(not_applied.code(), Code::FailedPrecondition);
    assert_eq!(
        not_applied.message(),
        format!(
            "policy {} is not applied to instance instance-a; call Apply first",
            daily.id
        )
    );

    policies
        .apply(ApplyPolicyRequest {
            policy_id: daily.id.clone(),
            compute_instance_id: "instance-a".into(),
        })
        .await
        .unwrap();
    // The seeded instance has no agent sending heartbeats.
    let offline = policies
        .execute(execute(&daily.id, "instance-a"))
        .await
        .unwrap_err();
    assert_eq!(offline.code(), Code::FailedPrecondition);
    assert!(
        offline.message().contains("offline"),
        "{}",
        offline.message()
    );

    policies
        .delete(DeletePolicyRequest {
            policy_id: daily.id.clone(),
        })
        .await
        .unwrap();
    let deleted = policies
        .execute(execute(&daily.id, "instance-a"))
        .await
        .unwrap_err();
    assert_eq!(deleted.code(), Code::NotFound);
}

#[tokio::test]
async fn policies_survive_restart() {
    let server = TestServer::start();
    seed_instances(&server, &[("instance-a", "folder-a")]).await;
    let mut policies = PolicyServiceClient::new(server.channel().await);
    let daily = create_policy(&mut policies, "folder-a", "daily").await;
    policies
        .apply(ApplyPolicyRequest {
            policy_id: daily.id.clone(),
            compute_instance_id: "instance-a".into(),
        })
        .await
        .unwrap();
    let applications = list_applications(
        &mut policies,
        list_applications_request::Id::PolicyId(daily.id.clone()),
    )
    .await;
    drop(policies);

    let (data_dir, temp) = server.stop_keep_data();
    let restarted = TestServer::start_with(ServerOptions {
        data_dir: Some(data_dir),
        ..Default::default()
    });
    let mut policies = PolicyServiceClient::new(restarted.channel().await);
    let fetched = policies
        .get(GetPolicyRequest {
            policy_id: daily.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, daily);
    let after_restart = list_applications(
        &mut policies,
        list_applications_request::Id::PolicyId(daily.id.clone()),
    )
    .await;
    assert_eq!(after_restart, applications);
    drop(restarted);
    drop(temp);
}
