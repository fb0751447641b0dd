"""The guard rails of chapter 2.4 as rules, each held without a server: which variant, every
refusal and the command it points to, the backup that counts as taken first, the machine's new
name and manifest, the redeployment reason, and the verification."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from bot.backups import BackupRecord, DrillOutcome, StoredFile
from bot.cluster.etcdctl import EndpointHealth, Member, MemberList
from procedures.facts import MemberFacts, NodeFacts
from procedures.guards import fresh_backup
from procedures.replace_common import describe_masters
from procedures.replace_rules import (
    VARIANT_A,
    VARIANT_B,
    Choice,
    Refusal,
    asked_by,
    check_replaced,
    choose,
    new_machine_manifest,
    next_machine_name,
    quorum_after_removal,
    redeploy_reason,
    secret_names,
)
from tests.unit.factories import (
    IDS,
    NODES,
    A,
    B,
    C,
    healthy,
    unhealthy,
    with_machine,
    with_member,
    with_node,
    with_pod,
)

SSH = NODES


def member_list(*names: str, extra: int = 0) -> MemberList:
    listed = [Member(id=IDS[n], name=n, peer_urls=(f"https://10.0.0.{i}:2380",), client_urls=(f"https://10.0.0.{i}:2379",))
              for i, n in enumerate(names, start=1)]
    listed += [Member(id=f"abc{i}", name=f"extra-{i}", peer_urls=(), client_urls=()) for i in range(extra)]
    return MemberList(cluster_id="baa565c8919b060e", members=tuple(listed))


def decide(facts, *, node: str = A, members: MemberList | None = None, ssh=SSH) -> Refusal | Choice:  # type: ignore[no-untyped-def]
    return choose(node=node, facts=facts, members=members if members is not None else member_list(*NODES),
                  ssh_nodes=ssh, cluster="lab")


def stopped(node: str = A):  # type: ignore[no-untyped-def]
    facts = with_machine(unhealthy(healthy(), node), node, state="stopped")
    return with_node(facts, node, ready="Unknown", unreachable=True)


# ---- the variant ------------------------------------------------------------------------------

def test_machine_not_running_is_variant_a_with_its_machine() -> None:
    choice = decide(stopped())
    assert isinstance(choice, Choice)
    assert choice.variant == VARIANT_A and choice.state == "machine-not-running"
    assert choice.member.id == IDS[A] and choice.machine == "clustername-8qw5l-master-0"
    assert choice.healthy_others == 2 and choice.members == 3


def test_node_not_ready_is_variant_a() -> None:
    choice = decide(with_node(unhealthy(healthy(), A), A, ready="Unknown", unreachable=True))
    assert isinstance(choice, Choice) and choice.variant == VARIANT_A and choice.state == "node-not-ready"


def test_crashlooping_pod_is_variant_b() -> None:
    choice = decide(with_pod(unhealthy(healthy(), A), A, status="CrashLoopBackOff", restarts=7))
    assert isinstance(choice, Choice) and choice.variant == VARIANT_B and choice.state == "pod-crashlooping"


# ---- the refusals, each with the command to run instead ---------------------------------------

def test_a_healthy_member_is_refused() -> None:
    refusal = decide(healthy())
    assert isinstance(refusal, Refusal)
    assert "is healthy: nothing to replace" in refusal.message and "/etcd-status lab" in refusal.next_action


def test_a_healthy_node_beside_an_unhealthy_one_points_to_the_unhealthy_one() -> None:
    refusal = decide(stopped(B), node=A)
    assert isinstance(refusal, Refusal)
    assert f"the unhealthy one is `{B}`" in refusal.message and f"/etcd-replace-member {B}" in refusal.next_action


def test_quorum_loss_points_to_restore() -> None:
    refusal = decide(unhealthy(stopped(A), B))
    assert isinstance(refusal, Refusal)
    assert "lost quorum" in refusal.message and "/etcd-restore <backup-id>" in refusal.next_action


def test_a_node_the_cluster_does_not_have() -> None:
    refusal = decide(stopped(), node="ip-10-0-1-1.ec2.internal")
    assert isinstance(refusal, Refusal)
    assert "is not a master of `lab`" in refusal.message and A in refusal.message and "nothing was changed" in refusal.message


def test_a_machine_expected_back_needs_no_replacement() -> None:
    facts = with_machine(unhealthy(healthy(), A), A, state="pending")
    refusal = decide(facts)
    assert isinstance(refusal, Refusal) and "expected back" in refusal.message


def test_more_than_one_unhealthy_member_of_five() -> None:
    d, e = "ip-10-0-1-4.ec2.internal", "ip-10-0-1-5.ec2.internal"
    base = healthy()
    facts = replace(base, members=base.members + tuple(MemberFacts(name=n, id=f"{i}abc", endpoint=f"https://10.0.1.{i}:2379",
                                                                   healthy=True) for i, n in ((4, d), (5, e))),
                    nodes=base.nodes + (NodeFacts(name=d, ready="True", unreachable=False),
                                        NodeFacts(name=e, ready="True", unreachable=False)))
    facts = with_member(with_member(facts, A, healthy=False), B, healthy=False)
    facts = with_node(with_node(facts, A, ready="Unknown", unreachable=True), B, ready="Unknown", unreachable=True)
    refusal = decide(facts)
    assert isinstance(refusal, Refusal)
    assert "more than one member is unhealthy" in refusal.message and A in refusal.message and B in refusal.message


def test_more_than_three_members_stops_and_asks_a_person() -> None:
    refusal = decide(stopped(), members=member_list(*NODES, extra=1))
    assert isinstance(refusal, Refusal)
    assert "shows 4 members" in refusal.message and "Ask a person" in refusal.next_action


def test_a_removal_that_would_lose_quorum() -> None:
    # etcdctl gave no health (the diagnosis read the operator's condition): no member counts as healthy
    facts = replace(stopped(), members=(), members_known=False)
    refusal = decide(facts)
    assert isinstance(refusal, Refusal) and "which is no quorum" in refusal.message
    assert quorum_after_removal(members=3, healthy_others=2) and not quorum_after_removal(members=3, healthy_others=1)
    assert quorum_after_removal(members=5, healthy_others=3) and not quorum_after_removal(members=1, healthy_others=0)


def test_a_member_already_removed() -> None:
    refusal = decide(stopped(), members=member_list(B, C))
    assert isinstance(refusal, Refusal) and "may have been removed already" in refusal.message


def test_member_list_that_does_not_answer() -> None:
    refusal = choose(node=A, facts=stopped(), members=None, ssh_nodes=SSH, cluster="lab")
    assert isinstance(refusal, Refusal) and "member list` did not answer" in refusal.message


def test_variant_b_needs_ssh_to_the_node() -> None:
    facts = with_pod(unhealthy(healthy(), A), A, status="Error", restarts=3)
    refusal = decide(facts, ssh=(B, C))
    assert isinstance(refusal, Refusal) and "no SSH address" in refusal.message


def test_variant_a_needs_a_machine() -> None:
    facts = replace(stopped(), machines=())
    facts = with_node(facts, A, ready="Unknown", unreachable=True)
    refusal = decide(facts)
    assert isinstance(refusal, Refusal) and "no Machine" in refusal.message


# ---- the backup taken first -----------------------------------------------------------------

def record(backup_id: str, *, finished: float, version: str = "4.5.2", verified: bool = True,
           drilled: bool = True) -> BackupRecord:
    files = (StoredFile(name="snapshot_x.db", role="snapshot", size=10, sha256="0" * 64, path=f"/store/{backup_id}/s"),)
    return BackupRecord(id=backup_id, cluster="lab", version=version, revision=5, total_keys=3, snapshot_hash=1,
                        snapshot_size=10, files=files, host=A, started_at=finished - 5, finished_at=finished,
                        run_id="r", requester="U0ALICE01", verified=verified, encrypted=False, host_dir="/x",
                        drill=DrillOutcome(ok=drilled, at=finished, seconds=1.0))


def test_fresh_backup_is_the_newest_verified_one_of_the_version_within_the_age() -> None:
    now = 100_000.0
    records = [record("old", finished=now - 7200), record("other-version", finished=now - 10, version="4.5.1"),
               record("unverified", finished=now - 5, verified=False), record("good", finished=now - 600),
               record("better", finished=now - 300)]
    found = fresh_backup(records, version="4.5.2", now=now, max_age=3600, present=lambda r: True)
    assert found is not None and found.id == "better"
    gone = fresh_backup(records, version="4.5.2", now=now, max_age=3600, present=lambda r: r.id != "better")
    assert gone is not None and gone.id == "good"
    assert fresh_backup(records, version="4.5.2", now=now, max_age=60, present=lambda r: True) is None
    assert fresh_backup(records, version="4.5.3", now=now, max_age=3600, present=lambda r: True) is None


# ---- the machine ------------------------------------------------------------------------------

def test_next_machine_name_keeps_the_base_and_takes_the_next_index() -> None:
    names = ["clustername-8qw5l-master-0", "clustername-8qw5l-master-1", "clustername-8qw5l-master-2",
             "clustername-8qw5l-worker-us-east-1a-x7k2p"]
    assert next_machine_name("clustername-8qw5l-master-0", names) == "clustername-8qw5l-master-3"
    after = ["clustername-8qw5l-master-1", "clustername-8qw5l-master-2", "clustername-8qw5l-master-3"]
    assert next_machine_name("clustername-8qw5l-master-1", after) == "clustername-8qw5l-master-4"
    with pytest.raises(ValueError, match="does not end in -<index>"):
        next_machine_name("master-a", names)


def test_new_machine_manifest_strips_what_the_document_lists() -> None:
    old = {
        "apiVersion": "machine.openshift.io/v1beta1", "kind": "Machine",
        "metadata": {"name": "c-master-0", "namespace": "openshift-machine-api", "generation": 2,
                     "annotations": {"machine.openshift.io/instance-state": "running"}, "resourceVersion": "13291",
                     "uid": "a282eb70", "creationTimestamp": "2020-01-01T00:00:00Z",
                     "selfLink": "/apis/machine.openshift.io/v1beta1/namespaces/openshift-machine-api/machines/c-master-0",
                     "labels": {"machine.openshift.io/cluster-api-machine-role": "master"}},
        "spec": {"providerID": "aws:///us-east-1a/i-0fdb85790d76d0c3f", "providerSpec": {"value": {"ami": "x"}}},
        "status": {"phase": "Running", "nodeRef": {"name": A}},
    }
    new = new_machine_manifest(old, new_name="c-master-3")
    assert new["metadata"] == {
        "name": "c-master-3", "namespace": "openshift-machine-api",
        "selfLink": "/apis/machine.openshift.io/v1beta1/namespaces/openshift-machine-api/machines/c-master-3",
        "labels": {"machine.openshift.io/cluster-api-machine-role": "master"}}
    assert "status" not in new and new["spec"] == {"providerSpec": {"value": {"ami": "x"}}}
    assert old["metadata"]["name"] == "c-master-0" and "providerID" in old["spec"]  # the saved copy is untouched


# ---- redeployment and verification ------------------------------------------------------------

def test_redeploy_reason_is_unique_and_says_which_run_asked() -> None:
    moment = datetime(2026, 11, 30, 5, 50, 1, 123456, tzinfo=UTC)
    reason = redeploy_reason("single-master-recovery", run_id="1a2b3c4d", now=moment)
    assert reason == "single-master-recovery-2026-11-30 05:50:01.123456000+00:00 run 1a2b3c4d"
    assert asked_by(reason, run_id="1a2b3c4d") and not asked_by(reason, run_id="ffff0000")
    assert secret_names(A) == (f"etcd-peer-{A}", f"etcd-serving-{A}", f"etcd-serving-metrics-{A}")


def health(*endpoints: str, sick: tuple[str, ...] = ()) -> tuple[EndpointHealth, ...]:
    return tuple(EndpointHealth(endpoint=e, healthy=e not in sick, took="1ms") for e in endpoints)


def test_check_replaced() -> None:
    new = Member(id="ffff", name="ip-10-0-133-53.ec2.internal", peer_urls=("https://10.0.0.9:2380",),
                 client_urls=("https://10.0.0.9:2379",))
    good = MemberList(cluster_id="x", members=(*member_list(B, C).members, new))
    endpoints = tuple(m.client_urls[0] for m in good.members)
    ok = check_replaced(members=good, health=health(*endpoints), old_id=IDS[A], expect_name=new.name)
    assert ok.ok and ok.member == new
    sick = check_replaced(members=good, health=health(*endpoints, sick=(endpoints[2],)), old_id=IDS[A],
                          expect_name=new.name)
    assert not sick.ok and "unhealthy: https://10.0.0.9:2379" in sick.problems
    back = check_replaced(members=member_list(A, B, C), health=health(*endpoints), old_id=IDS[A], expect_name=A)
    assert not back.ok and any("is in `member list` again" in p for p in back.problems)
    four = MemberList(cluster_id="x", members=(*good.members, member_list(A).members[0]))
    assert any("stop and ask a person" in p for p in check_replaced(members=four, health=health(*endpoints),
                                                                    old_id="0", expect_name=new.name).problems)
    short = check_replaced(members=member_list(B, C), health=health(*endpoints[:2]), old_id=IDS[A], expect_name=new.name)
    assert not short.ok and "no member is named ip-10-0-133-53.ec2.internal yet" in short.problems


def test_masters_described_for_a_failure_report() -> None:
    text = describe_masters(stopped())
    assert f"{A}: node NotReady, etcd pod Running, member {IDS[A]} unhealthy" in text
    assert f"{B}: node Ready, etcd pod Running, member {IDS[B]} healthy" in text
