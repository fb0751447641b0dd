"""An approval is bound to what will happen, read from a real cluster: the test procedure's
destructive step plans `etcdctl member remove <ID>` from the lab's live `etcdctl member list`
(through the etcd pod's etcdctl container, as the bot's kube client does). Between the gate and
the step the member is removed and added again by hand (document 2.4's commands): its ID changes,
so the approval no longer fits; a new one is asked, and the step runs only with the new ID."""

from __future__ import annotations

import asyncio
import json

from tests.labfixture import Lab
from tests.runner.conftest import until
from tests.safety.conftest import Harness, Slack
from tests.safety.test_processes import approve, lines, open_request, run_id, start_run

LAB_ARGS = ("--clock-speed", "30")


async def etcdctl(lab: Lab, node: str, *args: str, check: bool = True) -> str:
    result = await asyncio.to_thread(
        lab.kubectl, "exec", "-n", "openshift-etcd", f"etcd-{node}", "-c", "etcdctl", "--", "etcdctl", *args,
        check=check, timeout=60)
    return result.stdout


async def test_the_member_id_changes_between_gate_and_start(lab: Lab, harness: Harness, slack: Slack) -> None:
    masters = sorted(lab.masters)
    reader, target = masters[0], masters[-1]  # the harness reads through the first master's pod
    members = json.loads(await etcdctl(lab, reader, "member", "list", "-w", "json"))["members"]
    member = next(m for m in members if m["name"] == target)
    old_id, peer = f"{member['ID']:x}", member["peerURLs"][0]

    await harness.bot("one", lab_env=str(lab.dir / "env")).ready()
    run = run_id(await start_run(slack, f"/etcd-test-destroy {peer}"))
    first = await open_request(slack, run, count=1)
    assert f"etcdctl member remove {old_id}" in str(first.blocks)

    async def removed() -> bool:  # etcd refuses while it does not see every member as active yet
        return "removed from cluster" in await etcdctl(lab, reader, "member", "remove", old_id, check=False)

    await until(removed, timeout=60, what=f"member {old_id} removed")

    async def added() -> str | None:
        # On a loaded machine the API may time out an exec that etcd still carries out: then the
        # member list says whether the member was added.
        out = await etcdctl(lab, reader, "member", "add", target, f"--peer-urls={peer}", check=False)
        if "Member " in out:
            return out.split("Member ", 1)[1].split()[0]
        listed = await etcdctl(lab, reader, "member", "list", "-w", "json", check=False)
        found = [m for m in (json.loads(listed or "{}").get("members") or []) if peer in m.get("peerURLs", [])]
        return f"{found[0]['ID']:x}" if found else None

    new_id = await until(added, timeout=120, what=f"{target} added back as a member")
    assert new_id != old_id

    harness.go()
    await approve(slack, first, "bob")  # bob approved the old plan: it no longer fits
    second = await open_request(slack, run, count=2)
    text = str(second.blocks)
    assert "plan changed" in text and old_id in text and f"etcdctl member remove {new_id}" in text
    assert lines(harness, "begin", run) == [] and lines(harness, "harm", run) == []
    await approve(slack, second, "carol")
    harm = await _until_harm(harness, run)
    assert harm == [["harm", "one", run, "etcdctl", "member", "remove", new_id]]


async def _until_harm(harness: Harness, run: str) -> list[list[str]]:
    return await until(lambda: lines(harness, "harm", run), timeout=60, what="the step to act")
