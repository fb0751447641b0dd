"""A bot process for the safety tests: the production Runner, RedisApprovals, SlackApprovers,
ThrottledSender (with the metrics observer) and the run buttons of `handlers/runs.py`, over
Socket Mode against the lab's Slack workspace and a real redis-server, driving a TEST procedure
with a destructive step. Not shipped: the procedure lives here, in tests/.

Why a harness beside `etcdbot run` (which tests/safety/test_real_bot.py drives with a test
procedure through ETCDBOT_PROCEDURE_MODULES): these tests pause, kill and restart bots and Redis
around the lock's TTL, so they need short TTLs (`RunnerPolicy`), which the real bot does not take
as settings. Everything the safety rules live in (runner, locks, approvals, store) is the
production code; only the composition is small and local.

`python -m tests.safety.harness` reads HARNESS_* variables:
  HARNESS_REDIS_URL, HARNESS_SLACK_URL (the workspace's /api/), HARNESS_BOT_TOKEN, HARNESS_APP_TOKEN,
  HARNESS_INSTANCE (instance id), HARNESS_DIR (the step's control and action files),
  HARNESS_LOCK_TTL, HARNESS_PRESENCE_TTL, HARNESS_RECOVER_EVERY (seconds), HARNESS_EXPIRY,
  HARNESS_REQUIRED (JSON: procedure -> approvers), HARNESS_SOCKET (0: no Slack connection, a
  replica that only recovers), HARNESS_LAB_ENV (a lab's env file: the plan reads the real etcd
  member list of that lab).

The test procedure `test-destroy` ("remove the etcd member of node N", ch. 2.4 style):
  1. check (read)
  2. stop (destructive, one approval group with destroy): appends "stop <instance> <run>" to
     HARNESS_DIR/actions and, while HARNESS_DIR/hold-stop exists, waits (the step between an
     approval's press and the next step's start)
  3. destroy (destructive): its plan is `etcdctl member remove <id>` for the member whose peer URL
     (run parameter `peer`) or whose id in HARNESS_DIR/member is named; its run() appends
     "begin <instance> <run>" to HARNESS_DIR/actions, waits for HARNESS_DIR/go, calls
     `ctx.fence()` and appends "harm <instance> <run> <command>". It never touches the cluster:
     the actions file is what the tests count.
  4. verify (read)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.builtin_async_handlers import async_default_handlers
from slack_sdk.web.async_client import AsyncWebClient

from bot.approvals import ApprovalPolicy, ApproverSpec, RedisApprovals, SlackApprovers
from bot.audit import Audit
from bot.log import configure_logging, get_logger
from bot.metrics import SlackApiObserver
from bot.procedure import Fence, PlannedCommand, Procedure, Step, StepContext, StepId, StepKind, StepResult
from bot.progress import ThrottledSender
from bot.run_types import Heartbeat, RunnerPolicy
from bot.runner import Runner
from bot.store import Run, connect_redis
from bot.tasks import cancel_and_wait
from handlers.runs import register

log = get_logger("harness")
NAME = "test-destroy"
CLUSTER = "lab"


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise SystemExit(f"harness: {name} is not set")
    return value


class Cluster:
    """How the test procedure's plan reads the member IDs: the lab's real etcd, or a file."""

    def __init__(self, *, workdir: Path, lab_env: str) -> None:
        self.workdir = workdir
        self.kube: Any = None
        self.node = ""
        if lab_env:
            from bot.clusters import Clusters
            from bot.config import load_settings

            settings = load_settings(env_file=Path(lab_env), environ={})
            cluster = settings.clusters[0]
            self.kube = Clusters(settings).kube(cluster.name)
            self.node = sorted(cluster.ssh.hosts)[0] if cluster.ssh else ""

    async def member_id(self, peer: str) -> str:
        if self.kube is None:
            return (self.workdir / "member").read_text().strip()
        from bot.cluster.etcdctl import member_list_command, parse_member_list

        result = await self.kube.exec(pod=f"etcd-{self.node}", container="etcdctl", argv=member_list_command(), timeout=15)
        members = parse_member_list(result.stdout).members
        found = [m for m in members if peer in m.peer_urls]
        if not found:
            raise RuntimeError(f"no member with peer URL {peer}")
        return found[0].id


def test_procedure(cluster: Cluster, *, instance: str) -> Procedure:
    actions = cluster.workdir / "actions"

    def record(line: str) -> None:
        with actions.open("a") as out:
            out.write(line + "\n")

    async def check(_ctx: StepContext) -> StepResult:
        return StepResult(summary="checked")

    async def plan_destroy(ctx: StepContext) -> list[PlannedCommand]:
        member = await cluster.member_id(str(ctx.parameters.get("peer", "")))
        return [PlannedCommand(target=f"exec etcd-{cluster.node or 'master-0'}", command=f"etcdctl member remove {member}")]

    async def destroy(ctx: StepContext) -> StepResult:
        [command] = await plan_destroy(ctx)
        record(f"begin {instance} {ctx.run_id}")
        await ctx.heartbeat("about to remove the member")
        while not (cluster.workdir / "go").exists():
            await asyncio.sleep(0.05)  # the test's signal; the runner may cancel us meanwhile
        await ctx.fence()  # what the kit's write verbs do right before they act
        record(f"harm {instance} {ctx.run_id} {command.command}")
        return StepResult(summary=f"ran {command.command}")

    def no_plan(_ctx: StepContext) -> list[PlannedCommand]:
        return []

    def plan_stop(_ctx: StepContext) -> list[PlannedCommand]:
        node = cluster.node or "master-0"
        return [PlannedCommand(target=f"ssh core@{node}", command="sudo mv /etc/kubernetes/manifests/etcd-pod.yaml /tmp")]

    async def stop_member(ctx: StepContext) -> StepResult:
        record(f"stop {instance} {ctx.run_id}")
        while (cluster.workdir / "hold-stop").exists():  # a test keeps the group's first step busy
            await asyncio.sleep(0.05)
        await ctx.fence()
        return StepResult(summary="stopped the member's static pod")

    return Procedure(
        name=NAME, title="Remove an etcd member (test)", chapter="2.4",
        steps=(
            Step(id=StepId("check"), title="Check the members", kind=StepKind.READ, run=check, plan=no_plan,
                 safe_to_repeat=True),
            Step(id=StepId("stop"), title="Stop the member's static pod", kind=StepKind.DESTRUCTIVE, run=stop_member,
                 plan=plan_stop, timeout=600, safe_to_repeat=True, approval_group="remove"),
            Step(id=StepId("destroy"), title="Remove the member", kind=StepKind.DESTRUCTIVE, run=destroy,
                 plan=plan_destroy, timeout=600, approval_group="remove"),
            Step(id=StepId("verify"), title="Verify the members", kind=StepKind.READ, run=check, plan=no_plan,
                 safe_to_repeat=True),
        ),
    )


def context_factory(*, run: Run, results: dict[StepId, StepResult], heartbeat: Heartbeat, fence: Fence) -> StepContext:
    return StepContext(
        run_id=run.id, cluster=None, settings=None, parameters=run.parameters,  # type: ignore[arg-type]
        kube=None, hosts=None, results=results, heartbeat=heartbeat, requester=run.requester,  # type: ignore[arg-type]
        fence=fence,
    )


async def main() -> None:
    workdir = Path(_env("HARNESS_DIR"))
    instance = _env("HARNESS_INSTANCE")
    redis = connect_redis(_env("HARNESS_REDIS_URL"), timeout=5.0)
    client = AsyncWebClient(token=_env("HARNESS_BOT_TOKEN"), base_url=_env("HARNESS_SLACK_URL"), timeout=10,
                            retry_handlers=[SlackApiObserver(), *async_default_handlers()])
    sender = ThrottledSender(client=client, min_interval=0.0)
    key = _env("HARNESS_APPROVAL_KEY", "harness-approval-key-0123456789").encode()
    policy = ApprovalPolicy(key=key, expiry=float(_env("HARNESS_EXPIRY", "120")),
                            required=json.loads(_env("HARNESS_REQUIRED", "{}")))
    approvals = RedisApprovals(
        redis=redis, sender=sender, audit=Audit(redis=redis), policy=policy, poll=1.0,
        approvers=SlackApprovers(client=client, spec_of=lambda _c: ApproverSpec(usergroup="etcd-approvers")),
    )
    cluster = Cluster(workdir=workdir, lab_env=_env("HARNESS_LAB_ENV", ""))
    procedure = test_procedure(cluster, instance=instance)

    def procedures(name: str, _parameters: Mapping[str, Any]) -> Procedure:
        if name != NAME:
            raise KeyError(name)
        return procedure

    runner = Runner(
        redis=redis, sender=sender, approvals=approvals, approval_policy=policy, context_factory=context_factory,
        procedures=procedures, instance_id=instance,
        policy=RunnerPolicy(lock_timeout=float(_env("HARNESS_LOCK_TTL", "6")),
                            instance_ttl=float(_env("HARNESS_PRESENCE_TTL", "1")), heartbeat_every=0.0),
    )
    await runner.open()
    every = float(_env("HARNESS_RECOVER_EVERY", "0.3"))

    async def keep_recovering() -> None:
        while True:
            try:
                for run in await runner.recover_interrupted():
                    log.warning("run.interrupted_recovered", run_id=run.id)
            except Exception as exc:  # Redis away: try again, as Services does
                log.warning("run.recovery_failed", error=str(exc))
            await asyncio.sleep(every)

    recovery = asyncio.create_task(keep_recovering())
    handler = None
    if _env("HARNESS_SOCKET", "1") == "1":
        app = AsyncApp(client=client, request_verification_enabled=False)
        register(app, runner=runner, resolve_cluster=lambda _channel, _text: CLUSTER)

        @app.command("/etcd-test-destroy")
        async def start(ack: Any, command: dict[str, Any], respond: Any) -> None:
            await ack()
            peer = (command.get("text") or "").strip()
            answer = await runner.start(procedure, cluster=CLUSTER, parameters={"peer": peer} if peer else {},
                                        requester=command["user_id"], channel=command["channel_id"])
            if not isinstance(answer, Run):
                await respond(text=answer.message())

        handler = AsyncSocketModeHandler(app, _env("HARNESS_APP_TOKEN"), web_client=client)
        await handler.connect_async()
    log.info("harness.ready", instance=instance)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("harness.stopping", instance=instance)
    if handler is not None:
        await handler.close_async()
    await cancel_and_wait(recovery)
    try:
        await runner.close()
    except Exception as exc:  # Redis may be gone: stopping must not hang on it
        log.warning("harness.close_failed", error=str(exc))
    await sender.close()
    await redis.aclose()
    if client.session is not None:
        await client.session.close()


if __name__ == "__main__":
    configure_logging(level="INFO")
    asyncio.run(main())
