//! End-to-end recoveries through the public API: real ext4 and GPT images
//! backed up by a policy, then written back onto the same instance, onto a
//! larger blank one, and refused for a smaller one.

mod common;

use std::{path::Path, process::Command};

use backstop_proto::{
    backup::{
        backup_service_client::BackupServiceClient, list_backups_request,
        resource_service_client::ResourceServiceClient, GetResourceRequest, ListBackupsRequest,
        ListResourceOperationsRequest, ListTasksRequest, StartRecoveryMetadata,
        StartRecoveryRequest,
    },
    operation::operation,
};
use common::{flows::*, with_metadata, ServerOptions, TestServer};
use prost::Message;
use tonic::{transport::Channel, Code};

const LARGER: &str = "local-vm-larger";
const SMALLER: &str = "local-vm-smaller";

fn blank_image(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// Starts a server with the backed-up instance, an instance with larger
/// blank disks and one whose first disk is too small.
fn start(dir: &Path) -> (TestServer, std::path::PathBuf, std::path::PathBuf) {
    let (ext4, gpt) = build_disks(dir);
    blank_image(&dir.join("larger-a.raw"), 96 << 20);
    blank_image(&dir.join("larger-b.raw"), 48 << 20);
    blank_image(&dir.join("smaller-a.raw"), 16 << 20);
    blank_image(&dir.join("smaller-b.raw"), 48 << 20);
    let mut config = server_config(&ext4, &gpt);
    for (instance, a, b) in [
        (LARGER, "larger-a.raw", "larger-b.raw"),
        (SMALLER, "smaller-a.raw", "smaller-b.raw"),
    ] {
        config.push_str(&format!(
            "\n[[instances]]\ncompute_instance_id = \"{instance}\"\nfolder_id = \"{FOLDER}\"\n\
             disks = [{{ name = \"sda\", path = \"{}\" }}, {{ name = \"sdb\", path = \"{}\" }}]\n",
            dir.join(a).display(),
            dir.join(b).display()
        ));
    }
    let server = TestServer::start_with(ServerOptions {
        config: Some(config),
        ..Default::default()
    });
    (server, ext4, gpt)
}

async fn wait_instance_online(channel: Channel, instance: &str) {
    let mut resources = ResourceServiceClient::new(channel);
    for _ in 0..100 {
        if let Ok(response) = resources
            .get(GetResourceRequest {
                compute_instance_id: instance.into(),
                include_tenant_info: false,
            })
            .await
        {
            if response.into_inner().resource.is_some_and(|r| r.online) {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("instance {instance} did not come online");
}

async fn latest_backup_id(channel: Channel) -> String {
    let mut backups = BackupServiceClient::new(channel);
    backups
        .list(ListBackupsRequest {
            id: Some(list_backups_request::Id::ComputeInstanceId(INSTANCE.into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .backups[0]
        .id
        .clone()
}

fn recover(backup_id: &str, instance: &str) -> StartRecoveryRequest {
    StartRecoveryRequest {
        compute_instance_id: instance.into(),
        backup_id: backup_id.into(),
    }
}

async fn wait_recovery(
    channel: Channel,
    id: &str,
) -> (backstop_proto::operation::Operation, Vec<f64>) {
    wait_done_with(
        channel,
        id,
        "yandex.cloud.backup.v1.StartRecoveryMetadata",
        |bytes| {
            let metadata = StartRecoveryMetadata::decode(bytes).unwrap();
            assert!(!metadata.src_backup_id.is_empty());
            assert!(!metadata.dst_compute_instance_id.is_empty());
            metadata.progress_percentage
        },
    )
    .await
}

fn fsck(image: &Path) {
    let output = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .expect("run e2fsck");
    assert!(
        output.status.success(),
        "e2fsck -fn {} failed:\n{}{}",
        image.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Sums `bytes_written` of the agent's "disk restored" log lines for `disk`.
fn bytes_written(server: &TestServer, disk: &str) -> u64 {
    server
        .wait_for_log(|line| line["message"] == "disk restored" && line["disk"] == disk)
        .expect("the agent logged the restored disk");
    server
        .logs()
        .iter()
        .filter(|line| line["message"] == "disk restored" && line["disk"] == disk)
        .map(|line| line["bytes_written"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_rolls_back_changed_files() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ext4, gpt) = start(dir.path());
    let channel = server.channel().await;
    wait_online(channel.clone()).await;
    let policy_id = create_and_apply_policy(channel.clone()).await;
    execute_and_wait(channel.clone(), &policy_id).await;
    let backup_id = latest_backup_id(channel.clone()).await;
    let original = std::fs::read(&ext4).unwrap();
    let original_gpt = std::fs::read(&gpt).unwrap();

    // Damage the filesystem's contents after the backup.
    let note = dir.path().join("note.txt");
    std::fs::write(&note, "written after the backup\n".repeat(4000)).unwrap();
    run(Command::new("debugfs")
        .args(["-w", "-R"])
        .arg(format!("write {} etc/after-backup.txt", note.display()))
        .arg(&ext4));
    run(Command::new("debugfs")
        .args(["-w", "-R", "rm etc/config-7.conf"])
        .arg(&ext4));
    assert!(std::fs::read(&ext4).unwrap() != original);

    let mut backups = BackupServiceClient::new(channel.clone());
    let key = [("idempotency-key", "recover-once")];
    let started = backups
        .start_recovery(with_metadata(recover(&backup_id, INSTANCE), None, &key))
        .await
        .unwrap()
        .into_inner();
    let repeated = backups
        .start_recovery(with_metadata(recover(&backup_id, INSTANCE), None, &key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        started.id, repeated.id,
        "the same idempotency key returns the same operation"
    );

    let (done, progress) = wait_recovery(channel.clone(), &started.id).await;
    match &done.result {
        Some(operation::Result::Response(any)) => {
            assert_eq!(any.type_url, "type.googleapis.com/google.protobuf.Empty")
        }
        other => panic!("recovery failed: {other:?}"),
    }
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {progress:?}"
    );
    assert_eq!(*progress.last().unwrap(), 100.0);

    assert!(
        std::fs::read(&ext4).unwrap() == original,
        "vda differs from the backup after recovery"
    );
    assert!(
        std::fs::read(&gpt).unwrap() == original_gpt,
        "vdb differs from the backup after recovery"
    );
    fsck(&ext4);
    let written = bytes_written(&server, "vda");
    assert!(
        written > 0 && written * 4 < original.len() as u64,
        "wrote {written} bytes of a 64 MiB disk"
    );

    let mut resources = ResourceServiceClient::new(channel.clone());
    let resource = resources
        .get(GetResourceRequest {
            compute_instance_id: INSTANCE.into(),
            include_tenant_info: false,
        })
        .await
        .unwrap()
        .into_inner()
        .resource
        .unwrap();
    assert_eq!(resource.status, 1, "the resource is IDLE again");

    let tasks = resources
        .list_tasks(ListTasksRequest {
            compute_instance_id: INSTANCE.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 2, "one backup and one recovery task");
    let recovery = &tasks[0];
    assert_eq!(recovery.r#type, 3, "newest task is the RECOVERY");
    assert_eq!(recovery.status, 5, "COMPLETED");
    assert_eq!(recovery.result_code, 1, "OK");
    let progress = recovery.progress.as_ref().unwrap();
    assert_eq!(progress.total, (64 << 20) + (32 << 20));
    assert_eq!(progress.current, progress.total);
    assert_eq!(tasks[1].r#type, 1, "older task is the BACKUP");

    // The instance's operations, newest first: recovery, backup, apply.
    let list = |token: &str| ListResourceOperationsRequest {
        compute_instance_id: INSTANCE.into(),
        page_size: 2,
        page_token: token.into(),
    };
    let first = resources
        .list_operations(list(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.operations.len(), 2);
    assert_eq!(first.operations[0].id, started.id);
    assert!(first.operations[1]
        .metadata
        .as_ref()
        .unwrap()
        .type_url
        .ends_with("ExecuteMetadata"));
    assert!(!first.next_page_token.is_empty());
    let second = resources
        .list_operations(list(&first.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.operations.len(), 1);
    assert!(second.operations[0]
        .metadata
        .as_ref()
        .unwrap()
        .type_url
        .ends_with("ApplyPolicyMetadata"));
    assert!(second.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_to_other_instances_checks_disk_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ext4, gpt) = start(dir.path());
    let channel = server.channel().await;
    wait_online(channel.clone()).await;
    wait_instance_online(channel.clone(), LARGER).await;
    wait_instance_online(channel.clone(), SMALLER).await;
    let policy_id = create_and_apply_policy(channel.clone()).await;
    execute_and_wait(channel.clone(), &policy_id).await;
    let backup_id = latest_backup_id(channel.clone()).await;
    let mut backups = BackupServiceClient::new(channel.clone());

    let too_small = backups
        .start_recovery(recover(&backup_id, SMALLER))
        .await
        .unwrap_err();
    assert_eq!(too_small.code(), Code::FailedPrecondition);
    let message = too_small.message();
    assert!(
        message.contains("`sda`") && message.contains("`vda`"),
        "{message}"
    );
    assert!(
        message.contains(&(16u64 << 20).to_string())
            && message.contains(&(64u64 << 20).to_string()),
        "{message}"
    );

    let started = backups
        .start_recovery(recover(&backup_id, LARGER))
        .await
        .unwrap()
        .into_inner();
    let (done, _) = wait_recovery(channel.clone(), &started.id).await;
    assert!(
        matches!(done.result, Some(operation::Result::Response(_))),
        "{:?}",
        done.result
    );
    let larger = std::fs::read(dir.path().join("larger-a.raw")).unwrap();
    let original = std::fs::read(&ext4).unwrap();
    assert_eq!(larger.len(), 96 << 20, "a larger target keeps its size");
    assert!(
        larger[..original.len()] == original[..],
        "the backup's bytes land at the start of the larger disk"
    );
    let larger_b = std::fs::read(dir.path().join("larger-b.raw")).unwrap();
    let original_b = std::fs::read(&gpt).unwrap();
    assert!(larger_b[..original_b.len()] == original_b[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_rejects_bad_requests_before_any_operation() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, _) = start(dir.path());
    let channel = server.channel().await;
    wait_online(channel.clone()).await;
    let mut backups = BackupServiceClient::new(channel.clone());

    let missing = backups
        .start_recovery(recover("", INSTANCE))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(
        missing.message(),
        "Request validation error: BackupId: required"
    );
    let long = backups
        .start_recovery(recover("b", &"i".repeat(51)))
        .await
        .unwrap_err();
    assert_eq!(long.code(), Code::InvalidArgument);
    assert!(
        long.message()
            .starts_with("Request validation error: ComputeInstanceId:"),
        "{}",
        long.message()
    );
    let no_instance = backups.start_recovery(recover("b", "")).await.unwrap_err();
    assert_eq!(
        no_instance.message(),
        "Request validation error: ComputeInstanceId: required"
    );

    let unknown_backup = backups
        .start_recovery(recover("nosuchbackup", INSTANCE))
        .await
        .unwrap_err();
    assert_eq!(unknown_backup.code(), Code::NotFound);
    assert!(unknown_backup.message().contains("nosuchbackup"));

    let policy_id = create_and_apply_policy(channel.clone()).await;
    execute_and_wait(channel.clone(), &policy_id).await;
    let backup_id = latest_backup_id(channel.clone()).await;
    let unknown_instance = backups
        .start_recovery(recover(&backup_id, "no-such-vm"))
        .await
        .unwrap_err();
    assert_eq!(unknown_instance.code(), Code::NotFound);
    assert!(unknown_instance.message().contains("no-such-vm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_into_foreign_folder_is_permission_denied() {
    let dir = tempfile::tempdir().unwrap();
    let (ext4, gpt) = build_disks(dir.path());
    // The first token is the one the server's own agents use.
    let config = format!(
        "{}\n[auth]\nmode = \"tokens\"\n\n[[auth.tokens]]\ntoken = \"agents-and-admins\"\nsubject = \"admin\"\n\
         folders = [\"*\"]\n\n[[auth.tokens]]\ntoken = \"other-team-token\"\nsubject = \"other\"\n\
         folders = [\"folder-b\"]\n",
        server_config(&ext4, &gpt)
    );
    let server = TestServer::start_with(ServerOptions {
        config: Some(config),
        ..Default::default()
    });
    let channel = server.channel().await;
    let admin =
        |request: StartRecoveryRequest, token: &str| with_metadata(request, Some(token), &[]);

    let mut backups = BackupServiceClient::new(channel.clone());
    let denied = backups
        .start_recovery(admin(recover("any-backup", INSTANCE), "other-team-token"))
        .await
        .unwrap_err();
    // The backup does not exist, and the caller may not see the instance's
    // folder either; existence is checked first.
    assert_eq!(denied.code(), Code::NotFound);

    let unauthenticated = backups
        .start_recovery(recover("any-backup", INSTANCE))
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);

    // Back up with the admin token, then let the other team try to recover.
    let mut resources = ResourceServiceClient::new(channel.clone());
    for _ in 0..100 {
        let response = resources
            .get(with_metadata(
                GetResourceRequest {
                    compute_instance_id: INSTANCE.into(),
                    include_tenant_info: false,
                },
                Some("agents-and-admins"),
                &[],
            ))
            .await;
        if response.is_ok_and(|r| r.into_inner().resource.is_some_and(|r| r.online)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let backup_id = write_backup_with_token(channel.clone(), "agents-and-admins").await;
    let denied = backups
        .start_recovery(admin(recover(&backup_id, INSTANCE), "other-team-token"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains(FOLDER), "{}", denied.message());
}

/// Creates, applies and executes a policy with a bearer token; returns the
/// new backup's id.
async fn write_backup_with_token(channel: Channel, token: &str) -> String {
    use backstop_proto::backup::{
        policy_service_client::PolicyServiceClient, ApplyPolicyRequest, CreatePolicyMetadata,
        CreatePolicyRequest, ExecuteRequest,
    };
    let mut policies = PolicyServiceClient::new(channel.clone());
    let created = policies
        .create(with_metadata(
            CreatePolicyRequest {
                folder_id: FOLDER.into(),
                name: "nightly".into(),
                settings: Some(nightly_settings()),
            },
            Some(token),
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    let policy_id = CreatePolicyMetadata::decode(created.metadata.unwrap().value.as_slice())
        .unwrap()
        .policy_id;
    policies
        .apply(with_metadata(
            ApplyPolicyRequest {
                policy_id: policy_id.clone(),
                compute_instance_id: INSTANCE.into(),
            },
            Some(token),
            &[],
        ))
        .await
        .unwrap();
    let started = policies
        .execute(with_metadata(
            ExecuteRequest {
                policy_id,
                compute_instance_id: INSTANCE.into(),
            },
            Some(token),
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    let mut operations =
        backstop_proto::operation::operation_service_client::OperationServiceClient::new(
            channel.clone(),
        );
    for _ in 0..600 {
        let operation = operations
            .get(with_metadata(
                backstop_proto::operation::GetOperationRequest {
                    operation_id: started.id.clone(),
                },
                Some(token),
                &[],
            ))
            .await
            .unwrap()
            .into_inner();
        if operation.done {
            assert_succeeded(&operation);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut backups = BackupServiceClient::new(channel);
    backups
        .list(with_metadata(
            ListBackupsRequest {
                id: Some(list_backups_request::Id::ComputeInstanceId(INSTANCE.into())),
                ..Default::default()
            },
            Some(token),
            &[],
        ))
        .await
        .unwrap()
        .into_inner()
        .backups[0]
        .id
        .clone()
}
