//! `backstop policy ...`: PolicyService.

use std::path::{Path, PathBuf};

use backstop_proto::backup::{
    list_applications_request, policy_service_client::PolicyServiceClient, ApplyPolicyRequest,
    CreatePolicyRequest, DeletePolicyRequest, ExecuteRequest, GetPolicyRequest,
    ListApplicationsRequest, ListPoliciesRequest, PolicySettings, RevokeRequest,
    UpdatePolicyRequest,
};
use clap::Subcommand;
use prost::{Message as _, Name as _};
use prost_reflect::DynamicMessage;

use super::{
    output::{col, Column},
    AsyncArg, ClientArgs, Context, IdArg, UsageError,
};

#[derive(clap::Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    client: ClientArgs,

    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Create a policy in the folder from a settings file.
    Create {
        /// Name of the new policy.
        #[arg(long, required = true)]
        name: Option<String>,
        /// JSON or YAML file with the policy's PolicySettings in the API's
        /// JSON form, with field names in lowerCamelCase or snake_case.
        #[arg(long, required = true, value_name = "FILE")]
        settings_from_file: Option<PathBuf>,
        #[command(flatten)]
        run_async: AsyncArg,
    },
    /// Show one policy.
    Get {
        #[command(flatten)]
        id: IdArg,
    },
    /// List the policies of the folder.
    List {
        /// Only policies applied to this instance.
        #[arg(long)]
        instance_id: Option<String>,
        /// Maximum number of policies to print, or 0 for all.
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Replace the settings of a policy with those of a file.
    Update {
        #[command(flatten)]
        id: IdArg,
        /// JSON or YAML file with the new PolicySettings, as for `create`.
        #[arg(long, required = true, value_name = "FILE")]
        settings_from_file: Option<PathBuf>,
        #[command(flatten)]
        run_async: AsyncArg,
    },
    /// Delete a policy.
    Delete {
        #[command(flatten)]
        id: IdArg,
        #[command(flatten)]
        run_async: AsyncArg,
    },
    /// Apply a policy to an instance.
    Apply {
        #[command(flatten)]
        id: IdArg,
        /// Instance to apply the policy to.
        #[arg(long, required = true)]
        instance_id: Option<String>,
        #[command(flatten)]
        run_async: AsyncArg,
    },
    /// Revoke a policy from an instance.
    Revoke {
        #[command(flatten)]
        id: IdArg,
        /// Instance to revoke the policy from.
        #[arg(long, required = true)]
        instance_id: Option<String>,
        #[command(flatten)]
        run_async: AsyncArg,
    },
    /// Run a policy's backup of an instance now.
    Execute {
        #[command(flatten)]
        id: IdArg,
        /// Instance to back up.
        #[arg(long, required = true)]
        instance_id: Option<String>,
        #[command(flatten)]
        run_async: AsyncArg,
    },
    /// List which policies are applied to which instances.
    ListApplications {
        /// Only applications of this policy.
        #[arg(long, conflicts_with = "instance_id")]
        policy_id: Option<String>,
        /// Only applications to this instance.
        #[arg(long)]
        instance_id: Option<String>,
        /// Also show applications that are still being applied.
        #[arg(long)]
        show_processing: bool,
    },
}

const POLICY_COLUMNS: &[Column] = &[
    col("ID", "id"),
    col("NAME", "name"),
    col("ENABLED", "enabled"),
    col("CREATED AT", "created_at"),
    col("UPDATED AT", "updated_at"),
];

const APPLICATION_COLUMNS: &[Column] = &[
    col("POLICY ID", "policy_id"),
    col("INSTANCE ID", "compute_instance_id"),
    col("ENABLED", "enabled"),
    col("STATUS", "status"),
    col("CREATED AT", "created_at"),
];

pub async fn run(args: PolicyArgs) -> anyhow::Result<()> {
    // A bad settings file is reported before connecting.
    let settings_file = match &args.command {
        PolicyCommand::Create {
            settings_from_file, ..
        }
        | PolicyCommand::Update {
            settings_from_file, ..
        } => Some(read_settings_file(
            settings_from_file.as_deref().unwrap_or(Path::new("")),
        )?),
        _ => None,
    };
    let context = Context::connect(&args.client).await?;
    let mut client = PolicyServiceClient::new(context.transport.clone());
    match args.command {
        PolicyCommand::Create {
            name, run_async, ..
        } => {
            let operation = client
                .create(CreatePolicyRequest {
                    folder_id: context.settings.folder_id()?,
                    name: name.unwrap_or_default(),
                    settings: settings_file,
                })
                .await?
                .into_inner();
            context.finish_operation(operation, run_async).await
        }
        PolicyCommand::Get { id } => {
            let policy = client
                .get(GetPolicyRequest {
                    policy_id: id.require("policy")?,
                })
                .await?
                .into_inner();
            context.print(&policy)
        }
        PolicyCommand::List { instance_id, limit } => {
            let mut policies = client
                .list(ListPoliciesRequest {
                    folder_id: context.settings.folder_id()?,
                    compute_instance_id: instance_id.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .policies;
            if limit > 0 {
                policies.truncate(limit);
            }
            context.print_list(&policies, POLICY_COLUMNS)
        }
        PolicyCommand::Update { id, run_async, .. } => {
            let operation = client
                .update(UpdatePolicyRequest {
                    policy_id: id.require("policy")?,
                    settings: settings_file,
                })
                .await?
                .into_inner();
            context.finish_operation(operation, run_async).await
        }
        PolicyCommand::Delete { id, run_async } => {
            let operation = client
                .delete(DeletePolicyRequest {
                    policy_id: id.require("policy")?,
                })
                .await?
                .into_inner();
            context.finish_operation(operation, run_async).await
        }
        PolicyCommand::Apply {
            id,
            instance_id,
            run_async,
        } => {
            let operation = client
                .apply(ApplyPolicyRequest {
                    policy_id: id.require("policy")?,
                    compute_instance_id: instance_id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            context.finish_operation(operation, run_async).await
        }
        PolicyCommand::Revoke {
            id,
            instance_id,
            run_async,
        } => {
            let operation = client
                .revoke(RevokeRequest {
                    policy_id: id.require("policy")?,
                    compute_instance_id: instance_id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            context.finish_operation(operation, run_async).await
        }
        PolicyCommand::Execute {
            id,
            instance_id,
            run_async,
        } => {
            let operation = client
                .execute(ExecuteRequest {
                    policy_id: id.require("policy")?,
                    compute_instance_id: instance_id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            context.finish_operation(operation, run_async).await
        }
        PolicyCommand::ListApplications {
            policy_id,
            instance_id,
            show_processing,
        } => {
            let id = match (policy_id, instance_id) {
                (Some(policy), _) => list_applications_request::Id::PolicyId(policy),
                (None, Some(instance)) => {
                    list_applications_request::Id::ComputeInstanceId(instance)
                }
                (None, None) => {
                    list_applications_request::Id::FolderId(context.settings.folder_id()?)
                }
            };
            let applications = client
                .list_applications(ListApplicationsRequest {
                    id: Some(id),
                    show_processing,
                })
                .await?
                .into_inner()
                .applications;
            context.print_list(&applications, APPLICATION_COLUMNS)
        }
    }
}

/// Reads PolicySettings from a JSON or YAML file in the API's JSON form.
/// Files named `*.json` are read as JSON, all others as YAML, which also
/// accepts JSON. Errors name the file and the path of the bad field.
pub fn read_settings_file(path: &Path) -> anyhow::Result<PolicySettings> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        UsageError(format!(
            "cannot read the settings file {} (--settings-from-file): {error}",
            path.display()
        ))
    })?;
    parse_settings(&text, is_json(path)).map_err(|error| {
        UsageError(format!("invalid settings file {}: {error}", path.display())).into()
    })
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("json"))
}

/// Parses PolicySettings. The error text starts with the dotted path of the
/// field at fault, when there is one.
fn parse_settings(text: &str, json: bool) -> Result<PolicySettings, String> {
    let descriptor = super::output::descriptor_pool()
        .get_message_by_name(&PolicySettings::full_name())
        .ok_or("PolicySettings is not in the API's descriptors")?;
    let dynamic = if json {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let message = deserialize_tracked(descriptor, &mut deserializer)?;
        deserializer
            .end()
            .map_err(|error| format!("unexpected text after the settings: {error}"))?;
        message
    } else {
        deserialize_tracked(descriptor, serde_yaml_ng::Deserializer::from_str(text))?
    };
    PolicySettings::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|error| format!("cannot convert the settings: {error}"))
}

fn deserialize_tracked<'de, D: serde::Deserializer<'de>>(
    descriptor: prost_reflect::MessageDescriptor,
    deserializer: D,
) -> Result<DynamicMessage, String>
where
    D::Error: std::fmt::Display,
{
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(deserializer, &mut track);
    DynamicMessage::deserialize(descriptor, tracked).map_err(|error| {
        let path = track.path().to_string();
        let text = error.to_string();
        // The YAML deserializer already starts its messages with the path.
        if path.is_empty() || path == "." || text.starts_with(&path) {
            text
        } else {
            format!("field {path}: {text}")
        }
    })
}

#[cfg(test)]
mod tests {
    use backstop_proto::backup::policy_settings;

    use super::*;

    #[test]
    fn settings_accept_camel_and_snake_case() {
        let camel = parse_settings(
            r#"{"compression": "NORMAL", "format": "AUTO", "multiVolumeSnapshottingEnabled": true,
                "scheduling": {"enabled": true, "maxParallelBackups": "2"}}"#,
            true,
        )
        .unwrap();
        let snake = parse_settings(
            "compression: NORMAL\nformat: AUTO\nmulti_volume_snapshotting_enabled: true\nscheduling:\n  enabled: true\n  max_parallel_backups: 2\n",
            false,
        )
        .unwrap();
        assert_eq!(camel, snake);
        assert_eq!(
            camel.compression,
            policy_settings::Compression::Normal as i32
        );
        assert_eq!(camel.scheduling.unwrap().max_parallel_backups, 2);
    }

    #[test]
    fn settings_error_names_the_field() {
        let error = parse_settings(
            r#"{"scheduling": {"backupSets": [{"type": "NOT_A_TYPE"}]}}"#,
            true,
        )
        .unwrap_err();
        assert!(error.contains("scheduling.backupSets[0].type"), "{error}");
    }

    #[test]
    fn settings_error_names_unknown_field() {
        let error = parse_settings("compresion: NORMAL\n", false).unwrap_err();
        assert!(error.contains("compresion"), "{error}");
    }
}
