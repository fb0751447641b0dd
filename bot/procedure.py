"""What a procedure is: data plus small async functions. The runner (bot/runner.py) does the
rest: locking, approvals, progress, audit, timeouts, retries and resume.

This module is the procedure kit, the foundation every procedure module stands on:
- `Procedure` / `Step`: a procedure module under `procedures/` builds a `Procedure` from
  validated parameters; each `Step` carries the document's wording as its title, its kind, the
  limits the runner enforces and a `run(ctx)` that returns a `StepResult`. A step never loops on
  itself, never posts to Slack and never takes a lock. `plan(ctx)` says, without touching
  anything, which commands the step would send: that is what `--dry-run` and approvals show.
- the registry: a procedure module calls `register(...)` at import, so the engine finds it by
  name (`registered(name).build(parameters)`); `load_procedures()` imports the modules that
  register (the built-ins, plus `ETCDBOT_PROCEDURE_MODULES`).
- `Admission`: a procedure's answer to "may this run start now?" (ok, warn with an override
  button, refuse). The runner asks it for every kind of start; handlers only render it.
- typed results: a step returns a frozen dataclass in its `StepResult` (`StepResult.of`), later
  steps read it back with `ctx.result(step_id, Type)`; it is stored as JSON so Redis records and
  Resume after a restart keep working.
- `StepContext`: everything a step may touch; its kube, hosts and etcd are bound to the run's
  fence, so their write verbs check the lock's fencing token before they act.

Not here: Slack, Redis records, the lock (engine); how the cluster is reached (bot/cluster/).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import json
import re
import time
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NewType, Protocol, TypeVar

if TYPE_CHECKING:
    from bot.backups import BackupStore, Catalogue
    from bot.cluster.etcd import EndpointStatuses, EtcdSurvey
    from bot.cluster.etcdctl import EndpointHealth, MemberList
    from bot.cluster.kube import KubeClient
    from bot.cluster.nodes import CommandNote, NodeShell
    from bot.config import ClusterSettings, Settings
    from bot.shutdowns import ShutdownLog

StepId = NewType("StepId", str)  # stable across restarts, e.g. "ch1.run-backup-script"
RunId = NewType("RunId", str)
R = TypeVar("R")


class StepKind(StrEnum):
    READ = "read"  # no change to the cluster
    CHANGE = "change"  # changes the cluster, safe to repeat
    DESTRUCTIVE = "destructive"  # needs a second person's approval before it runs


class StepFailed(Exception):
    """A step's failure the user can act on. `next_action` says what to do now.

    `hold`: the cluster is left half way through something (a restore that moved manifests on
    some masters): the run stops but keeps the cluster's lock, so nothing else starts on it,
    until a person presses Resume (which repeats the step, with a fresh approval when it is
    destructive) or Abort."""

    def __init__(self, message: str, *, next_action: str = "", retryable: bool = False, hold: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.next_action = next_action
        self.retryable = retryable
        self.hold = hold


# ---- waits -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotYet:
    """A wait's check, while its condition does not hold: what it reads now (shown to people)."""

    now: str = ""


class WaitTimedOut(StepFailed):
    """A wait that reached its deadline: the message names what it waited for and what it saw last."""

    def __init__(self, message: str, *, what: str, last: str, next_action: str = "") -> None:
        super().__init__(message, next_action=next_action, retryable=False)
        self.what = what
        self.last = last


async def wait_until(check: Callable[[], Awaitable[R | NotYet]], *, what: str, deadline: float,
                     heartbeat: Callable[[str], Awaitable[None]], interval: float = 0.5,
                     next_action: str = "") -> R:
    """Calls `check` every `interval` seconds until it answers something other than `NotYet`,
    saying in the progress message what it waits for, for how long, and what it reads now. Past
    `deadline` seconds: `WaitTimedOut`. Why here: a procedure's waits ("wait a few minutes and
    check again") are where people get it wrong at 3 a.m.; each must have a deadline and a name."""
    started = time.monotonic()
    last = ""
    while True:
        answer = await check()
        if not isinstance(answer, NotYet):
            return answer
        last = answer.now or last
        elapsed = time.monotonic() - started
        if elapsed >= deadline:
            raise WaitTimedOut(f"gave up waiting for {what} after {deadline:g} s" + (f"; last seen: {last}" if last else ""),
                               what=what, last=last, next_action=next_action)
        await heartbeat(f"waiting for {what} ({elapsed:.0f} s of at most {deadline:g} s)" + (f": {last}" if last else ""))
        await asyncio.sleep(min(interval, max(0.0, deadline - elapsed)))  # the poll of a wait with a deadline


# ---- typed results ---------------------------------------------------------------------------


def result_values(value: Any) -> dict[str, Any]:
    """A result dataclass as the JSON object `StepResult.values` stores (tuples become lists).
    Raises TypeError for a value JSON cannot hold: caught when the step returns, not at Resume."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        raise TypeError(f"a step result must be a dataclass instance, not {type(value).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(value)))


def result_from(cls: type[R], values: Mapping[str, Any]) -> R:
    """The dataclass `cls` rebuilt from stored values (the inverse of `result_values`): lists
    become the tuples the fields declare, nested dataclasses are rebuilt. Raises ValueError on
    a record that does not fit (missing field, wrong shape)."""
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = _coerce(hints[f.name], values[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{cls.__name__}: the stored result has no {f.name!r}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return None
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, Mapping):
            raise ValueError(f"{hint.__name__}: expected an object, got {type(value).__name__}")
        return result_from(hint, value)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value) if len(inner) == 1 else value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value, strict=False)) if args else tuple(value)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ValueError(f"expected an object, got {type(value).__name__}")
        inner_hint = args[1] if len(args) == 2 else Any
        return {k: _coerce(inner_hint, v) for k, v in value.items()}
    if hint is float and isinstance(value, int):
        return float(value)
    return value


@dataclass(frozen=True)
class StepResult:
    """What a step leaves behind: a one-line summary for the progress message, longer output for
    the thread, and values later steps read. Build it with `StepResult.of(summary, Typed(...))`;
    later steps read the typed value with `ctx.result(step_id, Typed)`."""

    summary: str
    output: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, summary: str, result: Any = None, *, output: str = "") -> StepResult:
        return cls(summary=summary, output=output, values=result_values(result) if result is not None else {})


@dataclass(frozen=True)
class PlannedCommand:
    """One command a step would send: where (`api`, `ssh <node>`, `exec <pod>`) and what."""

    target: str
    command: str


NO_ACTION = "none"  # the target of a plan line that sends nothing, only says why


def no_action(why: str) -> PlannedCommand:
    """A plan line for what a step will not do now (no valid CSR pending, nothing to delete)."""
    return PlannedCommand(NO_ACTION, why)


def acts(commands: Sequence[PlannedCommand]) -> bool:
    """Whether a plan sends anything. A destructive step whose plan does not act needs no
    approval: asking a second person at 3 a.m. to approve "nothing" teaches them to press Approve
    without reading. The runner checks again right before the step, and asks if it acts by then."""
    return any(c.target != NO_ACTION for c in commands)


Fence = Callable[[], Awaitable[None]]


async def no_fence() -> None:
    """The fence of a context that acts on nothing (a dry run, a unit test without a lock)."""
    return None


async def no_note(*, target: str, command: str, rc: int | None, elapsed: float, error: str = "") -> None:
    """The command record of a context nobody audits (a unit test)."""
    return None


class EtcdAccess(Protocol):
    """What a step may ask of etcd, wherever it answers: a healthy pod's etcdctl container, else
    a master over SSH with the environment of its static pod manifest (bot/cluster/etcd.py, given
    to steps as bot/cluster/stepetcd.py's `StepEtcd`). `member_remove` is a write: it calls the
    run's fence first. `avoiding(node)` never uses an etcd pod on that node."""

    @property
    def via(self) -> str: ...

    def avoiding(self, *nodes: str) -> EtcdAccess: ...

    async def member_list(self) -> MemberList: ...

    async def member_remove(self, member_id: str) -> MemberList: ...

    async def endpoint_status(self) -> EndpointStatuses: ...

    async def endpoint_health(self) -> tuple[EndpointHealth, ...]: ...

    async def survey(self) -> EtcdSurvey: ...


def _bind(access: Any, fence: Fence) -> Any:
    """`access` bound to `fence` when it has write verbs (`with_fence`), else as it is."""
    bind = getattr(access, "with_fence", None)
    return bind(fence) if callable(bind) else access


@dataclass
class StepContext:
    """Everything a step may touch. Built by the runner (through the engine's context factory)
    for one run.

    `fence` is the runner's check that this run still holds its cluster's lock with its fencing
    token; it raises (and so stops the step) when it does not. `kube`, `hosts` and `etcd` are
    bound to it whenever the context is made (also by `dataclasses.replace(ctx, fence=...)`), so
    their write verbs (kube patch/create/delete/approve, etcd member remove, a changing host
    command, an upload) call it before they act: a paused or cut-off replica can never act after
    another has taken the cluster. Reads never wait on it.
    """

    run_id: RunId
    cluster: ClusterSettings
    settings: Settings
    parameters: Mapping[str, Any]
    kube: KubeClient
    hosts: NodeShell
    results: dict[StepId, StepResult]
    heartbeat: Callable[[str], Awaitable[None]]  # long steps report progress; the runner renews the lock
    requester: str = ""  # the Slack user who started the run (recorded with what the run makes)
    fence: Fence = no_fence
    etcd: EtcdAccess | None = None  # member list/remove, health, status (bot/cluster/etcd.py)
    overrides: frozenset[str] = frozenset()  # admission warnings a person chose to override
    store: BackupStore | None = None  # the backup store (files)
    catalogue: Catalogue | None = None  # the backup catalogue (Redis)
    # Records a command the step sent other than through `hosts` (which records its own), e.g. an
    # API write as the document's `oc patch ...`, with its exit status: the run's audit stream.
    note_command: CommandNote = no_note
    shutdowns: ShutdownLog | None = None  # the graceful shutdowns the bot ran (Redis), for the restart check

    def __post_init__(self) -> None:
        self.kube = _bind(self.kube, self.fence)
        self.hosts = _bind(self.hosts, self.fence)
        self.etcd = _bind(self.etcd, self.fence)

    @property
    def cluster_name(self) -> str:
        return self.cluster.name

    def result(self, step_id: StepId, cls: type[R]) -> R:
        """The typed result an earlier step of this run left (`StepResult.of(..., cls(...))`)."""
        found = self.results.get(step_id)
        if found is None:
            raise StepFailed(f"internal: step {step_id} left no result for this step to read",
                             next_action="Start the procedure again.")
        try:
            return result_from(cls, found.values)
        except (ValueError, TypeError) as exc:
            raise StepFailed(f"internal: the result of step {step_id} is not a {cls.__name__}: {exc}",
                             next_action="Start the procedure again.") from exc

    def need_kube(self) -> KubeClient:
        """The cluster's API, or a failure that says how to configure it."""
        if self.kube is None:
            raise StepFailed("the cluster's API is not configured (no kubeconfig)",
                             next_action="Fix the cluster's kubeconfig in ETCDBOT_CLUSTERS.")
        return self.kube

    def need_hosts(self) -> NodeShell:
        """SSH to the cluster's nodes, or a failure that says how to configure it."""
        if self.hosts is None:
            raise StepFailed(
                "no SSH access to the masters is configured for this cluster",
                next_action="Add `ssh` (user, key, known_hosts, hosts) to the cluster in ETCDBOT_CLUSTERS.",
            )
        return self.hosts

    def need_etcd(self) -> EtcdAccess:
        if self.etcd is None:
            raise StepFailed("no etcd access is configured for this run",
                             next_action="Check the cluster's kubeconfig and SSH settings in ETCDBOT_CLUSTERS.")
        return self.etcd


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
    a dry run and a scheduled start alike; handlers only render it.

    `message` is plain text about the cluster (no Slack markup beyond `code`); `until` is when a
    refusal stops applying, if it is known (the handler shows it in the reader's time zone, the
    scheduler says it once)."""

    verdict: Verdict
    message: str = ""
    next_action: str = ""
    override: str = ""  # WARN: the id a person overrides by pressing the button (e.g. "peak-hours")
    override_label: str = ""  # WARN: the button's text (e.g. "Back up anyway")
    until: float | None = None  # REFUSE: epoch seconds from which the refusal no longer applies

    @classmethod
    def ok(cls) -> Admission:
        return cls(Verdict.OK)

    @classmethod
    def refuse(cls, message: str, *, next_action: str = "", until: float | None = None) -> Admission:
        return cls(Verdict.REFUSE, message=message, next_action=next_action, until=until)

    @classmethod
    def warn(cls, message: str, *, override: str, label: str, next_action: str = "") -> Admission:
        if not override or not label:
            raise ValueError("a warning needs an override id and a button label")
        return cls(Verdict.WARN, message=message, next_action=next_action, override=override, override_label=label)

    @property
    def admitted(self) -> bool:
        return self.verdict is Verdict.OK


AdmissionFn = Callable[[StepContext], Awaitable[Admission]]
# A dry run's extra parameters (e.g. the master a run would pick now), shown with the plan and
# read by the steps' plans; API reads only.
PreviewFn = Callable[[StepContext], Awaitable[Mapping[str, Any]]]


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
    preview: PreviewFn | None = None


async def plan_of(step: Step, ctx: StepContext) -> list[PlannedCommand]:
    """The step's plan, whether its plan function is sync or async."""
    planned = step.plan(ctx)
    if inspect.isawaitable(planned):
        planned = await planned
    return list(planned)


async def admit(procedure: Procedure, ctx: StepContext) -> Admission:
    """The procedure's admission for this context: OK without a check; a WARN whose override a
    person chose (`ctx.overrides`) counts as OK. A check that fails is a refusal, never a start."""
    if procedure.admission is None:
        return Admission.ok()
    try:
        answer = await procedure.admission(ctx)
    except StepFailed as exc:
        return Admission.refuse(exc.message, next_action=exc.next_action)
    if answer.verdict is Verdict.WARN and answer.override in ctx.overrides:
        return Admission.ok()
    return answer


async def preview_of(procedure: Procedure, ctx: StepContext) -> dict[str, Any]:
    """What a dry run adds to the parameters it shows (nothing when the procedure says nothing)."""
    return dict(await procedure.preview(ctx)) if procedure.preview is not None else {}


# ---- the registry ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """An argument of a procedure's slash command (the cluster is always the last, optional one,
    added by the handler): its name, the pattern it must match, an example. Positional, unless
    `flag` names the option that carries it (`--recovery-host NODE`; always optional)."""

    name: str
    pattern: re.Pattern[str]
    example: str
    optional: bool = False
    flag: str = ""


Builder = Callable[[Mapping[str, Any]], Procedure]


@dataclass(frozen=True)
class Registration:
    """A procedure the engine can build by name. `command` is the slash command that starts it
    through the generic handler ("" when a handler of its own does, or none: a test procedure
    started by tests); `params` are that command's arguments, passed to `build` by name."""

    name: str
    build: Builder
    title: str
    command: str = ""
    params: tuple[Param, ...] = ()
    summary: str = ""
    module: str = ""


_REGISTRY: dict[str, Registration] = {}


def register(name: str, build: Builder, *, title: str, command: str = "", params: Iterable[Param] = (),
             summary: str = "") -> Registration:
    """Called by a procedure module at import. A name belongs to one module: registering it from
    another raises, so two procedures can never answer to one name."""
    module = getattr(build, "__module__", "") or ""
    entry = Registration(name=name, build=build, title=title, command=command, params=tuple(params),
                         summary=summary, module=module)
    known = _REGISTRY.get(name)
    if known is not None and known.module != module:
        raise ValueError(f"procedure {name!r} is registered by {known.module} already; {module} cannot take it")
    _REGISTRY[name] = entry
    return entry


def registered(name: str) -> Registration:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"no procedure named {name!r} (registered: {known})") from None


def registrations() -> tuple[Registration, ...]:
    return tuple(_REGISTRY[name] for name in sorted(_REGISTRY))


def build_procedure(name: str, parameters: Mapping[str, Any]) -> Procedure:
    """Name -> Procedure, through the registry: how the engine starts a run, and how a restarted
    bot gets back the steps of a stored one."""
    return registered(name).build(parameters)


def load_procedures(modules: Iterable[str]) -> tuple[Registration, ...]:
    """Imports each module (dotted name) so it registers itself; returns everything registered.
    An import failure names the module, so a wrong ETCDBOT_PROCEDURE_MODULES stops the bot at start."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"procedure module {module!r} cannot be imported: {exc}") from exc
    return registrations()
