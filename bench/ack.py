"""Ack latency in HTTP mode: N slash commands at once, each acked within Slack's 3 seconds?

Starts a lab (or uses `--dir` of a running one) and the production bot in HTTP mode against it,
then sends N slash commands at the same moment, two ways:

- direct: this script signs each command as Slack does (v0 HMAC of the form body) and POSTs it
  to the bot's `/slack/events`; the HTTP response is the ack. Its latency is what Slack measures,
  and a command is lost unless its response is a 200 carrying the ack. Response URLs point at a
  sink here, so replies the bot sends there (after a 429 on chat.postMessage) are accepted.
- via the lab (`--via-lab`): the lab's workspace delivers the commands (the same signed POSTs)
  and records each ack with its latency, or the `operation_timeout` a person would see. This
  adds the lab's own work (signing, recording, one client session) on the same two cores.

The bot's work after the acks (N status reports) is waited for before the bot is stopped, so
nothing is left running.

Usage: .venv/bin/python bench/ack.py [--count 200] [--command /etcd-status] [--via-lab] [--dir LAB_DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.slack.client import workspace_root  # noqa: E402
from lab.slack.signing import signed_headers  # noqa: E402
from tests.botprocess import Bot  # noqa: E402
from tests.labfixture import Lab, parse_env, start_lab, stop_lab  # noqa: E402


async def fire_direct(bot: Bot, *, count: int, command: str) -> tuple[list[float], int, float]:
    """Signed POSTs straight at the bot: (latencies of good acks, lost, spread of the sends)."""
    secret = bot.lab.env["ETCDBOT_SLACK_SIGNING_SECRET"]
    replies: list[str] = []

    async def sink(request: web.Request) -> web.Response:
        replies.append(await request.text())
        return web.Response(text="ok")

    sink_app = web.Application()
    sink_app.router.add_post("/{tail:.*}", sink)
    runner = web.AppRunner(sink_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    sink_url = f"http://127.0.0.1:{runner.addresses[0][1]}/response"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one(number: int) -> float | None:
                body = urllib.parse.urlencode({
                    "token": "bench", "team_id": "T0LAB0001", "team_domain": "lab", "channel_id": "C0INCIDENT",
                    "channel_name": "incident", "user_id": "U0ALICE01", "user_name": "alice", "command": command,
                    "text": "", "api_app_id": "A0ETCDBOT", "response_url": f"{sink_url}/{number}",
                    "trigger_id": f"{number}.1.bench",
                })
                headers = signed_headers(signing_secret=secret, timestamp=int(time.time()), body=body,
                                         content_type="application/x-www-form-urlencoded")
                sent = time.monotonic()
                try:
                    async with session.post(bot.events_url, data=body.encode(), headers=headers) as response:
                        text = await response.text()
                        latency = time.monotonic() - sent
                        return latency if response.status == 200 and text.strip() else None
                except aiohttp.ClientError:
                    return None

            started = time.monotonic()
            results = await asyncio.gather(*(one(n) for n in range(count)))
            spread = time.monotonic() - started
        latencies = [r for r in results if r is not None and r <= 3.0]
        return latencies, count - len(latencies), spread
    finally:
        # the bot's work after the acks: wait for the lab's workspace to go quiet, then close the sink
        await asyncio.to_thread(bot.workspace.quiet, quiet=5.0, timeout=600)
        await runner.cleanup()


async def fire(root: str, *, count: int, command: str) -> tuple[list[str], float]:
    """All commands at once through `/_lab/command`; returns their delivery ids and the spread."""
    async with aiohttp.ClientSession() as session:

        async def one() -> str:
            body = {"user": "alice", "channel": "incident", "text": command}
            async with session.post(f"{root}/_lab/command", json=body) as response:
                answer = await response.json()
                if not answer.get("ok"):
                    raise RuntimeError(f"the workspace refused the command: {answer}")
                return str(answer["id"])

        started = time.monotonic()
        ids = await asyncio.gather(*(one() for _ in range(count)))
        return list(ids), time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def outcome(record_file: Path, ids: list[str]) -> tuple[list[float], list[str]]:
    """Latencies of timely acks, and the ids without one (late, failed or missing)."""
    acks: dict[str, float] = {}
    for line in record_file.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "ack" and record.get("late") is False and not record.get("duplicate"):
            acks[record["delivery"]] = float(record["latency"])
    latencies = [acks[i] for i in ids if i in acks]
    return latencies, [i for i in ids if i not in acks]


def run(lab: Lab, *, count: int, command: str, via_lab: bool) -> int:
    bot = Bot(lab=lab, mode="http", log_path=lab.dir / "bot-bench-ack.log").start()
    try:
        if via_lab:
            ids, spread = asyncio.run(fire(workspace_root(lab.dir), count=count, command=command))
            # every ack settles within the 3 s deadline; the work after it takes longer
            bot.workspace.quiet(quiet=5.0, timeout=600)
            latencies, missing = outcome(lab.dir / "logs" / "slack.jsonl", ids)
            lost, how = len(missing), "delivered by the lab's workspace"
        else:
            latencies, lost, spread = asyncio.run(fire_direct(bot, count=count, command=command))
            how = "signed POSTs straight at the bot"
    finally:
        bot.stop()
    print(f"{count} x {command} over HTTP mode ({how}), sent within {spread:.2f} s")
    if latencies:
        print(f"ack latency: median {statistics.median(latencies) * 1000:.0f} ms, "
              f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    print(f"lost (no ack within Slack's 3 s): {lost}")
    return 1 if lost else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--command", default="/etcd-status")
    parser.add_argument("--via-lab", action="store_true", help="let the lab's workspace deliver the commands")
    parser.add_argument("--dir", type=Path, help="a running lab (default: a fresh one, stopped afterwards)")
    args = parser.parse_args()
    if args.dir:
        lab_dir = args.dir.resolve()
        lab = Lab(dir=lab_dir, env=parse_env((lab_dir / "env").read_text()))
        sys.exit(run(lab, count=args.count, command=args.command, via_lab=args.via_lab))
    with tempfile.TemporaryDirectory(prefix="etcdbot-bench-ack-") as tmp:
        lab = start_lab(Path(tmp) / "lab")
        try:
            code = run(lab, count=args.count, command=args.command, via_lab=args.via_lab)
        finally:
            stop_lab(lab)
    sys.exit(code)


if __name__ == "__main__":
    main()
