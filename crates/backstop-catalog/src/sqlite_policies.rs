//! Queries and row mapping for backup policies and their applications in
//! the SQLite backend. The `Catalog` methods in `sqlite.rs` call these.

use sqlx::{sqlite::SqliteRow, QueryBuilder, Row, Sqlite, SqlitePool};

use crate::{
    sqlite::{from_micros, micros, now},
    ApplicationScope, ApplicationStatus, CatalogError, NewPolicy, Policy, PolicyApplication,
    PolicyQuery, Result,
};

pub(crate) async fn create_policy(pool: &SqlitePool, new: &NewPolicy) -> Result<Policy> {
    let created_at = micros(now());
    let inserted = sqlx::query(
        "INSERT INTO policies (id, folder_id, name, enabled, settings, created_at, updated_at, deleted) \
         VALUES (?, ?, ?, ?, ?, ?, ?, 0) RETURNING *",
    )
    .bind(&new.id)
    .bind(&new.folder_id)
    .bind(&new.name)
    .bind(new.enabled)
    .bind(&new.settings)
    .bind(created_at)
    .bind(created_at)
    .fetch_one(pool)
    .await;

    match inserted {
        Ok(row) => policy_from_row(&row),
        // The unique index on (folder_id, name) covers only rows that are
        // not deleted, so this fires for a live policy of the same name. The
        // primary key on id fires only if the caller reuses an id.
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            let key = if error.message().contains("policies.id") {
                new.id.clone()
            } else {
                format!("{:?} in folder {}", new.name, new.folder_id)
            };
            Err(CatalogError::AlreadyExists {
                kind: "policy",
                key,
            })
        }
        Err(error) => Err(error.into()),
    }
}

pub(crate) async fn get_policy(pool: &SqlitePool, id: &str) -> Result<Policy> {
    let row = sqlx::query("SELECT * FROM policies WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| CatalogError::not_found("policy", id))?;
    policy_from_row(&row)
}

pub(crate) async fn list_policies(pool: &SqlitePool, query: &PolicyQuery) -> Result<Vec<Policy>> {
    let mut sql = QueryBuilder::<Sqlite>::new("SELECT * FROM policies WHERE deleted = 0");
    if let Some(folder_id) = &query.folder_id {
        sql.push(" AND folder_id = ").push_bind(folder_id.clone());
    }
    if let Some(instance) = &query.compute_instance_id {
        sql.push(
            " AND id IN (SELECT policy_id FROM policy_applications WHERE compute_instance_id = ",
        )
        .push_bind(instance.clone())
        .push(")");
    }
    sql.push(" ORDER BY created_at, id");
    let rows = sql.build().fetch_all(pool).await?;
    rows.iter().map(policy_from_row).collect()
}

pub(crate) async fn update_policy_settings(
    pool: &SqlitePool,
    id: &str,
    settings: &[u8],
) -> Result<Policy> {
    // MAX keeps updated_at strictly increasing even when two updates fall
    // into the same microsecond or the clock steps back.
    let row = sqlx::query(
        "UPDATE policies SET settings = ?, updated_at = MAX(updated_at + 1, ?) \
         WHERE id = ? AND deleted = 0 RETURNING *",
    )
    .bind(settings)
    .bind(micros(now()))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| CatalogError::not_found("policy", id))?;
    policy_from_row(&row)
}

pub(crate) async fn delete_policy(pool: &SqlitePool, id: &str) -> Result<()> {
    // The UPDATE is the first statement, so the transaction starts as a
    // writer. A deferred transaction that read first could fail with
    // SQLITE_BUSY when another connection wrote in between.
    let mut tx = pool.begin().await?;
    let marked = sqlx::query(
        "UPDATE policies SET deleted = 1, updated_at = MAX(updated_at + 1, ?) \
         WHERE id = ? AND deleted = 0",
    )
    .bind(micros(now()))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    if marked.rows_affected() == 0 {
        return Err(CatalogError::not_found("policy", id));
    }
    sqlx::query("DELETE FROM policy_applications WHERE policy_id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn apply_policy(
    pool: &SqlitePool,
    policy_id: &str,
    compute_instance_id: &str,
) -> Result<PolicyApplication> {
    // Inserting through a SELECT on the policy makes the existence check and
    // the insert one statement, so a policy deleted at the same moment never
    // keeps an application.
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO policy_applications (policy_id, compute_instance_id, enabled, status, created_at) \
         SELECT id, ?, 1, ?, ? FROM policies WHERE id = ? AND deleted = 0 \
         ON CONFLICT (policy_id, compute_instance_id) DO NOTHING",
    )
    .bind(compute_instance_id)
    .bind(ApplicationStatus::Ok as i32)
    .bind(micros(now()))
    .bind(policy_id)
    .execute(&mut *tx)
    .await?;
    let row = sqlx::query(
        "SELECT * FROM policy_applications WHERE policy_id = ? AND compute_instance_id = ?",
    )
    .bind(policy_id)
    .bind(compute_instance_id)
    .fetch_optional(&mut *tx)
    .await?
    // No row after the insert means that the policy is missing or deleted.
    .ok_or_else(|| CatalogError::not_found("policy", policy_id))?;
    let application = application_from_row(&row)?;
    tx.commit().await?;
    Ok(application)
}

pub(crate) async fn revoke_policy(
    pool: &SqlitePool,
    policy_id: &str,
    compute_instance_id: &str,
) -> Result<()> {
    let removed = sqlx::query(
        "DELETE FROM policy_applications WHERE policy_id = ? AND compute_instance_id = ?",
    )
    .bind(policy_id)
    .bind(compute_instance_id)
    .execute(pool)
    .await?;
    if removed.rows_affected() == 0 {
        return Err(application_not_found(policy_id, compute_instance_id));
    }
    Ok(())
}

pub(crate) async fn get_policy_application(
    pool: &SqlitePool,
    policy_id: &str,
    compute_instance_id: &str,
) -> Result<PolicyApplication> {
    let row = sqlx::query(
        "SELECT * FROM policy_applications WHERE policy_id = ? AND compute_instance_id = ?",
    )
    .bind(policy_id)
    .bind(compute_instance_id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| application_not_found(policy_id, compute_instance_id))?;
    application_from_row(&row)
}

pub(crate) async fn list_policy_applications(
    pool: &SqlitePool,
    scope: &ApplicationScope,
) -> Result<Vec<PolicyApplication>> {
    // The join drops applications of deleted policies. Deleting a policy
    // removes them anyway, so this only guards against rows written by hand.
    let mut sql = QueryBuilder::<Sqlite>::new(
        "SELECT a.* FROM policy_applications a JOIN policies p ON p.id = a.policy_id \
         WHERE p.deleted = 0",
    );
    match scope {
        ApplicationScope::Folder(folder_id) => {
            sql.push(" AND p.folder_id = ").push_bind(folder_id.clone());
        }
        ApplicationScope::Policy(policy_id) => {
            sql.push(" AND a.policy_id = ").push_bind(policy_id.clone());
        }
        ApplicationScope::Instance(instance) => {
            sql.push(" AND a.compute_instance_id = ")
                .push_bind(instance.clone());
        }
    }
    sql.push(" ORDER BY a.created_at, a.policy_id, a.compute_instance_id");
    let rows = sql.build().fetch_all(pool).await?;
    rows.iter().map(application_from_row).collect()
}

fn application_not_found(policy_id: &str, compute_instance_id: &str) -> CatalogError {
    CatalogError::NotFound {
        kind: "application of policy",
        id: format!("{policy_id} to instance {compute_instance_id}"),
    }
}

fn policy_from_row(row: &SqliteRow) -> Result<Policy> {
    Ok(Policy {
        id: row.try_get("id")?,
        folder_id: row.try_get("folder_id")?,
        name: row.try_get("name")?,
        enabled: row.try_get("enabled")?,
        settings: row.try_get("settings")?,
        created_at: from_micros(row.try_get("created_at")?)?,
        updated_at: from_micros(row.try_get("updated_at")?)?,
        deleted: row.try_get("deleted")?,
    })
}

fn application_from_row(row: &SqliteRow) -> Result<PolicyApplication> {
    let status: i32 = row.try_get("status")?;
    Ok(PolicyApplication {
        policy_id: row.try_get("policy_id")?,
        compute_instance_id: row.try_get("compute_instance_id")?,
        enabled: row.try_get("enabled")?,
        status: ApplicationStatus::from_i32(status)
            .ok_or_else(|| CatalogError::Corrupt(format!("policy application status {status}")))?,
        created_at: from_micros(row.try_get("created_at")?)?,
    })
}
