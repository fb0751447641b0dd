"""Runs and their steps as immutable records in Redis, so a restarted bot knows what it was doing.

A `Run` and its `StepRecord`s are frozen dataclasses in the manner of kopf's progress storage: a
change makes a new value (`run.with_step(...)`, `run.with_state(...)`), `for_storage()` /
`from_storage()` turn them into JSON-safe dicts and back, and `RunStore.save()` writes only the
records that changed since the value it is given as `previous`. The runner writes after every
step; nothing else writes a run.

Layout (one hash per run, so one step's record is one field):
  etcdbot:run:<id>            hash: "run" -> run JSON, "step:<step id>" -> step JSON
  etcdbot:runs:<cluster>      sorted set of run ids by creation time (for `/etcd-runs`)
  etcdbot:runs:live           set of run ids not yet finished (for resume after a restart)
  etcdbot:run:<id>:abort      who asked to abort and when (a separate key: the runner never
                              overwrites a request it has not seen yet)

This module does not decide anything: the runner decides, the store remembers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis

from bot.procedure import Procedure, RunId, StepId, StepKind, StepResult

KEY_PREFIX = "etcdbot"
RUN_TTL_SECONDS = 90 * 24 * 3600  # a finished run is kept this long; the audit stream keeps the rest
MAX_STORED_OUTPUT = 64 * 1024  # characters of a step's output kept in Redis (the thread shows it)


class RunState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"
    INTERRUPTED = "interrupted"  # its bot died mid-run; waits for a person's Resume or Abort

    @property
    def finished(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.ABORTED)


class StepState(StrEnum):
    PENDING = "pending"  # not started (and, if the run ended, never run)
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # was running when the bot died: may have partly happened


@dataclass(frozen=True)
class StepRecord:
    """What happened to one step of one run. `values` must be JSON-serialisable: later steps read
    them back after a restart."""

    step_id: StepId
    title: str
    kind: StepKind
    state: StepState = StepState.PENDING
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    summary: str = ""
    output: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""
    next_action: str = ""
    note: str = ""  # latest heartbeat or approval status, shown beside the step
    approved_by: str = ""  # the second person, for a destructive step

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    def result(self) -> StepResult:
        return StepResult(summary=self.summary, output=self.output, values=dict(self.values))

    def for_storage(self) -> dict[str, Any]:
        return {
            "step_id": self.step_id,
            "title": self.title,
            "kind": self.kind.value,
            "state": self.state.value,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "summary": self.summary,
            "output": self.output[-MAX_STORED_OUTPUT:],
            "values": dict(self.values),
            "error": self.error,
            "next_action": self.next_action,
            "note": self.note,
            "approved_by": self.approved_by,
        }

    @classmethod
    def from_storage(cls, data: Mapping[str, Any]) -> StepRecord:
        return cls(
            step_id=StepId(data["step_id"]),
            title=data["title"],
            kind=StepKind(data["kind"]),
            state=StepState(data["state"]),
            attempts=int(data.get("attempts", 0)),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            summary=data.get("summary", ""),
            output=data.get("output", ""),
            values=dict(data.get("values") or {}),
            error=data.get("error", ""),
            next_action=data.get("next_action", ""),
            note=data.get("note", ""),
            approved_by=data.get("approved_by", ""),
        )


@dataclass(frozen=True)
class Run:
    """One execution of one procedure on one cluster, from the request to its outcome."""

    id: RunId
    cluster: str
    procedure: str  # Procedure.name, the key to rebuild it after a restart
    procedure_title: str
    parameters: Mapping[str, Any]
    requester: str  # Slack user id
    channel: str
    owner: str  # instance id of the bot driving it
    state: RunState = RunState.PENDING
    steps: tuple[StepRecord, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    message_ts: str | None = None  # the progress message
    error: str = ""
    next_action: str = ""
    ended_by: str = ""  # who aborted it / rejected its approval, if anyone
    confirm_rerun: StepId | None = None  # an interrupted step that is not safe to repeat

    @classmethod
    def new(
        cls,
        *,
        run_id: RunId,
        procedure: Procedure,
        cluster: str,
        parameters: Mapping[str, Any],
        requester: str,
        channel: str,
        owner: str,
        now: float,
    ) -> Run:
        steps = tuple(StepRecord(step_id=s.id, title=s.title, kind=s.kind) for s in procedure.steps)
        return cls(
            id=run_id,
            cluster=cluster,
            procedure=procedure.name,
            procedure_title=procedure.title,
            parameters=dict(parameters),
            requester=requester,
            channel=channel,
            owner=owner,
            state=RunState.RUNNING,
            steps=steps,
            created_at=now,
            updated_at=now,
        )

    # -- reading -------------------------------------------------------------------------------
    def step(self, step_id: StepId) -> StepRecord:
        for record in self.steps:
            if record.step_id == step_id:
                return record
        raise KeyError(step_id)

    @property
    def current_step(self) -> StepRecord | None:
        """The step in progress, or else the first not yet done (None when all are done)."""
        active = (StepState.RUNNING, StepState.WAITING_APPROVAL, StepState.INTERRUPTED)
        for record in self.steps:
            if record.state in active:
                return record
        return next((r for r in self.steps if r.state is StepState.PENDING), None)

    @property
    def since(self) -> float:
        current = self.current_step
        if current is not None and current.started_at is not None:
            return current.started_at
        return self.created_at

    def done_steps(self) -> tuple[StepRecord, ...]:
        return tuple(r for r in self.steps if r.state is StepState.SUCCEEDED)

    def not_done_steps(self) -> tuple[StepRecord, ...]:
        return tuple(r for r in self.steps if r.state is not StepState.SUCCEEDED)

    def results(self) -> dict[StepId, StepResult]:
        return {r.step_id: r.result() for r in self.steps if r.state is StepState.SUCCEEDED}

    # -- changing (new values) -----------------------------------------------------------------
    def with_step(self, record: StepRecord, *, now: float) -> Run:
        steps = tuple(record if r.step_id == record.step_id else r for r in self.steps)
        return replace(self, steps=steps, updated_at=now)

    def with_state(self, state: RunState, *, now: float, **changes: Any) -> Run:
        finished_at = now if state.finished else None
        return replace(self, state=state, updated_at=now, finished_at=finished_at, **changes)

    # -- storage -------------------------------------------------------------------------------
    def header_for_storage(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "cluster": self.cluster,
            "procedure": self.procedure,
            "procedure_title": self.procedure_title,
            "parameters": dict(self.parameters),
            "requester": self.requester,
            "channel": self.channel,
            "owner": self.owner,
            "state": self.state.value,
            "step_ids": [r.step_id for r in self.steps],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "message_ts": self.message_ts,
            "error": self.error,
            "next_action": self.next_action,
            "ended_by": self.ended_by,
            "confirm_rerun": self.confirm_rerun,
        }

    def for_storage(self) -> dict[str, Any]:
        return {**self.header_for_storage(), "steps": [r.for_storage() for r in self.steps]}

    @classmethod
    def from_storage(cls, data: Mapping[str, Any]) -> Run:
        return cls(
            id=RunId(data["id"]),
            cluster=data["cluster"],
            procedure=data["procedure"],
            procedure_title=data.get("procedure_title", data["procedure"]),
            parameters=dict(data.get("parameters") or {}),
            requester=data["requester"],
            channel=data["channel"],
            owner=data.get("owner", ""),
            state=RunState(data["state"]),
            steps=tuple(StepRecord.from_storage(s) for s in data.get("steps", ())),
            created_at=float(data.get("created_at", 0.0)),
            updated_at=float(data.get("updated_at", 0.0)),
            finished_at=data.get("finished_at"),
            message_ts=data.get("message_ts"),
            error=data.get("error", ""),
            next_action=data.get("next_action", ""),
            ended_by=data.get("ended_by", ""),
            confirm_rerun=StepId(data["confirm_rerun"]) if data.get("confirm_rerun") else None,
        )


@dataclass(frozen=True)
class AbortRequest:
    by: str
    at: float


def _dump(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


class RunStore:
    """Runs in Redis. Writes are per changed record; a finished run gets a TTL."""

    def __init__(self, *, redis: aioredis.Redis, prefix: str = KEY_PREFIX) -> None:
        self._redis = redis
        self._prefix = prefix

    def _run_key(self, run_id: str) -> str:
        return f"{self._prefix}:run:{run_id}"

    def _abort_key(self, run_id: str) -> str:
        return f"{self._prefix}:run:{run_id}:abort"

    def _cluster_key(self, cluster: str) -> str:
        return f"{self._prefix}:runs:{cluster}"

    @property
    def _live_key(self) -> str:
        return f"{self._prefix}:runs:live"

    async def save(self, run: Run, *, previous: Run | None = None) -> None:
        """Writes `run`; with `previous`, only the step records that differ from it."""
        fields: dict[str, str] = {"run": _dump(run.header_for_storage())}
        before = {r.step_id: r for r in previous.steps} if previous is not None else {}
        for record in run.steps:
            if before.get(record.step_id) != record:
                fields[f"step:{record.step_id}"] = _dump(record.for_storage())
        key = self._run_key(run.id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            if previous is None:
                pipe.zadd(self._cluster_key(run.cluster), {run.id: run.created_at})
            if run.state.finished:
                pipe.srem(self._live_key, run.id)
                pipe.expire(key, RUN_TTL_SECONDS)
                pipe.expire(self._abort_key(run.id), RUN_TTL_SECONDS)
            else:
                pipe.sadd(self._live_key, run.id)
                pipe.persist(key)
            await pipe.execute()

    async def load(self, run_id: str) -> Run | None:
        raw = await self._redis.hgetall(self._run_key(run_id))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        header = json.loads(fields["run"])
        steps = [json.loads(fields[f"step:{step_id}"]) for step_id in header["step_ids"]]
        return Run.from_storage({**header, "steps": steps})

    async def live_run_ids(self) -> list[RunId]:
        return sorted(RunId(_text(m)) for m in await self._redis.smembers(self._live_key))

    async def recent_run_ids(self, *, cluster: str, limit: int) -> list[RunId]:
        ids = await self._redis.zrevrange(self._cluster_key(cluster), 0, max(0, limit - 1))
        return [RunId(_text(i)) for i in ids]

    async def load_many(self, run_ids: Sequence[str]) -> list[Run]:
        runs = [await self.load(i) for i in run_ids]
        return [r for r in runs if r is not None]

    async def request_abort(self, *, run_id: str, by: str, now: float) -> bool:
        """Records an abort request; False if one was already recorded (the first one counts)."""
        created = await self._redis.set(self._abort_key(run_id), _dump({"by": by, "at": now}), nx=True)
        return bool(created)

    async def abort_requested(self, run_id: str) -> AbortRequest | None:
        raw = await self._redis.get(self._abort_key(run_id))
        if raw is None:
            return None
        data = json.loads(_text(raw))
        return AbortRequest(by=data["by"], at=float(data["at"]))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
