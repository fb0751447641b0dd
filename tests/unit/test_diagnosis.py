"""Every row of PROCEDURES.md 2.3 (and the document's 2.3), then the mixed cases an incident brings."""

from __future__ import annotations

from dataclasses import replace

from procedures.diagnosis import (
    PROC_REPLACE_CRASHLOOP,
    PROC_REPLACE_NOT_RUNNING,
    PROC_RESTORE,
    State,
    diagnose,
)
from procedures.facts import HostFacts, MemberFacts
from tests.unit.factories import (
    A,
    B,
    C,
    api_down,
    healthy,
    member,
    unhealthy,
    with_machine,
    with_node,
    with_pod,
)


def test_healthy_cluster_says_so():
    d = diagnose(healthy())
    assert d.state is State.HEALTHY
    assert d.summary.startswith("etcd is healthy: 3 of 3 members are healthy")
    assert B in d.summary  # the leader
    assert d.next_command is None


# ---- 2.3 row 1: the machine is not running ----

def test_machine_not_running():
    facts = with_machine(unhealthy(healthy(), A), A, state="stopped")
    facts = with_node(facts, A, ready="Unknown", unreachable=True)  # what a stopped machine's node looks like
    d = diagnose(facts)
    assert d.state is State.MACHINE_NOT_RUNNING
    assert d.procedure == PROC_REPLACE_NOT_RUNNING
    assert d.next_command == f"/etcd-replace-member {A}"
    assert f"machine of {A} is stopped" in d.summary
    assert "after a backup" in d.summary


def test_machine_terminated_is_not_running():
    d = diagnose(with_machine(unhealthy(healthy(), A), A, state="terminated"))
    assert d.state is State.MACHINE_NOT_RUNNING


# ---- 2.3 row 2: the node is not ready ----

def test_node_with_unreachable_taint_is_not_ready():
    d = diagnose(with_node(unhealthy(healthy(), A), A, ready="Unknown", unreachable=True))
    assert d.state is State.NODE_NOT_READY
    assert d.procedure == PROC_REPLACE_NOT_RUNNING
    assert "node.kubernetes.io/unreachable" in d.summary
    assert d.next_command == f"/etcd-replace-member {A}"


def test_node_listed_notready_is_not_ready():
    d = diagnose(with_node(unhealthy(healthy(), A), A, ready="False"))
    assert d.state is State.NODE_NOT_READY
    assert "NotReady" in d.summary


# ---- 2.3 row 3: the etcd pod is crashlooping (all masters Ready) ----

def test_pod_in_error_is_crashlooping():
    d = diagnose(with_pod(unhealthy(healthy(), A), A, status="Error", restarts=7))
    assert d.state is State.POD_CRASHLOOPING
    assert d.procedure == PROC_REPLACE_CRASHLOOP
    assert d.next_command == f"/etcd-replace-member {A}"


def test_pod_in_crashloopbackoff_reads_as_the_issue_example():
    d = diagnose(with_pod(unhealthy(healthy(), A), A, status="CrashLoopBackOff", restarts=7))
    assert d.state is State.POD_CRASHLOOPING
    assert d.summary.startswith(
        f"etcd pod on {A} is CrashLoopBackOff: replace the member (pod crashlooping). "
        f"Run `/etcd-replace-member {A}` after a backup"
    )


# ---- 2.3: quorum loss is not this procedure: restore (5.3) ----

def test_two_members_down_of_three_is_quorum_loss():
    d = diagnose(unhealthy(healthy(), A, C))
    assert d.state is State.QUORUM_LOST
    assert d.procedure == PROC_RESTORE
    assert d.next_command == "/etcd-restore <backup-id>"
    assert "1 of 3" in d.summary and "/etcd-backups" in d.summary
    assert set(d.nodes) == {A, C}


# ---- 2.3: a machine stopped but expected back needs no replacement ----

def test_stopped_machine_expected_back_needs_no_replacement():
    facts = replace(with_machine(unhealthy(healthy(), A), A, state="stopped"), expected_back=frozenset({A}))
    d = diagnose(facts)
    assert d.state is State.EXPECTED_BACK
    assert "no replacement is needed" in d.summary
    assert d.next_command == "/etcd-status"


def test_machine_starting_again_is_expected_back():
    d = diagnose(with_machine(unhealthy(healthy(), A), A, state="pending", phase="Running"))
    assert d.state is State.EXPECTED_BACK


# ---- mixed cases ----

def test_machine_stopped_and_pod_crashlooping_on_the_same_node_follows_the_machine():
    facts = with_pod(with_machine(unhealthy(healthy(), A), A, state="stopped"), A, status="CrashLoopBackOff")
    d = diagnose(facts)
    assert d.state is State.MACHINE_NOT_RUNNING  # the document checks the machine first


def test_machine_stopped_and_another_pod_crashlooping_is_quorum_loss():
    facts = with_pod(with_machine(unhealthy(healthy(), A, C), A, state="stopped"), C, status="CrashLoopBackOff")
    d = diagnose(facts)
    assert d.state is State.QUORUM_LOST
    assert f"machine of {A} is stopped" in d.summary
    assert f"etcd pod on {C} is CrashLoopBackOff" in d.summary


def test_two_of_three_with_one_node_notready():
    d = diagnose(with_node(unhealthy(healthy(), A), A, ready="False"))
    assert d.state is State.NODE_NOT_READY
    assert d.nodes == (A,)


def test_two_of_three_from_the_operator_message_when_etcdctl_did_not_answer():
    facts = replace(with_node(unhealthy(healthy(), A), A, ready="False"), members=(), members_known=False)
    d = diagnose(facts)
    assert d.state is State.NODE_NOT_READY
    assert d.next_command == f"/etcd-replace-member {A}"


def test_crashloop_while_another_node_is_notready_but_its_member_healthy():
    facts = with_node(with_pod(unhealthy(healthy(), A), A, status="Error"), B, ready="False")
    d = diagnose(facts)
    assert d.state is State.POD_CRASHLOOPING
    assert d.nodes == (A,)


def test_member_unhealthy_without_a_state_of_23_says_wait():
    d = diagnose(unhealthy(healthy(), A))
    assert d.state is State.MEMBER_UNHEALTHY
    assert d.next_command == "/etcd-status"
    assert "none of the states of 2.3" in d.summary


def test_five_masters_two_down_replaces_one_at_a_time():
    d_, e_ = "ip-10-0-140-20.ec2.internal", "ip-10-0-141-21.ec2.internal"
    base = healthy()
    facts = replace(base, members=base.members + (member(d_), member(e_)))
    facts = with_machine(unhealthy(facts, A), A, state="stopped")
    facts = replace(facts, members=tuple(replace(m, healthy=False) if m.name == d_ else m for m in facts.members))
    d = diagnose(facts)
    assert d.state is State.SEVERAL_UNHEALTHY
    assert d.nodes[0] == A and d.next_command == f"/etcd-replace-member {A}"
    assert "one member at a time" in d.summary


def test_more_members_than_masters_stops_for_a_person():
    base = healthy()
    d = diagnose(replace(base, members=base.members + (member("ip-10-0-133-53.ec2.internal"),)))
    assert d.state is State.EXTRA_MEMBERS
    assert d.next_command is None
    assert "ask a person" in d.summary


def test_rollout_in_progress_means_wait():
    base = healthy()
    conditions = tuple(
        replace(c, status="True", reason="NodeInstallerProgressing",
                message="2 nodes are at revision 6; 1 nodes are at revision 7")
        if c.type == "NodeInstallerProgressing" else c for c in base.conditions)
    d = diagnose(replace(base, conditions=conditions))
    assert d.state is State.ROLLOUT
    assert "2 nodes are at revision 6; 1 nodes are at revision 7" in d.summary


def test_operator_degraded_with_healthy_members_needs_attention_not_replacement():
    base = healthy()
    conditions = tuple(replace(c, status="True", message="EtcdMembersDegraded: x") if c.type == "Degraded" else c
                       for c in base.conditions)
    d = diagnose(replace(base, conditions=conditions))
    assert d.state is State.ATTENTION
    assert "No member needs replacing" in d.summary


# ---- the API does not answer: facts from the masters over SSH ----

def test_api_down_with_one_host_gone_says_api_unavailable_and_replaces():
    hosts = (HostFacts(node=A, reachable=False, error="timeout"),
             HostFacts(node=B, reachable=True, etcd_state="Running"),
             HostFacts(node=C, reachable=True, etcd_state="Running"))
    members = (MemberFacts(name=A, id="6fc1e7c9db35841d", endpoint="https://x:2379", healthy=False),
               member(B, leader=True), member(C))
    d = diagnose(api_down(hosts=hosts, members=members))
    assert d.state is State.NODE_NOT_READY
    assert d.summary.startswith("The API is unavailable")
    assert "does not answer SSH" in d.summary


def test_api_down_with_two_hosts_gone_is_quorum_loss():
    hosts = (HostFacts(node=A, reachable=False), HostFacts(node=B, reachable=False),
             HostFacts(node=C, reachable=True, etcd_state="Running"))
    d = diagnose(api_down(hosts=hosts))
    assert d.state is State.QUORUM_LOST
    assert "API is unavailable" in d.summary


def test_api_down_with_exited_etcd_container_is_crashlooping():
    hosts = (HostFacts(node=A, reachable=True, etcd_state="Exited", etcd_attempt=5),
             HostFacts(node=B, reachable=True, etcd_state="Running"),
             HostFacts(node=C, reachable=True, etcd_state="Running"))
    d = diagnose(api_down(hosts=hosts))
    assert d.state is State.POD_CRASHLOOPING
    assert "Exited (attempt 5)" in d.summary


def test_api_down_with_healthy_etcd_points_away_from_etcd():
    hosts = tuple(HostFacts(node=n, reachable=True, etcd_state="Running") for n in (A, B, C))
    d = diagnose(api_down(hosts=hosts, members=(member(A), member(B, leader=True), member(C))))
    assert d.state is State.ATTENTION
    assert "kube-apiserver" in d.summary


def test_nothing_answers_is_unknown():
    d = diagnose(api_down(hosts=(HostFacts(node=A, reachable=False),)))
    assert d.state is State.UNKNOWN
    assert "/etcd-status" in d.summary
