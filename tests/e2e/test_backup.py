"""`/etcd-backup` end to end: the production bot as a process against a lab 48 h after install,
driven as people drive it in the lab's Slack workspace. Ends with the document's restore (5.3) by
hand from the files the bot stored: the backup brings back what it held."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.backup_support import (
    BotProcess,
    blocks_text,
    buttons,
    command,
    fill_etcd,
    host_of,
    no_partial_backups,
    run_message,
    seen,
    start_bot,
    stored_backups,
    wait_run,
    workspace,
)
from tests.labfixture import Lab, wait_for

COPY_RATE = str(2_000_000)  # bytes/s: a copy of a few MB lasts seconds, long enough to meet it running


@pytest.fixture(scope="module")
def bot(lab: Lab) -> Iterator[BotProcess]:
    process = start_bot(lab, ETCDBOT_BACKUP_COPY_RATE=COPY_RATE)
    try:
        yield process
    finally:
        process.stop()
        assert "xoxb-" not in process.log_path.read_text(), "a token reached the bot's log"


@pytest.fixture(scope="module")
def first_backup(lab: Lab, bot: BotProcess) -> dict:
    """alice's backup, with a configmap made just before it (the restore must bring it back)."""
    lab.kubectl("create", "configmap", "made-before-backup", "-n", "demo", "--from-literal=a=b")
    since = command(lab, "/etcd-backup")
    done = wait_run(lab, since=since, states=("succeeded", "failed"))
    return {"since": since, "message": done}


def test_backup_by_alice(lab: Lab, first_backup: dict) -> None:
    message = first_backup["message"]
    text = blocks_text(message)
    assert message["state"] == "succeeded", text
    assert text.count(":white_check_mark: *") == 9, text  # the run, the document's 6 steps, the drill, retention
    host = host_of(message)
    stored = stored_backups(lab)
    assert len(stored) == 1
    (backup_id, meta), = stored.items()
    assert meta["host"] == host and meta["version"] == "4.5.2" and meta["verified"] and meta["revision"] > 0
    assert meta["drill"]["ok"] and meta["drill"]["revision"] == meta["revision"] and meta["drill"]["seconds"] > 0
    assert meta["run_id"] == message["run_id"] and meta["requester"].startswith("U")
    assert f"backup `{backup_id}`" in text
    assert lab.ssh(host, f"sudo ls /home/core/assets/backup/{message['run_id']} 2>&1 || true").stdout.count("No such") == 1
    no_partial_backups(lab)

    cursor = command(lab, "/etcd-backups")
    listing = wait_for(lambda: next((blocks_text(m) for m in seen(lab, since=cursor) if "Backups of" in m["text"]), None),
                       timeout=30, what="the catalogue")
    row = next(line for line in listing.splitlines() if line.startswith(backup_id))
    assert re.search(rf"{backup_id}\s+\S+ \S+\s+\S+ \S+\s+4\.5\.2\s+.+\s+{meta['revision']}\s+yes \(\d+ s\)", row), row


def test_a_second_procedure_is_refused_while_the_first_holds_the_lock(lab: Lab, bot: BotProcess,
                                                                     first_backup: dict) -> None:
    fill_etcd(lab, megabytes=6)  # ~8 MB to copy at 2 MB/s: the first run holds the lock for seconds
    since = command(lab, "/etcd-backup", user="alice")
    command(lab, "/etcd-backup", user="bob")
    first = wait_for(lambda: run_message(lab, since=since), timeout=30, what="the first run's message")

    def busy_answer() -> tuple[str, str] | None:
        # Both commands are in flight at once: whichever took the lock runs, the other is told.
        for user in ("alice", "bob"):
            for message in seen(lab, since=since, user=user):
                if "is busy" in message["text"]:
                    return user, message["text"]
        return None

    refused_user, busy = wait_for(busy_answer, timeout=30, what="the busy answer to the second command")
    winner = {"alice": "U0BOB0001", "bob": "U0ALICE01"}[refused_user]
    assert f"run `{first['run_id']}`" in busy and "Backing up etcd data" in busy and "/etcd-abort" in busy
    assert f"started by <@{winner}>" in busy, busy
    done = wait_run(lab, since=since, run_id=first["run_id"], states=("succeeded", "failed"))
    assert done["state"] == "succeeded", blocks_text(done)
    runs = [m for m in seen(lab, since=since) if m.get("text", "").startswith("Backing up etcd data on lab:")]
    assert len(runs) == 1, [m["text"] for m in runs]  # the second never started
    assert len(stored_backups(lab)) == 2
    no_partial_backups(lab)


def test_peak_hours_warn_with_a_button_to_go_on(lab: Lab, bot: BotProcess, first_backup: dict) -> None:
    since = command(lab, "/etcd-backup lab-peak")
    warning = wait_for(lambda: next((m for m in seen(lab, since=since) if "peak time" in m["text"]), None),
                       timeout=30, what="the peak-hours warning")
    assert "Back up anyway" in buttons(warning), warning
    assert run_message(lab, since=since) is None  # nothing started yet
    pressed = workspace(lab).press(user="alice", button_text="Back up anyway", channel="incident")
    done = wait_run(lab, since=int(pressed["cursor"]), cluster="lab-peak", states=("succeeded", "failed"))
    assert done["state"] == "succeeded", blocks_text(done)
    assert len(stored_backups(lab, "lab-peak")) == 1


def test_the_bots_backup_restores_what_it_held(lab: Lab, first_backup: dict) -> None:
    """Chapter 5.3 by hand (as tests/lab/test_lab_backup_restore.py) from the files the bot stored."""
    (meta,) = [m for m in stored_backups(lab).values() if m["run_id"] == first_backup["message"]["run_id"]]
    lab.kubectl("create", "configmap", "made-after-backup", "-n", "demo", "--from-literal=a=b")
    lab.kubectl("delete", "configmap", "made-before-backup", "-n", "demo")
    recovery = lab.masters[0]
    lab.ssh(recovery, "mkdir -p /home/core/backup")
    for item in meta["files"]:
        scp = ["scp", "-F", lab.env["LAB_SSH_CONFIG"], "-q", item["path"], f"core@{recovery}:/home/core/backup/"]
        subprocess.run(scp, check=True, timeout=60, stdin=subprocess.DEVNULL)
        name = Path(item["path"]).name
        assert lab.ssh(recovery, f"sha256sum /home/core/backup/{name}").stdout.split()[0] == item["sha256"]
    lab.restore_by_hand(recovery=recovery)
    configmaps = lab.kubectl("get", "configmaps", "-n", "demo").stdout
    assert "made-before-backup" in configmaps and "payments-config" in configmaps
    assert "made-after-backup" not in configmaps
