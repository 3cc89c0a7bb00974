//! Backstop as a user runs it: a `backstop server` process, one `backstop
//! agent` process per instance, and the public gRPC API to back up and
//! recover.

use std::collections::HashSet;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backstop_proto::backup::{
    backup_service_client::BackupServiceClient,
    list_backups_request,
    policy_service_client::PolicyServiceClient,
    policy_settings,
    policy_settings::{interval, retention, scheduling},
    resource_service_client::ResourceServiceClient,
    ApplyPolicyRequest, CreatePolicyMetadata, CreatePolicyRequest, ExecuteRequest, Format,
    GetResourceRequest, ListBackupsRequest, PolicySettings, StartRecoveryRequest,
};
use backstop_proto::operation::{
    operation, operation_service_client::OperationServiceClient, GetOperationRequest, Operation,
};
use prost::Message;
use tokio::runtime::Runtime;
use tonic::transport::Channel;

use crate::system::{peak_rss_kib, reset_peak_rss};

pub const FOLDER: &str = "bench-folder";

/// How often the harness polls a running operation. Timings are rounded up
/// to a multiple of this.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A child process that is killed when dropped.
struct Process {
    child: Child,
    name: String,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}; see its log", self.name);
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An instance served by its own agent process.
pub struct Instance {
    pub id: String,
    pub disk: PathBuf,
    agent: Process,
}

/// A running server with its agents and an API channel.
pub struct Deployment {
    runtime: Runtime,
    channel: Channel,
    server: Process,
    instances: Vec<Instance>,
    pub data_dir: PathBuf,
    policy_id: String,
    known_backups: HashSet<String>,
}

/// Timing and peak memory of one Backstop step.
#[derive(Clone, Copy, Debug)]
pub struct StepResult {
    pub seconds: f64,
    pub server_peak_kib: u64,
    pub agent_peak_kib: u64,
}

/// Settings of a deployment: the binary, a work folder, and the instances
/// with their single disk.
pub struct DeploymentSpec<'a> {
    pub binary: &'a Path,
    pub folder: &'a Path,
    pub instances: &'a [(&'a str, &'a Path)],
    pub encrypted: bool,
}

impl Deployment {
    /// Starts the server and one agent per instance, waits until every
    /// instance is online, then creates a policy and applies it to each.
    pub fn start(spec: DeploymentSpec<'_>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        crate::system::remove_path(spec.folder)?;
        fs::create_dir_all(spec.folder)?;
        let data_dir = spec.folder.join("data");
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");

        let key_file = spec.folder.join("repository.key");
        let mut server_toml = format!(
            "listen = \"{address}\"\ndata_dir = \"{}\"\nverify_interval_h = 0\n",
            data_dir.display()
        );
        if spec.encrypted {
            server_toml.push_str(&format!(
                "\n[repository]\nkey_file = \"{}\"\n",
                key_file.display()
            ));
        }
        let server_config = spec.folder.join("server.toml");
        fs::write(&server_config, server_toml)?;
        let mut server = spawn(
            spec.binary,
            &["server", "--config"],
            &server_config,
            &spec.folder.join("server.log"),
            "backstop server",
        )?;

        let channel = runtime.block_on(connect(&address, &mut server))?;
        let mut instances = Vec::new();
        for (id, disk) in spec.instances {
            let mut agent_toml = format!(
                "server = \"http://{address}\"\ncompute_instance_id = \"{id}\"\nfolder_id = \"{FOLDER}\"\n\
                 disks = [{{ name = \"vda\", path = \"{}\" }}]\n",
                disk.display()
            );
            if spec.encrypted {
                agent_toml.push_str(&format!(
                    "repository_key_file = \"{}\"\n",
                    key_file.display()
                ));
            }
            let agent_config = spec.folder.join(format!("agent-{id}.toml"));
            fs::write(&agent_config, agent_toml)?;
            let agent = spawn(
                spec.binary,
                &["agent", "--config"],
                &agent_config,
                &spec.folder.join(format!("agent-{id}.log")),
                &format!("backstop agent of {id}"),
            )?;
            instances.push(Instance {
                id: (*id).to_owned(),
                disk: disk.to_path_buf(),
                agent,
            });
        }

        let mut deployment = Deployment {
            runtime,
            channel,
            server,
            instances,
            data_dir,
            policy_id: String::new(),
            known_backups: HashSet::new(),
        };
        for index in 0..deployment.instances.len() {
            deployment.wait_online(index)?;
        }
        deployment.policy_id = deployment.create_policy()?;
        Ok(deployment)
    }

    fn instance(&self, id: &str) -> Result<usize> {
        self.instances
            .iter()
            .position(|instance| instance.id == id)
            .with_context(|| format!("no instance {id} in this deployment"))
    }

    pub fn disk_of(&self, id: &str) -> Result<&Path> {
        Ok(&self.instances[self.instance(id)?].disk)
    }

    pub fn repository_dir(&self) -> PathBuf {
        self.data_dir.join("repository")
    }

    fn wait_online(&mut self, index: usize) -> Result<()> {
        let id = self.instances[index].id.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            self.server.check_running()?;
            self.instances[index].agent.check_running()?;
            let mut resources = ResourceServiceClient::new(self.channel.clone());
            let response = self.runtime.block_on(resources.get(GetResourceRequest {
                compute_instance_id: id.clone(),
                include_tenant_info: false,
            }));
            if let Ok(response) = response {
                if response.into_inner().resource.is_some_and(|r| r.online) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("instance {id} did not come online within 60 s; see the agent log")
    }

    fn create_policy(&mut self) -> Result<String> {
        let mut policies = PolicyServiceClient::new(self.channel.clone());
        let created = self
            .runtime
            .block_on(policies.create(CreatePolicyRequest {
                folder_id: FOLDER.into(),
                name: "bench".into(),
                settings: Some(policy_settings()),
            }))
            .context("PolicyService.Create failed")?
            .into_inner();
        let metadata = created
            .metadata
            .as_ref()
            .context("PolicyService.Create returned an operation without metadata")?;
        let policy_id = CreatePolicyMetadata::decode(metadata.value.as_slice())?.policy_id;
        self.wait_operation(&created.id)?;
        for index in 0..self.instances.len() {
            let applied = self
                .runtime
                .block_on(policies.apply(ApplyPolicyRequest {
                    policy_id: policy_id.clone(),
                    compute_instance_id: self.instances[index].id.clone(),
                }))
                .context("PolicyService.Apply failed")?
                .into_inner();
            self.wait_operation(&applied.id)?;
        }
        Ok(policy_id)
    }

    /// Polls an operation until it is done and fails unless it succeeded.
    fn wait_operation(&mut self, id: &str) -> Result<Operation> {
        let mut operations = OperationServiceClient::new(self.channel.clone());
        loop {
            let operation = self
                .runtime
                .block_on(operations.get(GetOperationRequest {
                    operation_id: id.into(),
                }))
                .with_context(|| format!("OperationService.Get of {id} failed"))?
                .into_inner();
            if operation.done {
                return match &operation.result {
                    Some(operation::Result::Response(_)) => Ok(operation),
                    Some(operation::Result::Error(status)) => bail!(
                        "operation {id} ({}) failed with code {}: {}",
                        operation.description,
                        status.code,
                        status.message
                    ),
                    None => bail!("operation {id} is done without a result"),
                };
            }
            self.server.check_running()?;
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn reset_peaks(&self, instance: usize) -> Result<()> {
        reset_peak_rss(self.server.pid())?;
        reset_peak_rss(self.instances[instance].agent.pid())
    }

    fn step_result(&self, instance: usize, started: Instant) -> Result<StepResult> {
        Ok(StepResult {
            seconds: started.elapsed().as_secs_f64(),
            server_peak_kib: peak_rss_kib(self.server.pid())?,
            agent_peak_kib: peak_rss_kib(self.instances[instance].agent.pid())?,
        })
    }

    /// Backs up the instance with `PolicyService.Execute`, waits for the
    /// operation, and returns the step's figures and the new backup's id.
    pub fn backup(&mut self, instance_id: &str) -> Result<(StepResult, String)> {
        let index = self.instance(instance_id)?;
        self.reset_peaks(index)?;
        let mut policies = PolicyServiceClient::new(self.channel.clone());
        let started = Instant::now();
        let operation = self
            .runtime
            .block_on(policies.execute(ExecuteRequest {
                policy_id: self.policy_id.clone(),
                compute_instance_id: instance_id.into(),
            }))
            .context("PolicyService.Execute failed")?
            .into_inner();
        self.wait_operation(&operation.id)?;
        let result = self.step_result(index, started)?;

        let mut backups = BackupServiceClient::new(self.channel.clone());
        let listed = self
            .runtime
            .block_on(backups.list(ListBackupsRequest {
                id: Some(list_backups_request::Id::ComputeInstanceId(
                    instance_id.into(),
                )),
                ..Default::default()
            }))
            .context("BackupService.List failed")?
            .into_inner();
        let new: Vec<String> = listed
            .backups
            .into_iter()
            .map(|backup| backup.id)
            .filter(|id| !self.known_backups.contains(id))
            .collect();
        let [backup_id] = new.as_slice() else {
            bail!("expected one new backup of {instance_id}, found {new:?}");
        };
        self.known_backups.insert(backup_id.clone());
        Ok((result, backup_id.clone()))
    }

    /// Recovers `backup_id` onto the instance with
    /// `BackupService.StartRecovery` and waits for the operation.
    pub fn recover(&mut self, backup_id: &str, instance_id: &str) -> Result<StepResult> {
        let index = self.instance(instance_id)?;
        self.reset_peaks(index)?;
        let mut backups = BackupServiceClient::new(self.channel.clone());
        let started = Instant::now();
        let operation = self
            .runtime
            .block_on(backups.start_recovery(StartRecoveryRequest {
                compute_instance_id: instance_id.into(),
                backup_id: backup_id.into(),
            }))
            .context("BackupService.StartRecovery failed")?
            .into_inner();
        self.wait_operation(&operation.id)?;
        self.step_result(index, started)
    }
}

fn spawn(binary: &Path, args: &[&str], config: &Path, log: &Path, name: &str) -> Result<Process> {
    let log_file = fs::File::create(log)?;
    let child = Command::new(binary)
        .args(args)
        .arg(config)
        .env("BACKSTOP_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    Ok(Process {
        child,
        name: format!("{name} (log {})", log.display()),
    })
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

async fn connect(address: &str, server: &mut Process) -> Result<Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        server.check_running()?;
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(error) if Instant::now() > deadline => {
                bail!("the server did not accept connections at {address} within 60 s: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn every(kind: interval::Type, count: i64) -> policy_settings::Interval {
    policy_settings::Interval {
        r#type: kind as i32,
        count,
    }
}

fn retries() -> policy_settings::RetriesConfiguration {
    policy_settings::RetriesConfiguration {
        enabled: false,
        interval: Some(every(interval::Type::Minutes, 5)),
        max_attempts: 1,
    }
}

/// Returns a daily, always-incremental policy with zstd at the normal
/// level. Backups start with `Execute`, because the server does not run
/// schedules.
fn policy_settings() -> PolicySettings {
    PolicySettings {
        compression: policy_settings::Compression::Normal as i32,
        format: Format::Auto as i32,
        reattempts: Some(retries()),
        splitting: Some(policy_settings::Splitting { size: 1 << 40 }),
        vm_snapshot_reattempts: Some(retries()),
        retention: Some(policy_settings::Retention {
            rules: vec![retention::RetentionRule {
                backup_set: vec![policy_settings::RepeatePeriod::Daily as i32],
                condition: Some(retention::retention_rule::Condition::MaxAge(every(
                    interval::Type::Days,
                    30,
                ))),
            }],
            before_backup: false,
        }),
        scheduling: Some(policy_settings::Scheduling {
            backup_sets: vec![scheduling::BackupSet {
                r#type: scheduling::backup_set::Type::Auto as i32,
                setting: Some(scheduling::backup_set::Setting::Time(
                    scheduling::backup_set::Time {
                        repeat_at: vec![policy_settings::TimeOfDay { hour: 3, minute: 0 }],
                        r#type: policy_settings::RepeatePeriod::Daily as i32,
                        ..Default::default()
                    },
                )),
            }],
            enabled: true,
            max_parallel_backups: 1,
            rand_max_delay: Some(every(interval::Type::Minutes, 30)),
            weekly_backup_day: policy_settings::Day::Monday as i32,
            scheme: scheduling::Scheme::AlwaysIncremental as i32,
            ..Default::default()
        }),
        vss: Some(policy_settings::VolumeShadowCopyServiceSettings {
            enabled: false,
            provider: policy_settings::volume_shadow_copy_service_settings::VssProvider::Native
                as i32,
        }),
        performance_window: Some(policy_settings::PerformanceWindow { enabled: false }),
        cbt: policy_settings::ChangedBlockTracking::UseIfEnabled as i32,
        ..Default::default()
    }
}
