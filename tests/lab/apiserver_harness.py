"""Shared by the apiserver tests: etcd + ApiServer in a background event loop, a kubeconfig,
and `kubectl` runs. The server runs in its own thread so that tests can call blocking clients
(kubectl, the sync `kubernetes` client) directly."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lab.apiserver.objects import Objects
from lab.apiserver.server import ApiServer, ExecError
from lab.apiserver.storage import EtcdStore
from tests.lab.etcd_fixture import EtcdProcess, TestCA, free_port, start_etcd

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


class Lab:
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

    def close(self) -> None:
        try:
            self.run(self.server.stop())
            self.run(self.store.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
            self.etcd.stop()
