"""The throttled sender against the lab's Slack with a tight per-channel limit: 429s with
Retry-After happen, intermediate edits may be merged, the final content always arrives."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from slack_sdk.models.blocks import MarkdownTextObject, SectionBlock
from slack_sdk.web.async_client import AsyncWebClient

from bot.progress import ThrottledSender, output_chunks
from lab.slack import SlackWorkspace
from tests.runner.conftest import APP_TOKEN, BOT_TOKEN, CHANNEL, SIGNING_SECRET


@pytest.fixture
async def tight(tmp_path) -> AsyncIterator[SlackWorkspace]:  # type: ignore[no-untyped-def]
    ws = SlackWorkspace(
        port=0, bot_token=BOT_TOKEN, app_token=APP_TOKEN, signing_secret=SIGNING_SECRET,
        record_file=tmp_path / "slack.jsonl", rate_limit_per_channel=(3, 1.0),
    )
    await ws.start()
    yield ws
    await ws.stop()


@pytest.fixture
async def sender(tight: SlackWorkspace) -> AsyncIterator[ThrottledSender]:
    client = AsyncWebClient(token=BOT_TOKEN, base_url=tight.base_url)
    sender = ThrottledSender(client=client, min_interval=0.0)  # no pacing of our own: meet the 429s
    yield sender
    await sender.close()
    if client.session is not None:
        await client.session.close()


async def test_updates_under_429_end_with_the_final_content(tight: SlackWorkspace, sender: ThrottledSender) -> None:
    ts = await sender.post(channel=CHANNEL, text="v0")
    other = await sender.post(channel=CHANNEL, text="w0")
    for n in range(1, 41):
        blocks = [SectionBlock(text=MarkdownTextObject(text=f"*version {n}*"))]
        sender.update(channel=CHANNEL, ts=ts, text=f"v{n}", blocks=blocks)
        sender.update(channel=CHANNEL, ts=other, text=f"w{n}")
    await sender.flush(channel=CHANNEL, ts=ts, timeout=30)
    await sender.flush(channel=CHANNEL, ts=other, timeout=30)

    assert tight.ratelimited_count >= 1, "the test must meet Slack's limit"
    final = tight.recorder.messages[(CHANNEL, ts)]
    assert final.text == "v40" and final.blocks[0]["text"]["text"] == "*version 40*"
    assert tight.recorder.messages[(CHANNEL, other)].text == "w40"
    updates = [e for e in tight.recorder.events if e["kind"] == "message" and e["ts"] == ts and e["via"] == "chat.update"]
    assert len(updates) < 40, "pending edits of one message are merged"


async def test_posts_under_429_are_all_delivered_in_order(tight: SlackWorkspace, sender: ThrottledSender) -> None:
    parent = await sender.post(channel=CHANNEL, text="parent")
    chunks = output_chunks(title="etcdctl member list", output="line\n" * 3000)
    assert len(chunks) > 3
    for chunk in chunks:
        await sender.post(channel=CHANNEL, text=chunk, thread_ts=parent)
    assert tight.ratelimited_count >= 1
    thread = sorted((m for m in tight.recorder.messages.values() if m.thread_ts == parent), key=lambda m: m.ts)
    assert [m.text for m in thread] == chunks
