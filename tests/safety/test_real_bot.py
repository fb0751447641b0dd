"""The real `etcdbot` (its production composition: settings, services, the generic procedure
command, the approvals with the key derived from the bot's secret) with a destructive test
procedure loaded through ETCDBOT_PROCEDURE_MODULES, on a real redis-server and the lab's Slack:
no approval, nothing runs; the requester's own approval is refused; SIGKILL during the step; the
next bot takes the run over once the lock expired (default TTLs), Resume asks a fresh approval
that the requester alone cannot give, and the step acts exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bot.store import RunState
from tests.labfixture import ROOT
from tests.runner.conftest import ALICE, APP_TOKEN, BOB, BOT_TOKEN, CAROL, action_ids, free_port, until
from tests.safety.test_processes import (
    _noted,
    _state,
    approve,
    open_request,
    run_id,
    run_messages,
    start_run,
    stored,
)

LOCK_TIMEOUT = 15.0


def spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("a") as log:
        return subprocess.Popen([sys.executable, "-m", "bot.main", "run"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


async def ready(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    async def check() -> bool:
        assert proc.poll() is None, f"the bot exited:\n{log_path.read_text()[-3000:]}"
        try:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as r:
                return r.status == 200 and (await r.json())["ready"]
        except (OSError, aiohttp.ClientError):
            return False

    await until(check, timeout=60, what="the bot ready")


async def test_the_real_bot_sigkilled_during_a_destructive_step(redis_server, rds, workspace, slack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    work = tmp_path / "destroy"
    work.mkdir()
    (work / "member").write_text("8e9e05c52164694d\n")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
                          "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                          "current-context: x\n")
    health = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDBOT_")}
    env.update({
        "ETCDBOT_SLACK_BOT_TOKEN": BOT_TOKEN, "ETCDBOT_SLACK_APP_TOKEN": APP_TOKEN,
        "ETCDBOT_SLACK_API_URL": workspace.base_url, "ETCDBOT_REDIS_URL": redis_server.url,
        "ETCDBOT_HEALTH_PORT": str(health), "ETCDBOT_ALLOWED_USERS": json.dumps([ALICE, BOB, CAROL]),
        "ETCDBOT_BACKUP_DIR": str(tmp_path / "backups"), "ETCDBOT_PROCEDURE_MODULES": "tests.safety.destroy_procedure",
        "ETCDBOT_CLUSTERS": json.dumps([{"name": "lab", "kubeconfig": str(kubeconfig), "channels": ["C0INCIDENT"]}]),
        "TEST_DESTROY_DIR": str(work), "ETCDBOT_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
    })
    log_path = tmp_path / "bot.log"
    procs: list[subprocess.Popen[bytes]] = []

    def actions(kind: str, run: str) -> list[list[str]]:
        path = work / "actions"
        lines = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
        return [a for a in lines if a[0] == kind and a[2] == run]

    try:
        procs.append(spawn(env, log_path))
        await ready(procs[0], health, log_path)
        await until(lambda: workspace.socket_connections == 1, timeout=30, what="the bot's Socket Mode")
        run = run_id(await start_run(slack))
        request = await open_request(slack, run, count=1)
        assert request.thread_ts is not None  # threaded under the run's message
        assert "cannot approve" in (await approve(slack, request, "alice"))[0]
        assert actions("begin", run) == []  # no approval: nothing ran
        await approve(slack, request, "bob")
        await until(lambda: actions("begin", run), timeout=30, what="the destructive step to begin")
        await until(lambda: _noted(rds, run, "about to remove the member"), timeout=30, what="its progress on record")
        os.killpg(procs[0].pid, signal.SIGKILL)
        procs[0].wait(timeout=10)
        killed = time.monotonic()

        procs.append(spawn(env, log_path))
        await ready(procs[1], health, log_path)
        dead = f"-{procs[0].pid}-"  # instance ids hold the process id

        async def taken_over() -> bool:
            found = await stored(rds, run)
            return found is not None and found.state is RunState.INTERRUPTED and dead not in found.owner

        await until(taken_over, timeout=90, what="the run taken over by the new bot")
        # not while the dead bot's lock still held: renewed every third of its timeout, it was at most
        # that old when the bot died
        assert time.monotonic() - killed >= LOCK_TIMEOUT - LOCK_TIMEOUT / 3
        message = next(m for m in run_messages(slack) if run_id(m) == run)
        await until(lambda: workspace.socket_connections >= 1, timeout=30, what="the new bot's Socket Mode")
        await until(lambda: "run_resume" in action_ids(slack.workspace.recorder.messages[message.key].blocks),
                    timeout=30, what="the Resume button on the run's message")
        pressed = await slack.press("alice", action_id="run_resume", message_ts=message.ts)
        assert pressed["ok"], pressed
        again = await open_request(slack, run, count=2)
        assert "was running when the bot stopped" in str(again.blocks)
        (work / "go").touch()
        assert "cannot approve" in (await approve(slack, again, "alice"))[0]
        assert actions("harm", run) == []
        await approve(slack, again, "carol")
        await until(lambda: _state(rds, run, RunState.SUCCEEDED), timeout=30, what="the run to succeed")
        [harm] = actions("harm", run)
        assert harm[1] == str(procs[1].pid)  # by the new bot, once
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
    assert "xoxb-" not in log_path.read_text()

