//! SQLite queries for agent heartbeats, resource status and tasks.

use sqlx::{sqlite::SqliteRow, Row, SqliteConnection, SqlitePool};

use crate::{
    sqlite::{from_micros, micros, now, opt_from_micros, paginate, parse_page_token},
    Archive, Backup, CatalogError, InstanceDisk, NewTask, Page, PageRequest, RegistrationToken,
    ResourceStatus, Result, Task, TaskCode, TaskStatus, TaskType, Timestamp,
};

/// Statuses of a task that is not finished.
const ACTIVE: &str = "(1, 2, 3, 4)";

pub(crate) async fn insert_task(
    conn: &mut SqliteConnection,
    operation_id: &str,
    task: &NewTask,
) -> Result<Task> {
    let at = micros(now());
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO tasks (operation_id, compute_instance_id, policy_id, task_type, status, enqueued_at, \
         updated_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(operation_id)
    .bind(&task.compute_instance_id)
    .bind(&task.policy_id)
    .bind(task.task_type as i32)
    .bind(TaskStatus::Enqueued as i32)
    .bind(at)
    .bind(at)
    .bind(&task.payload)
    .fetch_one(&mut *conn)
    .await?;
    fetch_task(conn, id).await
}

pub(crate) async fn fetch_task(conn: &mut SqliteConnection, id: i64) -> Result<Task> {
    let row = sqlx::query("SELECT * FROM tasks WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| CatalogError::not_found("task", &id.to_string()))?;
    task_from_row(&row)
}

pub(crate) async fn record_heartbeat(
    pool: &SqlitePool,
    instance: &str,
    at: Timestamp,
    version: &str,
) -> Result<()> {
    let done = sqlx::query(
        "UPDATE resources SET online = 1, last_heartbeat_at = ?, agent_version = ?, updated_at = ? \
         WHERE compute_instance_id = ?",
    )
    .bind(micros(at))
    .bind(version)
    .bind(micros(at))
    .bind(instance)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(CatalogError::not_found("instance", instance));
    }
    Ok(())
}

pub(crate) async fn mark_silent_offline(
    pool: &SqlitePool,
    before: Timestamp,
) -> Result<Vec<String>> {
    let ids = sqlx::query_scalar(
        "UPDATE resources SET online = 0, updated_at = ? \
         WHERE online = 1 AND (last_heartbeat_at IS NULL OR last_heartbeat_at < ?) RETURNING compute_instance_id",
    )
    .bind(micros(now()))
    .bind(micros(before))
    .fetch_all(pool)
    .await?;
    Ok(ids)
}

pub(crate) async fn set_resource_status(
    pool: &SqlitePool,
    instance: &str,
    status: ResourceStatus,
    progress: i64,
    details: &str,
) -> Result<()> {
    let done = sqlx::query(
        "UPDATE resources SET status = ?, status_progress = ?, status_details = ?, updated_at = ? \
         WHERE compute_instance_id = ?",
    )
    .bind(status as i32)
    .bind(progress)
    .bind(details)
    .bind(micros(now()))
    .bind(instance)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(CatalogError::not_found("instance", instance));
    }
    Ok(())
}

pub(crate) async fn set_resource_progress(
    pool: &SqlitePool,
    instance: &str,
    task_id: i64,
    status: ResourceStatus,
    progress: i64,
) -> Result<()> {
    // One statement checks the task and updates the resource, so a task
    // finishing in between cannot be overwritten.
    sqlx::query(&format!(
        "UPDATE resources SET status = ?, status_progress = ?, status_details = '', updated_at = ? \
         WHERE compute_instance_id = ? AND EXISTS (SELECT 1 FROM tasks WHERE id = ? AND status IN {ACTIVE})"
    ))
    .bind(status as i32)
    .bind(progress)
    .bind(micros(now()))
    .bind(instance)
    .bind(task_id)
    .execute(pool)
    .await?;
    Ok(())
}

pub(crate) async fn get_task(pool: &SqlitePool, id: i64) -> Result<Task> {
    let mut conn = pool.acquire().await?;
    fetch_task(&mut conn, id).await
}

pub(crate) async fn get_task_by_operation(pool: &SqlitePool, operation_id: &str) -> Result<Task> {
    let row = sqlx::query("SELECT * FROM tasks WHERE operation_id = ? ORDER BY id DESC LIMIT 1")
        .bind(operation_id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| CatalogError::not_found("task of operation", operation_id))?;
    task_from_row(&row)
}

pub(crate) async fn active_task(pool: &SqlitePool, instance: &str) -> Result<Option<Task>> {
    let row = sqlx::query(&format!(
        "SELECT * FROM tasks WHERE compute_instance_id = ? AND status IN {ACTIVE} ORDER BY id LIMIT 1"
    ))
    .bind(instance)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(task_from_row).transpose()
}

pub(crate) async fn claim_next_task(pool: &SqlitePool, instance: &str) -> Result<Option<Task>> {
    // One UPDATE picks and claims the task, so two pollers of the same
    // instance cannot both receive it.
    let at = micros(now());
    let row = sqlx::query(
        "UPDATE tasks SET status = ?, started_at = ?, updated_at = ? WHERE id = (\
         SELECT id FROM tasks WHERE compute_instance_id = ? AND status = ? ORDER BY id LIMIT 1) RETURNING *",
    )
    .bind(TaskStatus::Assigned as i32)
    .bind(at)
    .bind(at)
    .bind(instance)
    .bind(TaskStatus::Enqueued as i32)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(task_from_row).transpose()
}

pub(crate) async fn requeue_task(pool: &SqlitePool, id: i64, payload: &str) -> Result<Task> {
    let mut conn = pool.acquire().await?;
    sqlx::query(&format!(
        "UPDATE tasks SET status = ?, payload = ?, updated_at = ? WHERE id = ? AND status IN {ACTIVE}"
    ))
    .bind(TaskStatus::Enqueued as i32)
    .bind(payload)
    .bind(micros(now()))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    fetch_task(&mut conn, id).await
}

pub(crate) async fn update_task_progress(
    pool: &SqlitePool,
    id: i64,
    current: i64,
    total: i64,
) -> Result<Task> {
    let mut conn = pool.acquire().await?;
    sqlx::query(&format!(
        "UPDATE tasks SET status = ?, progress_current = MAX(progress_current, ?), progress_total = ?, \
         updated_at = ? WHERE id = ? AND status IN {ACTIVE}"
    ))
    .bind(TaskStatus::Started as i32)
    .bind(current)
    .bind(total)
    .bind(micros(now()))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    fetch_task(&mut conn, id).await
}

pub(crate) async fn finish_task(
    pool: &SqlitePool,
    id: i64,
    code: TaskCode,
    error: &str,
) -> Result<Task> {
    let mut conn = pool.acquire().await?;
    let at = micros(now());
    sqlx::query(&format!(
        "UPDATE tasks SET status = ?, result_code = ?, error = ?, completed_at = ?, updated_at = ?, \
         progress_current = CASE WHEN ? = {ok} THEN progress_total ELSE progress_current END \
         WHERE id = ? AND status IN {ACTIVE}",
        ok = TaskCode::Ok as i32
    ))
    .bind(TaskStatus::Completed as i32)
    .bind(code as i32)
    .bind(error)
    .bind(at)
    .bind(at)
    .bind(code as i32)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    fetch_task(&mut conn, id).await
}

pub(crate) async fn list_tasks(
    pool: &SqlitePool,
    instance: &str,
    page: &PageRequest,
) -> Result<Page<Task>> {
    let rows = match parse_page_token(page)? {
        // Task ids grow with time, so the id alone orders and pages them.
        Some((_, after)) => {
            let after: i64 = after.parse().map_err(|_| {
                CatalogError::InvalidPageToken(page.token.clone().unwrap_or_default())
            })?;
            sqlx::query("SELECT * FROM tasks WHERE compute_instance_id = ? AND id < ? ORDER BY id DESC LIMIT ?")
                .bind(instance)
                .bind(after)
                .bind(page.size as i64 + 1)
                .fetch_all(pool)
                .await?
        }
        None => {
            sqlx::query(
                "SELECT * FROM tasks WHERE compute_instance_id = ? ORDER BY id DESC LIMIT ?",
            )
            .bind(instance)
            .bind(page.size as i64 + 1)
            .fetch_all(pool)
            .await?
        }
    };
    let items = rows.iter().map(task_from_row).collect::<Result<Vec<_>>>()?;
    Ok(paginate(items, page.size, |t| format!("0.{}", t.id)))
}

pub(crate) async fn insert_registration_token(
    pool: &SqlitePool,
    token: &RegistrationToken,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO registration_tokens (id, folder_id, created_by, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&token.id)
    .bind(&token.folder_id)
    .bind(&token.created_by)
    .bind(micros(token.created_at))
    .bind(micros(token.expires_at))
    .execute(pool)
    .await?;
    Ok(())
}

pub(crate) async fn get_registration_token(
    pool: &SqlitePool,
    id: &str,
) -> Result<RegistrationToken> {
    let row = sqlx::query("SELECT * FROM registration_tokens WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| CatalogError::not_found("registration token", id))?;
    Ok(RegistrationToken {
        id: row.try_get("id")?,
        folder_id: row.try_get("folder_id")?,
        created_by: row.try_get("created_by")?,
        created_at: from_micros(row.try_get("created_at")?)?,
        expires_at: from_micros(row.try_get("expires_at")?)?,
    })
}

pub(crate) async fn list_active_tasks(pool: &SqlitePool) -> Result<Vec<Task>> {
    let rows = sqlx::query(&format!(
        "SELECT * FROM tasks WHERE status IN {ACTIVE} ORDER BY id"
    ))
    .fetch_all(pool)
    .await?;
    rows.iter().map(task_from_row).collect()
}

pub(crate) async fn mark_backup_deleted(pool: &SqlitePool, id: &str) -> Result<()> {
    let done = sqlx::query("UPDATE backups SET deleted = 1 WHERE id = ?")
        .bind(id)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(CatalogError::not_found("backup", id));
    }
    Ok(())
}

pub(crate) async fn mark_archive_deleted(pool: &SqlitePool, id: &str) -> Result<()> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query("UPDATE archives SET deleted = 1, updated_at = ? WHERE id = ?")
        .bind(micros(now()))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(CatalogError::not_found("archive", id));
    }
    sqlx::query("UPDATE backups SET deleted = 1 WHERE archive_id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn record_backup(
    pool: &SqlitePool,
    archive: &Archive,
    backup: &Backup,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    crate::sqlite::upsert_archive_in(&mut tx, archive).await?;
    crate::sqlite::insert_backup_in(&mut tx, backup).await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn set_instance_disks(
    pool: &SqlitePool,
    instance: &str,
    disks: &[InstanceDisk],
) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM instance_disks WHERE compute_instance_id = ?")
        .bind(instance)
        .execute(&mut *tx)
        .await?;
    for (position, disk) in disks.iter().enumerate() {
        sqlx::query(
            "INSERT INTO instance_disks (compute_instance_id, position, name, size, device_model) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(instance)
        .bind(position as i64)
        .bind(&disk.name)
        .bind(disk.size)
        .bind(&disk.device_model)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn list_instance_disks(
    pool: &SqlitePool,
    instance: &str,
) -> Result<Vec<InstanceDisk>> {
    let rows =
        sqlx::query("SELECT * FROM instance_disks WHERE compute_instance_id = ? ORDER BY position")
            .bind(instance)
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(|row| {
            Ok(InstanceDisk {
                name: row.try_get("name")?,
                size: row.try_get("size")?,
                device_model: row.try_get("device_model")?,
            })
        })
        .collect()
}

fn task_from_row(row: &SqliteRow) -> Result<Task> {
    let task_type: i32 = row.try_get("task_type")?;
    let status: i32 = row.try_get("status")?;
    let code: i32 = row.try_get("result_code")?;
    Ok(Task {
        id: row.try_get("id")?,
        operation_id: row.try_get("operation_id")?,
        compute_instance_id: row.try_get("compute_instance_id")?,
        policy_id: row.try_get("policy_id")?,
        task_type: TaskType::from_i32(task_type)
            .ok_or_else(|| CatalogError::Corrupt(format!("task type {task_type}")))?,
        status: TaskStatus::from_i32(status)
            .ok_or_else(|| CatalogError::Corrupt(format!("task status {status}")))?,
        progress_current: row.try_get("progress_current")?,
        progress_total: row.try_get("progress_total")?,
        enqueued_at: from_micros(row.try_get("enqueued_at")?)?,
        started_at: opt_from_micros(row.try_get("started_at")?)?,
        updated_at: from_micros(row.try_get("updated_at")?)?,
        completed_at: opt_from_micros(row.try_get("completed_at")?)?,
        result_code: TaskCode::from_i32(code)
            .ok_or_else(|| CatalogError::Corrupt(format!("task code {code}")))?,
        error: row.try_get("error")?,
        payload: row.try_get("payload")?,
    })
}
