"""`/etcd-replace-member` with the bot SIGKILLed mid-run: after the destructive block (member
removed, secrets and machine deleted), while it waits for the new machine. The restarted bot offers
Resume; Resume finishes the replacement without removing anything twice: the audit trail holds one
run of each destructive step, `member list` has 3 members, and there is one new machine, not two.
The lab clock runs slower here (10x) so the wait for the new machine is long enough to meet."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.e2e import backup_support
from tests.e2e.backup_support import BotProcess, blocks_text, buttons, command, start_bot, workspace
from tests.e2e.replace_support import (
    all_healthy,
    approve_until,
    machine_of,
    machines,
    masters,
    members,
    step_running,
    unhealthy,
    wait_run,
)
from tests.labfixture import Lab

LAB_ARGS = ("--clock-speed", "10")
WAIT_STEP = "A: wait until the new machine goes from Provisioning to Running"
DESTRUCTIVE = ("ch2.stop-etcd-pod", "ch2.remove-member", "ch2.delete-secrets", "ch2.delete-machine")


@pytest.fixture(scope="module")
def bot(lab: Lab) -> Iterator[BotProcess]:
    process = start_bot(lab, ETCDBOT_REPLACE_PODS_GRACE="90")
    try:
        yield process
    finally:
        process.stop()


def audit(lab: Lab, run_id: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(lab.env["ETCDBOT_REDIS_URL"], decode_responses=True)
    try:
        entries = client.xrange("etcdbot:audit:lab")
    finally:
        client.close()
    return [fields for _id, fields in entries if fields.get("run") == run_id]


def test_resume_after_a_sigkill_removes_nothing_twice(lab: Lab, bot: BotProcess) -> None:
    since = command(lab, "/etcd-backup")
    assert backup_support.wait_run(lab, since=since, states=("succeeded", "failed"))["state"] == "succeeded"
    bad, via, _ = masters(lab)
    lab.cli("fault", "stop-machine", bad)
    unhealthy(lab, bad)
    old = next(m for m in members(lab, via) if m["name"] == bad)
    old_machine = machine_of(lab, bad)
    base = old_machine.rsplit("-", 1)[0]

    since = command(lab, f"/etcd-replace-member {bad}")
    started = wait_run(lab, since=since, states=("waiting approval", "running"), timeout=120)
    run_id = started["run_id"]
    approve_until(lab, since=since, run_id=run_id, done=lambda m: step_running(m, WAIT_STEP), interval=0.1)
    bot.kill()
    assert f"{base}-3" in machines(lab) and old_machine not in machines(lab)  # the block was done

    bot.start()
    interrupted = wait_run(lab, since=since, run_id=run_id, states=("interrupted",), timeout=120)
    assert {"Resume", "Abort"} <= set(buttons(interrupted)), blocks_text(interrupted)
    assert "The bot restarted during" in blocks_text(interrupted)
    workspace(lab).press(user="alice", button_text="Resume", message_ts=interrupted["ts"])
    done, _ = approve_until(lab, since=since, run_id=run_id, done=lambda m: m["state"] in ("succeeded", "failed"),
                            timeout=300)
    assert done["state"] == "succeeded", blocks_text(done)

    events = audit(lab, run_id)
    finished = [e["step"] for e in events if e["event"] == "step.finished" and e.get("outcome") == "succeeded"]
    for step in DESTRUCTIVE:
        assert finished.count(step) == 1, (step, finished)
    assert [e for e in events if e["event"] == "run.resumed"]
    assert f"removed member {old['id']}" in blocks_text(done) and "already removed" not in blocks_text(done)
    all_healthy(lab)
    listed = members(lab, via)
    assert len(listed) == 3 and old["id"] not in {m["id"] for m in listed}
    replacements = sorted(n for n in machines(lab) if n.startswith(base + "-") and int(n.rsplit("-", 1)[1]) >= 3)
    assert replacements == [f"{base}-3"], replacements
