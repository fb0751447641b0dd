"""Chapter 2.4's steps on etcd and on the node: variant B's move of the static pod manifest and
the data directory (SSH as `core`, with sudo), the member removal from an etcd pod on another node,
the three secrets, the redeployment, and the verification. Each reads what is there first, so a
repeated step (Resume) does only what is left; a member that answers as healthy, or whose removal
would leave no healthy majority, is never removed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from bot.cluster.etcd import EtcdctlFailed
from bot.cluster.etcdctl import Member, MemberList
from bot.cluster.hosts import CommandResult, shell_command
from bot.cluster.kube import ETCD, ETCD_NAMESPACE, SECRET
from bot.procedure import (
    PlannedCommand,
    StepContext,
    StepFailed,
    StepResult,
)
from procedures.facts import pod_facts
from procedures.replace_common import (
    COMMAND_TIMEOUT,
    DATA_DIR,
    MANIFEST,
    MANIFEST_BACKUP_DIR,
    POD_STOP_TIMEOUT,
    S_IDENTIFY,
    S_WAIT_MACHINE,
    NewMachine,
    Redeployed,
    Removed,
    Replaced,
    Target,
    age,
    api_call,
    etcd_call,
    not_needed,
    on_change,
    only_in,
    plan_node,
    run_dir_name,
    target_of,
    wait_until,
)
from procedures.replace_rules import (
    VARIANT_A,
    VARIANT_B,
    asked_by,
    check_replaced,
    redeploy_reason,
    secret_names,
)

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
        return not_needed(target.variant)
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
    await wait_until(ctx, f"the etcd container to stop on {node}", POD_STOP_TIMEOUT,
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


def stop_plan(ctx: StepContext) -> list[PlannedCommand]:
    target = target_of(ctx)
    node = target.node if target else plan_node(ctx)
    at = f"ssh core@{node}"
    dest = run_dir_name(ctx.run_id)
    return only_in(ctx, VARIANT_B, [
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
    # member list and every member's health in one round trip (where the remove will run)
    survey = await etcd_call(etcd.survey(), what="member list and endpoint health")
    members = survey.members
    member = _find(members, target)
    if member is None:
        left = tuple(f"{m.name} {m.id}" for m in members.members)
        return StepResult.of(f"member {target.member_id} ({target.member_name}) is not in member list: already removed",
                             Removed(member_id=target.member_id, already_gone=True, members_left=left))
    health = {h.endpoint: h.healthy for h in survey.health}
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
        again = await etcd_call(etcd.member_list(), what="member list")
        if any(m.id == member.id for m in again.members):
            raise StepFailed(f"etcdctl member remove {member.id} failed: {exc}", retryable=exc.rc is None,
                             next_action=f"Run `etcdctl member list -w table` in an etcd pod not on {target.node}; "
                                         "Resume removes it if it is still there.") from exc
        after = again
    # "View the member list again and verify": `member remove -w json` answers with the cluster's
    # member list after the removal, read from the same place.
    if any(m.id == member.id for m in after.members) or not after.members:
        after = await etcd_call(etcd.member_list(), what="member list")
    if any(m.id == member.id for m in after.members):
        raise StepFailed(f"member {member.id} is still in member list after `member remove`",
                         next_action=f"Run `etcdctl member list -w table` in an etcd pod not on {target.node}.")
    left_names = tuple(f"{m.name or '(not started)'} {m.id}" for m in after.members)
    return StepResult.of(
        f"removed member {member.id} ({_describe_member(member)}) {etcd.via}; member list: {', '.join(left_names)}",
        Removed(member_id=member.id, already_gone=False, members_left=left_names))


async def remove_plan(ctx: StepContext) -> list[PlannedCommand]:
    target = target_of(ctx)
    if target is None:
        node = plan_node(ctx)
        return [PlannedCommand(f"etcdctl in an etcd pod not on {node}", "etcdctl member remove MEMBER-ID"),
                PlannedCommand(f"etcdctl in an etcd pod not on {node}", "etcdctl member list (verify it is gone)")]
    where = f"etcdctl in an etcd pod not on {target.node}"
    member: Member | None = None
    if S_IDENTIFY in ctx.results and ctx.etcd is not None:  # a run: the member as it is now
        member = _find(await etcd_call(ctx.etcd.avoiding(target.node).member_list(), what="member list"), target)
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
    present = {s.get("metadata", {}).get("name") for s in await api_call(ctx, kube.list_secrets(), what="list secrets")}
    deleted, gone = [], []
    for name in target.secrets:
        if name not in present:
            gone.append(name)
            continue
        await api_call(ctx, kube.delete(SECRET, name, namespace=ETCD_NAMESPACE), what=f"delete secret {name}")
        deleted.append(name)
    summary = f"deleted {', '.join(deleted)}" if deleted else "nothing to delete"
    if gone:
        summary += f" (already gone: {', '.join(gone)})"
    return StepResult(summary=summary)


def secrets_plan(ctx: StepContext) -> list[PlannedCommand]:
    target = target_of(ctx)
    names = target.secrets if target else secret_names(plan_node(ctx))
    return [PlannedCommand("api", f"oc delete secret -n {ETCD_NAMESPACE} {name}") for name in names]


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
    current = await api_call(ctx, kube.get_etcd(), what="read etcd/cluster")
    reason = str((current.get("spec") or {}).get("forceRedeploymentReason") or "")
    if asked_by(reason, run_id=ctx.run_id):
        return reason
    reason = redeploy_reason(prefix, run_id=ctx.run_id)
    await api_call(ctx, kube.patch(ETCD, "cluster", {"spec": {"forceRedeploymentReason": reason}}), what="patch etcd/cluster")
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
    note = on_change(ctx)
    if target.variant == VARIANT_A:
        new = ctx.result(S_WAIT_MACHINE, NewMachine)
        expect = new.node

        async def three() -> tuple[str, ...] | None:
            pods = await _etcd_pods(ctx)
            running = _running(pods)
            await note("etcd pods: " + ", ".join(f"{n} {s}" for n, s in sorted(pods.items())))
            return running if len(running) >= 3 and expect in running else None

        found = await wait_until(ctx, "3 etcd pods Running", settings.replace_pods_grace, three, fail=None)
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
    running = await wait_until(ctx, "the redeployment", limit, rolled, fail=lambda: StepFailed(
        f"the etcd redeployment ({reason}) did not bring {expect}'s etcd pod to Running within {age(limit)}",
        next_action="Check `oc get etcd -o=jsonpath='{.items[0].status.conditions[?(@.type==\"NodeInstallerProgressing\")]}'` "
                    f"and `oc get pods -n {ETCD_NAMESPACE}`; Resume waits again (it does not patch twice)."))
    return StepResult.of(f"redeployed ({reason}); etcd pods Running: {', '.join(running)}",
                         Redeployed(reason=reason, pods_running=running))


def redeploy_plan(ctx: StepContext) -> list[PlannedCommand]:
    target = target_of(ctx)
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
    note = on_change(ctx)

    async def replaced() -> tuple[Member, MemberList] | None:
        survey = await etcd_call(etcd.survey(), what="member list and endpoint health")
        members, health = survey.members, survey.health
        verdict = check_replaced(members=members, health=health, old_id=target.member_id, expect_name=expect)
        secrets = {s.get("metadata", {}).get("name") for s in await kube.list_secrets()}
        missing = [s for s in secret_names(expect) if s not in secrets]
        problems = list(verdict.problems) + ([f"secrets not issued yet: {', '.join(missing)}"] if missing else [])
        last[:] = problems
        await note("; ".join(problems) if problems else "every member healthy")
        return (verdict.member, members) if not problems and verdict.member is not None else None

    limit = ctx.settings.replace_rollout_timeout
    member, members = await wait_until(ctx, "every member healthy", limit, replaced, fail=lambda: StepFailed(
        f"after {age(limit)}: {'; '.join(last) or 'no answer'}",
        next_action=f"Check `/etcd-status {ctx.cluster_name}` and `etcdctl member list -w table` in an etcd pod; "
                    "if member list shows more than 3 members, stop and ask a person: removing a good member can "
                    "lose quorum."))
    names = tuple(f"{m.name} {m.id}" for m in members.members)
    return StepResult.of(
        f"{len(members.members)} members, every one healthy; {expect} is member {member.id} (the removed "
        f"{target.member_id} is gone); secrets {', '.join(secret_names(expect))} exist",
        Replaced(member_id=member.id, member_name=member.name, members=names))


def verify_plan(ctx: StepContext) -> list[PlannedCommand]:
    return [
        PlannedCommand("etcdctl in an etcd pod", "etcdctl member list -w json  # exactly 3, the removed ID gone"),
        PlannedCommand("etcdctl in an etcd pod", "etcdctl endpoint health --cluster  # every member healthy"),
        PlannedCommand("api", f"oc get secrets -n {ETCD_NAMESPACE}  # the new member's 3 secrets issued"),
    ]

