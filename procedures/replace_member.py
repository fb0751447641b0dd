"""Chapter 2.4, "Replacing an unhealthy etcd member", as steps the runner drives:
`/etcd-replace-member <node> [cluster] [--dry-run]`.

The document has two procedures; which one is decided by 2.3 (procedures/diagnosis.py):
- variant A, the machine is not running or the node is not ready: remove the member from an etcd
  pod on another node, delete its three secrets, and replace its Machine (saved, renamed to the
  same base name with the next index, the fields the document lists stripped, the old one deleted,
  the new one created), then verify 3 etcd pods, exactly 3 members, every one healthy;
- variant B, the etcd pod is crashlooping: on the node (SSH as `core`, with sudo) move the etcd
  static pod manifest into `/var/lib/etcd-backup` and the data directory to `/tmp`, remove the
  member and its secrets, force a redeployment and check `endpoint health --cluster`.

One procedure holds the steps of both, in the document's order; a step of the other variant says
"not needed" and does nothing. Why not two procedures: the variant is decided from the cluster
by the admission and the first steps, while a run's steps are fixed when the run is built (and
rebuilt the same after a restart, for Resume).

What the bot adds to the page, each a rule of procedures/replace_rules.py:
- admission runs the 2.3 diagnosis again and refuses, saying why and what to run instead: a
  healthy member, quorum loss (`/etcd-restore`), a machine expected back, more than one unhealthy
  member, more than 3 members, a removal that would lose quorum, a node the cluster does not have;
- the backup of 2.1 first: a verified backup of the running version younger than
  `ETCDBOT_REPLACE_BACKUP_MAX_AGE` (default 1 h). Without one, the admission warns with a button,
  *Back up, then replace*: the run it starts takes the backup as its first step (chapter 1's steps,
  procedures/backup.py) and goes on. Chosen over a chained second run: one run, one lock, one
  audit trail, and a failed backup stops the replacement before anything is touched;
- one approval covers the destructive block (`approval_group`): stop the pod and move its data
  (B), remove the member, delete its secrets, delete its machine (A). Its plan names the member ID,
  name and peer URL (read live, so a member that changed between the approval and the step asks a
  new approval), the secret names, the old and new machine names;
- every destructive step is safe to repeat (Resume): it reads what is there first and does only
  what is left (a member already gone is not removed again, a deleted machine not deleted again);
- every wait has a deadline (settings), and a failure says each master's state and what to type.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bot.backups import BackupRecord
from bot.cluster.etcd import EtcdctlFailed, EtcdUnavailable
from bot.cluster.etcdctl import Member, MemberList
from bot.cluster.hosts import CommandResult, shell_command
from bot.cluster.kube import ETCD, ETCD_NAMESPACE, MACHINE, MACHINE_NAMESPACE, SECRET, KubeError
from bot.config import NODE_NAME_RE
from bot.procedure import (
    Admission,
    EtcdAccess,
    Param,
    PlannedCommand,
    Procedure,
    Step,
    StepContext,
    StepFailed,
    StepId,
    StepKind,
    StepResult,
    plan_of,
    register,
)
from procedures import backup
from procedures.diagnosis import State
from procedures.facts import ClusterFacts, pod_facts
from procedures.replace_rules import (
    VARIANT_A,
    VARIANT_B,
    VARIANT_TITLES,
    Choice,
    Refusal,
    asked_by,
    check_replaced,
    choose,
    fresh_backup,
    machine_of,
    new_machine_manifest,
    next_machine_name,
    redeploy_reason,
    secret_names,
)
from procedures.status import gather_facts

NAME = "replace-member"
TITLE = "Replacing an unhealthy etcd member"
GROUP = "replace-member"  # the approval group: one approval for the destructive block
BACKUP_OVERRIDE = "backup-first"
BACKUP_LABEL = "Back up, then replace"

MANIFEST = "/etc/kubernetes/manifests/etcd-pod.yaml"
MANIFEST_BACKUP_DIR = "/var/lib/etcd-backup"
DATA_DIR = "/var/lib/etcd"
COMMAND_TIMEOUT = 60.0
POLL = 0.5  # seconds between two reads of a wait (API and etcdctl reads only)
POD_STOP_TIMEOUT = 120.0
RESAMPLES = 5
RESAMPLE_EVERY = 2.0

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


# ---- reading the cluster ---------------------------------------------------------------------


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


async def _facts(ctx: StepContext) -> ClusterFacts:
    return await gather_facts(cluster=ctx.cluster_name, kube=ctx.kube, hosts=ctx.hosts)  # type: ignore[arg-type]


async def _members(etcd: EtcdAccess | None) -> tuple[MemberList | None, str]:
    if etcd is None:
        return None, ""
    try:
        return await etcd.member_list(), etcd.via
    except (EtcdUnavailable, EtcdctlFailed, ValueError) as exc:
        return None, str(exc)[:200]


async def assess(ctx: StepContext, node: str) -> tuple[Refusal | Choice, str]:
    """2.3 again, from every source at once: the status facts and `member list` from a place that
    is not on the node. Returns the decision and where `member list` answered.

    A crashlooping etcd pod reads Running for a moment after each restart, so an unhealthy member
    for which none of the 2.3 states shows is read again a few times before the answer is "none
    applies yet" (RESAMPLES reads, RESAMPLE_EVERY seconds apart)."""
    etcd = ctx.etcd.avoiding(node) if ctx.etcd is not None else None
    ssh_nodes = ctx.hosts.nodes if ctx.hosts is not None else ()
    for sample in range(RESAMPLES):
        facts, (members, via) = await asyncio.gather(_facts(ctx), _members(etcd))
        decision = choose(node=node, facts=facts, members=members, ssh_nodes=ssh_nodes, cluster=ctx.cluster_name)
        if not (isinstance(decision, Refusal) and decision.state == State.MEMBER_UNHEALTHY.value) \
                or sample == RESAMPLES - 1:
            return decision, via
        await asyncio.sleep(RESAMPLE_EVERY)  # a bounded number of reads of a state that flaps
    raise AssertionError("unreachable")


async def cluster_version(ctx: StepContext) -> str | None:
    if ctx.kube is None:
        return None
    try:
        return backup.full_version(await ctx.kube.get_cluster_version())
    except KubeError:
        return None


def _present(record: BackupRecord) -> bool:
    """Both files of the backup still in the store, with the size recorded."""
    try:
        return bool(record.files) and all(Path(f.path).stat().st_size == f.size for f in record.files)
    except OSError:
        return False


async def recent_backup(ctx: StepContext) -> tuple[BackupRecord | None, str | None]:
    """The backup that counts as "taken first" (replace_rules.fresh_backup), and the version."""
    version = await cluster_version(ctx)
    if ctx.catalogue is None:
        return None, version
    records = await ctx.catalogue.list(cluster=ctx.cluster_name, limit=50)
    found = fresh_backup(records, version=version, now=time.time(), max_age=ctx.settings.replace_backup_max_age,
                         present=_present)
    return found, version


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


# ---- admission and dry run -------------------------------------------------------------------


async def admission(ctx: StepContext) -> Admission:
    """The refusals of 2.3/2.4 first; then the backup of 2.1: none recent is a warning whose button
    starts the run that takes one first."""
    node = node_of(ctx)
    (decision, _via), (found, version) = await asyncio.gather(assess(ctx, node), recent_backup(ctx))
    if isinstance(decision, Refusal):
        return Admission.refuse(decision.message, next_action=decision.next_action)
    if found is not None:
        return Admission.ok()
    limit = _age(ctx.settings.replace_backup_max_age)
    of = f" of OpenShift {version}" if version else ""
    return Admission.warn(
        f"`{node}` needs replacing ({VARIANT_TITLES[decision.variant]}: {decision.reason}) but the store holds no "
        f"verified backup{of} of `{ctx.cluster_name}` younger than {limit}, and the document says to take an etcd "
        "backup before replacing a member.",
        override=BACKUP_OVERRIDE, label=BACKUP_LABEL,
        next_action="The button takes a backup now, then goes on with the replacement.",
    )


async def preview(ctx: StepContext) -> dict[str, str]:
    """What a dry run shows beside its plan: the variant, the member (ID, name, peer URL), the
    machines, the backup it would use or take. Reads only."""
    node = node_of(ctx)
    (decision, via), (found, _version) = await asyncio.gather(assess(ctx, node), recent_backup(ctx))
    shown: dict[str, str] = {"backup": found.id if found else "none recent: the run takes one first"}
    if found is None:
        shown.update({k: v for k, v in (await backup.preview(ctx)).items() if k in ("master", "proxy", "encrypted")})
    if isinstance(decision, Refusal):
        shown["refused"] = decision.message[:200]
        return shown
    shown.update(variant=decision.variant, member_id=decision.member.id, member_name=decision.member.name,
                 peer_url=", ".join(decision.member.peer_urls), etcdctl=via)
    if decision.variant == VARIANT_A and ctx.kube is not None:
        machines = await ctx.kube.list_machines()
        shown["machine"] = decision.machine
        try:
            shown["new_machine"] = next_machine_name(decision.machine, [m["metadata"]["name"] for m in machines])
        except ValueError as exc:
            shown["new_machine"] = str(exc)
    return shown


def _target(ctx: StepContext) -> Target | None:
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


def _plan_node(ctx: StepContext) -> str:
    return str(ctx.parameters.get("node") or "NODE")


def _not_needed(variant: str) -> StepResult:
    other = VARIANT_A if variant == VARIANT_B else VARIANT_B
    return StepResult(summary=f"not needed: variant {variant} ({VARIANT_TITLES[variant]}); this step is variant "
                              f"{other}'s")


def _only(ctx: StepContext, variant: str, commands: list[PlannedCommand]) -> list[PlannedCommand]:
    """A plan of one variant's step: its commands, none in the other variant, marked when unknown."""
    target = _target(ctx)
    if target is None or not target.variant:
        return [PlannedCommand(f"(variant {variant} only) {c.target}", c.command) for c in commands]
    return commands if target.variant == variant else []


# ---- step 1: the backup first (2.1) ---------------------------------------------------------


async def _run_inline(step: Step, ctx: StepContext) -> StepResult:
    """One of chapter 1's steps inside this step, with its own timeout and retries (what the
    runner gives it when `/etcd-backup` runs)."""
    for attempt in range(1, step.retries + 2):
        try:
            async with asyncio.timeout(step.timeout):
                return await step.run(ctx)
        except StepFailed as exc:
            if not exc.retryable or attempt > step.retries:
                raise
        except TimeoutError:
            if attempt > step.retries:
                raise StepFailed(f"{step.title}: timed out after {step.timeout:g} s") from None
        await ctx.heartbeat(f"backup: {step.title}: attempt {attempt} failed, retrying")
        await asyncio.sleep(min(2.0 * 2 ** (attempt - 1), 30.0))  # the retry policy's backoff
    raise AssertionError("unreachable")


async def backup_first(ctx: StepContext) -> StepResult:
    found, version = await recent_backup(ctx)
    if found is not None:
        return StepResult.of(
            f"backup `{found.id}` (OpenShift {found.version}, revision {found.revision}) was taken "
            f"{_age(time.time() - found.finished_at)} ago: recent enough, none taken",
            BackupFirst(backup_id=found.id, taken=False, finished_at=found.finished_at, version=found.version))
    inner: dict[StepId, StepResult] = {}
    sub = dataclasses.replace(ctx, results=inner)
    lines = []
    for step in backup.STEPS:
        await ctx.heartbeat(f"backup: {step.title}")
        try:
            result = await _run_inline(step, sub)
        except StepFailed as exc:
            raise StepFailed(f"the backup taken first failed at *{step.title}*: {exc.message}. Nothing of the member "
                             "was touched.", next_action=exc.next_action or
                             f"Take a backup with `/etcd-backup {ctx.cluster_name}`, then run `/etcd-replace-member "
                             f"{node_of(ctx)}` again.") from exc
        inner[step.id] = result
        lines.append(f"{step.title}: {result.summary}")
    recorded = sub.result(backup.S_RECORD, backup.RecordedBackup)
    taken, _ = await recent_backup(ctx)
    finished = taken.finished_at if taken is not None and taken.id == recorded.backup_id else time.time()
    return StepResult.of(f"took backup `{recorded.backup_id}` (OpenShift {version or 'unknown'})",
                         BackupFirst(backup_id=recorded.backup_id, taken=True, finished_at=finished,
                                     version=version or ""), output="\n".join(lines))


async def _backup_plan(ctx: StepContext) -> list[PlannedCommand]:
    if str(ctx.parameters.get("backup", "")).startswith("none"):
        commands = [PlannedCommand("bot", "no verified backup of this version younger than the limit: "
                                          "chapter 1's steps (as /etcd-backup):")]
        for step in backup.STEPS:
            commands += await plan_of(step, ctx)
        return commands
    if ctx.parameters.get("backup"):
        return [PlannedCommand("bot", f"none: backup {ctx.parameters['backup']} is recent enough")]
    return [PlannedCommand("bot", "read the backup catalogue; without a verified backup of the running version "
                                  "younger than ETCDBOT_REPLACE_BACKUP_MAX_AGE, run chapter 1's steps (as /etcd-backup)")]


# ---- step 2: identify the member (2.2, 2.3; 2.4 "choose a pod not on the affected node") -----


async def identify(ctx: StepContext) -> StepResult:
    node = node_of(ctx)
    decision, via = await assess(ctx, node)
    if isinstance(decision, Refusal):
        raise StepFailed(decision.message, next_action=decision.next_action)
    member = decision.member
    target = Target(node=node, variant=decision.variant, state=decision.state, reason=decision.reason,
                    member_id=member.id, member_name=member.name, peer_urls=member.peer_urls,
                    machine=decision.machine, secrets=secret_names(node), via=via, data_dest=run_dir_name(ctx.run_id))
    return StepResult.of(
        f"variant {target.variant} ({VARIANT_TITLES[target.variant]}): member {member.id} ({member.name}, "
        f"{target.peer}); member list {via}",
        target, output=decision.reason)


def _identify_plan(ctx: StepContext) -> list[PlannedCommand]:
    node = _plan_node(ctx)
    return [
        PlannedCommand("api", "oc get etcd; oc get machines -A; oc get nodes -l node-role.kubernetes.io/master; "
                              "oc get pods -n openshift-etcd"),
        PlannedCommand(f"exec etcd-OTHER -c etcdctl (not on {node})", "etcdctl member list -w json; endpoint health"),
    ]


# ---- step 3 (A): save the machine and prepare the new one ------------------------------------


async def save_machine(ctx: StepContext) -> StepResult:
    target = ctx.result(S_IDENTIFY, Target)
    if target.variant != VARIANT_A:
        return _not_needed(target.variant)
    machines = await _api(ctx, ctx.need_kube().list_machines(), what="list the machines")
    old = next((m for m in machines if m.get("metadata", {}).get("name") == target.machine), None) \
        or machine_of(machines, node=target.node)
    if old is None:
        raise StepFailed(f"the machine of {target.node} ({target.machine}) is not in openshift-machine-api any more",
                         next_action="Check `oc get machines -n openshift-machine-api -o wide`; nothing was changed.")
    name = str(old["metadata"]["name"])
    try:
        new = next_machine_name(name, [str(m.get("metadata", {}).get("name", "")) for m in machines])
    except ValueError as exc:
        raise StepFailed(str(exc), next_action="Replace the machine by hand (document 2.4); nothing was changed.") from exc
    manifest = new_machine_manifest(old, new_name=new)
    return StepResult.of(f"saved {name}; the new machine will be {new}",
                         SavedMachine(old=name, new=new, manifest=manifest),
                         output=yaml.safe_dump(manifest, sort_keys=False)[:2800])


def _save_plan(ctx: StepContext) -> list[PlannedCommand]:
    target = _target(ctx)
    old = target.machine if target and target.machine else str(ctx.parameters.get("machine") or "MACHINE")
    new = str(ctx.parameters.get("new_machine") or "SAME-BASE-NEXT-INDEX")
    return _only(ctx, VARIANT_A, [
        PlannedCommand("api", f"oc get machine {old} -n openshift-machine-api -o yaml > new-master-machine.yaml"),
        PlannedCommand("bot", f"edit it: metadata.name {new}, selfLink fixed; remove status, spec.providerID, "
                              "metadata.annotations, generation, resourceVersion, uid"),
    ])


# ---- step 4 (B): stop the crashlooping pod and move its data --------------------------------


def mkdir_command() -> list[str]:
    return ["sudo", "mkdir", "-p", MANIFEST_BACKUP_DIR]


def move_manifest_command() -> list[str]:
    return ["sudo", "mv", MANIFEST, MANIFEST_BACKUP_DIR + "/"]


def move_data_command(dest: str) -> list[str]:
    if not dest.startswith("/tmp/etcd-") or "/" in dest[len("/tmp/"):]:
        raise ValueError(f"refusing to move {DATA_DIR} to {dest!r}")
    return ["sudo", "mv", DATA_DIR, dest]


def probe_command(dest: str) -> list[str]:
    """Which of the paths the move touches exist (stdout: one per line; missing ones on stderr)."""
    return ["sudo", "ls", "-1d", MANIFEST, f"{MANIFEST_BACKUP_DIR}/etcd-pod.yaml", DATA_DIR, dest]


def etcd_running_command() -> list[str]:
    return ["sudo", "crictl", "ps", "--name", "^etcd$", "-q"]


async def _probe(ctx: StepContext, node: str, dest: str) -> set[str]:
    result = await ctx.need_hosts().run(node=node, argv=probe_command(dest), timeout=COMMAND_TIMEOUT)
    if result.rc is None:
        raise StepFailed(f"{node} does not answer over SSH: {result.error or 'no answer'}", retryable=True,
                         next_action=f"Check SSH to {node} (`ssh core@{node}`), then Resume.")
    return {line.strip().rstrip("/") for line in result.stdout.splitlines() if line.strip()}


def _host_failure(node: str, what: str, result: CommandResult, seen: set[str], dest: str) -> StepFailed:
    where = (f"on {node}: manifest {'in place' if MANIFEST in seen else 'moved'}"
             f"{' (in ' + MANIFEST_BACKUP_DIR + ')' if MANIFEST_BACKUP_DIR + '/etcd-pod.yaml' in seen else ''}, "
             f"data dir {'in ' + DATA_DIR if DATA_DIR in seen else ('in ' + dest if dest in seen else 'not found')}")
    detail = (result.stderr.strip() or result.stdout.strip() or result.error or f"exit {result.rc}")[-300:]
    return StepFailed(
        f"{what} failed ({detail}); {where}. The member was not removed.",
        next_action=(f"On {node}: `sudo ls -ld {MANIFEST} {MANIFEST_BACKUP_DIR}/etcd-pod.yaml {DATA_DIR} {dest}` and "
                     f"`sudo crictl ps -a --name etcd`; fix what is wrong, then Resume (the step does only what is "
                     f"left). To undo: `sudo mv {MANIFEST_BACKUP_DIR}/etcd-pod.yaml /etc/kubernetes/manifests/`."))


async def stop_pod(ctx: StepContext) -> StepResult:
    target = ctx.result(S_IDENTIFY, Target)
    if target.variant != VARIANT_B:
        return _not_needed(target.variant)
    node, dest = target.node, target.data_dest
    hosts = ctx.need_hosts()
    done = []
    seen = await _probe(ctx, node, dest)
    made = await hosts.change(node=node, argv=mkdir_command(), timeout=COMMAND_TIMEOUT)
    if not made.ok:
        raise _host_failure(node, "mkdir " + MANIFEST_BACKUP_DIR, made, seen, dest)
    if MANIFEST in seen:
        moved = await hosts.change(node=node, argv=move_manifest_command(), timeout=COMMAND_TIMEOUT)
        if not moved.ok:
            raise _host_failure(node, "moving etcd-pod.yaml", moved, seen, dest)
        done.append(f"moved etcd-pod.yaml to {MANIFEST_BACKUP_DIR}/")
    elif f"{MANIFEST_BACKUP_DIR}/etcd-pod.yaml" in seen:
        done.append(f"etcd-pod.yaml already in {MANIFEST_BACKUP_DIR}/")
    else:
        raise _host_failure(node, "finding etcd-pod.yaml", CommandResult(node, (), 1, "", "in neither place", 0.0),
                            seen, dest)
    await _wait(ctx, f"the etcd container to stop on {node}", POD_STOP_TIMEOUT,
                lambda: _etcd_stopped(ctx, node), fail=lambda: _host_failure(
                    node, "waiting for the etcd container to stop",
                    CommandResult(node, (), 1, "", f"still running after {POD_STOP_TIMEOUT:g} s", 0.0), seen, dest))
    if DATA_DIR in seen and dest in seen:
        raise _host_failure(node, f"moving {DATA_DIR}", CommandResult(node, (), 1, "", f"{dest} exists already", 0.0),
                            seen, dest)
    if DATA_DIR in seen:
        moved = await hosts.change(node=node, argv=move_data_command(dest), timeout=COMMAND_TIMEOUT)
        if not moved.ok:
            raise _host_failure(node, f"moving {DATA_DIR}", moved, seen, dest)
        done.append(f"moved {DATA_DIR} to {dest}")
    elif dest in seen:
        done.append(f"{DATA_DIR} already moved to {dest}")
    else:
        done.append(f"no {DATA_DIR} on {node} (nothing to move)")
    return StepResult(summary=f"on {node}: " + "; ".join(done))


async def _etcd_stopped(ctx: StepContext, node: str) -> bool | None:
    result = await ctx.need_hosts().run(node=node, argv=etcd_running_command(), timeout=COMMAND_TIMEOUT)
    return True if result.ok and not result.stdout.strip() else None


def _stop_plan(ctx: StepContext) -> list[PlannedCommand]:
    target = _target(ctx)
    node = target.node if target else _plan_node(ctx)
    at = f"ssh core@{node}"
    dest = run_dir_name(ctx.run_id)
    return _only(ctx, VARIANT_B, [
        PlannedCommand(at, shell_command(mkdir_command())),
        PlannedCommand(at, shell_command(move_manifest_command())),
        PlannedCommand(at, f"{shell_command(etcd_running_command())}  (until empty, at most {POD_STOP_TIMEOUT:g} s)"),
        PlannedCommand(at, shell_command(move_data_command(dest))),
    ])


# ---- step 5: remove the member --------------------------------------------------------------


def _find(members: MemberList, target: Target) -> Member | None:
    """The member to remove now: the one identified (by ID), else one that took its name since."""
    return next((m for m in members.members if m.id == target.member_id), None) or \
        next((m for m in members.members if m.name == target.node), None)


def _describe_member(member: Member) -> str:
    return f"{member.name or '(not started)'}, peer {', '.join(member.peer_urls) or 'none'}"


async def remove_member(ctx: StepContext) -> StepResult:
    target = ctx.result(S_IDENTIFY, Target)
    etcd = ctx.need_etcd().avoiding(target.node)
    members = await _etcd_call(etcd.member_list(), what="member list")
    member = _find(members, target)
    if member is None:
        left = tuple(f"{m.name} {m.id}" for m in members.members)
        return StepResult.of(f"member {target.member_id} ({target.member_name}) is not in member list: already removed",
                             Removed(member_id=target.member_id, already_gone=True, members_left=left))
    health = {h.endpoint: h.healthy for h in await _etcd_call(etcd.endpoint_health(), what="endpoint health")}
    if member.endpoint and health.get(member.endpoint):
        raise StepFailed(f"member {member.id} ({_describe_member(member)}) answers `endpoint health` as healthy now: "
                         "the bot never removes a healthy member.",
                         next_action=f"Check `/etcd-status {ctx.cluster_name}`; nothing was removed.")
    others = sum(1 for m in members.members if m.id != member.id and m.endpoint and health.get(m.endpoint))
    left = len(members.members) - 1
    if others < left // 2 + 1:
        raise StepFailed(f"removing {member.id} would leave {left} members with {others} healthy: no quorum.",
                         next_action=f"Check `/etcd-status {ctx.cluster_name}`; nothing was removed.")
    await ctx.heartbeat(f"etcdctl member remove {member.id} ({etcd.via})")
    try:
        after = await etcd.member_remove(member.id)
    except EtcdctlFailed as exc:
        again = await _etcd_call(etcd.member_list(), what="member list")
        if any(m.id == member.id for m in again.members):
            raise StepFailed(f"etcdctl member remove {member.id} failed: {exc}", retryable=exc.rc is None,
                             next_action=f"Run `etcdctl member list -w table` in an etcd pod not on {target.node}; "
                                         "Resume removes it if it is still there.") from exc
        after = again
    # "View the member list again and verify": `member remove -w json` answers with the cluster's
    # member list after the removal, read from the same place.
    if any(m.id == member.id for m in after.members) or not after.members:
        after = await _etcd_call(etcd.member_list(), what="member list")
    if any(m.id == member.id for m in after.members):
        raise StepFailed(f"member {member.id} is still in member list after `member remove`",
                         next_action=f"Run `etcdctl member list -w table` in an etcd pod not on {target.node}.")
    left_names = tuple(f"{m.name or '(not started)'} {m.id}" for m in after.members)
    return StepResult.of(
        f"removed member {member.id} ({_describe_member(member)}) {etcd.via}; member list: {', '.join(left_names)}",
        Removed(member_id=member.id, already_gone=False, members_left=left_names))


async def _remove_plan(ctx: StepContext) -> list[PlannedCommand]:
    target = _target(ctx)
    if target is None:
        node = _plan_node(ctx)
        return [PlannedCommand(f"etcdctl in an etcd pod not on {node}", "etcdctl member remove MEMBER-ID"),
                PlannedCommand(f"etcdctl in an etcd pod not on {node}", "etcdctl member list (verify it is gone)")]
    where = f"etcdctl in an etcd pod not on {target.node}"
    member: Member | None = None
    if S_IDENTIFY in ctx.results and ctx.etcd is not None:  # a run: the member as it is now
        member = _find(await _etcd_call(ctx.etcd.avoiding(target.node).member_list(), what="member list"), target)
        if member is None:
            return [PlannedCommand(where, f"nothing: member {target.member_id} ({target.member_name}) is not in "
                                          "member list any more")]
    shown = member or Member(id=target.member_id, name=target.member_name, peer_urls=target.peer_urls, client_urls=())
    return [
        PlannedCommand(where, f"etcdctl member remove {shown.id}  # {_describe_member(shown)}"),
        PlannedCommand(where, f"etcdctl member list -w json  # verify {shown.id} is gone"),
    ]


# ---- step 6: delete the secrets -------------------------------------------------------------


async def delete_secrets(ctx: StepContext) -> StepResult:
    target = ctx.result(S_IDENTIFY, Target)
    kube = ctx.need_kube()
    present = {s.get("metadata", {}).get("name") for s in await _api(ctx, kube.list_secrets(), what="list secrets")}
    deleted, gone = [], []
    for name in target.secrets:
        if name not in present:
            gone.append(name)
            continue
        await _api(ctx, kube.delete(SECRET, name, namespace=ETCD_NAMESPACE), what=f"delete secret {name}")
        deleted.append(name)
    summary = f"deleted {', '.join(deleted)}" if deleted else "nothing to delete"
    if gone:
        summary += f" (already gone: {', '.join(gone)})"
    return StepResult(summary=summary)


def _secrets_plan(ctx: StepContext) -> list[PlannedCommand]:
    target = _target(ctx)
    names = target.secrets if target else secret_names(_plan_node(ctx))
    return [PlannedCommand("api", f"oc delete secret -n {ETCD_NAMESPACE} {name}") for name in names]


# ---- steps 7-9 (A): the machine --------------------------------------------------------------


async def delete_machine(ctx: StepContext) -> StepResult:
    target = ctx.result(S_IDENTIFY, Target)
    if target.variant != VARIANT_A:
        return _not_needed(target.variant)
    saved = ctx.result(S_SAVE_MACHINE, SavedMachine)
    kube = ctx.need_kube()
    current = await _get_machine(ctx, saved.old)
    if current is None:
        return StepResult(summary=f"machine {saved.old} is already deleted")
    owner = ((current.get("status") or {}).get("nodeRef") or {}).get("name")
    if owner and owner != target.node:
        raise StepFailed(f"machine {saved.old} now belongs to node {owner}, not {target.node}: not deleting it",
                         next_action="Check `oc get machines -n openshift-machine-api -o wide`.")
    await _api(ctx, kube.delete(MACHINE, saved.old, namespace=MACHINE_NAMESPACE), what=f"delete machine {saved.old}")

    async def gone() -> bool | None:
        return True if await _get_machine(ctx, saved.old) is None else None

    await _wait(ctx, f"machine {saved.old} to be deleted", ctx.settings.replace_machine_timeout, gone,
                fail=lambda: StepFailed(
                    f"machine {saved.old} is still there {_age(ctx.settings.replace_machine_timeout)} after its deletion",
                    next_action=f"Check `oc get machine {saved.old} -n openshift-machine-api -o yaml` (finalizers, "
                                "the machine controller's log), then Resume."))
    return StepResult(summary=f"deleted machine {saved.old} (it will be replaced by {saved.new})")


def _delete_machine_plan(ctx: StepContext) -> list[PlannedCommand]:
    target = _target(ctx)
    if S_SAVE_MACHINE in ctx.results and target is not None and target.variant == VARIANT_A:
        saved = ctx.result(S_SAVE_MACHINE, SavedMachine)
        old, new = saved.old, saved.new
    else:
        old = str(ctx.parameters.get("machine") or (target.machine if target else "") or "MACHINE")
        new = str(ctx.parameters.get("new_machine") or "SAME-BASE-NEXT-INDEX")
    return _only(ctx, VARIANT_A, [
        PlannedCommand("api", f"oc delete machine -n {MACHINE_NAMESPACE} {old}  # replaced next by {new}"),
        PlannedCommand("api", f"oc get machines -n {MACHINE_NAMESPACE} -o wide  # verify {old} is gone"),
    ])


async def create_machine(ctx: StepContext) -> StepResult:
    target = ctx.result(S_IDENTIFY, Target)
    if target.variant != VARIANT_A:
        return _not_needed(target.variant)
    saved = ctx.result(S_SAVE_MACHINE, SavedMachine)
    if await _get_machine(ctx, saved.new) is not None:
        return StepResult(summary=f"machine {saved.new} exists already (created before the bot restarted)")
    await _api(ctx, ctx.need_kube().create(MACHINE, saved.manifest, namespace=MACHINE_NAMESPACE),
               what=f"create machine {saved.new}")
    return StepResult(summary=f"created machine {saved.new} from {saved.old}'s saved configuration")


def _create_plan(ctx: StepContext) -> list[PlannedCommand]:
    new = str(ctx.parameters.get("new_machine") or "SAME-BASE-NEXT-INDEX")
    if S_SAVE_MACHINE in ctx.results:
        target = _target(ctx)
        if target is not None and target.variant == VARIANT_A:
            new = ctx.result(S_SAVE_MACHINE, SavedMachine).new
    return _only(ctx, VARIANT_A, [PlannedCommand("api", f"oc apply -f new-master-machine.yaml  # machine {new}")])


async def wait_machine(ctx: StepContext) -> StepResult:
    target = ctx.result(S_IDENTIFY, Target)
    if target.variant != VARIANT_A:
        return _not_needed(target.variant)
    saved = ctx.result(S_SAVE_MACHINE, SavedMachine)
    limit = ctx.settings.replace_machine_timeout
    phases: list[str] = []
    note = _on_change(ctx)

    async def running() -> tuple[str, str] | None:
        machine = await _get_machine(ctx, saved.new)
        status = (machine or {}).get("status") or {}
        phase = str(status.get("phase") or "(no phase yet)")
        if not phases or phases[-1] != phase:
            phases.append(phase)
        if phase == "Failed":
            raise StepFailed(f"machine {saved.new} failed: {status.get('errorMessage') or status.get('errorReason')}",
                             next_action=f"`oc describe machine {saved.new} -n {MACHINE_NAMESPACE}`; delete it and "
                                         "create it again from the saved configuration (document 2.4).")
        await note(f"machine {saved.new}: {phase} (waiting at most {_age(limit)})")
        node = ((status.get("nodeRef") or {}).get("name")) or ""
        return (phase, node) if phase == "Running" and node else None

    _phase, node = await _wait(ctx, f"machine {saved.new} Running", limit, running, fail=lambda: StepFailed(
        f"machine {saved.new} is not Running after {_age(limit)} (phases seen: {' -> '.join(phases) or 'none'})",
        next_action=f"Check `oc get machines -n {MACHINE_NAMESPACE} -o wide` and the machine controller; Resume "
                    "waits again."))
    return StepResult.of(f"machine {saved.new} is Running as node {node} ({' -> '.join(phases)})",
                         NewMachine(name=saved.new, node=node, phases=tuple(phases)))


def _wait_plan(ctx: StepContext) -> list[PlannedCommand]:
    return _only(ctx, VARIANT_A, [PlannedCommand(
        "api", f"oc get machines -n {MACHINE_NAMESPACE} -o wide  (until the new machine goes Provisioning -> "
               "Running, within ETCDBOT_REPLACE_MACHINE_TIMEOUT)")])


# ---- step 10: redeployment (B always; A when only 2 etcd pods run) ---------------------------


async def _etcd_pods(ctx: StepContext) -> dict[str, str]:
    """node -> the STATUS `oc get pods -n openshift-etcd` prints for its etcd pod, masters only."""
    kube = ctx.need_kube()
    pods, nodes = await asyncio.gather(kube.list_etcd_pods(), kube.list_master_nodes())
    masters = {str(n.get("metadata", {}).get("name", "")) for n in nodes}
    facts = [pod_facts(p) for p in pods]
    return {f.node: f.status for f in facts if f.node in masters}


def _running(pods: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(sorted(n for n, s in pods.items() if s == "Running"))


async def _patch_reason(ctx: StepContext, prefix: str) -> str:
    """`oc patch etcd cluster --type=merge -p '{"spec":{"forceRedeploymentReason":"<prefix>-<time>"}}'`,
    unless this run set one already (Resume)."""
    kube = ctx.need_kube()
    current = await _api(ctx, kube.get_etcd(), what="read etcd/cluster")
    reason = str((current.get("spec") or {}).get("forceRedeploymentReason") or "")
    if asked_by(reason, run_id=ctx.run_id):
        return reason
    reason = redeploy_reason(prefix, run_id=ctx.run_id)
    await _api(ctx, kube.patch(ETCD, "cluster", {"spec": {"forceRedeploymentReason": reason}}), what="patch etcd/cluster")
    return reason


async def _rolled_out(ctx: StepContext, reason: str) -> bool:
    etcd = await ctx.need_kube().get_etcd()
    status = etcd.get("status") or {}
    latest = status.get("latestAvailableRevision")
    nodes = status.get("nodeStatuses") or []
    at_latest = bool(nodes) and all(s.get("currentRevision") == latest and not s.get("targetRevision") for s in nodes)
    ours = status.get("latestAvailableRevisionReason") in (None, reason)
    return at_latest and ours


async def redeploy(ctx: StepContext) -> StepResult:
    target = ctx.result(S_IDENTIFY, Target)
    settings = ctx.settings
    note = _on_change(ctx)
    if target.variant == VARIANT_A:
        new = ctx.result(S_WAIT_MACHINE, NewMachine)
        expect = new.node

        async def three() -> tuple[str, ...] | None:
            pods = await _etcd_pods(ctx)
            running = _running(pods)
            await note("etcd pods: " + ", ".join(f"{n} {s}" for n, s in sorted(pods.items())))
            return running if len(running) >= 3 and expect in running else None

        found = await _wait(ctx, "3 etcd pods Running", settings.replace_pods_grace, three, fail=None)
        if found is not None:
            return StepResult.of(f"3 etcd pods Running ({', '.join(found)}); no redeployment needed",
                                 Redeployed(reason="", pods_running=found))
        reason = await _patch_reason(ctx, "recovery")  # only 2 pods: the document forces a redeployment
    else:
        expect = target.node
        reason = await _patch_reason(ctx, "single-master-recovery")
    await ctx.heartbeat(f"forceRedeploymentReason: {reason}")

    async def rolled() -> tuple[str, ...] | None:
        pods = await _etcd_pods(ctx)
        running = _running(pods)
        await note(f"redeploying ({reason}); etcd pods: " +
                            ", ".join(f"{n} {s}" for n, s in sorted(pods.items())))
        return running if len(running) >= 3 and expect in running and await _rolled_out(ctx, reason) else None

    limit = settings.replace_rollout_timeout
    running = await _wait(ctx, "the redeployment", limit, rolled, fail=lambda: StepFailed(
        f"the etcd redeployment ({reason}) did not bring {expect}'s etcd pod to Running within {_age(limit)}",
        next_action="Check `oc get etcd -o=jsonpath='{.items[0].status.conditions[?(@.type==\"NodeInstallerProgressing\")]}'` "
                    f"and `oc get pods -n {ETCD_NAMESPACE}`; Resume waits again (it does not patch twice)."))
    return StepResult.of(f"redeployed ({reason}); etcd pods Running: {', '.join(running)}",
                         Redeployed(reason=reason, pods_running=running))


def _redeploy_plan(ctx: StepContext) -> list[PlannedCommand]:
    target = _target(ctx)
    variant = target.variant if target else ""
    patch = ("oc patch etcd cluster --type=merge -p '{\"spec\": {\"forceRedeploymentReason\": "
             "\"%s-<date --rfc-3339=ns> run <run id>\"}}'")
    wait = PlannedCommand("api", f"oc get pods -n {ETCD_NAMESPACE}; oc get etcd (until every master's etcd pod is "
                                 "Running and NodeInstallerProgressing is AllNodesAtLatestRevision)")
    b = [PlannedCommand("api", patch % "single-master-recovery"), wait]
    a = [PlannedCommand("api", f"oc get pods -n {ETCD_NAMESPACE}  (until 3 etcd pods are Running, at most "
                               "ETCDBOT_REPLACE_PODS_GRACE)"),
         PlannedCommand("api (only if 2 pods run then)", patch % "recovery"), wait]
    if variant == VARIANT_A:
        return a
    if variant == VARIANT_B:
        return b
    return [PlannedCommand(f"(variant A) {c.target}", c.command) for c in a] + \
        [PlannedCommand(f"(variant B) {c.target}", c.command) for c in b]


# ---- step 11: verify ------------------------------------------------------------------------


async def verify(ctx: StepContext) -> StepResult:
    target = ctx.result(S_IDENTIFY, Target)
    expect = ctx.result(S_WAIT_MACHINE, NewMachine).node if target.variant == VARIANT_A else target.node
    etcd = ctx.need_etcd()
    kube = ctx.need_kube()
    last: list[str] = []
    note = _on_change(ctx)

    async def replaced() -> tuple[Member, MemberList] | None:
        members = await _etcd_call(etcd.member_list(), what="member list")
        health = await _etcd_call(etcd.endpoint_health(), what="endpoint health")
        verdict = check_replaced(members=members, health=health, old_id=target.member_id, expect_name=expect)
        secrets = {s.get("metadata", {}).get("name") for s in await kube.list_secrets()}
        missing = [s for s in secret_names(expect) if s not in secrets]
        problems = list(verdict.problems) + ([f"secrets not issued yet: {', '.join(missing)}"] if missing else [])
        last[:] = problems
        await note("; ".join(problems) if problems else "every member healthy")
        return (verdict.member, members) if not problems and verdict.member is not None else None

    limit = ctx.settings.replace_rollout_timeout
    member, members = await _wait(ctx, "every member healthy", limit, replaced, fail=lambda: StepFailed(
        f"after {_age(limit)}: {'; '.join(last) or 'no answer'}",
        next_action=f"Check `/etcd-status {ctx.cluster_name}` and `etcdctl member list -w table` in an etcd pod; "
                    "if member list shows more than 3 members, stop and ask a person: removing a good member can "
                    "lose quorum."))
    names = tuple(f"{m.name} {m.id}" for m in members.members)
    return StepResult.of(
        f"{len(members.members)} members, every one healthy; {expect} is member {member.id} (the removed "
        f"{target.member_id} is gone); secrets {', '.join(secret_names(expect))} exist",
        Replaced(member_id=member.id, member_name=member.name, members=names))


def _verify_plan(ctx: StepContext) -> list[PlannedCommand]:
    return [
        PlannedCommand("etcdctl in an etcd pod", "etcdctl member list -w json  # exactly 3, the removed ID gone"),
        PlannedCommand("etcdctl in an etcd pod", "etcdctl endpoint health --cluster  # every member healthy"),
        PlannedCommand("api", f"oc get secrets -n {ETCD_NAMESPACE}  # the new member's 3 secrets issued"),
    ]


# ---- helpers: calls with a failure a person can act on, waits with deadlines -----------------


async def _api(ctx: StepContext, call: Awaitable[T], *, what: str) -> T:
    try:
        return await call
    except KubeError as exc:
        raise StepFailed(f"could not {what}: {exc}", retryable=exc.status in (0, 429, 500, 502, 503, 504),
                         next_action=f"Check the API with `/etcd-status {ctx.cluster_name}`, then Resume.") from exc


async def _etcd_call(call: Awaitable[T], *, what: str) -> T:
    try:
        return await call
    except (EtcdUnavailable, EtcdctlFailed) as exc:
        raise StepFailed(f"etcdctl {what} did not answer: {exc}", retryable=True,
                         next_action="Check etcd with `/etcd-status`, then Resume.") from exc


def _on_change(ctx: StepContext) -> Callable[[str], Awaitable[None]]:
    """The step's heartbeat, said only when its text changes: a wait polls twice a second, and
    each note is a message update in Slack."""
    last = [""]

    async def note(text: str) -> None:
        if text != last[0]:
            last[0] = text
            await ctx.heartbeat(text)

    return note


async def _get_machine(ctx: StepContext, name: str) -> dict[str, Any] | None:
    try:
        return await ctx.need_kube().get_object(MACHINE, name, namespace=MACHINE_NAMESPACE)
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise StepFailed(f"could not read machine {name}: {exc}", retryable=True,
                         next_action=f"Check the API with `/etcd-status {ctx.cluster_name}`, then Resume.") from exc


async def _wait(ctx: StepContext, what: str, limit: float, check: Callable[[], Awaitable[T | None]],
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
            if error:
                failure = StepFailed(f"{failure.message} (last error: {error[:200]})",
                                     next_action=failure.next_action, retryable=failure.retryable)
            raise failure
        await asyncio.sleep(POLL)  # polling a condition with a deadline


# ---- the procedure --------------------------------------------------------------------------

READ, CHANGE, DESTRUCTIVE = StepKind.READ, StepKind.CHANGE, StepKind.DESTRUCTIVE
LONG_WAIT = 3 * 3600 + 300  # above the largest deadline the settings allow; the steps keep their own

STEPS: tuple[Step, ...] = (
    Step(S_BACKUP, "Take an etcd backup first (2.1), unless a recent one is in the store", CHANGE, backup_first,
         _backup_plan, timeout=7200, safe_to_repeat=True),
    Step(S_IDENTIFY, "Identify the unhealthy member and its state (2.2, 2.3); member list from a pod on another node",
         READ, identify, _identify_plan, timeout=120, retries=2, safe_to_repeat=True),
    Step(S_SAVE_MACHINE, "A: save the machine's configuration for the new machine (same base name, next index)",
         READ, save_machine, _save_plan, timeout=60, retries=2, safe_to_repeat=True),
    Step(S_STOP_POD, "B: on the node, move etcd-pod.yaml to /var/lib/etcd-backup and /var/lib/etcd to /tmp",
         DESTRUCTIVE, stop_pod, _stop_plan, timeout=COMMAND_TIMEOUT * 4 + POD_STOP_TIMEOUT, safe_to_repeat=True,
         approval_group=GROUP),
    Step(S_REMOVE, "Remove the unhealthy member (etcdctl member remove), and verify it is gone", DESTRUCTIVE,
         remove_member, _remove_plan, timeout=120, safe_to_repeat=True, approval_group=GROUP),
    Step(S_SECRETS, "Remove the old secrets of the member (peer, serving, serving-metrics)", DESTRUCTIVE,
         delete_secrets, _secrets_plan, timeout=120, safe_to_repeat=True, approval_group=GROUP),
    Step(S_DELETE_MACHINE, "A: delete the machine of the unhealthy member", DESTRUCTIVE, delete_machine,
         _delete_machine_plan, timeout=LONG_WAIT, safe_to_repeat=True, approval_group=GROUP),
    Step(S_CREATE_MACHINE, "A: create the new machine", CHANGE, create_machine, _create_plan, timeout=120,
         retries=2, safe_to_repeat=True),
    Step(S_WAIT_MACHINE, "A: wait until the new machine goes from Provisioning to Running", READ, wait_machine,
         _wait_plan, timeout=LONG_WAIT, safe_to_repeat=True),
    Step(S_REDEPLOY, "Force etcd redeployment (B; A only if just 2 etcd pods run) and wait for it", CHANGE,
         redeploy, _redeploy_plan, timeout=2 * LONG_WAIT, safe_to_repeat=True),
    Step(S_VERIFY, "Verify: exactly 3 members, every one healthy, the new member's secrets issued", READ, verify,
         _verify_plan, timeout=LONG_WAIT, safe_to_repeat=True),
)


def build(_parameters: Mapping[str, Any] | None = None) -> Procedure:
    """The chapter 2.4 procedure for the node in the parameters (read by the steps)."""
    return Procedure(name=NAME, title=TITLE, chapter="2.4", steps=STEPS, admission=admission, preview=preview)


register(NAME, build, title=TITLE, command="/etcd-replace-member",
         params=(Param("node", NODE_NAME_RE, "ip-10-0-131-183.ec2.internal"),),
         summary="replace an unhealthy etcd member (Ch.2.4: machine not running, node not ready, crashlooping pod)")
