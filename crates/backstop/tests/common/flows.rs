//! Shared steps of the backup and recovery flows: real disk images, a
//! policy, waiting for instances and operations.

#![allow(dead_code)]

use std::{path::Path, process::Command, time::Duration};

use backstop_chunkstore::{Credentials, LocalBackend, ManifestId, Repository};
use backstop_engine::{CancellationToken, NoProgress, RestoreOptions};
use backstop_proto::{
    backup::{
        policy_service_client::PolicyServiceClient,
        policy_settings,
        policy_settings::{interval, retention, scheduling},
        resource_service_client::ResourceServiceClient,
        ApplyPolicyRequest, CreatePolicyMetadata, CreatePolicyRequest, ExecuteRequest, Format,
        GetResourceRequest, PolicySettings,
    },
    operation::{
        operation, operation_service_client::OperationServiceClient, GetOperationRequest, Operation,
    },
};
use prost::Message;
use tonic::transport::Channel;

pub const INSTANCE: &str = "local-vm-1";
pub const FOLDER: &str = "folder-a";

pub fn interval(kind: interval::Type, count: i64) -> policy_settings::Interval {
    policy_settings::Interval {
        r#type: kind as i32,
        count,
    }
}

pub fn retries(max_attempts: i64) -> policy_settings::RetriesConfiguration {
    policy_settings::RetriesConfiguration {
        enabled: true,
        interval: Some(interval(interval::Type::Minutes, 5)),
        max_attempts,
    }
}

/// Settings of a nightly policy kept for 14 days.
pub fn nightly_settings() -> PolicySettings {
    PolicySettings {
        compression: policy_settings::Compression::Normal as i32,
        format: Format::Auto as i32,
        reattempts: Some(retries(10)),
        splitting: Some(policy_settings::Splitting { size: 1 << 40 }),
        vm_snapshot_reattempts: Some(retries(5)),
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
            backup_sets: vec![scheduling::BackupSet {
                r#type: scheduling::backup_set::Type::Auto as i32,
                setting: Some(scheduling::backup_set::Setting::Time(
                    scheduling::backup_set::Time {
                        repeat_at: vec![policy_settings::TimeOfDay { hour: 3, minute: 0 }],
                        r#type: policy_settings::RepeatePeriod::Daily as i32,
                        ..Default::default()
                    },
                )),
            }],
            enabled: true,
            max_parallel_backups: 1,
            rand_max_delay: Some(interval(interval::Type::Minutes, 30)),
            weekly_backup_day: policy_settings::Day::Monday as i32,
            scheme: scheduling::Scheme::AlwaysIncremental as i32,
            ..Default::default()
        }),
        vss: Some(policy_settings::VolumeShadowCopyServiceSettings {
            enabled: false,
            provider: policy_settings::volume_shadow_copy_service_settings::VssProvider::Native
                as i32,
        }),
        performance_window: Some(policy_settings::PerformanceWindow { enabled: false }),
        cbt: policy_settings::ChangedBlockTracking::UseIfEnabled as i32,
        ..Default::default()
    }
}

pub fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes a tree of files with mixed content: text that compresses well and
/// random bytes that do not.
pub fn write_tree(root: &Path) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/data")).unwrap();
    for i in 0..120 {
        let text = format!("line {i} of a configuration file\n").repeat(50 + i * 7);
        std::fs::write(root.join(format!("etc/config-{i}.conf")), text).unwrap();
    }
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..40 {
        let bytes: Vec<u8> = (0..(64 * 1024 + i * 4099))
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(root.join(format!("var/lib/data/blob-{i}.bin")), bytes).unwrap();
    }
}

/// Builds a 64 MiB ext4 image from a real tree and a 32 MiB GPT image with
/// an EFI system partition and a named data partition.
pub fn build_disks(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let tree = dir.join("tree");
    write_tree(&tree);
    let ext4 = dir.join("vda.raw");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&ext4)
        .arg("64M"));

    let gpt = dir.join("vdb.raw");
    std::fs::File::create(&gpt)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .arg("--quiet")
        .arg(&gpt)
        .stdin(std::process::Stdio::piped());
    let mut child = sfdisk
        .spawn()
        .expect("run sfdisk; install the fdisk package");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"label: gpt\nsize=8MiB, type=U, name=\"EFI\"\nsize=16MiB, type=L, name=\"data\"\n",
        )
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    (ext4, gpt)
}

pub fn server_config(ext4: &Path, gpt: &Path) -> String {
    format!(
        "heartbeat_timeout_s = 5\ngc_grace_period_s = 0\n\n[[instances]]\ncompute_instance_id = \"{INSTANCE}\"\nfolder_id = \"{FOLDER}\"\n\
         disks = [{{ name = \"vda\", path = \"{}\" }}, {{ name = \"vdb\", path = \"{}\" }}]\n",
        ext4.display(),
        gpt.display()
    )
}

pub async fn wait_online(channel: Channel) {
    let mut resources = ResourceServiceClient::new(channel);
    for _ in 0..100 {
        if let Ok(response) = resources
            .get(GetResourceRequest {
                compute_instance_id: INSTANCE.into(),
                include_tenant_info: false,
            })
            .await
        {
            if response.into_inner().resource.is_some_and(|r| r.online) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("instance {INSTANCE} did not come online");
}

/// Polls an operation until done; returns it with every progress value seen.
pub async fn wait_done(channel: Channel, id: &str) -> (Operation, Vec<f64>) {
    wait_done_with(
        channel,
        id,
        "yandex.cloud.backup.v1.ExecuteMetadata",
        |bytes| {
            backstop_proto::backup::ExecuteMetadata::decode(bytes)
                .unwrap()
                .progress_percentage
        },
    )
    .await
}

/// Polls an operation until done, decoding its metadata of type
/// `metadata_type` with `progress` on every Get.
pub async fn wait_done_with(
    channel: Channel,
    id: &str,
    metadata_type: &str,
    progress: impl Fn(&[u8]) -> f64,
) -> (Operation, Vec<f64>) {
    let mut operations = OperationServiceClient::new(channel);
    let mut seen = Vec::new();
    for _ in 0..1200 {
        let operation = operations
            .get(GetOperationRequest {
                operation_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let metadata = operation.metadata.clone().expect("metadata on every Get");
        assert_eq!(
            metadata.type_url,
            format!("type.googleapis.com/{metadata_type}")
        );
        seen.push(progress(metadata.value.as_slice()));
        if operation.done {
            return (operation, seen);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("operation {id} did not finish");
}

pub fn assert_succeeded(operation: &Operation) {
    match &operation.result {
        Some(operation::Result::Response(any)) => {
            assert_eq!(any.type_url, "type.googleapis.com/google.protobuf.Empty")
        }
        other => panic!("operation {} did not succeed: {other:?}", operation.id),
    }
}

/// Counts the chunk files in the server's repository.
pub fn count_chunks(data_dir: &Path) -> usize {
    let mut count = 0;
    for fanout in std::fs::read_dir(data_dir.join("repository/chunks")).unwrap() {
        for entry in std::fs::read_dir(fanout.unwrap().path()).unwrap() {
            if !entry
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
            {
                count += 1;
            }
        }
    }
    count
}

/// Restores one disk of a backup from the server's repository into a file.
pub async fn read_back(data_dir: &Path, backup_id: &str, disk: &str, target: &Path) {
    let backend = std::sync::Arc::new(LocalBackend::new(data_dir.join("repository")));
    let repository = Repository::open(backend, &Credentials::None).await.unwrap();
    let manifest = repository
        .get_disk_manifest(&ManifestId::new(backup_id).unwrap())
        .await
        .unwrap();
    let disk = manifest
        .disks
        .iter()
        .find(|d| d.name == disk)
        .expect("disk in manifest");
    backstop_engine::restore_disk(
        &repository,
        disk,
        target,
        &RestoreOptions::default(),
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
}

/// Creates the nightly policy in [`FOLDER`], applies it to [`INSTANCE`] and
/// returns its id.
pub async fn create_and_apply_policy(channel: Channel) -> String {
    let mut policies = PolicyServiceClient::new(channel);
    let created = policies
        .create(CreatePolicyRequest {
            folder_id: FOLDER.into(),
            name: "nightly".into(),
            settings: Some(nightly_settings()),
        })
        .await
        .unwrap()
        .into_inner();
    let policy_id = CreatePolicyMetadata::decode(created.metadata.unwrap().value.as_slice())
        .unwrap()
        .policy_id;
    policies
        .apply(ApplyPolicyRequest {
            policy_id: policy_id.clone(),
            compute_instance_id: INSTANCE.into(),
        })
        .await
        .unwrap();
    policy_id
}

/// Executes the policy on [`INSTANCE`], waits, and checks it succeeded.
pub async fn execute_and_wait(channel: Channel, policy_id: &str) -> Operation {
    let mut policies = PolicyServiceClient::new(channel.clone());
    let started = policies
        .execute(ExecuteRequest {
            policy_id: policy_id.into(),
            compute_instance_id: INSTANCE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (done, _) = wait_done(channel, &started.id).await;
    assert_succeeded(&done);
    done
}

/// Runs `backstop verify` on a data folder; returns its exit code and output.
pub fn run_verify(data_dir: &Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["verify", "--data-dir"])
        .arg(data_dir)
        .env("BACKSTOP_LOG", "warn")
        .output()
        .expect("run backstop verify");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}
