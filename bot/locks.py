"""One lock per cluster, so two people cannot run two procedures on the same etcd at once.

This is redis-py's asyncio `Lock`, not a hand-made one: the token check and the TTL reset happen
in its Lua scripts. What this module adds:
- the token is the run id, so "who holds the cluster" is one GET away (the busy answer names
  the run) and a restarted bot can take back the lock of a run it recovers;
- `thread_local=False`: asyncio tasks share a thread, and each run has its own `ClusterLock`;
- a background task calls `reacquire()` every third of the timeout while the run lives, so a
  long step keeps the lock and a dead bot's lock expires on its own after `timeout` seconds.

If renewal fails (Redis away too long, or the key expired and someone else took it), `lost` is
set; the runner stops before the next step. Read-only commands never come here.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, LockNotOwnedError, RedisError

from bot.log import get_logger
from bot.procedure import RunId
from bot.tasks import cancel_and_wait

log = get_logger(__name__)

DEFAULT_TIMEOUT = 60.0


def lock_key(cluster: str, *, prefix: str = "etcdbot") -> str:
    return f"{prefix}:lock:{cluster}"


async def lock_holder(redis: aioredis.Redis, *, cluster: str, prefix: str = "etcdbot") -> RunId | None:
    """The run id holding `cluster`'s lock, or None if it is free."""
    value = await redis.get(lock_key(cluster, prefix=prefix))
    if value is None:
        return None
    return RunId(value.decode() if isinstance(value, bytes) else value)


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
        self.lost = asyncio.Event()
        self._lock = Lock(
            redis,
            lock_key(cluster, prefix=prefix),
            timeout=timeout,
            blocking=False,
            thread_local=False,
            raise_on_release_error=False,
        )
        self._renewal: asyncio.Task[None] | None = None
        self._stopping = False

    async def acquire(self) -> bool:
        """Takes the lock now or answers False (never waits: a busy cluster is an answer)."""
        acquired = await self._lock.acquire(blocking=False, token=self.run_id)
        if acquired:
            self._start_renewal()
        return acquired

    async def keep_or_acquire(self) -> bool:
        """After a restart: keeps the lock if it still carries this run's token, takes it if it
        expired meanwhile, and answers False if another run holds it now."""
        if await self.acquire():
            return True
        self._lock.local.token = self.run_id.encode()  # documented: the token may be set from outside
        try:
            await self._lock.reacquire()
        except LockNotOwnedError:
            self._lock.local.token = None
            return False
        self._start_renewal()
        return True

    async def release(self) -> None:
        """Stops renewal and releases; releasing a lock that already expired is not an error."""
        await self.stop_renewal()
        if self._lock.local.token is None:
            return
        try:
            await self._lock.release()
        except LockError:
            log.warning("lock.release_not_owned", cluster=self.cluster, run_id=self.run_id)

    async def stop_renewal(self) -> None:
        """Stops renewing without releasing: the lock then expires after `timeout` on its own."""
        task, self._renewal = self._renewal, None
        if task is not None:
            # The flag as well as cancel(): redis-py may swallow a cancellation inside a command.
            self._stopping = True
            await cancel_and_wait(task)

    async def owned(self) -> bool:
        return await self._lock.owned()

    def _start_renewal(self) -> None:
        if self._renewal is None:
            self._stopping = False
            self._renewal = asyncio.create_task(self._renew(), name=f"lock-renewal-{self.run_id}")

    async def _renew(self) -> None:
        interval = self.timeout / 3
        loop = asyncio.get_running_loop()
        last_success = loop.time()
        while not self._stopping:
            await asyncio.sleep(interval)
            if self._stopping:
                return
            try:
                await self._lock.reacquire()
                last_success = loop.time()
            except LockNotOwnedError:
                log.error("lock.lost", cluster=self.cluster, run_id=self.run_id)
                self.lost.set()
                return
            except (RedisError, OSError) as exc:
                # Redis may come back before the TTL runs out; past it the lock is gone.
                log.warning("lock.renewal_failed", cluster=self.cluster, run_id=self.run_id, error=str(exc))
                if loop.time() - last_success >= self.timeout:
                    self.lost.set()
                    return
