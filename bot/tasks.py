"""Stopping a background task for sure.

Why this exists: redis-py's asyncio client can swallow a `CancelledError` that lands inside a
command (redis/redis-py#2028, #2551; reproduced with redis-py 8 on a plain `reacquire()`), so one
`task.cancel()` may leave a renewal loop, a presence loop or a run running. `cancel_and_wait()`
cancels again until the task is done, and gives up (returning False) at a deadline rather than
hanging a shutdown.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any], *, timeout: float = 10.0, every: float = 0.05) -> bool:
    """Cancels `task` and waits until it is done; True if it ended within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(every, remaining))
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not report it as never retrieved
    return True
