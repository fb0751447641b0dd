"""Chapter 3, "Shutting down the cluster gracefully", as steps the runner drives: `/etcd-shutdown`.

The document: take an etcd backup first; list the nodes (`oc get nodes`); on every node, masters
and workers, `ssh core@<node> sudo shutdown -h 1`. Around that the bot adds what a careful
person adds:
- admission: never the cluster the bot itself runs on (it would stop itself half way;
  procedures/guards.py); every node the API lists must have an SSH address (`ssh.hosts` for the
  masters, `ssh.workers` for the others): half a cluster shut down is worse than none; and a
  usable backup of the running version younger than `ETCDBOT_SHUTDOWN_BACKUP_MAX_AGE`, without
  which the answer is a warning whose button, *Back up, then shut down*, starts the run with the
  backup as its first step (one run, one lock: nothing starts between the backup and the
  shutdown, and a failed backup stops the run before any node is touched);
- before the destructive step, SSH to every node is opened (`true`): a node that does not answer
  stops the run with nothing shut down;
- one approval for the block (approval group `ch3.shutdown`), its plan naming every node and
  command; the commands go to every node at once, and each node's answer is reported;
- the shutdown is recorded (time, nodes and their answers, who, the backup, the version) for
  `/etcd-restart-check` (bot/shutdowns.py), and the run waits until every node stopped answering.

The record is written right after the commands were sent, even when a node refused: the restart
check must know what was asked of which node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.cluster.hosts import CommandResult, shell_command
from bot.cluster.kube import KubeError
from bot.procedure import (
    Admission,
    NotYet,
    PlannedCommand,
    Procedure,
    Step,
    StepContext,
    StepFailed,
    StepId,
    StepKind,
    StepResult,
    WaitTimedOut,
    register,
    wait_until,
)
from bot.shutdowns import NodeAnswer, ShutdownRecord
from procedures.backup import full_version
from procedures.cluster_nodes import NodeView, list_nodes
from procedures.guards import TakenBackup, backup_first, own_cluster_refusal, recent_backup

NAME = "shutdown"
TITLE = "Shutting down the cluster gracefully"
COMMAND = "/etcd-shutdown"
BACKUP_OVERRIDE = "backup-first"
SHUTDOWN_ARGV = ("sudo", "shutdown", "-h", "1")
PROBE_TIMEOUT = 15.0
COMMAND_TIMEOUT = 30.0
GROUP = "ch3.shutdown"

S_BACKUP = StepId("ch3.backup-first")
S_NODES = StepId("ch3.list-nodes")
S_SHUTDOWN = StepId("ch3.shutdown-nodes")
S_OFF = StepId("ch3.wait-powered-off")


# ---- pure helpers ---------------------------------------------------------------------------


def without_address(nodes: list[NodeView], *, masters: tuple[str, ...], workers: tuple[str, ...]) -> list[str]:
    """Nodes the API lists that the settings give no SSH address (a master must be in `hosts`)."""
    return [n.name for n in nodes if n.name not in (masters if n.master else (*masters, *workers))]


def answer_text(result: CommandResult) -> str:
    """What a node said to `shutdown -h 1` (systemd prints it on stderr), or why it said nothing."""
    if result.rc is None:
        return result.error or "no answer"
    said = (result.stderr.strip() or result.stdout.strip()).replace("\n", " ")[-300:]
    return said or ("scheduled" if result.ok else f"exit code {result.rc}")


def _age(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min"


# ---- admission and dry-run preview ----------------------------------------------------------


async def admission(ctx: StepContext) -> Admission:
    """Refuse on the bot's own cluster, without the node list or with a node SSH cannot reach;
    warn (button: back up first) without a recent usable backup of the running version."""
    refusal = await own_cluster_refusal(ctx, action="shut down")
    if refusal is not None:
        return refusal
    if ctx.kube is None or ctx.hosts is None:
        return Admission.refuse(f"`{ctx.cluster_name}` has no kubeconfig or no SSH settings: a shutdown needs both.",
                                next_action="Add them to the cluster in ETCDBOT_CLUSTERS.")
    try:
        nodes = await list_nodes(ctx.kube)
    except (KubeError, TimeoutError) as exc:
        return Admission.refuse(f"`{ctx.cluster_name}`'s API does not answer ({exc}): the shutdown needs the list of "
                                "nodes (`oc get nodes`).",
                                next_action=f"Check `/etcd-status {ctx.cluster_name}`.")
    missing = without_address(nodes, masters=ctx.hosts.nodes, workers=ctx.hosts.workers)
    if missing:
        return Admission.refuse(
            f"No SSH address for {', '.join(missing)}: the shutdown runs `sudo shutdown -h 1` on every node, and half "
            "a cluster shut down is worse than none.",
            next_action=f"Add them to `ssh.hosts` (masters) or `ssh.workers` of `{ctx.cluster_name}` in ETCDBOT_CLUSTERS.")
    max_age = ctx.settings.shutdown_backup_max_age
    found, version = await recent_backup(ctx, max_age=max_age)
    if found is None:
        of = f" of OpenShift {version}" if version else ""
        return Admission.warn(
            f"No shutdown without a backup: `{ctx.cluster_name}` has no usable backup{of} younger than {_age(max_age)}, "
            "and the document says to take an etcd backup before shutting down, so that the cluster can be restored "
            "if it does not restart.",
            override=BACKUP_OVERRIDE, label="Back up, then shut down",
            next_action="The button takes a backup now, then goes on with the shutdown (one run).")
    return Admission.ok()


async def preview(ctx: StepContext) -> dict[str, str]:
    """A dry run's parameters: every node (masters, workers) and the backup a run would use."""
    shown: dict[str, str] = {}
    if ctx.kube is not None:
        try:
            nodes = await list_nodes(ctx.kube)
            shown["masters"] = ", ".join(n.name for n in nodes if n.master) or "none"
            shown["workers"] = ", ".join(n.name for n in nodes if not n.master) or "none"
        except (KubeError, TimeoutError) as exc:
            shown["api"] = f"did not answer ({str(exc)[:120]})"
    found, _version = await recent_backup(ctx, max_age=ctx.settings.shutdown_backup_max_age)
    shown["backup"] = found.id if found else "none recent: the run takes one first"
    return shown


# ---- the steps ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Nodes:
    masters: tuple[str, ...]
    workers: tuple[str, ...]
    version: str

    @property
    def every(self) -> tuple[str, ...]:
        return (*self.masters, *self.workers)


@dataclass(frozen=True)
class ShutdownSent:
    at: float
    answers: tuple[NodeAnswer, ...]


@dataclass(frozen=True)
class PoweredOff:
    off_at: float
    nodes: tuple[str, ...]


async def take_backup_first(ctx: StepContext) -> StepResult:
    return await backup_first(ctx, max_age=ctx.settings.shutdown_backup_max_age, why="before the shutdown")


def _backup_plan(ctx: StepContext) -> list[PlannedCommand]:
    chosen = str(ctx.parameters.get("backup") or "")
    if chosen and not chosen.startswith("none"):
        return [PlannedCommand("bot", f"none: backup {chosen} is recent enough")]
    return [PlannedCommand("bot", "no usable backup of the running version younger than "
                                  f"{_age(ctx.settings.shutdown_backup_max_age)}: chapter 1's steps, as /etcd-backup "
                                  "(cluster-backup.sh on one healthy master, verified, copied off, recorded)")]


async def list_and_probe(ctx: StepContext) -> StepResult:
    """`oc get nodes`, then SSH to every node (`true`): nothing is shut down unless all answer."""
    kube, hosts = ctx.need_kube(), ctx.need_hosts()
    try:
        nodes = await list_nodes(kube)
        version = full_version(await kube.get_cluster_version()) or ""
    except (KubeError, TimeoutError) as exc:
        raise StepFailed(f"could not list the nodes: {exc}", retryable=True,
                         next_action=f"Check `/etcd-status {ctx.cluster_name}`; nothing was shut down.") from exc
    missing = without_address(nodes, masters=hosts.nodes, workers=hosts.workers)
    if missing:
        raise StepFailed(f"no SSH address for {', '.join(missing)}; nothing was shut down",
                         next_action="Add them to `ssh.hosts` / `ssh.workers` in ETCDBOT_CLUSTERS.")
    await ctx.heartbeat(f"opening SSH to {len(nodes)} nodes")
    probes = await asyncio.gather(*(hosts.run(node=n.name, argv=["true"], timeout=PROBE_TIMEOUT) for n in nodes))
    silent = [f"{p.node}: {answer_text(p)}" for p in probes if not p.ok]
    if silent:
        raise StepFailed(f"SSH to {len(silent)} node(s) failed: {'; '.join(silent)}. Nothing was shut down.",
                         retryable=True,
                         next_action=f"Check SSH to those nodes, then run `{COMMAND} {ctx.cluster_name}` again.")
    result = Nodes(masters=tuple(n.name for n in nodes if n.master), workers=tuple(n.name for n in nodes if not n.master),
                   version=version)
    return StepResult.of(
        f"{len(nodes)} nodes, all answering over SSH: masters {', '.join(result.masters)}; "
        f"workers {', '.join(result.workers) or 'none'}", result,
        output="\n".join(f"{n.name}  {n.status}  {n.role}" for n in nodes))


def _nodes_plan(ctx: StepContext) -> list[PlannedCommand]:
    return [PlannedCommand("api", "oc get nodes -o jsonpath='{.items[*].metadata.name}'"),
            PlannedCommand("ssh core@<every node>", "true  # SSH answers on every node before anything is shut down")]


async def _shutdown_targets(ctx: StepContext) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The nodes the destructive step acts on: the list step's (a run), else the API's (a dry run)."""
    if S_NODES in ctx.results:
        listed = ctx.result(S_NODES, Nodes)
        return listed.masters, listed.workers
    if ctx.kube is None:
        return (), ()
    try:
        nodes = await list_nodes(ctx.kube)
    except (KubeError, TimeoutError):
        return (), ()
    return tuple(n.name for n in nodes if n.master), tuple(n.name for n in nodes if not n.master)


async def _shutdown_plan(ctx: StepContext) -> list[PlannedCommand]:
    masters, workers = await _shutdown_targets(ctx)
    command = shell_command(list(SHUTDOWN_ARGV))
    plan = [PlannedCommand(f"ssh core@{node}", command) for node in (*masters, *workers)]
    return plan or [PlannedCommand("ssh core@<every node of oc get nodes>", command)]


async def shut_down(ctx: StepContext) -> StepResult:
    """`sudo shutdown -h 1` on every node at once; each node's answer; the shutdown recorded."""
    hosts = ctx.need_hosts()
    listed = ctx.result(S_NODES, Nodes)
    backup = ctx.result(S_BACKUP, TakenBackup)
    roles = {**{n: "master" for n in listed.masters}, **{n: "worker" for n in listed.workers}}
    await ctx.heartbeat(f"sending `sudo shutdown -h 1` to {len(roles)} nodes")
    sent_at = time.time()
    results = await asyncio.gather(*(hosts.change(node=node, argv=list(SHUTDOWN_ARGV), timeout=COMMAND_TIMEOUT)
                                     for node in listed.every))
    answers = tuple(NodeAnswer(node=r.node, role=roles[r.node], ok=r.ok, answer=answer_text(r)) for r in results)
    if ctx.shutdowns is not None:
        await ctx.shutdowns.record(ShutdownRecord(
            cluster=ctx.cluster_name, run_id=ctx.run_id, requester=ctx.requester, at=sent_at,
            version=listed.version or backup.version, backup_id=backup.backup_id, nodes=answers))
    output = "\n".join(f"==== Shut down {a.node} ({a.role}) ====\n{'' if a.ok else 'FAILED: '}{a.answer}" for a in answers)
    refused = [a for a in answers if not a.ok]
    if refused:
        took = [a.node for a in answers if a.ok]
        raise StepFailed(
            f"{len(refused)} node(s) did not take the shutdown: "
            + "; ".join(f"{a.node}: {a.answer}" for a in refused)
            + (f". {', '.join(took)} power off in a minute." if took else "."),
            next_action=("Shut the others down by hand (`ssh core@NODE sudo shutdown -h 1`), or, to keep the cluster "
                         "up, cancel on the nodes that took it (`ssh core@NODE sudo shutdown -c`) within the minute."),
        )
    return StepResult.of(f"{len(answers)} nodes scheduled to power off in 1 minute (backup `{backup.backup_id}`)",
                         ShutdownSent(at=sent_at, answers=answers), output=output)


async def wait_powered_off(ctx: StepContext) -> StepResult:
    """Until no node answers SSH any more, within `shutdown_off_timeout`. A powered-off machine does
    not answer (a refused or timed-out connection alike: the API is gone with the masters, so SSH
    is the only witness left)."""
    hosts = ctx.need_hosts()
    listed = ctx.result(S_NODES, Nodes)

    async def all_off() -> float | NotYet:
        probes = await asyncio.gather(*(hosts.run(node=n, argv=["true"], timeout=5.0) for n in listed.every))
        up = [p.node for p in probes if p.rc is not None]
        return NotYet(f"still answering: {', '.join(up)}") if up else time.time()

    try:
        off_at = await wait_until(all_off, what=f"all {len(listed.every)} nodes to power off",
                                  deadline=ctx.settings.shutdown_off_timeout, heartbeat=ctx.heartbeat, interval=2.0)
    except WaitTimedOut as exc:
        raise StepFailed(f"{exc}", next_action=("Check those nodes from the cloud console; `sudo shutdown -h 1` was "
                                                "accepted, so they may be stuck shutting down.")) from exc
    if ctx.shutdowns is not None:
        await ctx.shutdowns.update(ctx.cluster_name, run_id=ctx.run_id, off_at=off_at)
    when = time.strftime("%H:%M:%S UTC", time.gmtime(off_at))
    return StepResult.of(f"all {len(listed.every)} nodes are off ({when}; none answers SSH). To start again: power "
                         "the machines on, "
                         f"wait about 10 minutes, then `/etcd-restart-check {ctx.cluster_name}`.",
                         PoweredOff(off_at=off_at, nodes=listed.every))


def _off_plan(_ctx: StepContext) -> list[PlannedCommand]:
    return [PlannedCommand("ssh core@<every node>", "true  # until no node answers (powered off)")]


STEPS: tuple[Step, ...] = (
    Step(S_BACKUP, "Take an etcd backup prior to shutting down the cluster (unless a recent one is stored)",
         StepKind.CHANGE, take_backup_first, _backup_plan, timeout=7200, safe_to_repeat=True),
    Step(S_NODES, "Obtain the list of nodes (oc get nodes) and reach each over SSH", StepKind.READ, list_and_probe,
         _nodes_plan, timeout=120, retries=1, safe_to_repeat=True),
    # Not safe to repeat after a crash mid-step: some nodes may be off already (a re-run would
    # report them as failures); Resume asks a person, who checks first.
    Step(S_SHUTDOWN, "Shut down all of the nodes: ssh core@<node> sudo shutdown -h 1", StepKind.DESTRUCTIVE, shut_down,
         _shutdown_plan, timeout=COMMAND_TIMEOUT + 30, approval_group=GROUP),
    Step(S_OFF, "Wait until every node has powered off", StepKind.READ, wait_powered_off, _off_plan,
         timeout=3600 + 60, safe_to_repeat=True),
)


def build(_parameters: Mapping[str, Any] | None = None) -> Procedure:
    return Procedure(name=NAME, title=TITLE, chapter="3", steps=STEPS, admission=admission, preview=preview)


register(NAME, build, title=TITLE, command=COMMAND,
         summary="shut every node down gracefully, after a backup (Ch.3)")
