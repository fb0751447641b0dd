"""Test helpers: a throwaway PKI, a real single-member etcd 3.4 with TLS client auth, and
`ApiLab`: that etcd plus the lab's ApiServer in a background event loop, a kubeconfig, kubectl.

The API server's tests need a REAL etcd so that storage, revisions and unavailability behave
as in the lab. Each call gets free ports and a tmp dir; `stop()`/`close()` kill and wait.
The server runs in its own thread so tests can call blocking clients (kubectl, the sync
`kubernetes` client) directly.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lab.apiserver.objects import Objects
from lab.apiserver.server import ApiServer, ExecError
from lab.apiserver.storage import EtcdStore


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


T = TypeVar("T")
VERSION = {"major": "1", "minor": "18+", "gitVersion": "v1.18.3+2fbd7c7", "gitCommit": "2fbd7c7",
           "gitTreeState": "clean", "buildDate": "2020-07-09T14:49:43Z", "goVersion": "go1.13.4",
           "compiler": "gc", "platform": "linux/amd64"}


async def local_exec(namespace: str, pod: str, container: str, command: list[str], stdin: bool, tty: bool
                     ) -> asyncio.subprocess.Process:
    """Runs the command on this machine: enough to test the protocol."""
    if container == "forbidden":
        raise ExecError(403, "exec into forbidden is not allowed")
    return await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )


class ApiLab:
    """etcd + API server; `run(coro)` runs a coroutine on the server's loop."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.etcd: EtcdProcess = start_etcd(dir=tmp / "etcd")
        self.ca = TestCA(dir=tmp / "api-pki", name="api-ca")
        serving = self.ca.issue(name="apiserver")
        self.token = secrets.token_urlsafe(24)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def build() -> tuple[EtcdStore, Objects, ApiServer]:
            store = EtcdStore(endpoints=[self.etcd.endpoint], ca_file=self.etcd.ca.cert_file,
                              cert_file=self.etcd.client.cert, key_file=self.etcd.client.key, timeout=1.5)
            objects = Objects(store)
            server = ApiServer(objects=objects, host="127.0.0.1", port=self.port, cert_file=serving.cert,
                               key_file=serving.key, token=self.token, exec_handler=local_exec, version=VERSION)
            await server.start()
            return store, objects, server

        self.store, self.objects, self.server = self.run(build())
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = tmp / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "lab",
            "clusters": [{"name": "lab", "cluster": {
                "server": self.url, "certificate-authority-data": base64.b64encode(self.ca.pem).decode()}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "admin"}}],
        }))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 30
                ) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.tmp),
               "KUBECONFIG": str(self.kubeconfig), "KUBECACHEDIR": str(self.tmp / "kubecache")}
        proc = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    async def _cancel_rest(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        try:
            self.run(self.server.stop())
            self.run(self.store.close())
        finally:
            self.run(self._cancel_rest())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
            self.etcd.stop()
