"""What the `/etcd-replace-member` end-to-end modules share: the run's message, its approval
requests (pressed as a person presses them), and the cluster read the way a person checks it after
chapter 2.4 (`etcdctl member list` in an etcd pod, `oc get machines`, `oc get secrets`). Waiting is
on conditions with deadlines."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.e2e.backup_support import blocks_text, buttons, seen, workspace
from tests.labfixture import Lab, wait_for

TITLE = "Replacing an unhealthy etcd member"
RUN_TEXT = re.compile(rf"^{TITLE} on (?P<cluster>[a-z0-9-]+): (?P<state>[a-z ]+) \(run (?P<run>[0-9a-f]+)\)$")
FINISHED = ("succeeded", "failed", "aborted")


def run_message(lab: Lab, *, since: int, run_id: str | None = None) -> dict[str, Any] | None:
    for message in seen(lab, since=since):
        match = RUN_TEXT.match(message.get("text", ""))
        if match and not message.get("thread_ts") and (run_id is None or match["run"] == run_id):
            return {**message, "run_id": match["run"], "state": match["state"]}
    return None


def wait_run(lab: Lab, *, since: int, states: tuple[str, ...] = FINISHED, run_id: str | None = None,
             timeout: float = 240) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        message = run_message(lab, since=since, run_id=run_id)
        return message if message and message["state"] in states else None

    return wait_for(check, timeout=timeout, what=f"a replacement run in {states}", interval=0.3)


def answer(lab: Lab, *, since: int, contains: str, user: str = "alice", timeout: float = 60) -> dict[str, Any]:
    """The first message `user` sees after `since` whose text holds `contains` (an ephemeral reply)."""
    return wait_for(lambda: next((m for m in seen(lab, since=since, user=user) if contains in m.get("text", "")), None),
                    timeout=timeout, what=f"an answer with {contains!r}")


def open_requests(lab: Lab, *, run_id: str, since: int = 0, user: str = "bob") -> list[dict[str, Any]]:
    """The run's approval requests that still offer Approve, oldest first."""
    return [m for m in seen(lab, since=since, user=user)
            if m.get("text", "").startswith("Approval needed") and f"(run {run_id})" in m.get("text", "")
            and "Approve" in buttons(m)]


def press_approve(lab: Lab, message: dict[str, Any], *, user: str) -> str:
    """Presses Approve on one request as `user`; returns the ephemeral answer's text."""
    pressed = workspace(lab).press(user=user, action_id="approval_approve", message_ts=message["ts"],
                                   channel="incident")
    return _ephemeral_after(lab, cursor=int(pressed["cursor"]), user=user)


def _ephemeral_after(lab: Lab, *, cursor: int, user: str) -> str:
    def check() -> str | None:
        found = [m for m in seen(lab, since=cursor, user=user) if m.get("ephemeral")]
        return found[0]["text"] if found else None

    return wait_for(check, timeout=30, what=f"{user}'s answer to the press")


def step_running(message: dict[str, Any], step_title: str) -> bool:
    """The progress message shows `step_title` running."""
    return any(step_title in line and "· running" in line for line in blocks_text(message).splitlines())


def approve_until(lab: Lab, *, since: int, run_id: str, done: Callable[[dict[str, Any]], bool], user: str = "bob",
                  timeout: float = 300, interval: float = 0.5) -> tuple[dict[str, Any], list[str]]:
    """Approves every request of the run as `user` as it appears, until `done(run message)`.
    Returns that message and the texts of the requests approved."""
    approved: list[str] = []
    pressed: set[str] = set()

    def step() -> dict[str, Any] | None:
        for request in open_requests(lab, run_id=run_id, user=user):
            if request["ts"] not in pressed:
                pressed.add(request["ts"])
                approved.append(blocks_text(request))
                press_approve(lab, request, user=user)
        message = run_message(lab, since=since, run_id=run_id)
        if message is not None and done(message):
            return message
        if message is not None and message["state"] in FINISHED:
            raise AssertionError(f"run {run_id} ended first: {blocks_text(message)}")
        return None

    return wait_for(step, timeout=timeout, what=f"run {run_id} approved and then the expected state",
                    interval=interval), approved


def approve_until_done(lab: Lab, *, since: int, run_id: str, user: str = "bob", timeout: float = 300,
                       interval: float = 0.5) -> tuple[dict[str, Any], list[str]]:
    """Approves every request of the run as `user` until the run ends (one request with the
    engine's approval groups, one per destructive step without)."""
    approved: list[str] = []
    pressed: set[str] = set()

    def step() -> dict[str, Any] | None:
        for request in open_requests(lab, run_id=run_id, user=user):
            if request["ts"] not in pressed:
                pressed.add(request["ts"])
                approved.append(blocks_text(request))
                press_approve(lab, request, user=user)
        message = run_message(lab, since=since, run_id=run_id)
        return message if message and message["state"] in FINISHED else None

    return wait_for(step, timeout=timeout, what=f"run {run_id} approved and finished", interval=interval), approved


# ---- the cluster, as a person reads it ----------------------------------------------------------


def masters(lab: Lab) -> list[str]:
    out = lab.kubectl("get", "nodes", "-l", "node-role.kubernetes.io/master", "-o",
                      "jsonpath={.items[*].metadata.name}").stdout
    return sorted(out.split())


def members(lab: Lab, via: str) -> list[dict[str, Any]]:
    """`etcdctl member list -w json` in the etcdctl container of `via`'s etcd pod."""
    out = lab.kubectl("exec", "-n", "openshift-etcd", f"etcd-{via}", "-c", "etcdctl", "--", "etcdctl", "member",
                      "list", "-w", "json").stdout
    return [{"id": f"{m['ID']:x}", "name": m.get("name", ""), "peer": m.get("peerURLs", [])}
            for m in json.loads(out)["members"]]


def healthy_cluster(lab: Lab, via: str) -> bool:
    out = lab.kubectl("exec", "-n", "openshift-etcd", f"etcd-{via}", "-c", "etcdctl", "--", "etcdctl", "endpoint",
                      "health", "--cluster", "-w", "json", check=False)
    if out.returncode != 0:
        return False
    return all(h.get("health") for h in json.loads(out.stdout))


def machines(lab: Lab) -> dict[str, dict[str, Any]]:
    raw = json.loads(lab.kubectl("get", "machines", "-n", "openshift-machine-api", "-o", "json").stdout)
    return {m["metadata"]["name"]: m for m in raw["items"]}


def machine_of(lab: Lab, node: str) -> str:
    return next(name for name, m in machines(lab).items() if (m.get("status", {}).get("nodeRef") or {}).get("name") == node)


def secrets(lab: Lab) -> set[str]:
    out = lab.kubectl("get", "secrets", "-n", "openshift-etcd", "-o", "jsonpath={.items[*].metadata.name}").stdout
    return set(out.split())


@dataclass(frozen=True)
class Snapshot:
    """What a refusal must leave as it was."""

    members: tuple[tuple[str, str], ...]
    machines: tuple[str, ...]
    secrets: tuple[str, ...]
    reason: str


def snapshot(lab: Lab, via: str) -> Snapshot:
    reason = lab.kubectl("get", "etcd", "cluster", "-o", "jsonpath={.spec.forceRedeploymentReason}").stdout
    return Snapshot(members=tuple(sorted((m["id"], m["name"]) for m in members(lab, via))),
                    machines=tuple(sorted(machines(lab))), secrets=tuple(sorted(secrets(lab))), reason=reason)


def unhealthy(lab: Lab, node: str, *, timeout: float = 60) -> None:
    wait_for(lambda: lab.members_message() == f"2 of 3 members are available, {node} is unhealthy", timeout=timeout,
             what=f"{node} reported unhealthy")


def all_healthy(lab: Lab, *, total: int = 3, timeout: float = 120) -> None:
    wait_for(lambda: lab.members_message() == f"{total} of {total} members are available", timeout=timeout,
             what=f"{total} of {total} members available")
