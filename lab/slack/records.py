"""The workspace's memory: every event, and every version of every message.

Tests and people ask "what did alice see?" and "how fast did the bot ack?": both are answered
from this log, never from the bot's own account. Each record gets a sequence number (`seq`); a
cursor is the last seq a reader has seen, so `since=CURSOR` means "what happened after". Records
go to memory and, when a file is given, one JSON object per line (appended, flushed each time, so
a crashed lab still leaves its transcript). Records never carry tokens or the signing secret.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from lab.slack.directory import BOT_ID, BOT_USER_ID, TEAM_ID


@dataclass(frozen=True)
class MessageVersion:
    """One version of one message as people see it; a change makes a new value (`version` + 1)."""

    channel: str
    ts: str
    user: str
    text: str
    blocks: list[dict] = field(default_factory=list)
    thread_ts: str | None = None
    ephemeral_for: str | None = None
    deleted: bool = False
    reactions: dict[str, list[str]] = field(default_factory=dict)
    version: int = 1
    via: str = "chat.postMessage"
    time: float = 0.0
    seq: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.channel, self.ts)

    @property
    def from_bot(self) -> bool:
        return self.user == BOT_USER_ID

    def changed(self, *, via: str, **changes: Any) -> MessageVersion:
        """The next version of this message."""
        return replace(self, version=self.version + 1, via=via, **changes)

    def as_slack(self) -> dict:
        """The message object as Slack's Web API returns it (conversations.replies, payloads)."""
        message: dict[str, Any] = {
            "type": "message",
            "user": self.user,
            "text": self.text,
            "ts": self.ts,
            "team": TEAM_ID,
        }
        if self.from_bot:
            message.update({"bot_id": BOT_ID, "app_id": "A0ETCDBOT"})
        if self.blocks:
            message["blocks"] = self.blocks
        if self.thread_ts:
            message["thread_ts"] = self.thread_ts
        if self.version > 1 and not self.deleted:
            message["edited"] = {"user": self.user, "ts": self.ts}
        if self.reactions:
            message["reactions"] = [
                {"name": name, "users": users, "count": len(users)} for name, users in self.reactions.items()
            ]
        return message

    def as_record(self) -> dict:
        record = asdict(self)
        record["kind"] = "message"
        return record


class Recorder:
    """Append-only event log plus the latest version of each message, with change notification."""

    def __init__(self, *, record_file: Path | None = None) -> None:
        self.events: list[dict] = []
        self.messages: dict[tuple[str, str], MessageVersion] = {}
        self._record_file = record_file
        self._out: IO[str] | None = None
        self._seq = 0
        self._last_ts = 0
        self._last_activity = time.monotonic()
        self._changed = asyncio.Event()

    def open(self) -> None:
        if self._record_file is not None and self._out is None:
            self._record_file.parent.mkdir(parents=True, exist_ok=True)
            self._out = self._record_file.open("a", encoding="utf-8")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    @property
    def cursor(self) -> int:
        """The seq of the newest record: pass it back as `since` to read only what follows."""
        return self._seq

    def next_ts(self) -> str:
        """A Slack message timestamp ("1712345678.000100"): unique and increasing within the workspace."""
        micros = max(int(time.time() * 1_000_000), self._last_ts + 1)
        self._last_ts = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def record(self, kind: str, **fields: Any) -> dict:
        """Log one event; every event counts as activity for `wait_quiet`."""
        self._seq += 1
        event = {"seq": self._seq, "time": time.time(), "kind": kind, **fields}
        self._append(event)
        return event

    def put_message(self, message: MessageVersion) -> MessageVersion:
        """Store a new message or a new version of one, and log it."""
        self._seq += 1
        stored = replace(message, seq=self._seq, time=time.time())
        self.messages[stored.key] = stored
        self._append(stored.as_record())
        return stored

    def count(self, kind: str) -> int:
        return sum(1 for event in self.events if event["kind"] == kind)

    def since(self, cursor: int, *, kinds: Iterable[str] | None = None) -> list[dict]:
        wanted = set(kinds) if kinds is not None else None
        return [e for e in self.events if e["seq"] > cursor and (wanted is None or e["kind"] in wanted)]

    async def wait_quiet(self, *, quiet: float, give_up_after: float, busy: Callable[[], bool]) -> bool:
        """True once nothing was recorded for `quiet` seconds and nothing is `busy`; False at the deadline.

        `busy` is the dispatcher's "a delivery still waits for its ack", so a slow bot is not
        mistaken for a finished one.
        """
        deadline = time.monotonic() + give_up_after
        while True:
            now = time.monotonic()
            remaining_quiet = quiet - (now - self._last_activity)
            if remaining_quiet <= 0 and not busy():
                return True
            if now >= deadline:
                return False
            changed = self._changed
            wait = max(remaining_quiet, 0.05)
            try:
                await asyncio.wait_for(changed.wait(), timeout=min(wait, deadline - now))
            except TimeoutError:
                pass

    def _append(self, event: dict) -> None:
        self.events.append(event)
        self._last_activity = time.monotonic()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self._out is not None:
            self._out.write(json.dumps(event, sort_keys=True, default=str) + "\n")
            self._out.flush()
