"""`/etcd-restore` when things break half way, from a lost quorum:
- SSH to a non-recovery master is cut right after its etcd manifest was moved: the run stops,
  keeps the cluster's lock, and says per master where its manifests and data directory are and
  the next commands; after `heal`, Resume asks a fresh approval and finishes the restore;
- the bot is SIGKILLed while it waits for a redeployment: Resume finishes without running the
  restore script again.
The production bot as a process; faults injected with the lab's CLI when the audit stream shows
the command they must follow."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from lab import control
from tests.e2e.backup_support import BotProcess, blocks_text, buttons, command, start_bot
from tests.e2e.restore_support import (
    approval_request,
    backup,
    commands_of,
    configmaps,
    operators_at_latest,
    press,
    refusal,
    restore_message,
    wait_command,
    wait_restore,
)
from tests.labfixture import Lab, wait_for


@pytest.fixture(scope="module")
def bot(lab: Lab) -> Iterator[BotProcess]:
    process = start_bot(lab)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def backup_id(lab: Lab, bot: BotProcess) -> str:
    lab.kubectl("create", "configmap", "before-backup", "-n", "demo", "--from-literal=a=b")
    return backup(lab)


def lose_quorum(lab: Lab) -> None:
    lab.cli("fault", "lose-quorum")
    wait_for(lambda: lab.kubectl("get", "configmaps", "-n", "demo", check=False, timeout=15).returncode != 0,
             timeout=60, what="the API failing without quorum")


def approved_restore(lab: Lab, backup_id: str) -> tuple[int, dict]:
    since = command(lab, f"/etcd-restore {backup_id}")
    run = wait_restore(lab, since=since, states=("waiting approval",), timeout=120)
    press(lab, user="bob", action_id="approval_approve", message=approval_request(lab, run=run, since=since))
    return since, run


def resume(lab: Lab, *, run: dict, since: int) -> None:
    message = restore_message(lab, since=since, run_id=run["run_id"])
    assert message is not None and "Resume" in buttons(message), blocks_text(message or {})
    press(lab, user="alice", action_id="run_resume", message=message)


def test_ssh_lost_after_the_manifests_moved_stops_the_run_and_resume_finishes(lab: Lab, backup_id: str) -> None:
    recovery, first, cut = lab.masters
    lab.kubectl("create", "configmap", "after-backup", "-n", "demo", "--from-literal=a=b")
    lose_quorum(lab)
    # The etcd left on `cut` is frozen (SIGSTOP): once its manifest is moved the kubelet takes its
    # grace period to stop it, and the bot waits on `crictl ps`: that is when SSH goes.
    lab.cli("fault", "slow-etcd", cut)
    since, run = approved_restore(lab, backup_id)
    wait_command(lab, run_id=run["run_id"], target=cut, contains="mv /etc/kubernetes/manifests/etcd-pod.yaml")
    # Straight to the lab's control socket (what `etcdbot-lab fault block-ssh` sends), without the
    # CLI's start-up time: the fault must land within the etcd container's 5 s grace period.
    reply = asyncio.run(control.request(lab.dir, {"cmd": "fault", "kind": "block-ssh", "target": cut}))
    assert reply.get("ok"), reply

    held = wait_restore(lab, since=since, run_id=run["run_id"], states=("interrupted", "failed", "succeeded"), timeout=120)
    text = blocks_text(held)
    assert held["state"] == "interrupted", text
    aside = f"/tmp/etcdbot-restore-{run['run_id']}"
    line = {node: next((x[x.index(f"• `{node}`"):] for x in text.splitlines() if f"• `{node}`" in x), "")
            for node in lab.masters}
    assert line[recovery].startswith(f"• `{recovery}` (recovery host): restore script not run"), text
    assert line[cut].startswith(f"• `{cut}`: did not answer SSH"), text
    assert "the bot had done: etcd pod manifest moved" in line[cut], text
    # Where SSH went depends on how fast the fault landed: during the wait for etcd to stop (the
    # data directories not moved yet), or, on a slow machine, while the data directories moved.
    if "data dir moved" in line[first]:
        assert line[first].startswith(f"• `{first}`: etcd-pod.yaml moved, kube-apiserver-pod.yaml moved, data dir moved"), text
        assert f"Next: `sudo mv /var/lib/etcd {aside}/etcd`" in line[cut], text
        assert f"Back: `sudo mv {aside}/etcd /var/lib/etcd`" in line[first], text
    else:
        assert line[first].startswith(f"• `{first}`: etcd-pod.yaml moved, kube-apiserver-pod.yaml moved, data dir in place"), text
        assert f"Next: `sudo mv /var/lib/etcd {aside}/etcd`" in line[first], text
        assert f"Next: `sudo mv /etc/kubernetes/manifests/kube-apiserver-pod.yaml {aside}/`" in line[cut], text
    assert f"`sudo mv {aside}/kube-apiserver-pod.yaml /etc/kubernetes/manifests/`" in line[first], text  # the way back
    assert f"restore SSH to `{cut}`, then press *Resume*" in text
    assert [c.command for c in commands_of(lab, run["run_id"]) if "cluster-restore.sh" in c.command] == []
    assert "is busy" in refusal(lab, text="/etcd-backup", user="bob", contains="is busy")  # the lock is kept

    lab.cli("heal")
    cursor = command(lab, "/etcd-runs")  # any cursor from now: the fresh request comes after it
    resume(lab, run=run, since=since)
    request = approval_request(lab, run=run, since=cursor)
    press(lab, user="carol", action_id="approval_approve", message=request)
    done = wait_restore(lab, since=since, run_id=run["run_id"], states=("succeeded", "failed"), timeout=240)
    assert done["state"] == "succeeded", blocks_text(done)
    names = configmaps(lab)
    assert "before-backup" in names and "after-backup" not in names
    assert lab.members_message() == "3 of 3 members are available"
    sent = commands_of(lab, run["run_id"])
    assert sum(1 for c in sent if c.target == cut and "mv /etc/kubernetes/manifests/etcd-pod.yaml" in c.command) == 1
    assert sum(1 for c in sent if "cluster-restore.sh" in c.command) == 1


def test_the_bot_killed_during_the_redeployments_resumes_without_restoring_again(lab: Lab, backup_id: str,
                                                                                bot: BotProcess) -> None:
    lab.kubectl("create", "configmap", "after-backup-2", "-n", "demo", "--from-literal=a=b")
    lose_quorum(lab)
    since, run = approved_restore(lab, backup_id)
    wait_command(lab, run_id=run["run_id"], target="api", contains="oc patch kubeapiserver cluster", timeout=180)
    bot.kill()
    bot.start()
    wait_restore(lab, since=since, run_id=run["run_id"], states=("interrupted",), timeout=120)
    resume(lab, run=run, since=since)
    done = wait_restore(lab, since=since, run_id=run["run_id"], states=("succeeded", "failed"), timeout=240)
    assert done["state"] == "succeeded", blocks_text(done)
    sent = commands_of(lab, run["run_id"])
    assert sum(1 for c in sent if "cluster-restore.sh" in c.command) == 1
    assert sum(1 for c in sent if "oc patch etcd cluster" in c.command) == 1
    assert sum(1 for c in sent if "oc patch kubeapiserver cluster" in c.command) == 1  # waited for, not forced again
    assert "after-backup-2" not in configmaps(lab)
    assert all(state.startswith("AllNodesAtLatestRevision") for state in operators_at_latest(lab).values())
