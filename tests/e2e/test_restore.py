"""`/etcd-restore` end to end, as people run it in the lab's Slack workspace: the full story of
chapter 5.3 after a quorum loss (alice restores, her own approval is refused, bob approves, the
cluster comes back as the backup held it), the refusals that change nothing, `--dry-run`, and a
backup of another release after an upgrade. The production bot as a process against one lab."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.backup_support import BotProcess, blocks_text, command, seen, start_bot, stored_backups
from tests.e2e.restore_support import (
    approval_request,
    backup,
    commands_of,
    configmaps,
    ephemeral_after,
    host_state,
    operators_at_latest,
    press,
    refusal,
    restore_message,
    wait_host_state,
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
        assert "xoxb-" not in process.log_path.read_text(), "a token reached the bot's log"


@pytest.fixture(scope="module")
def backup_id(lab: Lab, bot: BotProcess) -> str:
    """alice's backup, with `before-backup` made just before it."""
    lab.kubectl("create", "configmap", "before-backup", "-n", "demo", "--from-literal=a=b")
    return backup(lab)


def test_dry_run_lists_every_command_on_every_host_and_changes_nothing(lab: Lab, backup_id: str) -> None:
    before = host_state(lab)
    since = command(lab, f"/etcd-restore {backup_id} --dry-run")
    plan = wait_for(lambda: next((blocks_text(m) for m in seen(lab, since=since) if "Dry run" in m["text"]), None),
                    timeout=60, what="the dry run")
    recovery, *others = lab.masters
    assert f"recovery-host=`{recovery}`" in plan
    for node in others:
        assert f"`ssh core@{node}`: `sudo mv /etc/kubernetes/manifests/etcd-pod.yaml /tmp/etcdbot-restore-RUN-ID/`" in plan
        assert f"`ssh core@{node}`: `sudo mv /var/lib/etcd /tmp/etcdbot-restore-RUN-ID/etcd`" in plan
    assert f"`ssh core@{recovery}`: `sudo -E /usr/local/bin/cluster-restore.sh /home/core/backup`" in plan
    for node in lab.masters:
        assert f"`ssh core@{node}`: `sudo systemctl restart kubelet.service`" in plan
    for operator in ("etcd", "kubeapiserver", "kubecontrollermanager", "kubescheduler"):
        assert f"oc patch {operator} cluster -p=" in plan
    assert "needs a second person's approval" in plan
    assert restore_message(lab, since=since) is None
    assert host_state(lab) == before


def test_refusals_name_the_reason_and_change_nothing(lab: Lab, backup_id: str) -> None:
    before = host_state(lab)
    unknown = refusal(lab, text="/etcd-restore 20200101-000000-deadbeef")
    assert "no backup `20200101-000000-deadbeef`" in unknown and "/etcd-backups" in unknown

    (meta,) = [m for i, m in stored_backups(lab).items() if i == backup_id]
    snapshot = Path(next(f["path"] for f in meta["files"] if f["role"] == "snapshot"))
    saved = snapshot.with_suffix(".saved")
    shutil.copy2(snapshot, saved)
    try:
        with snapshot.open("r+b") as handle:
            handle.seek(100)
            handle.write(b"corrupted")
        corrupt = refusal(lab, text=f"/etcd-restore {backup_id}")
        assert f"{snapshot.name} has sha256" in corrupt and "changed since the backup" in corrupt
    finally:
        saved.replace(snapshot)

    blocked = lab.masters[2]
    lab.cli("fault", "block-ssh", blocked)
    try:
        no_ssh = refusal(lab, text=f"/etcd-restore {backup_id}")
        assert "SSH does not reach every master" in no_ssh and f"`{blocked}`" in no_ssh
        assert all(f"`{n}`:" not in no_ssh for n in lab.masters[:2])
    finally:
        lab.cli("heal", blocked)
    wait_host_state(lab, before)


def test_help_knows_the_command(lab: Lab, bot: BotProcess) -> None:
    since = command(lab, "/etcd-help")
    text = ephemeral_after(lab, user="alice", since=since, contains="/etcd-restore")
    assert "`/etcd-restore &lt;backup-id&gt; [--recovery-host NODE] [--dry-run] [cluster]`: restore" in text


def test_the_full_story(lab: Lab, backup_id: str) -> None:
    lab.kubectl("create", "configmap", "after-backup", "-n", "demo", "--from-literal=a=b")
    lab.kubectl("delete", "configmap", "before-backup", "-n", "demo")
    recovery = lab.masters[0]
    # An older backup someone copied by hand (root's, as `sudo cp -r` leaves it): it must not mix in.
    lab.ssh(recovery, "sudo mkdir -p /home/core/backup && sudo touch /home/core/backup/snapshot_2020-01-01_000000.db")
    lab.cli("fault", "lose-quorum")
    wait_for(lambda: lab.kubectl("get", "configmaps", "-n", "demo", check=False, timeout=15).returncode != 0,
             timeout=60, what="the API failing without quorum")

    since = command(lab, f"/etcd-restore {backup_id}")
    run = wait_restore(lab, since=since, states=("waiting approval",), timeout=120)
    request = approval_request(lab, run=run, since=since)
    text = blocks_text(request)
    others = lab.masters[1:]
    for node in lab.masters:
        assert f"`ssh core@{node}`" in text
    assert text.count(f"sudo mv /etc/kubernetes/manifests/etcd-pod.yaml /tmp/etcdbot-restore-{run['run_id']}/") == len(others)
    assert text.count(f"sudo mv /var/lib/etcd /tmp/etcdbot-restore-{run['run_id']}/etcd") == len(others)
    assert "sudo -E /usr/local/bin/cluster-restore.sh /home/core/backup" in text
    assert f"`recovery host`: `{recovery}`" in text and f"{backup_id}: taken" in text and "sha256" in text
    assert "every change to the cluster made after" in text

    # While it waits, the cluster is busy for everyone: another restore, a backup.
    assert "is busy" in refusal(lab, text=f"/etcd-restore {backup_id}", user="bob", contains="is busy")
    assert "is busy" in refusal(lab, text="/etcd-backup", user="bob", contains="is busy")

    pressed = press(lab, user="alice", action_id="approval_approve", message=request)
    assert "cannot approve" in ephemeral_after(lab, user="alice", since=pressed, contains="approve")
    assert restore_message(lab, since=since)["state"] == "waiting approval"
    press(lab, user="bob", action_id="approval_approve", message=request)

    done = wait_restore(lab, since=since, states=("succeeded", "failed", "interrupted"), timeout=240)
    assert done["state"] == "succeeded", blocks_text(done)
    assert "3 of 3 members are available" in blocks_text(done)
    names = configmaps(lab)
    assert "before-backup" in names and "after-backup" not in names and "payments-config" in names
    assert lab.members_message() == "3 of 3 members are available"
    assert all(state.startswith("AllNodesAtLatestRevision") for state in operators_at_latest(lab).values())
    pods = lab.kubectl("get", "pods", "-n", "openshift-etcd").stdout
    assert sum(1 for line in pods.splitlines() if line.startswith("etcd-") and " Running " in line) == 3

    sent = commands_of(lab, done["run_id"])
    assert all(c.rc not in ("", "none") for c in sent), [c for c in sent if c.rc in ("", "none")]
    texts = [(c.target, c.command) for c in sent]
    for node in others:
        for expected in ("sudo mv /etc/kubernetes/manifests/etcd-pod.yaml", "sudo mv /etc/kubernetes/manifests/kube-apiserver-pod.yaml",
                         "sudo mv /var/lib/etcd", "sudo systemctl restart kubelet.service"):
            assert any(t == node and expected in c for t, c in texts), (node, expected)
    assert [t for t, c in texts if "cluster-restore.sh" in c] == [recovery]
    assert sum(1 for t, c in texts if t == "api" and "forceRedeploymentReason" in c) == 4
    assert any(t == recovery and c.startswith("sftp put snapshot_") for t, c in texts)
    moved = f"/home/core/backup.before-{done['run_id']}"
    assert f"moved to {moved}" in blocks_text(done)
    assert lab.ssh(recovery, f"sudo ls {moved}").stdout.split() == ["snapshot_2020-01-01_000000.db"]


def test_a_backup_of_another_release_is_refused_after_an_upgrade(lab: Lab, backup_id: str) -> None:
    lab.cli("upgrade", "--to", "4.5.3", "--wait", "--timeout", "150", timeout=180)
    before = host_state(lab)
    answer = refusal(lab, text=f"/etcd-restore {backup_id}")
    assert "OpenShift 4.5.2" in answer and "runs 4.5.3" in answer and "same z-stream" in answer
    assert host_state(lab) == before
