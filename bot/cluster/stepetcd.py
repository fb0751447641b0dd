"""`ctx.etcd`: etcd of the run's cluster for one step (bot/cluster/etcd.py's `Etcd`), bound to
the run's fence.

Why a wrapper: `Etcd.member_remove` takes the fence as an argument; a step should not have to
remember it. Here the fence comes with the context (`with_fence`, done by `StepContext`), so a
`member_remove` can never run without the lock check, and an unbound one refuses. One `Etcd` per
context (a step gets a new context): the place where `member list` answered is kept for the
`member remove` after it, as the document does it in one `oc rsh` session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bot.cluster.etcd import EndpointStatuses, Etcd, EtcdSurvey
from bot.cluster.etcdctl import EndpointHealth, MemberList

if TYPE_CHECKING:
    from bot.cluster.kube import KubeClient

Fence = Callable[[], Awaitable[None]]


class UnfencedRemove(RuntimeError):
    """A member remove through an etcd access no run's fence was bound to: refused."""


class StepEtcd:
    """member list / remove, endpoint status / health, from a healthy pod's etcdctl, else SSH."""

    def __init__(self, *, kube: KubeClient | None, hosts: Any, fence: Fence | None = None,
                 avoid_nodes: tuple[str, ...] = ()) -> None:
        self._kube = kube
        self._hosts = hosts  # anything with `nodes` and `run(node=, argv=, timeout=)`: Hosts or NodeShell
        self._fence = fence
        self._avoid = avoid_nodes
        self._etcd = Etcd(kube=kube, hosts=hosts, avoid_nodes=avoid_nodes)

    def with_fence(self, fence: Fence) -> StepEtcd:
        return StepEtcd(kube=self._kube, hosts=self._hosts, fence=fence, avoid_nodes=self._avoid)

    def avoiding(self, *nodes: str) -> StepEtcd:
        """The same access, never through an etcd pod on these nodes (2.4: "a pod not on the
        affected node")."""
        return StepEtcd(kube=self._kube, hosts=self._hosts, fence=self._fence, avoid_nodes=(*self._avoid, *nodes))

    @property
    def via(self) -> str:
        """Where etcdctl answered ("exec in etcd-<node>" or "SSH on <node>"), for the step's output."""
        return self._etcd.via

    async def member_list(self) -> MemberList:
        return await self._etcd.member_list()

    async def member_remove(self, member_id: str) -> MemberList:
        """`etcdctl member remove <id>` where the member list ran; the fence first. The members left."""
        if self._fence is None:
            raise UnfencedRemove(f"member remove {member_id}: needs a run's fence (use ctx.etcd in a step)")
        return await self._etcd.member_remove(member_id, fence=self._fence)

    async def endpoint_status(self) -> EndpointStatuses:
        return await self._etcd.endpoint_status()

    async def endpoint_health(self) -> tuple[EndpointHealth, ...]:
        return await self._etcd.endpoint_health()

    async def survey(self) -> EtcdSurvey:
        return await self._etcd.survey()
