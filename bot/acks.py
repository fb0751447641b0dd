"""Acks first: work that follows an ack waits while other requests still wait for theirs.

Why: Slack gives each slash command 3 seconds to be acked, and in an incident many arrive at
once. The bot serves them on one event loop, so a status message rendered and posted for the
first command runs between the acks of the next ones. A request counts from its arrival (the
HTTP handler, or the Socket Mode message handler) to its ack's response; handlers call
`await ACKS.settled()` before their heavy work after an ack, which returns at once when no
request is pending and none arrived in the last `quiet` seconds, and otherwise when that holds
(bounded by `limit`, so a steady stream of commands cannot starve the work); a lone command
does not wait at all. The quiet period
matters: a burst arrives over a few hundred milliseconds, and between two arrivals nothing may
be pending; work started in that gap would run between the acks of the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterator


class AckGate:
    """Counts requests waiting for their ack; `settled()` waits until there are none."""

    def __init__(self, *, quiet: float = 0.25) -> None:
        self.quiet = quiet
        self._pending = 0
        self._recent: deque[float] = deque()  # arrivals within the last `quiet` seconds
        self._settled: asyncio.Event | None = None

    @property
    def pending(self) -> int:
        return self._pending

    def _event(self) -> asyncio.Event:
        if self._settled is None:
            self._settled = asyncio.Event()
            self._settled.set()
        return self._settled

    def _forget_old(self) -> None:
        horizon = time.monotonic() - self.quiet
        while self._recent and self._recent[0] < horizon:
            self._recent.popleft()

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Wraps the handling of one request, up to its response (the ack)."""
        event = self._event()
        self._pending += 1
        self._recent.append(time.monotonic())
        self._forget_old()
        event.clear()
        try:
            yield
        finally:
            self._pending -= 1
            if self._pending == 0:
                event.set()

    async def settled(self, *, limit: float = 1.0) -> None:
        """Returns when no request waits for its ack and none arrived for `quiet` seconds, or
        after `limit` seconds."""
        self._forget_old()
        if self._pending == 0 and len(self._recent) <= 1:
            return  # a lone command, not a burst: nothing to make way for
        deadline = time.monotonic() + limit
        while True:
            now = time.monotonic()
            # the newest arrival is the deque's last; pruned only once older than `quiet`
            quiet_for = now - self._recent[-1] if self._recent else float("inf")
            if (self._pending == 0 and quiet_for >= self.quiet) or now >= deadline:
                return
            if self._pending:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._event().wait(), timeout=deadline - now)
            else:
                await asyncio.sleep(min(self.quiet - quiet_for, deadline - now))


ACKS = AckGate()
