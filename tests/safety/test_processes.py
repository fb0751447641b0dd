"""The safety core with real processes: bot processes (the production runner, approvals, locks
and store in `tests/safety/harness.py`) on one real redis-server, people in the lab's Slack
workspace, and signals: SIGSTOP shorter and longer than the lock's TTL, redis-server killed and
started again without its data, SIGKILL during a destructive step, a truncated record at start.

What the tests count is the destructive step's action file: "begin" when its run() was entered,
"harm" when it acted, after `ctx.fence()`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bot.approvals import request_key
from bot.locks import lock_value
from bot.store import Run, RunState, RunStore, StepState
from tests.labfixture import ROOT
from tests.runner.conftest import ALICE, APP_TOKEN, BOT_TOKEN, action_ids, blocks_text, free_port, until
from tests.safety.conftest import Harness, Slack

LOCK_TTL = 6.0
PRESENCE_TTL = 1.0


def run_messages(slack: Slack) -> list[Any]:
    return [m for m in slack.messages() if m.thread_ts is None and "Remove an etcd member (test)" in m.text]


def run_id(message: Any) -> str:
    found = re.search(r"Run `([0-9a-f]+)`", blocks_text(message.blocks))
    assert found, blocks_text(message.blocks)
    return found.group(1)


async def start_run(slack: Slack, text: str = "/etcd-test-destroy") -> Any:
    before = len(run_messages(slack))
    await slack.command("alice", text)
    return await until(lambda: run_messages(slack)[before] if len(run_messages(slack)) > before else None,
                       timeout=60, what="the run's message")


def requests(slack: Slack, run: str) -> list[Any]:
    return [m for m in slack.messages() if "Approval needed" in blocks_text(m.blocks) and f"run `{run}`" in blocks_text(m.blocks)]


async def open_request(slack: Slack, run: str, *, count: int) -> Any:
    def check() -> Any:
        found = requests(slack, run)
        if len(found) >= count and "approval_approve" in action_ids(found[count - 1].blocks):
            return found[count - 1]
        return None
    return await until(check, timeout=30, what=f"approval request #{count} of run {run}")


async def stored(rds: aioredis.Redis, run: str) -> Run | None:
    return await RunStore(redis=rds).load(run)


def lines(harness: Harness, kind: str, run: str) -> list[list[str]]:
    return [a for a in harness.actions() if a[0] == kind and a[2] == run]


async def approve(slack: Slack, request: Any, user: str) -> list[str]:
    pressed = await slack.press(user, action_id="approval_approve", message_ts=request.ts)
    assert pressed["ok"], pressed
    return await until(lambda: slack.ephemeral(user, since=pressed["cursor"]), timeout=30, what=f"{user}'s answer")


async def test_two_bots_stopped_shorter_then_longer_than_the_lock_ttl(harness, slack, rds, workspace) -> None:  # type: ignore[no-untyped-def]
    settings = {"lock_ttl": LOCK_TTL, "presence_ttl": PRESENCE_TTL}
    await harness.bot("second", **settings).ready()  # connected first: deliveries go to the newest
    await until(lambda: workspace.socket_connections == 1, what="second's Socket Mode")
    first = await harness.bot("first", **settings).ready()
    await until(lambda: workspace.socket_connections == 2, what="first's Socket Mode")

    # 1. Stopped longer than its presence TTL, shorter than its lock's: nobody adopts the run.
    one = run_id(await start_run(slack))
    assert (await stored(rds, one)).owner == "first"
    await approve(slack, await open_request(slack, one, count=1), "bob")
    await until(lambda: lines(harness, "begin", one), timeout=30, what="the destructive step to begin")
    first.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    await until(lambda: _gone(rds, "etcdbot:instance:first"), timeout=10, what="first's presence to expire")
    watched_until = time.monotonic() + 1.0
    while time.monotonic() < watched_until:  # second's recovery runs every 0.3 s meanwhile
        run = await stored(rds, one)
        assert run is not None and run.owner == "first" and run.state is RunState.RUNNING, run
        await asyncio.sleep(0.1)  # the polling interval (the workspace runs in this loop)
    assert time.monotonic() - stopped < LOCK_TTL - LOCK_TTL / 3  # the lock cannot have expired yet
    first.signal(signal.SIGCONT)
    harness.go()
    await until(lambda: _state(rds, one, RunState.SUCCEEDED), timeout=30, what="run one to succeed")
    assert [a[1] for a in lines(harness, "harm", one)] == ["first"]

    # 2. Stopped longer than the lock TTL: the second adopts; the first, continued, acts no more.
    harness.hold()
    two = run_id(await start_run(slack))
    await approve(slack, await open_request(slack, two, count=1), "bob")
    await until(lambda: lines(harness, "begin", two), timeout=30, what="the destructive step to begin")
    token = (await lock_value(rds, cluster="lab")).token
    first.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    adopted = await until(lambda: _owned(rds, two, "second"), timeout=LOCK_TTL * 3, what="second to adopt run two")
    assert time.monotonic() - stopped >= LOCK_TTL - LOCK_TTL / 3 - 0.5  # only once the lock could expire
    assert adopted.state is RunState.INTERRUPTED and adopted.step("destroy").state is StepState.INTERRUPTED
    assert (await lock_value(rds, cluster="lab")).token > token
    harness.go()  # the first's step would act the moment it runs again
    first.signal(signal.SIGCONT)
    said = await until(lambda: [m for m in slack.messages() if m.thread_ts and "lost run" in m.text and two in m.text],
                       timeout=30, what="the first to say it lost the run")
    assert "`first`" in said[0].text and f"fencing token {token}" in said[0].text
    assert lines(harness, "harm", two) == []
    assert (await stored(rds, two)).owner == "second"
    await first.stop()
    await until(lambda: workspace.socket_connections == 1, what="first's connection closed")

    # Resume on the second asks a fresh approval; alice alone cannot run it again.
    message = next(m for m in run_messages(slack) if run_id(m) == two)
    await until(lambda: "run_resume" in action_ids(slack.workspace.recorder.messages[message.key].blocks),
                timeout=30, what="the Resume button on the run's message")
    pressed = await slack.press("alice", action_id="run_resume", message_ts=message.ts)
    assert pressed["ok"], pressed
    request = await open_request(slack, two, count=2)
    assert "was running when the bot stopped" in blocks_text(request.blocks)
    refused = await approve(slack, request, "alice")
    assert "cannot approve" in refused[0] and lines(harness, "harm", two) == []
    await approve(slack, request, "carol")
    await until(lambda: _state(rds, two, RunState.SUCCEEDED), timeout=30, what="run two to succeed")
    assert [a[1] for a in lines(harness, "harm", two)] == ["second"]


async def test_redis_killed_and_restarted_empty_mid_step(harness, slack, rds, redis_server) -> None:  # type: ignore[no-untyped-def]
    lock_ttl = 3.0
    one = await harness.bot("one", lock_ttl=lock_ttl, presence_ttl=PRESENCE_TTL).ready()
    run = run_id(await start_run(slack))
    await approve(slack, await open_request(slack, run, count=1), "bob")
    await until(lambda: lines(harness, "begin", run), timeout=30, what="the destructive step to begin")
    redis_server.kill()
    redis_server.start()  # without its data: no run, no lock, no approval
    restarted = time.monotonic()
    interrupted = await until(lambda: _state(rds, run, RunState.INTERRUPTED), timeout=lock_ttl * 3,
                              what="the step cancelled and the run written down again, interrupted")
    assert time.monotonic() - restarted <= lock_ttl / 3 + 2.0  # within the renewal interval (and a margin)
    assert interrupted.step("destroy").state is StepState.INTERRUPTED and "lost the lock" in interrupted.error
    assert "lock.lost" in one.log()
    harness.go()
    # The bot keeps serving: /etcd-runs answers (from the new, nearly empty audit stream).
    sent = await slack.command("alice", "/etcd-runs")
    answer = await until(lambda: slack.ephemeral("alice", since=sent["cursor"]), timeout=30, what="/etcd-runs")
    assert answer == ["Recent runs on lab"]
    assert lines(harness, "harm", run) == []  # the cancelled step acted no more, though "go" is there

    # And restarts cleanly: a new process finds the interrupted run and offers Resume / Abort.
    await one.stop()
    assert "Traceback" not in one.log()
    await harness.bot("two", lock_ttl=lock_ttl, presence_ttl=PRESENCE_TTL).ready()
    adopted = await until(lambda: _owned(rds, run, "two"), timeout=30, what="the restarted bot to take the run over")
    assert adopted.state is RunState.INTERRUPTED
    assert lines(harness, "harm", run) == []


async def test_sigkill_during_the_destructive_step_then_resume(harness, slack, rds) -> None:  # type: ignore[no-untyped-def]
    lock_ttl = 3.0
    one = await harness.bot("one", lock_ttl=lock_ttl, presence_ttl=PRESENCE_TTL).ready()
    run = run_id(await start_run(slack))
    first_request = await open_request(slack, run, count=1)
    assert "cannot approve" in (await approve(slack, first_request, "alice"))[0]  # her own approval is refused
    assert "Only @etcd-approvers" in (await approve(slack, first_request, "dave"))[0]
    assert lines(harness, "begin", run) == []  # no approval: nothing ran
    await approve(slack, first_request, "bob")
    await until(lambda: lines(harness, "begin", run), timeout=30, what="the destructive step to begin")
    await until(lambda: _noted(rds, run, "about to remove the member"), timeout=30, what="its progress on record")
    await one.kill()

    await harness.bot("two", lock_ttl=lock_ttl, presence_ttl=PRESENCE_TTL).ready()
    await until(lambda: _owned(rds, run, "two"), timeout=30, what="the run interrupted and taken over")
    message = next(m for m in run_messages(slack) if run_id(m) == run)
    await until(lambda: "fresh approval" in blocks_text(slack.workspace.recorder.messages[message.key].blocks),
                timeout=30, what="the run's message to say Resume asks a fresh approval")
    pressed = await slack.press("alice", action_id="run_resume", message_ts=message.ts)
    assert pressed["ok"], pressed
    resumed = await until(lambda: slack.ephemeral("alice", since=pressed["cursor"]), timeout=30, what="alice's answer")
    assert "fresh approval" in resumed[0]
    request = await open_request(slack, run, count=2)
    text = blocks_text(request.blocks)
    assert "was running when the bot stopped" in text and "about to remove the member" in text
    harness.go()
    assert "cannot approve" in (await approve(slack, request, "alice"))[0]  # the requester alone cannot run it
    assert lines(harness, "harm", run) == [] and len(lines(harness, "begin", run)) == 1
    await approve(slack, request, "bob")
    await until(lambda: _state(rds, run, RunState.SUCCEEDED), timeout=30, what="the run to succeed")
    assert [a[1] for a in lines(harness, "harm", run)] == ["two"]


async def test_a_truncated_record_does_not_stop_the_real_bot_from_starting(redis_server, rds, workspace, slack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await rds.hset("etcdbot:run:dead0001", mapping={"run": '{"id": "dead0001", "clus', "owner": "gone"})
    await rds.sadd("etcdbot:runs:live", "dead0001")
    await rds.hset("etcdbot:approval:0123456789abcdef", "request", '{"payload": {"id": "0123')
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
                          "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                          "current-context: x\n")
    health = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDBOT_")}
    env.update({
        "ETCDBOT_SLACK_BOT_TOKEN": BOT_TOKEN, "ETCDBOT_SLACK_APP_TOKEN": APP_TOKEN,
        "ETCDBOT_SLACK_API_URL": workspace.base_url, "ETCDBOT_REDIS_URL": redis_server.url,
        "ETCDBOT_HEALTH_PORT": str(health), "ETCDBOT_ALLOWED_USERS": json.dumps([ALICE]),
        "ETCDBOT_BACKUP_DIR": str(tmp_path / "backups"),
        "ETCDBOT_CLUSTERS": json.dumps([{"name": "lab", "kubeconfig": str(kubeconfig), "channels": ["C0INCIDENT"]}]),
    })
    log_path = tmp_path / "bot.log"
    proc = spawn_etcdbot(env, log_path)
    try:
        async def ready() -> bool:
            assert proc.poll() is None, f"the bot exited:\n{log_path.read_text()[-3000:]}"
            try:
                import aiohttp
                async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{health}/readyz") as r:
                    return r.status == 200 and (await r.json())["ready"]
            except OSError:
                return False
            except aiohttp.ClientError:
                return False

        await until(ready, timeout=60, what="the bot ready despite a truncated record")
        await until(lambda: "record.quarantined" in log_path.read_text(), timeout=30, what="the quarantine in the log")
        assert not await rds.exists("etcdbot:run:dead0001") and not await rds.sismember("etcdbot:runs:live", "dead0001")
        aside = [k async for k in rds.scan_iter(match="etcdbot:quarantine:run:dead0001:*")]
        assert len(aside) == 1 and (await rds.hget(aside[0], "run")).startswith(b'{"id": "dead0001"')
        events = await rds.xrange("etcdbot:audit:-")
        assert any(f[b"event"] == b"record.quarantined" and f[b"run"] == b"dead0001" for _, f in events)
        await until(lambda: workspace.socket_connections >= 1, timeout=30, what="the bot's Socket Mode")
        sent = await slack.command("alice", "/etcd-runs lab")
        await until(lambda: slack.ephemeral("alice", since=sent["cursor"]), timeout=30, what="/etcd-runs")
        view = await slack.call("GET", "view", params={"user": "alice", "since": str(sent["cursor"])})
        assert "dead0001" in json.dumps(view["messages"]) and "moved aside" in json.dumps(view["messages"])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
    assert "xoxb-" not in log_path.read_text()


def spawn_etcdbot(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """The real bot: `etcdbot run`, settings from the environment."""
    with log_path.open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "bot.main", "run"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


async def _gone(rds: aioredis.Redis, key: str) -> bool:
    return not await rds.exists(key)


async def _state(rds: aioredis.Redis, run: str, state: RunState) -> Run | None:
    found = await stored(rds, run)
    return found if found is not None and found.state is state else None


async def _owned(rds: aioredis.Redis, run: str, owner: str) -> Run | None:
    found = await stored(rds, run)
    return found if found is not None and found.owner == owner and found.state is RunState.INTERRUPTED else None



async def test_two_approvers_at_once_make_one_decision_and_a_forged_one_counts_for_nothing(harness, slack, rds) -> None:  # type: ignore[no-untyped-def]
    await harness.bot("one").ready()
    harness.go()
    run = run_id(await start_run(slack))
    request = await open_request(slack, run, count=1)
    value = json.loads(next(e["value"] for b in request.blocks if b["type"] == "actions" for e in b["elements"]
                            if e["action_id"] == "approval_approve"))
    key = f"etcdbot:approval:{value['req']}"
    forged = {"request_id": value["req"], "run_id": run, "digest": value["digest"], "outcome": "approved",
              "by": "U0CAROL01", "at": time.time()}
    await rds.hset(key, "d:approve:U0CAROL01", json.dumps(forged))  # written straight into Redis, no HMAC
    await rds.rpush(f"{key}:notify", "d:approve:U0CAROL01")
    await until(lambda: _quarantined(rds, "decision"), timeout=30, what="the forged decision refused")
    assert lines(harness, "begin", run) == [] and not await rds.hexists(key, "d:approve:U0CAROL01")
    async def audited() -> list[bytes]:
        return [f[b"reason"] for _, f in await rds.xrange("etcdbot:audit:lab") if f[b"event"] == b"record.quarantined"]

    [reason] = await until(audited, timeout=30, what="the refusal in the audit stream")
    assert b"not a signed record" in reason

    answers = await asyncio.gather(approve(slack, request, "bob"), approve(slack, request, "carol"))
    texts = sorted(a[0] for a in answers)
    assert len([t for t in texts if t.startswith("Approved")]) == 1, texts
    assert len([t for t in texts if t.startswith("Already approved")]) == 1, texts
    assert len([f for f in await rds.hkeys(key) if f.startswith(b"d:")]) == 1
    await until(lambda: _state(rds, run, RunState.SUCCEEDED), timeout=30, what="the run to succeed")
    assert len(lines(harness, "harm", run)) == 1


async def test_with_two_approvals_required_one_is_not_enough(harness, slack, rds) -> None:  # type: ignore[no-untyped-def]
    await harness.bot("one", required={"test-destroy": 2}).ready()
    harness.go()
    run = run_id(await start_run(slack))
    request = await open_request(slack, run, count=1)
    assert "2 approvals" in blocks_text(request.blocks)
    assert (await approve(slack, request, "bob"))[0].startswith("Approved (1 of 2)")
    assert "already approved" in (await approve(slack, request, "bob"))[0]
    assert "cannot approve" in (await approve(slack, request, "alice"))[0]
    await until(lambda: "(1 of 2)" in blocks_text(slack.workspace.recorder.messages[request.key].blocks),
                timeout=30, what="1 of 2 shown")
    assert lines(harness, "begin", run) == [] and (await stored(rds, run)).state is RunState.WAITING_APPROVAL
    await approve(slack, request, "carol")
    done = await until(lambda: _state(rds, run, RunState.SUCCEEDED), timeout=30, what="the run to succeed")
    assert sorted(done.step("destroy").approved_by.split(",")) == ["U0BOB0001", "U0CAROL01"]
    assert len(lines(harness, "harm", run)) == 1


async def test_an_approval_that_expires_between_press_and_start_is_asked_again(harness, slack, rds) -> None:  # type: ignore[no-untyped-def]
    """bob approves the group (stop, then destroy) in time; the stop step takes longer than the
    approval lives, so the destroy step, checked as it starts, finds the approval expired: nothing
    is removed, a new approval is asked, and carol's approval removes the member once."""
    harness.hold_stop()
    harness.go()
    await harness.bot("one", expiry=4).ready()
    run = run_id(await start_run(slack))
    first = await open_request(slack, run, count=1)
    await approve(slack, first, "bob")
    await until(lambda: lines(harness, "stop", run), timeout=30, what="the group's first step to start")
    request_id = json.loads(next(e["value"] for b in first.blocks if b["type"] == "actions" for e in b["elements"]
                                 if e["action_id"] == "approval_approve"))["req"]
    expires_at = json.loads(await rds.hget(request_key(request_id), "request"))["payload"]["expires_at"]
    await until(lambda: time.time() > expires_at + 0.5, timeout=30, what="the approval to expire")
    harness.hold_stop(False)
    second = await open_request(slack, run, count=2)
    assert "expired" in blocks_text(second.blocks) and "Remove the member" in blocks_text(second.blocks)
    assert lines(harness, "begin", run) == []  # the expired approval let nothing run
    await approve(slack, second, "carol")
    done = await until(lambda: _state(rds, run, RunState.SUCCEEDED), timeout=30, what="the run to succeed")
    assert len(lines(harness, "harm", run)) == 1 and len(lines(harness, "stop", run)) == 1
    assert done.step("destroy").approved_by == "U0CAROL01" and done.step("stop").approved_by == "U0BOB0001"


async def _noted(rds: aioredis.Redis, run: str, note: str) -> bool:
    found = await stored(rds, run)
    return found is not None and found.step("destroy").note == note


async def _quarantined(rds: aioredis.Redis, kind: str) -> bool:
    return any(json.loads(raw)["kind"] == kind for raw in await rds.zrange("etcdbot:quarantine", 0, -1))
