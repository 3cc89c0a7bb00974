//! End-to-end tests of the client commands (`backstop backup|policy|vm|
//! operation|provider`): the built binary against a real server, with a
//! local instance on real disk images where a test needs backups.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use backstop_catalog::{AnyMessage, Catalog, NewOperation};
use common::{
    flows::{
        build_disks, create_and_apply_policy, execute_and_wait, server_config, wait_online, FOLDER,
        INSTANCE,
    },
    open_catalog, ServerOptions, TestServer,
};
use serde_json::Value;

/// Variables of the client that a developer's shell may have set.
const CLIENT_VARIABLES: &[&str] = &[
    "BACKSTOP_ENDPOINT",
    "BACKSTOP_TOKEN",
    "BACKSTOP_FOLDER_ID",
    "BACKSTOP_FORMAT",
    "BACKSTOP_PROFILE",
    "BACKSTOP_CLI_CONFIG",
    "BACKSTOP_CA_FILE",
    "XDG_CONFIG_HOME",
];

/// PolicySettings of a nightly policy in the API's JSON form, lowerCamelCase.
const SETTINGS_JSON: &str = r#"{
  "compression": "NORMAL",
  "format": "AUTO",
  "reattempts": {"enabled": true, "interval": {"type": "MINUTES", "count": "5"}, "maxAttempts": "10"},
  "vmSnapshotReattempts": {"enabled": true, "interval": {"type": "MINUTES", "count": "5"}, "maxAttempts": "5"},
  "splitting": {"size": "1099511627776"},
  "vss": {"enabled": false, "provider": "NATIVE"},
  "performanceWindow": {"enabled": false},
  "retention": {"rules": [{"backupSet": ["DAILY"], "maxAge": {"type": "DAYS", "count": "14"}}]},
  "scheduling": {
    "enabled": true,
    "maxParallelBackups": "1",
    "randMaxDelay": {"type": "MINUTES", "count": "30"},
    "scheme": "ALWAYS_INCREMENTAL",
    "weeklyBackupDay": "MONDAY",
    "backupSets": [{"type": "TYPE_AUTO", "time": {"repeatAt": [{"hour": "3", "minute": "0"}], "type": "DAILY"}}]
  },
  "cbt": "USE_IF_ENABLED"
}"#;

/// The same settings as [`SETTINGS_JSON`] in YAML with snake_case names.
const SETTINGS_YAML: &str = "\
compression: NORMAL
format: AUTO
reattempts: {enabled: true, interval: {type: MINUTES, count: 5}, max_attempts: 10}
vm_snapshot_reattempts: {enabled: true, interval: {type: MINUTES, count: 5}, max_attempts: 5}
splitting: {size: 1099511627776}
vss: {enabled: false, provider: NATIVE}
performance_window: {enabled: false}
retention:
  rules:
    - backup_set: [DAILY]
      max_age: {type: DAYS, count: 14}
scheduling:
  enabled: true
  max_parallel_backups: 1
  rand_max_delay: {type: MINUTES, count: 30}
  scheme: ALWAYS_INCREMENTAL
  weekly_backup_day: MONDAY
  backup_sets:
    - type: TYPE_AUTO
      time: {repeat_at: [{hour: 3, minute: 0}], type: DAILY}
cbt: USE_IF_ENABLED
";

/// Outcome of one client run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    fn yaml(&self) -> Value {
        serde_yaml_ng::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not YAML ({e}):\n{}", self.stdout))
    }
}

/// A client with its own HOME, so no profile file of the developer leaks in.
struct Client {
    home: tempfile::TempDir,
    endpoint: Option<String>,
    folder: Option<String>,
}

impl Client {
    fn new(server: Option<&TestServer>) -> Self {
        Client {
            home: tempfile::tempdir().unwrap(),
            endpoint: server.map(|s| s.address.clone()),
            folder: Some(FOLDER.to_owned()),
        }
    }

    fn command(&self) -> Command {
        self.command_of(env!("CARGO_BIN_EXE_backstop"))
    }

    /// Returns a command for `program` with this client's environment.
    fn command_of(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        for variable in CLIENT_VARIABLES {
            command.env_remove(variable);
        }
        command.env("HOME", self.home.path()).stdin(Stdio::null());
        if let Some(endpoint) = &self.endpoint {
            command.env("BACKSTOP_ENDPOINT", endpoint);
        }
        if let Some(folder) = &self.folder {
            command.env("BACKSTOP_FOLDER_ID", folder);
        }
        command
    }

    fn run_command(mut command: Command) -> Run {
        let output = command.output().expect("run the backstop binary");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut command = self.command();
        command.args(args);
        Self::run_command(command)
    }

    /// Runs and asserts exit status 0.
    fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(
            run.code, 0,
            "backstop {args:?} failed:\nstdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        run
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.home.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Returns the start offset of each column header in a table's first line.
fn header_offsets(table: &str, headers: &[&str]) -> Vec<usize> {
    let header = table.lines().next().expect("table has a header line");
    headers
        .iter()
        .map(|name| {
            header
                .find(name)
                .unwrap_or_else(|| panic!("header {name:?} missing in {header:?}"))
        })
        .collect()
}

/// Returns the row of a table that contains `needle`.
fn row_with<'a>(table: &'a str, needle: &str) -> &'a str {
    table
        .lines()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle:?} in:\n{table}"))
}

fn assert_rfc3339(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a string"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text} is not RFC 3339: {e}"));
}

async fn instance_server(dir: &Path) -> TestServer {
    let (ext4, gpt) = build_disks(dir);
    let server = TestServer::start_with(ServerOptions {
        config: Some(server_config(&ext4, &gpt)),
        ..Default::default()
    });
    wait_online(server.channel().await).await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_backup_and_recovery_flow() {
    let dir = tempfile::tempdir().unwrap();
    let server = instance_server(dir.path()).await;
    let client = Client::new(Some(&server));
    let json_file = client.write("settings.json", SETTINGS_JSON);
    let yaml_file = client.write("settings.yaml", SETTINGS_YAML);

    // Create from JSON, waiting: the result is the policy.
    let created = client.ok(&[
        "policy",
        "create",
        "--name",
        "nightly-json",
        "--settings-from-file",
        path_str(&json_file),
        "--format",
        "json",
    ]);
    let from_json = created.json();
    assert_eq!(from_json["name"], "nightly-json");
    assert_eq!(from_json["folder_id"], FOLDER);
    assert_eq!(from_json["settings"]["compression"], "NORMAL");
    assert_eq!(
        from_json["settings"]["scheduling"]["max_parallel_backups"],
        "1"
    );
    assert_rfc3339(&from_json["created_at"]);
    let policy_id = from_json["id"].as_str().unwrap().to_owned();

    // Create from YAML with --async, then wait for the operation by id.
    let started = client
        .ok(&[
            "policy",
            "create",
            "--name",
            "nightly-yaml",
            "--settings-from-file",
            path_str(&yaml_file),
            "--async",
            "--format",
            "yaml",
        ])
        .yaml();
    assert_eq!(
        started["metadata"]["@type"],
        "type.googleapis.com/yandex.cloud.backup.v1.CreatePolicyMetadata"
    );
    let operation_id = started["id"].as_str().unwrap();
    let from_yaml = client
        .ok(&["operation", "wait", operation_id, "--format", "json"])
        .json();
    assert_eq!(from_yaml["name"], "nightly-yaml");
    assert_eq!(
        from_yaml["settings"], from_json["settings"],
        "camelCase JSON and snake_case YAML give the same settings"
    );

    // List and get in every format.
    let table = client.ok(&["policy", "list"]).stdout;
    let offsets = header_offsets(&table, &["ID", "NAME", "ENABLED", "CREATED AT"]);
    for name in ["nightly-json", "nightly-yaml"] {
        assert_eq!(
            row_with(&table, name).find(name),
            Some(offsets[1]),
            "{table}"
        );
    }
    let listed = client.ok(&["policy", "list", "--format", "json"]).json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let listed_yaml = client.ok(&["policy", "list", "--format", "yaml"]).yaml();
    assert_eq!(listed, listed_yaml);
    let text = client.ok(&["policy", "get", &policy_id]).stdout;
    assert!(text.contains("name: nightly-json\n"), "{text}");
    assert!(text.contains("settings.compression: NORMAL\n"), "{text}");
    let by_flag = client
        .ok(&["policy", "get", "--id", &policy_id, "--format", "yaml"])
        .yaml();
    assert_eq!(by_flag["id"], policy_id.as_str());

    // Apply, then execute while waiting: plain progress lines on stderr.
    let applied = client.ok(&["policy", "apply", &policy_id, "--instance-id", INSTANCE]);
    assert_eq!(applied.stdout, "done\n");
    let applications = client
        .ok(&["policy", "list-applications", "--policy-id", &policy_id])
        .stdout;
    assert!(row_with(&applications, INSTANCE).contains(&policy_id));
    let executed = client.ok(&["policy", "execute", &policy_id, "--instance-id", INSTANCE]);
    assert_eq!(executed.stdout, "done\n");
    assert!(
        executed.stderr.contains("waiting for Back up instance"),
        "{}",
        executed.stderr
    );
    assert!(executed.stderr.contains("% done"), "{}", executed.stderr);
    assert!(
        executed
            .stderr
            .lines()
            .last()
            .unwrap()
            .contains(" done after "),
        "{}",
        executed.stderr
    );

    // The backup in every format.
    let backups = client.ok(&["backup", "list", "--format", "json"]).json();
    let backups = backups.as_array().unwrap();
    assert_eq!(backups.len(), 1);
    let backup = &backups[0];
    assert_eq!(backup["compute_instance_id"], INSTANCE);
    assert_eq!(backup["policy_id"], policy_id.as_str());
    assert!(backup["size"].as_str().unwrap().parse::<u64>().unwrap() > 0);
    let backup_id = backup["id"].as_str().unwrap().to_owned();
    let as_yaml = client.ok(&["backup", "list", "--format", "yaml"]).yaml();
    assert_eq!(as_yaml[0], *backup);
    let table = client
        .ok(&["backup", "list", "--instance-id", INSTANCE])
        .stdout;
    let offsets = header_offsets(&table, &["ID", "INSTANCE ID", "POLICY ID", "SIZE"]);
    let row = row_with(&table, &backup_id);
    assert_eq!(row.find(INSTANCE), Some(offsets[1]), "{table}");
    assert!(row.ends_with("MiB"), "{table}");
    let got = client
        .ok(&["backup", "get", &backup_id, "--format", "json"])
        .json();
    assert_eq!(got, *backup);
    let text = client.ok(&["backup", "get", &backup_id]).stdout;
    assert!(text.contains(&format!("id: {backup_id}\n")), "{text}");
    assert!(text.contains("disks[0].name: vda\n"), "{text}");
    let archives = client.ok(&["backup", "list-archives"]).stdout;
    assert!(
        row_with(&archives, INSTANCE).contains(backup["archive_id"].as_str().unwrap()),
        "{archives}"
    );

    // Recovery with --async, followed by operation get and wait.
    let started = client
        .ok(&[
            "backup",
            "recover",
            "--source-backup-id",
            &backup_id,
            "--destination-instance-id",
            INSTANCE,
            "--async",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(
        started["metadata"]["@type"],
        "type.googleapis.com/yandex.cloud.backup.v1.StartRecoveryMetadata"
    );
    assert_eq!(started["metadata"]["src_backup_id"], backup_id.as_str());
    let recovery_id = started["id"].as_str().unwrap();
    let fetched = client
        .ok(&["operation", "get", recovery_id, "--format", "json"])
        .json();
    assert_eq!(fetched["id"], recovery_id);
    let waited = client.ok(&["operation", "wait", recovery_id]);
    assert_eq!(waited.stdout, "done\n");
    let finished = client
        .ok(&["operation", "get", recovery_id, "--format", "json"])
        .json();
    assert_eq!(finished["done"], true);
    assert_eq!(
        finished["response"]["@type"],
        "type.googleapis.com/google.protobuf.Empty"
    );

    // Recovery in the foreground. As JSON it prints the finished operation.
    let recovered = client.ok(&[
        "backup",
        "recover",
        "--source-backup-id",
        &backup_id,
        "--destination-instance-id",
        INSTANCE,
        "--format",
        "json",
    ]);
    let operation = recovered.json();
    assert_eq!(operation["done"], true);
    assert_eq!(operation["metadata"]["progress_percentage"], 100.0);
    assert!(
        recovered.stderr.contains("waiting for"),
        "{}",
        recovered.stderr
    );

    // The instance, its tasks and operations.
    let resources = client.ok(&["vm", "list", "--format", "json"]).json();
    assert_eq!(resources[0]["compute_instance_id"], INSTANCE);
    assert_eq!(resources[0]["online"], true);
    let text = client.ok(&["vm", "get", INSTANCE]).stdout;
    assert!(text.contains("online: true\n"), "{text}");
    let tasks = client.ok(&["vm", "list-tasks", INSTANCE]).stdout;
    let offsets = header_offsets(&tasks, &["ID", "TYPE", "STATUS", "DONE", "TOTAL"]);
    assert_eq!(
        row_with(&tasks, "RECOVERY").find("RECOVERY"),
        Some(offsets[1])
    );
    assert!(row_with(&tasks, "BACKUP").contains("COMPLETED"), "{tasks}");
    let operations = client
        .ok(&["vm", "list-operations", INSTANCE, "--format", "json"])
        .json();
    let ids: Vec<&str> = operations
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&recovery_id), "{ids:?}");
    let limited = client
        .ok(&[
            "vm",
            "list-operations",
            INSTANCE,
            "--limit",
            "1",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(limited.as_array().unwrap().len(), 1);

    // Delete the backup.
    let deleted = client.ok(&["backup", "delete", &backup_id, "--instance-id", INSTANCE]);
    assert_eq!(deleted.stdout, "done\n");
    let backups = client.ok(&["backup", "list", "--format", "json"]).json();
    assert_eq!(backups, serde_json::json!([]));

    // Revoke, update and delete policies.
    let revoked = client.ok(&["policy", "revoke", &policy_id, "--instance-id", INSTANCE]);
    assert_eq!(revoked.stdout, "done\n");
    let applications = client
        .ok(&[
            "policy",
            "list-applications",
            "--instance-id",
            INSTANCE,
            "--format",
            "json",
        ])
        .json();
    assert_eq!(applications, serde_json::json!([]));
    let yaml_policy_id = from_yaml["id"].as_str().unwrap();
    let high = client.write(
        "high.yaml",
        &SETTINGS_YAML.replace("compression: NORMAL", "compression: HIGH"),
    );
    let updated = client
        .ok(&[
            "policy",
            "update",
            yaml_policy_id,
            "--settings-from-file",
            path_str(&high),
            "--format",
            "json",
        ])
        .json();
    assert_eq!(updated["id"], yaml_policy_id);
    assert_eq!(updated["settings"]["compression"], "HIGH");
    let removed = client.ok(&["policy", "delete", "--id", yaml_policy_id]);
    assert_eq!(removed.stdout, "done\n");
    let listed = client.ok(&["policy", "list", "--format", "json"]).json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], policy_id.as_str());
}

/// Runs a recovery under `script`, which gives the client a terminal, and
/// checks that the terminal shows the progress bar with byte counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_on_terminal_draws_bar() {
    let dir = tempfile::tempdir().unwrap();
    let server = instance_server(dir.path()).await;
    let channel = server.channel().await;
    let policy_id = create_and_apply_policy(channel.clone()).await;
    execute_and_wait(channel, &policy_id).await;
    let client = Client::new(Some(&server));
    let backup_id = client.ok(&["backup", "list", "--format", "json"]).json()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let line = format!(
        "{} backup recover --source-backup-id {backup_id} --destination-instance-id {INSTANCE}",
        env!("CARGO_BIN_EXE_backstop")
    );
    let mut script = client.command_of("script");
    script.args(["-qefc", &line, "/dev/null"]);
    let run = Client::run_command(script);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let screen = run.stdout.replace('\r', "\n");
    assert!(screen.contains("Recover backup"), "{screen}");
    assert!(
        screen.contains("[=============================="),
        "{screen}"
    );
    assert!(screen.contains("MiB/"), "{screen}");
    assert!(screen.contains(" left"), "{screen}");
    assert!(screen.trim_end().ends_with("done"), "{screen}");
    assert!(!screen.contains("waiting for"), "{screen}");
}

#[tokio::test]
async fn errors_name_code_and_field() {
    let server = TestServer::start();
    let client = Client::new(Some(&server));

    let activated = client.ok(&["provider", "activate"]);
    assert_eq!(activated.stdout, "done\n");
    let providers = client.ok(&["provider", "list", "--format", "json"]).json();
    assert_eq!(providers["names"], serde_json::json!(["cloudbackup"]));

    let unimplemented = client.run(&["backup", "list-files", "some-backup"]);
    assert_eq!(unimplemented.code, 1);
    assert!(
        unimplemented.stderr.starts_with("error: UNIMPLEMENTED: "),
        "{}",
        unimplemented.stderr
    );

    let missing = client.run(&["backup", "get", "no-such-backup"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.starts_with("error: NOT_FOUND: "),
        "{}",
        missing.stderr
    );
    assert!(
        missing.stderr.contains("no-such-backup"),
        "{}",
        missing.stderr
    );
    assert!(missing.stdout.is_empty());

    let missing = client.run(&["policy", "get", "no-such-policy", "--format", "json"]);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("NOT_FOUND"), "{}", missing.stderr);

    let settings = client.write("settings.json", SETTINGS_JSON);
    let long_name = "n".repeat(60);
    let invalid = client.run(&[
        "policy",
        "create",
        "--name",
        &long_name,
        "--settings-from-file",
        path_str(&settings),
    ]);
    assert_eq!(invalid.code, 1);
    assert!(
        invalid.stderr.starts_with("error: INVALID_ARGUMENT: "),
        "{}",
        invalid.stderr
    );
    assert!(invalid.stderr.contains("Name"), "{}", invalid.stderr);

    let bad_enum = client.write(
        "bad.json",
        r#"{"scheduling": {"backupSets": [{"type": "NOT_A_TYPE"}]}}"#,
    );
    let rejected = client.run(&[
        "policy",
        "create",
        "--name",
        "x",
        "--settings-from-file",
        path_str(&bad_enum),
    ]);
    assert_eq!(rejected.code, 2);
    assert!(
        rejected.stderr.contains(path_str(&bad_enum)),
        "{}",
        rejected.stderr
    );
    assert!(
        rejected.stderr.contains("scheduling.backupSets[0].type"),
        "{}",
        rejected.stderr
    );

    let unknown_field = client.write("bad.yaml", "compression: NORMAL\nretension: {}\n");
    let rejected = client.run(&[
        "policy",
        "create",
        "--name",
        "x",
        "--settings-from-file",
        path_str(&unknown_field),
    ]);
    assert_eq!(rejected.code, 2);
    assert!(rejected.stderr.contains("bad.yaml"), "{}", rejected.stderr);
    assert!(rejected.stderr.contains("retension"), "{}", rejected.stderr);

    let absent = client.run(&[
        "policy",
        "create",
        "--name",
        "x",
        "--settings-from-file",
        "/nonexistent/settings.yaml",
    ]);
    assert_eq!(absent.code, 2);
    assert!(
        absent
            .stderr
            .contains("cannot read the settings file /nonexistent/settings.yaml"),
        "{}",
        absent.stderr
    );

    let no_folder = Client {
        folder: None,
        ..Client::new(Some(&server))
    };
    let unset = no_folder.run(&["backup", "list"]);
    assert_eq!(unset.code, 2);
    for place in ["--folder-id", "BACKSTOP_FOLDER_ID", "folder-id"] {
        assert!(unset.stderr.contains(place), "{}", unset.stderr);
    }

    let no_id = client.run(&["policy", "get"]);
    assert_eq!(no_id.code, 2);
    assert!(
        no_id.stderr.contains("missing policy id"),
        "{}",
        no_id.stderr
    );

    let no_flag = client.run(&["backup", "recover", "--source-backup-id", "b"]);
    assert_eq!(no_flag.code, 2);
    assert!(
        no_flag.stderr.contains("--destination-instance-id"),
        "{}",
        no_flag.stderr
    );
}

#[tokio::test]
async fn operation_cancel_then_wait_fails() {
    let server = TestServer::start();
    let client = Client::new(Some(&server));
    let catalog = open_catalog(&server.data_dir).await;
    let created = catalog
        .create_operation(NewOperation {
            description: "Long work".into(),
            created_by: "development".into(),
            metadata: AnyMessage {
                type_url: "type.googleapis.com/yandex.cloud.backup.v1.ActivateProviderMetadata"
                    .into(),
                value: Vec::new(),
            },
            resource_id: None,
            idempotency: None,
            task: None,
        })
        .await
        .unwrap()
        .operation;

    let running = client
        .ok(&["operation", "get", &created.id, "--format", "json"])
        .json();
    assert_eq!(running["description"], "Long work");
    assert!(running.get("done").is_none(), "{running}");

    let cancelled = client
        .ok(&["operation", "cancel", &created.id, "--format", "yaml"])
        .yaml();
    assert_eq!(cancelled["done"], true);
    assert_eq!(cancelled["error"]["code"], 1);

    let waited = client.run(&["operation", "wait", &created.id]);
    assert_eq!(waited.code, 1);
    assert!(
        waited.stderr.contains(&format!(
            "error: operation {} failed: CANCELLED: ",
            created.id
        )),
        "{}",
        waited.stderr
    );
    assert!(waited.stdout.is_empty());

    let text = client.ok(&["operation", "get", &created.id]).stdout;
    assert!(text.contains("done: true\n"), "{text}");
    assert!(text.contains("error.code: 1\n"), "{text}");
}

#[tokio::test]
async fn settings_from_profile_and_env() {
    let server = TestServer::start();
    let client = Client {
        endpoint: None,
        folder: None,
        ..Client::new(None)
    };
    let profile_text = format!(
        "current: lab\nprofiles:\n  lab:\n    endpoint: {}\n    folder-id: folder-profile\n    format: json\n  other:\n    endpoint: 127.0.0.1:1\n    folder-id: folder-other\n",
        server.address
    );

    // The default path under HOME.
    let default_dir = client.home.path().join(".config/backstop");
    std::fs::create_dir_all(&default_dir).unwrap();
    std::fs::write(default_dir.join("config.yaml"), &profile_text).unwrap();
    let from_profile = client.ok(&["provider", "list"]).json();
    assert_eq!(from_profile["folder_id"], "folder-profile");

    // BACKSTOP_CLI_CONFIG names another file.
    let other_file = client.write(
        "cli.yaml",
        &profile_text.replace("folder-profile", "folder-file"),
    );
    let with_config = |extra: &[(&str, &str)], args: &[&str]| {
        let mut command = client.command();
        command.env("BACKSTOP_CLI_CONFIG", &other_file).args(args);
        for (name, value) in extra {
            command.env(name, value);
        }
        Client::run_command(command)
    };
    let run = with_config(&[], &["provider", "list"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["folder_id"], "folder-file");

    // Environment over profile, flag over environment.
    let run = with_config(
        &[("BACKSTOP_FOLDER_ID", "folder-env")],
        &["provider", "list"],
    );
    assert_eq!(run.json()["folder_id"], "folder-env");
    let run = with_config(
        &[("BACKSTOP_FOLDER_ID", "folder-env")],
        &["provider", "list", "--folder-id", "folder-flag"],
    );
    assert_eq!(run.json()["folder_id"], "folder-flag");
    let run = with_config(&[("BACKSTOP_FORMAT", "yaml")], &["provider", "list"]);
    assert_eq!(run.yaml()["folder_id"], "folder-file");
    let run = with_config(
        &[("BACKSTOP_FORMAT", "yaml")],
        &["provider", "list", "--format", "text"],
    );
    assert_eq!(run.stdout, "folder_id: folder-file\n");

    // Choosing another profile by flag and by variable.
    let run = with_config(&[], &["provider", "list", "--profile", "other"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
    assert!(run.stderr.contains("127.0.0.1:1"), "{}", run.stderr);
    let run = with_config(&[("BACKSTOP_PROFILE", "other")], &["provider", "list"]);
    assert!(run.stderr.contains("127.0.0.1:1"), "{}", run.stderr);
    let run = with_config(
        &[
            ("BACKSTOP_PROFILE", "other"),
            ("BACKSTOP_ENDPOINT", &server.address),
        ],
        &["provider", "list"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "folder_id: folder-other\n");

    // Mistakes in the profile file.
    let run = with_config(&[], &["provider", "list", "--profile", "missing"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("profile \"missing\" is not in the profile file"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("lab, other"), "{}", run.stderr);
    std::fs::write(&other_file, "profiles:\n  lab:\n    folder_id: x\n").unwrap();
    let run = with_config(&[], &["provider", "list"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("invalid profile file"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("folder_id"), "{}", run.stderr);
    let mut command = client.command();
    command
        .env(
            "BACKSTOP_CLI_CONFIG",
            client.home.path().join("absent.yaml"),
        )
        .args(["provider", "list"]);
    let run = Client::run_command(command);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("cannot read the profile file"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn token_from_flag_env_and_profile() {
    let server = TestServer::start_with(ServerOptions {
        config: Some(
            "[auth]\nmode = \"tokens\"\n\n[[auth.tokens]]\ntoken = \"token-for-alice\"\nsubject = \"alice\"\nfolders = [\"folder-a\"]\n"
                .to_owned(),
        ),
        ..Default::default()
    });
    let client = Client::new(Some(&server));

    let anonymous = client.run(&["provider", "list"]);
    assert_eq!(anonymous.code, 1);
    assert!(
        anonymous.stderr.contains("UNAUTHENTICATED"),
        "{}",
        anonymous.stderr
    );

    let run = client.ok(&["provider", "list", "--token", "token-for-alice"]);
    assert_eq!(run.stdout, "folder_id: folder-a\n");

    let mut command = client.command();
    command
        .env("BACKSTOP_TOKEN", "token-for-alice")
        .args(["provider", "list"]);
    assert_eq!(Client::run_command(command).code, 0);

    let profile = client.write(
        "cli.yaml",
        "current: alice\nprofiles:\n  alice:\n    token: token-for-alice\n",
    );
    let mut command = client.command();
    command
        .env("BACKSTOP_CLI_CONFIG", &profile)
        .args(["provider", "list"]);
    assert_eq!(Client::run_command(command).code, 0);

    let denied = client.run(&[
        "provider",
        "list",
        "--token",
        "token-for-alice",
        "--folder-id",
        "folder-b",
    ]);
    assert_eq!(denied.code, 1);
    assert!(
        denied.stderr.contains("PERMISSION_DENIED"),
        "{}",
        denied.stderr
    );
}

#[tokio::test]
async fn endpoint_forms_and_tls() {
    let plain = TestServer::start();
    let client = Client {
        endpoint: None,
        ..Client::new(None)
    };
    let port = plain.address.rsplit(':').next().unwrap();
    for endpoint in [
        plain.address.clone(),
        format!("http://{}", plain.address),
        format!("localhost:{port}"),
    ] {
        let run = client.run(&["provider", "list", "--endpoint", &endpoint]);
        assert_eq!(run.code, 0, "endpoint {endpoint}: {}", run.stderr);
        assert_eq!(run.stdout, format!("folder_id: {FOLDER}\n"));
    }

    let bad_scheme = client.run(&["provider", "list", "--endpoint", "ftp://127.0.0.1:1"]);
    assert_eq!(bad_scheme.code, 2);
    assert!(
        bad_scheme.stderr.contains("http:// or https://"),
        "{}",
        bad_scheme.stderr
    );
    let no_port = client.run(&["provider", "list", "--endpoint", "127.0.0.1"]);
    assert_eq!(no_port.code, 2);
    assert!(no_port.stderr.contains("host:port"), "{}", no_port.stderr);

    let tls = TestServer::start_with(ServerOptions {
        tls: true,
        ..Default::default()
    });
    let ca = tls.data_dir.with_extension("support").join("cert.pem");
    let tls_port = tls.address.rsplit(':').next().unwrap();
    for endpoint in [
        format!("https://localhost:{tls_port}"),
        format!("localhost:{tls_port}"),
    ] {
        let run = client.run(&[
            "provider",
            "list",
            "--endpoint",
            &endpoint,
            "--ca-file",
            path_str(&ca),
        ]);
        assert_eq!(run.code, 0, "endpoint {endpoint}: {}", run.stderr);
        assert_eq!(run.stdout, format!("folder_id: {FOLDER}\n"));
    }

    // The test certificate is self-signed, so the system roots reject it.
    let untrusted = client.run(&[
        "provider",
        "list",
        "--endpoint",
        &format!("https://localhost:{tls_port}"),
    ]);
    assert_eq!(untrusted.code, 1);
    assert!(
        untrusted.stderr.contains("cannot connect"),
        "{}",
        untrusted.stderr
    );

    let mixed = client.run(&[
        "provider",
        "list",
        "--endpoint",
        &format!("http://localhost:{tls_port}"),
        "--ca-file",
        path_str(&ca),
    ]);
    assert_eq!(mixed.code, 2);
    assert!(mixed.stderr.contains("plain http://"), "{}", mixed.stderr);
}

#[test]
fn client_flags_stay_off_server_commands() {
    let output = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["server", "--folder-id", "x"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unexpected argument '--folder-id'"),
        "{stderr}"
    );
}
