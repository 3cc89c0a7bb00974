//! The conformance suite every catalog backend must pass. The SQLite
//! backend runs it in its unit tests; other backends call the same
//! functions against their own database.

use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::{
    AnyMessage, Archive, Backup, BackupQuery, BackupSelector, BackupType, Catalog, CatalogError,
    CompareOp, IdempotencyKey, InitStatus, NewOperation, OperationError, OperationResult,
    PageRequest, Resource, ResourceQuery, ResourceStatus, ResourceType, SortOrder, TimeCondition,
};

fn new_operation(key: Option<&str>) -> NewOperation {
    NewOperation {
        description: "test".into(),
        created_by: "subject".into(),
        metadata: AnyMessage {
            type_url: "type.googleapis.com/test.Metadata".into(),
            value: vec![1, 2, 3],
        },
        resource_id: Some("instance".into()),
        idempotency: key.map(|k| IdempotencyKey {
            subject: "subject".into(),
            method: "/test/Method".into(),
            key: k.into(),
        }),
        task: None,
    }
}

/// Creating, updating and finishing an operation keeps the contract.
pub async fn operation_lifecycle(catalog: &dyn Catalog) {
    let created = catalog.create_operation(new_operation(None)).await.unwrap();
    assert!(created.created);
    let op = created.operation;
    assert!(!op.done);
    assert!(op.result.is_none());

    let updated = catalog
        .update_operation_metadata(
            &op.id,
            AnyMessage {
                type_url: op.metadata.type_url.clone(),
                value: vec![9],
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.metadata.value, vec![9]);
    assert!(updated.modified_at > op.modified_at);

    let failed = catalog
        .finish_operation(
            &op.id,
            OperationResult::Error(OperationError {
                code: 14,
                message: "agent went away".into(),
                details: vec![AnyMessage {
                    type_url: "type.googleapis.com/google.rpc.RequestInfo".into(),
                    value: vec![0xff, 0x00],
                }],
            }),
        )
        .await
        .unwrap();
    assert!(failed.done);
    assert!(failed.modified_at > updated.modified_at);

    // A finished operation never changes again.
    let again = catalog
        .finish_operation(
            &op.id,
            OperationResult::Response(AnyMessage {
                type_url: "type.googleapis.com/google.protobuf.Empty".into(),
                value: Vec::new(),
            }),
        )
        .await
        .unwrap();
    assert_eq!(again, failed);
    assert!(catalog
        .list_unfinished_operations()
        .await
        .unwrap()
        .iter()
        .all(|o| o.id != op.id));
    assert!(matches!(
        catalog.get_operation("missing").await,
        Err(CatalogError::NotFound { .. })
    ));
}

/// Racing calls with one idempotency key yield one operation.
pub async fn idempotency_key_race(catalog: Arc<dyn Catalog>) {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let catalog = catalog.clone();
        tasks.push(tokio::spawn(async move {
            catalog
                .create_operation(new_operation(Some("race")))
                .await
                .unwrap()
        }));
    }
    let mut ids = Vec::new();
    let mut created = 0;
    for task in tasks {
        let result = task.await.unwrap();
        created += usize::from(result.created);
        ids.push(result.operation.id);
    }
    assert_eq!(created, 1);
    ids.dedup();
    assert_eq!(ids.len(), 1);

    let expired = catalog
        .expire_idempotency_keys(OffsetDateTime::now_utc() + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(expired, 1);
    assert!(
        catalog
            .create_operation(new_operation(Some("race")))
            .await
            .unwrap()
            .created
    );
}

fn resource(id: &str, created_at: OffsetDateTime) -> Resource {
    Resource {
        compute_instance_id: id.into(),
        resource_id: format!("res-{id}"),
        folder_id: "folder".into(),
        created_at,
        updated_at: created_at,
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
        agent_version: String::new(),
        last_heartbeat_at: None,
    }
}

/// Resources page in creation order without gaps or repeats.
pub async fn resources_page_in_order(catalog: &dyn Catalog) {
    let base = OffsetDateTime::now_utc();
    for i in 0..5 {
        catalog
            .upsert_resource(&resource(&format!("i{i}"), base + Duration::seconds(i)))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = catalog
            .list_resources(&ResourceQuery {
                folder_id: "folder".into(),
                resource_type: None,
                page: PageRequest { size: 2, token },
            })
            .await
            .unwrap();
        seen.extend(page.items.into_iter().map(|r| r.compute_instance_id));
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["i0", "i1", "i2", "i3", "i4"]);
    assert!(matches!(
        catalog
            .list_resources(&ResourceQuery {
                folder_id: "folder".into(),
                resource_type: None,
                page: PageRequest {
                    size: 2,
                    token: Some("garbage".into())
                },
            })
            .await,
        Err(CatalogError::InvalidPageToken(_))
    ));
}

/// Backup listings honour order, time filters and deletion.
pub async fn backups_filter_and_order(catalog: &dyn Catalog) {
    let base = OffsetDateTime::now_utc();
    let archive = Archive {
        id: "archive".into(),
        name: "archive".into(),
        folder_id: "folder".into(),
        compute_instance_id: "instance".into(),
        resource_id: "res".into(),
        policy_id: "policy".into(),
        policy_name: "policy".into(),
        size: 0,
        compressed_data_size: 0,
        data_size: 0,
        original_data_size: 0,
        logical_size: 0,
        format: 1,
        created_at: base,
        updated_at: base,
        last_backup_created_at: None,
        last_seen_at: None,
        encrypted: false,
        deleted: false,
    };
    catalog.upsert_archive(&archive).await.unwrap();
    for i in 0..4 {
        let backup = Backup {
            id: format!("b{i}"),
            archive_id: "archive".into(),
            folder_id: "folder".into(),
            compute_instance_id: "instance".into(),
            resource_id: "res".into(),
            policy_id: "policy".into(),
            created_at: base + Duration::minutes(i),
            last_seen_at: base,
            size: 1,
            deduplicated_size: 1,
            backed_up_data_size: 1,
            original_data_size: 1,
            backup_type: if i == 0 {
                BackupType::Full
            } else {
                BackupType::Incremental
            },
            disks: Vec::new(),
            deleted: i == 3,
        };
        catalog.insert_backup(&backup).await.unwrap();
    }
    let query = |order, created_at| BackupQuery {
        selector: BackupSelector::Instance("instance".into()),
        order,
        created_at,
        page: PageRequest {
            size: 100,
            token: None,
        },
    };
    let ids = |page: crate::Page<Backup>| page.items.into_iter().map(|b| b.id).collect::<Vec<_>>();

    let desc = catalog
        .list_backups(&query(SortOrder::Descending, vec![]))
        .await
        .unwrap();
    assert_eq!(ids(desc), ["b2", "b1", "b0"]);
    let filtered = catalog
        .list_backups(&query(
            SortOrder::Ascending,
            vec![TimeCondition {
                op: CompareOp::Ge,
                value: base + Duration::minutes(1),
            }],
        ))
        .await
        .unwrap();
    assert_eq!(ids(filtered), ["b1", "b2"]);
    assert!(catalog.get_backup("b3").await.unwrap().deleted);
}

use crate::{ApplicationScope, ApplicationStatus, NewPolicy, PolicyQuery};

fn new_policy(id: &str, folder_id: &str, name: &str) -> NewPolicy {
    NewPolicy {
        id: id.into(),
        folder_id: folder_id.into(),
        name: name.into(),
        enabled: true,
        // Any bytes do: the catalog never decodes the settings.
        settings: vec![0x08, 0x01],
    }
}

fn policy_ids(policies: &[crate::Policy]) -> Vec<&str> {
    policies.iter().map(|p| p.id.as_str()).collect()
}

fn application_pairs(applications: &[crate::PolicyApplication]) -> Vec<(&str, &str)> {
    applications
        .iter()
        .map(|a| (a.policy_id.as_str(), a.compute_instance_id.as_str()))
        .collect()
}

/// Policies keep their settings, names are unique per folder among policies
/// that are not deleted, and a deleted policy leaves the listings.
pub async fn policy_lifecycle(catalog: &dyn Catalog) {
    let created = catalog
        .create_policy(&new_policy("p1", "folder", "daily"))
        .await
        .unwrap();
    assert_eq!(created.id, "p1");
    assert_eq!(created.folder_id, "folder");
    assert_eq!(created.name, "daily");
    assert_eq!(created.settings, vec![0x08, 0x01]);
    assert!(created.enabled);
    assert!(!created.deleted);
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(catalog.get_policy("p1").await.unwrap(), created);

    match catalog
        .create_policy(&new_policy("p2", "folder", "daily"))
        .await
    {
        Err(CatalogError::AlreadyExists { kind, key }) => {
            assert_eq!(kind, "policy");
            assert!(key.contains("daily"), "{key}");
            assert!(key.contains("folder"), "{key}");
        }
        other => panic!("expected AlreadyExists for a taken name, got {other:?}"),
    }
    assert!(matches!(
        catalog
            .create_policy(&new_policy("p1", "other-folder", "weekly"))
            .await,
        Err(CatalogError::AlreadyExists { .. })
    ));
    catalog
        .create_policy(&new_policy("p3", "other-folder", "daily"))
        .await
        .expect("the same name in another folder is allowed");

    let updated = catalog
        .update_policy_settings("p1", &[0x08, 0x02])
        .await
        .unwrap();
    assert_eq!(updated.settings, vec![0x08, 0x02]);
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.updated_at > created.updated_at);
    assert_eq!(catalog.get_policy("p1").await.unwrap(), updated);

    let in_folder = catalog
        .list_policies(&PolicyQuery {
            folder_id: Some("folder".into()),
            compute_instance_id: None,
        })
        .await
        .unwrap();
    assert_eq!(policy_ids(&in_folder), ["p1"]);
    let everywhere = catalog
        .list_policies(&PolicyQuery::default())
        .await
        .unwrap();
    assert_eq!(policy_ids(&everywhere), ["p1", "p3"]);

    catalog.delete_policy("p1").await.unwrap();
    let deleted = catalog.get_policy("p1").await.unwrap();
    assert!(deleted.deleted);
    assert!(deleted.updated_at > updated.updated_at);
    let in_folder = catalog
        .list_policies(&PolicyQuery {
            folder_id: Some("folder".into()),
            compute_instance_id: None,
        })
        .await
        .unwrap();
    assert!(in_folder.is_empty(), "{in_folder:?}");
    assert!(matches!(
        catalog.update_policy_settings("p1", &[0x08, 0x03]).await,
        Err(CatalogError::NotFound { .. })
    ));
    assert!(matches!(
        catalog.delete_policy("p1").await,
        Err(CatalogError::NotFound { .. })
    ));
    catalog
        .create_policy(&new_policy("p4", "folder", "daily"))
        .await
        .expect("the name of a deleted policy is free again");

    assert!(matches!(
        catalog.get_policy("missing").await,
        Err(CatalogError::NotFound { .. })
    ));
    assert!(matches!(
        catalog.delete_policy("missing").await,
        Err(CatalogError::NotFound { .. })
    ));
}

/// Applying is idempotent, applications list by folder, policy and
/// instance, and revoking or deleting the policy removes them.
pub async fn policy_applications(catalog: &dyn Catalog) {
    for (id, folder, name) in [
        ("p1", "folder-a", "daily"),
        ("p2", "folder-a", "weekly"),
        ("p3", "folder-b", "daily"),
    ] {
        catalog
            .create_policy(&new_policy(id, folder, name))
            .await
            .unwrap();
    }

    let first = catalog.apply_policy("p1", "i1").await.unwrap();
    assert_eq!(first.policy_id, "p1");
    assert_eq!(first.compute_instance_id, "i1");
    assert!(first.enabled);
    assert_eq!(first.status, ApplicationStatus::Ok);
    let again = catalog.apply_policy("p1", "i1").await.unwrap();
    assert_eq!(again, first, "applying twice keeps the first application");
    catalog.apply_policy("p2", "i1").await.unwrap();
    catalog.apply_policy("p1", "i2").await.unwrap();
    catalog.apply_policy("p3", "i3").await.unwrap();

    let by_policy = catalog
        .list_policy_applications(&ApplicationScope::Policy("p1".into()))
        .await
        .unwrap();
    assert_eq!(application_pairs(&by_policy), [("p1", "i1"), ("p1", "i2")]);
    let by_instance = catalog
        .list_policy_applications(&ApplicationScope::Instance("i1".into()))
        .await
        .unwrap();
    assert_eq!(
        application_pairs(&by_instance),
        [("p1", "i1"), ("p2", "i1")]
    );
    let by_folder = catalog
        .list_policy_applications(&ApplicationScope::Folder("folder-a".into()))
        .await
        .unwrap();
    assert_eq!(by_folder.len(), 3, "{by_folder:?}");
    let by_other_folder = catalog
        .list_policy_applications(&ApplicationScope::Folder("folder-b".into()))
        .await
        .unwrap();
    assert_eq!(application_pairs(&by_other_folder), [("p3", "i3")]);

    let applied_to_i1 = catalog
        .list_policies(&PolicyQuery {
            folder_id: None,
            compute_instance_id: Some("i1".into()),
        })
        .await
        .unwrap();
    assert_eq!(policy_ids(&applied_to_i1), ["p1", "p2"]);
    let applied_in_other_folder = catalog
        .list_policies(&PolicyQuery {
            folder_id: Some("folder-b".into()),
            compute_instance_id: Some("i1".into()),
        })
        .await
        .unwrap();
    assert!(applied_in_other_folder.is_empty());

    assert_eq!(
        catalog.get_policy_application("p1", "i1").await.unwrap(),
        first
    );
    assert!(matches!(
        catalog.get_policy_application("p3", "i1").await,
        Err(CatalogError::NotFound { .. })
    ));

    catalog.revoke_policy("p2", "i1").await.unwrap();
    assert!(matches!(
        catalog.revoke_policy("p2", "i1").await,
        Err(CatalogError::NotFound { .. })
    ));
    let by_instance = catalog
        .list_policy_applications(&ApplicationScope::Instance("i1".into()))
        .await
        .unwrap();
    assert_eq!(application_pairs(&by_instance), [("p1", "i1")]);

    assert!(matches!(
        catalog.apply_policy("missing", "i1").await,
        Err(CatalogError::NotFound { .. })
    ));

    catalog.delete_policy("p1").await.unwrap();
    let by_policy = catalog
        .list_policy_applications(&ApplicationScope::Policy("p1".into()))
        .await
        .unwrap();
    assert!(by_policy.is_empty(), "{by_policy:?}");
    let by_instance = catalog
        .list_policy_applications(&ApplicationScope::Instance("i2".into()))
        .await
        .unwrap();
    assert!(by_instance.is_empty(), "{by_instance:?}");
    assert!(matches!(
        catalog.get_policy_application("p1", "i1").await,
        Err(CatalogError::NotFound { .. })
    ));
    assert!(matches!(
        catalog.apply_policy("p1", "i1").await,
        Err(CatalogError::NotFound { .. })
    ));
}

#[cfg(test)]
mod sqlite {
    use super::*;
    use crate::SqliteCatalog;

    #[tokio::test]
    async fn sqlite_operation_lifecycle() {
        operation_lifecycle(&SqliteCatalog::in_memory().await.unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_idempotency_key_race() {
        let dir = tempfile::tempdir().unwrap();
        idempotency_key_race(Arc::new(SqliteCatalog::open(dir.path()).await.unwrap())).await;
    }

    #[tokio::test]
    async fn sqlite_resources_page_in_order() {
        resources_page_in_order(&SqliteCatalog::in_memory().await.unwrap()).await;
    }

    #[tokio::test]
    async fn sqlite_backups_filter_and_order() {
        backups_filter_and_order(&SqliteCatalog::in_memory().await.unwrap()).await;
    }

    #[tokio::test]
    async fn sqlite_policy_lifecycle() {
        policy_lifecycle(&SqliteCatalog::in_memory().await.unwrap()).await;
    }

    #[tokio::test]
    async fn sqlite_policy_applications() {
        policy_applications(&SqliteCatalog::in_memory().await.unwrap()).await;
    }
}
