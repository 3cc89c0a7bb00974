//! Waiting for long-running operations, with a progress bar on a terminal
//! and plain progress lines otherwise.

use std::{
    io::IsTerminal as _,
    time::{Duration, Instant},
};

use backstop_proto::{
    backup::{resource_service_client::ResourceServiceClient, task, ListTasksRequest, Task},
    operation::{
        operation, operation_service_client::OperationServiceClient, GetOperationRequest, Operation,
    },
};
use indicatif::{BinaryBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use prost_reflect::{DynamicMessage, ReflectMessage as _, Value};

use super::{code_name, output::decode_dynamic, settings::Transport, OperationFailed};

/// Time between two polls of the operation.
const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// How many times a poll is retried while the server is unavailable, and
/// the pause before each retry.
const UNAVAILABLE_RETRIES: u32 = 5;
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Shortest time between two plain progress lines.
const LINE_INTERVAL: Duration = Duration::from_secs(1);

/// Maximum time between plain progress lines. A line is printed even when
/// nothing changed, so a log shows that the wait is alive.
const QUIET_INTERVAL: Duration = Duration::from_secs(15);

/// Progress as read from the operation and the instance's task.
#[derive(Clone, Copy, Default, PartialEq)]
struct Sample {
    /// `progress_percentage` of the operation metadata, when it has one.
    percent: Option<f64>,
    /// `progress {current, total}` of the instance's running task, in bytes.
    bytes: Option<(u64, u64)>,
}

/// Polls `operation` until it is done and returns the finished operation,
/// or [`OperationFailed`] when it ends with an error.
pub async fn wait(transport: &Transport, operation: Operation) -> anyhow::Result<Operation> {
    let mut operations = OperationServiceClient::new(transport.clone());
    let mut resources = ResourceServiceClient::new(transport.clone());
    let target = TaskTarget::of(&operation);
    let mut reporter = Reporter::new(&operation);
    let mut current = operation;
    while !current.done {
        tokio::time::sleep(POLL_INTERVAL).await;
        current = poll(&mut operations, &current.id).await?;
        // Read once more after the end too, so the last report has the
        // final byte counts even when the operation ended before the first poll.
        let bytes = match &target {
            Some(target) => target.bytes(&mut resources).await,
            None => None,
        };
        reporter.update(Sample {
            percent: metadata_percent(&current),
            bytes,
        });
    }
    reporter.finish(&current);
    match &current.result {
        Some(operation::Result::Error(status)) => Err(OperationFailed {
            id: current.id.clone(),
            code: status.code,
            message: status.message.clone(),
        }
        .into()),
        _ => Ok(current),
    }
}

/// Gets the operation, retrying a few times while the server is
/// unavailable. The final error states that the operation may still be running.
async fn poll(
    operations: &mut OperationServiceClient<Transport>,
    id: &str,
) -> anyhow::Result<Operation> {
    let mut attempt = 0;
    loop {
        let request = GetOperationRequest {
            operation_id: id.to_owned(),
        };
        match operations.get(request).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status)
                if status.code() == tonic::Code::Unavailable && attempt < UNAVAILABLE_RETRIES =>
            {
                attempt += 1;
                tokio::time::sleep(RETRY_DELAY).await;
            }
            Err(status) => {
                return Err(anyhow::anyhow!(
                    "{}: {} while waiting for operation {id}; it may still be running, and `backstop operation wait {id}` waits again",
                    code_name(status.code() as i32),
                    status.message()
                ))
            }
        }
    }
}

/// Returns the metadata of an operation as a dynamic message, when its type
/// is in the API's descriptors.
pub fn metadata_message(operation: &Operation) -> Option<DynamicMessage> {
    let any = operation.metadata.as_ref()?;
    let name = any.type_url.rsplit('/').next()?;
    decode_dynamic(name, &any.value).ok()
}

fn metadata_percent(operation: &Operation) -> Option<f64> {
    let metadata = metadata_message(operation)?;
    match metadata.get_field_by_name("progress_percentage")?.as_ref() {
        Value::F64(percent) => Some(*percent),
        _ => None,
    }
}

fn metadata_string(metadata: &DynamicMessage, field: &str) -> Option<String> {
    let value = metadata.get_field_by_name(field)?;
    value
        .as_str()
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
}

/// The instance task whose byte counts show an operation's progress: the
/// newest BACKUP task for a policy execution, the newest RECOVERY task for
/// a recovery.
///
/// NOTE: a Task does not name its operation, so a scheduled backup that
/// starts on the same instance during the wait would show its bytes instead.
struct TaskTarget {
    instance: String,
    kind: task::Type,
}

impl TaskTarget {
    fn of(operation: &Operation) -> Option<Self> {
        let metadata = metadata_message(operation)?;
        let (kind, field) = match metadata.descriptor().name() {
            "ExecuteMetadata" => (task::Type::Backup, "compute_instance_id"),
            "StartRecoveryMetadata" => (task::Type::Recovery, "dst_compute_instance_id"),
            _ => return None,
        };
        Some(TaskTarget {
            instance: metadata_string(&metadata, field)?,
            kind,
        })
    }

    /// Reads the task's progress; any failure only means no byte counts.
    async fn bytes(&self, resources: &mut ResourceServiceClient<Transport>) -> Option<(u64, u64)> {
        let tasks = resources
            .list_tasks(ListTasksRequest {
                compute_instance_id: self.instance.clone(),
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .ok()?
            .into_inner()
            .tasks;
        let task: &Task = tasks
            .iter()
            .filter(|task| task.r#type == self.kind as i32)
            .max_by_key(|task| task.id)?;
        let progress = task.progress.as_ref()?;
        if progress.total <= 0 {
            return None;
        }
        Some((progress.current.max(0) as u64, progress.total as u64))
    }
}

/// Shows progress as a bar on a terminal or as plain lines on stderr.
enum Reporter {
    Bar {
        bar: ProgressBar,
        showing_bytes: bool,
    },
    Lines {
        id: String,
        started: Instant,
        first_bytes: Option<(Instant, u64)>,
        /// When the last line was printed; `None` until the first one,
        /// which is printed at the first poll.
        last_line: Option<Instant>,
        last_sample: Sample,
    },
}

impl Reporter {
    fn new(operation: &Operation) -> Self {
        let label = if operation.description.is_empty() {
            format!("operation {}", operation.id)
        } else {
            format!("{} ({})", operation.description, operation.id)
        };
        if std::io::stderr().is_terminal() {
            // The label goes on its own line so the bar fits a narrow terminal.
            eprintln!("{label}");
            let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
            bar.set_style(percent_style());
            bar.enable_steady_tick(Duration::from_millis(200));
            Reporter::Bar {
                bar,
                showing_bytes: false,
            }
        } else {
            eprintln!("waiting for {label}");
            Reporter::Lines {
                id: operation.id.clone(),
                started: Instant::now(),
                first_bytes: None,
                last_line: None,
                last_sample: Sample::default(),
            }
        }
    }

    fn update(&mut self, sample: Sample) {
        match self {
            Reporter::Bar { bar, showing_bytes } => {
                let percent = sample.percent.unwrap_or(0.0);
                bar.set_message(format!("{percent:.0}%"));
                match sample.bytes {
                    Some((current, total)) => {
                        if !*showing_bytes {
                            bar.set_style(bytes_style());
                            bar.reset_eta();
                            *showing_bytes = true;
                        }
                        bar.set_length(total);
                        bar.set_position(current.min(total));
                    }
                    None if !*showing_bytes => bar.set_position(percent.clamp(0.0, 100.0) as u64),
                    None => {}
                }
            }
            Reporter::Lines {
                id,
                started,
                first_bytes,
                last_line,
                last_sample,
            } => {
                let now = Instant::now();
                if let (None, Some((current, _))) = (&first_bytes, sample.bytes) {
                    *first_bytes = Some((now, current));
                }
                if let Some(previous) = *last_line {
                    let changed = sample != *last_sample;
                    let due = now.duration_since(previous);
                    if !(changed && due >= LINE_INTERVAL || due >= QUIET_INTERVAL) {
                        return;
                    }
                }
                *last_line = Some(now);
                *last_sample = sample;
                eprintln!("{}", progress_line(id, sample, *first_bytes, *started, now));
            }
        }
    }

    fn finish(&mut self, operation: &Operation) {
        let failed = matches!(operation.result, Some(operation::Result::Error(_)));
        match self {
            Reporter::Bar { bar, .. } => {
                if failed {
                    bar.abandon_with_message("failed");
                } else {
                    if let Some(length) = bar.length() {
                        bar.set_position(length);
                    }
                    bar.finish_with_message("100%");
                }
            }
            Reporter::Lines { id, started, .. } => {
                let outcome = if failed { "failed" } else { "done" };
                eprintln!(
                    "operation {id} {outcome} after {:.1}s",
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
}

fn percent_style() -> ProgressStyle {
    ProgressStyle::with_template("[{bar:30}] {msg} ({elapsed})")
        .expect("valid progress template")
        .progress_chars("=> ")
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "[{bar:30}] {msg} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}, {eta} left",
    )
    .expect("valid progress template")
    .progress_chars("=> ")
}

/// Formats a plain progress line such as
/// `operation X: 42% done, 27.00 MiB of 64.00 MiB, 12.30 MiB/s, about 3s left`.
fn progress_line(
    id: &str,
    sample: Sample,
    first_bytes: Option<(Instant, u64)>,
    started: Instant,
    now: Instant,
) -> String {
    let mut line = format!("operation {id}:");
    match sample.percent {
        Some(percent) => line.push_str(&format!(" {percent:.0}% done")),
        None => line.push_str(&format!(
            " running for {:.0}s",
            now.duration_since(started).as_secs_f64()
        )),
    }
    if let Some((current, total)) = sample.bytes {
        line.push_str(&format!(
            ", {} of {}",
            BinaryBytes(current),
            BinaryBytes(total)
        ));
        if let Some((since, base)) = first_bytes {
            let seconds = now.duration_since(since).as_secs_f64();
            if seconds > 0.0 && current > base {
                let rate = (current - base) as f64 / seconds;
                line.push_str(&format!(", {}/s", BinaryBytes(rate as u64)));
                let left = total.saturating_sub(current) as f64 / rate;
                line.push_str(&format!(", about {left:.0}s left"));
            }
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_with_bytes() {
        let start = Instant::now();
        let now = start + Duration::from_secs(2);
        let line = progress_line(
            "op-1",
            Sample {
                percent: Some(50.0),
                bytes: Some((4 << 20, 8 << 20)),
            },
            Some((start, 0)),
            start,
            now,
        );
        assert_eq!(
            line,
            "operation op-1: 50% done, 4.00 MiB of 8.00 MiB, 2.00 MiB/s, about 2s left"
        );
    }

    #[test]
    fn progress_line_without_metadata_percent() {
        let start = Instant::now();
        let line = progress_line(
            "op-2",
            Sample::default(),
            None,
            start,
            start + Duration::from_secs(3),
        );
        assert_eq!(line, "operation op-2: running for 3s");
    }
}
