"""What a Runner is given and what it answers, apart from the Runner (bot/runner.py) so that its
callers (handlers/, bot/services.py, the scheduler, the watch, tests) and its own modules name one
definition of each:
- given: `ContextFactory` (the app builds each run's StepContext with the cluster's clients; the
  `Heartbeat` it carries is a long step's "still alive"), `ProcedureFactory` (how a restarted bot
  gets back the steps of a stored run), `RunnerPolicy` (lock and presence timeouts, backoff,
  limits).
- answered: `Busy` (the cluster is held by another run: which, who started it, where it is),
  `Answer` (to a person who asked to abort or resume), `Plan` / `PlannedStep` (a dry run: every
  step and command it would send, and the procedure's admission).

Not here: the Runner itself (bot/runner.py); the stored run and its states (bot/store.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from slack_sdk.models.blocks import Block

from bot.locks import DEFAULT_TIMEOUT
from bot.procedure import (
    Admission,
    Fence,
    PlannedCommand,
    Procedure,
    RunId,
    StepContext,
    StepId,
    StepKind,
    StepResult,
)
from bot.progress import render_plan, slack_time, who
from bot.store import Run

Heartbeat = Callable[[str], Awaitable[None]]


class ContextFactory(Protocol):
    """Builds the StepContext of a run (the app gives it the cluster's clients). `fence` is the
    runner's lock check; the context hands it to the kit's write verbs."""

    def __call__(
        self, *, run: Run, results: dict[StepId, StepResult], heartbeat: Heartbeat, fence: Fence
    ) -> StepContext: ...


# name, parameters -> the Procedure: how a restarted bot gets back the steps of a stored run.
ProcedureFactory = Callable[[str, Mapping[str, Any]], Procedure]


@dataclass(frozen=True)
class RunnerPolicy:
    lock_timeout: float = DEFAULT_TIMEOUT  # a dead bot's lock frees itself after this
    instance_ttl: float = 15.0  # a dead bot's runs count as interrupted after this (and their lock expired)
    first_backoff: float = 2.0  # before the first retry of a step; doubles each time
    max_backoff: float = 60.0
    flush_timeout: float = 120.0  # how long the end of a run waits for its final message
    max_approval_requests: int = 5  # per destructive step of a run, when plans keep changing
    heartbeat_every: float = 2.0  # a long step's latest heartbeat is written to Redis at most this often


@dataclass(frozen=True)
class Busy:
    """The answer to a procedure asked for on a cluster another run holds."""

    cluster: str
    run_id: RunId | None
    procedure: str = ""
    requester: str = ""
    current_step: str = ""
    since: float | None = None

    def message(self) -> str:
        if self.run_id is None:
            return f"`{self.cluster}` was busy a moment ago and is free now: try again."
        if not self.procedure:
            return f"`{self.cluster}` is busy: run `{self.run_id}` holds its lock (it is just starting). Try again shortly."
        step = f" at step *{self.current_step}*" if self.current_step else ""
        since = f" since {slack_time(self.since)}" if self.since else ""
        return (
            f"`{self.cluster}` is busy: run `{self.run_id}` ({self.procedure}) started by {who(self.requester)} "
            f"is{step}{since}. Wait for it to finish, or stop it with `/etcd-abort {self.run_id}`."
        )


@dataclass(frozen=True)
class Answer:
    """What a person who asked to abort or resume is told."""

    ok: bool
    message: str
    run: Run | None = None


@dataclass(frozen=True)
class PlannedStep:
    number: int
    step_id: StepId
    title: str
    kind: StepKind
    commands: tuple[PlannedCommand, ...]


@dataclass(frozen=True)
class Plan:
    procedure: Procedure
    cluster: str
    parameters: Mapping[str, Any]
    steps: tuple[PlannedStep, ...]
    admission: Admission = Admission.ok()

    def blocks(self) -> list[Block]:
        rows = [(s.number, s.title, s.kind, s.commands) for s in self.steps]
        return render_plan(procedure=self.procedure, cluster=self.cluster, parameters=self.parameters, plan=rows)
