"""`/etcd-restore` when the second person says no, or nobody answers in time: the run ends
before its first destructive command, and nothing has changed on any master (manifests, data
directories, containers). Also: two approvers when the setting asks for two. The production bot
as a process with a short approval expiry, against a lab whose quorum is lost."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.backup_support import BotProcess, blocks_text, buttons, command, start_bot
from tests.e2e.restore_support import (
    approval_request,
    backup,
    commands_of,
    host_state,
    press,
    wait_restore,
)
from tests.labfixture import Lab, wait_for

EXPIRY = 20  # seconds an approval request stays open in this module


@pytest.fixture(scope="module")
def bot(lab: Lab) -> Iterator[BotProcess]:
    process = start_bot(lab, ETCDBOT_APPROVAL_EXPIRY=str(EXPIRY), ETCDBOT_APPROVALS_REQUIRED=json.dumps({"restore": 2}))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def broken(lab: Lab, bot: BotProcess) -> str:
    """A backup, then quorum lost: the incident the restore is for. Returns the backup id."""
    backup_id = backup(lab)
    lab.cli("fault", "lose-quorum")
    wait_for(lambda: lab.kubectl("get", "configmaps", "-n", "demo", check=False, timeout=15).returncode != 0,
             timeout=60, what="the API failing without quorum")
    return backup_id


def _destructive_sent(lab: Lab, run_id: str) -> list[str]:
    return [f"{c.target}: {c.command}" for c in commands_of(lab, run_id)
            if "mv /etc/kubernetes" in c.command or "mv /var/lib/etcd" in c.command or "cluster-restore.sh" in c.command]


def test_rejected_changes_nothing_on_any_host(lab: Lab, broken: str) -> None:
    before = host_state(lab)
    since = command(lab, f"/etcd-restore {broken}")
    run = wait_restore(lab, since=since, states=("waiting approval",), timeout=120)
    request = approval_request(lab, run=run, since=since)
    assert "2 approvals" in blocks_text(request)
    press(lab, user="bob", action_id="approval_reject", message=request)
    done = wait_restore(lab, since=since, run_id=run["run_id"], states=("failed", "aborted", "succeeded"), timeout=60)
    assert done["state"] in ("failed", "aborted"), blocks_text(done)
    assert _destructive_sent(lab, run["run_id"]) == []
    assert host_state(lab) == before


def test_an_expired_approval_changes_nothing_on_any_host(lab: Lab, broken: str) -> None:
    before = host_state(lab)
    since = command(lab, f"/etcd-restore {broken}")
    run = wait_restore(lab, since=since, states=("waiting approval",), timeout=120)
    request = approval_request(lab, run=run, since=since)
    press(lab, user="bob", action_id="approval_approve", message=request)  # one of the two it needs
    done = wait_restore(lab, since=since, run_id=run["run_id"], states=("failed", "aborted", "succeeded"),
                        timeout=EXPIRY + 60)
    assert done["state"] == "failed", blocks_text(done)
    assert "approval" in blocks_text(done)
    assert _destructive_sent(lab, run["run_id"]) == []
    assert host_state(lab) == before
    closed = approval_request(lab, run=run, since=since, open_only=False)  # the same request, as it reads now
    assert closed["ts"] == request["ts"] and "Approve" not in buttons(closed) and "Expired" in blocks_text(closed)
