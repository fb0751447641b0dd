"""Chapter 2.4's steps one at a time against a lab with the one-step harness (bot/harness.py): each
destructive step run a second time, as Resume after a crash would run it, does only what is left
(nothing); a step whose run lost its lock removes nothing; the plans the approval shows name the
member ID, name and peer URL, the secrets, the old and the new machine."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.harness import StepEnvironment
from bot.procedure import StepFailed, no_fence
from procedures import replace_member as rm
from procedures.replace_common import SavedMachine, Target
from tests.e2e.replace_support import machine_of, machines, masters, members, secrets, unhealthy
from tests.labfixture import Lab

LAB_ARGS = ("--clock-speed", "30")
STEPS = {step.id: step for step in rm.STEPS}


@pytest.fixture
async def env(lab: Lab, tmp_path) -> AsyncIterator[StepEnvironment]:  # type: ignore[no-untyped-def]
    environ = {"ETCDBOT_BACKUP_DIR": str(tmp_path / "store"), "ETCDBOT_ALLOWED_USERS": '["U0ALICE01"]'}
    async with StepEnvironment.from_env_file(lab.dir / "env", environ=environ) as environment:
        yield environment


async def test_each_destructive_step_twice_and_a_lost_lock(lab: Lab, env: StepEnvironment) -> None:
    bad, via, _ = masters(lab)
    lab.cli("fault", "stop-machine", bad)
    unhealthy(lab, bad)
    old = next(m for m in members(lab, via) if m["name"] == bad)
    old_machine = machine_of(lab, bad)
    new_machine = old_machine.rsplit("-", 1)[0] + "-3"
    env.parameters = {"node": bad}

    await env.run(STEPS[rm.S_IDENTIFY])
    target = env.result(rm.S_IDENTIFY, Target)
    assert (target.variant, target.member_id, target.member_name, target.machine) == ("A", old["id"], bad, old_machine)
    await env.run(STEPS[rm.S_SAVE_MACHINE])
    assert env.result(rm.S_SAVE_MACHINE, SavedMachine).new == new_machine

    # The approval's plan: every value a person must check before approving.
    planned = ""
    for step in (rm.S_STOP_POD, rm.S_REMOVE, rm.S_SECRETS, rm.S_DELETE_MACHINE):
        planned += " ".join(c.command for c in await env.plan(STEPS[step]))
    for expected in (f"etcdctl member remove {old['id']}", bad, old["peer"][0], f"etcd-peer-{bad}",
                     f"etcd-serving-metrics-{bad}", old_machine, new_machine):
        assert expected in planned, (expected, planned)
    assert await env.plan(STEPS[rm.S_STOP_POD]) == []  # variant B's step: nothing in variant A

    async def lost() -> None:
        raise StepFailed("the lock of `lab` is held by another run now", next_action="Nothing was done.")

    env.fence = lost
    with pytest.raises(StepFailed, match="held by another run"):
        await env.run(STEPS[rm.S_REMOVE])
    assert old["id"] in {m["id"] for m in members(lab, via)}  # nothing removed without the lock

    env.fence = no_fence  # the lock held again
    first = await env.run(STEPS[rm.S_REMOVE])
    assert f"removed member {old['id']}" in first.summary and old["id"] not in {m["id"] for m in members(lab, via)}
    again = await env.run(STEPS[rm.S_REMOVE])
    assert "already removed" in again.summary and len(members(lab, via)) == 2

    assert "deleted etcd-peer-" in (await env.run(STEPS[rm.S_SECRETS])).summary
    assert not {f"etcd-peer-{bad}", f"etcd-serving-{bad}", f"etcd-serving-metrics-{bad}"} & secrets(lab)
    assert (await env.run(STEPS[rm.S_SECRETS])).summary.startswith("nothing to delete (already gone")

    assert "deleted machine" in (await env.run(STEPS[rm.S_DELETE_MACHINE])).summary
    assert old_machine not in machines(lab)
    assert "already deleted" in (await env.run(STEPS[rm.S_DELETE_MACHINE])).summary
    assert "created machine" in (await env.run(STEPS[rm.S_CREATE_MACHINE])).summary
    assert "exists already" in (await env.run(STEPS[rm.S_CREATE_MACHINE])).summary
    assert [n for n in machines(lab) if n.endswith("-3") or n.endswith("-4")] == [new_machine]

    # A wait past its deadline says what it saw, each master's state and what to check.
    environ = {"ETCDBOT_REPLACE_MACHINE_TIMEOUT": "0.1", "ETCDBOT_ALLOWED_USERS": '["U0ALICE01"]'}
    async with StepEnvironment.from_env_file(lab.dir / "env", environ=environ, parameters=env.parameters,
                                             results=env.results) as hurried:
        with pytest.raises(StepFailed) as failed:
            await hurried.run(STEPS[rm.S_WAIT_MACHINE])
    text = failed.value.message
    assert f"machine {new_machine} is not Running after" in text and "Masters now: " in text, text
    assert f"{via}: node Ready, etcd pod Running, member " in text and "oc get machines" in failed.value.next_action
