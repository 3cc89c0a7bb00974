"""Fixtures that start the built `backstop` binary for SDK tests.

Each server gets its own temporary data folder and a port picked by the
operating system (`--listen 127.0.0.1:0`); the address is read from the
server's JSON `listening` log line.
"""

import datetime
import ipaddress
import json
import os
import pathlib
import queue
import subprocess
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20


def backstop_binary():
    path = os.environ.get("BACKSTOP_BIN") or REPO_ROOT / "target" / "debug" / "backstop"
    path = pathlib.Path(path)
    if not path.exists():
        pytest.fail(f"{path} does not exist; build it with `cargo build -p backstop` or set BACKSTOP_BIN")
    return path


def make_certificate(folder):
    """Writes a self-signed certificate for localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backstop test server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (folder / "cert.pem").write_bytes(cert_pem)
    (folder / "key.pem").write_bytes(key_pem)
    return cert_pem


class Server:
    """A running `backstop server` process."""

    def __init__(self, folder, tls=False, config=None):
        self.folder = folder
        self.cert_pem = make_certificate(folder) if tls else None
        args = [str(backstop_binary()), "--log-format", "json", "server",
                "--listen", "127.0.0.1:0", "--data-dir", str(folder / "data")]
        if tls:
            args += ["--tls-cert", str(folder / "cert.pem"), "--tls-key", str(folder / "key.pem")]
        if config is not None:
            (folder / "backstop.toml").write_text(config)
            args += ["--config", str(folder / "backstop.toml")]
        self.logs = []
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        addresses = queue.Queue()
        threading.Thread(target=self._read_logs, args=(addresses,), daemon=True).start()
        try:
            self.address = addresses.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.stop()
            pytest.fail(f"backstop server did not start; logs: {self.logs}")

    def _read_logs(self, addresses):
        for line in self.process.stderr:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.logs.append(entry)
            if entry.get("message") == "listening":
                addresses.put(entry["address"])

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def start_server(tmp_path):
    """Returns a function that starts a server; all are stopped afterwards."""
    servers = []

    def start(**kwargs):
        folder = tmp_path / f"server{len(servers)}"
        folder.mkdir()
        server = Server(folder, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
