"""Fixtures for the safety tests with real processes: a redis-server the test may kill and start
again (empty), the lab's Slack workspace in the test's event loop, and bot processes
(`tests/safety/harness.py`) the test may SIGSTOP, SIGCONT, SIGKILL or stop. Every process started
here is stopped here; waiting is on conditions with deadlines, never on the event loop's back
(the workspace runs in it)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from lab.slack import SlackWorkspace
from tests.labfixture import ROOT
from tests.redis_server import RedisServer
from tests.runner.conftest import APP_TOKEN, BOT_TOKEN, free_port, until, workspace  # noqa: F401 (fixture)

CHANNEL = "C0INCIDENT"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def rds(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@dataclass
class BotProcess:
    """One harness bot process."""

    instance: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[str] | None = None

    def start(self) -> BotProcess:
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.safety.harness"], cwd=ROOT, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        return self

    async def ready(self, *, timeout: float = 60) -> BotProcess:
        def check() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"harness {self.instance} exited:\n{self.log()[-3000:]}"
            return "harness.ready" in self.log()
        await until(check, timeout=timeout, what=f"harness {self.instance} ready")
        return self

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    async def stop(self, *, timeout: float = 20) -> None:
        """SIGTERM (SIGCONT first, in case it is stopped), SIGKILL past the deadline."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    async def kill(self) -> None:
        proc, self.proc = self.proc, None
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        while proc.poll() is None:
            await asyncio.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@dataclass
class Harness:
    redis: RedisServer
    workspace: SlackWorkspace
    workdir: Path
    bots: list[BotProcess] = field(default_factory=list)

    def bot(self, instance: str, **settings: Any) -> BotProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDBOT_", "HARNESS_"))}
        env.update({
            "HARNESS_REDIS_URL": self.redis.url, "HARNESS_SLACK_URL": self.workspace.base_url,
            "HARNESS_BOT_TOKEN": BOT_TOKEN, "HARNESS_APP_TOKEN": APP_TOKEN, "HARNESS_INSTANCE": instance,
            "HARNESS_DIR": str(self.workdir),
        })
        env.update({f"HARNESS_{k.upper()}": (json.dumps(v) if isinstance(v, dict) else str(v)) for k, v in settings.items()})
        bot = BotProcess(instance=instance, env=env, log_path=self.workdir / f"{instance}.log")
        self.bots.append(bot)
        return bot.start()

    def actions(self) -> list[list[str]]:
        path = self.workdir / "actions"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def go(self) -> None:
        (self.workdir / "go").touch()

    def hold(self) -> None:
        (self.workdir / "go").unlink(missing_ok=True)

    def hold_stop(self, held: bool = True) -> None:
        """Keeps the approval group's first step ("stop") running until called with False."""
        path = self.workdir / "hold-stop"
        if held:
            path.touch()
        else:
            path.unlink(missing_ok=True)


@pytest.fixture
async def harness(redis_server: RedisServer, workspace: SlackWorkspace, tmp_path: Path) -> AsyncIterator[Harness]:  # noqa: F811
    workdir = tmp_path / "harness"
    workdir.mkdir()
    (workdir / "member").write_text("8e9e05c52164694d\n")  # the member ID the plan reads (no lab here)
    made = Harness(redis=redis_server, workspace=workspace, workdir=workdir)
    try:
        yield made
    finally:
        for bot in made.bots:
            await bot.stop()


class Slack:
    """People in the lab workspace: slash commands and button presses, through its /_lab/ API."""

    def __init__(self, workspace: SlackWorkspace, session: aiohttp.ClientSession) -> None:  # noqa: F811
        self.workspace = workspace
        self._session = session

    async def call(self, method: str, path: str, **kwargs: Any) -> dict:
        async with self._session.request(method, self.workspace.lab_url + path, **kwargs) as response:
            return await response.json()

    async def command(self, user: str, text: str) -> dict:
        sent = await self.call("POST", "command", json={"user": user, "channel": "#incident", "text": text})
        assert sent["ok"], sent
        return sent

    async def press(self, user: str, *, action_id: str, message_ts: str) -> dict:
        return await self.call("POST", "press", json={"user": user, "action_id": action_id, "message_ts": message_ts,
                                                       "channel": CHANNEL})

    async def ephemeral(self, user: str, *, since: int) -> list[str]:
        view = await self.call("GET", "view", params={"user": user, "since": str(since)})
        return [m["text"] for m in view["messages"] if m["ephemeral"]]

    def messages(self) -> list[Any]:
        return sorted(self.workspace.recorder.messages.values(), key=lambda m: float(m.ts))


@pytest.fixture
async def slack(workspace: SlackWorkspace) -> AsyncIterator[Slack]:  # noqa: F811
    async with aiohttp.ClientSession() as session:
        yield Slack(workspace, session)
