"""The lab's shape, decided once at `up` and kept in DIR/lab.json.

Every port is chosen free at start so that several labs run side by side (tests run in
parallel); every later process (the daemon, the CLI, a test) reads the same spec back instead
of recomputing anything.
"""

from __future__ import annotations

import json
import random
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# The node names of the document's own examples, so a person rehearsing reads what the page shows.
DOCUMENT_NODE_IPS = ["10.0.131.183", "10.0.164.97", "10.0.154.204"]
REPLACEMENT_NODE_IPS = ["10.0.133.53", "10.0.143.125", "10.0.168.251", "10.0.170.223", "10.0.211.16"]
ZONES = ["us-east-1a", "us-east-1b", "us-east-1c"]
# Workers: one address per zone's private subnet in turn (10.0.128.0/20, .144.0/20, .160.0/20).
WORKER_IPS = ["10.0.136.42", "10.0.151.118", "10.0.166.205", "10.0.139.77", "10.0.148.9", "10.0.171.23"]
DEFAULT_WORKERS = 2


def node_name_for_ip(ip: str) -> str:
    """AWS's private DNS name for an address: 10.0.131.183 -> ip-10-0-131-183.ec2.internal."""
    return "ip-" + ip.replace(".", "-") + ".ec2.internal"


PORTS_BELOW_EPHEMERAL = 12000  # how many ports under the kernel's ephemeral range the lab picks from


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, chosen below the kernel's ephemeral
    range: a lab's etcd, sshd or Redis that is killed and started again (faults, power cycles)
    must find its port free, and a port in the ephemeral range can meanwhile be the local end of
    any outgoing connection on the machine (CI saw a restarted etcd fail "address already in use")."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randint(max(1024, low - PORTS_BELOW_EPHEMERAL), low - 1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 below {low} after 200 tries")


@dataclass(frozen=True)
class MasterSpec:
    """One master: its names in the cluster and its ports on this machine."""

    index: int
    node: str
    ip: str
    machine: str
    zone: str
    client_port: int
    peer_port: int
    metrics_port: int
    ssh_port: int

    @property
    def role(self) -> str:
        return "master"

    @property
    def client_url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://127.0.0.1:{self.peer_port}"


@dataclass(frozen=True)
class WorkerSpec:
    """One worker: a node with the worker role, a machine in its zone's MachineSet, SSH, no etcd."""

    index: int
    node: str
    ip: str
    machine: str
    machineset: str
    zone: str
    ssh_port: int

    @property
    def role(self) -> str:
        return "worker"


NodeSpec = MasterSpec | WorkerSpec


@dataclass(frozen=True)
class LabSpec:
    """Everything that identifies one lab; written to DIR/lab.json."""

    dir: str
    cluster_name: str
    infra_id: str
    version: str
    installed_at: float
    clock_speed: float
    api_port: int
    slack_port: int
    redis_port: int
    api_token: str
    slack_bot_token: str
    slack_app_token: str
    slack_signing_secret: str
    masters: tuple[MasterSpec, ...] = field(default_factory=tuple)
    # Ports for the bot run against this lab (ETCDBOT_HTTP_PORT, ETCDBOT_HEALTH_PORT), free when
    # the lab was made: several labs and their bots on one machine must not fight over 3000/8080.
    bot_http_port: int = 0
    bot_health_port: int = 0
    workers: tuple[WorkerSpec, ...] = ()

    @property
    def path(self) -> Path:
        return Path(self.dir)

    def master(self, node: str) -> MasterSpec:
        for master in self.masters:
            if master.node == node:
                return master
        known = ", ".join(m.node for m in self.masters)
        raise KeyError(f"unknown node {node!r}; the lab's masters are: {known}")

    def node(self, node: str) -> NodeSpec:
        """A master or a worker by node name (KeyError naming every node otherwise)."""
        for spec in (*self.masters, *self.workers):
            if spec.node == node:
                return spec
        known = ", ".join(n.node for n in (*self.masters, *self.workers))
        raise KeyError(f"unknown node {node!r}; the lab's nodes are: {known}")

    def machinesets(self) -> list[str]:
        """The worker MachineSets, one per zone as the installer makes them on AWS."""
        return [worker_machineset(self.infra_id, zone) for zone in ZONES]

    def with_version(self, version: str) -> LabSpec:
        return replace(self, version=version)

    def with_master(self, master: MasterSpec) -> LabSpec:
        return replace(self, masters=(*self.masters, master))

    def save(self) -> None:
        target = self.path / "lab.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(target)

    @classmethod
    def load(cls, lab_dir: Path) -> LabSpec:
        raw = json.loads((lab_dir / "lab.json").read_text())
        raw["masters"] = tuple(MasterSpec(**m) for m in raw["masters"])
        raw["workers"] = tuple(WorkerSpec(**w) for w in raw.get("workers", []))
        return cls(**raw)


def new_master(*, index: int, ip: str, infra_id: str) -> MasterSpec:
    return MasterSpec(
        index=index,
        node=node_name_for_ip(ip),
        ip=ip,
        machine=f"{infra_id}-master-{index}",
        zone=ZONES[index % len(ZONES)],
        client_port=free_port(),
        peer_port=free_port(),
        metrics_port=free_port(),
        ssh_port=free_port(),
    )


def worker_machineset(infra_id: str, zone: str) -> str:
    return f"{infra_id}-worker-{zone}"


def new_worker(*, index: int, infra_id: str) -> WorkerSpec:
    """Worker `index`: zones in turn, a machine named after its MachineSet plus 5 random characters."""
    zone = ZONES[index % len(ZONES)]
    ip = WORKER_IPS[index] if index < len(WORKER_IPS) else f"10.0.{180 + index}.{30 + index}"
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    suffix = "".join(secrets.choice(alphabet) for _ in range(5))
    machineset = worker_machineset(infra_id, zone)
    return WorkerSpec(index=index, node=node_name_for_ip(ip), ip=ip, machine=f"{machineset}-{suffix}",
                      machineset=machineset, zone=zone, ssh_port=free_port())


def new_lab_spec(
    *, lab_dir: Path, masters: int, version: str, installed_hours_ago: float, clock_speed: float,
    workers: int = DEFAULT_WORKERS,
) -> LabSpec:
    """Chooses names, tokens and free ports for a new lab."""
    infra_id = "clustername-" + secrets.token_hex(3)[:5]
    ips = DOCUMENT_NODE_IPS + [f"10.0.{140 + i}.{20 + i}" for i in range(max(0, masters - 3))]
    return LabSpec(
        dir=str(lab_dir.resolve()),
        cluster_name="lab",
        infra_id=infra_id,
        version=version,
        installed_at=time.time() - installed_hours_ago * 3600,
        clock_speed=clock_speed,
        api_port=free_port(),
        slack_port=free_port(),
        redis_port=free_port(),
        api_token="sha256~" + secrets.token_urlsafe(32),
        slack_bot_token="xoxb-lab-" + secrets.token_hex(12),
        slack_app_token="xapp-lab-" + secrets.token_hex(12),
        slack_signing_secret=secrets.token_hex(16),
        masters=tuple(new_master(index=i, ip=ips[i], infra_id=infra_id) for i in range(masters)),
        bot_http_port=free_port(),
        bot_health_port=free_port(),
        workers=tuple(new_worker(index=i, infra_id=infra_id) for i in range(workers)),
    )


def next_replacement_ip(spec: LabSpec) -> str:
    used = {m.ip for m in spec.masters}
    for ip in REPLACEMENT_NODE_IPS:
        if ip not in used:
            return ip
    return f"10.0.200.{len(spec.masters) + 10}"
