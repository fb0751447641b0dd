"""The lab daemon: one asyncio process per lab directory.

It serves the API, the SSH hosts and the Slack workspace, runs the kubelet, operator, machine
and CSR emulations and the clock, and supervises the children that must be real (one `etcd` per
master via the kubelet, one `redis-server`). `python -m lab.daemon DIR` runs it in the
foreground; `etcdbot-lab up` starts it in the background and waits for it to say it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import bootstrap, control, faults, machines, manifests, seed, upgrade
from lab.apiserver.objects import Objects
from lab.apiserver.server import ApiServer, ExecError, LogSource
from lab.apiserver.storage import EtcdStore, NotFound, StoreUnavailable
from lab.clock import LabClock
from lab.controllers import TRANSIENT, EtcdMembersStatus, EventRecorder, MirrorPods, NodeStatus, Revisions
from lab.csrs import CsrController
from lab.etcdadmin import EtcdAdmin, EtcdUnavailable
from lab.hosts import spawn_in_host
from lab.kubelet import Kubelet, StaticPod
from lab.slack.workspace import SlackWorkspace
from lab.spec import LabSpec, MasterSpec, NodeSpec
from lab.sshd import HostSSHServer

API_VERSION = {
    "major": "1", "minor": "18+", "gitVersion": "v1.18.3+b0068a8", "gitCommit": "b0068a8",
    "gitTreeState": "clean", "buildDate": "2020-07-14T17:13:20Z", "goVersion": "go1.13.4",
    "compiler": "gc", "platform": "linux/amd64",
}
READY_DEADLINE_SECONDS = 60.0


@dataclass
class Host:
    """One machine of the lab, master or worker: its root, kubelet and SSH server."""

    spec: NodeSpec
    root: Path
    kubelet: Kubelet
    ssh: HostSSHServer
    certs_expired: bool = False
    ssh_blocked: bool = False
    shutdown_at: float | None = None  # monotonic time the host powers off (shutdown -h N)

    @property
    def node(self) -> str:
        return self.spec.node

    @property
    def is_master(self) -> bool:
        return isinstance(self.spec, MasterSpec)

    @property
    def master(self) -> MasterSpec:
        """The master's spec (ports of its etcd member); a worker has none."""
        if not isinstance(self.spec, MasterSpec):
            raise TypeError(f"{self.node} is a worker: it has no etcd member")
        return self.spec


class LabDaemon:
    def __init__(self, lab_dir: Path) -> None:
        self.dir = lab_dir.resolve()
        self.spec = LabSpec.load(self.dir)
        self.clock = LabClock(speed=self.spec.clock_speed)
        self.hosts: dict[str, Host] = {}  # the masters
        self.workers: dict[str, Host] = {}
        self.api_faulted = False
        self.active_faults: list[tuple[str, str]] = []  # (kind, target) for `status`; see lab/faults.py
        self.ready = False
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        ca, cert, key = bootstrap.etcd_client_files(self.spec)
        self.store = EtcdStore(endpoints=self.client_urls(), ca_file=ca, cert_file=cert, key_file=key, timeout=3.0)
        self.objects = Objects(self.store)
        self.etcd = EtcdAdmin(ca_file=ca, cert_file=cert, key_file=key, timeout=1.5)
        _, api_cert, api_key = bootstrap.api_serving_files(self.spec)
        self.api = ApiServer(objects=self.objects, host="127.0.0.1", port=self.spec.api_port, cert_file=api_cert,
                             key_file=api_key, token=self.spec.api_token, exec_handler=self.exec_in_pod,
                             version=API_VERSION, log_handler=self.pod_log)
        self.slack = SlackWorkspace(port=self.spec.slack_port, bot_token=self.spec.slack_bot_token,
                                    app_token=self.spec.slack_app_token,
                                    signing_secret=self.spec.slack_signing_secret,
                                    record_file=self.dir / "logs" / "slack.jsonl")
        self.redis: asyncio.subprocess.Process | None = None
        self.mirror = MirrorPods(self)
        self.nodes = NodeStatus(self)
        self.members = EtcdMembersStatus(self)
        self.revisions = Revisions(self)
        self.machines = machines.MachineController(self)
        self.csrs = CsrController(self)
        self.events = EventRecorder(self)
        self.upgrades = upgrade.ClusterVersionOperator(self)

    # ---- helpers other modules use ---------------------------------------------------------
    def log(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.spec.masters]

    def all_hosts(self) -> list[Host]:
        """Masters then workers."""
        return [*self.hosts.values(), *self.workers.values()]

    def host(self, node: str) -> Host | None:
        return self.hosts.get(node) or self.workers.get(node)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def poke(self) -> None:
        self._wake.set()

    def record_pid(self, pid: int) -> None:
        with open(self.dir / "children.pids", "a") as f:
            f.write(f"{pid}\n")

    # ---- start -------------------------------------------------------------------------------
    async def start(self) -> None:
        started = time.monotonic()
        bootstrap.lay_down(self.spec)
        laid = time.monotonic()
        await self._start_redis()
        for node in (*self.spec.masters, *self.spec.workers):
            await self.add_host(node, prepared=True)  # lay_down prepared every host root
        hosts = time.monotonic()
        await self._wait_for_redis()
        await self._wait_for_members()
        members = time.monotonic()
        await self._seed()
        await self.api.start()
        await self.slack.start()
        self.spawn(self._control_loop(), name="controllers")
        self.ready = True
        self.log(f"lab ready in {time.monotonic() - started:.1f} s (files {laid - started:.1f} s, hosts "
                 f"{hosts - laid:.1f} s, etcd members healthy {members - hosts:.1f} s, objects {time.monotonic() - members:.1f} s)")

    async def add_host(self, master: NodeSpec, *, prepared: bool = False) -> Host:
        root = bootstrap.host_root(self.spec, master.node)
        if not prepared:
            bootstrap.prepare_host(self.spec, master)
        kubelet = Kubelet(node=master.node, root=root, clock=self.clock, on_change=self.poke)
        kubelet.on_spawn = self.record_pid
        ssh = HostSSHServer(node=master.node, root=root, port=master.ssh_port,
                            host_key_path=self.dir / "ssh" / f"host_{master.node}",
                            authorized_keys_path=bootstrap.ssh_paths(self.spec)["authorized_keys"])
        host = Host(spec=master, root=root, kubelet=kubelet, ssh=ssh)
        (self.hosts if host.is_master else self.workers)[master.node] = host
        await ssh.start()
        self.spawn(kubelet.run(), name=f"kubelet-{master.node}")
        return host

    async def _start_redis(self) -> None:
        redis_dir = self.dir / "redis"
        self.redis = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.spec.redis_port), "--bind", "127.0.0.1", "--dir", str(redis_dir),
            "--appendonly", "yes", "--save", "", "--protected-mode", "yes",
            stdout=open(self.dir / "logs" / "redis.log", "ab"), stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self.record_pid(self.redis.pid)

    async def _wait_for_redis(self) -> None:
        """redis-server answers PING on its port. Its port was free when the spec was written, but
        another lab starting beside this one may have taken it since: then redis-server exits
        ("Address already in use") and whatever holds the port answers instead. Either way `up`
        fails saying so, so that the caller can start the lab again on other ports."""
        deadline = time.monotonic() + READY_DEADLINE_SECONDS
        port, last = self.spec.redis_port, ""
        assert self.redis is not None, "_start_redis first"
        while time.monotonic() < deadline:
            if self.redis.returncode is not None:
                log = (self.dir / "logs" / "redis.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"redis-server exited at start ({self.redis.returncode}): {' / '.join(log)}")
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
                try:
                    writer.write(b"PING\r\n")
                    answer = await asyncio.wait_for(reader.readline(), 2.0)
                finally:
                    writer.close()
                if answer.startswith(b"+PONG"):
                    return
                if answer and not answer.startswith(b"-LOADING"):
                    raise RuntimeError(f"127.0.0.1:{port}, the lab's Redis port, answers as another server "
                                       f"({answer[:40]!r}): address already in use")
                last = answer.decode(errors="replace").strip()
            except (OSError, TimeoutError) as exc:
                last = str(exc)
            await asyncio.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer PING on 127.0.0.1:{port} within "
                           f"{READY_DEADLINE_SECONDS:.0f} s (last: {last})")

    async def _wait_for_members(self) -> None:
        """Every member healthy, as an installed cluster is: a lab that says ready with a member still
        starting (or failing: another process took its port) breaks the first fault aimed at it."""
        deadline = time.monotonic() + READY_DEADLINE_SECONDS
        health: dict[str, bool] = {}
        while time.monotonic() < deadline:
            health = await self.etcd.health_map(self.client_urls())
            if all(health.values()):
                return
            await asyncio.sleep(0.2)
        sick = [h for h in self.hosts.values() if not health.get(h.master.client_url)]
        tails = "\n".join(f"{h.node}: {self._etcd_log_tail(h)}" for h in sick)
        raise RuntimeError(f"etcd members not healthy within {READY_DEADLINE_SECONDS:.0f} s: "
                           f"{', '.join(h.node for h in sick)}; their etcd logs end with:\n{tails}")

    @staticmethod
    def _etcd_log_tail(host: Host) -> str:
        logs = sorted((host.root / "var/log/pods").glob("openshift-etcd_etcd-*/etcd/*.log"),
                      key=lambda p: p.stat().st_mtime)
        return logs[-1].read_text(errors="replace")[-600:] if logs else "(no log)"

    async def _seed(self) -> None:
        try:
            await self.objects.get("namespaces", "openshift-etcd")
            return
        except NotFound:
            pass
        for resource, obj in seed.initial_objects(self.spec):
            await self.objects.create(resource, obj)

    # ---- the control loop --------------------------------------------------------------------
    async def _control_loop(self) -> None:
        slow_every = 0.0
        resync_every = time.monotonic() + 10
        while not self.stopping.is_set():
            if time.monotonic() >= resync_every:
                # Rewrite what the cluster should show now and then: a restore may have rolled
                # the API objects back to an older state than the controllers last wrote.
                resync_every = time.monotonic() + 10
                self.mirror.forget()
                self.nodes.forget()
                self.members.forget()
                await self._guard(self.mirror.prune())
            await self._guard(self._sync_api_availability())
            await self._guard(self._check_shutdowns())
            await self._guard(self.mirror.sync())
            await self._guard(self.nodes.sync())
            await self._guard(self.events.sync())
            if time.monotonic() >= slow_every:
                slow_every = time.monotonic() + 1.0
                await self._guard(self.members.sync())
                await self._guard(self.revisions.sync())
                await self._guard(self.machines.sync())
                await self._guard(self.csrs.sync())
                await self._guard(self.upgrades.sync())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)

    async def _guard(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await asyncio.wait_for(coro, timeout=10)
        except TRANSIENT as exc:
            # etcd or the API is down: the controllers wait, as real ones do
            if not isinstance(exc, (StoreUnavailable, EtcdUnavailable, TimeoutError)):
                self.log("controller:\n" + traceback.format_exc())
        except Exception:
            self.log("controller error:\n" + traceback.format_exc())

    async def _sync_api_availability(self) -> None:
        up = not self.api_faulted and any(
            h.kubelet.powered and h.kubelet.running("kube-apiserver-", "kube-apiserver") for h in self.hosts.values()
        )
        if up and not self.api.serving:
            await self.api.start()
        elif not up and self.api.serving:
            await self.api.stop()

    async def _check_shutdowns(self) -> None:
        for host in self.all_hosts():
            request = host.root / "run/lab/shutdown"
            if request.exists() and host.kubelet.powered:
                try:
                    minutes = float(json.loads(request.read_text()).get("minutes", 1))
                except (ValueError, OSError):
                    minutes = 1.0
                if host.shutdown_at is None:
                    host.shutdown_at = self.clock.deadline(minutes * 60)
                if time.monotonic() >= host.shutdown_at:
                    request.unlink(missing_ok=True)
                    await self.power_off(host, instance_state="stopped")
            elif not request.exists():
                host.shutdown_at = None

    # ---- power and static pods ---------------------------------------------------------------
    async def power_off(self, host: Host, *, instance_state: str) -> None:
        self.log(f"power off {host.node}")
        host.shutdown_at = None
        await host.ssh.stop()
        await host.kubelet.power_off()
        self.machines.set_instance_state(host.node, instance_state)
        self.poke()

    async def power_on(self, host: Host, *, after_shutdown: bool) -> None:
        """Power a host on. After a shutdown its kubelet files CSRs and waits for approval."""
        if host.kubelet.powered:
            return
        self.log(f"power on {host.node}")
        host.kubelet.power_on()
        await host.ssh.start()
        self.machines.set_instance_state(host.node, "running")
        if after_shutdown:
            self.csrs.after_restart(host.node)
        self.nodes.forget(host.node)  # a kubelet posts its node status as it starts (a fresh heartbeat)
        self.poke()

    async def install_revision(self, resource: str, host: Host, revision: int, *, reason: str = "") -> None:
        """What an installer pod does on one node: write the new static pod manifest."""
        if resource == "etcds":
            await self._install_etcd(host, revision, reason=reason)
            return
        kind = {"kubeapiservers": "kube-apiserver", "kubecontrollermanagers": "kube-controller-manager",
                "kubeschedulers": "kube-scheduler"}[resource]
        bootstrap.write_control_plane_manifest(self.spec, host.master, kind, revision=revision, reason=reason)
        host.kubelet.poke()

    async def _install_etcd(self, host: Host, revision: int, *, reason: str = "") -> None:
        members = await self.etcd.member_list(self._live_client_urls())
        master = host.master
        await self._ensure_node_secrets(master)
        member = next((m for m in members if m.name == master.node or master.peer_url in m.peer_urls), None)
        state = "new"
        if member is None:
            # A Ready master without a member: add it and give it a fresh data dir.
            self.log(f"etcd: adding member {master.node}")
            data = host.root / "var/lib/etcd"
            manifest = host.root / "etc/kubernetes/manifests/etcd-pod.yaml"
            manifest.unlink(missing_ok=True)
            host.kubelet.poke()
            await self._wait_container_gone(host)
            await asyncio.to_thread(shutil.rmtree, data, True)
            data.mkdir(parents=True, exist_ok=True)
            await self.etcd.member_add(self._live_client_urls(), peer_url=master.peer_url)
            members = await self.etcd.member_list(self._live_client_urls())
            state = "existing"
        by_peer = {m.peer_url: m for m in self.spec.masters}
        cluster = [by_peer[m.peer_urls[0]] for m in members if m.peer_urls and m.peer_urls[0] in by_peer]
        if master not in cluster:
            cluster.append(master)
        bootstrap.install_node_certs(self.spec, masters=[h.master for h in self.hosts.values()])
        bootstrap.write_etcd_manifest(self.spec, master, revision=revision, initial_cluster=cluster,
                                      endpoints=cluster, state=state, reason=reason)
        host.kubelet.poke()

    async def wait_static_pod_ready(self, resource: str, host: Host, *, timeout: float = 60.0) -> None:
        """An installer moves on only when the new static pod runs (and, for etcd, is healthy)."""
        deadline = time.monotonic() + timeout
        kind = {"etcds": "etcd", "kubeapiservers": "kube-apiserver", "kubecontrollermanagers": "kube-controller-manager",
                "kubeschedulers": "kube-scheduler"}[resource]
        while time.monotonic() < deadline:
            if host.kubelet.running(f"{kind}-", kind):
                if resource != "etcds" or await self.etcd.healthy(host.master.client_url):
                    return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{kind} on {host.node} did not become ready")

    async def _wait_container_gone(self, host: Host) -> None:
        deadline = time.monotonic() + 15
        while host.kubelet.running("etcd-", "etcd") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    def _live_client_urls(self) -> list[str]:
        return [h.master.client_url for h in self.hosts.values() if h.kubelet.running("etcd-", "etcd")] or self.client_urls()

    async def _ensure_node_secrets(self, master: MasterSpec) -> None:
        """The operator's cert signer: reissue a node's three secrets when they are gone."""
        missing = False
        for kind in ("peer", "serving", "serving-metrics"):
            try:
                await self.objects.get("secrets", f"etcd-{kind}-{master.node}", namespace="openshift-etcd")
            except NotFound:
                missing = True
        if not missing:
            return
        for secret in seed.node_secrets(self.spec, master, created=time.time(), renew=True):
            with contextlib.suppress(Exception):
                await self.objects.delete("secrets", secret["metadata"]["name"], namespace="openshift-etcd")
            await self.objects.create("secrets", secret)

    async def add_master(self, master: MasterSpec) -> Host:
        """A new machine came up: a host with kube-apiserver & co, and later an etcd member."""
        self.spec = self.spec.with_master(master)
        self.spec.save()
        host_root = bootstrap.host_root(self.spec, master.node)
        bootstrap.prepare_host(self.spec, master)
        bootstrap.write_ssh_files(self.spec)
        bootstrap.write_env(self.spec)
        bootstrap.install_node_certs(self.spec, masters=list(self.spec.masters))
        for kind in manifests.CONTROL_PLANE_KINDS:
            bootstrap.write_control_plane_manifest(self.spec, master, kind, revision=2)
        (host_root / "var/lib/etcd").mkdir(parents=True, exist_ok=True)
        host = await self.add_host(master, prepared=True)
        self.store.set_endpoints(self.client_urls())
        return host

    async def remove_master(self, node: str) -> None:
        """A machine is gone for good (master or worker): its SSH, kubelet and node status stop."""
        host = self.hosts.pop(node, None) or self.workers.pop(node, None)
        if host is None:
            return
        await host.ssh.stop()
        await host.kubelet.power_off()
        for task in list(self._tasks):
            if task.get_name() == f"kubelet-{node}":
                task.cancel()
        self.nodes.forget(node)

    # ---- pod exec ------------------------------------------------------------------------------
    def _pod_host(self, pod: str) -> tuple[Host, StaticPod] | None:
        for host in self.all_hosts():
            static = host.kubelet.find_pod(pod)
            if static is not None:
                return host, static
        return None

    async def pod_log(self, namespace: str, pod: str, container: str, previous: bool) -> LogSource:
        """What the kubelet's containerLogs answers for `kubectl logs` (via the API's pods/log)."""
        found = self._pod_host(pod)
        if found is None or found[1].namespace != namespace:
            raise ExecError(404, f'pods "{pod}" not found')
        host, _ = found
        if not host.kubelet.powered or host.kubelet.frozen:
            ip = host.spec.ip
            raise ExecError(500, f'Get "https://{ip}:10250/containerLogs/{namespace}/{pod}/{container}": '
                                 f"dial tcp {ip}:10250: connect: no route to host")
        try:
            path = host.kubelet.log_file(pod, container, previous=previous)
        except LookupError as exc:
            raise ExecError(400, str(exc).strip("'\"")) from None
        kubelet = host.kubelet
        return LogSource(path=path, live=lambda: not previous and kubelet.container_running(pod, container))

    async def exec_in_pod(self, namespace: str, pod: str, container: str, command: list[str], stdin: bool,
                          tty: bool) -> asyncio.subprocess.Process:
        for host in self.all_hosts():
            static = host.kubelet.find_pod(pod)
            if static is None or static.namespace != namespace or not host.kubelet.powered:
                continue
            annotations = static.manifest.get("metadata", {}).get("annotations", {})
            name = container or annotations.get("kubectl.kubernetes.io/default-container") or next(iter(static.containers))
            state = static.containers.get(name)
            if state is None:
                raise ExecError(400, f"container {name} is not valid for pod {pod}")
            if state.state != "Running":
                raise ExecError(400, f"container {name} is not running")
            if not command:
                raise ExecError(400, "you must specify at least one command for the container")
            return await spawn_in_host(
                host.root, command, env=state.env,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
        raise ExecError(404, f'pods "{pod}" not found')

    # ---- status for the CLI ------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        try:
            members_message, _ = await asyncio.wait_for(self.members.compute(), timeout=3)
        except (EtcdUnavailable, TimeoutError):
            members_message = "etcd does not answer (no quorum?)"
        return {
            "dir": str(self.dir),
            "version": self.spec.version,
            "api": f"https://127.0.0.1:{self.spec.api_port} " + ("serving" if self.api.serving else "DOWN"),
            "slack": self.slack.base_url,
            "redis": f"redis://127.0.0.1:{self.spec.redis_port}/0",
            "etcd": members_message,
            "faults": faults.active(self),
            "upgrade": self.upgrades.summary(),
            "hosts": [
                {"node": h.node, "role": h.spec.role, "machine": h.spec.machine,
                 "power": "on" if h.kubelet.powered else "off",
                 "ssh": f"127.0.0.1:{h.spec.ssh_port}",
                 "etcd": "running" if h.kubelet.running("etcd-", "etcd") else "not running",
                 "kube-apiserver": "running" if h.kubelet.running("kube-apiserver-", "kube-apiserver") else "not running"}
                for h in self.all_hosts()
            ],
        }

    # ---- stop ----------------------------------------------------------------------------------
    async def stop(self) -> None:
        self.stopping.set()
        for task in list(self._tasks):
            task.cancel()
        for host in self.all_hosts():
            with contextlib.suppress(Exception):
                await host.ssh.stop()
            with contextlib.suppress(Exception):
                await host.kubelet.power_off()
        with contextlib.suppress(Exception):
            await self.api.stop()
        with contextlib.suppress(Exception):
            await self.slack.stop()
        if self.redis is not None and self.redis.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.redis.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.redis.wait(), timeout=5)
            if self.redis.returncode is None:
                self.redis.kill()
        await self.store.close()
        await self.etcd.close()


async def serve(lab_dir: Path) -> int:
    daemon = LabDaemon(lab_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stopping.set)
    server = await control.serve(daemon)
    try:
        await daemon.start()
    except Exception:
        daemon.log("start failed:\n" + traceback.format_exc())
        (lab_dir / "start-failed").write_text(traceback.format_exc().strip().splitlines()[-1])
        await daemon.stop()
        server.close()
        return 1
    await daemon.stopping.wait()
    daemon.log("stopping")
    await daemon.stop()
    server.close()
    with contextlib.suppress(FileNotFoundError):
        (lab_dir / "control.sock").unlink()
    daemon.log("stopped")
    return 0


def main() -> None:
    lab_dir = Path(sys.argv[1])
    (lab_dir / "daemon.pid").write_text(str(os.getpid()))
    sys.exit(asyncio.run(serve(lab_dir)))


if __name__ == "__main__":
    main()
