"""`/etcd-replace-member`, variant B (document 2.4: the etcd pod is crashlooping), end to end through
the lab's Slack workspace. `crashloop-etcd` damages the member's data, so the real etcd panics at
every start; the bot moves the static pod manifest into /var/lib/etcd-backup and the data directory
to /tmp on the node (SSH as core, with sudo), removes the member and its secrets after bob's
approval, forces a redeployment, and the node's member is healthy again under a new ID."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e import backup_support
from tests.e2e.backup_support import BotProcess, blocks_text, command, start_bot
from tests.e2e.replace_support import (
    all_healthy,
    approve_until_done,
    healthy_cluster,
    machines,
    masters,
    members,
    secrets,
    unhealthy,
    wait_run,
)
from tests.labfixture import Lab, wait_for

LAB_ARGS = ("--clock-speed", "30")


@pytest.fixture(scope="module")
def bot(lab: Lab) -> Iterator[BotProcess]:
    process = start_bot(lab)
    try:
        yield process
    finally:
        process.stop()


def pod_status(lab: Lab, node: str) -> str:
    out = lab.kubectl("get", "pods", "-n", "openshift-etcd", f"etcd-{node}", "--no-headers", check=False).stdout
    return out.split()[2] if out.split() else ""


def test_crashlooping_pod_replaced_by_variant_b(lab: Lab, bot: BotProcess) -> None:
    bad, via, _ = masters(lab)
    applied = lab.cli("fault", "crashloop-etcd", bad).stdout
    if "damaged" not in applied:
        pytest.skip("this lab's crashloop-etcd does not damage the member's data, so 2.4.B cannot cure it "
                    "(the data-damaging crashloop comes with the labcluster branch)")
    since = command(lab, "/etcd-backup")  # from a healthy master
    assert backup_support.wait_run(lab, since=since, states=("succeeded", "failed"))["state"] == "succeeded"
    unhealthy(lab, bad)
    wait_for(lambda: pod_status(lab, bad) in ("CrashLoopBackOff", "Error"), timeout=90, what="the pod crashlooping")
    old = next(m for m in members(lab, via) if m["name"] == bad)
    machines_before = sorted(machines(lab))

    since = command(lab, f"/etcd-replace-member {bad}")
    started = wait_run(lab, since=since, states=("waiting approval", "running"), timeout=120)
    done, approved = approve_until_done(lab, since=since, run_id=started["run_id"], user="bob", timeout=300)
    text = blocks_text(done)
    assert done["state"] == "succeeded", text
    assert "variant B" in text and f"removed member {old['id']}" in text and "single-master-recovery-" in text

    all_healthy(lab)
    listed = members(lab, via)
    again = next(m for m in listed if m["name"] == bad)
    assert len(listed) == 3 and again["id"] != old["id"] and old["id"] not in {m["id"] for m in listed}
    assert wait_for(lambda: healthy_cluster(lab, via), timeout=60, what="endpoint health --cluster")
    assert pod_status(lab, bad) == "Running"
    assert {f"etcd-peer-{bad}", f"etcd-serving-{bad}", f"etcd-serving-metrics-{bad}"} <= secrets(lab)
    assert sorted(machines(lab)) == machines_before  # variant B keeps the machine
    moved = lab.ssh(bad, f"sudo ls -d /var/lib/etcd-backup/etcd-pod.yaml /tmp/etcd-{started['run_id']}/member").stdout
    assert "/var/lib/etcd-backup/etcd-pod.yaml" in moved and f"/tmp/etcd-{started['run_id']}/member" in moved
