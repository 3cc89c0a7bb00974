//! The embedded SQLite backend of the catalog.
//!
//! One database file, `catalog.db`, in WAL mode so readers never wait for the
//! writer. Migrations under `migrations/sqlite` run at open; each is one file
//! and is never edited once released.

use std::{path::Path, str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
    QueryBuilder, Row, Sqlite, SqlitePool,
};
use time::OffsetDateTime;

use crate::{
    ids::new_api_id, sqlite_tasks, AnyMessage, Archive, ArchiveScope, Backup, BackupQuery,
    BackupSelector, BackupType, Catalog, CatalogError, CreatedOperation, IdempotencyKey,
    InitStatus, NewOperation, Operation, OperationError, OperationResult, Page, PageRequest,
    Resource, ResourceQuery, ResourceStatus, ResourceType, Result, SortOrder, Task, TaskCode,
    Timestamp,
};

/// The catalog in an SQLite database file.
#[derive(Clone, Debug)]
pub struct SqliteCatalog {
    pool: SqlitePool,
}

impl SqliteCatalog {
    /// Opens (creating if needed) `catalog.db` in `data_dir` and applies
    /// pending migrations.
    pub async fn open(data_dir: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join("catalog.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL makes every commit durable across a power loss, which the
            // operation contract ("done only after durable") relies on.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        Self::connect(options).await
    }

    /// Opens a private in-memory catalog, for tests.
    pub async fn in_memory() -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        Self::connect(options).await
    }

    async fn connect(options: SqliteConnectOptions) -> Result<Self> {
        let in_memory = options.get_filename().as_os_str() == ":memory:";
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists per connection, so it must have
            // exactly one that never closes.
            .max_connections(if in_memory { 1 } else { 8 })
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Catalog for SqliteCatalog {
    async fn create_operation(&self, new: NewOperation) -> Result<CreatedOperation> {
        // BEGIN IMMEDIATE takes the write lock first, so two calls with the
        // same idempotency key cannot both miss the key and insert.
        let mut conn = self.pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let result = async {
            if let Some(key) = &new.idempotency {
                let existing: Option<String> = sqlx::query_scalar(
                    "SELECT operation_id FROM idempotency_keys WHERE subject = ? AND method = ? AND key = ?",
                )
                .bind(&key.subject)
                .bind(&key.method)
                .bind(&key.key)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(id) = existing {
                    let operation = fetch_operation(&mut conn, &id).await?;
                    return Ok(CreatedOperation { operation, created: false, task: None });
                }
            }

            let now = now();
            let id = new_api_id();
            sqlx::query(
                "INSERT INTO operations (id, description, created_at, created_by, modified_at, done, \
                 metadata_type, metadata_value, resource_id) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)",
            )
            .bind(&id)
            .bind(&new.description)
            .bind(micros(now))
            .bind(&new.created_by)
            .bind(micros(now))
            .bind(&new.metadata.type_url)
            .bind(&new.metadata.value)
            .bind(&new.resource_id)
            .execute(&mut *conn)
            .await?;
            if let Some(key) = &new.idempotency {
                sqlx::query(
                    "INSERT INTO idempotency_keys (subject, method, key, operation_id, created_at) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(&key.subject)
                .bind(&key.method)
                .bind(&key.key)
                .bind(&id)
                .bind(micros(now))
                .execute(&mut *conn)
                .await?;
            }
            let task = match &new.task {
                Some(task) => Some(crate::sqlite_tasks::insert_task(&mut conn, &id, task).await?),
                None => None,
            };
            let operation = fetch_operation(&mut conn, &id).await?;
            Ok(CreatedOperation { operation, created: true, task })
        }
        .await;

        match result {
            Ok(created) => {
                sqlx::query("COMMIT").execute(&mut *conn).await?;
                Ok(created)
            }
            Err(error) => {
                // The connection goes back to the pool, so it must not keep
                // an open transaction; the original error matters more than
                // a failed rollback.
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                Err(error)
            }
        }
    }

    async fn get_operation(&self, id: &str) -> Result<Operation> {
        let mut conn = self.pool.acquire().await?;
        fetch_operation(&mut conn, id).await
    }

    async fn find_idempotent_operation(&self, key: &IdempotencyKey) -> Result<Option<Operation>> {
        let mut conn = self.pool.acquire().await?;
        let id: Option<String> = sqlx::query_scalar(
            "SELECT operation_id FROM idempotency_keys WHERE subject = ? AND method = ? AND key = ?",
        )
        .bind(&key.subject)
        .bind(&key.method)
        .bind(&key.key)
        .fetch_optional(&mut *conn)
        .await?;
        match id {
            Some(id) => Ok(Some(fetch_operation(&mut conn, &id).await?)),
            None => Ok(None),
        }
    }

    async fn update_operation_metadata(&self, id: &str, metadata: AnyMessage) -> Result<Operation> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE operations SET metadata_type = ?, metadata_value = ?, \
             modified_at = MAX(modified_at + 1, ?) WHERE id = ? AND done = 0",
        )
        .bind(&metadata.type_url)
        .bind(&metadata.value)
        .bind(micros(now()))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let operation = fetch_operation(&mut tx, id).await?;
        tx.commit().await?;
        Ok(operation)
    }

    async fn finish_operation(&self, id: &str, result: OperationResult) -> Result<Operation> {
        let mut tx = self.pool.begin().await?;
        let query = match &result {
            OperationResult::Error(error) => {
                let details = serde_json::to_string(
                    &error
                        .details
                        .iter()
                        .map(|d| (d.type_url.as_str(), hex_encode(&d.value)))
                        .collect::<Vec<_>>(),
                )
                .map_err(|e| CatalogError::Corrupt(e.to_string()))?;
                sqlx::query(
                    "UPDATE operations SET done = 1, error_code = ?, error_message = ?, error_details = ?, \
                     modified_at = MAX(modified_at + 1, ?) WHERE id = ? AND done = 0",
                )
                .bind(error.code)
                .bind(error.message.clone())
                .bind(details)
            }
            OperationResult::Response(response) => sqlx::query(
                "UPDATE operations SET done = 1, response_type = ?, response_value = ?, \
                 modified_at = MAX(modified_at + 1, ?) WHERE id = ? AND done = 0",
            )
            .bind(response.type_url.clone())
            .bind(response.value.clone()),
        };
        query.bind(micros(now())).bind(id).execute(&mut *tx).await?;
        let operation = fetch_operation(&mut tx, id).await?;
        tx.commit().await?;
        Ok(operation)
    }

    async fn request_cancel(&self, id: &str) -> Result<Operation> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE operations SET cancel_requested = 1, modified_at = MAX(modified_at + 1, ?) \
             WHERE id = ? AND done = 0 AND cancel_requested = 0",
        )
        .bind(micros(now()))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let operation = fetch_operation(&mut tx, id).await?;
        tx.commit().await?;
        Ok(operation)
    }

    async fn list_operations_of(
        &self,
        resource_id: &str,
        page: &PageRequest,
    ) -> Result<Page<Operation>> {
        let mut sql = QueryBuilder::<Sqlite>::new("SELECT * FROM operations WHERE resource_id = ");
        sql.push_bind(resource_id);
        if let Some((at, id)) = parse_page_token(page)? {
            sql.push(" AND (created_at < ")
                .push_bind(at)
                .push(" OR (created_at = ")
                .push_bind(at)
                .push(" AND id < ")
                .push_bind(id)
                .push("))");
        }
        sql.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(page.size as i64 + 1);
        let rows = sql.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(operation_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(paginate(items, page.size, |o| {
            page_token(o.created_at, &o.id)
        }))
    }

    async fn list_unfinished_operations(&self) -> Result<Vec<Operation>> {
        let rows = sqlx::query("SELECT * FROM operations WHERE done = 0 ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(operation_from_row).collect()
    }

    async fn expire_idempotency_keys(&self, before: Timestamp) -> Result<u64> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
            .bind(micros(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn upsert_resource(&self, r: &Resource) -> Result<()> {
        sqlx::query(
            "INSERT INTO resources (compute_instance_id, resource_id, folder_id, created_at, updated_at, online, \
             enabled, status, status_details, status_progress, last_backup_time, next_backup_time, init_status, \
             metadata, resource_type, agent_version, last_heartbeat_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (compute_instance_id) DO UPDATE SET resource_id = excluded.resource_id, \
             folder_id = excluded.folder_id, updated_at = excluded.updated_at, online = excluded.online, \
             enabled = excluded.enabled, status = excluded.status, status_details = excluded.status_details, \
             status_progress = excluded.status_progress, last_backup_time = excluded.last_backup_time, \
             next_backup_time = excluded.next_backup_time, init_status = excluded.init_status, \
             metadata = excluded.metadata, resource_type = excluded.resource_type, \
             agent_version = excluded.agent_version, last_heartbeat_at = excluded.last_heartbeat_at",
        )
        .bind(&r.compute_instance_id)
        .bind(&r.resource_id)
        .bind(&r.folder_id)
        .bind(micros(r.created_at))
        .bind(micros(r.updated_at))
        .bind(r.online)
        .bind(r.enabled)
        .bind(r.status as i32)
        .bind(&r.status_details)
        .bind(r.status_progress)
        .bind(r.last_backup_time.map(micros))
        .bind(r.next_backup_time.map(micros))
        .bind(r.init_status as i32)
        .bind(&r.metadata)
        .bind(r.resource_type as i32)
        .bind(&r.agent_version)
        .bind(r.last_heartbeat_at.map(micros))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_resource(&self, compute_instance_id: &str) -> Result<Resource> {
        let row = sqlx::query("SELECT * FROM resources WHERE compute_instance_id = ?")
            .bind(compute_instance_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| CatalogError::not_found("instance", compute_instance_id))?;
        resource_from_row(&row)
    }

    async fn list_resources(&self, query: &ResourceQuery) -> Result<Page<Resource>> {
        let mut sql = QueryBuilder::<Sqlite>::new("SELECT * FROM resources WHERE folder_id = ");
        sql.push_bind(&query.folder_id);
        if let Some(kind) = query.resource_type {
            sql.push(" AND resource_type = ").push_bind(kind as i32);
        }
        let after = parse_page_token(&query.page)?;
        if let Some((at, id)) = &after {
            sql.push(" AND (created_at > ")
                .push_bind(*at)
                .push(" OR (created_at = ")
                .push_bind(*at)
                .push(" AND compute_instance_id > ")
                .push_bind(id.clone())
                .push("))");
        }
        sql.push(" ORDER BY created_at, compute_instance_id LIMIT ")
            .push_bind(query.page.size as i64 + 1);
        let rows = sql.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(resource_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(paginate(items, query.page.size, |r| {
            page_token(r.created_at, &r.compute_instance_id)
        }))
    }

    async fn upsert_archive(&self, a: &Archive) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        upsert_archive_in(&mut conn, a).await
    }

    async fn get_archive(&self, id: &str) -> Result<Archive> {
        let row = sqlx::query("SELECT * FROM archives WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| CatalogError::not_found("archive", id))?;
        archive_from_row(&row)
    }

    async fn list_archives(&self, scope: &ArchiveScope) -> Result<Vec<Archive>> {
        let (column, value) = match scope {
            ArchiveScope::Folder(folder) => ("folder_id", folder),
            ArchiveScope::Instance(instance) => ("compute_instance_id", instance),
        };
        let rows = sqlx::query(&format!(
            "SELECT * FROM archives WHERE {column} = ? AND deleted = 0 ORDER BY created_at, id"
        ))
        .bind(value)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(archive_from_row).collect()
    }

    async fn insert_backup(&self, b: &Backup) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        insert_backup_in(&mut conn, b).await
    }

    async fn get_backup(&self, id: &str) -> Result<Backup> {
        let row = sqlx::query("SELECT * FROM backups WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| CatalogError::not_found("backup", id))?;
        backup_from_row(&row)
    }

    async fn list_backups(&self, query: &BackupQuery) -> Result<Page<Backup>> {
        let mut sql = QueryBuilder::<Sqlite>::new("SELECT * FROM backups WHERE deleted = 0");
        match &query.selector {
            BackupSelector::Instance(id) => {
                sql.push(" AND compute_instance_id = ")
                    .push_bind(id.clone());
            }
            BackupSelector::Archive {
                archive_id,
                folder_id,
            } => {
                sql.push(" AND archive_id = ").push_bind(archive_id.clone());
                sql.push(" AND folder_id = ").push_bind(folder_id.clone());
            }
            BackupSelector::Folder(id) => {
                sql.push(" AND folder_id = ").push_bind(id.clone());
            }
            BackupSelector::InstancePolicy {
                compute_instance_id,
                policy_id,
            } => {
                if let Some(id) = compute_instance_id {
                    sql.push(" AND compute_instance_id = ")
                        .push_bind(id.clone());
                }
                if let Some(id) = policy_id {
                    sql.push(" AND policy_id = ").push_bind(id.clone());
                }
            }
            BackupSelector::Resource(id) => {
                sql.push(" AND resource_id = ").push_bind(id.clone());
            }
            BackupSelector::Policy(id) => {
                sql.push(" AND policy_id = ").push_bind(id.clone());
            }
            BackupSelector::Backup {
                backup_id,
                folder_id,
            } => {
                sql.push(" AND id = ").push_bind(backup_id.clone());
                sql.push(" AND folder_id = ").push_bind(folder_id.clone());
            }
        }
        for condition in &query.created_at {
            sql.push(format!(" AND created_at {} ", condition.op.sql()))
                .push_bind(micros(condition.value));
        }

        let (cmp, dir) = match query.order {
            SortOrder::Descending => ("<", "DESC"),
            SortOrder::Ascending => (">", "ASC"),
        };
        if let Some((at, id)) = parse_page_token(&query.page)? {
            sql.push(format!(" AND (created_at {cmp} "))
                .push_bind(at)
                .push(" OR (created_at = ")
                .push_bind(at)
                .push(format!(" AND id {cmp} "))
                .push_bind(id)
                .push("))");
        }
        sql.push(format!(" ORDER BY created_at {dir}, id {dir} LIMIT "))
            .push_bind(query.page.size as i64 + 1);

        let rows = sql.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(backup_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(paginate(items, query.page.size, |b| {
            page_token(b.created_at, &b.id)
        }))
    }

    async fn activate_provider(&self, folder_id: &str, name: &str) -> Result<()> {
        sqlx::query("INSERT OR IGNORE INTO activated_providers (folder_id, name, activated_at) VALUES (?, ?, ?)")
            .bind(folder_id)
            .bind(name)
            .bind(micros(now()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_activated_providers(&self, folder_id: &str) -> Result<Vec<String>> {
        let names = sqlx::query_scalar(
            "SELECT name FROM activated_providers WHERE folder_id = ? ORDER BY name",
        )
        .bind(folder_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(names)
    }

    async fn record_heartbeat(
        &self,
        compute_instance_id: &str,
        at: Timestamp,
        agent_version: &str,
    ) -> Result<()> {
        sqlite_tasks::record_heartbeat(&self.pool, compute_instance_id, at, agent_version).await
    }

    async fn mark_silent_offline(&self, before: Timestamp) -> Result<Vec<String>> {
        sqlite_tasks::mark_silent_offline(&self.pool, before).await
    }

    async fn set_resource_status(
        &self,
        compute_instance_id: &str,
        status: ResourceStatus,
        progress: i64,
        details: &str,
    ) -> Result<()> {
        sqlite_tasks::set_resource_status(
            &self.pool,
            compute_instance_id,
            status,
            progress,
            details,
        )
        .await
    }

    async fn set_resource_progress(
        &self,
        compute_instance_id: &str,
        task_id: i64,
        status: ResourceStatus,
        progress: i64,
    ) -> Result<()> {
        sqlite_tasks::set_resource_progress(
            &self.pool,
            compute_instance_id,
            task_id,
            status,
            progress,
        )
        .await
    }

    async fn get_task(&self, id: i64) -> Result<Task> {
        sqlite_tasks::get_task(&self.pool, id).await
    }

    async fn get_task_by_operation(&self, operation_id: &str) -> Result<Task> {
        sqlite_tasks::get_task_by_operation(&self.pool, operation_id).await
    }

    async fn active_task(&self, compute_instance_id: &str) -> Result<Option<Task>> {
        sqlite_tasks::active_task(&self.pool, compute_instance_id).await
    }

    async fn claim_next_task(&self, compute_instance_id: &str) -> Result<Option<Task>> {
        sqlite_tasks::claim_next_task(&self.pool, compute_instance_id).await
    }

    async fn requeue_task(&self, id: i64, payload: &str) -> Result<Task> {
        sqlite_tasks::requeue_task(&self.pool, id, payload).await
    }

    async fn update_task_progress(&self, id: i64, current: i64, total: i64) -> Result<Task> {
        sqlite_tasks::update_task_progress(&self.pool, id, current, total).await
    }

    async fn finish_task(&self, id: i64, code: TaskCode, error: &str) -> Result<Task> {
        sqlite_tasks::finish_task(&self.pool, id, code, error).await
    }

    async fn list_tasks(
        &self,
        compute_instance_id: &str,
        page: &PageRequest,
    ) -> Result<Page<Task>> {
        sqlite_tasks::list_tasks(&self.pool, compute_instance_id, page).await
    }

    async fn insert_registration_token(&self, token: &crate::RegistrationToken) -> Result<()> {
        sqlite_tasks::insert_registration_token(&self.pool, token).await
    }

    async fn get_registration_token(&self, id: &str) -> Result<crate::RegistrationToken> {
        sqlite_tasks::get_registration_token(&self.pool, id).await
    }

    async fn list_active_tasks(&self) -> Result<Vec<Task>> {
        sqlite_tasks::list_active_tasks(&self.pool).await
    }

    async fn mark_backup_deleted(&self, id: &str) -> Result<()> {
        sqlite_tasks::mark_backup_deleted(&self.pool, id).await
    }

    async fn mark_archive_deleted(&self, id: &str) -> Result<()> {
        sqlite_tasks::mark_archive_deleted(&self.pool, id).await
    }

    async fn record_backup(&self, archive: &Archive, backup: &Backup) -> Result<()> {
        sqlite_tasks::record_backup(&self.pool, archive, backup).await
    }

    async fn set_instance_disks(
        &self,
        compute_instance_id: &str,
        disks: &[crate::InstanceDisk],
    ) -> Result<()> {
        sqlite_tasks::set_instance_disks(&self.pool, compute_instance_id, disks).await
    }

    async fn list_instance_disks(
        &self,
        compute_instance_id: &str,
    ) -> Result<Vec<crate::InstanceDisk>> {
        sqlite_tasks::list_instance_disks(&self.pool, compute_instance_id).await
    }

    async fn create_policy(&self, new: &crate::NewPolicy) -> Result<crate::Policy> {
        crate::sqlite_policies::create_policy(&self.pool, new).await
    }

    async fn get_policy(&self, id: &str) -> Result<crate::Policy> {
        crate::sqlite_policies::get_policy(&self.pool, id).await
    }

    async fn list_policies(&self, query: &crate::PolicyQuery) -> Result<Vec<crate::Policy>> {
        crate::sqlite_policies::list_policies(&self.pool, query).await
    }

    async fn update_policy_settings(&self, id: &str, settings: &[u8]) -> Result<crate::Policy> {
        crate::sqlite_policies::update_policy_settings(&self.pool, id, settings).await
    }

    async fn delete_policy(&self, id: &str) -> Result<()> {
        crate::sqlite_policies::delete_policy(&self.pool, id).await
    }

    async fn apply_policy(
        &self,
        policy_id: &str,
        compute_instance_id: &str,
    ) -> Result<crate::PolicyApplication> {
        crate::sqlite_policies::apply_policy(&self.pool, policy_id, compute_instance_id).await
    }

    async fn revoke_policy(&self, policy_id: &str, compute_instance_id: &str) -> Result<()> {
        crate::sqlite_policies::revoke_policy(&self.pool, policy_id, compute_instance_id).await
    }

    async fn get_policy_application(
        &self,
        policy_id: &str,
        compute_instance_id: &str,
    ) -> Result<crate::PolicyApplication> {
        crate::sqlite_policies::get_policy_application(&self.pool, policy_id, compute_instance_id)
            .await
    }

    async fn list_policy_applications(
        &self,
        scope: &crate::ApplicationScope,
    ) -> Result<Vec<crate::PolicyApplication>> {
        crate::sqlite_policies::list_policy_applications(&self.pool, scope).await
    }
}

pub(crate) fn now() -> Timestamp {
    OffsetDateTime::now_utc()
}

pub(crate) fn micros(at: Timestamp) -> i64 {
    (at.unix_timestamp_nanos() / 1_000) as i64
}

pub(crate) fn from_micros(value: i64) -> Result<Timestamp> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(value) * 1_000)
        .map_err(|e| CatalogError::Corrupt(format!("timestamp {value}: {e}")))
}

pub(crate) fn opt_from_micros(value: Option<i64>) -> Result<Option<Timestamp>> {
    value.map(from_micros).transpose()
}

/// Encodes the position after the last item of a page: creation time and id.
fn page_token(created_at: Timestamp, id: &str) -> String {
    format!("{}.{}", micros(created_at), id)
}

pub(crate) fn parse_page_token(page: &PageRequest) -> Result<Option<(i64, String)>> {
    let Some(token) = page.token.as_deref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let invalid = || CatalogError::InvalidPageToken(token.to_owned());
    let (at, id) = token.split_once('.').ok_or_else(invalid)?;
    let at = at.parse::<i64>().map_err(|_| invalid())?;
    if id.is_empty() {
        return Err(invalid());
    }
    Ok(Some((at, id.to_owned())))
}

/// Cuts a listing fetched with one extra row to `size` items, setting the
/// next page token when the extra row shows that more follow.
pub(crate) fn paginate<T>(
    mut items: Vec<T>,
    size: usize,
    token_of: impl Fn(&T) -> String,
) -> Page<T> {
    let next_page_token = if items.len() > size {
        items.truncate(size);
        items.last().map(&token_of)
    } else {
        None
    };
    Page {
        items,
        next_page_token,
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return Err(CatalogError::Corrupt(format!("odd-length hex {text:?}")));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16)
                .map_err(|e| CatalogError::Corrupt(format!("hex {text:?}: {e}")))
        })
        .collect()
}

async fn fetch_operation(conn: &mut sqlx::SqliteConnection, id: &str) -> Result<Operation> {
    let row = sqlx::query("SELECT * FROM operations WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| CatalogError::not_found("operation", id))?;
    operation_from_row(&row)
}

fn operation_from_row(row: &SqliteRow) -> Result<Operation> {
    let error_code: Option<i32> = row.try_get("error_code")?;
    let response_type: Option<String> = row.try_get("response_type")?;
    let result = match (error_code, response_type) {
        (Some(code), _) => {
            let details_json: Option<String> = row.try_get("error_details")?;
            let pairs: Vec<(String, String)> = match details_json {
                Some(text) => {
                    serde_json::from_str(&text).map_err(|e| CatalogError::Corrupt(e.to_string()))?
                }
                None => Vec::new(),
            };
            let details = pairs
                .into_iter()
                .map(|(type_url, hex)| {
                    Ok(AnyMessage {
                        type_url,
                        value: hex_decode(&hex)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Some(OperationResult::Error(OperationError {
                code,
                message: row
                    .try_get::<Option<String>, _>("error_message")?
                    .unwrap_or_default(),
                details,
            }))
        }
        (None, Some(type_url)) => Some(OperationResult::Response(AnyMessage {
            type_url,
            value: row
                .try_get::<Option<Vec<u8>>, _>("response_value")?
                .unwrap_or_default(),
        })),
        (None, None) => None,
    };
    Ok(Operation {
        id: row.try_get("id")?,
        description: row.try_get("description")?,
        created_at: from_micros(row.try_get("created_at")?)?,
        created_by: row.try_get("created_by")?,
        modified_at: from_micros(row.try_get("modified_at")?)?,
        done: row.try_get("done")?,
        metadata: AnyMessage {
            type_url: row.try_get("metadata_type")?,
            value: row.try_get("metadata_value")?,
        },
        result,
        cancel_requested: row.try_get("cancel_requested")?,
        resource_id: row.try_get("resource_id")?,
    })
}

fn resource_from_row(row: &SqliteRow) -> Result<Resource> {
    let status: i32 = row.try_get("status")?;
    let init_status: i32 = row.try_get("init_status")?;
    let resource_type: i32 = row.try_get("resource_type")?;
    Ok(Resource {
        compute_instance_id: row.try_get("compute_instance_id")?,
        resource_id: row.try_get("resource_id")?,
        folder_id: row.try_get("folder_id")?,
        created_at: from_micros(row.try_get("created_at")?)?,
        updated_at: from_micros(row.try_get("updated_at")?)?,
        online: row.try_get("online")?,
        enabled: row.try_get("enabled")?,
        status: ResourceStatus::from_i32(status)
            .ok_or_else(|| CatalogError::Corrupt(format!("resource status {status}")))?,
        status_details: row.try_get("status_details")?,
        status_progress: row.try_get("status_progress")?,
        last_backup_time: opt_from_micros(row.try_get("last_backup_time")?)?,
        next_backup_time: opt_from_micros(row.try_get("next_backup_time")?)?,
        init_status: InitStatus::from_i32(init_status)
            .ok_or_else(|| CatalogError::Corrupt(format!("resource init status {init_status}")))?,
        metadata: row.try_get("metadata")?,
        resource_type: ResourceType::from_i32(resource_type)
            .ok_or_else(|| CatalogError::Corrupt(format!("resource type {resource_type}")))?,
        agent_version: row.try_get("agent_version")?,
        last_heartbeat_at: opt_from_micros(row.try_get("last_heartbeat_at")?)?,
    })
}

fn archive_from_row(row: &SqliteRow) -> Result<Archive> {
    Ok(Archive {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        folder_id: row.try_get("folder_id")?,
        compute_instance_id: row.try_get("compute_instance_id")?,
        resource_id: row.try_get("resource_id")?,
        policy_id: row.try_get("policy_id")?,
        policy_name: row.try_get("policy_name")?,
        size: row.try_get("size")?,
        compressed_data_size: row.try_get("compressed_data_size")?,
        data_size: row.try_get("data_size")?,
        original_data_size: row.try_get("original_data_size")?,
        logical_size: row.try_get("logical_size")?,
        format: row.try_get("format")?,
        created_at: from_micros(row.try_get("created_at")?)?,
        updated_at: from_micros(row.try_get("updated_at")?)?,
        last_backup_created_at: opt_from_micros(row.try_get("last_backup_created_at")?)?,
        last_seen_at: opt_from_micros(row.try_get("last_seen_at")?)?,
        encrypted: row.try_get("encrypted")?,
        deleted: row.try_get("deleted")?,
    })
}

fn backup_from_row(row: &SqliteRow) -> Result<Backup> {
    let backup_type: i32 = row.try_get("backup_type")?;
    let disks: String = row.try_get("disks")?;
    Ok(Backup {
        id: row.try_get("id")?,
        archive_id: row.try_get("archive_id")?,
        folder_id: row.try_get("folder_id")?,
        compute_instance_id: row.try_get("compute_instance_id")?,
        resource_id: row.try_get("resource_id")?,
        policy_id: row.try_get("policy_id")?,
        created_at: from_micros(row.try_get("created_at")?)?,
        last_seen_at: from_micros(row.try_get("last_seen_at")?)?,
        size: row.try_get("size")?,
        deduplicated_size: row.try_get("deduplicated_size")?,
        backed_up_data_size: row.try_get("backed_up_data_size")?,
        original_data_size: row.try_get("original_data_size")?,
        backup_type: BackupType::from_i32(backup_type)
            .ok_or_else(|| CatalogError::Corrupt(format!("backup type {backup_type}")))?,
        disks: serde_json::from_str(&disks)
            .map_err(|e| CatalogError::Corrupt(format!("backup disks: {e}")))?,
        deleted: row.try_get("deleted")?,
    })
}

pub(crate) async fn upsert_archive_in(
    conn: &mut sqlx::SqliteConnection,
    a: &Archive,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO archives (id, name, folder_id, compute_instance_id, resource_id, policy_id, policy_name, \
         size, compressed_data_size, data_size, original_data_size, logical_size, format, created_at, \
         updated_at, last_backup_created_at, last_seen_at, encrypted, deleted) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, policy_name = excluded.policy_name, \
         size = excluded.size, compressed_data_size = excluded.compressed_data_size, \
         data_size = excluded.data_size, original_data_size = excluded.original_data_size, \
         logical_size = excluded.logical_size, updated_at = excluded.updated_at, \
         last_backup_created_at = excluded.last_backup_created_at, last_seen_at = excluded.last_seen_at, \
         encrypted = excluded.encrypted, deleted = excluded.deleted",
    )
    .bind(&a.id)
    .bind(&a.name)
    .bind(&a.folder_id)
    .bind(&a.compute_instance_id)
    .bind(&a.resource_id)
    .bind(&a.policy_id)
    .bind(&a.policy_name)
    .bind(a.size)
    .bind(a.compressed_data_size)
    .bind(a.data_size)
    .bind(a.original_data_size)
    .bind(a.logical_size)
    .bind(a.format)
    .bind(micros(a.created_at))
    .bind(micros(a.updated_at))
    .bind(a.last_backup_created_at.map(micros))
    .bind(a.last_seen_at.map(micros))
    .bind(a.encrypted)
    .bind(a.deleted)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(crate) async fn insert_backup_in(conn: &mut sqlx::SqliteConnection, b: &Backup) -> Result<()> {
    let disks =
        serde_json::to_string(&b.disks).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO backups (id, archive_id, folder_id, compute_instance_id, resource_id, policy_id, \
         created_at, last_seen_at, size, deduplicated_size, backed_up_data_size, original_data_size, \
         backup_type, disks, deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&b.id)
    .bind(&b.archive_id)
    .bind(&b.folder_id)
    .bind(&b.compute_instance_id)
    .bind(&b.resource_id)
    .bind(&b.policy_id)
    .bind(micros(b.created_at))
    .bind(micros(b.last_seen_at))
    .bind(b.size)
    .bind(b.deduplicated_size)
    .bind(b.backed_up_data_size)
    .bind(b.original_data_size)
    .bind(b.backup_type as i32)
    .bind(disks)
    .bind(b.deleted)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
