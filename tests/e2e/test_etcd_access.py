"""bot/cluster/etcd.py and the kept SSH connections against a lab: etcdctl through an etcd pod and
over SSH, a dead or frozen member marked within the call's limit (not etcdctl's defaults), the
status's "why" from the crashed container's previous log (API, then SSH when the API is down),
SSH connections that survive a drop, and `member remove` behind the fence (last: it changes the
cluster for good)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from bot.cluster.etcd import Etcd, EtcdTimeouts
from bot.cluster.hosts import Hosts
from bot.cluster.kube import KubeClient
from bot.clusters import hosts_for
from bot.config import ClusterSettings, load_settings
from procedures.status import gather_facts
from tests.labfixture import Lab, wait_for

LIMIT = EtcdTimeouts().call  # one etcdctl call: dial + command + the round trip's margin


@pytest.fixture(scope="module")
def cluster(lab: Lab) -> ClusterSettings:
    found = load_settings(env_file=lab.dir / "env", environ={}).cluster("lab")
    assert found is not None
    return found


@pytest.fixture
def node(lab: Lab) -> Iterator[str]:
    """The master the faults take; healed afterwards, with all members back."""
    yield lab.masters[0]
    lab.cli("heal")
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=120, what="the lab healed")


async def clients(cluster: ClusterSettings) -> tuple[KubeClient, Hosts]:
    hosts = hosts_for(cluster)
    assert hosts is not None
    await hosts.warm()
    return KubeClient(kubeconfig=cluster.kubeconfig), hosts


async def test_through_a_pod_and_over_ssh_the_same_members(lab: Lab, cluster: ClusterSettings) -> None:
    kube, hosts = await clients(cluster)
    try:
        async def all_started() -> bool:  # a fresh lab's last member may still be starting
            return len((await Etcd(kube=kube, hosts=None).survey()).health) == 3

        await _until(all_started, what="three started members")
        via_pod = await Etcd(kube=kube, hosts=None).survey()
        via_ssh = await Etcd(kube=None, hosts=hosts).survey()
    finally:
        await hosts.close()
        kube.close()
    assert via_pod.via.startswith("exec in etcd-") and via_ssh.via.startswith("SSH on ")
    for survey in (via_pod, via_ssh):
        assert sorted(m.name for m in survey.members.members) == sorted(lab.masters)
        assert [h.healthy for h in survey.health] == [True, True, True]
        assert len(survey.statuses.answered) == 3 and survey.statuses.failed == ()
        assert sum(1 for s in survey.statuses.answered if s.is_leader) == 1


@pytest.mark.parametrize("fault", ["kill-etcd", "slow-etcd"])
async def test_a_dead_or_frozen_member_is_marked_not_waited_on(lab: Lab, cluster: ClusterSettings, node: str,
                                                                fault: str) -> None:
    lab.cli("fault", fault, node)
    kube, hosts = await clients(cluster)
    try:
        for etcd in (Etcd(kube=kube, hosts=None, avoid_nodes={node}), Etcd(kube=None, hosts=hosts, avoid_nodes={node})):
            async def dead_marked(etcd: Etcd = etcd) -> bool:
                survey = await etcd.survey()
                return not next(h for h in survey.health if h.endpoint == _member_endpoint(survey, node)).healthy

            await _until(dead_marked, what=f"{node} marked unhealthy ({fault})")
            started = time.monotonic()
            survey = await etcd.survey()
            elapsed = time.monotonic() - started
            dead = next(h for h in survey.health if h.endpoint == _member_endpoint(survey, node))
            assert dead.healthy is False and dead.error, dead
            assert any(f.endpoint == dead.endpoint for f in survey.statuses.failed)
            assert len(survey.statuses.answered) == 2
            # etcdctl's own defaults would wait 5 s to dial and 5 s per command
            assert elapsed < LIMIT + 1.5, f"{etcd.via}: {elapsed:.1f} s"
    finally:
        await hosts.close()
        kube.close()


async def test_kept_ssh_connections_come_back_after_a_drop(lab: Lab, cluster: ClusterSettings, node: str) -> None:
    hosts = hosts_for(cluster)
    assert hosts is not None
    try:
        assert (await hosts.warm())[node] is None
        assert (await hosts.run(node=node, argv=["hostname"], timeout=10)).ok
        lab.cli("fault", "drop-ssh", node)
        after = await hosts.run(node=node, argv=["hostname"], timeout=10)
        if not after.ok:  # the drop was noticed mid-command: that one fails, the next reconnects
            after = await hosts.run(node=node, argv=["hostname"], timeout=10)
        assert after.ok, after
        assert (await hosts.warm())[node] is None
    finally:
        await hosts.close()


async def test_status_says_why_a_crashlooping_member_fails(lab: Lab, cluster: ClusterSettings, node: str) -> None:
    lab.cli("fault", "crashloop-etcd", node)
    wait_for(lambda: "CrashLoopBackOff" in lab.kubectl("get", "pods", "-n", "openshift-etcd", f"etcd-{node}").stdout,
             timeout=90, what="the etcd pod in CrashLoopBackOff")
    kube, hosts = await clients(cluster)
    try:
        facts = await gather_facts(cluster="lab", kube=kube, hosts=hosts)
        (why,) = [log for log in facts.logs if log.node == node]
        assert why.source == f"previous log of etcd-{node}, via the API"
        assert why.reason is not None and "failed to open database" in why.reason and "invalid database" in why.reason
        lab.cli("fault", "api-down")
        facts = await gather_facts(cluster="lab", kube=kube, hosts=hosts)
        assert not facts.api_available
        (why,) = [log for log in facts.logs if log.node == node]
        assert why.source.startswith("crictl logs ") and why.source.endswith(", via SSH")
        assert why.reason is not None and "failed to open database" in why.reason
    finally:
        await hosts.close()
        kube.close()


async def test_member_remove_only_behind_the_fence(lab: Lab, cluster: ClusterSettings) -> None:
    """Last in this module: the member stays removed."""
    node = lab.masters[0]
    lab.cli("fault", "kill-etcd", node)
    kube, hosts = await clients(cluster)
    try:
        etcd = Etcd(kube=kube, hosts=hosts, avoid_nodes={node})
        members = await etcd.member_list()
        assert node not in etcd.via
        (gone,) = [m for m in members.members if m.name == node]

        async def refuse() -> None:
            raise PermissionError("fencing token 7 is older than 8")

        with pytest.raises(PermissionError):
            await etcd.member_remove(gone.id, fence=refuse)
        assert len((await etcd.member_list()).members) == 3

        fenced: list[str] = []

        async def holds() -> None:
            fenced.append("checked")

        left = await etcd.member_remove(gone.id, fence=holds)
        assert fenced == ["checked"]
        assert sorted(m.name for m in left.members) == sorted(lab.masters[1:])
        assert sorted(m.name for m in (await etcd.member_list()).members) == sorted(lab.masters[1:])
    finally:
        await hosts.close()
        kube.close()


def _member_endpoint(survey, node: str) -> str:  # type: ignore[no-untyped-def]
    return next(m.endpoint or "" for m in survey.members.members if m.name == node)


async def _until(check, *, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """The lab takes a moment to show a fault; poll with a deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except Exception as exc:  # the cluster converges
            last = exc
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")
