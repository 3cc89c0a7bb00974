//! Checks the `backstop` binary makes before it serves: disk paths, the
//! listen port, the data folder of `verify`, the log filter, the way
//! start-up errors are printed, and agents that trust the system's CAs.

mod common;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
};

use common::{flows::*, ServerOptions, TestServer};

/// Runs `backstop` with `args` and `RUST_BACKTRACE=1`, so that a
/// backtrace printed with an error shows up in the output.
fn run_backstop(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_backstop"));
    command
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("BACKSTOP_LOG")
        .stdin(Stdio::null());
    for (name, value) in envs {
        command.env(name, value);
    }
    command.output().expect("run backstop")
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that the process failed with status 1 and printed the error
/// plainly, without a backtrace.
fn assert_plain_failure(output: &Output) -> String {
    let stderr = stderr_of(output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: "), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    stderr
}

fn write_agent_config(dir: &Path, server: &str, disk: &Path, extra: &str) -> String {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "server = \"{server}\"\ncompute_instance_id = \"{INSTANCE}\"\nfolder_id = \"{FOLDER}\"\n\
             disks = [{{ name = \"vda\", path = \"{}\" }}]\n{extra}",
            disk.display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn agent_rejects_missing_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("no-such-disk.raw");
    // The agent checks its disks before it dials, so nothing listens here.
    let config = write_agent_config(dir.path(), "http://127.0.0.1:9", &disk, "");

    let output = run_backstop(&["agent", "--config", &config], &[]);

    let stderr = assert_plain_failure(&output);
    assert!(stderr.contains(INSTANCE), "{stderr}");
    assert!(stderr.contains("`vda`"), "{stderr}");
    assert!(stderr.contains(&disk.display().to_string()), "{stderr}");
    assert!(stderr.contains("No such file"), "{stderr}");
}

#[test]
fn agent_rejects_folder_as_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_agent_config(dir.path(), "http://127.0.0.1:9", dir.path(), "");

    let output = run_backstop(&["agent", "--config", &config], &[]);

    let stderr = assert_plain_failure(&output);
    assert!(stderr.contains("`vda`"), "{stderr}");
    assert!(
        stderr.contains("neither a regular file nor a block device"),
        "{stderr}"
    );
}

/// Starts `backstop server` with one local instance whose disk `vda` is
/// at `disk`; returns the output and the data folder it was given.
fn start_server_with_local_disk(dir: &Path, disk: &Path) -> (Output, std::path::PathBuf) {
    let data_dir = dir.join("data");
    let config = dir.join("backstop.toml");
    std::fs::write(
        &config,
        format!(
            "[[instances]]\ncompute_instance_id = \"{INSTANCE}\"\nfolder_id = \"{FOLDER}\"\n\
             disks = [{{ name = \"vda\", path = \"{}\" }}]\n",
            disk.display()
        ),
    )
    .unwrap();
    let output = run_backstop(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    (output, data_dir)
}

#[test]
fn server_rejects_missing_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("no-such-disk.raw");

    let (output, data_dir) = start_server_with_local_disk(dir.path(), &disk);

    let stderr = assert_plain_failure(&output);
    assert!(stderr.contains("instances[0].disks[0]"), "{stderr}");
    assert!(stderr.contains(&disk.display().to_string()), "{stderr}");
    assert!(
        !data_dir.exists(),
        "the failed start created {}",
        data_dir.display()
    );
}

#[test]
fn server_rejects_folder_as_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("a-folder");
    std::fs::create_dir(&disk).unwrap();

    let (output, data_dir) = start_server_with_local_disk(dir.path(), &disk);

    let stderr = assert_plain_failure(&output);
    assert!(stderr.contains(INSTANCE), "{stderr}");
    assert!(stderr.contains("`vda`"), "{stderr}");
    assert!(stderr.contains(&disk.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("neither a regular file nor a block device"),
        "{stderr}"
    );
    assert!(
        !data_dir.exists(),
        "the failed start created {}",
        data_dir.display()
    );
}

#[test]
fn busy_port_leaves_no_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let busy_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy_listener.local_addr().unwrap().to_string();

    let output = run_backstop(
        &[
            "server",
            "--listen",
            &address,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        &[],
    );

    let stderr = assert_plain_failure(&output);
    assert!(
        stderr.contains(&format!("cannot listen on {address}")),
        "{stderr}"
    );
    assert!(stderr.contains("caused by: "), "{stderr}");
    assert!(
        !data_dir.exists(),
        "the failed start created {}",
        data_dir.display()
    );
}

#[test]
fn verify_rejects_folder_without_data() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = dir.path().join("missing");

    for folder in [&empty, &missing] {
        let output = run_backstop(&["verify", "--data-dir", folder.to_str().unwrap()], &[]);

        let stderr = assert_plain_failure(&output);
        assert!(stderr.contains(&folder.display().to_string()), "{stderr}");
        assert!(stderr.contains("contains no Backstop data"), "{stderr}");
    }
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    assert!(!missing.exists());
}

#[test]
fn invalid_log_filter_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");

    let output = run_backstop(
        &["verify", "--data-dir", missing.to_str().unwrap()],
        &[("BACKSTOP_LOG", "info,backstop=loud")],
    );

    let stderr = stderr_of(&output);
    assert!(stderr.contains("invalid BACKSTOP_LOG filter"), "{stderr}");
    assert!(stderr.contains("info,backstop=loud"), "{stderr}");
}

#[test]
fn valid_log_filter_is_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");

    let output = run_backstop(
        &["verify", "--data-dir", missing.to_str().unwrap()],
        &[("BACKSTOP_LOG", "info,backstop_server=debug")],
    );

    let stderr = stderr_of(&output);
    assert!(!stderr.contains("invalid BACKSTOP_LOG"), "{stderr}");
}

/// An `https://` agent without `tls_ca` verifies the server against the
/// system's CA store, which `SSL_CERT_FILE` replaces here with the test
/// server's self-signed certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_agent_without_tls_ca_trusts_system_roots() {
    let server = TestServer::start_with(ServerOptions {
        tls: true,
        ..Default::default()
    });
    let cert = server.data_dir.with_extension("support").join("cert.pem");
    assert!(cert.is_file(), "{} is missing", cert.display());
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("vda.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let config = write_agent_config(
        dir.path(),
        &format!("https://{}", server.address),
        &disk,
        "",
    );

    let mut agent = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["agent", "--config", &config])
        .env("SSL_CERT_FILE", &cert)
        .env_remove("SSL_CERT_DIR")
        .env("BACKSTOP_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start backstop agent");
    let channel = server.channel().await;
    wait_online(channel).await;

    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent exited: {:?}",
        agent.try_wait()
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sigterm_line_names_agent() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("vda.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let config = write_agent_config(dir.path(), &format!("http://{}", server.address), &disk, "");

    let agent = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["agent", "--config", &config])
        .env("BACKSTOP_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start backstop agent");
    wait_online(server.channel().await).await;
    let status = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let output = agent.wait_with_output().unwrap();

    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("SIGTERM received, stopping the agent"),
        "{stderr}"
    );
    assert!(!stderr.contains("draining calls"), "{stderr}");
}
