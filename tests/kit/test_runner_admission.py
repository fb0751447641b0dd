"""The runner asks a procedure's admission for every kind of start, with a real Redis and the
lab's Slack: a refusal or an un-overridden warning starts nothing (no lock, no run, no message),
an override starts it, a dry run carries the admission and the preview's parameters."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from bot.locks import lock_holder
from bot.procedure import Admission, StepContext, Verdict
from bot.run_types import Plan
from bot.store import Run, RunState
from tests.runner.conftest import (  # noqa: F401 (fixtures)
    ALICE,
    CHANNEL,
    Calls,
    make_bot,
    procedure,
    rds,
    redis_url,
    step,
    workspace,
)


async def ruled(ctx: StepContext) -> Admission:
    mood = ctx.parameters.get("mood")
    if mood == "no":
        return Admission.refuse("not today", next_action="Try tomorrow.", until=1_900_000_000.0)
    if mood == "maybe":
        return Admission.warn("peak time", override="peak-hours", label="Go anyway")
    return Admission.ok()


async def preview(_ctx: StepContext) -> dict[str, str]:
    return {"master": "m-b"}


async def test_admission_gates_every_start(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    calls = Calls()
    proc = make_bot.add(replace(procedure("gated", step("s1", calls=calls)), admission=ruled, preview=preview))
    bot = await make_bot(instance_id="one")
    posted_before = len(workspace.recorder.messages)

    refused = await bot.runner.start(proc, cluster="prod", parameters={"mood": "no"}, requester=ALICE, channel=CHANNEL)
    assert isinstance(refused, Admission) and refused.verdict is Verdict.REFUSE and refused.until == 1_900_000_000.0
    warned = await bot.runner.start(proc, cluster="prod", parameters={"mood": "maybe"}, requester=ALICE, channel=CHANNEL)
    assert isinstance(warned, Admission) and warned.override == "peak-hours"
    assert calls["s1"] == 0 and await lock_holder(rds, cluster="prod") is None
    assert len(workspace.recorder.messages) == posted_before and await bot.runner.store.live_run_ids() == []

    run = await bot.runner.start(proc, cluster="prod", parameters={"mood": "maybe"}, requester=ALICE, channel=CHANNEL,
                                 overrides=frozenset({"peak-hours"}))
    assert isinstance(run, Run)
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED and calls["s1"] == 1

    plan = await bot.runner.dry_run(proc, cluster="prod", parameters={"mood": "no"}, requester=ALICE, channel=CHANNEL)
    assert isinstance(plan, Plan) and plan.admission.verdict is Verdict.REFUSE
    assert plan.parameters == {"mood": "no", "master": "m-b"} and calls["s1"] == 1


async def test_a_scheduled_start_overrides_a_warning_never_a_refusal(rds, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from bot.procedure import RunId
    from bot.run_types import Busy
    from bot.scheduler import BackupScheduler
    from tests.runner.test_scheduler import settings

    starts: list[frozenset[str]] = []
    posts: list[str] = []

    class Stand:
        refuse = False

        async def start(self, _procedure: object, *, overrides: frozenset[str] = frozenset(), **kwargs: object):
            starts.append(overrides)
            if self.refuse:
                return Admission.refuse("too young", until=None)
            if "peak-hours" not in overrides:
                return Admission.warn("peak time", override="peak-hours", label="Back up anyway")
            return Busy(cluster="lab", run_id=RunId("feedbeef"))

        async def post(self, *, channel: str, text: str) -> str:
            posts.append(text)
            return "1.0"

    stand = Stand()
    scheduler = BackupScheduler(settings=settings(tmp_path), clusters=None, runner=stand, sender=stand,  # type: ignore[arg-type]
                                redis=rds, procedure=lambda: None)  # type: ignore[arg-type, return-value]
    cluster = scheduler.settings.cluster("lab")
    assert cluster is not None
    await scheduler._backup(cluster, now=datetime.now(UTC))
    assert starts == [frozenset(), frozenset({"peak-hours"})]
    assert "Scheduled backup skipped" in posts[-1]

    stand.refuse, starts[:] = True, []
    await scheduler._backup(cluster, now=datetime.now(UTC))
    await scheduler._backup(cluster, now=datetime.now(UTC))
    assert starts == [frozenset(), frozenset()]
    assert sum("was refused: too young" in p for p in posts) == 1  # said once, not at every fire
