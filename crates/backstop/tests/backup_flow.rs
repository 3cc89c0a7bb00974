//! End-to-end backups through the public API: a policy applied to a local
//! instance whose disks are a real ext4 image and a GPT-partitioned image,
//! executed on demand, read back from the repository byte for byte.

mod common;

use std::process::Command;

use backstop_proto::backup::{
    backup_service_client::BackupServiceClient, list_archives_request, list_backups_request,
    policy_service_client::PolicyServiceClient, DeleteArchiveRequest, DeleteBackupRequest,
    ExecuteRequest, GetBackupRequest, ListArchivesRequest, ListBackupsRequest,
};
use common::{flows::*, ServerOptions, TestServer};
use tonic::{transport::Channel, Code};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_execute_backs_up_real_disks() {
    let dir = tempfile::tempdir().unwrap();
    let (ext4, gpt) = build_disks(dir.path());
    let server = TestServer::start_with(ServerOptions {
        config: Some(server_config(&ext4, &gpt)),
        ..Default::default()
    });
    let channel = server.channel().await;
    wait_online(channel.clone()).await;

    let policy_id = create_and_apply_policy(channel.clone()).await;
    let mut policies = PolicyServiceClient::new(channel.clone());

    let execute = || ExecuteRequest {
        policy_id: policy_id.clone(),
        compute_instance_id: INSTANCE.into(),
    };
    let started = policies.execute(execute()).await.unwrap().into_inner();
    let busy = policies.execute(execute()).await.unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition);
    assert!(busy.message().contains("busy"), "{}", busy.message());

    let (first, progress) = wait_done(channel.clone(), &started.id).await;
    assert_succeeded(&first);
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {progress:?}"
    );
    assert_eq!(*progress.last().unwrap(), 100.0);

    let mut backups = BackupServiceClient::new(channel.clone());
    let list = |backups: &mut BackupServiceClient<Channel>| {
        let mut backups = backups.clone();
        async move {
            backups
                .list(ListBackupsRequest {
                    id: Some(list_backups_request::Id::ComputeInstanceId(INSTANCE.into())),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .backups
        }
    };
    let listed = list(&mut backups).await;
    assert_eq!(listed.len(), 1);
    let full = &listed[0];
    assert_eq!(full.r#type, 1, "first backup is FULL");
    assert_eq!(full.policy_id, policy_id);
    assert_eq!(full.disks.len(), 2);
    assert_eq!(full.disks[0].name, "vda");
    assert_eq!(full.disks[0].size, 64 << 20);
    assert_eq!(
        full.disks[0].volumes.len(),
        1,
        "a bare ext4 disk is one volume"
    );
    let names: Vec<&str> = full.disks[1]
        .volumes
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(names, ["EFI", "data"]);
    assert!(
        full.disks[1].volumes[0].is_bootable,
        "the EFI system partition is bootable"
    );
    assert_eq!(full.disks[1].volumes[1].size, 16 << 20);
    assert_eq!(full.original_data_size, (64 << 20) + (32 << 20));
    assert!(
        full.size > 0 && full.size < full.backed_up_data_size,
        "compressed and deduplicated: {full:?}"
    );

    let restored = dir.path().join("vda.restored");
    read_back(&server.data_dir, &full.id, "vda", &restored).await;
    assert!(
        std::fs::read(&restored).unwrap() == std::fs::read(&ext4).unwrap(),
        "vda differs after read-back"
    );
    let restored_gpt = dir.path().join("vdb.restored");
    read_back(&server.data_dir, &full.id, "vdb", &restored_gpt).await;
    assert!(
        std::fs::read(&restored_gpt).unwrap() == std::fs::read(&gpt).unwrap(),
        "vdb differs after read-back"
    );

    // Change a few files inside the filesystem, then back up again.
    let before = std::fs::read(&ext4).unwrap();
    let chunks_before = count_chunks(&server.data_dir);
    let note = dir.path().join("note.txt");
    std::fs::write(&note, "changed after the first backup\n".repeat(1000)).unwrap();
    run(Command::new("debugfs")
        .args(["-w", "-R"])
        .arg(format!("write {} etc/new-note.txt", note.display()))
        .arg(&ext4));
    let second = policies.execute(execute()).await.unwrap().into_inner();
    let (second, _) = wait_done(channel.clone(), &second.id).await;
    assert_succeeded(&second);

    let listed = list(&mut backups).await;
    assert_eq!(listed.len(), 2);
    let incremental = &listed[0];
    assert_eq!(incremental.r#type, 2, "second backup is INCREMENTAL");
    let after = std::fs::read(&ext4).unwrap();
    let changed = before
        .chunks(4 << 20)
        .zip(after.chunks(4 << 20))
        .filter(|(old, new)| old != new)
        .count();
    assert!(
        changed > 0 && changed < 16,
        "debugfs changed {changed} of 16 chunks"
    );
    assert_eq!(
        count_chunks(&server.data_dir) - chunks_before,
        changed,
        "the second backup must store exactly the changed chunks"
    );
    assert!(
        incremental.size <= full.size,
        "{} > {}",
        incremental.size,
        full.size
    );
    read_back(
        &server.data_dir,
        &incremental.id,
        "vda",
        &dir.path().join("vda.second"),
    )
    .await;
    assert!(std::fs::read(dir.path().join("vda.second")).unwrap() == std::fs::read(&ext4).unwrap());

    let archives = backups
        .list_archives(ListArchivesRequest {
            id: Some(list_archives_request::Id::ComputeInstanceId(
                INSTANCE.into(),
            )),
        })
        .await
        .unwrap()
        .into_inner()
        .archives;
    assert_eq!(archives.len(), 1);
    assert_eq!(archives[0].backup_plan_id, policy_id);
    assert!(archives[0].last_backup_created_at.is_some());

    let (code, report) = run_verify(&server.data_dir);
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("of 2 backups") && report.contains("no problems found"),
        "{report}"
    );

    // Deleting the full backup keeps every chunk the incremental one still
    // references; deleting the archive then leaves no chunk behind.
    let delete = |instance: &str, backup_id: &str| DeleteBackupRequest {
        compute_instance_id: instance.into(),
        backup_id: backup_id.into(),
    };
    let wrong_instance = backups
        .delete(delete("other-vm", &full.id))
        .await
        .unwrap_err();
    assert_eq!(wrong_instance.code(), Code::NotFound);
    let deleting = backups
        .delete(delete(INSTANCE, &full.id))
        .await
        .unwrap()
        .into_inner();
    let deleted = wait_deleted(channel.clone(), &deleting.id).await;
    assert_succeeded(&deleted);
    let gone = backups
        .get(GetBackupRequest {
            backup_id: full.id.clone(),
            folder_id: FOLDER.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    read_back(
        &server.data_dir,
        &incremental.id,
        "vda",
        &dir.path().join("vda.third"),
    )
    .await;
    assert!(std::fs::read(dir.path().join("vda.third")).unwrap() == std::fs::read(&ext4).unwrap());

    let deleting = backups
        .delete_archive(DeleteArchiveRequest {
            archive_id: archives[0].id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_succeeded(&wait_deleted(channel.clone(), &deleting.id).await);
    assert_eq!(
        count_chunks(&server.data_dir),
        0,
        "garbage collection left chunks of deleted backups"
    );
    assert!(list(&mut backups).await.is_empty());
}

async fn wait_deleted(channel: Channel, id: &str) -> backstop_proto::operation::Operation {
    let mut operations =
        backstop_proto::operation::operation_service_client::OperationServiceClient::new(channel);
    for _ in 0..200 {
        let operation = operations
            .get(backstop_proto::operation::GetOperationRequest {
                operation_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if operation.done {
            return operation;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("deletion {id} did not finish");
}
