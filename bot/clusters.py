"""The configured clusters, as connections: settings in, `KubeClient` and `Hosts` out.

This is where `bot/` hands `procedures/` what it needs without `procedures/` reading settings:
a procedure gets a kube client and a host pool, never a config object. Clients are built lazily
and kept, one per cluster (building one reads the kubeconfig from disk).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from bot.cluster.hosts import Hosts, SshTarget
from bot.cluster.kube import KubeClient
from bot.config import ClusterSettings, Settings
from bot.log import get_logger
from procedures.backup import Preflight, preflight
from procedures.diagnosis import Diagnosis, diagnose
from procedures.facts import ClusterFacts
from procedures.status import DEFAULT_TIMEOUTS, Timeouts, gather_facts

log = get_logger("etcdbot.clusters")

# Each API request's limit, for procedures too (a status bounds its own wait: `Timeouts.api`).
KUBE_TIMEOUT = 7.0


def hosts_for(cluster: ClusterSettings) -> Hosts | None:
    if cluster.ssh is None:
        return None
    ssh = cluster.ssh

    def targets(nodes: Iterable[str]) -> dict[str, SshTarget]:
        found = {}
        for node in nodes:
            host, port = ssh.address(node)
            found[node] = SshTarget(node=node, host=host, port=port, user=ssh.user, private_key=ssh.private_key,
                                    known_hosts=ssh.known_hosts, connect_timeout=ssh.connect_timeout)
        return found

    return Hosts(targets(ssh.hosts), workers=targets(ssh.workers))


@dataclass(frozen=True)
class StatusReport:
    facts: ClusterFacts
    diagnosis: Diagnosis


class Clusters:
    """One entry per configured cluster; the handlers' only way to reach a cluster."""

    def __init__(self, settings: Settings, *, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> None:
        self._settings = settings
        self._timeouts = timeouts
        self._kube: dict[str, KubeClient] = {}
        self._hosts: dict[str, Hosts | None] = {}
        self._inflight: dict[tuple[str, frozenset[str]], asyncio.Future[StatusReport]] = {}

    def kube(self, name: str) -> KubeClient | None:
        cluster = self._require(name)
        if name not in self._kube:
            try:
                self._kube[name] = KubeClient(kubeconfig=cluster.kubeconfig, timeout=KUBE_TIMEOUT)
            except Exception:  # an unreadable kubeconfig: report the API as unavailable, try SSH
                return None
        return self._kube[name]

    def hosts(self, name: str) -> Hosts | None:
        """One `Hosts` per cluster for the process's life: it keeps an SSH connection per master."""
        if name not in self._hosts:
            self._hosts[name] = hosts_for(self._require(name))
        return self._hosts[name]

    async def warm(self) -> None:
        """Opens the SSH connections of every cluster's masters (in an incident, the API may be
        gone and SSH the only way: a status should not start with handshakes). Failures are
        left to the next command to report."""
        for name in self._settings.cluster_names:
            self.kube(name)  # reads the kubeconfig now, not in a command's first status
        pools = [h for h in (self.hosts(name) for name in self._settings.cluster_names) if h is not None]
        await asyncio.gather(*(h.warm() for h in pools))

    async def keep_warm(self, *, every: float = 20.0) -> None:
        """Runs until cancelled: reopens, every `every` seconds, connections a master dropped."""
        while True:
            try:
                await self.warm()
            except Exception as exc:  # a broken setting must not stop the loop; commands report it
                log.warning("ssh.warm_failed", error=str(exc)[:200])
            await asyncio.sleep(every)

    async def status(self, name: str, *, expected_back: frozenset[str] = frozenset()) -> StatusReport:
        """Ch.2.2/2.3: gathers the facts and decides; never raises for an unreachable cluster.

        Asks that arrive while a collection for the same cluster runs share it: in an incident
        several people type /etcd-status at once, and one collection each would multiply the load
        on a struggling API and etcd, and on the bot's event loop (late acks; see bench/ack.py).
        """
        key = (name, expected_back)
        shared = self._inflight.get(key)
        if shared is None:
            shared = asyncio.ensure_future(self._collect(name, expected_back))
            self._inflight[key] = shared
            shared.add_done_callback(lambda _done: self._inflight.pop(key, None))
        return await asyncio.shield(shared)  # one asker giving up does not cancel the others'

    async def _collect(self, name: str, expected_back: frozenset[str]) -> StatusReport:
        facts = await gather_facts(cluster=name, kube=self.kube(name), hosts=self.hosts(name),
                                   timeouts=self._timeouts, expected_back=expected_back)
        return StatusReport(facts=facts, diagnosis=diagnose(facts))

    async def backup_preflight(self, name: str, *, pick: bool = False) -> Preflight:
        """Ch.1's questions before a backup (install time, version, proxy, encryption; with `pick`,
        the master a run would use now); API reads only."""
        return await preflight(kube=self.kube(name), hosts=self.hosts(name), pick=pick)

    def _require(self, name: str) -> ClusterSettings:
        cluster = self._settings.cluster(name)
        if cluster is None:
            raise KeyError(f"unknown cluster {name!r}")
        return cluster

    def close(self) -> None:
        for kube in self._kube.values():
            kube.close()
        self._kube.clear()

    async def aclose(self) -> None:
        """`close()` plus the kept SSH connections."""
        pools, self._hosts = [h for h in self._hosts.values() if h is not None], {}
        await asyncio.gather(*(h.close() for h in pools))
        self.close()
