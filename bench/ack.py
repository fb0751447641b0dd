"""Ack latency in HTTP mode: N slash commands at once, each acked within Slack's 3 seconds?

Starts a lab (or uses `--dir` of a running one) and the production bot in HTTP mode against it,
then sends N slash commands at the same moment: once right after the bot is ready (the burst
that used to pay for `auth.test` and cold clients), then again on the warm bot (`--warm-bursts`).
Besides what the sender measures (which includes its own work on the same cores), the bot's
own view of each burst is printed from its `etcdbot_slack_ack_seconds` histogram (bucket bounds).
Two ways to send:

- direct: this script signs each command as Slack does (v0 HMAC of the form body) and POSTs it
  to the bot's `/slack/events`; the HTTP response is the ack. Its latency is what Slack measures,
  and a command is lost unless its response is a 200 carrying the ack. Response URLs point at a
  sink in a process of its own, so replies the bot sends there (after a 429 on chat.postMessage)
  are accepted without loading the sender.
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
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.slack.client import workspace_root  # noqa: E402
from lab.slack.signing import signed_headers  # noqa: E402
from tests.botprocess import Bot, get  # noqa: E402
from tests.labfixture import Lab, parse_env, start_lab, stop_lab  # noqa: E402

SINK = """
import sys
from aiohttp import web
out = open(sys.argv[2], "a", buffering=1)
async def reply(request):
    await request.read()
    out.write("1\\n")
    return web.Response(text="ok")
app = web.Application()
app.router.add_post("/{tail:.*}", reply)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


class ResponseSink:
    """Where the commands' response_urls point (the bot answers there after a 429 on
    chat.postMessage), in a process of its own: Slack's endpoint is not in the sender, and its
    work must not count in the sender's ack latencies."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/response"
        self._file = Path(tempfile.mkstemp(prefix="etcdbot-bench-sink-")[1])
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ResponseSink:
        self._proc = subprocess.Popen([sys.executable, "-c", SINK, str(self.port), str(self._file)])
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("the response sink did not start") from None
                time.sleep(0.05)

    def count(self) -> int:
        return len(self._file.read_text().splitlines())

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None
        self._file.unlink(missing_ok=True)


def signed_request(*, secret: str, host: str, port: int, command: str, number: int, response_url: str) -> bytes:
    """One slash command as Slack sends it: a form body, signed (v0 HMAC), as raw HTTP/1.1 bytes."""
    body = urllib.parse.urlencode({
        "token": "bench", "team_id": "T0LAB0001", "team_domain": "lab", "channel_id": "C0INCIDENT",
        "channel_name": "incident", "user_id": "U0ALICE01", "user_name": "alice", "command": command,
        "text": "", "api_app_id": "A0ETCDBOT", "response_url": f"{response_url}/{number}",
        "trigger_id": f"{number}.1.bench",
    })
    headers = signed_headers(signing_secret=secret, timestamp=int(time.time()), body=body,
                             content_type="application/x-www-form-urlencoded")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST /slack/events HTTP/1.1\r\nHost: {host}:{port}\r\n{head}Content-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n{body}").encode()


async def post_raw(host: str, port: int, request: bytes) -> tuple[int, bytes]:
    """(status, body) of one request on its own connection, with as little work here as possible:
    the sender shares the machine with the bot, and its own work would count as the bot's."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        status_line = await reader.readline()
        length = None
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = await (reader.readexactly(length) if length is not None else reader.read())
        return int(status_line.split()[1]), body
    finally:
        writer.close()


async def fire_direct(bot: Bot, *, count: int, command: str) -> tuple[list[float], int, float]:
    """Signed POSTs straight at the bot: (latencies of good acks, lost, spread of the sends).

    Every request is built and signed before the clock starts; each goes on its own connection
    (as Slack's deliveries do), and its latency runs from opening that connection to the last
    byte of the ack."""
    secret = bot.lab.env["ETCDBOT_SLACK_SIGNING_SECRET"]
    sink = ResponseSink().start()
    cursor = int(bot.workspace.transcript(channel="incident")["cursor"])
    host, port = "127.0.0.1", int(bot.lab.env["ETCDBOT_HTTP_PORT"])
    requests = [signed_request(secret=secret, host=host, port=port, command=command, number=n, response_url=sink.url)
                for n in range(count)]
    try:

        async def one(request: bytes) -> float | None:
            sent = time.monotonic()
            try:
                status, body = await post_raw(host, port, request)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                return None
            latency = time.monotonic() - sent
            return latency if status == 200 and body.strip() else None

        started = time.monotonic()
        results = await asyncio.gather(*(one(r) for r in requests))
        spread = time.monotonic() - started
        latencies = [r for r in results if r is not None and r <= 3.0]
        return latencies, count - len(latencies), spread
    finally:
        # The bot's work after the acks: every command answered (a status message in the channel,
        # or a reply through its response_url after a 429), so the next burst starts on an idle bot.
        try:
            await asyncio.to_thread(wait_answered, bot, since=cursor, count=count, replies=sink.count)
        finally:
            sink.stop()


def wait_answered(bot: Bot, *, since: int, count: int, replies: Callable[[], int], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = bot.workspace.transcript(since=since, channel="incident")["records"]
        posted = sum(1 for r in records if r.get("kind") == "message" and "etcd on" in json.dumps(r.get("blocks")))
        if posted + replies() >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the bot answered only part of {count} commands within {timeout:.0f} s")


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


def burst(bot: Bot, *, count: int, command: str, via_lab: bool) -> tuple[list[float], int, float, str]:
    """One burst of `count` commands at once: (latencies of timely acks, lost, spread, how sent)."""
    if via_lab:
        ids, spread = asyncio.run(fire(workspace_root(bot.lab.dir), count=count, command=command))
        # every ack settles within the 3 s deadline; the work after it takes longer
        bot.workspace.quiet(quiet=5.0, timeout=600)
        latencies, missing = outcome(bot.lab.dir / "logs" / "slack.jsonl", ids)
        return latencies, len(missing), spread, "delivered by the lab's workspace"
    latencies, lost, spread = asyncio.run(fire_direct(bot, count=count, command=command))
    return latencies, lost, spread, "signed POSTs straight at the bot"


def ack_buckets(bot: Bot) -> dict[float, float]:
    """The bot's own ack histogram (`etcdbot_slack_ack_seconds`): upper bound -> cumulative count."""
    _, text = get(bot.health_url + "/metrics")
    found = {}
    for line in text.splitlines():
        match = re.match(r'etcdbot_slack_ack_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)', line)
        if match:
            found[float(match.group(1))] = float(match.group(2))
    return found


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The bucket bound under which a fraction `q` of this burst's acks fell (from the bot's side)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * counts[-1]:
            return bound
    return None


def run(lab: Lab, *, count: int, command: str, via_lab: bool, warm_bursts: int = 2) -> int:
    """The first burst right after the bot is ready (nothing resolved by a request yet), then
    `warm_bursts` more on the same bot, each after the last one's work is done."""
    load_before = os.getloadavg()[0]
    bot = Bot(lab=lab, mode="http", log_path=lab.dir / "bot-bench-ack.log").start()
    rows = []
    try:
        for number in range(1 + warm_bursts):
            before = ack_buckets(bot)
            latencies, lost, spread, how = burst(bot, count=count, command=command, via_lab=via_lab)
            after = ack_buckets(bot)
            inside = (bucket_quantile(before, after, 0.5), bucket_quantile(before, after, 0.99))
            rows.append(("right after start" if number == 0 else f"warm #{number}", latencies, lost, spread, inside))
    finally:
        bot.stop()
    print(f"{count} x {command} at once, over HTTP mode ({how}); load average {load_before:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end")
    for name, latencies, lost, spread, (median_in, p99_in) in rows:
        figures = (f"median {statistics.median(latencies) * 1000:.0f} ms, p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
                   f"max {max(latencies) * 1000:.0f} ms" if latencies else "no ack")
        inside = (f"; in the bot: median <= {median_in * 1000:.0f} ms, p99 <= {p99_in * 1000:.0f} ms"
                  if median_in is not None and p99_in is not None else "")
        print(f"  {name:<18} ack {figures}; lost {lost} (all answered within {spread:.2f} s){inside}")
    warm = [lat for _, lat, _, _, _ in rows[1:]]
    if warm:
        medians = [statistics.median(lat) for lat in warm if lat]
        print(f"  warm bursts: median of medians {statistics.median(medians) * 1000:.0f} ms")
    return 1 if any(lost for _, _, lost, _, _ in rows) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--command", default="/etcd-status")
    parser.add_argument("--via-lab", action="store_true", help="let the lab's workspace deliver the commands")
    parser.add_argument("--dir", type=Path, help="a running lab (default: a fresh one, stopped afterwards)")
    parser.add_argument("--warm-bursts", type=int, default=2, help="bursts after the first one (default 2)")
    args = parser.parse_args()
    if args.dir:
        lab_dir = args.dir.resolve()
        lab = Lab(dir=lab_dir, env=parse_env((lab_dir / "env").read_text()))
        sys.exit(run(lab, count=args.count, command=args.command, via_lab=args.via_lab, warm_bursts=args.warm_bursts))
    with tempfile.TemporaryDirectory(prefix="etcdbot-bench-ack-") as tmp:
        lab = start_lab(Path(tmp) / "lab")
        try:
            code = run(lab, count=args.count, command=args.command, via_lab=args.via_lab, warm_bursts=args.warm_bursts)
        finally:
            stop_lab(lab)
    sys.exit(code)


if __name__ == "__main__":
    main()
