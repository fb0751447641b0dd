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

Where things are: this module holds the admission, the dry run's preview, the first two steps
(the backup, the identification) and the step list; procedures/replace_machine.py the Machine API
steps (A); procedures/replace_etcd.py the node, member, secrets, redeployment and verification
steps; procedures/replace_common.py the step ids, typed results and helpers they share;
procedures/replace_rules.py every decision as a pure function.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from bot.backups import BackupRecord
from bot.cluster.etcd import EtcdctlFailed, EtcdUnavailable
from bot.cluster.etcdctl import MemberList
from bot.cluster.kube import KubeError
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
from procedures.facts import ClusterFacts
from procedures.guards import fresh_backup
from procedures.replace_common import (
    COMMAND_TIMEOUT,
    GROUP,
    POD_STOP_TIMEOUT,
    S_BACKUP,
    S_CREATE_MACHINE,
    S_DELETE_MACHINE,
    S_IDENTIFY,
    S_REDEPLOY,
    S_REMOVE,
    S_SAVE_MACHINE,
    S_SECRETS,
    S_STOP_POD,
    S_VERIFY,
    S_WAIT_MACHINE,
    BackupFirst,
    Target,
    age,
    node_of,
    plan_node,
    run_dir_name,
)
from procedures.replace_etcd import (
    delete_secrets,
    redeploy,
    redeploy_plan,
    remove_member,
    remove_plan,
    secrets_plan,
    stop_plan,
    stop_pod,
    verify,
    verify_plan,
)
from procedures.replace_machine import (
    create_machine,
    create_plan,
    delete_machine,
    delete_machine_plan,
    save_machine,
    save_plan,
    wait_machine,
    wait_plan,
)
from procedures.replace_rules import (
    VARIANT_A,
    VARIANT_TITLES,
    Choice,
    Refusal,
    choose,
    next_machine_name,
    secret_names,
)
from procedures.status import gather_facts

NAME = "replace-member"
TITLE = "Replacing an unhealthy etcd member"
BACKUP_OVERRIDE = "backup-first"
BACKUP_LABEL = "Back up, then replace"
RESAMPLES = 5
RESAMPLE_EVERY = 2.0


# ---- reading the cluster ---------------------------------------------------------------------


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
    try:
        records = await ctx.catalogue.list(cluster=ctx.cluster_name, limit=50)
    except (OSError, RedisError) as exc:
        raise StepFailed(f"could not read the backup catalogue: {exc}",
                         next_action="Check the bot's Redis (`/readyz`), then try again.") from exc
    found = fresh_backup(records, version=version, now=time.time(), max_age=ctx.settings.replace_backup_max_age,
                         present=_present)
    return found, version


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
    limit = age(ctx.settings.replace_backup_max_age)
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
            f"{age(time.time() - found.finished_at)} ago: recent enough, none taken",
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
    node = plan_node(ctx)
    return [
        PlannedCommand("api", "oc get etcd; oc get machines -A; oc get nodes -l node-role.kubernetes.io/master; "
                              "oc get pods -n openshift-etcd"),
        PlannedCommand(f"exec etcd-OTHER -c etcdctl (not on {node})", "etcdctl member list -w json; endpoint health"),
    ]


# ---- the procedure --------------------------------------------------------------------------

READ, CHANGE, DESTRUCTIVE = StepKind.READ, StepKind.CHANGE, StepKind.DESTRUCTIVE
LONG_WAIT = 3 * 3600 + 300  # above the largest deadline the settings allow; the steps keep their own

STEPS: tuple[Step, ...] = (
    Step(S_BACKUP, "Take an etcd backup first (2.1), unless a recent one is in the store", CHANGE, backup_first,
         _backup_plan, timeout=7200, safe_to_repeat=True),
    Step(S_IDENTIFY, "Identify the unhealthy member and its state (2.2, 2.3); member list from a pod on another node",
         READ, identify, _identify_plan, timeout=120, retries=2, safe_to_repeat=True),
    Step(S_SAVE_MACHINE, "A: save the machine's configuration for the new machine (same base name, next index)",
         READ, save_machine, save_plan, timeout=60, retries=2, safe_to_repeat=True),
    Step(S_STOP_POD, "B: on the node, move etcd-pod.yaml to /var/lib/etcd-backup and /var/lib/etcd to /tmp",
         DESTRUCTIVE, stop_pod, stop_plan, timeout=COMMAND_TIMEOUT * 4 + POD_STOP_TIMEOUT, safe_to_repeat=True,
         approval_group=GROUP),
    Step(S_REMOVE, "Remove the unhealthy member (etcdctl member remove), and verify it is gone", DESTRUCTIVE,
         remove_member, remove_plan, timeout=120, safe_to_repeat=True, approval_group=GROUP),
    Step(S_SECRETS, "Remove the old secrets of the member (peer, serving, serving-metrics)", DESTRUCTIVE,
         delete_secrets, secrets_plan, timeout=120, safe_to_repeat=True, approval_group=GROUP),
    Step(S_DELETE_MACHINE, "A: delete the machine of the unhealthy member", DESTRUCTIVE, delete_machine,
         delete_machine_plan, timeout=LONG_WAIT, safe_to_repeat=True, approval_group=GROUP),
    Step(S_CREATE_MACHINE, "A: create the new machine", CHANGE, create_machine, create_plan, timeout=120,
         retries=2, safe_to_repeat=True),
    Step(S_WAIT_MACHINE, "A: wait until the new machine goes from Provisioning to Running", READ, wait_machine,
         wait_plan, timeout=LONG_WAIT, safe_to_repeat=True),
    Step(S_REDEPLOY, "Force etcd redeployment (B; A only if just 2 etcd pods run) and wait for it", CHANGE,
         redeploy, redeploy_plan, timeout=2 * LONG_WAIT, safe_to_repeat=True),
    Step(S_VERIFY, "Verify: exactly 3 members, every one healthy, the new member's secrets issued", READ, verify,
         verify_plan, timeout=LONG_WAIT, safe_to_repeat=True),
)


def build(_parameters: Mapping[str, Any] | None = None) -> Procedure:
    """The chapter 2.4 procedure for the node in the parameters (read by the steps)."""
    return Procedure(name=NAME, title=TITLE, chapter="2.4", steps=STEPS, admission=admission, preview=preview)


register(NAME, build, title=TITLE, command="/etcd-replace-member",
         params=(Param("node", NODE_NAME_RE, "ip-10-0-131-183.ec2.internal"),),
         summary="replace an unhealthy etcd member (Ch.2.4: machine not running, node not ready, crashlooping pod)")
