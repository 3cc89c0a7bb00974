//! Test harness: starts the built `backstop` binary on a temporary data
//! folder and a free loopback port, and connects real gRPC clients to it.

#![allow(dead_code)]

pub mod flows;
pub mod rest;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How long a server may take to print its listening address.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `backstop server` process, killed on drop.
pub struct TestServer {
    child: Option<Child>,
    pub address: String,
    pub data_dir: PathBuf,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
    /// The thread that reads the server's log; it ends when the process
    /// closes its stderr.
    log_reader: Option<std::thread::JoinHandle<()>>,
    tls_ca: Option<Vec<u8>>,
    _temp: Option<tempfile::TempDir>,
}

/// Options of [`TestServer::start_with`].
#[derive(Default)]
pub struct ServerOptions {
    /// Reuse this data folder instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Contents of a TOML config file passed with `--config`.
    pub config: Option<String>,
    /// Serve TLS with a fresh self-signed certificate for 127.0.0.1.
    pub tls: bool,
    pub extra_args: Vec<String>,
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(ServerOptions::default())
    }

    pub fn start_with(options: ServerOptions) -> Self {
        let (temp, data_dir) = match options.data_dir {
            Some(dir) => (None, dir),
            None => {
                let temp = tempfile::tempdir().expect("temp dir");
                let dir = temp.path().join("data");
                (Some(temp), dir)
            }
        };
        let support = data_dir.with_extension("support");
        std::fs::create_dir_all(&support).expect("support dir");

        let mut command = Command::new(env!("CARGO_BIN_EXE_backstop"));
        command
            .args([
                "--log-format",
                "json",
                "server",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&data_dir)
            .env("BACKSTOP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(config) = &options.config {
            let path = support.join("backstop.toml");
            std::fs::write(&path, config).expect("write config");
            command.arg("--config").arg(path);
        }
        let mut tls_ca = None;
        if options.tls {
            let (cert, key) = self_signed_certificate();
            std::fs::write(support.join("cert.pem"), &cert).expect("write cert");
            std::fs::write(support.join("key.pem"), &key).expect("write key");
            command
                .arg("--tls-cert")
                .arg(support.join("cert.pem"))
                .arg("--tls-key")
                .arg(support.join("key.pem"));
            tls_ca = Some(cert.into_bytes());
        }
        command.args(&options.extra_args);

        let mut child = command.spawn().expect("start backstop binary");
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = mpsc::channel();
        let sink = logs.clone();
        let log_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                    eprintln!("server: {line}");
                    continue;
                };
                if value["message"] == "listening" {
                    let _ =
                        address_tx.send(value["address"].as_str().unwrap_or_default().to_owned());
                }
                sink.lock().unwrap().push(value);
            }
        });
        let address = match address_rx.recv_timeout(START_TIMEOUT) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; logs: {:?}", logs.lock().unwrap());
            }
        };
        TestServer {
            child: Some(child),
            address,
            data_dir,
            logs,
            log_reader: Some(log_reader),
            tls_ca,
            _temp: temp,
        }
    }

    /// Returns a channel to the server, over TLS when it serves TLS.
    pub async fn channel(&self) -> Channel {
        let endpoint = match &self.tls_ca {
            None => Endpoint::from_shared(format!("http://{}", self.address)).unwrap(),
            Some(ca) => Endpoint::from_shared(format!("https://{}", self.address))
                .unwrap()
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(ca))
                        .domain_name("localhost"),
                )
                .unwrap(),
        };
        endpoint.connect().await.expect("connect to test server")
    }

    /// Waits up to 5 s for a log line that matches `predicate`, since the
    /// reader thread may lag behind the server.
    pub fn wait_for_log(
        &self,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        for _ in 0..100 {
            if let Some(line) = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .find(|line| predicate(line))
            {
                return Some(line.clone());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Returns the JSON log lines printed so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server still running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        for _ in 0..200 {
            if let Some(status) = child.try_wait().expect("wait for server") {
                // Every line the server printed is in `logs` once the reader
                // has seen the end of its stderr.
                if let Some(reader) = self.log_reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("server did not exit within 10 s of SIGTERM");
    }

    /// Kills the server with SIGKILL, as a crash would, and keeps its data
    /// folder for a restart.
    pub fn kill_keep_data(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        let mut child = self.child.take().expect("server still running");
        child.kill().expect("kill server");
        child.wait().expect("wait for server");
        (self.data_dir.clone(), self._temp.take())
    }

    /// Stops the server and keeps its data folder for a restart.
    pub fn stop_keep_data(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        self.terminate();
        (self.data_dir.clone(), self._temp.take())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes a self-signed certificate for `localhost` and 127.0.0.1; returns
/// the certificate and key as PEM.
pub fn self_signed_certificate() -> (String, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("generate certificate");
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

/// Adds `authorization: Bearer <token>` and optional extra metadata.
pub fn with_metadata<T>(
    message: T,
    token: Option<&str>,
    extra: &[(&'static str, &str)],
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    for (name, value) in extra {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    request
}

/// Opens the catalog of a server's data folder, as the engine will write
/// backups into it.
pub async fn open_catalog(data_dir: &Path) -> backstop_catalog::SqliteCatalog {
    backstop_catalog::SqliteCatalog::open(data_dir)
        .await
        .expect("open catalog")
}
