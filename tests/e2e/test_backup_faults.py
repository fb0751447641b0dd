"""`/etcd-backup` when things break: a dead etcd member, SSH dropped mid-copy, the bot killed
mid-run. The production bot as a process against a lab; faults injected with the lab's CLI while
the progress message shows the step they must hit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.backup_support import (
    BotProcess,
    blocks_text,
    buttons,
    command,
    fill_etcd,
    host_of,
    no_partial_backups,
    seen,
    start_bot,
    stored_backups,
    wait_run,
    wait_step_running,
    workspace,
)
from tests.labfixture import Lab, wait_for

COPY_RATE = str(2_000_000)  # bytes/s, so the copy of ~10 MB lasts a few seconds
COPY_STEP = "Copy both files off the host"


@pytest.fixture(scope="module")
def bot(lab: Lab) -> Iterator[BotProcess]:
    fill_etcd(lab, megabytes=8)
    process = start_bot(lab, ETCDBOT_BACKUP_COPY_RATE=COPY_RATE)
    try:
        yield process
    finally:
        process.stop()


def planned_master(lab: Lab) -> str:
    """The master a run would pick now, as `--dry-run` names it."""
    since = command(lab, "/etcd-backup --dry-run")
    plan = wait_for(lambda: next((blocks_text(m) for m in seen(lab, since=since) if "Dry run" in m["text"]), None),
                    timeout=30, what="the dry run")
    return plan.split("master=`", 1)[1].split("`", 1)[0]


def test_a_dead_member_is_not_backed_up_from(lab: Lab, bot: BotProcess) -> None:
    first_choice = planned_master(lab)
    lab.cli("fault", "kill-etcd", first_choice)
    try:
        wait_for(lambda: f"{first_choice} is unhealthy" in lab.members_message(), timeout=60,
                 what=f"etcd on {first_choice} reported unhealthy")
        since = command(lab, "/etcd-backup")
        done = wait_run(lab, since=since, states=("succeeded", "failed"))
        assert done["state"] == "succeeded", blocks_text(done)
        assert host_of(done) != first_choice
        assert f"not used: {first_choice}" in blocks_text(done)
    finally:
        lab.cli("heal")
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=90, what="etcd healed")
    no_partial_backups(lab)


def test_ssh_dropped_during_the_copy(lab: Lab, bot: BotProcess) -> None:
    before = stored_backups(lab)
    since = command(lab, "/etcd-backup")
    running = wait_step_running(lab, since=since, step_title=COPY_STEP, note="copying snapshot_")
    host = host_of(running)
    lab.cli("fault", "drop-ssh", host)
    try:
        done = wait_run(lab, since=since, run_id=running["run_id"], states=("succeeded", "failed"), timeout=180)
    finally:
        lab.cli("heal")
    text = blocks_text(done)
    after = stored_backups(lab)  # checks every stored file against its metadata
    new = {k: v for k, v in after.items() if k not in before}
    if done["state"] == "succeeded":  # retried with a fresh connection, from scratch (or the drop
        # came after the last byte): either way the stored files matched the master's sha256
        assert [m["run_id"] for m in new.values()] == [running["run_id"]]
    else:  # or failed, saying why and what to do, with nothing stored
        assert "What went wrong" in text and "What to do next" in text, text
        assert not new
    no_partial_backups(lab)


def test_the_bot_killed_mid_run_offers_resume(lab: Lab, bot: BotProcess) -> None:
    since = command(lab, "/etcd-backup")
    running = wait_step_running(lab, since=since, step_title=COPY_STEP)
    bot.kill()
    bot.start()
    interrupted = wait_run(lab, since=since, run_id=running["run_id"], states=("interrupted",), timeout=90)
    assert {"Resume", "Abort"} <= set(buttons(interrupted)), interrupted
    assert "The bot restarted during" in blocks_text(interrupted)
    workspace(lab).press(user="alice", button_text="Resume", message_ts=interrupted["ts"])
    done = wait_run(lab, since=since, run_id=running["run_id"], states=("succeeded", "failed"), timeout=120)
    assert done["state"] == "succeeded", blocks_text(done)
    assert running["run_id"] in [m["run_id"] for m in stored_backups(lab).values()]
    no_partial_backups(lab)
