"""`etcdbot-lab slack ...`: be alice (or bob) in the lab workspace from a terminal.

The lab daemon serves the workspace; this module only talks to its `/_lab/` endpoints over HTTP,
so it works from any shell with `DIR/env` (it reads `ETCDBOT_SLACK_API_URL` there). It prints what
the person would see, not what the bot meant: acks, ephemeral replies, channel messages in their
latest version, buttons numbered for pressing. Tokens are never needed here, so never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.slack import directory
from lab.slack.render import buttons, render_blocks

ENV_NAME = "ETCDBOT_SLACK_API_URL"


class LabError(Exception):
    """The workspace refused (unknown user, no such button) or could not be reached."""


def workspace_root(lab_dir: Path) -> str:
    """`http://127.0.0.1:PORT` from `DIR/env` (`export ETCDBOT_SLACK_API_URL=.../api/`), else the environment."""
    url = None
    env_file = lab_dir / "env"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            name, _, value = line.removeprefix("export ").strip().partition("=")
            if name == ENV_NAME:
                url = value.strip().strip("'\"")
    url = url or os.environ.get(ENV_NAME)
    if not url:
        raise LabError(f"no {ENV_NAME} in {env_file} or the environment: is the lab up (etcdbot-lab up)?")
    return url.rstrip("/").removesuffix("/api")


@dataclass(frozen=True)
class PressTarget:
    """A numbered button of the last render: enough to press exactly that one."""

    message_ts: str
    action_id: str
    text: str


class LabClient:
    """Blocking calls to `/_lab/` (the CLI is synchronous; the workspace does the waiting)."""

    def __init__(self, *, root: str) -> None:
        self.root = root.rstrip("/")

    def command(self, *, user: str, channel: str, text: str) -> dict:
        return self._call("POST", "command", body={"user": user, "channel": channel, "text": text})

    def press(
        self,
        *,
        user: str,
        button_text: str | None = None,
        action_id: str | None = None,
        message_ts: str | None = None,
        channel: str | None = None,
    ) -> dict:
        body = {"user": user, "button_text": button_text, "action_id": action_id, "message_ts": message_ts}
        if channel:
            body["channel"] = channel
        return self._call("POST", "press", body={k: v for k, v in body.items() if v is not None})

    def quiet(self, *, quiet: float = 1.0, timeout: float = 30.0) -> dict:
        return self._call(
            "GET", "quiet", query={"quiet": quiet, "timeout": timeout}, read_timeout=timeout + 10
        )

    def view(self, *, user: str, since: int = 0, channel: str | None = None) -> dict:
        query: dict[str, Any] = {"user": user, "since": since}
        if channel:
            query["channel"] = channel
        return self._call("GET", "view", query=query)

    def http_delivery(self, url: str | None) -> dict:
        """Deliver commands and presses to `url` as Slack's signed HTTP requests; None: Socket Mode."""
        return self._call("POST", "http-delivery", body={"url": url})

    def transcript(self, *, since: int = 0, channel: str | None = None) -> dict:
        query: dict[str, Any] = {"since": since}
        if channel:
            query["channel"] = channel
        return self._call("GET", "transcript", query=query)

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict | None = None,
        query: dict | None = None,
        read_timeout: float = 30.0,
    ) -> dict:
        url = f"{self.root}/_lab/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=read_timeout) as response:
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            answer = _json_or_empty(error.read())
            raise LabError(answer.get("error") or f"HTTP {error.code} from {path}") from None
        except (urllib.error.URLError, OSError) as error:
            raise LabError(f"the lab's Slack workspace at {self.root} is not answering ({error})") from None
        if not answer.get("ok"):
            raise LabError(str(answer.get("error") or answer))
        return answer


def format_view(view: dict, *, first_button: int = 1) -> tuple[str, list[PressTarget]]:
    """What a person sees, as terminal text, and the buttons in the numbers it shows them with."""
    names: dict[str, str] = view.get("names", {})
    lines: list[str] = []
    targets: list[PressTarget] = []
    for ack in view.get("acks", []):
        state = "LATE, ignored by Slack" if ack.get("late") else "ok"
        lines.append(f"(ack {state}, {ack.get('latency', 0):.2f} s)")
    for message in view.get("messages", []):
        stamp = time.strftime("%H:%M:%S", time.localtime(message.get("time", 0)))
        flags = [
            flag
            for flag, on in (
                ("only visible to you", message["ephemeral"]),
                ("edited", message["version"] > 1),
            )
            if on
        ]
        thread = " (in thread)" if message.get("thread_ts") and message["thread_ts"] != message["ts"] else ""
        suffix = f"  [{', '.join(flags)}]" if flags else ""
        lines.append(f"#{message['channel_name']}  {message['user_name']}  {stamp}{thread}{suffix}")
        number = first_button + len(targets)
        body = render_blocks(
            message.get("blocks") or [], text=message.get("text", ""), names=names, first_button=number
        )
        lines.extend("  " + line for line in body.splitlines())
        for reaction, users in (message.get("reactions") or {}).items():
            lines.append(f"  :{reaction}: {len(users)}")
        targets.extend(
            PressTarget(message_ts=message["ts"], action_id=b.action_id, text=b.text)
            for b in buttons(message.get("blocks") or [])
        )
    if not lines:
        lines.append("(nothing new)")
    return "\n".join(lines), targets


def format_record(record: dict) -> str:
    """One transcript line: time, kind and the facts that matter for that kind."""
    stamp = time.strftime("%H:%M:%S", time.localtime(record.get("time", 0)))
    kind = record["kind"]
    head = f"{record['seq']:>5} {stamp} {kind:<12}"
    if kind == "message":
        table = directory.names()
        who = table.get(record["user"], record["user"])
        if record.get("ephemeral_for"):
            who += " -> only " + table.get(record["ephemeral_for"], record["ephemeral_for"])
        where = "#" + table.get(record["channel"], record["channel"])
        state = " DELETED" if record.get("deleted") else ""
        text = render_blocks(record.get("blocks") or [], text=record.get("text", "")).replace("\n", " / ")
        return (
            f"{head} {where} ts={record['ts']} v{record['version']} {who} via {record['via']}{state}: {text}"
        )
    details = {k: v for k, v in record.items() if k not in ("seq", "time", "kind", "params")}
    return f"{head} {json.dumps(details, sort_keys=True, default=str)}"


# -- command line


def add_slack_commands(
    subparsers: argparse._SubParsersAction, *, parents: list[argparse.ArgumentParser] | None = None
) -> None:
    """Add `slack command|press|transcript|console`; each sets `func(args) -> int` (the exit code)."""
    slack = subparsers.add_parser("slack", help="act as a person in the lab's Slack workspace")
    actions = slack.add_subparsers(dest="slack_action", required=True)

    command = actions.add_parser(
        "command", parents=parents or [], help="run a slash command as USER and print what USER sees"
    )
    command.add_argument("--as", dest="user", required=True, help="alice, bob, carol or dave")
    command.add_argument("--channel", default="incident", help="channel name (default: incident)")
    command.add_argument("--wait", type=float, default=30.0, help="give up waiting for quiet after S seconds")
    command.add_argument("--quiet", type=float, default=3.0, help="seconds without activity that mean done")
    command.add_argument("text", nargs="+", help="/etcd-status ...")
    command.set_defaults(func=run_command)

    press = actions.add_parser(
        "press", parents=parents or [], help="press a button as USER and print what USER sees"
    )
    press.add_argument("--as", dest="user", required=True)
    press.add_argument(
        "--message", dest="message_ts", help="ts of the message (default: newest with that button)"
    )
    press.add_argument("--channel", help="only look in this channel")
    press.add_argument("--wait", type=float, default=30.0)
    press.add_argument("--quiet", type=float, default=1.0)
    press.add_argument("button", nargs="+", help="the button's text, e.g. Approve")
    press.set_defaults(func=run_press)

    transcript = actions.add_parser(
        "transcript", parents=parents or [], help="everything recorded (every message version, acks, errors)"
    )
    transcript.add_argument("--channel")
    transcript.add_argument("--since", type=int, default=0)
    transcript.add_argument("--json", action="store_true", help="one JSON record per line")
    transcript.set_defaults(func=run_transcript)

    console = actions.add_parser("console", parents=parents or [], help="an interactive Slack console")
    console.add_argument("--as", dest="user", default="alice")
    console.add_argument("--channel", default="incident")
    console.set_defaults(func=run_console)


def _client(args: argparse.Namespace) -> LabClient:
    return LabClient(root=workspace_root(Path(getattr(args, "dir", None) or ".lab")))


def _act_and_show(args: argparse.Namespace, act: Any) -> int:
    try:
        client = _client(args)
        sent = act(client)
        client.quiet(quiet=args.quiet, timeout=args.wait)
        view = client.view(user=args.user, since=sent["cursor"])
    except LabError as error:
        print(f"etcdbot-lab slack: {error}", file=sys.stderr)
        return 1
    print(format_view(view)[0])
    return 0


def run_command(args: argparse.Namespace) -> int:
    text = " ".join(args.text)
    return _act_and_show(args, lambda client: client.command(user=args.user, channel=args.channel, text=text))


def run_press(args: argparse.Namespace) -> int:
    label = " ".join(args.button)
    return _act_and_show(
        args,
        lambda client: client.press(
            user=args.user, button_text=label, message_ts=args.message_ts, channel=args.channel
        ),
    )


def run_transcript(args: argparse.Namespace) -> int:
    try:
        records = _client(args).transcript(since=args.since, channel=args.channel)["records"]
    except LabError as error:
        print(f"etcdbot-lab slack: {error}", file=sys.stderr)
        return 1
    for record in records:
        print(json.dumps(record, sort_keys=True, default=str) if args.json else format_record(record))
    return 0


def run_console(args: argparse.Namespace) -> int:
    from lab.slack.console import Console

    try:
        client = _client(args)
    except LabError as error:
        print(f"etcdbot-lab slack: {error}", file=sys.stderr)
        return 1
    return Console(client=client, user=args.user, channel=args.channel).run()


def _json_or_empty(raw: bytes) -> dict:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
