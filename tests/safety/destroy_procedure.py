"""A test procedure with a destructive step, loaded into the real `etcdbot` with
ETCDBOT_PROCEDURE_MODULES=tests.safety.destroy_procedure (never shipped): `/etcd-test-destroy`.

1. check (read); 2. destroy (destructive): plans `etcdctl member remove <id>` with the member ID
read from $TEST_DESTROY_DIR/member; its run() appends "begin <pid> <run>" to
$TEST_DESTROY_DIR/actions, waits for $TEST_DESTROY_DIR/go, calls `ctx.fence()` and appends
"harm <pid> <run> <command>". It never touches a cluster: the actions file is what tests count.
3. verify (read)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bot.procedure import PlannedCommand, Procedure, Step, StepContext, StepId, StepKind, StepResult, register

NAME = "test-destroy"


def _dir() -> Path:
    return Path(os.environ["TEST_DESTROY_DIR"])


def _record(line: str) -> None:
    with (_dir() / "actions").open("a") as out:
        out.write(line + "\n")


async def _check(_ctx: StepContext) -> StepResult:
    return StepResult(summary="checked")


def _plan(_ctx: StepContext) -> list[PlannedCommand]:
    member = (_dir() / "member").read_text().strip()
    return [PlannedCommand(target="exec etcd-master-0", command=f"etcdctl member remove {member}")]


async def _destroy(ctx: StepContext) -> StepResult:
    [command] = _plan(ctx)
    _record(f"begin {os.getpid()} {ctx.run_id}")
    await ctx.heartbeat("about to remove the member")
    while not (_dir() / "go").exists():
        await asyncio.sleep(0.05)  # the test's signal; the runner may cancel us meanwhile
    await ctx.fence()
    _record(f"harm {os.getpid()} {ctx.run_id} {command.command}")
    return StepResult(summary=f"ran {command.command}")


def build(_parameters: Mapping[str, Any]) -> Procedure:
    return Procedure(
        name=NAME, title="Remove an etcd member (test)", chapter="T",
        steps=(
            Step(StepId("check"), "Check the members", StepKind.READ, _check, lambda _c: [], safe_to_repeat=True),
            Step(StepId("destroy"), "Remove the member", StepKind.DESTRUCTIVE, _destroy, _plan, timeout=600),
            Step(StepId("verify"), "Verify the members", StepKind.READ, _check, lambda _c: [], safe_to_repeat=True),
        ),
    )


register(NAME, build, title="Remove an etcd member (test)", command="/etcd-test-destroy",
         summary="a destructive test procedure")
