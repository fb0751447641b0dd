"""The cluster's nodes as chapters 3 and 4 read them: `oc get nodes` (name, role, Ready) and the
addresses a node's serving certificate may name.

Shared by the shutdown (every node, masters and workers, to power off), the restart check
(masters Ready first, then workers; the CSR review) and the CSR approval (every node Ready).
Parsing is pure and unit-tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.cluster.kube import NODE, KubeClient, KubeError, kube_time
from bot.procedure import NotYet, StepContext, wait_until

ROLE_PREFIX = "node-role.kubernetes.io/"


@dataclass(frozen=True)
class NodeView:
    name: str
    role: str  # "master", "worker" (or the node's other role label)
    ready: bool
    reason: str = ""  # the Ready condition's reason when not Ready (KubeletNotReady, NodeStatusUnknown)
    addresses: tuple[str, ...] = ()  # status.addresses: InternalIP, InternalDNS, Hostname...

    @property
    def status(self) -> str:
        return "Ready" if self.ready else "NotReady"

    @property
    def master(self) -> bool:
        return self.role == "master"


STALE_REASON = "StaleStatus"


def node_view(node: Mapping[str, Any], *, fresh_after: float | None = None) -> NodeView:
    """One node as `oc get nodes` shows it. With `fresh_after` (after a shutdown: when the nodes went
    off), a Ready condition whose last heartbeat is older is the status from before the shutdown,
    which the API serves until the node lifecycle controller marks it Unknown (about 40 s after the
    control plane is back): such a node is not counted Ready. A kubelet that really came back posts
    its status at start, so its heartbeat is newer."""
    metadata = node.get("metadata") or {}
    labels = metadata.get("labels") or {}
    roles = sorted(k[len(ROLE_PREFIX):] for k in labels if k.startswith(ROLE_PREFIX))
    role = "master" if "master" in roles else "worker" if "worker" in roles or not roles else roles[0]
    status = node.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    addresses = tuple(str(a.get("address")) for a in status.get("addresses") or [] if a.get("address"))
    is_ready = ready.get("status") == "True"
    reason = "" if is_ready else str(ready.get("reason") or "no Ready condition")
    if is_ready and fresh_after is not None:
        heartbeat = kube_time(ready.get("lastHeartbeatTime"))
        if heartbeat is None or heartbeat < fresh_after:
            is_ready, reason = False, f"{STALE_REASON}: no status posted since the shutdown"
    return NodeView(name=str(metadata.get("name", "")), role=role, ready=is_ready, reason=reason, addresses=addresses)


def in_order(nodes: list[NodeView]) -> list[NodeView]:
    """Masters first, then the others, each by name (the document checks masters first)."""
    return sorted(nodes, key=lambda n: (not n.master, n.name))


async def list_nodes(kube: KubeClient, *, fresh_after: float | None = None) -> list[NodeView]:
    """`oc get nodes`: masters first (`fresh_after`: see node_view). Raises KubeError when the API
    does not answer."""
    return in_order([node_view(n, fresh_after=fresh_after) for n in await kube.list_objects(NODE)])


async def wait_nodes_ready(ctx: StepContext, *, wanted: Sequence[str] | None, what: str,
                           fresh_after: float | None = None) -> tuple[str, ...]:
    """Waits, within `restart_timeout`, until every node named in `wanted` (None: every node the
    API lists) is Ready, and returns their names. A node the API does not list counts as not
    Ready. Raises WaitTimedOut (with the nodes still NotReady as its last reading)."""
    kube = ctx.need_kube()

    async def ready() -> tuple[str, ...] | NotYet:
        try:
            nodes = {n.name: n for n in await list_nodes(kube, fresh_after=fresh_after)}
        except (KubeError, TimeoutError) as exc:
            return NotYet(f"the API does not answer ({str(exc)[:120]})")
        names = tuple(nodes) if wanted is None else tuple(wanted)
        late = [f"{n} ({nodes[n].reason})" if n in nodes else f"{n} (not listed)" for n in names
                if n not in nodes or not nodes[n].ready]
        return NotYet("NotReady: " + ", ".join(late)) if late else names

    return await wait_until(ready, what=what, deadline=ctx.settings.restart_timeout, heartbeat=ctx.heartbeat,
                            interval=2.0)
