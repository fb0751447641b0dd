"""Chapter 2.4, variant A (the machine is not running, or the node is not ready): the Machine API
steps. Save the machine, name the new one (same base name, next index) with the fields the
document lists stripped; after the approval, delete the old machine (only while it still belongs
to the node), create the new one, and wait until it goes from Provisioning to Running. Each step
reads what is there first, so Resume does only what is left. In variant B they do nothing."""

from __future__ import annotations

import yaml

from bot.cluster.kube import MACHINE, MACHINE_NAMESPACE
from bot.procedure import (
    PlannedCommand,
    StepContext,
    StepFailed,
    StepResult,
)
from procedures.replace_common import (
    S_IDENTIFY,
    S_SAVE_MACHINE,
    NewMachine,
    SavedMachine,
    Target,
    age,
    api_call,
    get_machine,
    not_needed,
    on_change,
    only_in,
    target_of,
    wait_until,
)
from procedures.replace_rules import (
    VARIANT_A,
    machine_of,
    new_machine_manifest,
    next_machine_name,
)

# ---- step 3 (A): save the machine and prepare the new one ------------------------------------


async def save_machine(ctx: StepContext) -> StepResult:
    target = ctx.result(S_IDENTIFY, Target)
    if target.variant != VARIANT_A:
        return not_needed(target.variant)
    machines = await api_call(ctx, ctx.need_kube().list_machines(), what="list the machines")
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


def save_plan(ctx: StepContext) -> list[PlannedCommand]:
    target = target_of(ctx)
    old = target.machine if target and target.machine else str(ctx.parameters.get("machine") or "MACHINE")
    new = str(ctx.parameters.get("new_machine") or "SAME-BASE-NEXT-INDEX")
    return only_in(ctx, VARIANT_A, [
        PlannedCommand("api", f"oc get machine {old} -n openshift-machine-api -o yaml > new-master-machine.yaml"),
        PlannedCommand("bot", f"edit it: metadata.name {new}, selfLink fixed; remove status, spec.providerID, "
                              "metadata.annotations, generation, resourceVersion, uid"),
    ])


# ---- steps 7-9 (A): the machine --------------------------------------------------------------


async def delete_machine(ctx: StepContext) -> StepResult:
    target = ctx.result(S_IDENTIFY, Target)
    if target.variant != VARIANT_A:
        return not_needed(target.variant)
    saved = ctx.result(S_SAVE_MACHINE, SavedMachine)
    kube = ctx.need_kube()
    current = await get_machine(ctx, saved.old)
    if current is None:
        return StepResult(summary=f"machine {saved.old} is already deleted")
    owner = ((current.get("status") or {}).get("nodeRef") or {}).get("name")
    if owner and owner != target.node:
        raise StepFailed(f"machine {saved.old} now belongs to node {owner}, not {target.node}: not deleting it",
                         next_action="Check `oc get machines -n openshift-machine-api -o wide`.")
    await api_call(ctx, kube.delete(MACHINE, saved.old, namespace=MACHINE_NAMESPACE), what=f"delete machine {saved.old}")

    async def gone() -> bool | None:
        return True if await get_machine(ctx, saved.old) is None else None

    await wait_until(ctx, f"machine {saved.old} to be deleted", ctx.settings.replace_machine_timeout, gone,
                fail=lambda: StepFailed(
                    f"machine {saved.old} is still there {age(ctx.settings.replace_machine_timeout)} after its deletion",
                    next_action=f"Check `oc get machine {saved.old} -n openshift-machine-api -o yaml` (finalizers, "
                                "the machine controller's log), then Resume."))
    return StepResult(summary=f"deleted machine {saved.old} (it will be replaced by {saved.new})")


def delete_machine_plan(ctx: StepContext) -> list[PlannedCommand]:
    target = target_of(ctx)
    if S_SAVE_MACHINE in ctx.results and target is not None and target.variant == VARIANT_A:
        saved = ctx.result(S_SAVE_MACHINE, SavedMachine)
        old, new = saved.old, saved.new
    else:
        old = str(ctx.parameters.get("machine") or (target.machine if target else "") or "MACHINE")
        new = str(ctx.parameters.get("new_machine") or "SAME-BASE-NEXT-INDEX")
    return only_in(ctx, VARIANT_A, [
        PlannedCommand("api", f"oc delete machine -n {MACHINE_NAMESPACE} {old}  # replaced next by {new}"),
        PlannedCommand("api", f"oc get machines -n {MACHINE_NAMESPACE} -o wide  # verify {old} is gone"),
    ])


async def create_machine(ctx: StepContext) -> StepResult:
    target = ctx.result(S_IDENTIFY, Target)
    if target.variant != VARIANT_A:
        return not_needed(target.variant)
    saved = ctx.result(S_SAVE_MACHINE, SavedMachine)
    if await get_machine(ctx, saved.new) is not None:
        return StepResult(summary=f"machine {saved.new} exists already (created before the bot restarted)")
    await api_call(ctx, ctx.need_kube().create(MACHINE, saved.manifest, namespace=MACHINE_NAMESPACE),
               what=f"create machine {saved.new}")
    return StepResult(summary=f"created machine {saved.new} from {saved.old}'s saved configuration")


def create_plan(ctx: StepContext) -> list[PlannedCommand]:
    new = str(ctx.parameters.get("new_machine") or "SAME-BASE-NEXT-INDEX")
    if S_SAVE_MACHINE in ctx.results:
        target = target_of(ctx)
        if target is not None and target.variant == VARIANT_A:
            new = ctx.result(S_SAVE_MACHINE, SavedMachine).new
    return only_in(ctx, VARIANT_A, [PlannedCommand("api", f"oc apply -f new-master-machine.yaml  # machine {new}")])


async def wait_machine(ctx: StepContext) -> StepResult:
    target = ctx.result(S_IDENTIFY, Target)
    if target.variant != VARIANT_A:
        return not_needed(target.variant)
    saved = ctx.result(S_SAVE_MACHINE, SavedMachine)
    limit = ctx.settings.replace_machine_timeout
    phases: list[str] = []
    note = on_change(ctx)

    async def running() -> tuple[str, str] | None:
        machine = await get_machine(ctx, saved.new)
        status = (machine or {}).get("status") or {}
        phase = str(status.get("phase") or "(no phase yet)")
        if not phases or phases[-1] != phase:
            phases.append(phase)
        if phase == "Failed":
            raise StepFailed(f"machine {saved.new} failed: {status.get('errorMessage') or status.get('errorReason')}",
                             next_action=f"`oc describe machine {saved.new} -n {MACHINE_NAMESPACE}`; delete it and "
                                         "create it again from the saved configuration (document 2.4).")
        await note(f"machine {saved.new}: {phase} (waiting at most {age(limit)})")
        node = ((status.get("nodeRef") or {}).get("name")) or ""
        return (phase, node) if phase == "Running" and node else None

    _phase, node = await wait_until(ctx, f"machine {saved.new} Running", limit, running, fail=lambda: StepFailed(
        f"machine {saved.new} is not Running after {age(limit)} (phases seen: {' -> '.join(phases) or 'none'})",
        next_action=f"Check `oc get machines -n {MACHINE_NAMESPACE} -o wide` and the machine controller; Resume "
                    "waits again."))
    return StepResult.of(f"machine {saved.new} is Running as node {node} ({' -> '.join(phases)})",
                         NewMachine(name=saved.new, node=node, phases=tuple(phases)))


def wait_plan(ctx: StepContext) -> list[PlannedCommand]:
    return only_in(ctx, VARIANT_A, [PlannedCommand(
        "api", f"oc get machines -n {MACHINE_NAMESPACE} -o wide  (until the new machine goes Provisioning -> "
               "Running, within ETCDBOT_REPLACE_MACHINE_TIMEOUT)")])

