"""Faults a person or a test injects into the lab, each one a documented incident:
`etcdbot-lab fault KIND [TARGET]`, undone by `etcdbot-lab heal [TARGET]`.

Faults act on the real parts: a killed etcd is a dead process, lost quorum is a majority of
members down, a stopped machine has no SSH and no containers. Nothing is faked in the API.

A crashlooping etcd is a member whose data is damaged: the first pages of its bbolt database
(`/var/lib/etcd/member/snap/db`) are zeroed while it is stopped, so the real etcd panics with
"failed to open database ... invalid database" at every start and the kubelet backs off. Whatever
moves that data directory away cures it (2.4.B, or 5.3's restore), and `heal` puts the saved pages
back. `lose-quorum` does the same to a majority of the members.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.apiserver.storage import NotFound

if TYPE_CHECKING:
    from lab.daemon import Host, LabDaemon

NODE_FAULTS = ("stop-machine", "node-notready", "crashloop-etcd", "kill-etcd", "drop-ssh", "block-ssh", "stall-ssh",
               "slow-etcd")
# Faults about a node's machine, kubelet or SSH, which workers have too; the others need an etcd member.
ANY_NODE_FAULTS = ("stop-machine", "node-notready", "drop-ssh", "block-ssh", "stall-ssh")
DAMAGE_FAULTS = ("crashloop-etcd", "lose-quorum")
DB_FILE = "var/lib/etcd/member/snap/db"
DAMAGED_BYTES = 8192  # bbolt's two meta pages (4 KiB pages)
CLUSTER_FAULTS = ("lose-quorum", "delete-object", "expire-certs", "api-down")
KINDS = NODE_FAULTS + CLUSTER_FAULTS


class FaultError(Exception):
    """Bad fault request: unknown kind, unknown node, missing target."""


def _state(daemon: LabDaemon) -> list[tuple[str, str]]:
    return daemon.active_faults


def active(daemon: LabDaemon) -> list[str]:
    """The faults still in effect. A damaged member cured by the document's own steps (its data
    directory moved away, or restored over) no longer counts, and its saved pages are dropped."""
    damaged = {h.node for h in daemon.hosts.values() if _still_damaged(daemon, h)}
    _state(daemon)[:] = [(kind, target) for kind, target in _state(daemon)
                         if kind not in DAMAGE_FAULTS or (damaged and (kind == "lose-quorum" or target in damaged))]
    return [f"{kind} {target}".strip() for kind, target in _state(daemon)]


def _still_damaged(daemon: LabDaemon, host: Host) -> bool:
    saved = _saved_pages(daemon, host)
    if not saved.exists():
        return False
    try:
        with open(host.root / DB_FILE, "rb") as f:
            if not f.read(DAMAGED_BYTES).strip(b"\0"):
                return True
    except OSError:
        pass
    saved.unlink(missing_ok=True)
    return False


def _host(daemon: LabDaemon, target: Any, *, masters_only: bool = True) -> Host:
    if not target:
        raise FaultError("this fault needs a node: etcdbot-lab fault KIND NODE")
    host = daemon.hosts.get(str(target))
    if host is None and not masters_only:
        host = daemon.workers.get(str(target))
    if host is None:
        if str(target) in daemon.workers:
            raise FaultError(f"{target} is a worker: it runs no etcd; masters: {', '.join(daemon.hosts)}")
        raise FaultError(f"unknown node {target!r}; masters: {', '.join(daemon.hosts)}")
    return host


def _saved_pages(daemon: LabDaemon, host: Host) -> Path:
    return daemon.dir / "faults" / host.node / "db.head"


def _damage(daemon: LabDaemon, host: Host) -> None:
    """Zero the member's bbolt meta pages (keeping them under DIR/faults for `heal`)."""
    db = host.root / DB_FILE
    if not db.is_file():
        raise FaultError(f"{host.node} has no etcd data in /var/lib/etcd to damage")
    saved = _saved_pages(daemon, host)
    with open(db, "r+b") as f:
        head = f.read(DAMAGED_BYTES)
        if not saved.exists() and head.strip(b"\0"):
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_bytes(head)
        f.seek(0)
        f.write(b"\0" * len(head))
        f.flush()
        os.fsync(f.fileno())


def _repair(daemon: LabDaemon, host: Host) -> None:
    """Put the saved pages back, if the damaged database is still where the fault left it."""
    saved = _saved_pages(daemon, host)
    if not saved.exists():
        return
    original = saved.read_bytes()
    db = host.root / DB_FILE
    if db.is_file():
        with open(db, "r+b") as f:
            if not f.read(len(original)).strip(b"\0"):
                f.seek(0)
                f.write(original)
                f.flush()
                os.fsync(f.fileno())
    saved.unlink()


async def _damage_member(daemon: LabDaemon, host: Host) -> None:
    await host.kubelet.with_stopped("etcd", lambda: _damage(daemon, host))


def _etcd_pid(host: Host) -> int | None:
    for pod in host.kubelet.pods.values():
        container = pod.containers.get("etcd")
        if container is not None and container.process is not None and container.process.returncode is None:
            return container.process.pid
    return None


async def apply(daemon: LabDaemon, kind: str, target: Any) -> str:
    if kind not in KINDS:
        raise FaultError(f"unknown fault {kind!r}; known: {', '.join(KINDS)}")
    if kind in NODE_FAULTS:
        host = _host(daemon, target, masters_only=kind not in ANY_NODE_FAULTS)
        message = await _apply_node(daemon, kind, host)
        _state(daemon).append((kind, host.node))
    else:
        message = await _apply_cluster(daemon, kind, target)
        _state(daemon).append((kind, str(target or "")))
    daemon.poke()
    daemon.log(f"fault {kind} {target or ''}: {message}")
    return message


async def _apply_node(daemon: LabDaemon, kind: str, host: Host) -> str:
    kubelet = host.kubelet
    if kind == "stop-machine":
        await daemon.power_off(host, instance_state="stopped")
        return f"machine {host.spec.machine} stopped: {host.node} is powered off"
    if kind == "node-notready":
        kubelet.frozen = True
        kubelet.held.add("etcd")
        kubelet.poke()
        await host.ssh.stop()
        return f"{host.node} is unreachable: kubelet stopped posting status, etcd and SSH cut off"
    if kind == "kill-etcd":
        kubelet.held.add("etcd")
        kubelet.poke()
        return f"etcd on {host.node} killed and kept down"
    if kind == "crashloop-etcd":
        await _damage_member(daemon, host)
        return (f"etcd on {host.node} now crashes at every start (its database in /var/lib/etcd is damaged): "
                "CrashLoopBackOff")
    if kind == "drop-ssh":
        host.ssh.drop_connections()
        return f"SSH connections to {host.node} dropped"
    if kind == "block-ssh":
        await host.ssh.block()
        return f"SSH on {host.node} is down: connections refused until heal"
    if kind == "stall-ssh":
        host.ssh.stall()
        return f"SSH on {host.node} is stalled: logins succeed, commands hang until heal"
    if kind == "slow-etcd":
        pid = _etcd_pid(host)
        if pid is None:
            raise FaultError(f"etcd is not running on {host.node}")
        os.kill(pid, signal.SIGSTOP)
        return f"etcd on {host.node} frozen (SIGSTOP): it accepts connections and never answers"
    raise FaultError(kind)


async def _apply_cluster(daemon: LabDaemon, kind: str, target: Any) -> str:
    if kind == "lose-quorum":
        hosts = list(daemon.hosts.values())
        doomed = hosts[: len(hosts) // 2 + 1] if not target else [h for h in hosts if h.node != target]
        if target and len(doomed) == len(hosts):
            raise FaultError(f"unknown node {target!r}; masters: {', '.join(daemon.hosts)}")
        for host in doomed:
            await _damage_member(daemon, host)
        return ("etcd members down on " + ", ".join(h.node for h in doomed)
                + " (their databases in /var/lib/etcd are damaged, etcd crashes at every start): quorum lost")
    if kind == "api-down":
        daemon.api_faulted = True
        await daemon.api.stop()
        return "kube-apiserver is down on every master"
    if kind == "expire-certs":
        for host in daemon.all_hosts():
            host.certs_expired = True
            daemon.csrs.after_restart(host.node)
        return "kubelet client certificates expired: nodes NotReady, CSRs pending"
    if kind == "delete-object":
        parts = str(target or "").split("/")
        if len(parts) not in (2, 3):
            raise FaultError("delete-object needs RESOURCE/NAME or RESOURCE/NAMESPACE/NAME, e.g. configmaps/demo/payments-config")
        resource, name = parts[0], parts[-1]
        namespace = parts[1] if len(parts) == 3 else None
        try:
            await daemon.objects.delete(resource, name, namespace=namespace)
        except NotFound as exc:
            raise FaultError(f"{target} does not exist") from exc
        except KeyError as exc:
            raise FaultError(f"unknown resource {resource!r}") from exc
        return f"{target} deleted"
    raise FaultError(kind)


async def heal(daemon: LabDaemon, target: Any = None) -> str:
    """Undo every fault (or those on one node): power on, repair and restart etcd, reopen SSH and the API."""
    if target and daemon.host(target) is None:
        raise FaultError(f"unknown node {target!r}; nodes: {', '.join(h.node for h in daemon.all_hosts())}")
    healed = []
    for host in daemon.all_hosts():
        if target and host.node != target:
            continue
        pid = _etcd_pid(host)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        host.ssh.heal()  # SSH listens again below (power_on or start), not while powered off
        host.kubelet.held.discard("etcd")
        if _saved_pages(daemon, host).exists():
            await host.kubelet.with_stopped("etcd", lambda host=host: _repair(daemon, host))
        host.kubelet.frozen = False
        for pod in host.kubelet.pods.values():
            for c in pod.containers.values():
                c.next_start = 0.0
        if not host.kubelet.powered:
            await daemon.power_on(host, after_shutdown=False)
        else:
            await host.ssh.start()
        host.kubelet.poke()
        healed.append(host.node)
    if not target:
        daemon.api_faulted = False
        _state(daemon).clear()
    else:
        _state(daemon)[:] = [(k, t) for k, t in _state(daemon) if t != target]
    daemon.poke()
    return "healed " + (", ".join(healed) or "nothing")
