//! Plain data types stored in the catalog.
//!
//! Enum discriminants equal the numbers of the matching public API enums, so
//! the server converts with a number and never with a lookup table.

use serde::{Deserialize, Serialize};

/// A point in time, always UTC.
pub type Timestamp = time::OffsetDateTime;

/// An encoded protobuf message with its type URL, as in `google.protobuf.Any`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnyMessage {
    pub type_url: String,
    pub value: Vec<u8>,
}

/// A long-running operation as the public API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation {
    pub id: String,
    pub description: String,
    pub created_at: Timestamp,
    pub created_by: String,
    pub modified_at: Timestamp,
    pub done: bool,
    pub metadata: AnyMessage,
    pub result: Option<OperationResult>,
    pub cancel_requested: bool,
    /// The instance the operation works on, if any.
    pub resource_id: Option<String>,
}

/// The outcome of a finished operation.
#[derive(Clone, Debug, PartialEq)]
pub enum OperationResult {
    Error(OperationError),
    Response(AnyMessage),
}

/// A `google.rpc.Status` of a failed operation. `code` is never 0.
#[derive(Clone, Debug, PartialEq)]
pub struct OperationError {
    pub code: i32,
    pub message: String,
    pub details: Vec<AnyMessage>,
}

/// The scope of an `idempotency-key`: one caller calling one method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub subject: String,
    pub method: String,
    pub key: String,
}

/// Input of [`crate::Catalog::create_operation`].
#[derive(Clone, Debug)]
pub struct NewOperation {
    pub description: String,
    pub created_by: String,
    pub metadata: AnyMessage,
    pub resource_id: Option<String>,
    pub idempotency: Option<IdempotencyKey>,
    /// Agent work recorded in the same transaction as the operation.
    pub task: Option<NewTask>,
}

/// Output of [`crate::Catalog::create_operation`].
#[derive(Clone, Debug)]
pub struct CreatedOperation {
    pub operation: Operation,
    /// False when an earlier call with the same idempotency key made it.
    pub created: bool,
    /// The operation's task, when one was requested and this call made it.
    pub task: Option<Task>,
}

/// Activity of an instance's agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ResourceStatus {
    Idle = 1,
    Backuping = 2,
    Recovering = 3,
    Failed = 4,
    Other = 5,
}

/// How far the registration of an instance has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum InitStatus {
    Registering = 1,
    Registered = 2,
    FailedRegistration = 3,
    Deleted = 4,
}

/// The kind of machine a resource is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ResourceType {
    Compute = 1,
    Bms = 2,
    ExternalVm = 3,
    ExternalServer = 4,
}

/// An instance connected to Backstop through an agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub compute_instance_id: String,
    pub resource_id: String,
    pub folder_id: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub online: bool,
    pub enabled: bool,
    pub status: ResourceStatus,
    pub status_details: String,
    /// Percent of the running backup or recovery, 0 to 100.
    pub status_progress: i64,
    pub last_backup_time: Option<Timestamp>,
    pub next_backup_time: Option<Timestamp>,
    pub init_status: InitStatus,
    pub metadata: String,
    pub resource_type: ResourceType,
    pub agent_version: String,
    pub last_heartbeat_at: Option<Timestamp>,
}

/// Input of [`crate::Catalog::list_resources`].
#[derive(Clone, Debug)]
pub struct ResourceQuery {
    pub folder_id: String,
    pub resource_type: Option<ResourceType>,
    pub page: PageRequest,
}

/// One page of a listing request.
#[derive(Clone, Debug, Default)]
pub struct PageRequest {
    /// Maximum number of items; the catalog never returns more.
    pub size: usize,
    /// The `next_page_token` of the previous page, if any.
    pub token: Option<String>,
}

/// One page of a listing.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Set when more items follow.
    pub next_page_token: Option<String>,
}

/// The chain of backups of one instance made by one policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Archive {
    pub id: String,
    pub name: String,
    pub folder_id: String,
    pub compute_instance_id: String,
    pub resource_id: String,
    pub policy_id: String,
    pub policy_name: String,
    pub size: i64,
    pub compressed_data_size: i64,
    pub data_size: i64,
    pub original_data_size: i64,
    pub logical_size: i64,
    /// A `yandex.cloud.backup.v1.Format` number.
    pub format: i32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_backup_created_at: Option<Timestamp>,
    pub last_seen_at: Option<Timestamp>,
    pub encrypted: bool,
    pub deleted: bool,
}

/// Selector of an archive listing.
#[derive(Clone, Debug)]
pub enum ArchiveScope {
    Folder(String),
    Instance(String),
}

/// Kind of a backup: all data, or only what changed since the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum BackupType {
    Full = 1,
    Incremental = 2,
}

/// One backup of an instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Backup {
    pub id: String,
    pub archive_id: String,
    pub folder_id: String,
    pub compute_instance_id: String,
    pub resource_id: String,
    pub policy_id: String,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    /// Bytes this backup occupies in the repository.
    pub size: i64,
    pub deduplicated_size: i64,
    pub backed_up_data_size: i64,
    pub original_data_size: i64,
    pub backup_type: BackupType,
    pub disks: Vec<Disk>,
    pub deleted: bool,
}

/// A disk captured in a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub device_model: String,
    pub name: String,
    pub size: i64,
    pub volumes: Vec<Volume>,
}

/// A partition found on a disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub free_space: i64,
    pub is_bootable: bool,
    pub is_system: bool,
    pub name: String,
    pub size: i64,
    pub mount_strid: String,
}

/// Input of [`crate::Catalog::list_backups`].
#[derive(Clone, Debug)]
pub struct BackupQuery {
    pub selector: BackupSelector,
    pub order: SortOrder,
    /// All conditions must hold.
    pub created_at: Vec<TimeCondition>,
    pub page: PageRequest,
}

/// Selector of a backup listing, mirroring the `id` oneof of the request.
#[derive(Clone, Debug)]
pub enum BackupSelector {
    Instance(String),
    Archive {
        archive_id: String,
        folder_id: String,
    },
    Folder(String),
    InstancePolicy {
        compute_instance_id: Option<String>,
        policy_id: Option<String>,
    },
    Resource(String),
    Policy(String),
    Backup {
        backup_id: String,
        folder_id: String,
    },
}

/// Sort order of a listing by creation time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    #[default]
    Descending,
    Ascending,
}

/// A comparison of a timestamp column with a fixed time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeCondition {
    pub op: CompareOp,
    pub value: Timestamp,
}

/// A comparison operator of a listing filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CompareOp {
    /// Returns the SQL spelling of the operator.
    pub fn sql(self) -> &'static str {
        match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "<>",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }
}

impl ResourceStatus {
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            1 => Self::Idle,
            2 => Self::Backuping,
            3 => Self::Recovering,
            4 => Self::Failed,
            5 => Self::Other,
            _ => return None,
        })
    }
}

impl InitStatus {
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            1 => Self::Registering,
            2 => Self::Registered,
            3 => Self::FailedRegistration,
            4 => Self::Deleted,
            _ => return None,
        })
    }
}

impl ResourceType {
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            1 => Self::Compute,
            2 => Self::Bms,
            3 => Self::ExternalVm,
            4 => Self::ExternalServer,
            _ => return None,
        })
    }
}

impl BackupType {
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            1 => Self::Full,
            2 => Self::Incremental,
            _ => return None,
        })
    }
}

/// The kind of work a task does; numbers match `Task.Type` of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum TaskType {
    Backup = 1,
    Retention = 2,
    Recovery = 3,
    ApplyPolicy = 4,
    RevokePolicy = 5,
}

/// State of a task; numbers match `Task.Status` of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum TaskStatus {
    Enqueued = 1,
    Assigned = 2,
    Started = 3,
    Paused = 4,
    Completed = 5,
}

/// Outcome of a task; numbers match `Task.Code` of the API. `None` while it
/// runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum TaskCode {
    None = 0,
    Ok = 1,
    Error = 2,
    Warning = 3,
    Cancelled = 4,
    Abandoned = 5,
    TimedOut = 6,
}

/// A unit of agent work behind an operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub id: i64,
    pub operation_id: String,
    pub compute_instance_id: String,
    pub policy_id: String,
    pub task_type: TaskType,
    pub status: TaskStatus,
    /// Bytes handled so far and in all.
    pub progress_current: i64,
    pub progress_total: i64,
    pub enqueued_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub updated_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    pub result_code: TaskCode,
    pub error: String,
    /// JSON description of the work, read by the server's task dispatcher.
    pub payload: String,
}

/// A task to record together with its operation.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub compute_instance_id: String,
    pub policy_id: String,
    pub task_type: TaskType,
    pub payload: String,
}

impl TaskType {
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            1 => Self::Backup,
            2 => Self::Retention,
            3 => Self::Recovery,
            4 => Self::ApplyPolicy,
            5 => Self::RevokePolicy,
            _ => return None,
        })
    }
}

impl TaskStatus {
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            1 => Self::Enqueued,
            2 => Self::Assigned,
            3 => Self::Started,
            4 => Self::Paused,
            5 => Self::Completed,
            _ => return None,
        })
    }
}

impl TaskCode {
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            0 => Self::None,
            1 => Self::Ok,
            2 => Self::Error,
            3 => Self::Warning,
            4 => Self::Cancelled,
            5 => Self::Abandoned,
            6 => Self::TimedOut,
            _ => return None,
        })
    }
}

/// A disk of an instance as its agent reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceDisk {
    pub name: String,
    /// Size in bytes.
    pub size: i64,
    pub device_model: String,
}

/// Input of [`crate::Catalog::create_policy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPolicy {
    /// A [`crate::new_api_id`] chosen by the caller, so that it can name the
    /// policy in operation metadata before the row exists.
    pub id: String,
    pub folder_id: String,
    pub name: String,
    pub enabled: bool,
    /// Encoded `yandex.cloud.backup.v1.PolicySettings`, format version 1.
    pub settings: Vec<u8>,
}

/// A backup policy: how and when the instances it is applied to are backed
/// up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub id: String,
    pub folder_id: String,
    /// Unique within the folder among policies that are not deleted.
    pub name: String,
    pub enabled: bool,
    /// Encoded `yandex.cloud.backup.v1.PolicySettings`, format version 1.
    /// The catalog stores the bytes without reading them.
    pub settings: Vec<u8>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub deleted: bool,
}

/// Filter of [`crate::Catalog::list_policies`]. Every condition that is set
/// must hold, and a query with none set lists every policy.
#[derive(Clone, Debug, Default)]
pub struct PolicyQuery {
    pub folder_id: Option<String>,
    /// Keeps only the policies applied to this instance.
    pub compute_instance_id: Option<String>,
}

/// The state of a policy on one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ApplicationStatus {
    Ok = 1,
    Running = 2,
    Disabled = 3,
}

/// A policy applied to an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyApplication {
    pub policy_id: String,
    pub compute_instance_id: String,
    pub enabled: bool,
    pub status: ApplicationStatus,
    pub created_at: Timestamp,
}

/// Selector of [`crate::Catalog::list_policy_applications`]: the
/// applications of one folder, policy or instance.
#[derive(Clone, Debug)]
pub enum ApplicationScope {
    /// Applications of the policies in this folder.
    Folder(String),
    Policy(String),
    Instance(String),
}

impl ApplicationStatus {
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            1 => Self::Ok,
            2 => Self::Running,
            3 => Self::Disabled,
            _ => return None,
        })
    }
}

/// A token that lets an agent register a new instance in a folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationToken {
    pub id: String,
    pub folder_id: String,
    pub created_by: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}
