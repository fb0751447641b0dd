"""Runs and their steps as immutable records in Redis, so a restarted bot knows what it was doing.

A `Run` and its `StepRecord`s are frozen dataclasses in the manner of kopf's progress storage: a
change makes a new value (`run.with_step(...)`, `run.with_state(...)`), `for_storage()` /
`from_storage()` turn them into JSON-safe dicts and back, and `RunStore.save()` writes only the
records that changed since the value it is given as `previous`. The runner writes after every
step; nothing else writes a run.

Layout (one hash per run, so one step's record is one field):
  etcdbot:run:<id>            hash: "run" -> run JSON, "step:<step id>" -> step JSON,
                              "owner" -> the bot instance that drives it (the write guard)
  etcdbot:runs:<cluster>      sorted set of run ids by creation time (for `/etcd-runs`)
  etcdbot:runs:live           set of run ids not yet finished (for resume after a restart)
  etcdbot:run:<id>:abort      who asked to abort and when (a separate key: the runner never
                              overwrites a request it has not seen yet)
  etcdbot:quarantine:<kind>:<id>:<time>   a record that could not be read, moved aside as it was
  etcdbot:quarantine          sorted set (by time) of JSON notes: what was moved, from where, why

Writes are guarded by owner: `save(..., owner=me)` refuses (`NotOwner`) when another instance
has taken the run over meanwhile, so a bot that was paused past its lock's TTL cannot overwrite
the adopter's record when it wakes up.

A record that cannot be read (Redis lost part of it, a truncated value, a field missing) is never
a reason for the bot not to start: `load()` moves it aside (`quarantine()`), says so in the log,
and answers None; the runner reports it in the audit stream and `/etcd-runs` lists it.

This module does not decide anything: the runner decides, the store remembers.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import WatchError

from bot.log import get_logger
from bot.procedure import PlannedCommand, Procedure, RunId, StepId, StepKind, StepResult

log = get_logger(__name__)

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
    approved_by: str = ""  # the approvers, comma-separated, for a destructive step
    approval: str = ""  # the id of the approval request it waits for, or ran under
    # What a destructive step was about to send when it started (its approved plan): after a
    # crash mid-step this is what is known to have been sent, at most.
    planned: tuple[PlannedCommand, ...] = ()

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
            "approval": self.approval,
            "planned": [[c.target, c.command] for c in self.planned],
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
            approval=data.get("approval", ""),
            planned=tuple(PlannedCommand(target=str(t), command=str(c)) for t, c in data.get("planned") or ()),
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


def connect_redis(url: str, *, timeout: float = 15.0, **options: Any) -> aioredis.Redis:
    """The bot's Redis client. `from_url` alone gives connections that never retry, so after a
    Redis restart every pooled connection would fail its next command once; these retry a
    dropped connection (a few times, quickly) on a fresh one. Commands that could be applied
    twice by such a retry are harmless twice here (INCR of a fencing counter, RPUSH of a wake-up)."""
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3), retry_on_error=[RedisConnectionError], **options,
    )


class NotOwner(Exception):
    """The run was taken over by another bot instance: this one must not write it any more."""

    def __init__(self, *, run_id: str, owner: str) -> None:
        super().__init__(f"run {run_id} is driven by bot instance {owner} now")
        self.run_id = run_id
        self.owner = owner


@dataclass(frozen=True)
class Quarantined:
    """A record moved aside because it could not be read."""

    kind: str  # run | approval | decision
    record_id: str  # the run id, or the approval request id
    key: str  # where it was
    moved_to: str  # where it is now ("" if it vanished before it could be moved)
    reason: str
    cluster: str  # "" when even that could not be read
    at: float

    def for_storage(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "record_id": self.record_id, "key": self.key, "moved_to": self.moved_to,
            "reason": self.reason, "cluster": self.cluster, "at": self.at,
        }

    @classmethod
    def from_storage(cls, data: Mapping[str, Any]) -> Quarantined:
        return cls(
            kind=str(data.get("kind", "")), record_id=str(data.get("record_id", "")), key=str(data.get("key", "")),
            moved_to=str(data.get("moved_to", "")), reason=str(data.get("reason", "")),
            cluster=str(data.get("cluster", "")), at=float(data.get("at", 0.0)),
        )


UNKNOWN_CLUSTER = "-"  # the audit stream of records whose cluster could not be read
_BAD_RECORD = (KeyError, ValueError, TypeError, AttributeError, IndexError, json.JSONDecodeError, UnicodeDecodeError)


def quarantine_index_key(prefix: str = KEY_PREFIX) -> str:
    return f"{prefix}:quarantine"


async def quarantine(
    redis: aioredis.Redis,
    *,
    kind: str,
    record_id: str,
    key: str,
    reason: str,
    cluster: str = "",
    value: str | bytes | None = None,
    prefix: str = KEY_PREFIX,
) -> Quarantined | None:
    """Moves `key` aside (RENAME, so nothing is lost for a person to inspect), or, with `value`,
    stores that value aside (a hash field the caller removed). Notes it in the quarantine index
    and the log. None when the record vanished meanwhile (another replica moved it first)."""
    now = time.time()
    moved_to = f"{prefix}:quarantine:{kind}:{record_id}:{int(now * 1000)}-{secrets.token_hex(2)}"
    if value is not None:
        await redis.set(moved_to, value, ex=RUN_TTL_SECONDS)
    else:
        try:
            await redis.rename(key, moved_to)
            await redis.expire(moved_to, RUN_TTL_SECONDS)
        except aioredis.ResponseError:  # "no such key": someone else moved or deleted it
            if kind == "run":
                await redis.srem(f"{prefix}:runs:live", record_id)
            return None
    note = Quarantined(kind=kind, record_id=record_id, key=key, moved_to=moved_to, reason=reason[:500],
                       cluster=cluster, at=now)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(quarantine_index_key(prefix), {_dump(note.for_storage()): now})
        pipe.zremrangebyrank(quarantine_index_key(prefix), 0, -1001)  # the newest thousand
        if kind == "run":
            pipe.srem(f"{prefix}:runs:live", record_id)
        await pipe.execute()
    log.error("record.quarantined", kind=kind, record=record_id, key=key, moved_to=moved_to, reason=reason[:500],
              cluster=cluster or UNKNOWN_CLUSTER)
    return note


async def quarantined(redis: aioredis.Redis, *, cluster: str | None = None, limit: int = 10,
                      prefix: str = KEY_PREFIX) -> list[Quarantined]:
    """The newest quarantined records, of `cluster` or of no known cluster (None: all)."""
    notes = []
    for raw in await redis.zrevrange(quarantine_index_key(prefix), 0, 999):
        try:
            note = Quarantined.from_storage(json.loads(_text(raw)))
        except _BAD_RECORD:
            continue
        if cluster is None or note.cluster in (cluster, ""):
            notes.append(note)
        if len(notes) >= limit:
            break
    return notes


# The runner reports a quarantined record in the audit stream.
QuarantineHook = Callable[[Quarantined], Awaitable[None]]


class RunStore:
    """Runs in Redis. Writes are per changed record, guarded by owner; a finished run gets a TTL;
    an unreadable run is quarantined, never raised."""

    def __init__(self, *, redis: aioredis.Redis, prefix: str = KEY_PREFIX, on_quarantine: QuarantineHook | None = None) -> None:
        self._redis = redis
        self._prefix = prefix
        self._on_quarantine = on_quarantine

    def _run_key(self, run_id: str) -> str:
        return f"{self._prefix}:run:{run_id}"

    def _abort_key(self, run_id: str) -> str:
        return f"{self._prefix}:run:{run_id}:abort"

    def _cluster_key(self, cluster: str) -> str:
        return f"{self._prefix}:runs:{cluster}"

    @property
    def _live_key(self) -> str:
        return f"{self._prefix}:runs:live"

    async def save(self, run: Run, *, previous: Run | None = None, expect_owner: str | None = None) -> None:
        """Writes `run`; with `previous`, only the step records that differ from it. With
        `expect_owner`, only if the stored run is still that instance's (else NotOwner); a record
        that vanished (Redis lost it) is then written whole again."""
        key = self._run_key(run.id)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    whole = previous is None
                    if expect_owner is not None:
                        await pipe.watch(key)
                        stored_owner = await pipe.hget(key, "owner")
                        if stored_owner is not None and _text(stored_owner) != expect_owner:
                            raise NotOwner(run_id=run.id, owner=_text(stored_owner))
                        if not await pipe.exists(key):
                            whole = True
                        pipe.multi()
                    self._queue_save(pipe, run, previous=None if whole else previous)
                    await pipe.execute()
                    return
                except WatchError:
                    continue  # someone wrote the run meanwhile: look again

    def _queue_save(self, pipe: Any, run: Run, *, previous: Run | None) -> None:
        fields: dict[str, str] = {"run": _dump(run.header_for_storage()), "owner": run.owner}
        before = {r.step_id: r for r in previous.steps} if previous is not None else {}
        for record in run.steps:
            if before.get(record.step_id) != record:
                fields[f"step:{record.step_id}"] = _dump(record.for_storage())
        key = self._run_key(run.id)
        pipe.hset(key, mapping=fields)
        pipe.zadd(self._cluster_key(run.cluster), {run.id: run.created_at})
        if run.state.finished:
            pipe.srem(self._live_key, run.id)
            pipe.expire(key, RUN_TTL_SECONDS)
            pipe.expire(self._abort_key(run.id), RUN_TTL_SECONDS)
        else:
            pipe.sadd(self._live_key, run.id)
            pipe.persist(key)

    async def load(self, run_id: str) -> Run | None:
        """The run, or None if there is none or it could not be read (then it is quarantined)."""
        key = self._run_key(run_id)
        raw = await self._redis.hgetall(key)
        if not raw:
            return None
        fields: dict[str, str] = {}
        try:
            fields = {_text(k): _text(v) for k, v in raw.items()}
            header = json.loads(fields["run"])
            if str(header["id"]) != run_id:
                raise ValueError(f"the record says it is run {header['id']!r}")
            missing = [s for s in header["step_ids"] if f"step:{s}" not in fields]
            if missing:
                raise KeyError(f"step records missing: {', '.join(map(str, missing))}")
            steps = [json.loads(fields[f"step:{step_id}"]) for step_id in header["step_ids"]]
            return Run.from_storage({**header, "steps": steps})
        except _BAD_RECORD as exc:
            reason = f"unreadable run record ({type(exc).__name__}: {exc})"
            note = await quarantine(self._redis, kind="run", record_id=run_id, key=key, reason=reason,
                                    cluster=await self._cluster_of(run_id, fields), prefix=self._prefix)
            if note is not None and self._on_quarantine is not None:
                await self._on_quarantine(note)
            return None

    async def _cluster_of(self, run_id: str, fields: Mapping[str, str]) -> str:
        """The cluster of a broken run: from its header if that much is readable, else from the
        per-cluster indexes; "" if nothing says."""
        try:
            cluster = json.loads(fields["run"])["cluster"]
            if isinstance(cluster, str) and cluster:
                return cluster
        except _BAD_RECORD:
            pass
        async for raw in self._redis.scan_iter(match=f"{self._prefix}:runs:*", count=200):
            index = _text(raw)
            if index == self._live_key:
                continue
            if await self._redis.zscore(index, run_id) is not None:
                return index.removeprefix(f"{self._prefix}:runs:")
        return ""

    async def owner(self, run_id: str) -> str | None:
        """The bot instance that drives the run now (None: no record)."""
        value = await self._redis.hget(self._run_key(run_id), "owner")
        return None if value is None else _text(value)

    async def forget_live(self, run_id: str) -> None:
        """Drops a run id from the live set whose record is gone (Redis lost it)."""
        await self._redis.srem(self._live_key, run_id)

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
        try:
            data = json.loads(_text(raw))
            return AbortRequest(by=str(data["by"]), at=float(data["at"]))
        except _BAD_RECORD:
            # An abort request that cannot be read is still a request to stop: err on the safe side.
            log.error("run.abort_record_unreadable", run_id=run_id)
            return AbortRequest(by="", at=time.time())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
