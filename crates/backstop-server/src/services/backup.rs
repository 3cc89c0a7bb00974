//! `yandex.cloud.backup.v1.BackupService`: reading backups and archives.

use backstop_catalog::{
    ArchiveScope, BackupQuery, BackupSelector, CompareOp, SortOrder, TimeCondition,
};
use backstop_proto::{
    backup::{
        backup_service_server::BackupService, list_archives_request, list_backups_request, Backup,
        DeleteArchiveRequest, DeleteBackupRequest, GetBackupRequest, ListArchivesRequest,
        ListArchivesResponse, ListBackupsRequest, ListBackupsResponse, ListFilesRequest,
        ListFilesResponse, StartFilesRecoveryRequest, StartRecoveryRequest,
    },
    operation::Operation,
};
use tonic::{Request, Response, Status};

use super::{caller, page_request, ApiContext};
use crate::{auth::Caller, convert, validate::validate_request, ApiError};

pub struct BackupApi(pub ApiContext);

impl BackupApi {
    /// Checks that the caller may act on the folder of an instance.
    async fn check_instance_folder(
        &self,
        caller: &Caller,
        compute_instance_id: &str,
    ) -> Result<(), ApiError> {
        let resource = self.0.catalog.get_resource(compute_instance_id).await?;
        caller.check_folder(&resource.folder_id)
    }
}

#[tonic::async_trait]
impl BackupService for BackupApi {
    #[tracing::instrument(skip_all)]
    async fn list_archives(
        &self,
        request: Request<ListArchivesRequest>,
    ) -> Result<Response<ListArchivesResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        validate_request(&request)?;
        let scope = match request.id {
            Some(list_archives_request::Id::FolderId(folder)) => {
                caller.check_folder(&folder)?;
                ArchiveScope::Folder(folder)
            }
            Some(list_archives_request::Id::ComputeInstanceId(instance)) => {
                self.check_instance_folder(&caller, &instance).await?;
                ArchiveScope::Instance(instance)
            }
            None => {
                return Err(ApiError::invalid_field(
                    "id",
                    "exactly one of folder_id, compute_instance_id must be set",
                )
                .into())
            }
        };
        let archives = self
            .0
            .catalog
            .list_archives(&scope)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ListArchivesResponse {
            archives: archives.iter().map(convert::archive).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list(
        &self,
        request: Request<ListBackupsRequest>,
    ) -> Result<Response<ListBackupsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        validate_request(&request)?;

        // Folder-scoped selectors are authorized up front; selectors by
        // policy or resource id may span folders, so their rows are
        // filtered by the caller's folders below.
        let selector = match request.id.clone() {
            Some(list_backups_request::Id::ComputeInstanceId(instance)) => {
                self.check_instance_folder(&caller, &instance).await?;
                BackupSelector::Instance(instance)
            }
            Some(list_backups_request::Id::Archive(archive)) => {
                caller.check_folder(&archive.folder_id)?;
                BackupSelector::Archive {
                    archive_id: archive.archive_id,
                    folder_id: archive.folder_id,
                }
            }
            Some(list_backups_request::Id::FolderId(folder)) => {
                caller.check_folder(&folder)?;
                BackupSelector::Folder(folder)
            }
            Some(list_backups_request::Id::InstancePolicy(pair)) => {
                if pair.compute_instance_id.is_empty() && pair.policy_id.is_empty() {
                    return Err(ApiError::invalid_field(
                        "instance_policy",
                        "set compute_instance_id, policy_id or both",
                    )
                    .into());
                }
                if !pair.compute_instance_id.is_empty() {
                    self.check_instance_folder(&caller, &pair.compute_instance_id)
                        .await?;
                }
                BackupSelector::InstancePolicy {
                    compute_instance_id: Some(pair.compute_instance_id).filter(|s| !s.is_empty()),
                    policy_id: Some(pair.policy_id).filter(|s| !s.is_empty()),
                }
            }
            Some(list_backups_request::Id::ResourceId(id)) => BackupSelector::Resource(id),
            Some(list_backups_request::Id::PolicyId(id)) => {
                if !request.page_token.is_empty() {
                    return Err(ApiError::invalid_field(
                        "page_token",
                        "paging is not allowed when listing by policy_id; list by folder_id to page",
                    )
                    .into());
                }
                BackupSelector::Policy(id)
            }
            Some(list_backups_request::Id::Backup(backup)) => {
                caller.check_folder(&backup.folder_id)?;
                BackupSelector::Backup {
                    backup_id: backup.backup_id,
                    folder_id: backup.folder_id,
                }
            }
            None => return Err(ApiError::invalid_field("id", "one selector must be set").into()),
        };
        let query = BackupQuery {
            selector,
            order: parse_order_by(&request.order_by)?,
            created_at: parse_filter(&request.filter)?,
            page: page_request(request.page_size, &request.page_token),
        };

        let page = self
            .0
            .catalog
            .list_backups(&query)
            .await
            .map_err(ApiError::from)?;
        let backups = page
            .items
            .iter()
            .filter(|b| caller.check_folder(&b.folder_id).is_ok())
            .map(convert::backup)
            .collect();
        Ok(Response::new(ListBackupsResponse {
            backups,
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn list_files(
        &self,
        _request: Request<ListFilesRequest>,
    ) -> Result<Response<ListFilesResponse>, Status> {
        Err(ApiError::Unimplemented(
            "ListFiles is not implemented yet: Backstop has no file-level backups so far".into(),
        )
        .into())
    }

    #[tracing::instrument(skip_all, fields(backup_id = %request.get_ref().backup_id))]
    async fn get(&self, request: Request<GetBackupRequest>) -> Result<Response<Backup>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        validate_request(&request)?;
        caller.check_folder(&request.folder_id)?;
        let not_found = || {
            ApiError::NotFound(format!(
                "backup {} not found in folder {}",
                request.backup_id, request.folder_id
            ))
        };
        let backup = match self.0.catalog.get_backup(&request.backup_id).await {
            Ok(backup) => backup,
            Err(backstop_catalog::CatalogError::NotFound { .. }) => return Err(not_found().into()),
            Err(error) => return Err(ApiError::from(error).into()),
        };
        if backup.deleted || backup.folder_id != request.folder_id {
            return Err(not_found().into());
        }
        Ok(Response::new(convert::backup(&backup)))
    }

    #[tracing::instrument(skip_all, fields(backup_id = %request.get_ref().backup_id))]
    async fn start_recovery(
        &self,
        request: Request<StartRecoveryRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let key = super::idempotency_key(&request);
        let request = request.into_inner();
        validate_request(&request)?;
        let operation = crate::recoveries::start_recovery(
            &self.0,
            &caller,
            key,
            &request.backup_id,
            &request.compute_instance_id,
        )
        .await?;
        Ok(Response::new(crate::operations::to_proto(&operation)))
    }

    async fn start_files_recovery(
        &self,
        _request: Request<StartFilesRecoveryRequest>,
    ) -> Result<Response<Operation>, Status> {
        Err(ApiError::Unimplemented(
            "StartFilesRecovery is not implemented yet: Backstop has no file-level backups so far"
                .into(),
        )
        .into())
    }

    #[tracing::instrument(skip_all, fields(backup_id = %request.get_ref().backup_id))]
    async fn delete(
        &self,
        request: Request<DeleteBackupRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let key = super::idempotency_key(&request);
        let request = request.into_inner();
        validate_request(&request)?;
        let operation = crate::deletion::delete_backup(
            &self.0,
            &caller,
            key,
            &request.compute_instance_id,
            &request.backup_id,
        )
        .await?;
        Ok(Response::new(crate::operations::to_proto(&operation)))
    }

    #[tracing::instrument(skip_all, fields(archive_id = %request.get_ref().archive_id))]
    async fn delete_archive(
        &self,
        request: Request<DeleteArchiveRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller(&request)?;
        let key = super::idempotency_key(&request);
        let request = request.into_inner();
        validate_request(&request)?;
        let operation =
            crate::deletion::delete_archive(&self.0, &caller, key, &request.archive_id).await?;
        Ok(Response::new(crate::operations::to_proto(&operation)))
    }
}

/// Parses `order_by`: empty, `createdAt desc` or `createdAt asc`.
fn parse_order_by(order_by: &str) -> Result<SortOrder, ApiError> {
    let words: Vec<&str> = order_by.split_whitespace().collect();
    let invalid = || {
        ApiError::invalid_field(
            "order_by",
            format!("unsupported order {order_by:?}; use \"createdAt desc\" or \"createdAt asc\""),
        )
    };
    match words.as_slice() {
        [] => Ok(SortOrder::Descending),
        [field] if is_created_at(field) => Ok(SortOrder::Ascending),
        [field, direction] if is_created_at(field) => match direction.to_ascii_lowercase().as_str()
        {
            "desc" => Ok(SortOrder::Descending),
            "asc" => Ok(SortOrder::Ascending),
            _ => Err(invalid()),
        },
        _ => Err(invalid()),
    }
}

fn is_created_at(field: &str) -> bool {
    field == "createdAt" || field == "created_at"
}

/// Parses `filter`: conditions on `created_at` joined by `AND`, each like
/// `created_at > "2024-05-01T00:00:00Z"`.
fn parse_filter(filter: &str) -> Result<Vec<TimeCondition>, ApiError> {
    if filter.trim().is_empty() {
        return Ok(Vec::new());
    }
    let invalid = |part: &str, why: &str| {
        ApiError::invalid_field(
            "filter",
            format!("cannot parse {part:?}: {why}; write conditions like created_at > \"2024-05-01T00:00:00Z\" joined by AND"),
        )
    };
    let mut conditions = Vec::new();
    for part in split_and(filter) {
        let part = part.trim();
        let field_end = part
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(part.len());
        let (field, rest) = part.split_at(field_end);
        if !is_created_at(field) {
            return Err(invalid(part, "only created_at can be filtered"));
        }
        let rest = rest.trim_start();
        let (op, value) = [
            (">=", CompareOp::Ge),
            ("<=", CompareOp::Le),
            ("!=", CompareOp::Ne),
            ("=", CompareOp::Eq),
            (">", CompareOp::Gt),
            ("<", CompareOp::Lt),
        ]
        .iter()
        .find_map(|(symbol, op)| rest.strip_prefix(symbol).map(|value| (*op, value)))
        .ok_or_else(|| invalid(part, "expected one of =, !=, <, <=, >, >="))?;
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        let at = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
            .map_err(|_| invalid(part, "the time must be in RFC 3339 form"))?;
        conditions.push(TimeCondition { op, value: at });
    }
    Ok(conditions)
}

/// Splits on the word AND in any letter case, outside quotes.
fn split_and(filter: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let words: Vec<&str> = filter.split(' ').collect();
    for word in words {
        if !in_quotes && word.eq_ignore_ascii_case("and") {
            parts.push(std::mem::take(&mut current));
            continue;
        }
        in_quotes ^= word.matches('"').count() % 2 == 1;
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    parts.push(current);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_by_accepts_both_directions() {
        assert_eq!(parse_order_by("").unwrap(), SortOrder::Descending);
        assert_eq!(
            parse_order_by("createdAt desc").unwrap(),
            SortOrder::Descending
        );
        assert_eq!(
            parse_order_by("createdAt asc").unwrap(),
            SortOrder::Ascending
        );
        assert!(parse_order_by("size desc").is_err());
    }

    #[test]
    fn filter_reads_two_conditions() {
        let conditions = parse_filter(
            "created_at > \"2024-01-01T00:00:00Z\" AND created_at <= \"2024-02-01T00:00:00Z\"",
        )
        .unwrap();
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0].op, CompareOp::Gt);
        assert_eq!(conditions[1].op, CompareOp::Le);
    }

    #[test]
    fn filter_on_other_field_is_rejected() {
        let error = parse_filter("size > 10").unwrap_err();
        assert!(error
            .to_string()
            .starts_with("Request validation error: Filter:"));
    }
}
