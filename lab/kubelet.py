"""Kubelet emulation: keeps one host's containers matched to its static pod manifests.

Move `etcd-pod.yaml` out of `/etc/kubernetes/manifests` and the etcd process stops; put a
manifest back (or `systemctl restart kubelet`) and it starts. Only the `etcd` container runs a
real process (inside the host root); the other containers are tracked states, which is all the
document ever looks at (`crictl ps`, the pod's READY and STATUS columns).

What a person reads next is kept too, as a kubelet keeps it: every container instance writes its
output to `/var/log/pods/<ns>_<pod>_<uid>/<container>/<attempt>.log` in CRI-O's format (so
`kubectl logs [--previous]` and `crictl logs` show etcd's own stderr), the last dead instance of
each container stays listed by `crictl ps -a`, readiness probes declared in the manifest are run,
and what the kubelet does (Created, Started, Killing, BackOff, Unhealthy) is queued as events the
daemon posts to the API.

What it does not do: schedule anything, pull images, or talk to the API itself. The daemon reads
`snapshot()` and writes mirror pods and events, so the kubelet keeps working while the API is
down, as a real one does.
"""

from __future__ import annotations

import asyncio
import collections
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

from lab import crilog, hosts
from lab.clock import LabClock

PROCESS_CONTAINERS = {"etcd"}
STOP_GRACE_SECONDS = 5.0
# The kubelet's crash-loop back-off: 10 s doubling up to 5 minutes (lab seconds).
BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
# A container that ran this long without failing starts its back-off afresh (the kubelet's 10 min).
BACKOFF_RESET = 600.0
EVENT_QUEUE = 500


def _new_id() -> str:
    return secrets.token_hex(32)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True)
class Probe:
    """A readiness probe as declared in the manifest (httpGet or tcpSocket), in real seconds."""

    kind: str  # "http" | "tcp"
    host: str
    port: int
    path: str
    initial_delay: float
    period: float
    timeout: float
    failure_threshold: int

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> Probe | None:
        if not spec:
            return None
        if "httpGet" in spec:
            action, kind = spec["httpGet"], "http"
        elif "tcpSocket" in spec:
            action, kind = spec["tcpSocket"], "tcp"
        else:
            return None
        try:
            port = int(action.get("port"))
        except (TypeError, ValueError):
            return None
        return cls(kind=kind, host=str(action.get("host") or "127.0.0.1"), port=port, path=str(action.get("path", "/")),
                   initial_delay=float(spec.get("initialDelaySeconds", 0)), period=float(spec.get("periodSeconds", 10)),
                   timeout=float(spec.get("timeoutSeconds", 1)), failure_threshold=int(spec.get("failureThreshold", 3)))

    async def check(self) -> str | None:
        """None when the probe passes, else the kubelet's words for the failure."""
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    if self.kind == "tcp":
                        return None
                    writer.write(f"GET {self.path} HTTP/1.0\r\nHost: {self.host}:{self.port}\r\n"
                                 "User-Agent: kube-probe/1.18+\r\n\r\n".encode())
                    await writer.drain()
                    status_line = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
        except TimeoutError:
            if self.kind == "tcp":
                return f"dial tcp {self.host}:{self.port}: i/o timeout"
            return (f"Get http://{self.host}:{self.port}{self.path}: net/http: request canceled "
                    "(Client.Timeout exceeded while awaiting headers)")
        except OSError:
            if self.kind == "tcp":
                return f"dial tcp {self.host}:{self.port}: connect: connection refused"
            return f"Get http://{self.host}:{self.port}{self.path}: dial tcp {self.host}:{self.port}: connect: connection refused"
        parts = status_line.split()
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if 200 <= code < 400:
            return None
        return f"HTTP probe failed with statuscode: {code}"


@dataclass(frozen=True)
class Terminated:
    """A dead container instance the kubelet still knows (`--previous`, `crictl ps -a`)."""

    id: str
    attempt: int
    created: float
    started_at: float
    finished_at: float
    exit_code: int
    reason: str
    log_path: str  # inside the host

    def status(self) -> dict[str, Any]:
        return {"exitCode": self.exit_code, "reason": self.reason, "startedAt": _iso(self.started_at),
                "finishedAt": _iso(self.finished_at), "containerID": f"cri-o://{self.id}"}


@dataclass
class Container:
    name: str
    image: str
    command: list[str]
    env: dict[str, str]
    probe: Probe | None = None
    id: str = field(default_factory=_new_id)
    created: float = field(default_factory=time.time)
    state: str = "Waiting"  # Running | Exited | Waiting
    restarts: int = 0
    exit_code: int | None = None
    reason: str = "ContainerCreating"
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    previous: Terminated | None = None
    process: asyncio.subprocess.Process | None = None
    next_start: float = 0.0  # monotonic time before which a crashed container is not restarted
    backoff: float = 0.0  # lab seconds the next crash will wait before its restart (0: restart at once)
    waiting: float = 0.0  # lab seconds of the back-off in progress
    log_path: str = ""  # inside the host, of the current instance
    ready: bool = False
    probe_failures: int = 0
    next_probe: float = 0.0
    probing: bool = False

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
        return {
            "name": self.name, "image": self.image, "imageID": self.image,
            "containerID": f"cri-o://{self.id}", "ready": self.state == "Running" and self.ready,
            "started": self.state == "Running", "restartCount": self.restarts, "state": state,
            "lastState": {"terminated": self.previous.status()} if self.previous else {},
        }


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

    @property
    def log_dir(self) -> str:
        """`/var/log/pods/<namespace>_<name>_<uid>`, inside the host."""
        return f"/var/log/pods/{self.namespace}_{self.name}_{self.uid}"


@dataclass(frozen=True)
class KubeletEvent:
    """Something the kubelet did, as core/v1 Event fields (the daemon posts and aggregates them)."""

    node: str
    namespace: str
    pod: str
    pod_uid: str
    container: str
    type: str  # Normal | Warning
    reason: str
    message: str
    at: float


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
        self.paused: set[str] = set()  # container names stopped while a fault changes their files
        self.frozen = False  # node-notready: the kubelet stops reporting
        self.events: collections.deque[KubeletEvent] = collections.deque(maxlen=EVENT_QUEUE)
        self._manifests = root / "etc/kubernetes/manifests"
        self._run_dir = root / "run/lab"
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.on_spawn: Callable[[int], None] | None = None  # the daemon records PIDs for `down`

    # ---- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._tick()
                except Exception as exc:  # keep the kubelet alive; the daemon log shows why
                    print(f"kubelet {self.node}: {exc!r}", flush=True)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.25)
        finally:
            for task in list(self._tasks):
                task.cancel()

    def poke(self) -> None:
        self._wake.set()

    async def _tick(self) -> None:
        restart_request = self._run_dir / "kubelet-restart"
        if not self.powered:
            return
        await self.sync()
        self._probe_due()
        if restart_request.exists():
            restart_request.unlink(missing_ok=True)

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        for pod in list(self.pods.values()):
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
                name=spec["name"], image=spec.get("image", ""), command=list(spec.get("command", [])), env=env,
                probe=Probe.from_spec(spec.get("readinessProbe")),
            )
        return StaticPod(
            file=file, name=f"{meta.get('name', file)}-{self.node}", namespace=meta.get("namespace", "default"),
            digest=digest, manifest=manifest, containers=containers,
        )

    def _event(self, pod: StaticPod, container: Container, type_: str, reason: str, message: str) -> None:
        self.events.append(KubeletEvent(node=self.node, namespace=pod.namespace, pod=pod.name, pod_uid=pod.uid,
                                        container=container.name, type=type_, reason=reason, message=message,
                                        at=time.time()))

    async def _converge(self, pod: StaticPod, container: Container) -> bool:
        """Start what should run, notice what died. Returns whether anything changed."""
        if container.state == "Running":
            if container.process is not None and container.process.returncode is not None:
                self._exited(pod, container, container.process.returncode)
                return True
            if container.name in self.held:
                await self._stop_container(pod, container, reason="Error", exit_code=137)
                return True
            return False
        if container.name in self.held or container.name in self.paused:
            return False
        if time.monotonic() < container.next_start:
            if container.state == "Exited" and container.exit_code not in (None, 0):
                container.state = "Waiting"
                container.reason = "CrashLoopBackOff"
                container.message = (f"back-off {_duration(container.waiting)} restarting failed "
                                     f"container={container.name} pod={pod.name}_{pod.namespace}({pod.uid})")
                self._event(pod, container, "Warning", "BackOff", "Back-off restarting failed container")
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
        container.ready = container.probe is None
        container.probe_failures = 0
        container.next_probe = time.monotonic() + (container.probe.initial_delay if container.probe else 0)
        container.log_path = f"{pod.log_dir}/{container.name}/{container.restarts}.log"
        log_file = self.root / container.log_path.lstrip("/")
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.touch()
        self._event(pod, container, "Normal", "Pulled", f'Container image "{container.image}" already present on machine')
        self._event(pod, container, "Normal", "Created", f"Created container {container.name}")
        self._event(pod, container, "Normal", "Started", f"Started container {container.name}")
        if container.name not in PROCESS_CONTAINERS:
            return
        container.process = await hosts.spawn_in_host(
            self.root, container.command, env=container.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        if self.on_spawn is not None:
            self.on_spawn(container.process.pid)
        self._background(self._watch(container.process, log_file))

    async def _watch(self, process: asyncio.subprocess.Process, log_file: Path) -> None:
        """Copy the process's output into its CRI log (as CRI-O's conmon does), then wake the loop."""
        with open(log_file, "ab", buffering=0) as log:
            await asyncio.gather(_copy_lines(process.stdout, log, "stdout"), _copy_lines(process.stderr, log, "stderr"))
        await process.wait()
        self.poke()

    def _terminated(self, container: Container) -> Terminated:
        return Terminated(id=container.id, attempt=container.restarts, created=container.created,
                          started_at=container.started_at or container.created,
                          finished_at=container.finished_at or time.time(), exit_code=container.exit_code or 0,
                          reason=container.reason, log_path=container.log_path)

    def _exited(self, pod: StaticPod, container: Container, code: int) -> None:
        container.state = "Exited"
        container.exit_code = code
        container.reason = "Completed" if code == 0 else "Error"
        container.finished_at = time.time()
        container.process = None
        container.ready = False
        container.previous = self._terminated(container)
        # The kubelet's flowcontrol back-off: the first restart is immediate, then 10 s, 20 s, ... 5 min;
        # a container that ran long enough starts afresh.
        ran = container.finished_at - (container.started_at or container.finished_at)
        if self.clock.speed * ran >= BACKOFF_RESET:
            container.backoff = 0.0
        container.waiting = container.backoff
        container.next_start = time.monotonic() + self.clock.real_seconds(container.waiting)
        container.backoff = min(container.waiting * 2, BACKOFF_MAX) if container.waiting else BACKOFF_INITIAL

    async def _stop_container(self, pod: StaticPod, container: Container, *, reason: str = "Completed",
                              exit_code: int = 0) -> None:
        process = container.process
        if container.state == "Running":
            self._event(pod, container, "Normal", "Killing", f"Stopping container {container.name}")
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
        container.ready = False
        container.previous = self._terminated(container)

    async def _remove_pod(self, file: str) -> None:
        pod = self.pods.pop(file)
        for container in pod.containers.values():
            if container.state == "Running":
                await self._stop_container(pod, container)

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
                await self._stop_container(pod, container, reason="Error", exit_code=137)
                container.next_start = 0.0
        self.poke()

    async def with_stopped(self, name: str, change: Callable[[], None]) -> None:
        """Stop container `name` (its process really exits), run `change` (a fault editing its
        files), then let the restart policy start it again at once."""
        self.paused.add(name)
        try:
            for pod in self.pods.values():
                container = pod.containers.get(name)
                if container is not None and container.state == "Running":
                    await self._stop_container(pod, container, reason="Error", exit_code=137)
            change()
        finally:
            self.paused.discard(name)
            self.reset_backoff(name)

    def reset_backoff(self, name: str) -> None:
        """Start `name` at the next sync, whatever its back-off (heal, a fault that changed files)."""
        for pod in self.pods.values():
            container = pod.containers.get(name)
            if container is not None:
                container.next_start = 0.0
        self.poke()

    # ---- readiness probes -----------------------------------------------------------------
    def _probe_due(self) -> None:
        now = time.monotonic()
        for pod in self.pods.values():
            for container in pod.containers.values():
                probe = container.probe
                if probe is None or container.state != "Running" or container.probing or now < container.next_probe:
                    continue
                container.probing = True
                container.next_probe = now + probe.period
                self._background(self._probe(pod, container, container.id, probe))

    async def _probe(self, pod: StaticPod, container: Container, instance: str, probe: Probe) -> None:
        try:
            failure = await probe.check()
        finally:
            container.probing = False
        if container.id != instance or container.state != "Running" or self.frozen:
            return
        was = container.ready
        if failure is None:
            container.probe_failures = 0
            container.ready = True
        else:
            container.probe_failures += 1
            self._event(pod, container, "Warning", "Unhealthy", f"Readiness probe failed: {failure}")
            if container.probe_failures >= probe.failure_threshold:
                container.ready = False
        if container.ready != was:
            self._publish()

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

    def log_file(self, pod_name: str, container: str, *, previous: bool) -> Path:
        """The host file holding a container's output, as the kubelet's `containerLogs` finds it.

        Raises LookupError with the kubelet's own message when there is none.
        """
        pod = self.find_pod(pod_name)
        if pod is None:
            raise LookupError(f'pods "{pod_name}" not found')
        c = pod.containers.get(container)
        if c is None:
            raise LookupError(f"container {container} is not valid for pod {pod_name}")
        if previous:
            if c.previous is None:
                raise LookupError(f'previous terminated container "{container}" in pod "{pod_name}" not found')
            return self.root / c.previous.log_path.lstrip("/")
        if c.state == "Running" or (c.state == "Exited" and c.log_path):
            return self.root / c.log_path.lstrip("/")
        if c.previous is not None:  # waiting in back-off: the last instance's log
            return self.root / c.previous.log_path.lstrip("/")
        raise LookupError(f'container "{container}" in pod "{pod_name}" is waiting to start: {c.reason or "ContainerCreating"}')

    def container_running(self, pod_name: str, container: str) -> bool:
        pod = self.find_pod(pod_name)
        c = pod.containers.get(container) if pod else None
        return c is not None and c.state == "Running"

    def _publish(self) -> None:
        """Write containers.json for the host's crictl and tell the daemon."""
        rows = []
        for pod in self.pods.values():
            for c in pod.containers.values():
                image = c.image.split("@sha256:")[-1]  # crictl shows a by-digest image as its bare digest
                base = {"image": image, "name": c.name, "pod_id": pod.pod_id, "pod": pod.name,
                        "namespace": pod.namespace}
                if c.previous is not None and c.previous.id != c.id:
                    rows.append({**base, "id": c.previous.id, "created": c.previous.created, "state": "Exited",
                                 "attempt": c.previous.attempt, "log_path": c.previous.log_path})
                if c.log_path:
                    rows.append({**base, "id": c.id, "created": c.created, "attempt": c.restarts,
                                 "state": "Running" if c.state == "Running" else "Exited", "log_path": c.log_path})
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


def _duration(lab_seconds: float) -> str:
    """Go's time.Duration String for whole seconds: 10s, 2m40s, 5m0s."""
    s = int(lab_seconds)
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60}s"


async def _copy_lines(stream: asyncio.StreamReader | None, log: Any, name: str) -> None:
    """One output stream into the CRI log, whole lines at a time (a last unterminated line too)."""
    if stream is None:
        return
    pending = b""
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            break
        pending += chunk
        if b"\n" in pending:
            complete, _, pending = pending.rpartition(b"\n")
            log.write(crilog.format_lines(complete, stream=name, ts=time.time()))
    if pending:
        log.write(crilog.format_lines(pending, stream=name, ts=time.time()))
