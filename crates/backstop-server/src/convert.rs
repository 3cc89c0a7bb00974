//! Conversions from catalog types to their public protobuf form.

use backstop_catalog as catalog;
use backstop_proto::backup as pb;

/// Converts a catalog timestamp to `google.protobuf.Timestamp`.
pub fn timestamp(at: catalog::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: at.nanosecond() as i32,
    }
}

pub fn backup(b: &catalog::Backup) -> pb::Backup {
    pb::Backup {
        id: b.id.clone(),
        vault_id: String::new(),
        archive_id: b.archive_id.clone(),
        created_at: Some(timestamp(b.created_at)),
        last_seen_at: Some(timestamp(b.last_seen_at)),
        size: b.size,
        deduplicated_size: b.deduplicated_size,
        backed_up_data_size: b.backed_up_data_size,
        original_data_size: b.original_data_size,
        attributes: Some(pb::backup::BackupAttributes {
            stream_name: b.compute_instance_id.clone(),
            uri: format!("backstop://archives/{}/backups/{}", b.archive_id, b.id),
        }),
        compute_instance_id: b.compute_instance_id.clone(),
        disks: b.disks.iter().map(disk).collect(),
        r#type: b.backup_type as i32,
        deleted: b.deleted,
        policy_id: b.policy_id.clone(),
        resource_id: b.resource_id.clone(),
    }
}

fn disk(d: &catalog::Disk) -> pb::Disk {
    pb::Disk {
        device_model: d.device_model.clone(),
        name: d.name.clone(),
        size: d.size,
        volumes: d
            .volumes
            .iter()
            .map(|v| pb::Volume {
                free_space: v.free_space,
                is_bootable: v.is_bootable,
                is_system: v.is_system,
                name: v.name.clone(),
                size: v.size,
                mount_strid: v.mount_strid.clone(),
            })
            .collect(),
    }
}

pub fn archive(a: &catalog::Archive) -> pb::Archive {
    pb::Archive {
        id: a.id.clone(),
        name: a.name.clone(),
        vault_id: String::new(),
        attributes: Some(pb::archive::ArchiveAttributes {
            aaib: String::new(),
            uri: format!("backstop://archives/{}", a.id),
        }),
        size: a.size,
        compressed_data_size: a.compressed_data_size,
        data_size: a.data_size,
        original_data_size: a.original_data_size,
        logical_size: a.logical_size,
        format: a.format,
        created_at: Some(timestamp(a.created_at)),
        updated_at: Some(timestamp(a.updated_at)),
        last_backup_created_at: a.last_backup_created_at.map(timestamp),
        last_seen_at: a.last_seen_at.map(timestamp),
        protected_by_password: false,
        encryption_algorithm: if a.encrypted {
            pb::archive::EncryptionAlgorithm::Aes256 as i32
        } else {
            pb::archive::EncryptionAlgorithm::None as i32
        },
        actions: Vec::new(),
        backup_plan_id: a.policy_id.clone(),
        backup_plan_name: a.policy_name.clone(),
        description: String::new(),
        display_name: a.name.clone(),
        compute_instance_id: a.compute_instance_id.clone(),
        consistent: true,
        deleted: a.deleted,
        resource_id: a.resource_id.clone(),
    }
}

pub fn resource(r: &catalog::Resource) -> pb::Resource {
    pb::Resource {
        compute_instance_id: r.compute_instance_id.clone(),
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        online: r.online,
        enabled: r.enabled,
        status: r.status as i32,
        status_details: r.status_details.clone(),
        status_progress: r.status_progress,
        last_backup_time: r.last_backup_time.map(timestamp),
        next_backup_time: r.next_backup_time.map(timestamp),
        resource_id: r.resource_id.clone(),
        is_active: r.online && r.enabled,
        init_status: r.init_status as i32,
        metadata: r.metadata.clone(),
        r#type: r.resource_type as i32,
        tenant_info: Some(pb::TenantInfo {
            folder_id: r.folder_id.clone(),
            personal_tenant_id: String::new(),
            user_id: String::new(),
        }),
        agent_info: Some(pb::AgentInfo {
            current_version: r.agent_version.clone(),
            latest_version: env!("CARGO_PKG_VERSION").to_owned(),
            can_update: false,
        }),
    }
}

pub fn task(t: &catalog::Task) -> pb::Task {
    pb::Task {
        id: t.id,
        // Cancel works on the task's operation, through OperationService.
        cancellable: t.status != catalog::TaskStatus::Completed,
        policy_id: t.policy_id.clone(),
        r#type: t.task_type as i32,
        progress: Some(pb::Progress {
            current: t.progress_current,
            total: t.progress_total,
        }),
        status: t.status as i32,
        enqueued_at: Some(timestamp(t.enqueued_at)),
        started_at: t.started_at.map(timestamp),
        updated_at: Some(timestamp(t.updated_at)),
        completed_at: t.completed_at.map(timestamp),
        compute_instance_id: t.compute_instance_id.clone(),
        result_code: t.result_code as i32,
        error: t.error.clone(),
    }
}
