"""What the steps of chapter 2.4 (procedures/replace_member.py) share: the step ids, the typed
results they pass on, where a step reads the member it works on (its run's identify step, or a
dry run's preview), and the helpers every wait and call goes through (a deadline on every wait,
failures a person can act on)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bot.cluster.etcd import EtcdctlFailed, EtcdUnavailable
from bot.cluster.kube import MACHINE, MACHINE_NAMESPACE, KubeError
from bot.config import NODE_NAME_RE
from bot.procedure import (
    PlannedCommand,
    StepContext,
    StepFailed,
    StepId,
    StepResult,
)
from procedures import backup
from procedures.facts import ClusterFacts
from procedures.replace_rules import (
    VARIANT_A,
    VARIANT_B,
    VARIANT_TITLES,
    secret_names,
)
from procedures.status import gather_facts

GROUP = "replace-member"  # the approval group: one approval for the destructive block

MANIFEST = "/etc/kubernetes/manifests/etcd-pod.yaml"
MANIFEST_BACKUP_DIR = "/var/lib/etcd-backup"
DATA_DIR = "/var/lib/etcd"
COMMAND_TIMEOUT = 60.0
REPORT_TIMEOUT = 15.0
POLL = 0.5  # seconds between two reads of a wait (API and etcdctl reads only)
POD_STOP_TIMEOUT = 120.0

S_BACKUP = StepId("ch2.backup-first")
S_IDENTIFY = StepId("ch2.identify-member")
S_SAVE_MACHINE = StepId("ch2.save-machine")
S_STOP_POD = StepId("ch2.stop-etcd-pod")
S_REMOVE = StepId("ch2.remove-member")
S_SECRETS = StepId("ch2.delete-secrets")
S_DELETE_MACHINE = StepId("ch2.delete-machine")
S_CREATE_MACHINE = StepId("ch2.create-machine")
S_WAIT_MACHINE = StepId("ch2.wait-machine")
S_REDEPLOY = StepId("ch2.redeploy")
S_VERIFY = StepId("ch2.verify")

T = TypeVar("T")



# ---- what each step leaves for the next (typed, stored as JSON) ------------------------------


@dataclass(frozen=True)
class BackupFirst:
    backup_id: str
    taken: bool  # this run took it (no recent one was in the store)
    finished_at: float
    version: str


@dataclass(frozen=True)
class Target:
    """The member to replace, as identified just before the destructive block."""

    node: str
    variant: str  # VARIANT_A or VARIANT_B
    state: str
    reason: str
    member_id: str
    member_name: str
    peer_urls: tuple[str, ...]
    machine: str
    secrets: tuple[str, ...]
    via: str  # where `member list` answered ("exec in etcd-<node>", "SSH on <node>")
    data_dest: str  # variant B: where /var/lib/etcd goes, unique to the run

    @property
    def peer(self) -> str:
        return ", ".join(self.peer_urls) or "no peer URL"


@dataclass(frozen=True)
class SavedMachine:
    old: str
    new: str
    manifest: dict[str, Any]


@dataclass(frozen=True)
class Removed:
    member_id: str
    already_gone: bool
    members_left: tuple[str, ...]


@dataclass(frozen=True)
class NewMachine:
    name: str
    node: str
    phases: tuple[str, ...]


@dataclass(frozen=True)
class Redeployed:
    reason: str  # the forceRedeploymentReason this run set ("" when the operator rolled out by itself)
    pods_running: tuple[str, ...]


@dataclass(frozen=True)
class Replaced:
    member_id: str
    member_name: str
    members: tuple[str, ...]


def node_of(ctx: StepContext) -> str:
    node = str(ctx.parameters.get("node") or "")
    if not NODE_NAME_RE.fullmatch(node):
        raise StepFailed(f"{node!r} is not a node name", next_action="Type `/etcd-replace-member <node>`.")
    return node


def run_dir_name(run_id: str) -> str:
    """Where variant B moves /var/lib/etcd: `/tmp/etcd-<run id>`, unique per run (the document's
    `mv /var/lib/etcd/ /tmp` would meet the `/tmp/etcd` of an earlier incident)."""
    safe = run_id if backup.RUN_ID_RE.fullmatch(run_id) and run_id != "dry-run" else "RUN-ID"
    return f"/tmp/etcd-{safe}"


def age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"




def target_of(ctx: StepContext) -> Target | None:
    """The identified member: the identify step's result in a run, the preview in a dry run."""
    if S_IDENTIFY in ctx.results:
        return ctx.result(S_IDENTIFY, Target)
    p = ctx.parameters
    if not p.get("member_id"):
        return None
    node = str(p.get("node", ""))
    return Target(node=node, variant=str(p.get("variant", "")), state="", reason="", member_id=str(p["member_id"]),
                  member_name=str(p.get("member_name", "")), peer_urls=tuple(str(p.get("peer_url", "")).split(", ")),
                  machine=str(p.get("machine", "")), secrets=secret_names(node), via=str(p.get("etcdctl", "")),
                  data_dest=run_dir_name(ctx.run_id))


def plan_node(ctx: StepContext) -> str:
    return str(ctx.parameters.get("node") or "NODE")


def not_needed(variant: str) -> StepResult:
    other = VARIANT_A if variant == VARIANT_B else VARIANT_B
    return StepResult(summary=f"not needed: variant {variant} ({VARIANT_TITLES[variant]}); this step is variant "
                              f"{other}'s")


def only_in(ctx: StepContext, variant: str, commands: list[PlannedCommand]) -> list[PlannedCommand]:
    """A plan of one variant's step: its commands, none in the other variant, marked when unknown."""
    target = target_of(ctx)
    if target is None or not target.variant:
        return [PlannedCommand(f"(variant {variant} only) {c.target}", c.command) for c in commands]
    return commands if target.variant == variant else []


# ---- helpers: calls with a failure a person can act on, waits with deadlines -----------------


async def api_call(ctx: StepContext, call: Awaitable[T], *, what: str) -> T:
    try:
        return await call
    except KubeError as exc:
        raise StepFailed(f"could not {what}: {exc}", retryable=exc.status in (0, 429, 500, 502, 503, 504),
                         next_action=f"Check the API with `/etcd-status {ctx.cluster_name}`, then Resume.") from exc


async def etcd_call(call: Awaitable[T], *, what: str) -> T:
    try:
        return await call
    except (EtcdUnavailable, EtcdctlFailed) as exc:
        raise StepFailed(f"etcdctl {what} did not answer: {exc}", retryable=True,
                         next_action="Check etcd with `/etcd-status`, then Resume.") from exc


def on_change(ctx: StepContext) -> Callable[[str], Awaitable[None]]:
    """The step's heartbeat, said only when its text changes: a wait polls twice a second, and
    each note is a message update in Slack."""
    last = [""]

    async def note(text: str) -> None:
        if text != last[0]:
            last[0] = text
            await ctx.heartbeat(text)

    return note


async def get_machine(ctx: StepContext, name: str) -> dict[str, Any] | None:
    try:
        return await ctx.need_kube().get_object(MACHINE, name, namespace=MACHINE_NAMESPACE)
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise StepFailed(f"could not read machine {name}: {exc}", retryable=True,
                         next_action=f"Check the API with `/etcd-status {ctx.cluster_name}`, then Resume.") from exc


async def wait_until(ctx: StepContext, what: str, limit: float, check: Callable[[], Awaitable[T | None]],
                *, fail: Callable[[], StepFailed] | None) -> Any:
    """Polls `check` until it returns a value, for at most `limit` seconds. At the deadline: raises
    `fail()`, or returns None when there is no `fail` (the caller decides). A read that fails in
    the meantime (the API busy during a rollout) is retried until the deadline."""
    deadline = time.monotonic() + limit
    error = ""
    while True:
        try:
            found = await check()
        except StepFailed as exc:
            if not exc.retryable:
                raise
            found, error = None, exc.message
        except KubeError as exc:
            found, error = None, str(exc)
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            if fail is None:
                return None
            failure = fail()
            last = f" (last error: {error[:200]})" if error else ""
            raise StepFailed(f"{failure.message}{last}. Masters now: {await masters_report(ctx)}",
                             next_action=failure.next_action, retryable=failure.retryable)
        await asyncio.sleep(POLL)  # polling a condition with a deadline


async def masters_report(ctx: StepContext) -> str:
    """Each master's state in one line, for a failure message: node Ready or not, its etcd pod's
    STATUS, its member's ID and health (from the status facts; bounded by REPORT_TIMEOUT)."""
    try:
        async with asyncio.timeout(REPORT_TIMEOUT):
            facts = await gather_facts(cluster=ctx.cluster_name, kube=ctx.kube, hosts=ctx.hosts)  # type: ignore[arg-type]
    except Exception as exc:  # a report must never hide the failure it explains
        return f"(could not be read: {type(exc).__name__})"
    return describe_masters(facts)


def describe_masters(facts: ClusterFacts) -> str:
    nodes = {n.name: n for n in facts.nodes}
    pods = {p.node: p for p in facts.pods}
    members = {m.name: m for m in facts.members if m.started}
    names = sorted(set(nodes) | set(members) | {h.node for h in facts.hosts})
    parts = []
    for name in names:
        node, pod, member = nodes.get(name), pods.get(name), members.get(name)
        health = {True: "healthy", False: "unhealthy", None: "health unknown"}[member.healthy] if member else ""
        parts.append(f"{name}: node {node.status if node else 'not in the API'}, etcd pod "
                     f"{pod.status if pod else 'none'}, member {member.id + ' ' + health if member else 'none'}")
    unstarted = [m.id for m in facts.members if not m.started]
    if unstarted:
        parts.append(f"not started: {', '.join(unstarted)}")
    return "; ".join(parts) or "nothing answered"

