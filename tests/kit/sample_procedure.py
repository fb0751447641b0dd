"""A test procedure, loaded into the real `etcdbot` with ETCDBOT_PROCEDURE_MODULES (never shipped):
`/etcd-kit-sample <answer> [cluster] [--dry-run]`. Two read steps that touch the lab's API, the
second reading the first's typed result; its admission refuses `no`, warns on `maybe` (override
"maybe", button "Go on anyway") and admits anything else."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.procedure import (
    Admission,
    Param,
    PlannedCommand,
    Procedure,
    Step,
    StepContext,
    StepId,
    StepKind,
    StepResult,
    register,
)

NAME = "kit-sample"
S_COUNT = StepId("kit.count-masters")
S_SAY = StepId("kit.say")


@dataclass(frozen=True)
class Counted:
    masters: tuple[str, ...]
    answer: str


async def count_masters(ctx: StepContext) -> StepResult:
    nodes = await ctx.need_kube().nodes_by_role("master")
    names = tuple(sorted(n["metadata"]["name"] for n in nodes))
    return StepResult.of(f"{len(names)} masters", Counted(masters=names, answer=str(ctx.parameters["answer"])))


async def say(ctx: StepContext) -> StepResult:
    counted = ctx.result(S_COUNT, Counted)
    return StepResult(summary=f"the answer was {counted.answer}, first master {counted.masters[0]}")


def _plan(_ctx: StepContext) -> list[PlannedCommand]:
    return [PlannedCommand("api", "oc get nodes -l node-role.kubernetes.io/master")]


async def admission(ctx: StepContext) -> Admission:
    answer = ctx.parameters.get("answer")
    if answer == "no":
        return Admission.refuse("The answer is no.", next_action="Ask again with `yes`.")
    if answer == "maybe":
        return Admission.warn("The answer is only maybe.", override="maybe", label="Go on anyway")
    return Admission.ok()


def build(parameters: Mapping[str, Any]) -> Procedure:
    steps = (
        Step(S_COUNT, "Count the masters", StepKind.READ, count_masters, _plan, timeout=30, safe_to_repeat=True),
        Step(S_SAY, "Say the answer", StepKind.READ, say, lambda _ctx: [], timeout=30, safe_to_repeat=True),
    )
    return Procedure(name=NAME, title="Kit sample", chapter="T", steps=steps, admission=admission)


register(NAME, build, title="Kit sample", command="/etcd-kit-sample",
         params=(Param("answer", re.compile(r"^[a-z]{1,10}$"), "yes"),), summary="a test procedure")
