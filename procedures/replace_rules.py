"""The decisions of chapter 2.4 ("Replacing an unhealthy etcd member") as pure functions.

Why a module of its own: the guard rails of the document are what make a member replacement safe
(a wrong member ID, or a second member removed, turns a degraded cluster into a restore), so each
one is a rule here that a unit test holds without a server:
- `choose()`: the 2.3 diagnosis again (procedures/diagnosis.py), then the refusals of 2.4: a
  healthy member, quorum loss (-> restore), a machine expected back, more than one unhealthy
  member, more than 3 members, a removal that would lose quorum, a node the cluster does not have;
  else the variant: A (machine not running / node not ready) or B (etcd pod crashlooping);
- `fresh_backup()`: the backup 2.1 asks for, recent enough and of the running version;
- `next_machine_name()` / `new_machine_manifest()`: the document's edit of the saved machine;
- `check_replaced()`: the verification (exactly 3 members, the old ID gone, every one healthy).

Not here: reading the cluster or acting on it (procedures/replace_member.py does both).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.cluster.etcdctl import EndpointHealth, Member, MemberList
from procedures.diagnosis import State, diagnose
from procedures.facts import ClusterFacts

VARIANT_A = "A"  # 2.4: the machine is not running, or the node is not ready
VARIANT_B = "B"  # 2.4: the etcd pod is crashlooping
VARIANT_TITLES = {
    VARIANT_A: "machine not running or node not ready",
    VARIANT_B: "etcd pod crashlooping",
}
EXPECTED_MEMBERS = 3  # the document's clusters: three masters, three members
SECRET_KINDS = ("etcd-peer", "etcd-serving", "etcd-serving-metrics")
MACHINE_NAME_RE = re.compile(r"^(?P<base>[a-z0-9]([-a-z0-9.]*[a-z0-9])?-)(?P<index>[0-9]{1,6})$")
# What the document strips from the saved machine before it is created again under its new name
# (plus what the server writes itself, which a create must not carry).
STRIPPED_METADATA = ("annotations", "generation", "resourceVersion", "uid", "creationTimestamp", "managedFields")


@dataclass(frozen=True)
class Refusal:
    """Why the replacement must not start, and the command to run instead."""

    message: str
    next_action: str
    state: str = ""  # the diagnosis State value behind it, when the diagnosis refused


@dataclass(frozen=True)
class Choice:
    """What the diagnosis decided: which member, which variant, from what evidence."""

    node: str
    variant: str
    state: str  # the diagnosis State value (machine-not-running, node-not-ready, pod-crashlooping)
    reason: str  # the diagnosis sentence
    member: Member
    machine: str  # the node's Machine (variant A needs it; "" when none was found)
    healthy_others: int
    members: int


def secret_names(node: str) -> tuple[str, ...]:
    """The three secrets of a member: `etcd-peer-<node>`, `etcd-serving-<node>`, `etcd-serving-metrics-<node>`."""
    return tuple(f"{kind}-{node}" for kind in SECRET_KINDS)


def masters_of(facts: ClusterFacts) -> set[str]:
    """Every name the cluster gives a master: nodes, machines' nodes, members, etcd pods."""
    names = {n.name for n in facts.nodes} | {m.node for m in facts.machines if m.node}
    names |= {m.name for m in facts.members if m.started} | {p.node for p in facts.pods if p.node}
    return names | {h.node for h in facts.hosts}


def quorum_after_removal(*, members: int, healthy_others: int) -> bool:
    """Would the members left after removing one still hold a majority of healthy members?"""
    left = members - 1
    return left > 0 and healthy_others >= left // 2 + 1


def choose(*, node: str, facts: ClusterFacts, members: MemberList | None, ssh_nodes: Iterable[str],
           cluster: str) -> Refusal | Choice:
    """Chapter 2.3 again for `node`, and every reason 2.4 gives not to go on."""
    status = f"`/etcd-status {cluster}`"
    known = masters_of(facts)
    if facts.api_available and node not in known:
        listed = ", ".join(sorted(known)) or "none found"
        return Refusal(f"`{node}` is not a master of `{cluster}` (masters: {listed}); nothing was changed.",
                       f"Check the node's name with {status}.")
    diagnosis = diagnose(facts)
    state = diagnosis.state
    if state is State.QUORUM_LOST:
        return Refusal(f"Not replacing `{node}`: {diagnosis.summary}",
                       "Restore instead (document 5.3): pick a backup with `/etcd-backups`, then run "
                       "`/etcd-restore <backup-id>`.")
    if state is State.UNKNOWN:
        return Refusal(f"Not replacing `{node}`: {diagnosis.summary}",
                       f"Check the cluster with {status}. If most masters are down (quorum loss), restore instead "
                       "(document 5.3): `/etcd-restore <backup-id>`.")
    if state is State.EXTRA_MEMBERS:
        return Refusal(f"Not replacing `{node}`: {diagnosis.summary}",
                       "Stop and ask a person: the document warns that removing a good member can lose quorum.")
    if state is State.SEVERAL_UNHEALTHY:
        return Refusal(
            f"Not replacing `{node}`: more than one member is unhealthy ({'; '.join(diagnosis.evidence)}). The "
            "document replaces a single unhealthy member; with two gone, one more failure loses quorum.",
            f"Check {status}; if quorum is lost, restore (5.3) with `/etcd-restore <backup-id>`. Otherwise ask a "
            "person to decide which member to replace first.")
    if state is State.EXPECTED_BACK:
        return Refusal(f"Not replacing `{node}`: {diagnosis.summary}", f"Wait for it, then check {status}.")
    if state is State.MEMBER_UNHEALTHY:
        return Refusal(f"Not replacing `{node}` yet: {diagnosis.summary}", f"Check again with {status}.",
                       state=state.value)
    if state not in (State.MACHINE_NOT_RUNNING, State.NODE_NOT_READY, State.POD_CRASHLOOPING):
        return Refusal(f"The etcd member `{node}` is healthy: nothing to replace. {diagnosis.summary}",
                       f"See {status}.")
    affected = diagnosis.nodes[0] if diagnosis.nodes else ""
    if affected != node:
        return Refusal(f"The etcd member `{node}` is healthy; the unhealthy one is `{affected}`: {diagnosis.summary}",
                       f"Run `/etcd-replace-member {affected}` (after `/etcd-status {cluster}` confirms it).")
    if members is None:
        return Refusal(f"Not replacing `{node}`: `etcdctl member list` did not answer from any etcd pod or master "
                       "other than it.", f"Check {status}, then try again.")
    listed = members.members
    if len(listed) > EXPECTED_MEMBERS:
        names = ", ".join(f"{m.name or '(not started)'} {m.id}" for m in listed)
        return Refusal(f"Not replacing `{node}`: `member list` shows {len(listed)} members ({names}), more than "
                       f"{EXPECTED_MEMBERS}. The document says to stop: removing a good member can lose quorum.",
                       "Ask a person to review `etcdctl member list -w table` and remove the unwanted member by hand.")
    member = next((m for m in listed if m.name == node), None)
    if member is None:
        return Refusal(f"No etcd member is named `{node}` in `member list` ({len(listed)} members): it may have been "
                       "removed already.", f"Check {status}; if the member is gone, finish the document's 2.4 from "
                       "\"Remove the old secrets\" by hand.")
    healthy_others = sum(1 for m in facts.members if m.healthy is True and m.name != node and m.id != member.id)
    if not quorum_after_removal(members=len(listed), healthy_others=healthy_others):
        return Refusal(f"Not replacing `{node}`: removing its member would leave {len(listed) - 1} members of which "
                       f"{healthy_others} are known to be healthy, which is no quorum.",
                       f"Check {status}: every other member must answer `endpoint health`.")
    variant = VARIANT_B if state is State.POD_CRASHLOOPING else VARIANT_A
    machine = next((m.name for m in facts.machines if m.node == node), "")
    if variant == VARIANT_A and not machine:
        return Refusal(f"`{node}` has no Machine in `openshift-machine-api`: the bot replaces masters through the "
                       "Machine API only.", "Create the new master the way the old one was created (document 2.4), "
                       "after removing the member and its secrets by hand.")
    if variant == VARIANT_B and node not in set(ssh_nodes):
        return Refusal(f"`{node}` has no SSH address in the bot's settings: variant B moves files on the node.",
                       f"Add `{node}` to the cluster's `ssh.hosts` in ETCDBOT_CLUSTERS, or follow 2.4 by hand.")
    return Choice(node=node, variant=variant, state=state.value, reason=diagnosis.summary, member=member,
                  machine=machine, healthy_others=healthy_others, members=len(listed))


# ---- the backup taken first (2.1) -------------------------------------------------------------


# The same rule as every procedure's "backup taken first": procedures.guards.fresh_backup (usable =
# verified and drilled, of the running version, young enough, files still in the store).


# ---- the machine (2.4 A) ----------------------------------------------------------------------


def next_machine_name(old: str, existing: Iterable[str]) -> str:
    """Same base name, next index after the highest in use with that base: `...-master-0` among
    0, 1, 2 -> `...-master-3` (an index never used twice, so an old machine's name never returns)."""
    match = MACHINE_NAME_RE.fullmatch(old)
    if match is None:
        raise ValueError(f"machine name {old!r} does not end in -<index>; name the new machine by hand")
    base = match["base"]
    indexes = [int(m["index"]) for name in existing if (m := MACHINE_NAME_RE.fullmatch(name)) and m["base"] == base]
    return f"{base}{max([int(match['index']), *indexes]) + 1}"


def new_machine_manifest(old: Mapping[str, Any], *, new_name: str) -> dict[str, Any]:
    """The saved machine, edited as the document says: new `metadata.name`, `metadata.selfLink`
    fixed, `status`, `spec.providerID`, `metadata.annotations`, `generation`, `resourceVersion`
    and `uid` removed."""
    manifest = copy.deepcopy(dict(old))
    manifest.pop("status", None)
    metadata = dict(manifest.get("metadata") or {})
    old_name = str(metadata.get("name", ""))
    for key in STRIPPED_METADATA:
        metadata.pop(key, None)
    metadata["name"] = new_name
    if metadata.get("selfLink"):
        link = str(metadata["selfLink"])
        metadata["selfLink"] = link[: -len(old_name)] + new_name if old_name and link.endswith("/" + old_name) else link
    manifest["metadata"] = metadata
    spec = dict(manifest.get("spec") or {})
    spec.pop("providerID", None)
    manifest["spec"] = spec
    return manifest


def machine_of(machines: Sequence[Mapping[str, Any]], *, node: str) -> Mapping[str, Any] | None:
    return next((m for m in machines if ((m.get("status") or {}).get("nodeRef") or {}).get("name") == node), None)


# ---- redeployment and verification ------------------------------------------------------------


def redeploy_reason(prefix: str, *, run_id: str, now: datetime | None = None) -> str:
    """The document's unique `forceRedeploymentReason`: `<prefix>-<date --rfc-3339=ns>`, with the
    run's id, so a resumed run sees that it already asked for this redeployment."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    stamp = moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond * 1000:09d}+00:00"
    return f"{prefix}-{stamp} run {run_id}"


def asked_by(reason: str, *, run_id: str) -> bool:
    return reason.endswith(f" run {run_id}")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    problems: tuple[str, ...]
    member: Member | None  # the member now serving the replaced node (B: the same name; A: the new node)


def check_replaced(*, members: MemberList, health: Sequence[EndpointHealth], old_id: str,
                   expect_name: str | None) -> Verdict:
    """2.4's verification: `member list` shows exactly 3 started members, the removed ID is not
    among them, the replacement member is there, and `endpoint health` says every one is healthy."""
    problems = []
    listed = members.members
    if any(m.id == old_id for m in listed):
        problems.append(f"the removed member {old_id} is in `member list` again")
    if len(listed) > EXPECTED_MEMBERS:
        problems.append(f"`member list` shows {len(listed)} members, more than {EXPECTED_MEMBERS}: stop and ask a person "
                        "(removing a good member can lose quorum)")
    unstarted = [m.id for m in listed if not m.started]
    if unstarted:
        problems.append(f"member(s) {', '.join(unstarted)} not started yet")
    if len(listed) < EXPECTED_MEMBERS:
        problems.append(f"`member list` shows {len(listed)} members, not {EXPECTED_MEMBERS}")
    member = next((m for m in listed if m.name == expect_name), None) if expect_name else None
    if expect_name and member is None:
        problems.append(f"no member is named {expect_name} yet")
    sick = [h.endpoint for h in health if not h.healthy]
    if sick:
        problems.append(f"unhealthy: {', '.join(sick)}")
    if len(health) < len([m for m in listed if m.started]):
        problems.append("not every member answered `endpoint health`")
    return Verdict(ok=not problems, problems=tuple(problems), member=member)
