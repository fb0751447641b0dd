"""Chapter 5.3, "Restoring to a previous cluster state", as steps the runner drives:
`/etcd-restore <backup-id> [--recovery-host NODE] [--dry-run] [cluster]`.

The moment the bot exists for: quorum is lost, the API is gone, and a dozen steps must run across
three hosts, with waits people get wrong, throwing the cluster's current state away. The steps
follow the document's order; everything up to the redeployments works over SSH alone, because
with quorum lost the API does not answer.

What the bot adds around the page:
- **Admission** refuses, with the reason and what to do, unless the backup is in the catalogue
  with both files present and matching their sha256, its version is the cluster's z-stream (the
  API's, or the last version the bot read when the API is down: the run says which), and SSH
  answers on every master (the unreachable ones are named). The recovery host defaults to the
  first master in the configuration.
- **One approval** covers the block that stops the control plane and replaces the data
  (`approval_group` "restore": stop the static pods, move the data directories, run
  cluster-restore.sh). Its plan names every command on every host, the recovery host, the backup
  (id, time, age, version, sha256) and what is lost: every change made after the backup.
- **Every wait has a deadline** (ETCDBOT_RESTORE_WAIT) and says in the progress message what it
  waits for (`bot.procedure.wait_until`).
- **A failure after the first destructive command** stops the run but keeps the cluster's lock
  (`StepFailed(hold=True)`), and says per master where its manifests and data directory are,
  whether the restore script ran, and the commands to finish or roll back. Resume repeats the step
  (a destructive one only with a fresh approval); every step can be repeated: it reads where each
  host is before it acts, and does only what is left.
- Moves go into a directory of the run (`/tmp/etcdbot-restore-<run id>/`), so a second run never
  collides with the first one's leftovers (procedures/restore_hosts.py).
- The redeployments' reasons are unique and carry the run id, so a resumed run never forces a
  second rollout of an operator it already redeployed; it waits for it instead.
- Every command sent, with its exit status, is in the audit stream (the hosts' shell records its
  own; the API writes are recorded here with the document's `oc patch` wording).

Beside it: procedures/restore_hosts.py (the commands, a host's state, the per-host report: pure),
procedures/restore_checks.py (the backup, the version, SSH: what admission and step 1 check),
procedures/restore_rollout.py (the redeployments: reasons, `oc patch`, NodeInstallerProgressing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.backups import BACKUP_ID_RE
from bot.cluster.hosts import CommandResult, HostCopyError
from bot.cluster.kube import (
    KubeClient,
    KubeError,
    parse_conditions,
)
from bot.cluster.nodes import NodeSession
from bot.config import NODE_NAME_RE
from bot.procedure import (
    Admission,
    NotYet,
    Param,
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
from procedures import restore_hosts as rh
from procedures.guards import own_cluster_refusal
from procedures.restore_checks import (
    age_text,
    fail_text,
    file_problems,
    find_backup,
    read_cluster,
    recovery_of,
    unreachable,
    utc,
    version_mismatch,
)
from procedures.restore_rollout import (
    OPERATORS,
    Operator,
    Rollout,
    patch_text,
    progress_text,
    read_rollout,
    redeployment_reason,
)

NAME = "restore"
TITLE = "Restoring to a previous cluster state"
COMMAND = "/etcd-restore"
RUNBOOK = "docs/runbooks/etcd-restore.md"
GROUP = "restore"  # the approval that covers stopping the control plane and replacing the data
SSH_TIMEOUT = 15.0  # one quick command (probe, mv, crictl) on a master
UPLOAD_TIMEOUT = 3600.0
SCRIPT_TIMEOUT = 1200.0  # cluster-restore.sh waits up to 10 min for the static pods to stop
KUBELET_TIMEOUT = 120.0
API_TIMEOUT = 10.0  # one read of the API while it may be down
POLL = 0.5  # seconds between two checks of a wait
WAIT_STEP_TIMEOUT = 2 * 3600.0  # the runner's limit of a waiting step; each wait has its own deadline

S_OPEN = StepId("ch5.3.open-ssh")
S_COPY = StepId("ch5.3.copy-backup")
S_STOP = StepId("ch5.3.stop-static-pods")
S_DATA = StepId("ch5.3.move-data-dir")
S_RESTORE = StepId("ch5.3.run-restore-script")
S_KUBELET = StepId("ch5.3.restart-kubelet")
S_SINGLE = StepId("ch5.3.verify-single-member")
S_VERIFY = StepId("ch5.3.verify-members")


# ---- what each step leaves for the next (typed, stored as JSON) ------------------------------


@dataclass(frozen=True)
class BackupFile:
    name: str
    role: str  # "snapshot" or "resources"
    size: int
    sha256: str
    path: str  # in the bot's store


@dataclass(frozen=True)
class Chosen:
    """Step 1: the recovery host, the masters (all answering SSH), the backup and the version."""

    recovery: str
    others: tuple[str, ...]
    backup_id: str
    backup_version: str
    backup_taken_at: float
    files: tuple[BackupFile, ...]
    version: str  # the cluster's, as the admission compared it
    version_source: str  # "the API" or "last read ... (the API does not answer)"
    api_up: bool
    proxy: dict[str, str]
    at: float  # when the run checked all this: the backup's age and what is lost are counted from here

    @property
    def masters(self) -> tuple[str, ...]:
        return (self.recovery, *self.others)


@dataclass(frozen=True)
class Copied:
    host: str
    files: dict[str, str]  # name -> sha256 as the recovery host's sha256sum printed it
    moved_previous: str = ""  # where an earlier /home/core/backup with other files went


@dataclass(frozen=True)
class HostsDone:
    """What a step did on each master (command texts), for the report and the next steps."""

    done: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class ScriptRun:
    host: str
    rc: int
    seconds: float


@dataclass(frozen=True)
class Redeployed:
    operator: str
    reason: str
    revision: int
    patched: bool  # False: a resumed run found its own reason already set, and only waited


@dataclass(frozen=True)
class Verified:
    members: tuple[str, ...]
    message: str  # EtcdMembersAvailable
    revisions: dict[str, int]


# ---- admission --------------------------------------------------------------------------------


async def admission(ctx: StepContext) -> Admission:
    """Refuse on the bot's own cluster (a restore stops the API the bot runs under), and unless the
    backup is whole and of this z-stream, and SSH answers on every master."""
    own = await own_cluster_refusal(ctx, action="restore")
    if own is not None:
        return own
    backup_id = str(ctx.parameters.get("backup-id") or "")
    cluster = ctx.cluster_name
    record = await find_backup(ctx, backup_id)
    if record is None:
        return Admission.refuse(f"There is no backup `{backup_id}` of `{cluster}` in the catalogue.",
                                next_action=f"`/etcd-backups {cluster}` lists the backups; use one of their ids.")
    problems = await asyncio.to_thread(file_problems, record)
    if problems:
        return Admission.refuse(f"Backup `{record.id}` cannot be restored: {'; '.join(problems)}.",
                                next_action=f"Pick another backup (`/etcd-backups {cluster}`); check the store's disk.")
    view = await read_cluster(ctx)
    mismatch = version_mismatch(backup=record, view=view)
    if mismatch:
        return Admission.refuse(mismatch, next_action=f"Restore a backup of {view.version} (`/etcd-backups {cluster}`).")
    if view.version is None:
        return Admission.refuse(
            f"The cluster's version is {view.source}: the bot cannot check that backup `{record.id}` "
            f"({record.version}) is of the same z-stream.",
            next_action=f"Check the version on a master (the release image of `crictl ps`), then restore by hand ({RUNBOOK}).")
    recovery = recovery_of(ctx, view.masters)
    if recovery not in view.masters:
        return Admission.refuse(f"`{recovery}` is not a master of `{cluster}` (masters: {', '.join(view.masters)}).",
                                next_action="Name a master with `--recovery-host`, or leave it out.")
    down = await unreachable(ctx, view.masters)
    if down:
        named = "; ".join(f"`{node}`: {why}" for node, why in down.items())
        return Admission.refuse(
            f"SSH does not reach every master, and the restore needs all of them (5.3 step 1): {named}.",
            next_action=f"Restore SSH to {', '.join(f'`{n}`' for n in down)} (or power the host on), then run "
                        f"`{COMMAND} {record.id}` again.")
    return Admission.ok()


async def preview(ctx: StepContext) -> dict[str, str]:
    """What a dry run shows beside its plan: the recovery host and masters it would use now."""
    view = await read_cluster(ctx)
    found = {"recovery-host": recovery_of(ctx, view.masters) or "NONE", "masters": ",".join(view.masters),
             "cluster-version": f"{view.version or 'unknown'} ({view.source})"}
    if view.proxy:
        found["proxy"] = "on"
    return found


# ---- helpers of the steps ---------------------------------------------------------------------


def _target(ctx: StepContext, node: str) -> str:
    user = ctx.cluster.ssh.user if ctx.cluster.ssh is not None else "core"
    return f"ssh {user}@{node}"


def _wait(ctx: StepContext) -> float:
    return ctx.settings.restore_wait


class HostFailed(Exception):
    """One master could not do its part (no answer, a command failed, a wait ran out)."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"{node}: {message}")
        self.node = node
        self.message = message


async def _checked(host: NodeSession, argv: list[str], *, change: bool, timeout: float = SSH_TIMEOUT) -> CommandResult:
    result = await (host.change if change else host.run)(argv=argv, timeout=timeout)
    if not result.ok:
        raise HostFailed(host.node, f"`{rh.command_text(argv)}` failed: {fail_text(result)}")
    return result


async def probe(ctx: StepContext, node: str) -> rh.HostState:
    result = await ctx.need_hosts().run(node=node, argv=rh.probe_command(ctx.run_id), timeout=SSH_TIMEOUT)
    return rh.parse_probe(node, ctx.run_id, rc=result.rc, stdout=result.stdout, error=result.error or fail_text(result))


async def _probe_on(host: NodeSession, run_id: str) -> rh.HostState:
    result = await host.run(argv=rh.probe_command(run_id), timeout=SSH_TIMEOUT)
    state = rh.parse_probe(host.node, run_id, rc=result.rc, stdout=result.stdout, error=result.error or "")
    if not state.reachable:
        raise HostFailed(host.node, f"did not answer: {state.error}")
    return state


def _done_before(ctx: StepContext) -> dict[str, list[str]]:
    known: dict[str, list[str]] = {}
    for step_id in (S_STOP, S_DATA):
        if step_id in ctx.results:
            for node, done in ctx.result(step_id, HostsDone).done.items():
                known.setdefault(node, []).extend(done)
    return known


async def stopped_half_way(ctx: StepContext, chosen: Chosen, *, message: str, restore_done: bool,
                           known: Mapping[str, Sequence[str]] | None = None) -> StepFailed:
    """The failure of a step after the first destructive command: every master's state, read now,
    and what to run next. The run keeps the cluster's lock (`hold`)."""
    states = await asyncio.gather(*(probe(ctx, node) for node in chosen.masters))
    merged = _done_before(ctx)
    for node, done in (known or {}).items():
        merged.setdefault(node, []).extend(done)
    text = rh.report(states, recovery=chosen.recovery, run_id=ctx.run_id, restore_done=restore_done,
                     proxy=chosen.proxy, known=merged, runbook=RUNBOOK)
    return StepFailed(message, next_action=text, hold=True)


def _plan_run_id(ctx: StepContext) -> str:
    """The run id a plan names (a dry run has none yet)."""
    return ctx.run_id if ctx.run_id != "dry-run" and rh.RUN_ID_RE.fullmatch(ctx.run_id) else "RUN-ID"


def _chosen(ctx: StepContext) -> Chosen:
    return ctx.result(S_OPEN, Chosen)


# ---- step 1: the recovery host, SSH to every master ---------------------------------------------


async def open_ssh(ctx: StepContext) -> StepResult:
    backup_id = str(ctx.parameters.get("backup-id") or "")
    record = await find_backup(ctx, backup_id)
    if record is None:
        raise StepFailed(f"backup `{backup_id}` is not in the catalogue of `{ctx.cluster_name}` any more",
                         next_action=f"`/etcd-backups {ctx.cluster_name}` lists the backups.")
    view = await read_cluster(ctx)
    mismatch = version_mismatch(backup=record, view=view)
    if mismatch or view.version is None:
        raise StepFailed(mismatch or f"the cluster's version is {view.source}",
                         next_action=f"Pick a backup of the cluster's version (`/etcd-backups {ctx.cluster_name}`).")
    recovery = recovery_of(ctx, view.masters)
    if recovery not in view.masters:
        raise StepFailed(f"`{recovery}` is not a master (masters: {', '.join(view.masters)})",
                         next_action="Start again with `--recovery-host` naming a master, or without it.")
    down = await unreachable(ctx, view.masters)
    if down:
        raise StepFailed("SSH does not reach " + "; ".join(f"`{n}`: {why}" for n, why in down.items()),
                         retryable=True, next_action="Restore SSH to every master, then start the restore again.")
    files = tuple(BackupFile(name=f.name, role=f.role, size=f.size, sha256=f.sha256, path=f.path)
                  for f in sorted(record.files, key=lambda f: f.role != "snapshot"))
    chosen = Chosen(
        recovery=recovery, others=tuple(n for n in view.masters if n != recovery), backup_id=record.id,
        backup_version=record.version, backup_taken_at=record.started_at, files=files, version=view.version,
        version_source=view.source, api_up=view.api_up, proxy=dict(view.proxy), at=time.time(),
    )
    summary = (f"recovery host `{recovery}`; SSH answers on {', '.join(f'`{n}`' for n in chosen.masters)}; "
               f"backup `{record.id}` of {record.version}, taken {utc(record.started_at)} "
               f"({age_text(chosen.at - record.started_at)} ago); the cluster's version {view.version} is {view.source}")
    return StepResult.of(summary, chosen)


async def _plan_chosen(ctx: StepContext) -> Chosen | None:
    """The plan's facts: step 1's result once it ran (the gate), else what a dry run reads now."""
    if S_OPEN in ctx.results:
        return _chosen(ctx)
    record = await find_backup(ctx, str(ctx.parameters.get("backup-id") or ""))
    if record is None:
        return None
    masters = tuple(m for m in str(ctx.parameters.get("masters") or "").split(",") if m) or tuple(ctx.need_hosts().nodes)
    recovery = str(ctx.parameters.get("recovery-host") or masters[0])
    files = tuple(BackupFile(name=f.name, role=f.role, size=f.size, sha256=f.sha256, path=f.path)
                  for f in sorted(record.files, key=lambda f: f.role != "snapshot"))
    proxy = {}
    if ctx.catalogue is not None:
        seen = await ctx.catalogue.seen_last(ctx.cluster_name)
        proxy = dict(seen.proxy) if seen else {}
    return Chosen(recovery=recovery, others=tuple(m for m in masters if m != recovery), backup_id=record.id,
                  backup_version=record.version, backup_taken_at=record.started_at, files=files,
                  version=record.version, version_source="", api_up=True, proxy=proxy, at=time.time())


async def _open_plan(ctx: StepContext) -> list[PlannedCommand]:
    chosen = await _plan_chosen(ctx)
    masters = chosen.masters if chosen else ("EVERY-MASTER",)
    return [
        PlannedCommand("api", "oc get clusterversion version; oc get proxy cluster; oc get nodes -l "
                              "node-role.kubernetes.io/master (when the API answers; else the last the bot read)"),
        *(PlannedCommand(_target(ctx, m), "true") for m in masters),
    ]


# ---- step 2: copy the backup to the recovery host -----------------------------------------------


async def copy_backup(ctx: StepContext) -> StepResult:
    hosts = ctx.need_hosts()
    chosen = _chosen(ctx)
    node = chosen.recovery
    names = {f.name for f in chosen.files}
    moved = ""
    async with hosts.session(node) as host:
        listing = await host.run(argv=rh.list_backup_dir_command(), timeout=SSH_TIMEOUT)
        if listing.rc is None:
            raise StepFailed(f"{node} did not answer: {fail_text(listing)}", retryable=True,
                             next_action=f"Check SSH to {node}, then start the restore again; nothing was changed.")
        user = ctx.cluster.ssh.user if ctx.cluster.ssh is not None else "core"
        if rh.backup_dir_in_the_way(rc=listing.rc, stdout=listing.stdout + listing.stderr, user=user, names=names):
            await _step_command(host, rh.move_previous_backup_command(ctx.run_id))
            moved = rh.previous_backup_dir(ctx.run_id)
        await _step_command(host, rh.make_backup_dir_command())
    for item in chosen.files:
        await ctx.heartbeat(f"copying {item.name} ({item.size:,} bytes) to {node}:{rh.HOST_BACKUP_DIR}")
        try:
            await hosts.upload_file(node=node, source=Path(item.path), path=rh.host_file(item.name),
                                    timeout=UPLOAD_TIMEOUT)
        except (HostCopyError, OSError) as exc:
            raise StepFailed(f"copying {item.name} to {node} failed: {exc}", retryable=True,
                             next_action="Nothing on the cluster was changed. Check SSH and the store, then start again.") from exc
    sums = await hosts.run(node=node, argv=rh.sha256_command([f.name for f in chosen.files]), timeout=300)
    found = rh.parse_sha256sum(sums.stdout) if sums.ok else {}
    wrong = [f"{f.name}: {found.get(f.name, 'no sha256')[:16]}… on the host, {f.sha256[:16]}… on record"
             for f in chosen.files if found.get(f.name) != f.sha256]
    if wrong:
        raise StepFailed(f"the copy on {node} does not match the backup: {'; '.join(wrong)}", retryable=True,
                         next_action="Nothing on the cluster was changed. Start the restore again.")
    extra = f"; the earlier {rh.HOST_BACKUP_DIR} (other files) moved to {moved}" if moved else ""
    return StepResult.of(f"{len(found)} files in {node}:{rh.HOST_BACKUP_DIR}, sha256 checked on the host{extra}",
                         Copied(host=node, files=found, moved_previous=moved))


async def _step_command(host: NodeSession, argv: list[str]) -> None:
    result = await host.change(argv=argv, timeout=SSH_TIMEOUT)
    if not result.ok:
        raise StepFailed(f"`{rh.command_text(argv)}` on {host.node} failed: {fail_text(result)}", retryable=True,
                         next_action="Nothing on the cluster was changed. Start the restore again.")


async def _copy_plan(ctx: StepContext) -> list[PlannedCommand]:
    chosen = await _plan_chosen(ctx)
    node = chosen.recovery if chosen else "RECOVERY-HOST"
    files = chosen.files if chosen else ()
    target = _target(ctx, node)
    run_id = _plan_run_id(ctx)
    plan = [
        PlannedCommand(target, rh.command_text(rh.list_backup_dir_command())),
        PlannedCommand(target, rh.command_text(rh.move_previous_backup_command(run_id))
                       + "   (only if it holds other files, or files not the SSH user's)"),
        PlannedCommand(target, rh.command_text(rh.make_backup_dir_command())),
    ]
    plan += [PlannedCommand(f"sftp {target[4:]}", f"put {f.path} {rh.host_file(f.name)}") for f in files]
    if files:
        plan.append(PlannedCommand(target, rh.command_text(rh.sha256_command([f.name for f in files]))
                                   + "   (must print " + ", ".join(f"{f.sha256[:16]}…" for f in files) + ")"))
    return plan


# ---- the approved block: stop the static pods, move the data, run the restore script -------------


async def _wait_gone(ctx: StepContext, host: NodeSession, *, what: str,
                     pick: Callable[[str], Sequence[Any]]) -> None:
    async def check() -> bool | NotYet:
        result = await host.run(argv=rh.crictl_command(), timeout=SSH_TIMEOUT)
        if not result.ok:
            raise HostFailed(host.node, f"`sudo crictl ps` failed: {fail_text(result)}")
        left = pick(result.stdout)
        return True if not left else NotYet(", ".join(f"{c.name} {c.state}" for c in left))

    await wait_until(check, what=f"{what} containers to stop on {host.node} (`sudo crictl ps`)", deadline=_wait(ctx),
                     heartbeat=ctx.heartbeat, interval=POLL)


async def stop_static_pods(ctx: StepContext) -> StepResult:
    """On every other master, in parallel: the etcd pod out of the kubelet's manifests, wait until
    crictl shows no etcd; then the kube-apiserver pod, and the same wait."""
    chosen = _chosen(ctx)
    hosts = ctx.need_hosts()
    done: dict[str, list[str]] = {node: [] for node in chosen.others}

    async def on(node: str) -> None:
        async with hosts.session(node) as host:
            state = await _probe_on(host, ctx.run_id)
            for in_place, argv, what, pick in (
                (state.etcd_manifest_in_place, rh.move_etcd_manifest_command(ctx.run_id), "etcd", rh.etcd_containers),
                (state.apiserver_manifest_in_place, rh.move_apiserver_manifest_command(ctx.run_id), "kube-apiserver",
                 rh.apiserver_containers),
            ):
                if in_place:
                    await _checked(host, rh.mkdir_aside_command(ctx.run_id), change=True)
                    await _checked(host, argv, change=True)
                    done[node].append(rh.ETCD_DONE if what == "etcd" else rh.APISERVER_DONE)
                await _wait_gone(ctx, host, what=what, pick=pick)

    await _on_every(ctx, chosen, [on(n) for n in chosen.others], done=done, restore_done=False)
    return StepResult.of(f"etcd and kube-apiserver stopped on {', '.join(f'`{n}`' for n in chosen.others)}",
                         HostsDone(done={n: tuple(d) for n, d in done.items()}))


async def _on_every(ctx: StepContext, chosen: Chosen, work: Sequence[Awaitable[None]], *, done: Mapping[str, list[str]],
                    restore_done: bool) -> None:
    """Runs every host's part to its end (none is left half way by another's failure); if any
    failed, the report of every master."""
    outcomes = await asyncio.gather(*work, return_exceptions=True)
    failures = []
    for outcome in outcomes:
        if isinstance(outcome, HostFailed):
            failures.append(outcome)
        elif isinstance(outcome, WaitTimedOut):
            failures.append(HostFailed("", outcome.message))
        elif isinstance(outcome, BaseException):
            raise outcome
    if failures:
        message = "; ".join(str(f) if f.node else f.message for f in failures)
        raise await stopped_half_way(ctx, chosen, message=message, restore_done=restore_done,
                                     known={n: tuple(d) for n, d in done.items()})


def _info_lines(chosen: Chosen) -> list[PlannedCommand]:
    """What an approver must see beside the commands: the backup and what is lost."""
    snapshot = next((f for f in chosen.files if f.role == "snapshot"), None)
    resources = next((f for f in chosen.files if f.role == "resources"), None)
    sums = ", ".join(f"{f.name} sha256 {f.sha256}" for f in (snapshot, resources) if f is not None)
    age = age_text(chosen.at - chosen.backup_taken_at)
    return [
        PlannedCommand("backup", f"{chosen.backup_id}: taken {utc(chosen.backup_taken_at)}, {age} before this run; "
                                 f"OpenShift {chosen.backup_version}; {sums}"),
        PlannedCommand("lost", f"every change to the cluster made after {utc(chosen.backup_taken_at)} ({age} of "
                               "changes): objects created since are gone, objects deleted since come back"),
        PlannedCommand("recovery host", chosen.recovery),
    ]


async def _stop_plan(ctx: StepContext) -> list[PlannedCommand]:
    chosen = await _plan_chosen(ctx)
    if chosen is None:
        return [PlannedCommand("(every other master)", "no backup by that id: nothing would run")]
    run_id = _plan_run_id(ctx)
    wait = f"   (repeated until it lists no {{}} container but the operator's; at most {_wait(ctx):g} s)"
    plan = _info_lines(chosen)
    for node in chosen.others:
        target = _target(ctx, node)
        plan += [
            PlannedCommand(target, rh.command_text(rh.probe_command(run_id))),
            PlannedCommand(target, rh.command_text(rh.mkdir_aside_command(run_id))),
            PlannedCommand(target, rh.command_text(rh.move_etcd_manifest_command(run_id))),
            PlannedCommand(target, rh.command_text(rh.crictl_command()) + wait.format("etcd")),
            PlannedCommand(target, rh.command_text(rh.move_apiserver_manifest_command(run_id))),
            PlannedCommand(target, rh.command_text(rh.crictl_command()) + wait.format("kube-apiserver")),
        ]
    return plan


async def move_data_dirs(ctx: StepContext) -> StepResult:
    """On every other master: `/var/lib/etcd` moved aside into the run's directory."""
    chosen = _chosen(ctx)
    hosts = ctx.need_hosts()
    done: dict[str, list[str]] = {node: [] for node in chosen.others}
    notes: list[str] = []

    async def on(node: str) -> None:
        async with hosts.session(node) as host:
            state = await _probe_on(host, ctx.run_id)
            if state.data_dir_in_place and state.data_dir_aside:
                raise HostFailed(node, f"both {rh.DATA_DIR} and {rh.aside_dir(ctx.run_id)}/etcd exist; the bot will "
                                       "not choose between them")
            if state.data_dir_in_place:
                await _checked(host, rh.mkdir_aside_command(ctx.run_id), change=True)
                await _checked(host, rh.move_data_dir_command(ctx.run_id), change=True)
                done[node].append(rh.DATA_DONE)
            elif not state.data_dir_aside:
                notes.append(f"`{node}` had no {rh.DATA_DIR}")

    await _on_every(ctx, chosen, [on(n) for n in chosen.others], done=done, restore_done=False)
    summary = f"{rh.DATA_DIR} moved to {rh.aside_dir(ctx.run_id)}/etcd on {', '.join(f'`{n}`' for n in chosen.others)}"
    return StepResult.of(summary + (f" ({'; '.join(notes)})" if notes else ""),
                         HostsDone(done={n: tuple(d) for n, d in done.items()}))


async def _data_plan(ctx: StepContext) -> list[PlannedCommand]:
    chosen = await _plan_chosen(ctx)
    run_id = _plan_run_id(ctx)
    others = chosen.others if chosen else ("EVERY-OTHER-MASTER",)
    plan = []
    for node in others:
        target = _target(ctx, node)
        plan += [PlannedCommand(target, rh.command_text(rh.probe_command(run_id))),
                 PlannedCommand(target, rh.command_text(rh.mkdir_aside_command(run_id))),
                 PlannedCommand(target, rh.command_text(rh.move_data_dir_command(run_id)))]
    return plan


async def run_restore_script(ctx: StepContext) -> StepResult:
    chosen = _chosen(ctx)
    hosts = ctx.need_hosts()
    argv = rh.restore_script_command(chosen.proxy)
    await ctx.heartbeat(f"running cluster-restore.sh on {chosen.recovery} (it stops the static pods there and "
                        "restores the snapshot; at most 20 min)")
    started = time.monotonic()
    result = await hosts.change(node=chosen.recovery, argv=argv, timeout=SCRIPT_TIMEOUT)
    seconds = time.monotonic() - started
    if not result.ok:
        raise await stopped_half_way(
            ctx, chosen, restore_done=False,
            message=f"`{rh.command_text(argv)}` on {chosen.recovery} failed: {fail_text(result)}")
    return StepResult.of(f"cluster-restore.sh ran on `{chosen.recovery}` in {seconds:.0f} s",
                         ScriptRun(host=chosen.recovery, rc=result.rc or 0, seconds=seconds),
                         output=(result.stdout + result.stderr)[-6000:])


async def _restore_plan(ctx: StepContext) -> list[PlannedCommand]:
    chosen = await _plan_chosen(ctx)
    node = chosen.recovery if chosen else "RECOVERY-HOST"
    proxy = chosen.proxy if chosen else {}
    return [PlannedCommand(_target(ctx, node), rh.command_text(rh.restore_script_command(proxy)))]


# ---- after the restore: kubelets, the single member, the redeployments ---------------------------


async def restart_kubelets(ctx: StepContext) -> StepResult:
    """From the recovery host first, then every other master (the document's order)."""
    chosen = _chosen(ctx)
    hosts = ctx.need_hosts()
    argv = rh.restart_kubelet_command()
    failed = []
    first = await hosts.change(node=chosen.recovery, argv=argv, timeout=KUBELET_TIMEOUT)
    results = [first, *await asyncio.gather(*(hosts.change(node=n, argv=argv, timeout=KUBELET_TIMEOUT)
                                                for n in chosen.others))]
    failed = [f"`{r.node}`: {fail_text(r)}" for r in results if not r.ok]
    if failed:
        raise await stopped_half_way(ctx, chosen, restore_done=True,
                                     message="restarting the kubelet failed on " + "; ".join(failed))
    return StepResult(summary=f"kubelet restarted on {', '.join(f'`{n}`' for n in chosen.masters)}")


async def _kubelet_plan(ctx: StepContext) -> list[PlannedCommand]:
    chosen = await _plan_chosen(ctx)
    masters = chosen.masters if chosen else ("EVERY-MASTER",)
    return [PlannedCommand(_target(ctx, n), rh.command_text(rh.restart_kubelet_command())) for n in masters]


async def verify_single_member(ctx: StepContext) -> StepResult:
    """The etcd container running on the recovery host; then one etcd pod Running, the recovery
    host's (Pending, or more than one: wait and check again)."""
    chosen = _chosen(ctx)
    hosts = ctx.need_hosts()

    async def container() -> bool | NotYet:
        result = await hosts.run(node=chosen.recovery, argv=rh.crictl_command(), timeout=SSH_TIMEOUT)
        if not result.ok:
            return NotYet(f"`sudo crictl ps`: {fail_text(result)}")
        return True if rh.running_etcd(result.stdout) else NotYet("no etcd container Running yet")

    async def pod() -> str | NotYet:
        kube = ctx.need_kube()
        try:
            pods = await kube.list_etcd_pods()
        except KubeError as exc:
            return NotYet(f"the API: {exc}")
        running = sorted(p["metadata"]["name"] for p in pods if (p.get("status") or {}).get("phase") == "Running")
        others = sorted(f"{p['metadata']['name']} {(p.get('status') or {}).get('phase', '?')}" for p in pods
                        if p["metadata"]["name"] not in running)
        if running == [f"etcd-{chosen.recovery}"]:
            return running[0]
        return NotYet(f"etcd pods Running: {', '.join(running) or 'none'}" + (f"; others: {', '.join(others)}" if others else ""))

    try:
        await wait_until(container, what=f"the etcd container running on {chosen.recovery}", deadline=_wait(ctx),
                         heartbeat=ctx.heartbeat, interval=POLL)
        name = await wait_until(pod, what=f"one etcd pod Running, on {chosen.recovery} (`oc get pods -n openshift-etcd`)",
                                deadline=_wait(ctx), heartbeat=ctx.heartbeat, interval=POLL)
    except WaitTimedOut as exc:
        raise await stopped_half_way(ctx, chosen, restore_done=True, message=exc.message) from exc
    return StepResult(summary=f"etcd running on `{chosen.recovery}`; `{name}` is the one etcd pod Running")


async def _single_plan(ctx: StepContext) -> list[PlannedCommand]:
    chosen = await _plan_chosen(ctx)
    node = chosen.recovery if chosen else "RECOVERY-HOST"
    return [
        PlannedCommand(_target(ctx, node), rh.command_text(rh.crictl_command()) + "   (until an etcd container is Running)"),
        PlannedCommand("api", "oc get pods -n openshift-etcd   (until exactly one etcd pod is Running, the recovery host's)"),
    ]


def redeploy(operator: Operator) -> Callable[[StepContext], Awaitable[StepResult]]:
    async def run(ctx: StepContext) -> StepResult:
        chosen = _chosen(ctx)
        kube = ctx.need_kube()
        try:
            obj = await _read_operator(kube, operator)
        except KubeError as exc:
            raise StepFailed(f"could not read {operator.name}/cluster: {exc}", retryable=True,
                             next_action="The API may still be starting: press Resume to try again.") from exc
        current = str((obj.get("spec") or {}).get("forceRedeploymentReason") or "")
        mine = current.startswith("recovery-") and current.endswith(f" run {ctx.run_id}")
        before: int | None = None
        reason = current
        if not mine:
            before = read_rollout(obj).latest
            reason = redeployment_reason(ctx.run_id)
            started = time.monotonic()
            try:
                await kube.patch(operator.resource, "cluster", {"spec": {"forceRedeploymentReason": reason}})
            except KubeError as exc:
                await ctx.note_command(target="api", command=patch_text(operator.name, reason), rc=1,
                                       elapsed=time.monotonic() - started, error=str(exc))
                raise StepFailed(f"`oc patch {operator.name} cluster` failed: {exc}", retryable=True,
                                 next_action="Press Resume to try again.") from exc
            await ctx.note_command(target="api", command=patch_text(operator.name, reason), rc=0,
                                   elapsed=time.monotonic() - started)
        masters = len(chosen.masters)

        async def check() -> Rollout | NotYet:
            try:
                rollout = read_rollout(await _read_operator(kube, operator))
            except KubeError as exc:
                return NotYet(f"the API: {exc}")
            if rollout.done(masters=masters, newer_than=before):
                return rollout
            return NotYet(f"{rollout.reason or 'no condition'}: {rollout.message or '-'}")

        what = f"{operator.name}: NodeInstallerProgressing AllNodesAtLatestRevision on every master"
        try:
            rollout = await wait_until(check, what=what, deadline=_wait(ctx), heartbeat=ctx.heartbeat, interval=POLL)
        except WaitTimedOut as exc:
            raise await stopped_half_way(ctx, chosen, restore_done=True, message=exc.message) from exc
        verb = "redeployed" if not mine else "redeployment (already asked by this run) finished"
        return StepResult.of(f"{operator.name} {verb}: {rollout.message}",
                             Redeployed(operator=operator.name, reason=reason, revision=rollout.latest, patched=not mine))

    run.__name__ = f"redeploy_{operator.name}"
    return run


async def _read_operator(kube: KubeClient, operator: Operator) -> dict[str, Any]:
    return await kube.get_object(operator.resource, "cluster")


def redeploy_plan(operator: Operator) -> Callable[[StepContext], list[PlannedCommand]]:
    def plan(ctx: StepContext) -> list[PlannedCommand]:
        run_id = _plan_run_id(ctx)
        reason = f"recovery-$(date --rfc-3339=ns) run {run_id}"
        return [PlannedCommand("api", patch_text(operator.name, reason) + "   (unless this run set it already)"),
                PlannedCommand("api", progress_text(operator.name) + "   (until AllNodesAtLatestRevision, "
                                                                     "every master at the latest revision)")]

    return plan


async def verify_members(ctx: StepContext) -> StepResult:
    """Every master runs an etcd pod again, every member is started and healthy, and the operator
    reads `N of N members are available`."""
    chosen = _chosen(ctx)
    kube = ctx.need_kube()
    etcd = ctx.need_etcd()
    count = len(chosen.masters)

    async def check() -> Verified | NotYet:
        try:
            pods, operator = await asyncio.gather(kube.list_etcd_pods(), kube.get_etcd())
        except KubeError as exc:
            return NotYet(f"the API: {exc}")
        running = sorted(p["metadata"]["name"] for p in pods if (p.get("status") or {}).get("phase") == "Running")
        if len(running) < count:
            return NotYet(f"{len(running)} of {count} etcd pods Running")
        available = next((c.message for c in parse_conditions(operator) if c.type == "EtcdMembersAvailable"), "")
        if available != f"{count} of {count} members are available":
            return NotYet(f"EtcdMembersAvailable: {available or 'not reported'}")
        try:
            members, health = await asyncio.gather(etcd.member_list(), etcd.endpoint_health())
        except Exception as exc:  # etcdctl errors of every kind: keep waiting until the deadline
            return NotYet(f"etcdctl: {str(exc)[:200]}")
        started = [m.name for m in members.members if m.started]
        unhealthy = [h.endpoint for h in health if not h.healthy]
        if len(started) < count or len(members.members) != count or unhealthy or len(health) < count:
            return NotYet(f"members {', '.join(started) or 'none'} ({len(members.members)} listed); "
                          f"unhealthy: {', '.join(unhealthy) or 'none'}")
        return Verified(members=tuple(sorted(started)), message=available, revisions={})

    try:
        verified = await wait_until(check, what=f"{count} etcd pods Running, {count} healthy members, "
                                                f"EtcdMembersAvailable {count} of {count}",
                                    deadline=_wait(ctx), heartbeat=ctx.heartbeat, interval=POLL)
        revisions = {}
        for operator in OPERATORS:
            rollout = read_rollout(await _read_operator(kube, operator))
            revisions[operator.name] = rollout.latest
    except WaitTimedOut as exc:
        raise await stopped_half_way(ctx, chosen, restore_done=True, message=exc.message) from exc
    except KubeError as exc:
        raise StepFailed(f"could not read the operators: {exc}", retryable=True,
                         next_action="Press Resume to check again.") from exc
    at = ", ".join(f"{name} revision {rev}" for name, rev in revisions.items())
    return StepResult.of(f"{verified.message}; members {', '.join(verified.members)}; {at}",
                         Verified(members=verified.members, message=verified.message, revisions=revisions))


def _verify_plan(_ctx: StepContext) -> list[PlannedCommand]:
    return [
        PlannedCommand("api", "oc get pods -n openshift-etcd | grep etcd   (until every master's etcd pod is Running)"),
        PlannedCommand("api", "oc get etcd -o=jsonpath='{range .items[0].status.conditions[?(@.type==\"EtcdMembersAvailable\")]}"
                              "{.message}{\"\\n\"}'   (until N of N members are available)"),
        PlannedCommand("exec etcd-NODE -c etcdctl", "etcdctl member list -w json; etcdctl endpoint health -w json"),
    ]


# ---- the procedure --------------------------------------------------------------------------------

STEPS: tuple[Step, ...] = (
    Step(S_OPEN, "Select the recovery host and establish SSH connectivity to each control plane host", StepKind.READ,
         open_ssh, _open_plan, timeout=120, retries=1, safe_to_repeat=True),
    Step(S_COPY, "Copy the etcd backup directory to /home/core/backup on the recovery host", StepKind.CHANGE,
         copy_backup, _copy_plan, timeout=UPLOAD_TIMEOUT + 300, retries=1, safe_to_repeat=True),
    Step(S_STOP, "Stop the static pods on all other control plane hosts (etcd, then kube-apiserver)",
         StepKind.DESTRUCTIVE, stop_static_pods, _stop_plan, timeout=WAIT_STEP_TIMEOUT, safe_to_repeat=False,
         approval_group=GROUP),
    Step(S_DATA, "Move the etcd data directory aside on all other control plane hosts", StepKind.DESTRUCTIVE,
         move_data_dirs, _data_plan, timeout=300, safe_to_repeat=False, approval_group=GROUP),
    Step(S_RESTORE, "Run the restore script on the recovery host: sudo -E /usr/local/bin/cluster-restore.sh "
                    "/home/core/backup", StepKind.DESTRUCTIVE, run_restore_script, _restore_plan,
         timeout=SCRIPT_TIMEOUT + 120, safe_to_repeat=False, approval_group=GROUP),
    Step(S_KUBELET, "Restart the kubelet service on all master hosts", StepKind.CHANGE, restart_kubelets, _kubelet_plan,
         timeout=KUBELET_TIMEOUT * 2 + 60, safe_to_repeat=True),
    Step(S_SINGLE, "Verify that the single member control plane has started", StepKind.READ, verify_single_member,
         _single_plan, timeout=WAIT_STEP_TIMEOUT, safe_to_repeat=True),
    *(Step(op.step_id, f"Force {op.name} redeployment and wait until all nodes are at the latest revision",
           StepKind.CHANGE, redeploy(op), redeploy_plan(op), timeout=WAIT_STEP_TIMEOUT, safe_to_repeat=True)
      for op in OPERATORS),
    Step(S_VERIFY, "Verify that all master hosts have started and joined the cluster", StepKind.READ, verify_members,
         _verify_plan, timeout=WAIT_STEP_TIMEOUT, safe_to_repeat=True),
)


def build(_parameters: Mapping[str, Any] | None = None) -> Procedure:
    """Chapter 5.3. The parameters (backup id, recovery host) are read by the steps from the run."""
    return Procedure(name=NAME, title=TITLE, chapter="5.3", steps=STEPS, admission=admission, preview=preview)


register(
    NAME, build, title=TITLE, command=COMMAND,
    params=(Param("backup-id", BACKUP_ID_RE, "20261127-081409-a1b2c3d4"),
            Param("recovery-host", NODE_NAME_RE, "ip-10-0-131-183.ec2.internal", optional=True, flag="--recovery-host")),
    summary="restore the cluster from a backup, with a second person's approval (Ch.5.3)",
)
