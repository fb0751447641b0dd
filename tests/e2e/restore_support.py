"""What the `/etcd-restore` end-to-end modules share: the run's message and its approval request
as people see them in the lab's workspace, pressing Approve/Reject/Resume, the audit stream, and
a snapshot of what the masters hold (manifests, data directories, containers) to say "nothing
changed". Waiting is on conditions with deadlines."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import redis

from tests.e2e.backup_support import blocks_text, buttons, command, seen, wait_run, workspace
from tests.labfixture import Lab, wait_for

RUN_TEXT = re.compile(r"^Restoring to a previous cluster state on (?P<cluster>[a-z0-9-]+): (?P<state>[a-z ]+) "
                      r"\(run (?P<run>[0-9a-f]+)\)$")
OPERATORS = ("etcd", "kubeapiserver", "kubecontrollermanager", "kubescheduler")


def restore_message(lab: Lab, *, since: int, run_id: str | None = None) -> dict[str, Any] | None:
    for message in seen(lab, since=since):
        match = RUN_TEXT.match(message.get("text", ""))
        if match and not (message.get("thread_ts") and message["thread_ts"] != message["ts"]) \
                and (run_id is None or match["run"] == run_id):
            return {**message, "run_id": match["run"], "state": match["state"]}
    return None


def wait_restore(lab: Lab, *, since: int, states: tuple[str, ...], run_id: str | None = None,
                 timeout: float = 180) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        message = restore_message(lab, since=since, run_id=run_id)
        return message if message and message["state"] in states else None

    return wait_for(check, timeout=timeout, what=f"the restore run in {states}", interval=0.2)


def approval_request(lab: Lab, *, run: dict[str, Any], since: int, open_only: bool = True,
                     timeout: float = 120) -> dict[str, Any]:
    """The newest approval request in the run's thread (with its buttons, unless `open_only` is off)."""

    def check() -> dict[str, Any] | None:
        found = [m for m in seen(lab, since=since, user="bob")
                 if m.get("thread_ts") == run["ts"] and "Approval needed" in blocks_text(m)]
        found = [m for m in found if not open_only or "Approve" in buttons(m)]
        return found[-1] if found else None

    return wait_for(check, timeout=timeout, what="an approval request in the run's thread", interval=0.2)


def press(lab: Lab, *, user: str, action_id: str, message: dict[str, Any]) -> int:
    """Presses a button of `message` as `user`; returns the workspace cursor from before."""
    return int(workspace(lab).press(user=user, action_id=action_id, message_ts=message["ts"])["cursor"])


def ephemeral_after(lab: Lab, *, user: str, since: int, contains: str, timeout: float = 30) -> str:
    return wait_for(lambda: next((m["text"] for m in seen(lab, since=since, user=user)
                                  if m.get("ephemeral") and contains in m["text"]), None),
                    timeout=timeout, what=f"{user}'s private answer containing {contains!r}")


def refusal(lab: Lab, *, text: str, user: str = "alice", contains: str = ":no_entry:") -> str:
    """Types a command and returns the private refusal it gets (checking no run message appeared)."""
    since = command(lab, text, user=user)
    answer = ephemeral_after(lab, user=user, since=since, contains=contains, timeout=60)
    assert restore_message(lab, since=since) is None, "a run started"
    return answer


def backup(lab: Lab) -> str:
    """alice's `/etcd-backup`; the id of the backup it stored."""
    since = command(lab, "/etcd-backup")
    done = wait_run(lab, since=since, states=("succeeded", "failed"), timeout=180)
    assert done["state"] == "succeeded", blocks_text(done)
    found = re.search(r"backup `([0-9]{8}-[0-9]{6}-[0-9a-z-]+)`", blocks_text(done))
    assert found, blocks_text(done)
    return found.group(1)


# ---- what the masters hold ------------------------------------------------------------------------

HOST_STATE = ("sudo ls /etc/kubernetes/manifests; echo ---; sudo ls -d /var/lib/etcd /var/lib/etcd/member 2>&1; "
              "echo ---; sudo ls -d /tmp/etcdbot-restore-* 2>/dev/null; echo ---; "
              "sudo crictl ps -a | awk 'NR>1 {print $(NF-2)}' | sort -u")


def host_state(lab: Lab) -> dict[str, str]:
    """Per master: its static pod manifests, whether its data dir is there, the restore's aside
    directories, and the names of its running containers (not ids or ages: those move)."""
    return {node: lab.ssh(node, HOST_STATE).stdout for node in lab.masters}


def wait_host_state(lab: Lab, expected: dict[str, str], *, timeout: float = 30) -> None:
    """The masters as they were (containers settle within seconds of a heal)."""
    wait_for(lambda: host_state(lab) == expected, timeout=timeout, what="the masters unchanged")


# ---- the audit stream ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    target: str
    command: str
    rc: str


def audit(lab: Lab, *, cluster: str = "lab") -> list[dict[str, str]]:
    client = redis.Redis.from_url(lab.env["ETCDBOT_REDIS_URL"], decode_responses=True, socket_timeout=10)
    try:
        return [{"id": i, **fields} for i, fields in client.xrange(f"etcdbot:audit:{cluster}")]
    finally:
        client.close()


def commands_of(lab: Lab, run_id: str) -> list[Command]:
    return [Command(target=e.get("target", ""), command=e.get("command", ""), rc=e.get("rc", ""))
            for e in audit(lab) if e.get("event") == "command" and e.get("run") == run_id]


def wait_command(lab: Lab, *, run_id: str, target: str, contains: str, timeout: float = 120) -> Command:
    """The audit stream records `contains` sent to `target` by the run: the hook for a fault mid-step."""
    return wait_for(lambda: next((c for c in commands_of(lab, run_id) if c.target == target and contains in c.command), None),
                    timeout=timeout, what=f"{contains!r} sent to {target}", interval=0.02)


# ---- the cluster after a restore ----------------------------------------------------------------------


def operators_at_latest(lab: Lab) -> dict[str, str]:
    found = {}
    for resource in OPERATORS:
        out = lab.kubectl("get", resource, "cluster", "-o", "json").stdout
        obj = json.loads(out)
        latest = obj["status"]["latestAvailableRevision"]
        condition = next(c for c in obj["status"]["conditions"] if c["type"] == "NodeInstallerProgressing")
        currents = {s["nodeName"]: s["currentRevision"] for s in obj["status"]["nodeStatuses"]}
        assert set(currents.values()) == {latest}, (resource, currents, latest)
        found[resource] = f"{condition['reason']}: {condition['message']}"
    return found


def configmaps(lab: Lab, namespace: str = "demo") -> list[str]:
    out = lab.kubectl("get", "configmaps", "-n", namespace, "-o", "name").stdout
    return sorted(line.split("/", 1)[1] for line in out.split())
