"""Scheduled backups end to end: the production bot as a process against a lab, with
ETCDBOT_BACKUP_SCHEDULE="* * * * *"; nobody types anything, and within the next minute's fire a
verified backup lands in the store and the catalogue with requester "scheduler"."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.e2e.backup_support import (
    BotProcess,
    blocks_text,
    command,
    seen,
    start_bot,
    stored_backups,
    wait_run,
)
from tests.labfixture import Lab, wait_for

DEADLINE = 150.0  # seconds: up to 60 s to the next fire, a backup of the lab takes ~10 s


@pytest.fixture(scope="module")
def bot(lab: Lab) -> Iterator[BotProcess]:
    process = start_bot(lab, ETCDBOT_BACKUP_SCHEDULE="* * * * *")
    try:
        yield process
    finally:
        process.stop()


def test_a_scheduled_backup_lands_in_the_store_and_the_catalogue(lab: Lab, bot: BotProcess) -> None:
    started = time.time()
    stored = wait_for(lambda: {k: m for k, m in stored_backups(lab).items() if m["requester"] == "scheduler"},
                      timeout=DEADLINE, what="a scheduled backup in the store", interval=1.0)
    backup_id, meta = next(iter(stored.items()))
    assert meta["verified"] and meta["version"] == "4.5.2" and meta["revision"] > 0 and meta["started_at"] >= started - 5
    message = wait_run(lab, since=0, run_id=meta["run_id"], states=("succeeded", "failed"), timeout=60)
    assert message["state"] == "succeeded", blocks_text(message)
    assert "started by scheduler" in blocks_text(message)
    assert "peak time" not in " ".join(m["text"] for m in seen(lab, since=0))  # the schedule is not asked about it

    cursor = command(lab, "/etcd-backups")
    listing = wait_for(lambda: next((blocks_text(m) for m in seen(lab, since=cursor) if "Backups of" in m["text"]), None),
                       timeout=30, what="the catalogue")
    assert backup_id in listing
    assert "schedule.added" in bot.log_path.read_text()
