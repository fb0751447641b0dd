"""One lock per cluster, so two people cannot run two procedures on the same etcd at once, and a
fencing token per acquisition, so a bot that lost the lock can never act as if it still held it.

This is redis-py's asyncio `Lock`, not a hand-made one: the token check and the TTL reset happen
in its Lua scripts. What this module adds:
- a fencing token: every acquisition first takes the next number of a Redis counter
  (`<prefix>:fence:<cluster>`, INCR, never reset), and the lock's value is `<run id>:<number>`.
  "Who holds the cluster" is still one GET away (the busy answer names the run), and a number
  once lost is never valid again: a bot that is paused (SIGSTOP, a stalled event loop, a cut
  network) past the TTL comes back holding a number that no longer matches;
- `fence()`: one atomic check in Redis (Lua) that the lock still carries exactly this run's
  value. The runner calls it before every destructive step and gives it to the step context, whose
  write verbs call it before they act (Kleppmann's fencing, with Redis as the guard);
- `thread_local=False`: asyncio tasks share a thread, and each run has its own `ClusterLock`;
- a background task calls `reacquire()` every third of the timeout while the run lives. When
  renewal fails (the key is gone or holds another value, or Redis has not confirmed the lock by
  a tenth of the TTL before it would run out) `lost` is set at once, and the runner cancels the
  step in flight: nothing waits for the next step boundary.

There is no "take back the lock of my run after a restart": the token of a previous holder is
never reused. A run is adopted only once its lock has expired (bot/run_recovery.py), so a holder
that still renews is never doubled. Read-only commands never come here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, LockNotOwnedError, RedisError

from bot.log import get_logger
from bot.procedure import RunId
from bot.tasks import cancel_and_wait

log = get_logger(__name__)

DEFAULT_TIMEOUT = 45.0  # renewed every 15 s; a dead bot's runs are taken over within about a minute

# KEYS[1] the lock; ARGV[1] the value this run holds it with. 1 if still held so, else 0.
_FENCE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""


class LockLost(Exception):
    """This run no longer holds its cluster's lock with its fencing token: nothing may act for it."""

    def __init__(self, *, cluster: str, run_id: str, token: int | None, holder: str | None = None) -> None:
        now = f"; run `{holder}` holds it now" if holder and not holder.startswith(f"{run_id}:") else ""
        super().__init__(
            f"run `{run_id}` no longer holds the lock of `{cluster}` (its fencing token {token} is stale{now})"
        )
        self.cluster = cluster
        self.run_id = run_id
        self.token = token
        self.holder = holder


def lock_key(cluster: str, *, prefix: str = "etcdbot") -> str:
    return f"{prefix}:lock:{cluster}"


def fence_counter_key(cluster: str, *, prefix: str = "etcdbot") -> str:
    return f"{prefix}:fence:{cluster}"


@dataclass(frozen=True)
class Holder:
    """The lock's value, read: which run holds the cluster, with which fencing token."""

    run_id: RunId
    token: int | None

    @classmethod
    def parse(cls, value: bytes | str) -> Holder:
        text = value.decode() if isinstance(value, bytes) else value
        run, sep, number = text.rpartition(":")
        if sep and number.isdigit():
            return cls(run_id=RunId(run), token=int(number))
        return cls(run_id=RunId(text), token=None)  # a value from before fencing tokens


async def lock_value(redis: aioredis.Redis, *, cluster: str, prefix: str = "etcdbot") -> Holder | None:
    value = await redis.get(lock_key(cluster, prefix=prefix))
    return None if value is None else Holder.parse(value)


async def lock_holder(redis: aioredis.Redis, *, cluster: str, prefix: str = "etcdbot") -> RunId | None:
    """The run id holding `cluster`'s lock, or None if it is free."""
    holder = await lock_value(redis, cluster=cluster, prefix=prefix)
    return None if holder is None else holder.run_id


class ClusterLock:
    """The lock of one cluster, held on behalf of one run. Not shared between runs."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        cluster: str,
        run_id: RunId,
        timeout: float = DEFAULT_TIMEOUT,
        prefix: str = "etcdbot",
    ) -> None:
        self.cluster = cluster
        self.run_id = run_id
        self.timeout = timeout
        self.token: int | None = None  # the fencing token of this acquisition
        self.lost = asyncio.Event()
        self._redis = redis
        self._prefix = prefix
        self._key = lock_key(cluster, prefix=prefix)
        self._lock = Lock(
            redis,
            self._key,
            timeout=timeout,
            blocking=False,
            thread_local=False,
            raise_on_release_error=False,
        )
        self._fence = redis.register_script(_FENCE_SCRIPT)
        self._renewal: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def value(self) -> str:
        return f"{self.run_id}:{self.token}"

    async def acquire(self) -> bool:
        """Takes the lock now with a new fencing token, or answers False (never waits: a busy
        cluster is an answer). A number taken by an acquisition that lost the race is simply
        never used; the counter only grows."""
        token = int(await self._redis.incr(fence_counter_key(self.cluster, prefix=self._prefix)))
        acquired = await self._lock.acquire(blocking=False, token=f"{self.run_id}:{token}")
        if acquired:
            self.token = token
            self.lost.clear()
            self._start_renewal()
        return bool(acquired)

    async def held(self) -> bool:
        """True while Redis says the lock carries this run's value (one atomic check)."""
        if self.token is None or self.lost.is_set():
            return False
        return bool(await self._fence(keys=[self._key], args=[self.value]))

    async def fence(self) -> None:
        """Raises LockLost unless the lock is still held with this run's fencing token. The last
        word before anything that changes the cluster."""
        if not await self.held():
            holder = await self._redis.get(self._key)
            self.lost.set()
            raise LockLost(
                cluster=self.cluster, run_id=self.run_id, token=self.token,
                holder=holder.decode() if isinstance(holder, bytes) else holder,
            )

    async def release(self) -> None:
        """Stops renewal and releases, only if the lock still carries this run's token (checked in
        redis-py's Lua); releasing a lock that expired or passed to another run is not an error."""
        await self.stop_renewal()
        if self._lock.local.token is None:
            return
        try:
            await self._lock.release()
        except LockError:
            log.warning("lock.release_not_owned", cluster=self.cluster, run_id=self.run_id, token=self.token)

    async def stop_renewal(self) -> None:
        """Stops renewing without releasing: the lock then expires after `timeout` on its own."""
        task, self._renewal = self._renewal, None
        if task is not None:
            # The flag as well as cancel(): redis-py may swallow a cancellation inside a command.
            self._stopping = True
            await cancel_and_wait(task)

    def _start_renewal(self) -> None:
        if self._renewal is None:
            self._stopping = False
            self._renewal = asyncio.create_task(self._renew(), name=f"lock-renewal-{self.run_id}")

    def _declare_lost(self, reason: str, **fields: object) -> None:
        log.error("lock.lost", cluster=self.cluster, run_id=self.run_id, token=self.token, reason=reason, **fields)
        self.lost.set()

    async def _renew(self) -> None:
        """Renews every third of the TTL. The lock is known to be ours until `deadline` (the start
        of the last successful renewal plus the TTL); a slow or failed answer is retried until
        shortly before that deadline, and the lock is declared lost before it passes, never after,
        so the step is cancelled before another replica could take the cluster."""
        interval = self.timeout / 3
        margin = self.timeout / 10  # room to cancel the step before the TTL really runs out
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout  # acquired (or renewed) just before this task started
        delay = interval
        while not self._stopping:
            await asyncio.sleep(delay)
            if self._stopping:
                return
            started = loop.time()
            budget = deadline - margin - started
            if budget <= 0:
                # Paused (SIGSTOP, a stalled loop) or Redis silent until the end: may be anyone's now.
                self._declare_lost("not renewed within its TTL")
                return
            try:
                async with asyncio.timeout(budget):
                    await self._lock.reacquire()
            except LockNotOwnedError:
                self._declare_lost("the lock expired or another run holds it")
                return
            except (RedisError, OSError, TimeoutError) as exc:
                # Redis may come back before the deadline: try again soon, until it is too late.
                log.warning("lock.renewal_failed", cluster=self.cluster, run_id=self.run_id, error=str(exc) or "timeout")
                delay = min(interval / 3, max(0.0, deadline - margin - loop.time()))
                continue
            deadline = started + self.timeout
            delay = interval
