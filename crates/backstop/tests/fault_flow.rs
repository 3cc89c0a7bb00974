//! Faults during backups and recoveries: an agent killed mid-backup and a
//! corrupt chunk in the repository.

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use backstop_proto::{
    backup::{
        backup_service_client::BackupServiceClient, list_backups_request,
        policy_service_client::PolicyServiceClient, ExecuteRequest, ListBackupsRequest,
        StartRecoveryMetadata, StartRecoveryRequest,
    },
    operation::{
        operation, operation_service_client::OperationServiceClient, CancelOperationRequest,
        GetOperationRequest, Operation,
    },
};
use common::{flows::*, ServerOptions, TestServer};
use tonic::{transport::Channel, Code};

/// Starts `backstop agent` for [`INSTANCE`] with one disk.
fn start_agent(server: &TestServer, dir: &Path, disk: &Path) -> Child {
    start_agent_with(server, dir, disk, "")
}

/// Starts `backstop agent` with extra TOML appended to its configuration.
fn start_agent_with(server: &TestServer, dir: &Path, disk: &Path, extra: &str) -> Child {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"http://{}\"\ncompute_instance_id = \"{INSTANCE}\"\nfolder_id = \"{FOLDER}\"\n\
             disks = [{{ name = \"vda\", path = \"{}\" }}]\n{extra}",
            server.address,
            disk.display()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["agent", "--config"])
        .arg(&config)
        .env("BACKSTOP_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start backstop agent")
}

/// Writes an image of random data that takes the agent a while to back up.
fn random_image(path: &Path, size: usize) {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut data = vec![0u8; size];
    for word in data.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
    }
    std::fs::write(path, data).unwrap();
}

async fn get(channel: Channel, id: &str) -> Operation {
    OperationServiceClient::new(channel)
        .get(GetOperationRequest {
            operation_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn backups_of_instance(channel: Channel) -> usize {
    BackupServiceClient::new(channel)
        .list(ListBackupsRequest {
            id: Some(list_backups_request::Id::ComputeInstanceId(INSTANCE.into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .backups
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_fails_backup_and_next_backup_works() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("vda.raw");
    random_image(&disk, 384 << 20);
    let server = TestServer::start_with(ServerOptions {
        config: Some("heartbeat_timeout_s = 3\n".into()),
        ..Default::default()
    });
    let channel = server.channel().await;
    let mut agent = start_agent(&server, dir.path(), &disk);
    wait_online(channel.clone()).await;
    let policy_id = create_and_apply_policy(channel.clone()).await;

    let mut policies = PolicyServiceClient::new(channel.clone());
    let execute = || ExecuteRequest {
        policy_id: policy_id.clone(),
        compute_instance_id: INSTANCE.into(),
    };
    let started = policies.execute(execute()).await.unwrap().into_inner();

    // Kill the agent once the backup has moved some data.
    let mut progressed = false;
    for _ in 0..400 {
        let operation = get(channel.clone(), &started.id).await;
        assert!(
            !operation.done,
            "the backup finished before the agent could be killed"
        );
        let metadata = operation.metadata.unwrap();
        let progress = <backstop_proto::backup::ExecuteMetadata as prost::Message>::decode(
            metadata.value.as_slice(),
        )
        .unwrap()
        .progress_percentage;
        if progress > 0.0 {
            progressed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(progressed, "the backup never reported progress");
    let resource = backstop_proto::backup::resource_service_client::ResourceServiceClient::new(
        channel.clone(),
    )
    .get(backstop_proto::backup::GetResourceRequest {
        compute_instance_id: INSTANCE.into(),
        include_tenant_info: false,
    })
    .await
    .unwrap()
    .into_inner()
    .resource
    .unwrap();
    assert_eq!(resource.status, 2, "BACKUPING");
    agent.kill().unwrap();
    agent.wait().unwrap();

    // The watchdog ends the operation once the heartbeat times out.
    let killed_at = std::time::Instant::now();
    let ended = loop {
        let operation = get(channel.clone(), &started.id).await;
        if operation.done {
            break operation;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(20),
            "the operation stayed running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    match &ended.result {
        Some(operation::Result::Error(status)) => {
            assert_eq!(status.code, Code::Unavailable as i32);
            assert!(status.message.contains("heartbeat"), "{}", status.message);
        }
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    assert_eq!(
        backups_of_instance(channel.clone()).await,
        0,
        "a failed backup leaves no record"
    );

    let offline = policies.execute(execute()).await.unwrap_err();
    assert_eq!(offline.code(), Code::FailedPrecondition);

    // Chunks stored before the kill are kept and reused by the next backup.
    let stored_before = count_chunks(&server.data_dir);
    assert!(stored_before > 0, "no chunk was stored before the kill");
    let mut agent = start_agent(&server, dir.path(), &disk);
    wait_online(channel.clone()).await;
    execute_and_wait(channel.clone(), &policy_id).await;
    let backup = BackupServiceClient::new(channel.clone())
        .list(ListBackupsRequest {
            id: Some(list_backups_request::Id::ComputeInstanceId(INSTANCE.into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .backups;
    assert_eq!(backup.len(), 1);
    assert_eq!(
        count_chunks(&server.data_dir),
        96,
        "a 384 MiB random disk is 96 distinct chunks"
    );
    // Random data does not compress, so each new chunk stores 4 MiB plus a
    // header of at most 64 bytes.
    let new_chunks = 96 - stored_before as i64;
    assert!(
        backup[0].size <= new_chunks * ((4 << 20) + 64),
        "the second backup stored {} bytes for {new_chunks} new chunks",
        backup[0].size
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunk_fails_recovery_with_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("vda.raw");
    random_image(&disk, 24 << 20);
    let server = TestServer::start_with(ServerOptions {
        config: Some(format!(
            "[[instances]]\ncompute_instance_id = \"{INSTANCE}\"\nfolder_id = \"{FOLDER}\"\n\
             disks = [{{ name = \"vda\", path = \"{}\" }}]\n",
            disk.display()
        )),
        ..Default::default()
    });
    let channel = server.channel().await;
    wait_online(channel.clone()).await;
    let policy_id = create_and_apply_policy(channel.clone()).await;
    execute_and_wait(channel.clone(), &policy_id).await;
    let backup_id = BackupServiceClient::new(channel.clone())
        .list(ListBackupsRequest {
            id: Some(list_backups_request::Id::ComputeInstanceId(INSTANCE.into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .backups[0]
        .id
        .clone();

    // Flip a byte in the middle of every stored chunk, and make the disk
    // differ from the backup so the recovery must read chunks.
    for fanout in std::fs::read_dir(server.data_dir.join("repository/chunks")).unwrap() {
        for entry in std::fs::read_dir(fanout.unwrap().path()).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let (code, report) = run_verify(&server.data_dir);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("corrupt"), "{report}");
    assert!(
        report.contains(&format!("needed by backup {backup_id} disk `vda`")),
        "{report}"
    );

    std::fs::write(&disk, vec![7u8; 24 << 20]).unwrap();
    let damaged = std::fs::read(&disk).unwrap();

    let started = BackupServiceClient::new(channel.clone())
        .start_recovery(StartRecoveryRequest {
            compute_instance_id: INSTANCE.into(),
            backup_id: backup_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let ended = loop {
        let operation = get(channel.clone(), &started.id).await;
        if operation.done {
            break operation;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    match &ended.result {
        Some(operation::Result::Error(status)) => {
            assert_eq!(status.code, Code::DataLoss as i32, "{}", status.message);
            assert!(status.message.contains(&backup_id), "{}", status.message);
            assert!(status.message.contains("vda"), "{}", status.message);
            assert!(status.message.contains("offset"), "{}", status.message);
        }
        other => panic!("expected DATA_LOSS, got {other:?}"),
    }
    assert!(
        std::fs::read(&disk).unwrap() == damaged,
        "nothing unverified was written"
    );
}

fn local_instance_config(disk: &Path) -> String {
    format!(
        "heartbeat_timeout_s = 3\n\n[[instances]]\ncompute_instance_id = \"{INSTANCE}\"\nfolder_id = \"{FOLDER}\"\n\
         disks = [{{ name = \"vda\", path = \"{}\" }}]\n",
        disk.display()
    )
}

/// Backs up a random disk, then blanks the disk so a recovery must write
/// all of it; returns the backup id and the original bytes.
async fn backed_up_then_blanked(channel: Channel, disk: &Path) -> (String, Vec<u8>) {
    let policy_id = create_and_apply_policy(channel.clone()).await;
    execute_and_wait(channel.clone(), &policy_id).await;
    let backup_id = BackupServiceClient::new(channel)
        .list(ListBackupsRequest {
            id: Some(list_backups_request::Id::ComputeInstanceId(INSTANCE.into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .backups[0]
        .id
        .clone();
    let original = std::fs::read(disk).unwrap();
    // Overwrite in place: truncating would let an agent heartbeat report the
    // disk as empty in between.
    let mut file = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    let zeros = vec![0u8; 4 << 20];
    for _ in 0..original.len() / zeros.len() {
        std::io::Write::write_all(&mut file, &zeros).unwrap();
    }
    file.sync_all().unwrap();
    (backup_id, original)
}

async fn recovery_progress(channel: Channel, id: &str) -> (bool, f64) {
    let operation = get(channel, id).await;
    let metadata = operation.metadata.unwrap();
    let progress = <StartRecoveryMetadata as prost::Message>::decode(metadata.value.as_slice())
        .unwrap()
        .progress_percentage;
    (operation.done, progress)
}

async fn wait_progress(channel: Channel, id: &str) {
    for _ in 0..1000 {
        let (done, progress) = recovery_progress(channel.clone(), id).await;
        assert!(
            !done,
            "the recovery finished before the test could interrupt it"
        );
        if progress > 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the recovery never reported progress");
}

async fn wait_end(channel: Channel, id: &str) -> Operation {
    for _ in 0..600 {
        let operation = get(channel.clone(), id).await;
        if operation.done {
            return operation;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("operation {id} stayed running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_recovery_with_partial_restore_message() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("vda.raw");
    random_image(&disk, 384 << 20);
    let server = TestServer::start_with(ServerOptions {
        config: Some(local_instance_config(&disk)),
        ..Default::default()
    });
    let channel = server.channel().await;
    wait_online(channel.clone()).await;
    let (backup_id, original) = backed_up_then_blanked(channel.clone(), &disk).await;

    let recover = || StartRecoveryRequest {
        compute_instance_id: INSTANCE.into(),
        backup_id: backup_id.clone(),
    };
    let started = BackupServiceClient::new(channel.clone())
        .start_recovery(recover())
        .await
        .unwrap()
        .into_inner();
    wait_progress(channel.clone(), &started.id).await;

    // While the recovery runs, the instance shows it and takes no other.
    let busy = BackupServiceClient::new(channel.clone())
        .start_recovery(recover())
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition);
    assert!(busy.message().contains("busy"), "{}", busy.message());
    let mut resources = backstop_proto::backup::resource_service_client::ResourceServiceClient::new(
        channel.clone(),
    );
    let resource = resources
        .get(backstop_proto::backup::GetResourceRequest {
            compute_instance_id: INSTANCE.into(),
            include_tenant_info: false,
        })
        .await
        .unwrap()
        .into_inner()
        .resource
        .unwrap();
    assert_eq!(resource.status, 3, "RECOVERING");
    let tasks = resources
        .list_tasks(backstop_proto::backup::ListTasksRequest {
            compute_instance_id: INSTANCE.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let progress = tasks[0].progress.unwrap();
    assert_eq!(tasks[0].r#type, 3, "RECOVERY");
    assert_eq!(progress.total, 384 << 20);
    assert!(
        progress.current > 0 && progress.current <= progress.total,
        "{progress:?}"
    );

    OperationServiceClient::new(channel.clone())
        .cancel(CancelOperationRequest {
            operation_id: started.id.clone(),
        })
        .await
        .unwrap();
    let ended = wait_end(channel.clone(), &started.id).await;
    match &ended.result {
        Some(operation::Result::Error(status)) => {
            assert_eq!(status.code, Code::Cancelled as i32, "{}", status.message);
            assert!(
                status.message.contains("partial restore"),
                "{}",
                status.message
            );
        }
        other => panic!("expected CANCELLED, got {other:?}"),
    }

    // A new recovery completes the disk.
    let again = BackupServiceClient::new(channel.clone())
        .start_recovery(recover())
        .await
        .unwrap()
        .into_inner();
    let ended = wait_end(channel.clone(), &again.id).await;
    assert!(
        matches!(ended.result, Some(operation::Result::Response(_))),
        "{:?}",
        ended.result
    );
    assert!(std::fs::read(&disk).unwrap() == original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_crash_mid_recovery_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("vda.raw");
    random_image(&disk, 384 << 20);
    let config = local_instance_config(&disk);
    let server = TestServer::start_with(ServerOptions {
        config: Some(config.clone()),
        ..Default::default()
    });
    let channel = server.channel().await;
    wait_online(channel.clone()).await;
    let (backup_id, original) = backed_up_then_blanked(channel.clone(), &disk).await;

    let started = BackupServiceClient::new(channel.clone())
        .start_recovery(StartRecoveryRequest {
            compute_instance_id: INSTANCE.into(),
            backup_id,
        })
        .await
        .unwrap()
        .into_inner();
    wait_progress(channel.clone(), &started.id).await;
    drop(channel);
    let (data_dir, temp) = server.kill_keep_data();

    // The restarted server's agent registers again and the task resumes.
    let restarted = TestServer::start_with(ServerOptions {
        data_dir: Some(data_dir),
        config: Some(config),
        ..Default::default()
    });
    let channel = restarted.channel().await;
    let ended = wait_end(channel.clone(), &started.id).await;
    assert!(
        matches!(ended.result, Some(operation::Result::Response(_))),
        "{:?}",
        ended.result
    );
    assert!(
        std::fs::read(&disk).unwrap() == original,
        "the resumed recovery left the disk different"
    );
    let (_, progress) = recovery_progress(channel, &started.id).await;
    assert_eq!(progress, 100.0);
    assert!(
        restarted
            .wait_for_log(|line| line["message"]
                .as_str()
                .is_some_and(|m| m.contains("queued again")))
            .is_some(),
        "the task was not resumed"
    );
    drop(restarted);
    drop(temp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_hooks_run_and_failing_hook_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("vda.raw");
    random_image(&disk, 16 << 20);
    let server = TestServer::start_with(ServerOptions {
        config: Some("heartbeat_timeout_s = 3\n".into()),
        ..Default::default()
    });
    let channel = server.channel().await;
    let before = dir.path().join("stopped");
    let after = dir.path().join("started");
    let hooks = format!(
        "verify_after_restore = true\n\n[hooks]\npre_recovery = [\"touch\", \"{}\"]\npost_recovery = [\"touch\", \"{}\"]\n",
        before.display(),
        after.display()
    );
    let mut agent = start_agent_with(&server, dir.path(), &disk, &hooks);
    wait_online(channel.clone()).await;
    let (backup_id, original) = backed_up_then_blanked(channel.clone(), &disk).await;
    let recover = || StartRecoveryRequest {
        compute_instance_id: INSTANCE.into(),
        backup_id: backup_id.clone(),
    };

    let started = BackupServiceClient::new(channel.clone())
        .start_recovery(recover())
        .await
        .unwrap()
        .into_inner();
    let ended = wait_end(channel.clone(), &started.id).await;
    assert!(
        matches!(ended.result, Some(operation::Result::Response(_))),
        "{:?}",
        ended.result
    );
    assert!(before.exists(), "the pre-recovery hook did not run");
    assert!(after.exists(), "the post-recovery hook did not run");
    assert!(std::fs::read(&disk).unwrap() == original);
    agent.kill().unwrap();
    agent.wait().unwrap();

    // An agent whose pre-recovery hook fails writes nothing.
    let failing =
        "[hooks]\npre_recovery = [\"sh\", \"-c\", \"echo vm still running >&2; exit 3\"]\n";
    let mut agent = start_agent_with(&server, dir.path(), &disk, failing);
    wait_online(channel.clone()).await;
    let mut file = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::io::Write::write_all(&mut file, &vec![0u8; 16 << 20]).unwrap();
    drop(file);
    let started = BackupServiceClient::new(channel.clone())
        .start_recovery(recover())
        .await
        .unwrap()
        .into_inner();
    let ended = wait_end(channel.clone(), &started.id).await;
    match &ended.result {
        Some(operation::Result::Error(status)) => {
            assert_eq!(
                status.code,
                Code::FailedPrecondition as i32,
                "{}",
                status.message
            );
            assert!(
                status.message.contains("pre-recovery hook"),
                "{}",
                status.message
            );
            assert!(status.message.contains("status 3"), "{}", status.message);
        }
        other => panic!("expected the hook to fail the recovery, got {other:?}"),
    }
    assert!(
        std::fs::read(&disk).unwrap().iter().all(|b| *b == 0),
        "a recovery wrote after its hook failed"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();

    // Once the heartbeat times out, the instance refuses recoveries.
    let mut offline = None;
    for _ in 0..100 {
        match BackupServiceClient::new(channel.clone())
            .start_recovery(recover())
            .await
        {
            Err(status) if status.message().contains("offline") => {
                offline = Some(status);
                break;
            }
            Err(status) => panic!("unexpected error: {status}"),
            Ok(operation) => {
                // The agent still looked online; let this recovery end.
                wait_end(channel.clone(), &operation.into_inner().id).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        offline.expect("the instance never went offline").code(),
        Code::FailedPrecondition
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registers_with_registration_token() {
    use backstop_proto::backup::{
        resource_service_client::ResourceServiceClient, GetInstanceRegistrationTokenRequest,
        GetResourceRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("vda.raw");
    random_image(&disk, 4 << 20);
    let server = TestServer::start();
    let channel = server.channel().await;
    let mut resources = ResourceServiceClient::new(channel.clone());
    let token = resources
        .get_instance_registration_token(GetInstanceRegistrationTokenRequest {
            folder_id: "folder-registered".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(token.instance_registration_id.len(), 40);
    assert!(token.expired_at.is_some());

    let write_config = |token: &str| {
        let path = dir.path().join("agent-token.toml");
        std::fs::write(
            &path,
            format!(
                "server = \"http://{}\"\ncompute_instance_id = \"token-vm\"\nregistration_token = \"{token}\"\n\
                 disks = [{{ name = \"vda\", path = \"{}\" }}]\n",
                server.address,
                disk.display()
            ),
        )
        .unwrap();
        path
    };
    let rejected = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["agent", "--config"])
        .arg(write_config("not-a-token"))
        .output()
        .unwrap();
    assert!(!rejected.status.success());
    assert!(String::from_utf8_lossy(&rejected.stderr).contains("unknown token"));

    let mut agent = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["agent", "--config"])
        .arg(write_config(&token.instance_registration_id))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut registered = None;
    for _ in 0..100 {
        if let Ok(response) = resources
            .get(GetResourceRequest {
                compute_instance_id: "token-vm".into(),
                include_tenant_info: true,
            })
            .await
        {
            registered = response.into_inner().resource;
            if registered.as_ref().is_some_and(|r| r.online) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resource = registered.expect("the agent registered its instance");
    assert!(resource.online);
    assert_eq!(resource.tenant_info.unwrap().folder_id, "folder-registered");
    agent.kill().unwrap();
    agent.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_repository_backs_up_and_recovers() {
    use backstop_proto::backup::{list_archives_request, ListArchivesRequest};
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("vda.raw");
    let marker = b"PLAINTEXT-MARKER-THAT-MUST-NOT-BE-STORED ";
    std::fs::write(
        &disk,
        &marker.repeat((8 << 20) / marker.len() + 1)[..8 << 20],
    )
    .unwrap();
    let key_file = dir.path().join("repository.key");
    let config = format!(
        "{}\n[repository]\nkey_file = \"{}\"\n",
        local_instance_config(&disk),
        key_file.display()
    );
    let config_path = dir.path().join("server.toml");
    std::fs::write(&config_path, &config).unwrap();
    let server = TestServer::start_with(ServerOptions {
        config: Some(config),
        ..Default::default()
    });
    let channel = server.channel().await;
    wait_online(channel.clone()).await;
    let (backup_id, original) = backed_up_then_blanked(channel.clone(), &disk).await;
    assert!(key_file.exists(), "the server created the repository key");

    for fanout in std::fs::read_dir(server.data_dir.join("repository/chunks")).unwrap() {
        for entry in std::fs::read_dir(fanout.unwrap().path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(16).any(|w| w == &marker[..16]),
                "a chunk holds plaintext"
            );
        }
    }
    let archives = BackupServiceClient::new(channel.clone())
        .list_archives(ListArchivesRequest {
            id: Some(list_archives_request::Id::ComputeInstanceId(
                INSTANCE.into(),
            )),
        })
        .await
        .unwrap()
        .into_inner()
        .archives;
    assert_eq!(archives[0].encryption_algorithm, 4, "AES256");

    let started = BackupServiceClient::new(channel.clone())
        .start_recovery(StartRecoveryRequest {
            compute_instance_id: INSTANCE.into(),
            backup_id,
        })
        .await
        .unwrap()
        .into_inner();
    let ended = wait_end(channel.clone(), &started.id).await;
    assert!(
        matches!(ended.result, Some(operation::Result::Response(_))),
        "{:?}",
        ended.result
    );
    assert!(std::fs::read(&disk).unwrap() == original);

    let with_key = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["verify", "--config"])
        .arg(&config_path)
        .arg("--data-dir")
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(
        with_key.status.success(),
        "{}",
        String::from_utf8_lossy(&with_key.stderr)
    );
    let (code, _) = run_verify(&server.data_dir);
    assert_ne!(code, 0, "verify without the key must fail");
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} failed");
}

/// A recovery that the heartbeat timeout failed after the agent had taken
/// it must not write: the agent is paused with SIGSTOP while its pending
/// PollTask call receives the task, and resumes after the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_recovery_does_not_write_after_agent_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("vda.raw");
    random_image(&disk, 32 << 20);
    let server = TestServer::start_with(ServerOptions {
        config: Some("heartbeat_timeout_s = 3\n".into()),
        ..Default::default()
    });
    let channel = server.channel().await;
    let agent_log = dir.path().join("agent.log");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"http://{}\"\ncompute_instance_id = \"{INSTANCE}\"\nfolder_id = \"{FOLDER}\"\n\
             disks = [{{ name = \"vda\", path = \"{}\" }}]\n",
            server.address,
            disk.display()
        ),
    )
    .unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["agent", "--config"])
        .arg(&config)
        .env("BACKSTOP_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .spawn()
        .expect("start backstop agent");
    wait_online(channel.clone()).await;
    let (backup_id, original) = backed_up_then_blanked(channel.clone(), &disk).await;
    let blank = std::fs::read(&disk).unwrap();

    // Let the agent go back to its long PollTask call, then pause it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_signal(&agent, "STOP");
    let recover = || StartRecoveryRequest {
        compute_instance_id: INSTANCE.into(),
        backup_id: backup_id.clone(),
    };
    let started = BackupServiceClient::new(channel.clone())
        .start_recovery(recover())
        .await
        .unwrap()
        .into_inner();
    assert!(
        server
            .wait_for_log(|line| line["message"] == "task assigned to agent")
            .is_some(),
        "the paused agent's PollTask call did not take the task"
    );
    let ended = wait_end(channel.clone(), &started.id).await;
    match &ended.result {
        Some(operation::Result::Error(status)) => {
            assert_eq!(status.code, Code::Unavailable as i32, "{}", status.message);
            assert!(status.message.contains("heartbeat"), "{}", status.message);
        }
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }

    send_signal(&agent, "CONT");
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&agent_log).unwrap();
        if log.contains("has already ended") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log.contains("has already ended"), "agent log:\n{log}");
    assert!(!log.contains("cancelled by the user"), "agent log:\n{log}");
    assert!(
        std::fs::read(&disk).unwrap() == blank,
        "the agent wrote to the disk after the recovery failed"
    );

    // Once its heartbeats are back, a new recovery runs to the end.
    wait_online(channel.clone()).await;
    let again = BackupServiceClient::new(channel.clone())
        .start_recovery(recover())
        .await
        .unwrap()
        .into_inner();
    let ended = wait_end(channel.clone(), &again.id).await;
    assert!(
        matches!(ended.result, Some(operation::Result::Response(_))),
        "{:?}",
        ended.result
    );
    assert!(std::fs::read(&disk).unwrap() == original);
    agent.kill().unwrap();
    agent.wait().unwrap();
}
