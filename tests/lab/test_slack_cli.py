"""`etcdbot-lab slack ...` and the console against a workspace with a real Bolt app connected.

The CLI is synchronous (urllib) and the workspace lives on the test's event loop, so CLI calls
run in a worker thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_sdk.web.async_client import AsyncWebClient

from lab.slack import SlackWorkspace
from lab.slack.client import LabClient, add_slack_commands, workspace_root
from lab.slack.console import Console
from lab.slack.echo_app import build_echo_app

BOT_TOKEN = "xoxb-lab-cli-bot-token"
APP_TOKEN = "xapp-lab-cli-app-token"
SIGNING_SECRET = "lab-cli-signing-secret"


async def until(predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def lab_dir(tmp_path: Path) -> AsyncIterator[Path]:
    """A lab dir whose `env` names a running workspace with the echo app connected over Socket Mode."""
    ws = SlackWorkspace(port=0, bot_token=BOT_TOKEN, app_token=APP_TOKEN, signing_secret=SIGNING_SECRET)
    await ws.start()
    client = AsyncWebClient(token=BOT_TOKEN, base_url=ws.base_url)
    handler = AsyncSocketModeHandler(build_echo_app(client=client, release_slow=asyncio.Event()), APP_TOKEN)
    await handler.connect_async()
    await until(lambda: ws.socket_connections == 1, what="Socket Mode connection")
    (tmp_path / "env").write_text(
        f"export KUBECONFIG=/x/kubeconfig\nexport ETCDBOT_SLACK_API_URL={ws.base_url}\n"
    )
    try:
        yield tmp_path
    finally:
        await handler.close_async()
        if client.session is not None:
            await client.session.close()
        await ws.stop()


def cli(lab_dir: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="etcdbot-lab")
    parser.add_argument("--dir", default=".lab")
    add_slack_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["--dir", str(lab_dir), *argv])
    return args.func(args)


async def test_command_press_and_transcript(lab_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(
        cli, lab_dir, "slack", "command", "--as", "alice", "--quiet", "0.3", "/etcd-echo", "hello", "world"
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "(ack ok," in out
    assert "Echoing `hello world` for @alice" in out and "only visible to you" in out
    assert "== Echo ==" in out and "*hello world*" in out
    assert "[1] Approve  [2] Reject" in out

    code = await asyncio.to_thread(cli, lab_dir, "slack", "press", "--as", "bob", "--quiet", "0.3", "Approve")
    out = capsys.readouterr().out
    assert code == 0 and "Approved by @bob" in out and "[edited]" in out

    assert (
        await asyncio.to_thread(cli, lab_dir, "slack", "transcript", "--channel", "incident", "--json") == 0
    )
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [
        r["version"] for r in records if r["kind"] == "message" and r["text"].startswith(("echo", "approved"))
    ] == [
        1,
        2,
    ]
    assert await asyncio.to_thread(cli, lab_dir, "slack", "transcript") == 0
    assert "chat.update" in capsys.readouterr().out

    code = await asyncio.to_thread(cli, lab_dir, "slack", "press", "--as", "bob", "--quiet", "0.1", "Nope")
    assert code == 1 and "button_not_found" in capsys.readouterr().err


async def test_console_session(lab_dir: Path) -> None:
    console = Console(
        client=LabClient(root=workspace_root(lab_dir)), user="alice", channel="incident", quiet=0.3
    )
    assert console.prompt == "alice@#incident> "
    shown = await asyncio.to_thread(console.handle, "/etcd-echo restore please")
    assert "[1] Approve  [2] Reject" in shown
    assert await asyncio.to_thread(console.handle, "/as carol") == "you are now carol"
    assert console.prompt == "carol@#incident> "
    assert "[1] Approve" in await asyncio.to_thread(console.handle, "/look")
    shown = await asyncio.to_thread(console.handle, "1")
    assert "Approved by @carol" in shown
    assert (await asyncio.to_thread(console.handle, "/as mallory")).startswith("! user_not_found")
    assert (await asyncio.to_thread(console.handle, "/channel nowhere")).startswith("! channel_not_found")
    assert await asyncio.to_thread(console.handle, "/channel ops") == "now in #ops"
    assert (await asyncio.to_thread(console.handle, "7")).startswith("! no button [7]")
    assert await asyncio.to_thread(console.handle, "/quit") is None

    lines = iter(["/help", "/quit"])
    written: list[str] = []
    code = await asyncio.to_thread(console.run, read=lambda prompt: next(lines), write=written.append)
    assert code == 0 and any("/as NAME" in w for w in written)


async def test_console_empty_line_shows_what_changed_since(lab_dir: Path) -> None:
    """A run goes on after the console came back; an empty line shows its progress."""
    console = Console(
        client=LabClient(root=workspace_root(lab_dir)), user="alice", channel="incident", quiet=0.3
    )
    assert await asyncio.to_thread(console.handle, "") == ""  # nothing shown yet: nothing to compare with
    await asyncio.to_thread(console.handle, "/etcd-echo first")
    assert await asyncio.to_thread(console.handle, "") == "(nothing new)"
    env = (lab_dir / "env").read_text()
    base_url = env.split("ETCDBOT_SLACK_API_URL=")[1].strip()
    client = AsyncWebClient(token=BOT_TOKEN, base_url=base_url)
    try:
        await client.chat_postMessage(channel="C0INCIDENT", text="step 2 of the run is done")
    finally:
        if client.session is not None:
            await client.session.close()
    shown = await asyncio.to_thread(console.handle, "")
    assert "step 2 of the run is done" in shown and "first" not in shown
