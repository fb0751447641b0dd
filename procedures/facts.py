"""What the bot knows about a cluster at one moment, as frozen values.

`procedures/status.py` gathers these from the API, from etcdctl and from the hosts;
`procedures/diagnosis.py` decides from them alone, and `handlers/` renders them. Keeping the
facts plain data is what lets the decision table of PROCEDURES.md 2.3 be tested without a
server. The builders here turn API JSON (the shapes `oc get -o json` prints) into facts; they
are pure too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bot.cluster.etcdctl import EndpointHealth, EndpointStatus, MemberList
from bot.cluster.hosts import CrictlContainer

UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
CRASHLOOP_STATUSES = frozenset({"Error", "CrashLoopBackOff"})


class SourceState(StrEnum):
    OK = "ok"
    PARTIAL = "partial"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class SourceReport:
    """How one source of facts answered: shown under the status so a slow or dead one is visible."""

    name: str
    state: SourceState
    elapsed: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class MemberFacts:
    """One etcd member, joined from member list, endpoint status and endpoint health."""

    name: str
    id: str
    endpoint: str
    healthy: bool | None
    leader: bool | None = None
    db_size: int | None = None
    revision: int | None = None
    started: bool = True
    learner: bool = False
    error: str | None = None


@dataclass(frozen=True)
class PodFacts:
    """One etcd pod, with the STATUS column `oc get pods` prints (Running, Error, CrashLoopBackOff...)."""

    name: str
    node: str
    phase: str
    status: str
    container_state: str
    restarts: int
    ready: str = ""

    @property
    def crashlooping(self) -> bool:
        return self.status in CRASHLOOP_STATUSES or "CrashLoopBackOff" in self.container_state


@dataclass(frozen=True)
class NodeFacts:
    name: str
    ready: str  # "True" | "False" | "Unknown": the Ready condition's status
    unreachable: bool
    taints: tuple[str, ...] = ()

    @property
    def not_ready(self) -> bool:
        return self.unreachable or self.ready != "True"

    @property
    def status(self) -> str:
        return "Ready" if self.ready == "True" else "NotReady"


@dataclass(frozen=True)
class MachineFacts:
    name: str
    node: str | None
    phase: str
    instance_state: str | None

    @property
    def not_running(self) -> bool:
        """The document's test: `instanceState` is anything other than running."""
        return self.instance_state is not None and self.instance_state != "running"


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class HostFacts:
    """A master seen over SSH (the fallback when the API does not answer)."""

    node: str
    reachable: bool
    etcd_state: str | None = None  # crictl's STATE of the etcd container: Running, Exited, or None if absent
    etcd_attempt: int = 0
    error: str | None = None
    etcd_exited_id: str | None = None  # the latest exited etcd container (its log says why it stopped)


@dataclass(frozen=True)
class ContainerLog:
    """Why an etcd container fails, in etcd's own words: the last lines of its previous log.

    `reason` is the line that says why (etcd's last panic or fatal entry), `lines` the last
    meaningful lines (Go stack frames left out), both condensed from etcd's JSON; `error` says
    why the log could not be read instead."""

    node: str
    source: str  # "previous log of etcd-<node> (API)" / "crictl logs <id> on <node> (SSH)"
    reason: str | None = None
    lines: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class ClusterFacts:
    """Everything one `/etcd-status` gathered. Empty tuples with a failed source mean unknown, not none."""

    cluster: str
    api_available: bool
    version: str | None = None
    members: tuple[MemberFacts, ...] = ()
    members_known: bool = False
    pods: tuple[PodFacts, ...] = ()
    nodes: tuple[NodeFacts, ...] = ()
    machines: tuple[MachineFacts, ...] = ()
    conditions: tuple[Condition, ...] = ()
    hosts: tuple[HostFacts, ...] = ()
    sources: tuple[SourceReport, ...] = ()
    expected_back: frozenset[str] = field(default_factory=frozenset)
    etcdctl_via: str = ""
    logs: tuple[ContainerLog, ...] = ()

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    @property
    def members_available_message(self) -> str | None:
        condition = self.condition("EtcdMembersAvailable")
        return condition.message if condition else None


# ---- builders from API JSON -------------------------------------------------------------


def node_facts(node: Mapping[str, Any]) -> NodeFacts:
    conditions = node.get("status", {}).get("conditions") or []
    ready = next((str(c.get("status", "Unknown")) for c in conditions if c.get("type") == "Ready"), "Unknown")
    taints = tuple(str(t.get("key", "")) for t in node.get("spec", {}).get("taints") or [])
    return NodeFacts(name=node["metadata"]["name"], ready=ready, unreachable=UNREACHABLE_TAINT in taints,
                     taints=taints)


def _container_state(status: Mapping[str, Any]) -> tuple[str, str | None]:
    """('waiting: CrashLoopBackOff', 'CrashLoopBackOff') / ('running', None) / ('terminated: Error (exit 1)', 'Error')."""
    state = status.get("state") or {}
    if "running" in state:
        return "running", None
    if "waiting" in state:
        reason = (state["waiting"] or {}).get("reason") or "Waiting"
        return f"waiting: {reason}", reason
    if "terminated" in state:
        term = state["terminated"] or {}
        code = term.get("exitCode")
        reason = term.get("reason") or (f"ExitCode:{code}" if code is not None else "Terminated")
        return f"terminated: {reason}" + (f" (exit {code})" if code is not None else ""), reason
    return "unknown", None


def pod_facts(pod: Mapping[str, Any]) -> PodFacts:
    """Computes the STATUS column as kubectl does: a waiting or terminated container's reason wins over the phase."""
    metadata, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    name = str(metadata.get("name", ""))
    node = spec.get("nodeName") or (name[len("etcd-"):] if name.startswith("etcd-") else "")
    phase = str(status.get("phase") or "Unknown")
    shown = str(status.get("reason") or phase)
    statuses = list(status.get("containerStatuses") or [])
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses)
    ready = f"{sum(1 for s in statuses if s.get('ready'))}/{len(spec.get('containers') or statuses)}"
    for container in reversed(statuses):
        _, reason = _container_state(container)
        if reason:
            shown = reason
    etcd = next((s for s in statuses if s.get("name") == "etcd"), statuses[0] if statuses else None)
    described = _container_state(etcd)[0] if etcd else "no container status"
    return PodFacts(name=name, node=node, phase=phase, status=shown, container_state=described,
                    restarts=restarts, ready=ready)


def machine_facts(machine: Mapping[str, Any]) -> MachineFacts:
    status = machine.get("status") or {}
    provider = status.get("providerStatus") or {}
    node_ref = status.get("nodeRef") or {}
    return MachineFacts(
        name=str(machine.get("metadata", {}).get("name", "")),
        node=node_ref.get("name"),
        phase=str(status.get("phase") or "Unknown"),
        instance_state=provider.get("instanceState"),
    )


def is_master_machine(machine: Mapping[str, Any]) -> bool:
    labels = machine.get("metadata", {}).get("labels") or {}
    role = labels.get("machine.openshift.io/cluster-api-machine-role")
    if role is not None:
        return role == "master"
    return "-master-" in str(machine.get("metadata", {}).get("name", ""))


def conditions(obj: Mapping[str, Any], *, types: Iterable[str] | None = None) -> tuple[Condition, ...]:
    wanted = set(types) if types is not None else None
    result = []
    for c in obj.get("status", {}).get("conditions") or []:
        if wanted is None or c.get("type") in wanted:
            result.append(Condition(type=str(c.get("type", "")), status=str(c.get("status", "Unknown")),
                                    reason=str(c.get("reason") or ""), message=str(c.get("message") or "")))
    return tuple(result)


def cluster_version(obj: Mapping[str, Any]) -> str | None:
    status = obj.get("status") or {}
    desired = (status.get("desired") or {}).get("version")
    if desired:
        return str(desired)
    history = status.get("history") or []
    return str(history[0].get("version")) if history else None


def members_from_etcdctl(*, members: MemberList, statuses: Sequence[EndpointStatus] | None,
                         health: Sequence[EndpointHealth] | None) -> tuple[MemberFacts, ...]:
    """Joins the three etcdctl answers; a member missing from status/health output did not answer."""
    by_endpoint = {s.endpoint: s for s in statuses or ()}
    by_id = {s.member_id: s for s in statuses or ()}
    health_by_endpoint = {h.endpoint: h for h in health or ()}
    result = []
    for member in members.members:
        endpoint = member.endpoint or ""
        status = by_id.get(member.id) or by_endpoint.get(endpoint)
        check = health_by_endpoint.get(endpoint)
        if check is not None:
            healthy: bool | None = check.healthy
        elif health is not None:
            healthy = False if member.started else None
        elif statuses is not None:
            healthy = status is not None
        else:
            healthy = None
        error = check.error if check is not None and check.error else None
        if not member.started:
            error = error or "member has not started"
        result.append(MemberFacts(
            name=member.name or "(not started)", id=member.id, endpoint=endpoint, healthy=healthy,
            leader=status.is_leader if status else None, db_size=status.db_size if status else None,
            revision=status.revision if status else None, started=member.started, learner=member.is_learner,
            error=error,
        ))
    return tuple(result)


def host_facts(*, node: str, containers: Sequence[CrictlContainer]) -> HostFacts:
    """The etcd container's latest state on a host from `crictl ps -a` (not etcd-operator, not etcdctl)."""
    etcd = [c for c in containers if c.name == "etcd"]
    latest = max(etcd, key=lambda c: c.attempt) if etcd else None
    running = next((c for c in etcd if c.state.lower().endswith("running")), None)
    chosen = running or latest
    state = chosen.state.removeprefix("CONTAINER_").title() if chosen else None
    exited = [c for c in etcd if c.state.removeprefix("CONTAINER_").lower() == "exited"]
    last_exited = max(exited, key=lambda c: c.attempt).id if exited else None
    return HostFacts(node=node, reachable=True, etcd_state=state, etcd_attempt=chosen.attempt if chosen else 0,
                     etcd_exited_id=last_exited)


_AVAILABLE_RE = re.compile(r"(?:(\d+) of )?(\d+) members are available")


@dataclass(frozen=True)
class MembersAvailable:
    """The EtcdMembersAvailable message, read: '2 of 3 members are available, X is unhealthy'."""

    available: int
    total: int
    unhealthy: tuple[str, ...]
    not_started: tuple[str, ...]


def parse_members_available(message: str) -> MembersAvailable | None:
    match = _AVAILABLE_RE.search(message)
    if not match:
        return None
    total = int(match.group(2))
    available = int(match.group(1)) if match.group(1) else total
    unhealthy = tuple(re.findall(r"([a-z0-9][-a-z0-9.]*) is unhealthy", message))
    not_started = tuple(re.findall(r"([a-z0-9][-a-z0-9.]*) has not started", message))
    return MembersAvailable(available=available, total=total, unhealthy=unhealthy, not_started=not_started)


# ---- etcd's log, condensed ---------------------------------------------------------------

_GO_FRAME = re.compile(r"^(goroutine \d+ |created by |[\w./*()\[\]-]+\(.*\)$)")
_SEVERE = ("panic", "dpanic", "fatal")
_SKIPPED_FIELDS = frozenset({"level", "ts", "caller", "msg", "stacktrace"})


def _condense(line: str) -> tuple[str, str]:
    """(level, text) of one log line: etcd's zap JSON as `level msg (key=value, ...)`."""
    text = line.strip()
    if text.startswith("{"):
        try:
            entry = json.loads(text)
        except ValueError:
            return "", text[:200]
        if isinstance(entry, dict):
            level = str(entry.get("level", ""))
            fields = ", ".join(f"{k}={str(v)[:80]}" for k, v in entry.items() if k not in _SKIPPED_FIELDS)
            return level, (f"{level} {entry.get('msg', '')}" + (f" ({fields})" if fields else ""))[:200]
    if text.startswith("panic:"):
        return "panic", text[:200]
    return "", text[:200]


def log_excerpt(text: str, *, keep: int = 6) -> tuple[str | None, tuple[str, ...]]:
    """(the line that says why, the last `keep` meaningful lines) of an etcd container's log.
    Pure: unit-tested on etcd's own output."""
    condensed = []
    for raw in text.splitlines():
        if not raw.strip() or raw[:1].isspace() or _GO_FRAME.match(raw.strip()):
            continue
        condensed.append(_condense(raw))
    severe = [t for level, t in condensed if level in _SEVERE and not t.startswith("panic:")]
    severe = severe or [t for level, t in condensed if level in _SEVERE]
    errors = [t for level, t in condensed if level == "error"]
    reason = (severe or errors or [None])[-1]
    return reason, tuple(t for _, t in condensed[-keep:])
