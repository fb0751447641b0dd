"""Ch.2.3 of the document as a pure function: which state is the unhealthy member in, and what next.

The document's order is the decision's order: first a machine that is not running, then a node
that is not ready (unreachable taint, or NotReady), and only when the masters are Ready an etcd
pod in Error or CrashLoopBackOff. Before any of them, quorum: with a majority of members lost,
replacing a member is the wrong procedure and the answer is a restore (Ch.5.3). A machine that is
stopped but expected back needs no replacement: the etcd operator resyncs when it returns.

`diagnose` reads only `ClusterFacts`, never a server, so every row of the table is a unit test.
The text it returns is what a person reads in the incident channel: what is wrong, which
procedure, and the one command to type next.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from procedures.facts import ClusterFacts, parse_members_available

EXPECTED_BACK_INSTANCE_STATES = frozenset({"pending"})

PROC_REPLACE_NOT_RUNNING = (
    "2.4 Replacing an unhealthy etcd member whose machine is not running or whose node is not ready"
)
PROC_REPLACE_CRASHLOOP = "2.4 Replacing an unhealthy etcd member whose etcd pod is crashlooping"
PROC_RESTORE = "5.3 Restoring to a previous cluster state"
PROC_IDENTIFY = "2.2 Identifying an unhealthy etcd member"
PROC_WAIT = "2.3 (machine or node expected back: the etcd operator resyncs)"


class State(StrEnum):
    HEALTHY = "healthy"
    MACHINE_NOT_RUNNING = "machine-not-running"
    NODE_NOT_READY = "node-not-ready"
    POD_CRASHLOOPING = "pod-crashlooping"
    EXPECTED_BACK = "expected-back"
    QUORUM_LOST = "quorum-lost"
    SEVERAL_UNHEALTHY = "several-unhealthy"
    MEMBER_UNHEALTHY = "member-unhealthy"
    EXTRA_MEMBERS = "extra-members"
    ROLLOUT = "rollout-in-progress"
    ATTENTION = "attention"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Diagnosis:
    """The decision: state, a sentence for people, the command to type next (or None), the procedure."""

    state: State
    summary: str
    next_command: str | None
    procedure: str
    nodes: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True)
class _NodeSignals:
    """What the facts say about one master, in the document's words."""

    node: str
    machine: str | None = None  # "stopped" etc. when the machine is not running
    machine_expected_back: bool = False
    not_ready: str | None = None  # "has the unreachable taint" / "is NotReady" / "does not answer SSH"
    crashloop: str | None = None  # "Error" / "CrashLoopBackOff" / "Exited (attempt 4)"
    member_unhealthy: bool = False

    @property
    def any_23_state(self) -> bool:
        return bool(self.machine or self.not_ready or self.crashloop)


def _signals(facts: ClusterFacts) -> dict[str, _NodeSignals]:
    nodes: set[str] = {n.name for n in facts.nodes} | {p.node for p in facts.pods if p.node}
    nodes |= {h.node for h in facts.hosts} | {m.node for m in facts.machines if m.node}
    nodes |= {m.name for m in facts.members if m.started}
    result = {}
    for node in sorted(nodes):
        machine = next((m for m in facts.machines if m.node == node and m.not_running), None)
        node_obj = next((n for n in facts.nodes if n.name == node), None)
        not_ready = None
        if node_obj is not None and node_obj.unreachable:
            not_ready = "has the node.kubernetes.io/unreachable taint"
        elif node_obj is not None and node_obj.not_ready:
            not_ready = f"is NotReady (Ready={node_obj.ready})"
        host = next((h for h in facts.hosts if h.node == node), None)
        if not_ready is None and node_obj is None and host is not None and not host.reachable:
            not_ready = "does not answer SSH"
        crashloop = None
        pod = next((p for p in facts.pods if p.node == node), None)
        if pod is not None and pod.crashlooping:
            crashloop = pod.status if pod.status in ("Error", "CrashLoopBackOff") else "CrashLoopBackOff"
        elif pod is None and host is not None and host.reachable and host.etcd_state not in (None, "Running"):
            crashloop = f"{host.etcd_state} (attempt {host.etcd_attempt})"
        member = next((m for m in facts.members if m.name == node), None)
        unhealthy = member is not None and member.healthy is False
        result[node] = _NodeSignals(
            node=node,
            machine=machine.instance_state if machine else None,
            machine_expected_back=bool(machine) and (
                node in facts.expected_back or machine.instance_state in EXPECTED_BACK_INSTANCE_STATES),
            not_ready=not_ready,
            crashloop=crashloop,
            member_unhealthy=unhealthy,
        )
    return result


def _quorum(facts: ClusterFacts, *, affected: list[str], signals: dict[str, _NodeSignals]) -> tuple[int, int] | None:
    """(healthy, total) members, from the best source there is; None when nothing tells."""
    if facts.members_known and facts.members:
        return sum(1 for m in facts.members if m.healthy is True), len(facts.members)
    message = facts.members_available_message
    parsed = parse_members_available(message) if message else None
    if parsed is not None and facts.api_available:
        return parsed.available, parsed.total
    if facts.hosts and any(h.reachable for h in facts.hosts):
        return sum(1 for h in facts.hosts if h.reachable and h.etcd_state == "Running"), len(facts.hosts)
    if signals and facts.api_available:
        return len(signals) - len(affected), len(signals)
    return None


def _describe(s: _NodeSignals) -> str:
    if s.machine:
        return f"machine of {s.node} is {s.machine}"
    if s.not_ready:
        return f"{s.node} {s.not_ready}"
    if s.crashloop:
        return f"etcd pod on {s.node} is {s.crashloop}"
    return f"etcd member {s.node} is unhealthy"


def _one(facts: ClusterFacts, s: _NodeSignals, *, prefix: str) -> Diagnosis:
    """The 2.3 decision for one affected master, in the document's order."""
    node = s.node
    backup = "after a backup (`/etcd-backup`)"
    if (s.machine or s.not_ready) and (s.machine_expected_back or node in facts.expected_back):
        what = f"machine of {node} is {s.machine}" if s.machine else f"{node} {s.not_ready}"
        return Diagnosis(
            State.EXPECTED_BACK,
            f"{prefix}{what}, and it is expected back: no replacement is needed, the etcd operator resyncs "
            f"the member when it returns. Run `/etcd-status` again once it is up.",
            "/etcd-status", PROC_WAIT, (node,))
    if s.machine:
        return Diagnosis(
            State.MACHINE_NOT_RUNNING,
            f"{prefix}machine of {node} is {s.machine}: replace the member (machine not running). "
            f"Run `/etcd-replace-member {node}` {backup}. If you expect the machine back soon, no "
            "replacement is needed.",
            f"/etcd-replace-member {node}", PROC_REPLACE_NOT_RUNNING, (node,))
    if s.not_ready:
        return Diagnosis(
            State.NODE_NOT_READY,
            f"{prefix}{node} {s.not_ready}: replace the member (node not ready). "
            f"Run `/etcd-replace-member {node}` {backup}. If you expect the node back soon, no "
            "replacement is needed.",
            f"/etcd-replace-member {node}", PROC_REPLACE_NOT_RUNNING, (node,))
    if s.crashloop:
        return Diagnosis(
            State.POD_CRASHLOOPING,
            f"{prefix}etcd pod on {node} is {s.crashloop}: replace the member (pod crashlooping). "
            f"Run `/etcd-replace-member {node}` {backup}.",
            f"/etcd-replace-member {node}", PROC_REPLACE_CRASHLOOP, (node,))
    return Diagnosis(
        State.MEMBER_UNHEALTHY,
        f"{prefix}etcd member {node} is unhealthy, but its machine runs, its node is Ready and its pod is not "
        "crashlooping: none of the states of 2.3 applies yet. Check again in a few minutes with `/etcd-status`; "
        "if it stays unhealthy, read the etcd container's log on that node.",
        "/etcd-status", PROC_IDENTIFY, (node,))


def diagnose(facts: ClusterFacts) -> Diagnosis:
    """Decides the state of the cluster's etcd from the gathered facts alone."""
    signals = _signals(facts)
    api_note = "" if facts.api_available else "The API is unavailable (status read from the masters over SSH). "

    if not facts.api_available and not facts.members_known and not any(h.reachable for h in facts.hosts):
        return Diagnosis(
            State.UNKNOWN,
            "Neither the API nor the masters over SSH answered: the state of etcd cannot be read. If most masters "
            "are down, this is quorum loss and needs a restore (5.3). Check the SSH settings and try "
            "`/etcd-status` again.",
            "/etcd-status", PROC_IDENTIFY)

    if facts.members_known:
        affected = [m.name for m in facts.members if m.healthy is False and m.started]
    else:
        message = facts.members_available_message
        parsed = parse_members_available(message) if message and facts.api_available else None
        named = set(parsed.unhealthy + parsed.not_started) if parsed else set()
        affected = sorted(named | {n for n, s in signals.items() if s.any_23_state})
    for name in affected:
        signals.setdefault(name, _NodeSignals(node=name, member_unhealthy=True))

    quorum = _quorum(facts, affected=affected, signals=signals)
    if quorum is None:
        return Diagnosis(State.UNKNOWN, api_note + "etcd's members could not be read. Try `/etcd-status` again.",
                         "/etcd-status", PROC_IDENTIFY)
    healthy, total = quorum
    evidence = tuple(_describe(signals[n]) for n in affected)

    if total and healthy < total // 2 + 1:
        lost = ", ".join(evidence) if evidence else f"{total - healthy} members do not answer"
        return Diagnosis(
            State.QUORUM_LOST,
            f"{api_note}etcd has lost quorum: {healthy} of {total} members are healthy ({lost}). Replacing a member "
            "cannot fix this: restore the cluster from a backup of the same release (5.3). Pick one with "
            "`/etcd-backups`, then run `/etcd-restore <backup-id>`.",
            "/etcd-restore <backup-id>", PROC_RESTORE, tuple(affected), evidence)

    if len(affected) == 1:
        return _one(facts, signals[affected[0]], prefix=api_note)

    if len(affected) > 1:
        order = sorted(affected, key=lambda n: (not signals[n].machine, not signals[n].not_ready, n))
        first = _one(facts, signals[order[0]], prefix="")
        return Diagnosis(
            State.SEVERAL_UNHEALTHY,
            f"{api_note}{len(affected)} members are unhealthy ({'; '.join(evidence)}); quorum holds with "
            f"{healthy} of {total}. Replace one member at a time, starting with {order[0]}: {first.summary}",
            first.next_command, first.procedure, tuple(order), evidence)

    masters = {n.name for n in facts.nodes} or {h.node for h in facts.hosts}
    extra = [m.name for m in facts.members if m.started and masters and m.name not in masters]
    if extra or (masters and len(facts.members) > len(masters)):
        return Diagnosis(
            State.EXTRA_MEMBERS,
            f"{api_note}etcd has {len(facts.members)} members for {len(masters)} masters "
            f"({', '.join(extra) or 'an unstarted member'}). Stop and ask a person: removing a good member "
            "can lose quorum.",
            None, "2.4 (verify: exactly one member per master)", tuple(extra))

    warnings = tuple(_describe(s) for s in signals.values() if s.any_23_state)
    progressing = facts.condition("NodeInstallerProgressing")
    if progressing is not None and progressing.status == "True":
        return Diagnosis(
            State.ROLLOUT,
            f"{api_note}All {total} members are healthy; a new etcd revision is rolling out "
            f"({progressing.message or progressing.reason}). Wait, then check again with `/etcd-status`.",
            "/etcd-status", PROC_IDENTIFY, (), warnings)
    degraded = facts.condition("Degraded")
    if (degraded is not None and degraded.status == "True") or warnings:
        detail = "; ".join(warnings + ((f"etcd operator Degraded: {degraded.message or degraded.reason}",)
                                       if degraded is not None and degraded.status == "True" else ()))
        return Diagnosis(
            State.ATTENTION,
            f"{api_note}All {total} etcd members are healthy, but: {detail}. No member needs replacing; "
            "check again with `/etcd-status`.",
            "/etcd-status", PROC_IDENTIFY, (), warnings)

    if not facts.api_available:
        return Diagnosis(
            State.ATTENTION,
            f"{api_note}etcd itself is healthy ({healthy} of {total} members), so the API outage is not etcd's: "
            "look at kube-apiserver on the masters.",
            "/etcd-status", PROC_IDENTIFY)

    leader = next((m.name for m in facts.members if m.leader), None)
    return Diagnosis(
        State.HEALTHY,
        f"etcd is healthy: {healthy} of {total} members are healthy" + (f", leader {leader}." if leader else "."),
        None, PROC_IDENTIFY)
