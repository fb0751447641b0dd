"""Fixtures for the runner's tests: a REAL redis-server on a free port (one per test module,
flushed per test) and the lab's Slack workspace, with the production Runner wired to both.

Steps are plain async functions; no cluster is involved. Waiting is on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from slack_sdk.web.async_client import AsyncWebClient

from bot.approvals import ApprovalPolicy, Approvals, ApproverSpec, RedisApprovals, SlackApprovers
from bot.audit import Audit
from bot.procedure import Fence, PlanFn, PlannedCommand, Procedure, StepContext, StepId, StepKind, StepResult
from bot.procedure import Step as ProcedureStep
from bot.progress import ThrottledSender
from bot.run_types import Heartbeat, RunnerPolicy
from bot.runner import Runner
from bot.store import Run, RunState, connect_redis
from bot.tasks import cancel_and_wait
from lab.slack import SlackWorkspace
from tests.redis_server import RedisServer, free_port  # noqa: F401 (free_port: imported from here by others)

BOT_TOKEN = "xoxb-runner-test-bot-token"
APP_TOKEN = "xapp-runner-test-app-token"
SIGNING_SECRET = "runner-test-signing-secret-0123456789"
CHANNEL = "C0INCIDENT"
ALICE, BOB, CAROL, DAVE = "U0ALICE01", "U0BOB0001", "U0CAROL01", "U0DAVE001"  # bob, carol approve
APPROVAL_KEY = b"runner-test-approval-key-0123456789abcdef"
LAB_APPROVERS = ApproverSpec(usergroup="etcd-approvers")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(workdir=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def rds(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def workspace(tmp_path: Any) -> AsyncIterator[SlackWorkspace]:
    ws = SlackWorkspace(
        port=0,
        bot_token=BOT_TOKEN,
        app_token=APP_TOKEN,
        signing_secret=SIGNING_SECRET,
        record_file=tmp_path / "slack.jsonl",
        rate_limit_per_channel=(1000, 1.0),
    )
    await ws.start()
    yield ws
    await ws.stop()


async def until(
    check: Callable[[], Awaitable[Any]] | Callable[[], Any], *, timeout: float = 10.0, what: str
) -> Any:
    """Polls `check` (sync or async) until it returns something truthy; fails at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


# -- fake steps ------------------------------------------------------------------------------------


@dataclass
class Calls:
    """Which step functions were called, how often."""

    counts: dict[str, int] = field(default_factory=dict)

    def hit(self, step_id: str) -> int:
        self.counts[step_id] = self.counts.get(step_id, 0) + 1
        return self.counts[step_id]

    def __getitem__(self, step_id: str) -> int:
        return self.counts.get(step_id, 0)


StepBody = Callable[[StepContext], Awaitable[StepResult]]


def step(
    step_id: str,
    *,
    kind: StepKind = StepKind.READ,
    calls: Calls,
    body: StepBody | None = None,
    plan: PlanFn | None = None,
    **limits: Any,
) -> ProcedureStep:
    async def run(ctx: StepContext) -> StepResult:
        calls.hit(step_id)
        if body is not None:
            return await body(ctx)
        return StepResult(summary=f"{step_id} done")

    def default_plan(ctx: StepContext) -> list[PlannedCommand]:
        return [PlannedCommand(target="api", command=f"oc get {step_id} --cluster {ctx.parameters.get('cluster', '')}")]

    limits.setdefault("safe_to_repeat", True)
    return ProcedureStep(id=StepId(step_id), title=f"Title of {step_id}", kind=kind, run=run,
                         plan=plan or default_plan, **limits)


def procedure(name: str, *steps: ProcedureStep) -> Procedure:
    return Procedure(name=name, title=f"Procedure {name}", chapter="9", steps=tuple(steps))


def context_factory(*, run: Run, results: dict[StepId, StepResult], heartbeat: Heartbeat, fence: Fence) -> StepContext:
    """No cluster in these tests: the fake steps touch only what they are given."""
    return StepContext(
        fence=fence,
        run_id=run.id,
        cluster=None,  # type: ignore[arg-type]
        settings=None,  # type: ignore[arg-type]
        parameters=run.parameters,
        kube=None,  # type: ignore[arg-type]
        hosts=None,  # type: ignore[arg-type]
        results=results,
        heartbeat=heartbeat,
    )


# -- the bot ---------------------------------------------------------------------------------------


@dataclass
class Bot:
    runner: Runner
    sender: ThrottledSender
    client: AsyncWebClient
    rds: aioredis.Redis

    async def close(self) -> None:
        await self.runner.close()
        await self.sender.close()
        await self.rds.aclose()
        if self.client.session is not None:
            await self.client.session.close()


@dataclass
class BotFactory:
    redis_url: str
    workspace: SlackWorkspace
    catalogue: dict[str, Procedure] = field(default_factory=dict)
    bots: list[Bot] = field(default_factory=list)

    def add(self, proc: Procedure) -> Procedure:
        self.catalogue[proc.name] = proc
        return proc

    async def __call__(
        self,
        *,
        instance_id: str,
        policy: RunnerPolicy | None = None,
        expiry: float = 60.0,
        required: Mapping[str, int] | None = None,
        approvers: ApproverSpec = LAB_APPROVERS,
        approvals: Approvals | None = None,
        key: bytes = APPROVAL_KEY,
    ) -> Bot:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=self.workspace.base_url)
        rds = connect_redis(self.redis_url)
        sender = ThrottledSender(client=client, min_interval=0.0)
        approval_policy = ApprovalPolicy(key=key, expiry=expiry, required=dict(required or {}))
        if approvals is None:
            approvals = RedisApprovals(
                redis=rds,
                sender=sender,
                approvers=SlackApprovers(client=client, spec_of=lambda _cluster: approvers),
                audit=Audit(redis=rds),
                policy=approval_policy,
                poll=1.0,
            )

        def procedures(name: str, _parameters: Mapping[str, Any]) -> Procedure:
            return self.catalogue[name]

        runner = Runner(
            redis=rds,
            sender=sender,
            approvals=approvals,
            approval_policy=approval_policy,
            context_factory=context_factory,
            procedures=procedures,
            instance_id=instance_id,
            policy=policy or RunnerPolicy(lock_timeout=5.0, instance_ttl=1.0, first_backoff=0.01, max_backoff=0.05),
        )
        await runner.open()
        bot = Bot(runner=runner, sender=sender, client=client, rds=rds)
        self.bots.append(bot)
        return bot


@pytest.fixture
async def make_bot(redis_url: str, workspace: SlackWorkspace, rds: aioredis.Redis) -> AsyncIterator[BotFactory]:
    factory = BotFactory(redis_url=redis_url, workspace=workspace)
    yield factory
    for bot in factory.bots:
        await bot.close()


async def crash(bot: Bot, *run_ids: str) -> None:
    """What a killed bot process does: nothing more. Its tasks stop where they are; nothing is
    written; its presence key and its locks expire on their own."""
    marks = (bot.runner.instance_id, *(f"lock-renewal-{r}" for r in run_ids))
    tasks = [t for t in asyncio.all_tasks() if any(m in t.get_name() for m in marks)]
    for task in tasks:
        assert await cancel_and_wait(task), f"{task.get_name()} did not stop"


async def wait_state(bot: Bot, run_id: str, *states: RunState, timeout: float = 10.0) -> Run:
    async def check() -> Run | None:
        run = await bot.runner.store.load(run_id)
        return run if run is not None and run.state in states else None

    return await until(check, timeout=timeout, what=f"run {run_id} in {states}")


def message(workspace: SlackWorkspace, ts: str, channel: str = CHANNEL) -> Any:
    return workspace.recorder.messages[(channel, ts)]


def action_ids(blocks: list[dict]) -> list[str]:
    return [e["action_id"] for b in blocks if b.get("type") == "actions" for e in b["elements"]]


def blocks_text(blocks: list[dict]) -> str:
    parts = []
    for block in blocks:
        if "text" in block and isinstance(block["text"], dict):
            parts.append(block["text"]["text"])
        for element in block.get("elements", []):
            if isinstance(element, dict) and isinstance(element.get("text"), str):
                parts.append(element["text"])
    return "\n".join(parts)
