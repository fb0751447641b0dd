"""What the bot remembers of a graceful shutdown (chapter 3), for the restart that follows (chapter 4).

Why it exists: after power-on, the person running `/etcd-restart-check` needs to know what to
expect: which nodes went down (a node that does not come back is the first thing to notice),
when, who asked, and which backup was taken before, the one a restore would use if the cluster
does not recover. The cluster itself cannot say: its API went down with it.

One JSON record per cluster in Redis (`etcdbot:shutdown:<cluster>`, the last shutdown) and a
short history (`etcdbot:shutdowns:<cluster>`, newest first). A record is written once the
shutdown commands were sent and updated when every node is off and when a restart check finds
the cluster back. No Slack, no cluster access here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis.asyncio as aioredis

HISTORY = 20  # shutdowns kept per cluster


@dataclass(frozen=True)
class NodeAnswer:
    """One node's answer to `sudo shutdown -h 1` (what it printed, or why it did not answer)."""

    node: str
    role: str  # "master" or "worker"
    ok: bool
    answer: str


@dataclass(frozen=True)
class ShutdownRecord:
    cluster: str
    run_id: str
    requester: str
    at: float  # when the shutdown commands were sent (epoch seconds)
    version: str  # the cluster's version at the shutdown (a restore needs the same z-stream)
    backup_id: str  # the backup taken (or found recent) before the shutdown
    nodes: tuple[NodeAnswer, ...]
    off_at: float | None = None  # when every node had stopped answering
    back_at: float | None = None  # when a restart check found the cluster back
    back_run: str = ""

    @property
    def masters(self) -> tuple[str, ...]:
        return tuple(n.node for n in self.nodes if n.role == "master")

    @property
    def workers(self) -> tuple[str, ...]:
        return tuple(n.node for n in self.nodes if n.role != "master")

    def for_storage(self) -> dict[str, Any]:
        data = asdict(self)
        data["nodes"] = [asdict(n) for n in self.nodes]
        return data

    @classmethod
    def from_storage(cls, data: Mapping[str, Any]) -> ShutdownRecord:
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["nodes"] = tuple(NodeAnswer(**{k: v for k, v in n.items() if k in NodeAnswer.__dataclass_fields__})
                                for n in data.get("nodes") or ())
        return cls(**values)


class ShutdownLog:
    """The shutdowns the bot ran, by cluster, in Redis."""

    def __init__(self, *, redis: aioredis.Redis, prefix: str = "etcdbot") -> None:
        self._redis = redis
        self._prefix = prefix

    def _last(self, cluster: str) -> str:
        return f"{self._prefix}:shutdown:{cluster}"

    def _history(self, cluster: str) -> str:
        return f"{self._prefix}:shutdowns:{cluster}"

    async def record(self, shutdown: ShutdownRecord) -> None:
        text = json.dumps(shutdown.for_storage(), sort_keys=True)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._last(shutdown.cluster), text)
            pipe.lpush(self._history(shutdown.cluster), text)
            pipe.ltrim(self._history(shutdown.cluster), 0, HISTORY - 1)
            await pipe.execute()

    async def last(self, cluster: str) -> ShutdownRecord | None:
        raw = await self._redis.get(self._last(cluster))
        if not raw:
            return None
        try:
            return ShutdownRecord.from_storage(json.loads(raw))
        except (ValueError, TypeError):  # a record this version cannot read: as if there were none
            return None

    async def update(self, cluster: str, *, run_id: str, **changes: Any) -> ShutdownRecord | None:
        """Sets fields of the last shutdown if it is still run `run_id`'s (off_at, back_at, back_run)."""
        found = await self.last(cluster)
        if found is None or found.run_id != run_id:
            return None
        updated = replace(found, **changes)
        await self._redis.set(self._last(cluster), json.dumps(updated.for_storage(), sort_keys=True))
        return updated
