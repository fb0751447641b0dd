"""`/etcd-replace-member`, variant A (document 2.4: machine not running, node not ready), end to end:
the production bot as a process against a lab, driven as people drive it in the lab's Slack
workspace. alice asks; the store holds no backup, so the bot warns and offers *Back up, then
replace*; alice's own press on Approve is refused; bob approves the one destructive block; the
cluster ends with 3 healthy members, a new machine with the next index and the new node's secrets.
The second replacement (node not ready) finds the first one's backup recent and goes straight on.
The third is SIGKILLed while it waits for the new machine: the restarted bot offers Resume, which
finishes without removing anything twice (the audit trail holds one run of each destructive step,
and there is one new machine, not two)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.e2e.backup_support import (
    BotProcess,
    blocks_text,
    buttons,
    command,
    seen,
    start_bot,
    stored_backups,
    workspace,
)
from tests.e2e.replace_support import (
    all_healthy,
    answer,
    approve_until,
    approve_until_done,
    healthy_cluster,
    machine_of,
    machines,
    masters,
    members,
    open_requests,
    press_approve,
    run_message,
    secrets,
    snapshot,
    step_running,
    unhealthy,
    wait_run,
)
from tests.labfixture import Lab, wait_for

LAB_ARGS = ("--clock-speed", "30")
WAIT_STEP = "A: wait until the new machine goes from Provisioning to Running"
DESTRUCTIVE = ("ch2.stop-etcd-pod", "ch2.remove-member", "ch2.delete-secrets", "ch2.delete-machine")


@pytest.fixture(scope="module")
def bot(lab: Lab) -> Iterator[BotProcess]:
    process = start_bot(lab, ETCDBOT_REPLACE_PODS_GRACE="60")
    try:
        yield process
    finally:
        process.stop()
        assert "xoxb-" not in process.log_path.read_text(), "a token reached the bot's log"


def check_replaced(lab: Lab, *, bad: str, via: str, old_id: str, old_machine: str, new_machine: str) -> str:
    """What a person checks after 2.4: 3 healthy members, the old ID gone, the new machine Running
    as a new node, the new node's 3 secrets, the old node's gone. Returns the new node."""
    all_healthy(lab)
    listed = members(lab, via)
    assert len(listed) == 3 and old_id not in {m["id"] for m in listed} and bad not in {m["name"] for m in listed}
    assert wait_for(lambda: healthy_cluster(lab, via), timeout=60, what="endpoint health --cluster")
    found = machines(lab)
    assert old_machine not in found and found[new_machine]["status"]["phase"] == "Running"
    new_node = found[new_machine]["status"]["nodeRef"]["name"]
    assert new_node in {m["name"] for m in listed} and new_node in masters(lab)
    now = secrets(lab)
    for kind in ("etcd-peer", "etcd-serving", "etcd-serving-metrics"):
        assert f"{kind}-{new_node}" in now and f"{kind}-{bad}" not in now
    return new_node


def test_stopped_machine_after_the_backup_button(lab: Lab, bot: BotProcess) -> None:
    bad, via, _ = masters(lab)
    lab.cli("fault", "stop-machine", bad)
    unhealthy(lab, bad)
    old = next(m for m in members(lab, via) if m["name"] == bad)
    old_machine = machine_of(lab, bad)
    new_machine = old_machine.rsplit("-", 1)[0] + "-3"
    before = snapshot(lab, via)

    # --dry-run: every command, nothing changed.
    since = command(lab, f"/etcd-replace-member {bad} --dry-run")
    plan = wait_for(lambda: next((m for m in seen(lab, since=since) if m.get("text", "").startswith("Dry run")), None),
                    timeout=60, what="the dry run's plan")
    text = blocks_text(plan)
    for expected in (f"etcdctl member remove {old['id']}", old["peer"][0], f"oc delete secret -n openshift-etcd "
                     f"etcd-serving-metrics-{bad}", f"oc delete machine -n openshift-machine-api {old_machine}",
                     new_machine, "cluster-backup.sh", "variant=`A`"):
        assert expected in text, (expected, text)
    assert "Back up, then replace" in answer(lab, since=since, contains="no verified backup")["text"]

    # No recent backup: a warning with a button, and nothing changed until it is pressed.
    since = command(lab, f"/etcd-replace-member {bad}")
    warning = answer(lab, since=since, contains="no verified backup")
    assert buttons(warning) == ["Back up, then replace"] and "document says to take an etcd backup" in warning["text"]
    assert run_message(lab, since=since) is None and not stored_backups(lab)
    assert snapshot(lab, via) == before

    pressed = workspace(lab).press(user="alice", button_text="Back up, then replace", channel="incident")
    started = wait_run(lab, since=int(pressed["cursor"]), states=("waiting approval",), timeout=120)
    run_id = started["run_id"]
    (backup_id, meta), = stored_backups(lab).items()
    assert meta["run_id"] == run_id and meta["version"] == "4.5.2"
    assert f"took backup `{backup_id}`" in blocks_text(started)

    # One approval for the destructive block, naming the member, its peer URL, secrets, machines.
    request = wait_for(lambda: (open_requests(lab, run_id=run_id) or [None])[0], timeout=60, what="the request")
    shown = blocks_text(request)
    for expected in (f"etcdctl member remove {old['id']}", bad, old["peer"][0], f"etcd-peer-{bad}",
                     f"etcd-serving-{bad}", f"etcd-serving-metrics-{bad}", old_machine, new_machine):
        assert expected in shown, (expected, shown)
    assert "You started this run" in press_approve(lab, request, user="alice")
    assert snapshot(lab, via) == before  # the requester's own approval changes nothing

    done, approved = approve_until_done(lab, since=int(pressed["cursor"]), run_id=run_id, user="bob")
    assert done["state"] == "succeeded", blocks_text(done)
    assert len(approved) == 1  # one approval for the whole destructive block (approval_group)
    check_replaced(lab, bad=bad, via=via, old_id=old["id"], old_machine=old_machine, new_machine=new_machine)
    final = blocks_text(done)
    assert f"removed member {old['id']}" in final and f"created machine {new_machine}" in final


def test_node_not_ready_with_the_recent_backup(lab: Lab, bot: BotProcess) -> None:
    originals = [n for n in masters(lab) if n in lab.masters]
    bad, via = originals[0], originals[1]
    lab.cli("fault", "node-notready", bad)
    unhealthy(lab, bad)
    old = next(m for m in members(lab, via) if m["name"] == bad)
    old_machine = machine_of(lab, bad)
    new_machine = old_machine.rsplit("-", 1)[0] + "-4"  # -3 is the first test's
    backups_before = set(stored_backups(lab))

    since = command(lab, f"/etcd-replace-member {bad}")
    started = wait_run(lab, since=since, states=("waiting approval",), timeout=120)
    assert "recent enough, none taken" in blocks_text(started)
    done, _ = approve_until_done(lab, since=since, run_id=started["run_id"], user="carol")
    assert done["state"] == "succeeded", blocks_text(done)
    assert set(stored_backups(lab)) == backups_before
    check_replaced(lab, bad=bad, via=via, old_id=old["id"], old_machine=old_machine, new_machine=new_machine)


def audit(lab: Lab, run_id: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(lab.env["ETCDBOT_REDIS_URL"], decode_responses=True)
    try:
        entries = client.xrange("etcdbot:audit:lab")
    finally:
        client.close()
    return [fields for _id, fields in entries if fields.get("run") == run_id]


def test_sigkill_mid_run_then_resume_removes_nothing_twice(lab: Lab, bot: BotProcess) -> None:
    via, bad = masters(lab)[0], masters(lab)[-1]  # the backup of the first test is still recent
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
    assert old_machine not in machines(lab)  # the destructive block was done before the kill

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
    assert sum(1 for n in machines(lab) if n.startswith(base + "-")) == 3  # one new machine, not two
