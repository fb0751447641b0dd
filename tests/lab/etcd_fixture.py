"""Test helpers: a throwaway PKI and a real single-member etcd 3.4 with TLS client auth.

The API server's tests need a REAL etcd so that storage, revisions and unavailability behave
as in the lab. Each call gets free ports and a tmp dir; `stop()` kills the process and waits.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


class TestCA:
    """A CA that issues server+client certs for 127.0.0.1/localhost (PEM files in `dir`)."""

    def __init__(self, *, dir: Path, name: str = "lab-test-ca") -> None:
        self.dir = dir
        dir.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_file = dir / f"{name}.crt"
        self.cert_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    @property
    def pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, *, name: str) -> CertPair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        pair = CertPair(cert=self.dir / f"{name}.crt", key=self.dir / f"{name}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return pair


@dataclass
class EtcdProcess:
    """A running etcd member: its client endpoint, the certs a client needs, the process."""

    endpoint: str
    ca: TestCA
    client: CertPair
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def etcdctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "etcdctl", f"--endpoints={self.endpoint}", f"--cacert={self.ca.cert_file}",
                f"--cert={self.client.cert}", f"--key={self.client.key}", *args,
            ],
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=20, check=False,
        )


def start_etcd(*, dir: Path, ca: TestCA | None = None, deadline_s: float = 20.0) -> EtcdProcess:
    """Start a single-member TLS etcd in `dir` and wait until it serves a linearizable read."""
    assert shutil.which("etcd"), "etcd binary not on PATH"
    dir.mkdir(parents=True, exist_ok=True)
    ca = ca or TestCA(dir=dir / "pki")
    server = ca.issue(name="etcd-server")
    client = ca.issue(name="etcd-client")
    client_port, peer_port = free_port(), free_port()
    endpoint = f"https://127.0.0.1:{client_port}"
    log = dir / "etcd.log"
    data_dir = dir / "data"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "etcd", "--name=test", f"--data-dir={data_dir}",
                f"--listen-client-urls={endpoint}", f"--advertise-client-urls={endpoint}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=test=http://127.0.0.1:{peer_port}",
                f"--cert-file={server.cert}", f"--key-file={server.key}",
                f"--trusted-ca-file={ca.cert_file}", "--client-cert-auth",
                "--log-level=warn", "--logger=zap",
            ],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    etcd = EtcdProcess(endpoint=endpoint, ca=ca, client=client, proc=proc, data_dir=data_dir, log=log)
    deadline = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"etcd exited: {log.read_text()[-2000:]}")
        if etcd.etcdctl("endpoint", "health", "--command-timeout=2s").returncode == 0:
            return etcd
        if time.monotonic() > deadline:
            etcd.stop()
            raise RuntimeError(f"etcd not healthy in {deadline_s}s: {log.read_text()[-2000:]}")
        time.sleep(0.1)
