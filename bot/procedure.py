"""What a procedure is: data plus small async functions. The runner (bot/runner.py) does the
rest: locking, approvals, progress, audit, timeouts, retries and resume.

A procedure module under `procedures/` builds a `Procedure` from validated parameters; each
`Step` carries the document's wording as its title, its kind, the limits the runner enforces
and a `run(ctx)` that returns a `StepResult`. A step never loops on itself, never posts to
Slack and never takes a lock. `plan(ctx)` says, without touching anything, which commands the
step would send: that is what `--dry-run` shows.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NewType

if TYPE_CHECKING:
    from bot.cluster.hosts import Hosts
    from bot.cluster.kube import KubeClient
    from bot.config import ClusterSettings, Settings

StepId = NewType("StepId", str)  # stable across restarts, e.g. "ch1.run-backup-script"
RunId = NewType("RunId", str)


class StepKind(StrEnum):
    READ = "read"  # no change to the cluster
    CHANGE = "change"  # changes the cluster, safe to repeat
    DESTRUCTIVE = "destructive"  # needs a second person's approval before it runs


class StepFailed(Exception):
    """A step's failure the user can act on. `next_action` says what to do now."""

    def __init__(self, message: str, *, next_action: str = "", retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.next_action = next_action
        self.retryable = retryable


@dataclass(frozen=True)
class StepResult:
    """What a step leaves behind: a one-line summary for the progress message, longer output for
    the thread, and values later steps read from `ctx.results`."""

    summary: str
    output: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedCommand:
    """One command a step would send: where (`api`, `ssh <node>`, `exec <pod>`) and what."""

    target: str
    command: str


async def no_fence() -> None:
    """The fence of a context that acts on nothing (a dry run, a unit test without a lock)."""
    return None


@dataclass
class StepContext:
    """Everything a step may touch. Built by the runner for one run.

    `fence` is the runner's check that this run still holds its cluster's lock with its fencing
    token; it raises (and so stops the step) when it does not. The kit's write verbs (kube
    patch/create/delete/approve, etcd member remove, a changing host command) call it before
    they act, so a paused or cut-off replica can never act after another has taken the cluster.
    """

    run_id: RunId
    cluster: ClusterSettings
    settings: Settings
    parameters: Mapping[str, Any]
    kube: KubeClient
    hosts: Hosts
    results: dict[StepId, StepResult]
    heartbeat: Callable[[str], Awaitable[None]]  # long steps report progress; the runner renews the lock
    requester: str = ""  # the Slack user who started the run (recorded with what the run makes)
    fence: Callable[[], Awaitable[None]] = no_fence
    etcd: Any = None  # bot.cluster etcd access (member list/remove/health/status): set by the kit
    overrides: frozenset[str] = frozenset()  # admission warnings a person chose to override


StepFn = Callable[[StepContext], Awaitable[StepResult]]
# A plan may need the cluster (the member ID to remove, a file's sha256): it may be async. The
# runner awaits it when it returns an awaitable.
PlanFn = Callable[[StepContext], "list[PlannedCommand] | Awaitable[list[PlannedCommand]]"]


class Verdict(StrEnum):
    OK = "ok"
    WARN = "warn"  # may go on if a person presses the override button
    REFUSE = "refuse"


@dataclass(frozen=True)
class Admission:
    """A procedure's answer to "may this run start now?". The runner asks it for a real start,
    a dry run and a scheduled start alike; handlers only render it."""

    verdict: Verdict
    message: str = ""
    next_action: str = ""
    override: str = ""  # WARN: the id a person overrides by pressing the button (e.g. "peak-hours")
    override_label: str = ""  # WARN: the button's text (e.g. "Back up anyway")

    @classmethod
    def ok(cls) -> Admission:
        return cls(Verdict.OK)


AdmissionFn = Callable[[StepContext], Awaitable[Admission]]


@dataclass(frozen=True)
class Step:
    id: StepId
    title: str  # the document's words
    kind: StepKind
    run: StepFn
    plan: PlanFn
    timeout: float = 120.0
    retries: int = 0
    safe_to_repeat: bool = False  # whether Resume may re-run it after a crash mid-step; say so per step
    # Consecutive destructive steps with the same non-empty group share one approval, whose plan
    # lists them all (e.g. restore's "stop the control plane and replace the data").
    approval_group: str = ""


@dataclass(frozen=True)
class Procedure:
    name: str  # e.g. "backup"
    title: str  # e.g. "Backing up etcd data"
    chapter: str  # e.g. "1"
    steps: tuple[Step, ...]
    takes_lock: bool = True
    admission: AdmissionFn | None = None


async def plan_of(step: Step, ctx: StepContext) -> list[PlannedCommand]:
    """The step's plan, whether its plan function is sync or async."""
    planned = step.plan(ctx)
    if inspect.isawaitable(planned):
        planned = await planned
    return list(planned)
