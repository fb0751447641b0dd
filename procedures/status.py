"""Ch.2.2/2.3 read-only: gather every fact the document looks at, from every source at once.

Sources run concurrently, each under its own timeout: the API objects (etcd/cluster conditions,
clusterversion, master nodes, etcd pods, machines), etcdctl run in a Running etcd pod's `etcdctl`
container (member list, endpoint status, endpoint health), and, when the API does not answer or
no pod can run etcdctl, the masters over SSH (`crictl ps -a`, and etcdctl with the host's own
certificates read from the etcd static pod manifest). A slow or dead source becomes a
`SourceReport` (timeout / failed) beside whatever else was learned; nothing waits forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from bot.cluster import etcdctl
from bot.cluster.hosts import (
    CommandResult,
    Hosts,
    crictl_ps_command,
    etcdctl_env_from_manifest,
    host_etcdctl_command,
    parse_crictl_ps,
    read_manifest_command,
)
from bot.cluster.kube import KubeClient
from procedures.facts import (
    ClusterFacts,
    Condition,
    HostFacts,
    MemberFacts,
    PodFacts,
    SourceReport,
    SourceState,
    cluster_version,
    conditions,
    host_facts,
    is_master_machine,
    machine_facts,
    members_from_etcdctl,
    node_facts,
    pod_facts,
)

T = TypeVar("T")

# The conditions of etcd/cluster the document reads (2.2, 5.3 step 7) and the operator's health.
ETCD_CONDITIONS = ("EtcdMembersAvailable", "NodeInstallerProgressing", "Degraded")


@dataclass(frozen=True)
class Timeouts:
    """Seconds each source may take; the sum is not the wait, since sources run side by side."""

    api: float = 8.0
    etcdctl: float = 15.0
    ssh: float = 15.0


DEFAULT_TIMEOUTS = Timeouts()


async def _timed(name: str, timeout: float, make: Callable[[], Awaitable[T]]) -> tuple[T | None, SourceReport]:
    """Runs one source; its failure or timeout is a report, never an exception."""
    started = time.monotonic()
    try:
        value = await asyncio.wait_for(make(), timeout=timeout)
    except TimeoutError:
        return None, SourceReport(name, SourceState.TIMEOUT, time.monotonic() - started,
                                  f"no answer within {timeout:.0f}s")
    except Exception as exc:  # a source's failure is a fact about the cluster, reported not raised
        return None, SourceReport(name, SourceState.FAILED, time.monotonic() - started, str(exc)[:300])
    return value, SourceReport(name, SourceState.OK, time.monotonic() - started)


@dataclass(frozen=True)
class _ApiFacts:
    version: str | None
    conditions: tuple[Condition, ...]
    nodes: tuple[Any, ...]
    pods: tuple[PodFacts, ...]
    machines: tuple[Any, ...]
    failures: tuple[str, ...] = ()


async def _api_facts(kube: KubeClient) -> _ApiFacts:
    """All objects at once; one missing kind (say, no Machine API) leaves the others usable."""
    names = ("etcd/cluster", "clusterversion/version", "nodes", "etcd pods", "machines")
    results = await asyncio.gather(
        kube.get_etcd(), kube.get_cluster_version(), kube.list_master_nodes(), kube.list_etcd_pods(),
        kube.list_machines(), return_exceptions=True,
    )
    failures = tuple(f"{n}: {r}" for n, r in zip(names, results, strict=True) if isinstance(r, BaseException))
    if len(failures) == len(names):
        reasons = {str(r) for r in results}
        raise RuntimeError(reasons.pop() if len(reasons) == 1 else "; ".join(failures))
    etcd, version, nodes, pods, machines = (None if isinstance(r, BaseException) else r for r in results)
    return _ApiFacts(
        version=cluster_version(version) if version else None,
        conditions=conditions(etcd, types=ETCD_CONDITIONS) if etcd else (),
        nodes=tuple(node_facts(n) for n in nodes or ()),
        pods=tuple(sorted((pod_facts(p) for p in pods or ()), key=lambda p: p.node)),
        machines=tuple(machine_facts(m) for m in machines or () if is_master_machine(m)),
        failures=failures,
    )


def _exec_candidates(pods: Sequence[PodFacts], *, not_ready: set[str]) -> list[PodFacts]:
    """Running, not crashlooping etcd pods, those on Ready nodes first: where etcdctl can answer."""
    usable = [p for p in pods if p.phase == "Running" and not p.crashlooping]
    return sorted(usable, key=lambda p: (p.node in not_ready, p.container_state != "running", p.node))


async def _members(run: Callable[[list[str]], Awaitable[tuple[int | None, str, str]]]) -> tuple[MemberFacts, ...]:
    """member list must succeed; status and health may be partial (etcdctl exits 1 with a member down)."""
    (rc, out, err), status, health = await asyncio.gather(
        run(etcdctl.member_list_command()), run(etcdctl.endpoint_status_command()),
        run(etcdctl.endpoint_health_command()),
    )
    if rc != 0:
        raise RuntimeError(f"etcdctl member list failed (rc={rc}): {err.strip()[-200:] or out.strip()[:200]}")
    members = etcdctl.parse_member_list(out)
    statuses = _partial(etcdctl.parse_endpoint_status, status)
    checks = _partial(etcdctl.parse_endpoint_health, health)
    return members_from_etcdctl(members=members, statuses=statuses, health=checks)


def _partial(parse: Callable[[str], T], result: tuple[int | None, str, str]) -> T | None:
    rc, out, _ = result
    if rc is None or not out.strip():
        return None
    try:
        return parse(out)
    except etcdctl.EtcdctlParseError:
        return None


async def _members_via_exec(kube: KubeClient, candidates: Sequence[PodFacts], *,
                            timeout: float) -> tuple[tuple[MemberFacts, ...], str]:
    errors = []
    for pod in candidates:
        async def run(argv: list[str], pod: PodFacts = pod) -> tuple[int | None, str, str]:
            result = await kube.exec(pod=pod.name, container="etcdctl", argv=argv, timeout=timeout)
            return result.returncode, result.stdout, result.stderr

        try:
            return await _members(run), f"exec in {pod.name}"
        except Exception as exc:  # try the next pod: this one's etcdctl may be the broken part
            errors.append(f"{pod.name}: {exc}")
    raise RuntimeError("; ".join(errors) or "no Running etcd pod to run etcdctl in")


async def _host_containers(hosts: Hosts, *, timeout: float) -> tuple[HostFacts, ...]:
    async def one(node: str) -> HostFacts:
        result = await hosts.run(node=node, argv=crictl_ps_command(), timeout=timeout)
        if result.rc is None:
            return HostFacts(node=node, reachable=False, error=result.error)
        if result.rc != 0:
            return HostFacts(node=node, reachable=True, error=f"crictl ps failed: {result.stderr.strip()[:200]}")
        try:
            return host_facts(node=node, containers=parse_crictl_ps(result.stdout))
        except ValueError as exc:
            return HostFacts(node=node, reachable=True, error=str(exc))

    return tuple(await asyncio.gather(*(one(n) for n in hosts.nodes)))


async def _members_via_ssh(hosts: Hosts, nodes: Sequence[str], *,
                           timeout: float) -> tuple[tuple[MemberFacts, ...], str]:
    errors = []
    for node in nodes:
        manifest = await hosts.run(node=node, argv=read_manifest_command(), timeout=timeout)
        if not manifest.ok:
            errors.append(f"{node}: {manifest.error or manifest.stderr.strip()[:200] or 'no etcd-pod.yaml'}")
            continue
        try:
            env = etcdctl_env_from_manifest(manifest.stdout)
        except ValueError as exc:
            errors.append(f"{node}: {exc}")
            continue

        async def run(argv: list[str], node: str = node, env: dict[str, str] = env) -> tuple[int | None, str, str]:
            result: CommandResult = await hosts.run(
                node=node, argv=host_etcdctl_command(env=env, etcdctl_argv=argv), timeout=timeout)
            return result.rc, result.stdout, result.stderr or (result.error or "")

        try:
            return await _members(run), f"SSH on {node}"
        except Exception as exc:  # another master may still have a working etcdctl
            errors.append(f"{node}: {exc}")
    raise RuntimeError("; ".join(errors) or "no master reachable over SSH")


async def gather_facts(*, cluster: str, kube: KubeClient | None, hosts: Hosts | None,
                       timeouts: Timeouts = DEFAULT_TIMEOUTS, expected_back: frozenset[str] = frozenset()) -> ClusterFacts:
    """Everything `/etcd-status` shows, from every source that answers in time."""
    reports: list[SourceReport] = []
    api: _ApiFacts | None = None
    if kube is not None:
        api, report = await _timed("API", timeouts.api, lambda: _api_facts(kube))
        if api is not None and api.failures:
            report = replace(report, state=SourceState.PARTIAL, detail="; ".join(api.failures)[:300])
        reports.append(report)
    else:
        reports.append(SourceReport("API", SourceState.SKIPPED, detail="no kubeconfig"))

    members: tuple[MemberFacts, ...] = ()
    via = ""
    if api is not None:
        not_ready = {n.name for n in api.nodes if n.not_ready}
        candidates = _exec_candidates(api.pods, not_ready=not_ready)
        found, report = await _timed("etcdctl", timeouts.etcdctl,
                                     lambda: _members_via_exec(kube, candidates, timeout=timeouts.etcdctl - 1))
        reports.append(replace(report, name=f"etcdctl ({found[1]})" if found else "etcdctl (exec)"))
        if found:
            members, via = found

    host_list: tuple[HostFacts, ...] = ()
    need_hosts = api is None or not members
    if hosts is not None and hosts.nodes and need_hosts:
        host_list, report = await _timed("SSH crictl", timeouts.ssh,
                                         lambda: _host_containers(hosts, timeout=timeouts.ssh - 1))
        reports.append(report)
        host_list = host_list or tuple(HostFacts(node=n, reachable=False, error=report.detail) for n in hosts.nodes)
        if not members:
            running = [h.node for h in host_list if h.reachable and h.etcd_state == "Running"]
            order = running + [h.node for h in host_list if h.reachable and h.node not in running]
            found, report = await _timed("etcdctl (SSH)", timeouts.ssh,
                                         lambda: _members_via_ssh(hosts, order, timeout=timeouts.ssh - 1))
            reports.append(replace(report, name=f"etcdctl ({found[1]})" if found else "etcdctl (SSH)"))
            if found:
                members, via = found
    elif need_hosts:
        reports.append(SourceReport("SSH", SourceState.SKIPPED, detail="no SSH hosts configured"))

    return ClusterFacts(
        cluster=cluster,
        api_available=api is not None,
        version=api.version if api else None,
        members=members,
        members_known=bool(members),
        pods=api.pods if api else (),
        nodes=api.nodes if api else (),
        machines=api.machines if api else (),
        conditions=api.conditions if api else (),
        hosts=host_list,
        sources=tuple(reports),
        expected_back=expected_back,
        etcdctl_via=via,
    )
