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
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from bot.cluster.etcd import DEFAULT_ETCD_TIMEOUTS, Etcd, EtcdSurvey, EtcdTimeouts, pod_endpoints
from bot.cluster.hosts import Hosts, crictl_ps_command, parse_crictl_ps
from bot.cluster.kube import KubeClient, KubeError
from procedures.facts import (
    ClusterFacts,
    Condition,
    ContainerLog,
    HostFacts,
    MemberFacts,
    PodFacts,
    SourceReport,
    SourceState,
    cluster_version,
    conditions,
    host_facts,
    is_master_machine,
    log_excerpt,
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
    """Seconds each source may take; the sum is not the wait, since sources run side by side.

    `hedge`: when the API has not answered by then, the masters are asked over SSH at once,
    beside it (an API that loses its etcd answers 504 only after its own timeout, and a status
    that waited for that before going to SSH would miss its 2 s). What SSH found is shown only
    when it is needed (no API, or no etcdctl through it), so the diagnosis does not depend on
    which source was faster. `ssh_command`: one command on one master (a warm connection makes
    that tens of milliseconds; a dead master is marked at this limit).
    """

    api: float = 3.0
    etcdctl: float = 8.0
    ssh: float = 8.0
    ssh_command: float = 2.0
    hedge: float = 0.3
    logs: float = 1.5  # the previous log of a failed etcd container, read beside etcdctl
    etcd: EtcdTimeouts = DEFAULT_ETCD_TIMEOUTS


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
    endpoints: tuple[str, ...] = ()  # ETCDCTL_ENDPOINTS of the etcd pods: asked while member list runs


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
        endpoints=next((found for found in map(pod_endpoints, pods or ()) if found), ()),
    )


def _exec_candidates(pods: Sequence[PodFacts], *, not_ready: set[str]) -> list[PodFacts]:
    """Running, not crashlooping etcd pods, those on Ready nodes first: where etcdctl can answer."""
    usable = [p for p in pods if p.phase == "Running" and not p.crashlooping]
    return sorted(usable, key=lambda p: (p.node in not_ready, p.container_state != "running", p.node))


def _member_facts(survey: EtcdSurvey) -> tuple[MemberFacts, ...]:
    """member list must have answered; a member without status or health did not answer in time."""
    statuses = survey.statuses
    errors = {f.endpoint: f.error for f in statuses.failed}
    facts = members_from_etcdctl(members=survey.members, statuses=statuses.answered, health=survey.health)
    return tuple(replace(m, error=m.error or errors.get(m.endpoint)) if m.endpoint in errors else m for m in facts)


async def _members_via(etcd: Etcd) -> tuple[tuple[MemberFacts, ...], str]:
    survey = await etcd.survey()
    return _member_facts(survey), survey.via


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


# ---- why a member fails: its etcd container's previous log --------------------------------

LOG_TAIL = 60  # lines read; the excerpt keeps the last meaningful ones
CONTAINER_ID_RE = re.compile(r"[0-9a-f]{6,64}")


def _failed_pods(pods: Sequence[PodFacts]) -> list[PodFacts]:
    """Pods whose etcd container crashed or exited: waiting to restart, terminated, or restarted
    (a crashlooping container is running for a moment between crashes). Logs of members that
    turn out healthy are dropped afterwards (`_of_failing`)."""
    return [p for p in pods if p.crashlooping or p.restarts > 0
            or p.container_state.startswith(("waiting", "terminated"))]


def _of_failing(logs: tuple[ContainerLog, ...], members: Sequence[MemberFacts]) -> tuple[ContainerLog, ...]:
    """The logs of members that are not healthy (all of them when etcdctl did not answer)."""
    healthy = {m.name for m in members if m.healthy}
    return tuple(found for found in logs if found.node not in healthy)


def _excerpt(node: str, source: str, text: str) -> ContainerLog:
    reason, lines = log_excerpt(text)
    if not lines:
        return ContainerLog(node=node, source=source, error="the log is empty")
    return ContainerLog(node=node, source=source, reason=reason, lines=lines)


async def _api_logs(kube: KubeClient, pods: Sequence[PodFacts], *, timeout: float) -> tuple[ContainerLog, ...]:
    """`oc logs --previous etcd-<node> -c etcd` of each failed pod (the instance that crashed);
    a container that has no previous instance yet gives its current log."""
    async def one(pod: PodFacts) -> ContainerLog:
        source = f"previous log of {pod.name}, via the API"
        try:
            async with asyncio.timeout(timeout):
                try:
                    text = await kube.pod_log(pod=pod.name, container="etcd", previous=True, tail_lines=LOG_TAIL)
                except KubeError as exc:
                    if exc.status != 400:
                        raise
                    source = f"log of {pod.name} (no previous instance), via the API"
                    text = await kube.pod_log(pod=pod.name, container="etcd", tail_lines=LOG_TAIL)
        except TimeoutError:
            return ContainerLog(node=pod.node, source=source, error=f"no answer within {timeout:.1f}s")
        except KubeError as exc:
            return ContainerLog(node=pod.node, source=source, error=str(exc)[:200])
        return _excerpt(pod.node, source, text)

    return tuple(await asyncio.gather(*(one(p) for p in _failed_pods(pods))))


async def _host_logs(hosts: Hosts, seen: Sequence[HostFacts], *, timeout: float) -> tuple[ContainerLog, ...]:
    """`crictl logs --tail N <id>` of the latest exited etcd container on masters whose etcd is not running."""
    async def one(host: HostFacts, container: str) -> ContainerLog:
        source = f"crictl logs {container[:13]}, via SSH"
        result = await hosts.run(node=host.node, argv=["sudo", "crictl", "logs", "--tail", str(LOG_TAIL), container],
                                 timeout=timeout)
        if result.rc not in (None, 0) and "not found" in result.stderr.lower():
            # removed since `crictl ps` (a crashlooping container is replaced at each restart): once more
            again = await hosts.run(node=host.node, argv=crictl_ps_command(), timeout=timeout)
            try:
                newer = host_facts(node=host.node, containers=parse_crictl_ps(again.stdout)).etcd_exited_id
            except ValueError:  # not crictl's table: keep the first answer
                newer = None
            if newer and newer != container and CONTAINER_ID_RE.fullmatch(newer):
                source = f"crictl logs {newer[:13]}, via SSH"
                result = await hosts.run(node=host.node,
                                         argv=["sudo", "crictl", "logs", "--tail", str(LOG_TAIL), newer], timeout=timeout)
        if result.rc is None or result.rc != 0:
            return ContainerLog(node=host.node, source=source,
                                error=(result.error or result.stderr.strip()[-200:] or f"exit {result.rc}"))
        return _excerpt(host.node, source, result.stdout + result.stderr)  # etcd writes to stderr

    failed = [(h, h.etcd_exited_id) for h in seen
              if h.reachable and (h.etcd_state != "Running" or h.etcd_attempt > 0) and h.etcd_exited_id
              and CONTAINER_ID_RE.fullmatch(h.etcd_exited_id)]
    return tuple(await asyncio.gather(*(one(h, cid) for h, cid in failed if cid)))


@dataclass(frozen=True)
class _HostPath:
    hosts: tuple[HostFacts, ...]
    reports: tuple[SourceReport, ...]
    members: tuple[MemberFacts, ...] = ()
    via: str = ""
    logs: tuple[ContainerLog, ...] = ()


async def _host_path(hosts: Hosts, timeouts: Timeouts) -> _HostPath:
    """`crictl ps -a` on every master and, side by side, etcdctl on the first master that runs it
    (its manifest's ETCDCTL_ENDPOINTS name every member, so any master with a working etcdctl
    tells about all of them): 2.2 without the API."""
    etcd = Etcd(kube=None, hosts=hosts, timeouts=replace(timeouts.etcd, manifest=timeouts.ssh_command))

    async def containers_then_logs() -> tuple[tuple[HostFacts, ...] | None, SourceReport, tuple[ContainerLog, ...]]:
        seen, report = await _timed("SSH crictl", timeouts.ssh,
                                    lambda: _host_containers(hosts, timeout=timeout_ssh))
        logs = await _host_logs(hosts, seen or (), timeout=timeout_ssh) if seen else ()
        return seen, report, logs

    timeout_ssh = timeouts.ssh_command
    (host_list, crictl, logs), (found, report) = await asyncio.gather(
        containers_then_logs(), _timed("etcdctl (SSH)", timeouts.ssh, lambda: _members_via(etcd)))
    host_list = host_list or tuple(HostFacts(node=n, reachable=False, error=crictl.detail) for n in hosts.nodes)
    etcdctl_report = replace(report, name=f"etcdctl ({found[1]})" if found else "etcdctl (SSH)")
    members, via = found if found else ((), "")
    return _HostPath(hosts=host_list, reports=(crictl, etcdctl_report), members=members, via=via, logs=logs)


async def gather_facts(*, cluster: str, kube: KubeClient | None, hosts: Hosts | None,
                       timeouts: Timeouts = DEFAULT_TIMEOUTS, expected_back: frozenset[str] = frozenset()) -> ClusterFacts:
    """Everything `/etcd-status` shows, from every source that answers in time."""
    reports: list[SourceReport] = []
    has_hosts = hosts is not None and bool(hosts.nodes)
    host_path: asyncio.Future[_HostPath] | None = None

    def start_host_path() -> asyncio.Future[_HostPath]:
        assert hosts is not None
        return asyncio.ensure_future(_host_path(hosts, timeouts))

    api: _ApiFacts | None = None
    if kube is not None:
        api_call = asyncio.ensure_future(_timed("API", timeouts.api, lambda: _api_facts(kube)))
        if has_hosts:
            done, _ = await asyncio.wait({api_call}, timeout=timeouts.hedge)
            if not done:
                host_path = start_host_path()
        api, report = await api_call
        if api is not None and api.failures:
            report = replace(report, state=SourceState.PARTIAL, detail="; ".join(api.failures)[:300])
        reports.append(report)
    else:
        reports.append(SourceReport("API", SourceState.SKIPPED, detail="no kubeconfig"))

    members: tuple[MemberFacts, ...] = ()
    via = ""
    logs: tuple[ContainerLog, ...] = ()
    if api is not None:
        assert kube is not None
        not_ready = {n.name for n in api.nodes if n.not_ready}
        pods = [(p.name, p.node) for p in _exec_candidates(api.pods, not_ready=not_ready)]
        etcd = Etcd(kube=kube, hosts=None, pods=pods, endpoints_hint=api.endpoints, timeouts=timeouts.etcd)
        (found, report), logs = await asyncio.gather(
            _timed("etcdctl", timeouts.etcdctl, lambda: _members_via(etcd)),
            _api_logs(kube, api.pods, timeout=timeouts.logs))
        reports.append(replace(report, name=f"etcdctl ({found[1]})" if found else "etcdctl (exec)"))
        if found:
            members, via = found

    host_list: tuple[HostFacts, ...] = ()
    need_hosts = api is None or not members
    if has_hosts and need_hosts:
        seen = await (host_path or start_host_path())
        host_list = seen.hosts
        reports.extend(seen.reports)
        if not members and seen.members:
            members, via = seen.members, seen.via
        logs = logs or seen.logs
    elif need_hosts:
        reports.append(SourceReport("SSH", SourceState.SKIPPED, detail="no SSH hosts configured"))
    elif host_path is not None:
        # Not needed after all: let it finish in the background (each command is bounded), its
        # commands' channels close cleanly instead of being cut mid-way on the shared connections.
        _background.add(host_path)
        host_path.add_done_callback(_background.discard)

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
        logs=_of_failing(logs, members),
    )


_background: set[asyncio.Future[_HostPath]] = set()
