"""Builders of ClusterFacts for tests: a healthy three-master cluster, then one change per test."""

from __future__ import annotations

from dataclasses import replace

from procedures.facts import (
    ClusterFacts,
    Condition,
    HostFacts,
    MachineFacts,
    MemberFacts,
    NodeFacts,
    PodFacts,
    SourceReport,
    SourceState,
)

A, B, C = "ip-10-0-131-183.ec2.internal", "ip-10-0-164-97.ec2.internal", "ip-10-0-154-204.ec2.internal"
NODES = (A, B, C)
IDS = {A: "6fc1e7c9db35841d", B: "757b6793e2408b6c", C: "ca8c2990a0aa29d1"}


def member(node: str, *, healthy: bool | None = True, leader: bool = False) -> MemberFacts:
    port = 2379 + NODES.index(node) if node in NODES else 2399
    return MemberFacts(name=node, id=IDS.get(node, "1234abcd"), endpoint=f"https://10.0.0.{port}:2379",
                       healthy=healthy, leader=leader if healthy else False if healthy is False else None,
                       db_size=31_000_000, revision=123456)


def pod(node: str, *, status: str = "Running", phase: str = "Running", restarts: int = 0) -> PodFacts:
    state = {"Running": "running", "CrashLoopBackOff": "waiting: CrashLoopBackOff",
             "Error": "terminated: Error (exit 1)"}.get(status, status)
    return PodFacts(name=f"etcd-{node}", node=node, phase=phase, status=status, container_state=state,
                    restarts=restarts, ready="3/3" if status == "Running" else "2/3")


def node(name: str, *, ready: str = "True", unreachable: bool = False) -> NodeFacts:
    taints = ("node-role.kubernetes.io/master",) + (("node.kubernetes.io/unreachable",) if unreachable else ())
    return NodeFacts(name=name, ready=ready, unreachable=unreachable, taints=taints)


def machine(name: str, *, state: str | None = "running", phase: str = "Running") -> MachineFacts:
    return MachineFacts(name=f"clustername-8qw5l-master-{NODES.index(name)}", node=name, phase=phase,
                        instance_state=state)


def members_condition(available: int = 3, total: int = 3, unhealthy: tuple[str, ...] = ()) -> Condition:
    if available == total:
        message = f"{total} of {total} members are available"
    else:
        message = f"{available} of {total} members are available, " + ", ".join(f"{n} is unhealthy" for n in unhealthy)
    return Condition("EtcdMembersAvailable", "True" if available > total // 2 else "False", "EtcdQuorate", message)


def healthy() -> ClusterFacts:
    return ClusterFacts(
        cluster="lab",
        api_available=True,
        version="4.5.2",
        members=(member(A), member(B, leader=True), member(C)),
        members_known=True,
        pods=tuple(pod(n) for n in NODES),
        nodes=tuple(node(n) for n in NODES),
        machines=tuple(machine(n) for n in NODES),
        conditions=(
            members_condition(),
            Condition("NodeInstallerProgressing", "False", "AllNodesAtLatestRevision", "3 nodes are at revision 7"),
            Condition("Degraded", "False", "AsExpected", ""),
        ),
        sources=(SourceReport("API", SourceState.OK, 0.3), SourceReport("etcdctl (exec in etcd-x)", SourceState.OK, 1.1)),
        etcdctl_via=f"exec in etcd-{B}",
    )


def with_member(facts: ClusterFacts, name: str, **changes: object) -> ClusterFacts:
    return replace(facts, members=tuple(replace(m, **changes) if m.name == name else m for m in facts.members))


def with_pod(facts: ClusterFacts, name: str, **kwargs: object) -> ClusterFacts:
    return replace(facts, pods=tuple(pod(name, **kwargs) if p.node == name else p for p in facts.pods))  # type: ignore[arg-type]


def with_node(facts: ClusterFacts, name: str, **kwargs: object) -> ClusterFacts:
    return replace(facts, nodes=tuple(node(name, **kwargs) if n.name == name else n for n in facts.nodes))  # type: ignore[arg-type]


def with_machine(facts: ClusterFacts, name: str, **kwargs: object) -> ClusterFacts:
    return replace(facts, machines=tuple(machine(name, **kwargs) if m.node == name else m for m in facts.machines))  # type: ignore[arg-type]


def unhealthy(facts: ClusterFacts, *names: str) -> ClusterFacts:
    for name in names:
        facts = with_member(facts, name, healthy=False, leader=None, db_size=None, revision=None,
                            error="context deadline exceeded")
    available = len(NODES) - len(names)
    conditions = tuple(members_condition(available, 3, names) if c.type == "EtcdMembersAvailable" else c
                       for c in facts.conditions)
    return replace(facts, conditions=conditions)


def api_down(*, hosts: tuple[HostFacts, ...], members: tuple[MemberFacts, ...] = ()) -> ClusterFacts:
    return ClusterFacts(cluster="lab", api_available=False, members=members, members_known=bool(members),
                        hosts=hosts, sources=(SourceReport("API", SourceState.TIMEOUT, 8.0, "no answer within 8s"),),
                        etcdctl_via="SSH on " + A if members else "")
