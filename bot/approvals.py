"""The two-person rule: a destructive step runs only after someone else, from the approver user
group, pressed Approve for that exact run, that exact step and those exact parameters.

Why records in Redis and not an in-memory future: the button press may reach another replica, or
a bot that restarted meanwhile; and the runner checks the record itself (`approval_on_record`)
right before a destructive step's `run()`, whatever `request()` answered. Keys:
  etcdbot:approval:<run>:<step>           the pending request (who asked, hash, expiry, message ts)
  etcdbot:approval:<run>:<step>:<hash>    the decision, written once (SET NX): approved, rejected,
                                          expired or withdrawn; this is the approval record
  etcdbot:approval:<run>:<step>:notify    a list the waiting runner BLPOPs on, so a decision made
                                          anywhere wakes it at once

A decision cannot be changed: the first of Approve, Reject, expiry or abort wins. The hash is over
the run's parameters, so an approval cannot be carried over to a run with other parameters.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import redis.asyncio as aioredis
from slack_sdk.models.blocks import ActionsBlock, Block, ButtonElement, MarkdownTextObject, SectionBlock
from slack_sdk.web.async_client import AsyncWebClient

from bot.audit import Audit
from bot.log import get_logger
from bot.procedure import RunId, Step, StepId
from bot.progress import ThrottledSender, slack_time
from bot.store import RUN_TTL_SECONDS, Run

log = get_logger(__name__)

DEFAULT_EXPIRY = 15 * 60.0


class Outcome(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # the run was aborted while waiting


@dataclass(frozen=True)
class Decision:
    run_id: RunId
    step_id: StepId
    params_hash: str
    outcome: Outcome
    by: str  # Slack user id; empty for expiry
    at: float

    @property
    def approved(self) -> bool:
        return self.outcome is Outcome.APPROVED

    def for_storage(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "step_id": self.step_id,
            "params_hash": self.params_hash,
            "outcome": self.outcome.value,
            "by": self.by,
            "at": self.at,
        }

    @classmethod
    def from_storage(cls, data: Mapping[str, Any]) -> Decision:
        return cls(
            run_id=RunId(data["run_id"]),
            step_id=StepId(data["step_id"]),
            params_hash=data["params_hash"],
            outcome=Outcome(data["outcome"]),
            by=data.get("by", ""),
            at=float(data["at"]),
        )


@dataclass(frozen=True)
class DecideAnswer:
    """What the person who pressed a button is told."""

    accepted: bool
    message: str
    decision: Decision | None = None


def parameters_hash(parameters: Mapping[str, Any]) -> str:
    canonical = json.dumps(dict(parameters), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _request_key(run_id: str, step_id: str, prefix: str) -> str:
    return f"{prefix}:approval:{run_id}:{step_id}"


def _decision_key(run_id: str, step_id: str, params_hash: str, prefix: str) -> str:
    return f"{prefix}:approval:{run_id}:{step_id}:{params_hash}"


async def approval_on_record(
    redis: aioredis.Redis, *, run_id: str, step_id: str, params_hash: str, prefix: str = "etcdbot"
) -> Decision | None:
    """The decision recorded for exactly this run, step and parameter hash, if any."""
    raw = await redis.get(_decision_key(run_id, step_id, params_hash, prefix))
    if raw is None:
        return None
    return Decision.from_storage(json.loads(raw))


class Approvals(Protocol):
    """What the runner needs: ask, and be able to withdraw the question when the run is aborted."""

    async def request(self, *, run: Run, step: Step) -> Decision: ...

    async def withdraw(self, *, run: Run, step_id: StepId, by: str) -> None: ...

    async def decide(
        self, *, run_id: str, step_id: str, params_hash: str, approve: bool, by: str
    ) -> DecideAnswer: ...


ApproverCheck = Callable[[str], Awaitable[bool]]


class SlackApproverCheck:
    """Is this user in the approver user group? Asks Slack (usergroups.list, usergroups.users.list),
    remembering the answer for `cache_seconds` so a burst of presses costs one call."""

    def __init__(self, *, client: AsyncWebClient, usergroup: str, cache_seconds: float = 60.0) -> None:
        self._client = client
        self._usergroup = usergroup.lstrip("@")
        self._cache_seconds = cache_seconds
        self._members: frozenset[str] = frozenset()
        self._fetched_at = float("-inf")

    async def __call__(self, user_id: str) -> bool:
        if time.monotonic() - self._fetched_at > self._cache_seconds:
            self._members = await self._fetch()
            self._fetched_at = time.monotonic()
        return user_id in self._members

    async def _fetch(self) -> frozenset[str]:
        group_id = self._usergroup
        if not group_id.startswith("S"):
            groups = (await self._client.usergroups_list())["usergroups"]
            match = next((g for g in groups if g.get("handle") == group_id), None)
            if match is None:
                log.error("approvals.usergroup_not_found", usergroup=self._usergroup)
                return frozenset()
            group_id = match["id"]
        users = (await self._client.usergroups_users_list(usergroup=group_id))["users"]
        return frozenset(users)


def render_approval(
    *, run: Run, step: Step, params_hash: str, expires_at: float, group: str, decision: Decision | None
) -> list[Block]:
    params = ", ".join(f"{k}=`{v}`" for k, v in sorted(run.parameters.items())) or "none"
    text = (
        f":raised_hand: *Approval needed* for a destructive step of run `{run.id}` "
        f"({run.procedure_title} on `{run.cluster}`, started by <@{run.requester}>)\n"
        f"*Step:* {step.title}\n*Parameters:* {params}\n"
        f"An approver from @{group} other than <@{run.requester}> must approve before "
        f"{slack_time(expires_at)}; otherwise the run stops before this step."
    )
    blocks: list[Block] = [SectionBlock(text=MarkdownTextObject(text=text[:3000]))]
    if decision is None:
        value = json.dumps({"run": run.id, "step": step.id, "hash": params_hash})
        blocks.append(
            ActionsBlock(
                block_id=f"approval:{run.id}:{step.id}",
                elements=[
                    ButtonElement(text="Approve", action_id="approval_approve", value=value, style="primary"),
                    ButtonElement(text="Reject", action_id="approval_reject", value=value, style="danger"),
                ],
            )
        )
    else:
        who = f" by <@{decision.by}>" if decision.by else ""
        blocks.append(
            SectionBlock(text=MarkdownTextObject(text=f"*{decision.outcome.value.capitalize()}*{who} {slack_time(decision.at)}"))
        )
    return blocks


class RedisApprovals:
    """Approvals recorded in Redis, asked for in the run's channel (threaded under its message)."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        sender: ThrottledSender,
        is_approver: ApproverCheck,
        group: str,
        audit: Audit,
        expiry: float = DEFAULT_EXPIRY,
        poll: float = 5.0,
        prefix: str = "etcdbot",
    ) -> None:
        self._redis = redis
        self._sender = sender
        self._is_approver = is_approver
        self._group = group
        self._audit = audit
        self.expiry = expiry
        self._poll = poll
        self._prefix = prefix

    async def request(self, *, run: Run, step: Step) -> Decision:
        """Posts Approve/Reject and waits for a decision; returns the expiry decision at the deadline."""
        params_hash = parameters_hash(run.parameters)
        known = await approval_on_record(
            self._redis, run_id=run.id, step_id=step.id, params_hash=params_hash, prefix=self._prefix
        )
        if known is not None:  # asked before a restart, and answered
            return known
        now = time.time()
        expires_at = now + self.expiry
        blocks = render_approval(
            run=run, step=step, params_hash=params_hash, expires_at=expires_at, group=self._group, decision=None
        )
        request = {
            "run_id": run.id,
            "step_id": step.id,
            "params_hash": params_hash,
            "requester": run.requester,
            "cluster": run.cluster,
            "channel": run.channel,
            "requested_at": now,
            "expires_at": expires_at,
            "message_ts": None,
        }
        request_key = _request_key(run.id, step.id, self._prefix)
        await self._redis.set(request_key, json.dumps(request), ex=RUN_TTL_SECONDS)
        ts = await self._sender.post(
            channel=run.channel, text=f"Approval needed: {step.title} (run {run.id})", blocks=blocks,
            thread_ts=None,
        )
        await self._redis.set(request_key, json.dumps({**request, "message_ts": ts}), ex=RUN_TTL_SECONDS)
        await self._audit.record(
            cluster=run.cluster, event="approval.requested", actor=run.requester, run_id=run.id,
            step=step.id, params_hash=params_hash, parameters=dict(run.parameters), expires_at=expires_at,
        )
        decision = await self._wait(run=run, step=step, params_hash=params_hash, expires_at=expires_at)
        final = render_approval(
            run=run, step=step, params_hash=params_hash, expires_at=expires_at, group=self._group, decision=decision
        )
        self._sender.update(channel=run.channel, ts=ts, text=f"Approval {decision.outcome.value}: {step.title}", blocks=final)
        return decision

    async def _wait(self, *, run: Run, step: Step, params_hash: str, expires_at: float) -> Decision:
        notify = f"{_request_key(run.id, step.id, self._prefix)}:notify"
        while True:
            decision = await approval_on_record(
                self._redis, run_id=run.id, step_id=step.id, params_hash=params_hash, prefix=self._prefix
            )
            if decision is not None:
                return decision
            remaining = expires_at - time.time()
            if remaining <= 0:
                expired = Decision(
                    run_id=run.id, step_id=step.id, params_hash=params_hash, outcome=Outcome.EXPIRED, by="", at=time.time()
                )
                if await self._record(expired):
                    await self._audit.record(
                        cluster=run.cluster, event="approval.decided", actor="", run_id=run.id,
                        step=step.id, outcome=Outcome.EXPIRED.value, params_hash=params_hash,
                    )
                continue  # read back whatever won
            await self._redis.blpop([notify], timeout=max(0.01, min(remaining, self._poll)))

    async def _record(self, decision: Decision) -> bool:
        """Writes the decision unless one exists; True if this one was written."""
        key = _decision_key(decision.run_id, decision.step_id, decision.params_hash, self._prefix)
        written = await self._redis.set(key, json.dumps(decision.for_storage()), nx=True, ex=RUN_TTL_SECONDS)
        if written:
            notify = f"{_request_key(decision.run_id, decision.step_id, self._prefix)}:notify"
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(notify, decision.outcome.value)
                pipe.expire(notify, 3600)
                await pipe.execute()
        return bool(written)

    async def decide(
        self, *, run_id: str, step_id: str, params_hash: str, approve: bool, by: str
    ) -> DecideAnswer:
        """A button press. Approve needs an approver who is not the requester; Reject may come from
        an approver or from the requester (who may always withdraw their own request)."""
        raw = await self._redis.get(_request_key(run_id, step_id, self._prefix))
        if raw is None:
            return DecideAnswer(accepted=False, message=f"No approval was requested for step {step_id} of run {run_id}.")
        request = json.loads(raw)
        if request["params_hash"] != params_hash:
            return DecideAnswer(
                accepted=False,
                message="This approval was for other parameters than the run has now; nothing was recorded.",
            )
        existing = await approval_on_record(
            self._redis, run_id=run_id, step_id=step_id, params_hash=params_hash, prefix=self._prefix
        )
        if existing is not None:
            who = f" by <@{existing.by}>" if existing.by else ""
            return DecideAnswer(accepted=False, message=f"Already {existing.outcome.value}{who}.", decision=existing)
        if time.time() >= float(request["expires_at"]):
            return DecideAnswer(accepted=False, message="This approval request has expired; the run stops before the step.")
        requester = request["requester"]
        if approve and by == requester:
            return DecideAnswer(
                accepted=False,
                message="You started this run, so you cannot approve it: a second person from "
                f"@{self._group} must approve.",
            )
        if (approve or by != requester) and not await self._is_approver(by):
            return DecideAnswer(accepted=False, message=f"Only members of @{self._group} can approve or reject this step.")
        outcome = Outcome.APPROVED if approve else Outcome.REJECTED
        decision = Decision(
            run_id=RunId(run_id), step_id=StepId(step_id), params_hash=params_hash, outcome=outcome, by=by, at=time.time()
        )
        if not await self._record(decision):
            return await self.decide(run_id=run_id, step_id=step_id, params_hash=params_hash, approve=approve, by=by)
        await self._audit.record(
            cluster=request["cluster"], event="approval.decided", actor=by, run_id=run_id,
            step=step_id, outcome=outcome.value, params_hash=params_hash,
        )
        return DecideAnswer(accepted=True, message=f"{outcome.value.capitalize()}: step {step_id} of run {run_id}.", decision=decision)

    async def withdraw(self, *, run: Run, step_id: StepId, by: str) -> None:
        decision = Decision(
            run_id=run.id, step_id=step_id, params_hash=parameters_hash(run.parameters),
            outcome=Outcome.WITHDRAWN, by=by, at=time.time(),
        )
        if await self._record(decision):
            await self._audit.record(
                cluster=run.cluster, event="approval.decided", actor=by, run_id=run.id,
                step=step_id, outcome=Outcome.WITHDRAWN.value, params_hash=decision.params_hash,
            )
