"""Acks first: work that follows an ack waits while other requests still wait for theirs.

Why: Slack gives each slash command 3 seconds to be acked, and in an incident many arrive at
once. The bot serves them on one event loop, so a status message rendered and posted for the
first command runs between the acks of the next ones. A request counts from its arrival (the
HTTP handler, or the Socket Mode message handler) to its ack's response; handlers call
`await ACKS.settled()` before their heavy work after an ack, which returns at once when no
request is pending, and otherwise when none is (bounded, so a steady stream of commands cannot
starve the work).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class AckGate:
    """Counts requests waiting for their ack; `settled()` waits until there are none."""

    def __init__(self) -> None:
        self._pending = 0
        self._settled: asyncio.Event | None = None

    @property
    def pending(self) -> int:
        return self._pending

    def _event(self) -> asyncio.Event:
        if self._settled is None:
            self._settled = asyncio.Event()
            self._settled.set()
        return self._settled

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Wraps the handling of one request, up to its response (the ack)."""
        event = self._event()
        self._pending += 1
        event.clear()
        try:
            yield
        finally:
            self._pending -= 1
            if self._pending == 0:
                event.set()

    async def settled(self, *, limit: float = 1.0) -> None:
        """Returns when no request waits for its ack, or after `limit` seconds."""
        if self._pending == 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event().wait(), timeout=limit)


ACKS = AckGate()
