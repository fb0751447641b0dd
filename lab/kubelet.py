"""Kubelet emulation: keeps one host's containers matched to its static pod manifests.

Move `etcd-pod.yaml` out of `/etc/kubernetes/manifests` and the etcd process stops; put a
manifest back (or `systemctl restart kubelet`) and it starts. Only the `etcd` container runs a
real process (inside the host root); the other containers are tracked states, which is all the
document ever looks at (`crictl ps`, the pod's READY and STATUS columns).

What it does not do: schedule anything, pull images, or talk to the API itself. The daemon reads
`snapshot()` and writes mirror pods, so the kubelet keeps working while the API is down, as a
real one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab import hosts
from lab.clock import LabClock

PROCESS_CONTAINERS = {"etcd"}
STOP_GRACE_SECONDS = 5.0
# What a crashlooping etcd prints before it dies: the classic corrupted-WAL panic.
CRASHLOOP_COMMAND = [
    "/bin/sh", "-c",
    'echo "{\\"level\\":\\"fatal\\",\\"msg\\":\\"failed to open WAL\\",\\"error\\":\\"wal: crc mismatch\\"}" >&2; sleep 1; exit 1',
]


def _new_id() -> str:
    return secrets.token_hex(32)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass
class Container:
    name: str
    image: str
    command: list[str]
    env: dict[str, str]
    id: str = field(default_factory=_new_id)
    created: float = field(default_factory=time.time)
    state: str = "Waiting"  # Running | Exited | Waiting
    restarts: int = 0
    exit_code: int | None = None
    reason: str = "ContainerCreating"
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    last_terminated: dict[str, Any] | None = None
    process: asyncio.subprocess.Process | None = None
    next_start: float = 0.0  # monotonic time before which a crashed container is not restarted

    def status(self) -> dict[str, Any]:
        """The container's entry in a pod's status.containerStatuses."""
        state: dict[str, Any]
        if self.state == "Running":
            state = {"running": {"startedAt": _iso(self.started_at or self.created)}}
        elif self.state == "Exited":
            state = {"terminated": {"exitCode": self.exit_code or 0, "reason": self.reason,
                                    "message": self.message, "startedAt": _iso(self.started_at or self.created),
                                    "finishedAt": _iso(self.finished_at or time.time()),
                                    "containerID": f"cri-o://{self.id}"}}
        else:
            state = {"waiting": {"reason": self.reason, "message": self.message}}
        entry: dict[str, Any] = {
            "name": self.name, "image": self.image, "imageID": self.image,
            "containerID": f"cri-o://{self.id}", "ready": self.state == "Running",
            "started": self.state == "Running", "restartCount": self.restarts, "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        return entry


@dataclass
class StaticPod:
    file: str
    name: str
    namespace: str
    digest: str
    manifest: dict[str, Any]
    containers: dict[str, Container]
    uid: str = field(default_factory=lambda: secrets.token_hex(16))
    pod_id: str = field(default_factory=_new_id)
    created: float = field(default_factory=time.time)

    @property
    def mirror_name(self) -> str:
        return self.name


class Kubelet:
    """One host's kubelet. `run()` loops until cancelled; faults flip its switches."""

    def __init__(self, *, node: str, root: Path, clock: LabClock, on_change: Callable[[], None]) -> None:
        self.node = node
        self.root = root
        self.clock = clock
        self.on_change = on_change
        self.pods: dict[str, StaticPod] = {}
        self.powered = True
        self.held: set[str] = set()  # container names kept down by a fault (kill-etcd)
        self.crashloop: set[str] = set()  # container names whose command fails (crashloop-etcd)
        self.frozen = False  # node-notready: the kubelet stops reporting
        self._manifests = root / "etc/kubernetes/manifests"
        self._run_dir = root / "run/lab"
        self._wake = asyncio.Event()
        self.on_spawn: Callable[[int], None] | None = None  # the daemon records PIDs for `down`

    # ---- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception as exc:  # keep the kubelet alive; the daemon log shows why
                print(f"kubelet {self.node}: {exc!r}", flush=True)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.25)

    def poke(self) -> None:
        self._wake.set()

    async def _tick(self) -> None:
        restart_request = self._run_dir / "kubelet-restart"
        if not self.powered:
            return
        await self.sync()
        if restart_request.exists():
            restart_request.unlink(missing_ok=True)

    # ---- manifests -> pods ---------------------------------------------------------------
    def _read_manifests(self) -> dict[str, tuple[str, dict[str, Any]]]:
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        if not self._manifests.is_dir():
            return found
        for path in sorted(self._manifests.iterdir()):
            if path.suffix not in (".yaml", ".yml", ".json") or not path.is_file():
                continue
            try:
                text = path.read_text()
                manifest = yaml.safe_load(text)
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(manifest, dict) and manifest.get("kind") == "Pod":
                found[path.name] = (hashlib.sha256(text.encode()).hexdigest(), manifest)
        return found

    async def sync(self) -> None:
        changed = False
        wanted = self._read_manifests()
        for file in list(self.pods):
            if file not in wanted or wanted[file][0] != self.pods[file].digest:
                await self._remove_pod(file)
                changed = True
        for file, (digest, manifest) in wanted.items():
            if file not in self.pods:
                self.pods[file] = self._new_pod(file, digest, manifest)
                changed = True
        for pod in self.pods.values():
            for container in pod.containers.values():
                changed |= await self._converge(pod, container)
        if changed:
            self._publish()

    def _new_pod(self, file: str, digest: str, manifest: dict[str, Any]) -> StaticPod:
        meta = manifest.get("metadata", {})
        containers = {}
        for spec in manifest.get("spec", {}).get("containers", []):
            env = {e["name"]: str(e.get("value", "")) for e in spec.get("env", []) if "name" in e}
            containers[spec["name"]] = Container(
                name=spec["name"], image=spec.get("image", ""), command=list(spec.get("command", [])), env=env
            )
        return StaticPod(
            file=file, name=f"{meta.get('name', file)}-{self.node}", namespace=meta.get("namespace", "default"),
            digest=digest, manifest=manifest, containers=containers,
        )

    async def _converge(self, pod: StaticPod, container: Container) -> bool:
        """Start what should run, notice what died. Returns whether anything changed."""
        if container.state == "Running":
            if container.process is not None and container.process.returncode is not None:
                self._exited(container, container.process.returncode)
                return True
            if container.name in self.held:
                await self._stop_container(container, reason="Error", exit_code=137)
                return True
            return False
        if container.name in self.held:
            return False
        if time.monotonic() < container.next_start:
            if container.reason != "CrashLoopBackOff" and container.restarts > 0:
                container.state = "Waiting"
                container.reason = "CrashLoopBackOff"
                container.message = f"back-off restarting failed container {container.name} in pod {pod.name}"
                return True
            return False
        await self._start_container(pod, container)
        return True

    async def _start_container(self, pod: StaticPod, container: Container) -> None:
        if container.state == "Exited" or container.reason == "CrashLoopBackOff":
            container.restarts += 1
            container.id = _new_id()
            container.created = time.time()
        container.state = "Running"
        container.reason = ""
        container.message = ""
        container.started_at = time.time()
        container.exit_code = None
        if container.name not in PROCESS_CONTAINERS:
            return
        command = CRASHLOOP_COMMAND if container.name in self.crashloop else container.command
        log_dir = self.root / "var/log/pods" / f"{pod.namespace}_{pod.name}_{pod.uid}" / container.name
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{container.restarts}.log", "ab") as log:
            container.process = await hosts.spawn_in_host(
                self.root, command, env=container.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT,
            )
        if self.on_spawn is not None:
            self.on_spawn(container.process.pid)
        asyncio.get_running_loop().create_task(self._watch(container, container.process))

    async def _watch(self, container: Container, process: asyncio.subprocess.Process) -> None:
        await process.wait()
        self.poke()

    def _exited(self, container: Container, code: int) -> None:
        container.state = "Exited"
        container.exit_code = code
        container.reason = "Completed" if code == 0 else "Error"
        container.finished_at = time.time()
        container.process = None
        container.last_terminated = {
            "exitCode": code, "reason": container.reason, "startedAt": _iso(container.started_at or 0),
            "finishedAt": _iso(container.finished_at), "containerID": f"cri-o://{container.id}",
        }
        backoff = min(10.0 * 2 ** min(container.restarts, 5), 300.0)
        container.next_start = time.monotonic() + self.clock.real_seconds(backoff)

    async def _stop_container(self, container: Container, *, reason: str = "Completed", exit_code: int = 0) -> None:
        process = container.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=STOP_GRACE_SECONDS)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        container.process = None
        container.state = "Exited"
        container.exit_code = exit_code
        container.reason = reason
        container.finished_at = time.time()
        container.last_terminated = {
            "exitCode": exit_code, "reason": reason, "startedAt": _iso(container.started_at or 0),
            "finishedAt": _iso(container.finished_at), "containerID": f"cri-o://{container.id}",
        }

    async def _remove_pod(self, file: str) -> None:
        pod = self.pods.pop(file)
        for container in pod.containers.values():
            await self._stop_container(container)

    async def power_off(self) -> None:
        """Everything stops, as when the machine goes down."""
        self.powered = False
        for file in list(self.pods):
            await self._remove_pod(file)
        self._publish()

    def power_on(self) -> None:
        self.powered = True
        self.poke()

    async def restart_container(self, name: str) -> None:
        """Kill a running container so the restart policy takes over (used by faults)."""
        for pod in self.pods.values():
            container = pod.containers.get(name)
            if container is not None and container.state == "Running":
                await self._stop_container(container, reason="Error", exit_code=137)
                container.next_start = 0.0
        self.poke()

    # ---- what others read ----------------------------------------------------------------
    def running(self, pod_prefix: str, container: str) -> bool:
        for pod in self.pods.values():
            if pod.name.startswith(pod_prefix):
                c = pod.containers.get(container)
                if c is not None and c.state == "Running":
                    return True
        return False

    def find_pod(self, name: str) -> StaticPod | None:
        for pod in self.pods.values():
            if pod.name == name:
                return pod
        return None

    def _publish(self) -> None:
        """Write containers.json for the host's crictl and tell the daemon."""
        rows = []
        for pod in self.pods.values():
            for c in pod.containers.values():
                rows.append({
                    # crictl shows a by-digest image as its bare digest, as in the document's example
                    "id": c.id, "image": c.image.split("@sha256:")[-1], "created": c.created,
                    "state": "Running" if c.state == "Running" else "Exited",
                    "name": c.name, "attempt": c.restarts, "pod_id": pod.pod_id, "pod": pod.name,
                    "namespace": pod.namespace,
                })
        self._run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._run_dir / "containers.json.tmp"
        tmp.write_text(json.dumps({"containers": rows}))
        tmp.replace(self._run_dir / "containers.json")
        self.on_change()

    def pod_statuses(self) -> list[dict[str, Any]]:
        """Mirror pods as the API shows them (status as the kubelet reports it)."""
        result = []
        for pod in self.pods.values():
            statuses = [c.status() for c in pod.containers.values()]
            ready = all(s["ready"] for s in statuses)
            any_running = any(c.state == "Running" for c in pod.containers.values())
            manifest_meta = pod.manifest.get("metadata", {})
            result.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": pod.name, "namespace": pod.namespace,
                    "labels": manifest_meta.get("labels", {}),
                    "annotations": {**manifest_meta.get("annotations", {}),
                                    "kubernetes.io/config.mirror": pod.digest[:32],
                                    "kubernetes.io/config.source": "file",
                                    "kubernetes.io/config.hash": pod.digest[:32]},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.node,
                                         "uid": pod.uid, "controller": True}],
                },
                "spec": {**pod.manifest.get("spec", {}), "nodeName": self.node},
                "status": {
                    "phase": "Running" if any_running else "Failed",
                    "conditions": [
                        {"type": "Initialized", "status": "True"},
                        {"type": "Ready", "status": str(ready)},
                        {"type": "ContainersReady", "status": str(ready)},
                        {"type": "PodScheduled", "status": "True"},
                    ],
                    "startTime": _iso(pod.created),
                    "containerStatuses": statuses,
                    "qosClass": "Burstable",
                },
            })
        return result
