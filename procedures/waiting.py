"""A wait with a deadline and a name, for the steps of chapters 3 and 4 ("wait approximately 10
minutes", "verify that all master nodes are ready").

Why: each wait a person does by hand at 3 a.m. ("check again in a minute") is where a procedure
goes wrong; here every one has a deadline, says in the progress message what it waits for and
what it reads now, and ends with what it saw last. (The restore branch adds the same helper to
the kit as `bot.procedure.wait_until`; this one keeps its names so the two can merge.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class NotYet:
    """A check's answer while its condition does not hold: what it reads now."""

    now: str = ""


class WaitTimedOut(Exception):
    """The deadline passed; `last` is what the check read last."""

    def __init__(self, *, what: str, deadline: float, last: str) -> None:
        super().__init__(f"gave up waiting for {what} after {deadline:g} s" + (f"; last seen: {last}" if last else ""))
        self.what = what
        self.last = last


async def wait_until(check: Callable[[], Awaitable[R | NotYet]], *, what: str, deadline: float,
                     heartbeat: Callable[[str], Awaitable[None]], interval: float = 1.0) -> R:
    """Calls `check` every `interval` seconds until it answers something else than NotYet."""
    started = time.monotonic()
    last = ""
    while True:
        answer = await check()
        if not isinstance(answer, NotYet):
            return answer
        last = answer.now or last
        elapsed = time.monotonic() - started
        if elapsed >= deadline:
            raise WaitTimedOut(what=what, deadline=deadline, last=last)
        await heartbeat(f"waiting for {what} ({elapsed:.0f} s of at most {deadline:g} s)" + (f": {last}" if last else ""))
        await asyncio.sleep(min(interval, max(0.0, deadline - elapsed)))  # the poll of a wait with a deadline
