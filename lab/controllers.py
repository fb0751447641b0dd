"""The cluster's own controllers, emulated: what the kubelet reports (mirror pods, node status),
what the etcd operator writes (EtcdMembersAvailable, revisions rolled node by node on
`forceRedeploymentReason`), what the machine API does, and CSRs.

Each controller reaches etcd only through the API objects in etcd (`Objects`), so when etcd has
no quorum they stall exactly as OpenShift's do: the cluster's view goes stale, nothing is faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

from lab import seed
from lab.apiserver.storage import AlreadyExists, NotFound, StoreUnavailable
from lab.etcdadmin import EtcdUnavailable
from lab.kubelet import KubeletEvent

if TYPE_CHECKING:
    from lab.daemon import LabDaemon

OPERATOR_RESOURCES = seed.OPERATOR_RESOURCES
# Lab seconds one node's installer takes during a rollout.
INSTALLER_LAB_SECONDS = 30.0
UNREACHABLE_TAINTS = [
    {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
]
TRANSIENT = (StoreUnavailable, EtcdUnavailable, TimeoutError, OSError)
EVENT_TTL_SECONDS = 3 * 3600  # OpenShift runs kube-apiserver with --event-ttl=3h


def _stable(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


class MirrorPods:
    """Writes each host's static pods to the API as mirror pods, as the kubelet does."""

    def __init__(self, daemon: LabDaemon) -> None:
        self.d = daemon
        self._written: dict[str, str] = {}

    async def sync(self) -> None:
        for host in self.d.all_hosts():
            if not host.kubelet.powered or host.kubelet.frozen:
                continue
            pods = host.kubelet.pod_statuses()
            names = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods}
            for pod in pods:
                key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
                digest = _stable(pod)
                if self._written.get(key) == digest:
                    continue
                await self._put(pod)
                self._written[key] = digest
            for key in [k for k in self._written if k.split("/", 1)[1].endswith("-" + host.node)]:
                ns, name = key.split("/", 1)
                if (ns, name) not in names:
                    with contextlib.suppress(NotFound):
                        await self.d.objects.delete("pods", name, namespace=ns)
                    self._written.pop(key, None)

    async def _put(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]

        def replace(current: dict[str, Any]) -> dict[str, Any]:
            current["metadata"]["labels"] = meta.get("labels", {})
            current["metadata"]["annotations"] = meta.get("annotations", {})
            current["spec"] = pod["spec"]
            current["status"] = pod["status"]
            return current

        try:
            await self.d.objects.mutate("pods", meta["name"], replace, namespace=meta["namespace"])
        except NotFound:
            with contextlib.suppress(AlreadyExists):
                await self.d.objects.create("pods", pod)

    def forget(self) -> None:
        self._written.clear()

    async def prune(self) -> None:
        """Delete mirror pods whose static pod the node's kubelet no longer runs (after a restore
        brought back pods of an older state, or a manifest moved away while the API was down)."""
        for host in self.d.all_hosts():
            if not host.kubelet.powered or host.kubelet.frozen:
                continue
            running = {p["metadata"]["name"] for p in host.kubelet.pod_statuses()}
            pods, _ = await self.d.objects.list("pods", field_selector=f"spec.nodeName={host.node}")
            for pod in pods:
                meta = pod["metadata"]
                if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}) and meta["name"] not in running:
                    with contextlib.suppress(NotFound):
                        await self.d.objects.delete("pods", meta["name"], namespace=meta["namespace"])


class NodeStatus:
    """Ready while the host is on, its kubelet reports and its certificates are valid."""

    def __init__(self, daemon: LabDaemon) -> None:
        self.d = daemon
        self._written: dict[str, bool] = {}

    async def sync(self) -> None:
        for host in self.d.all_hosts():
            ready = host.kubelet.powered and not host.kubelet.frozen and not host.certs_expired
            if self._written.get(host.node) == ready:
                continue
            master = host.spec

            def update(node: dict[str, Any], *, ready: bool = ready, master: Any = master, host: Any = host) -> dict[str, Any]:
                reason = "NodeStatusUnknown" if not host.certs_expired else "KubeletNotReady"
                node["status"] = {**node.get("status", {}), **seed.node_status(ready=ready, master=master, reason=reason)}
                taints = [t for t in node["spec"].get("taints", []) if t["key"] != "node.kubernetes.io/unreachable"]
                if not ready and not host.certs_expired:
                    taints += [{**t, "timeAdded": seed.iso(time.time())} for t in UNREACHABLE_TAINTS]
                node["spec"]["taints"] = taints
                return node

            try:
                await self.d.objects.mutate("nodes", host.node, update)
            except NotFound:
                continue
            self._written[host.node] = ready

    def forget(self, node: str | None = None) -> None:
        if node is None:
            self._written.clear()
        else:
            self._written.pop(node, None)


class EtcdMembersStatus:
    """The etcd operator's EtcdMembersAvailable condition and the etcd clusteroperator's Degraded."""

    def __init__(self, daemon: LabDaemon) -> None:
        self.d = daemon
        self._last = ""

    def forget(self) -> None:
        self._last = ""

    async def compute(self) -> tuple[str, bool]:
        endpoints = self.d.client_urls()
        members = await self.d.etcd.member_list(endpoints)
        health = await self.d.etcd.health_map([u for m in members for u in m.client_urls[:1]])
        unhealthy = [m.name or m.peer_urls[0] for m in members if not (m.client_urls and health.get(m.client_urls[0]))]
        available = len(members) - len(unhealthy)
        message = f"{available} of {len(members)} members are available"
        for name in unhealthy:
            message += f", {name} is unhealthy"
        return message, not unhealthy

    async def sync(self) -> None:
        message, ok = await self.compute()
        if message == self._last:
            return

        def update(obj: dict[str, Any]) -> dict[str, Any]:
            set_condition(obj, "EtcdMembersAvailable", "True" if ok else "False",
                          "EtcdQuorate" if ok else "EtcdMembersDegraded", message)
            set_condition(obj, "EtcdMembersDegraded", "False" if ok else "True",
                          "AsExpected" if ok else "UnhealthyMembers", "" if ok else message)
            return obj

        await self.d.objects.mutate("etcds", "cluster", update)

        def degrade(co: dict[str, Any]) -> dict[str, Any]:
            set_condition(co, "Degraded", "False" if ok else "True", "AsExpected" if ok else "EtcdMembers_UnhealthyMembers",
                          "" if ok else f"EtcdMembersDegraded: {message}")
            return co

        await self.d.objects.mutate("clusteroperators", "etcd", degrade)
        self._last = message


def set_condition(obj: dict[str, Any], ctype: str, status: str, reason: str, message: str) -> None:
    conditions = obj.setdefault("status", {}).setdefault("conditions", [])
    for cond in conditions:
        if cond["type"] == ctype:
            if cond.get("status") != status:
                cond["lastTransitionTime"] = seed.iso(time.time())
            cond.update(status=status, reason=reason, message=message)
            return
    conditions.append(seed.condition(ctype, status, reason, message))


def get_condition(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond.get("type") == ctype:
            return cond
    return None


def progressing_message(node_statuses: list[dict[str, Any]]) -> tuple[bool, str]:
    """NodeInstallerProgressing as library-go words it: "2 nodes are at revision 6; 1 nodes are at revision 7"."""
    counts: dict[int, int] = {}
    for status in node_statuses:
        counts[status.get("currentRevision", 0)] = counts.get(status.get("currentRevision", 0), 0) + 1
    parts = [f"{n} nodes are at revision {rev}" for rev, n in sorted(counts.items())]
    return len(counts) > 1 or any(s.get("targetRevision") for s in node_statuses), "; ".join(parts)


class Revisions:
    """`forceRedeploymentReason` -> a new revision, rolled out node by node with lab-clock waits.

    Rolling the etcd revision onto a node also adds a member for a Ready master that has none
    (member add + fresh data dir) and reissues its certificates when their secrets are gone.
    """

    def __init__(self, daemon: LabDaemon) -> None:
        self.d = daemon
        self._rolling: set[str] = set()
        self._requested: set[str] = set()  # new revisions an operator wants (a new release's images)

    def request(self, resource: str) -> None:
        """Roll a new revision of `resource` as an operator does when its operand's image changes."""
        self._requested.add(resource)
        self.d.poke()

    def settled(self, resource: str) -> bool:
        """No rollout of `resource` running or asked for."""
        return resource not in self._rolling and resource not in self._requested

    async def sync(self) -> None:
        for resource in OPERATOR_RESOURCES:
            if resource in self._rolling:
                continue
            obj = await self.d.objects.get(resource, "cluster")
            reason = obj.get("spec", {}).get("forceRedeploymentReason", "")
            status = obj.get("status", {})
            latest = status.get("latestAvailableRevision", 0)
            behind = [s for s in status.get("nodeStatuses", []) if s.get("currentRevision") != latest]
            if (reason and reason != status.get("latestAvailableRevisionReason", "")) or self._has_missing_nodes(status) \
                    or resource in self._requested:
                self._rolling.add(resource)
                self._requested.discard(resource)
                self.d.spawn(self._roll(resource, reason, bump=True), name=f"rollout-{resource}")
            elif behind:  # an interrupted rollout (etcd was down, a node was off) goes on
                self._rolling.add(resource)
                self.d.spawn(self._roll(resource, reason, bump=False), name=f"rollout-{resource}")

    def _has_missing_nodes(self, status: dict[str, Any]) -> bool:
        known = {s["nodeName"] for s in status.get("nodeStatuses", [])}
        return any(h.node not in known and h.kubelet.powered for h in self.d.hosts.values())

    async def _roll(self, resource: str, reason: str, *, bump: bool) -> None:
        try:
            await self._roll_inner(resource, reason, bump=bump)
        except TRANSIENT as exc:
            self.d.log(f"rollout of {resource} interrupted, will resume: {exc!r}")
        finally:
            self._rolling.discard(resource)

    async def _roll_inner(self, resource: str, reason: str, *, bump: bool) -> None:
        def new_revision(obj: dict[str, Any]) -> dict[str, Any]:
            st = obj.setdefault("status", {})
            st["latestAvailableRevision"] = int(st.get("latestAvailableRevision", 1)) + 1
            st["latestAvailableRevisionReason"] = reason
            known = {s["nodeName"] for s in st.setdefault("nodeStatuses", [])}
            for host in self.d.hosts.values():
                if host.node not in known:
                    st["nodeStatuses"].append({"nodeName": host.node, "currentRevision": 0})
            live = set(self.d.hosts)
            st["nodeStatuses"] = [s for s in st["nodeStatuses"] if s["nodeName"] in live]
            self._set_progress(obj)
            return obj

        obj = await self.d.objects.mutate(resource, "cluster", new_revision) if bump else \
            await self.d.objects.get(resource, "cluster")
        revision = obj["status"]["latestAvailableRevision"]
        for entry in list(obj["status"]["nodeStatuses"]):
            node = entry["nodeName"]
            host = self.d.hosts.get(node)
            if host is None or entry.get("currentRevision") == revision:
                continue
            while not host.kubelet.powered or host.kubelet.frozen:
                await asyncio.sleep(0.5)  # an installer cannot run on a node that is down: the rollout waits
            await self._mark(resource, node, target=revision)
            await self.d.clock.sleep(INSTALLER_LAB_SECONDS / 2)
            await self.d.install_revision(resource, host, revision, reason=reason)
            await self.d.wait_static_pod_ready(resource, host)
            await self.d.clock.sleep(INSTALLER_LAB_SECONDS / 2)
            await self._mark(resource, node, current=revision)

    async def _mark(self, resource: str, node: str, *, target: int | None = None, current: int | None = None) -> None:
        def update(obj: dict[str, Any]) -> dict[str, Any]:
            for s in obj["status"]["nodeStatuses"]:
                if s["nodeName"] == node:
                    if target is not None:
                        s["targetRevision"] = target
                    if current is not None:
                        s["currentRevision"] = current
                        s.pop("targetRevision", None)
            self._set_progress(obj)
            return obj

        await self.d.objects.mutate(resource, "cluster", update)

    @staticmethod
    def _set_progress(obj: dict[str, Any]) -> None:
        progressing, message = progressing_message(obj["status"]["nodeStatuses"])
        latest = obj["status"]["latestAvailableRevision"]
        if progressing or any(s.get("currentRevision") != latest for s in obj["status"]["nodeStatuses"]):
            set_condition(obj, "NodeInstallerProgressing", "True", "NodeInstaller", message)
        else:
            set_condition(obj, "NodeInstallerProgressing", "False", "AllNodesAtLatestRevision", message)


class EventRecorder:
    """Posts what the kubelets did as core/v1 Events, aggregated as the kubelet's correlator does:
    the same reason and message about the same container bumps `count` and `lastTimestamp` of one
    Event instead of making a new one. While the API cannot be written the events wait (the
    kubelet's queue is bounded, as client-go's broadcaster is)."""

    def __init__(self, daemon: LabDaemon) -> None:
        self.d = daemon
        self._names: dict[tuple[str, ...], str] = {}
        self._next_prune = 0.0

    async def sync(self) -> None:
        for host in self.d.all_hosts():
            queue = host.kubelet.events
            while queue:
                await self._record(queue[0])
                queue.popleft()
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + 60
            await self._prune()

    async def _prune(self) -> None:
        """Events live EVENT_TTL_SECONDS after they were last seen (kube-apiserver's --event-ttl)."""
        cutoff = seed.iso(time.time() - EVENT_TTL_SECONDS)
        events, _ = await self.d.objects.list("events")
        for event in events:
            if (event.get("lastTimestamp") or "") < cutoff:
                with contextlib.suppress(NotFound):
                    await self.d.objects.delete("events", event["metadata"]["name"],
                                                namespace=event["metadata"]["namespace"])
        if len(self._names) > 5000:
            self._names.clear()  # a later repeat starts a new Event, as after the correlator's cache expires

    async def _record(self, ev: KubeletEvent) -> None:
        key = (ev.namespace, ev.pod_uid, ev.container, ev.type, ev.reason, ev.message)
        name = self._names.get(key)
        stamp = seed.iso(ev.at)
        if name is not None:
            def bump(obj: dict[str, Any]) -> dict[str, Any]:
                obj["count"] = int(obj.get("count") or 1) + 1
                obj["lastTimestamp"] = stamp
                return obj

            try:
                await self.d.objects.mutate("events", name, bump, namespace=ev.namespace)
                return
            except NotFound:
                pass  # expired or restored away: record it afresh
        name = f"{ev.pod}.{time.time_ns():x}"
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ev.namespace},
            "involvedObject": {"kind": "Pod", "namespace": ev.namespace, "name": ev.pod, "uid": ev.pod_uid,
                               "apiVersion": "v1", "fieldPath": f"spec.containers{{{ev.container}}}"},
            "reason": ev.reason, "message": ev.message,
            "source": {"component": "kubelet", "host": ev.node},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1, "type": ev.type,
            "eventTime": None, "reportingComponent": "", "reportingInstance": "",
        }
        with contextlib.suppress(AlreadyExists):
            await self.d.objects.create("events", event)
        self._names[key] = name
