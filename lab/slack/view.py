"""What one person sees, read from the records: the basis of `/_lab/view`, presses and the CLI.

A person sees channel messages in their latest version and their own ephemeral messages, not
deleted ones, and not other people's ephemerals. Buttons are pressed on what the person can see,
newest first, as a person scrolling up would find them.
"""

from __future__ import annotations

from lab.slack import directory
from lab.slack.records import MessageVersion, Recorder
from lab.slack.render import Button, buttons


def visible_to(message: MessageVersion, *, user: str) -> bool:
    return not message.deleted and message.ephemeral_for in (None, user)


def message_view(message: MessageVersion) -> dict:
    """A message as the lab endpoints return it: Slack's fields plus who, where and which version."""
    table = directory.names()
    return {
        "channel": message.channel,
        "channel_name": table.get(message.channel, message.channel),
        "ts": message.ts,
        "thread_ts": message.thread_ts,
        "user": message.user,
        "user_name": table.get(message.user, message.user),
        "text": message.text,
        "blocks": message.blocks,
        "ephemeral": message.ephemeral_for is not None,
        "version": message.version,
        "reactions": message.reactions,
        "via": message.via,
        "seq": message.seq,
        "time": message.time,
    }


def view_for(recorder: Recorder, *, user: str, since: int = 0, channel: str | None = None) -> dict:
    """Messages `user` can see that are new or changed after `since`, with their acks and failures."""
    messages = sorted(
        (
            m
            for m in recorder.messages.values()
            if m.seq > since and visible_to(m, user=user) and (channel is None or m.channel == channel)
        ),
        key=lambda m: float(m.ts),
    )
    events = recorder.since(since, kinds=("ack", "failure"))
    return {
        "user": user,
        "cursor": recorder.cursor,
        "messages": [message_view(m) for m in messages],
        "acks": [e for e in events if e["kind"] == "ack" and e.get("user") == user],
        "failures": [e for e in events if e["kind"] == "failure" and e.get("user") == user],
        "names": directory.names(),
    }


def transcript(recorder: Recorder, *, since: int = 0, channel: str | None = None) -> list[dict]:
    """Every record after `since` (every message version, ack, failure, API call), optionally one channel's."""
    return [e for e in recorder.since(since) if channel is None or e.get("channel") == channel]


def find_button(
    recorder: Recorder,
    *,
    user: str,
    button_text: str | None = None,
    action_id: str | None = None,
    message_ts: str | None = None,
    channel: str | None = None,
) -> tuple[MessageVersion, Button] | None:
    """The newest message visible to `user` offering that button (by text, case-insensitive, or action_id)."""
    candidates = sorted(
        (
            m
            for m in recorder.messages.values()
            if visible_to(m, user=user)
            and (message_ts is None or m.ts == message_ts)
            and (channel is None or m.channel == channel)
        ),
        key=lambda m: float(m.ts),
        reverse=True,
    )
    wanted_text = button_text.strip().lower() if button_text else None
    for message in candidates:
        for button in buttons(message.blocks):
            if (wanted_text is not None and button.text.strip().lower() == wanted_text) or (
                action_id is not None and button.action_id == action_id
            ):
                return message, button
    return None
