"""Slack's per-channel posting limit, so the bot's progress updates meet it in the lab.

Slack allows about one message per second per channel, with short bursts, for chat.postMessage
and (in practice) chat.update; past it the answer is HTTP 429 with `Retry-After`. A bot that
edits a progress message on every log line hits this in a real incident; the lab makes it hit it
in tests. Modelled as a sliding window: at most N accepted calls per S seconds per channel.
Rejected calls do not use up the budget.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class ChannelRateLimiter:
    def __init__(self, *, limit: tuple[int, float], clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._accepted: dict[str, deque[float]] = {}

    def check(self, *, channel: str) -> int | None:
        """Accept a call (None) or say how many seconds to wait (the `Retry-After` value, >= 1)."""
        count, per_seconds = self.limit
        now = self._clock()
        window = self._accepted.setdefault(channel, deque())
        while window and now - window[0] >= per_seconds:
            window.popleft()
        if len(window) < count:
            window.append(now)
            return None
        return max(1, math.ceil(per_seconds - (now - window[0])))
