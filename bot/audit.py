"""The audit trail: every run, step, outcome, parameter and actor, appended to a Redis stream per
cluster (`etcdbot:audit:<cluster>`).

Why a stream and not the run records: run records change and expire; the trail only grows (up to
an approximate cap) and says who did what, in order, even for runs whose record is gone. Entries
are flat string fields (`event`, `run`, `actor`, `at`, plus event-specific ones; mappings as
JSON), readable with `XREVRANGE` by a person at a redis-cli prompt.

`recent_runs()` answers `/etcd-runs` from the trail alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from bot.procedure import RunId

MAX_ENTRIES = 100_000  # per cluster, approximate (XADD MAXLEN ~)


def audit_key(cluster: str, *, prefix: str = "etcdbot") -> str:
    return f"{prefix}:audit:{cluster}"


@dataclass(frozen=True)
class RunSummary:
    """One line of `/etcd-runs`."""

    run_id: RunId
    procedure: str
    requester: str
    started_at: float
    state: str  # the latest run state recorded: running, waiting_approval, succeeded, failed, ...
    last_event_at: float
    parameters: Mapping[str, Any]


class Audit:
    def __init__(self, *, redis: aioredis.Redis, prefix: str = "etcdbot") -> None:
        self._redis = redis
        self._prefix = prefix

    async def record(
        self,
        *,
        cluster: str,
        event: str,
        actor: str,
        run_id: str = "",
        at: float | None = None,
        **fields: Any,
    ) -> str:
        """Appends one entry and returns its stream id. `fields` values: text, numbers or mappings."""
        entry: dict[str, str] = {
            "event": event,
            "run": run_id,
            "actor": actor,
            "at": repr(time.time() if at is None else at),
        }
        for name, value in fields.items():
            if value is None:
                continue
            entry[name] = json.dumps(value, sort_keys=True, default=str) if isinstance(value, Mapping | list | tuple) else str(value)
        stream_id = await self._redis.xadd(
            audit_key(cluster, prefix=self._prefix), entry, maxlen=MAX_ENTRIES, approximate=True
        )
        return stream_id.decode() if isinstance(stream_id, bytes) else stream_id

    async def entries(self, *, cluster: str, count: int = 100) -> list[dict[str, str]]:
        """The newest `count` entries, newest first."""
        raw = await self._redis.xrevrange(audit_key(cluster, prefix=self._prefix), count=count)
        return [{"id": _text(i), **{_text(k): _text(v) for k, v in f.items()}} for i, f in raw]

    async def recent_runs(self, *, cluster: str, limit: int = 10, scan: int = 5000) -> list[RunSummary]:
        """The `limit` most recently started runs of `cluster`, newest first, from the last `scan`
        entries of its trail."""
        latest: dict[str, tuple[str, float]] = {}  # run -> newest run-level state and its time
        started: dict[str, dict[str, str]] = {}
        order: list[str] = []
        last_id = "+"
        remaining = scan
        while remaining > 0 and len(order) < limit:
            page = await self._redis.xrevrange(
                audit_key(cluster, prefix=self._prefix), max=last_id, count=min(500, remaining)
            )
            if not page:
                break
            for raw_id, raw_fields in page:
                fields = {_text(k): _text(v) for k, v in raw_fields.items()}
                run_id, event = fields.get("run", ""), fields.get("event", "")
                if run_id and event.startswith("run.") and "state" in fields and run_id not in latest:
                    latest[run_id] = (fields["state"], float(fields["at"]))
                if run_id and event == "run.started" and run_id not in started:
                    started[run_id] = fields
                    order.append(run_id)
                last_id = "(" + _text(raw_id)
            remaining -= len(page)
        summaries = []
        for run_id in order[:limit]:
            fields = started[run_id]
            state, last_at = latest.get(run_id, ("running", float(fields["at"])))
            summaries.append(
                RunSummary(
                    run_id=RunId(run_id),
                    procedure=fields.get("procedure", ""),
                    requester=fields.get("actor", ""),
                    started_at=float(fields["at"]),
                    state=state,
                    last_event_at=last_at,
                    parameters=json.loads(fields.get("parameters", "{}")),
                )
            )
        return summaries


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
