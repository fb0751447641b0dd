"""The two-person rule, bound to what will happen.

A destructive step (or a group of consecutive ones sharing `Step.approval_group`) runs only under
an approval request that:
- names its plan: the exact commands and targets each step will send, computed by the runner at
  the gate from the cluster and the earlier steps' results. The request's digest covers that plan
  and the run id, cluster, procedure, parameters, requester and step ids, so an approval cannot be
  carried over to another run, another step or another plan;
- was approved by N distinct approvers (per procedure, default 1), none of them the requester,
  each an approver of the cluster when they pressed (read from Slack, from no cache older than
  10 s);
- is still valid when the step starts: expiry is counted at that moment, not at the press.

Records (one hash per request, so one Lua script decides atomically):
  <prefix>:approval:<request id>          "request" -> the signed request, "message_ts" -> its
                                          message; "d:approve:<user>", "d:reject:<user>",
                                          "d:expired", "d:withdrawn" -> signed decisions
  <prefix>:approval:<request id>:notify   a list the waiting runner BLPOPs on, so a press on any
                                          replica wakes it at once

Every request and decision carries an HMAC-SHA256 under the bot's approval key: a record written
into Redis by anyone else is refused, reported in the audit stream and moved aside (quarantine),
so it can neither count nor block a real decision. Two presses at once: the script records one
decision where one is enough, and answers the second "already approved".

The runner trusts none of what `wait()` answers: `check_grant()` reads the records from Redis
right before each destructive step's run() and checks every rule above itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import redis.asyncio as aioredis
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    MarkdownTextObject,
    SectionBlock,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.audit import Audit
from bot.log import get_logger
from bot.procedure import PlannedCommand, RunId, StepId
from bot.progress import ThrottledSender, slack_time, who
from bot.slacktext import escape
from bot.store import RUN_TTL_SECONDS, UNKNOWN_CLUSTER, Run, quarantine

log = get_logger(__name__)

DEFAULT_EXPIRY = 15 * 60.0
MAX_MEMBERSHIP_AGE = 10.0  # seconds: who is an approver is never read from an older answer


class Outcome(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # the run was aborted while waiting


@dataclass(frozen=True)
class ApprovalPolicy:
    """What an operator chooses: the HMAC key (from the bot's secret), how long a request is
    valid, and how many approvers each procedure needs (default 1)."""

    key: bytes = field(repr=False)
    expiry: float = DEFAULT_EXPIRY
    required: Mapping[str, int] = field(default_factory=dict)

    def required_for(self, procedure: str) -> int:
        return max(1, int(self.required.get(procedure, 1)))


# -- signing -------------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def sign(key: bytes, payload: Mapping[str, Any]) -> str:
    body = _canonical(dict(payload))
    mac = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    return _canonical({"payload": dict(payload), "mac": mac})


class BadSignature(ValueError):
    pass


def unsign(key: bytes, raw: str | bytes) -> dict[str, Any]:
    """The payload of a signed record; BadSignature if it is not one this key made."""
    try:
        data = json.loads(raw)
        payload, mac = data["payload"], data["mac"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadSignature(f"not a signed record ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or not isinstance(mac, str):
        raise BadSignature("not a signed record")
    expected = hmac.new(key, _canonical(payload).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, mac):
        raise BadSignature("HMAC does not match")
    return payload


# -- what is approved ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StepPlan:
    """One step's part of an approval: what it will send, and where."""

    step_id: StepId
    title: str
    commands: tuple[PlannedCommand, ...]

    def for_storage(self) -> dict[str, Any]:
        return {"step_id": self.step_id, "title": self.title, "commands": [[c.target, c.command] for c in self.commands]}

    @classmethod
    def from_storage(cls, data: Mapping[str, Any]) -> StepPlan:
        return cls(
            step_id=StepId(str(data["step_id"])), title=str(data["title"]),
            commands=tuple(PlannedCommand(target=str(t), command=str(c)) for t, c in data["commands"]),
        )


@dataclass(frozen=True)
class ApprovalPlan:
    """Everything an approval is bound to. Its digest is what approvers approve."""

    run_id: RunId
    cluster: str
    procedure: str
    procedure_title: str
    requester: str
    parameters: Mapping[str, Any]
    steps: tuple[StepPlan, ...]

    def for_storage(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "cluster": self.cluster, "procedure": self.procedure,
            "procedure_title": self.procedure_title, "requester": self.requester,
            "parameters": dict(self.parameters), "steps": [s.for_storage() for s in self.steps],
        }

    @classmethod
    def from_storage(cls, data: Mapping[str, Any]) -> ApprovalPlan:
        return cls(
            run_id=RunId(str(data["run_id"])), cluster=str(data["cluster"]), procedure=str(data["procedure"]),
            procedure_title=str(data["procedure_title"]), requester=str(data["requester"]),
            parameters=dict(data["parameters"]), steps=tuple(StepPlan.from_storage(s) for s in data["steps"]),
        )

    def digest(self) -> str:
        return hashlib.sha256(_canonical(self.for_storage()).encode()).hexdigest()

    def step(self, step_id: str) -> StepPlan | None:
        return next((s for s in self.steps if s.step_id == step_id), None)

    @property
    def targets(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for step in self.steps:
            for command in step.commands:
                seen.setdefault(command.target, None)
        return tuple(seen)


@dataclass(frozen=True)
class ApprovalRequest:
    id: str
    plan: ApprovalPlan
    required: int
    requested_at: float
    expires_at: float
    approvers: str  # who may approve, as shown ("@etcd-approvers or <@U0..>")
    note: str = ""  # why asked (again): the plan changed, the last approval expired, a resume

    @property
    def digest(self) -> str:
        return self.plan.digest()

    def for_storage(self) -> dict[str, Any]:
        return {
            "id": self.id, "plan": self.plan.for_storage(), "digest": self.digest, "required": self.required,
            "requested_at": self.requested_at, "expires_at": self.expires_at, "approvers": self.approvers,
            "note": self.note,
        }

    @classmethod
    def from_storage(cls, data: Mapping[str, Any]) -> ApprovalRequest:
        request = cls(
            id=str(data["id"]), plan=ApprovalPlan.from_storage(data["plan"]), required=int(data["required"]),
            requested_at=float(data["requested_at"]), expires_at=float(data["expires_at"]),
            approvers=str(data.get("approvers", "")), note=str(data.get("note", "")),
        )
        if data.get("digest") != request.digest:
            raise ValueError("the stored digest does not match the stored plan")
        return request


@dataclass(frozen=True)
class Decision:
    """One person's press, or the expiry or withdrawal of a request."""

    request_id: str
    run_id: RunId
    digest: str
    outcome: Outcome
    by: str  # Slack user id; empty for expiry
    at: float

    @property
    def field(self) -> str:
        if self.outcome is Outcome.APPROVED:
            return f"d:approve:{self.by}"
        if self.outcome is Outcome.REJECTED:
            return f"d:reject:{self.by}"
        return f"d:{self.outcome.value}"

    def for_storage(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id, "run_id": self.run_id, "digest": self.digest,
            "outcome": self.outcome.value, "by": self.by, "at": self.at,
        }

    @classmethod
    def from_storage(cls, data: Mapping[str, Any]) -> Decision:
        return cls(
            request_id=str(data["request_id"]), run_id=RunId(str(data["run_id"])), digest=str(data["digest"]),
            outcome=Outcome(data["outcome"]), by=str(data.get("by", "")), at=float(data["at"]),
        )


@dataclass(frozen=True)
class ApprovalState:
    """A request and the valid decisions on it, read from Redis and checked."""

    request: ApprovalRequest
    approvals: tuple[Decision, ...]  # valid approvals by distinct people other than the requester
    closing: Decision | None  # the reject, expiry or withdrawal that ended it, if any
    message_ts: str | None

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(d.by for d in self.approvals)

    @property
    def outcome(self) -> Outcome | None:
        if self.closing is not None:
            return self.closing.outcome
        if len(self.approvals) >= self.request.required:
            return Outcome.APPROVED
        return None


@dataclass(frozen=True)
class GrantCheck:
    """The runner's verdict on an approval, right before a destructive step."""

    ok: bool
    code: str  # ok | missing | not_approved | plan_changed | expired | wrong_run
    reason: str = ""
    approvers: tuple[str, ...] = ()

    @property
    def ask_again(self) -> bool:
        """A plan that changed or an approval that expired: ask a new one. Anything else fails."""
        return self.code in ("plan_changed", "expired")


def check_grant(
    state: ApprovalState | None, *, run: Run, step_id: str, plan_now: StepPlan, required: int, now: float
) -> GrantCheck:
    """Every rule, checked from the records: right run and cluster, this step in the plan and its
    plan unchanged, enough distinct approvers other than the requester, nothing that closed the
    request otherwise, and not expired now (the moment the step starts)."""
    if state is None:
        return GrantCheck(False, "missing", "no approval on record for this run")
    request = state.request
    plan = request.plan
    if (plan.run_id, plan.cluster, plan.requester) != (run.id, run.cluster, run.requester):
        return GrantCheck(False, "wrong_run", f"the approval on record is for run {plan.run_id}, not this one")
    approved = plan.step(step_id)
    if approved is None:
        return GrantCheck(False, "wrong_run", "the approval on record does not cover this step")
    if state.closing is not None:
        return GrantCheck(False, "not_approved", f"the approval request was {state.closing.outcome.value}")
    if len(state.approvals) < max(required, request.required):
        have, need = len(state.approvals), max(required, request.required)
        return GrantCheck(False, "not_approved", f"{have} of {need} approvals on record")
    if approved.commands != plan_now.commands:
        return GrantCheck(False, "plan_changed", _plan_change(approved, plan_now))
    if now >= request.expires_at:
        return GrantCheck(False, "expired", f"the approval expired {slack_time(request.expires_at)}, before the step started")
    return GrantCheck(True, "ok", approvers=state.approvers)


def _plan_change(before: StepPlan, now: StepPlan) -> str:
    was = {(c.target, c.command) for c in before.commands}
    is_ = {(c.target, c.command) for c in now.commands}
    gone = [f"`{escape(t)}`: `{escape(c)}`" for t, c in sorted(was - is_)]
    new = [f"`{escape(t)}`: `{escape(c)}`" for t, c in sorted(is_ - was)]
    lines = ["the plan changed since it was approved"]
    if gone:
        lines.append("approved, no longer planned: " + "; ".join(gone))
    if new:
        lines.append("planned now, not approved: " + "; ".join(new))
    return "\n".join(lines)


# -- the records ---------------------------------------------------------------------------------

# KEYS[1] the request hash, KEYS[2] its notify list. ARGV: kind (approve|reject|expired|withdrawn),
# field, signed value, approvals required, list TTL. Records at most one decision and only while
# the request is open; answers {status, detail}.
_RECORD_SCRIPT = """
if redis.call('hexists', KEYS[1], 'request') == 0 then return {'missing', ''} end
local approvals = 0
for _, f in ipairs(redis.call('hkeys', KEYS[1])) do
  if f == 'd:expired' or f == 'd:withdrawn' or string.sub(f, 1, 9) == 'd:reject:' then return {'closed', f} end
  if string.sub(f, 1, 10) == 'd:approve:' then approvals = approvals + 1 end
end
if approvals >= tonumber(ARGV[4]) then return {'closed', 'approved'} end
if redis.call('hexists', KEYS[1], ARGV[2]) == 1 then return {'duplicate', ARGV[2]} end
redis.call('hset', KEYS[1], ARGV[2], ARGV[3])
redis.call('rpush', KEYS[2], ARGV[2])
redis.call('expire', KEYS[2], tonumber(ARGV[5]))
if ARGV[1] == 'approve' then approvals = approvals + 1 end
return {'recorded', tostring(approvals)}
"""


def request_key(request_id: str, prefix: str = "etcdbot") -> str:
    return f"{prefix}:approval:{request_id}"


class ApprovalRecords:
    """Approval requests and decisions in Redis, signed and checked. Both the runner (to verify)
    and the approvals (to ask and decide) read through this."""

    def __init__(self, *, redis: aioredis.Redis, key: bytes, audit: Audit, prefix: str = "etcdbot") -> None:
        self._redis = redis
        self._key = key
        self._audit = audit
        self._prefix = prefix
        self._record = redis.register_script(_RECORD_SCRIPT)

    def key(self, request_id: str) -> str:
        return request_key(request_id, self._prefix)

    def notify_key(self, request_id: str) -> str:
        return f"{self.key(request_id)}:notify"

    async def create(self, request: ApprovalRequest) -> None:
        key = self.key(request.id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "request", sign(self._key, request.for_storage()))
            pipe.expire(key, RUN_TTL_SECONDS)
            await pipe.execute()

    async def set_message(self, request_id: str, ts: str) -> None:
        await self._redis.hset(self.key(request_id), "message_ts", ts)

    async def state(self, request_id: str) -> ApprovalState | None:
        """The request and its valid decisions; None if there is no readable, signed request.
        Anything unsigned or broken is refused, audited and moved aside."""
        key = self.key(request_id)
        raw = {_text(k): v for k, v in (await self._redis.hgetall(key)).items()}
        if "request" not in raw:
            return None
        try:
            request = ApprovalRequest.from_storage(unsign(self._key, raw["request"]))
            if request.id != request_id:
                raise ValueError(f"the record says it is request {request.id}")
        except (BadSignature, ValueError, KeyError, TypeError) as exc:
            await self._refuse(kind="approval", request_id=request_id, key=key, value=None, cluster="",
                               reason=f"approval request refused: {exc}")
            return None
        approvals: list[Decision] = []
        closing: Decision | None = None
        for name, value in sorted(raw.items()):
            if not name.startswith("d:"):
                continue
            try:
                decision = Decision.from_storage(unsign(self._key, value))
                if decision.field != name:
                    raise ValueError(f"a decision of {decision.by or 'nobody'} filed as {name}")
                if (decision.request_id, decision.run_id, decision.digest) != (request.id, request.plan.run_id, request.digest):
                    raise ValueError("a decision on another request, run or plan")
                if decision.outcome is Outcome.APPROVED and decision.by == request.plan.requester:
                    raise ValueError("an approval by the requester")
            except (BadSignature, ValueError, KeyError, TypeError) as exc:
                await self._refuse(kind="decision", request_id=request_id, key=key, value=value, field_name=name,
                                   cluster=request.plan.cluster, reason=f"approval decision refused: {exc}")
                continue
            if decision.outcome is Outcome.APPROVED:
                approvals.append(decision)
            elif closing is None or decision.at < closing.at:
                closing = decision
        approvals.sort(key=lambda d: d.at)
        ts = raw.get("message_ts")
        return ApprovalState(request=request, approvals=tuple(approvals), closing=closing,
                             message_ts=_text(ts) if ts is not None else None)

    async def record(self, decision: Decision, *, required: int) -> tuple[str, str]:
        """Records `decision` if the request is still open: ("recorded", approvals so far),
        ("closed", what closed it), ("duplicate", field) or ("missing", "")."""
        kind = {Outcome.APPROVED: "approve", Outcome.REJECTED: "reject"}.get(decision.outcome, decision.outcome.value)
        status, detail = await self._record(
            keys=[self.key(decision.request_id), self.notify_key(decision.request_id)],
            args=[kind, decision.field, sign(self._key, decision.for_storage()), required, 3600],
        )
        return _text(status), _text(detail)

    async def _refuse(self, *, kind: str, request_id: str, key: str, value: Any, cluster: str, reason: str,
                      field_name: str = "") -> None:
        if field_name and not await self._redis.hdel(key, field_name):
            return  # another reader refused it first
        note = await quarantine(self._redis, kind=kind, record_id=request_id, key=f"{key}#{field_name}" if field_name else key,
                                reason=reason, cluster=cluster, value=value if field_name else None, prefix=self._prefix)
        if note is None:
            return
        await self._audit.record(
            cluster=cluster or UNKNOWN_CLUSTER, event="record.quarantined", actor="", kind=kind, record=request_id,
            key=note.key, moved_to=note.moved_to, reason=reason,
        )


# -- who may approve -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ApproverSpec:
    """The approvers of one cluster: members of a Slack user group, and/or listed user IDs."""

    usergroup: str | None = None
    users: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = ([f"@{self.usergroup}"] if self.usergroup else []) + [f"<@{u}>" for u in self.users]
        return " or ".join(parts) if parts else "nobody (no approvers configured)"


class Approvers(Protocol):
    async def is_approver(self, user_id: str, *, cluster: str) -> bool: ...

    def describe(self, cluster: str) -> str: ...


class SlackApprovers:
    """Who may approve, per cluster: listed user IDs, or members of a user group read from Slack
    (usergroups.list, usergroups.users.list) when the button is pressed. A burst of presses
    shares one answer, never one older than `cache_seconds` (at most 10 s)."""

    def __init__(self, *, client: AsyncWebClient, spec_of: Callable[[str], ApproverSpec],
                 cache_seconds: float = MAX_MEMBERSHIP_AGE) -> None:
        self._client = client
        self._spec_of = spec_of
        self._cache_seconds = min(max(cache_seconds, 0.0), MAX_MEMBERSHIP_AGE)
        self._members: dict[str, tuple[float, frozenset[str]]] = {}  # group -> (read at, members)

    def describe(self, cluster: str) -> str:
        return self._spec_of(cluster).describe()

    async def is_approver(self, user_id: str, *, cluster: str) -> bool:
        spec = self._spec_of(cluster)
        if user_id in spec.users:
            return True
        if not spec.usergroup:
            return False
        return user_id in await self._group_members(spec.usergroup)

    async def _group_members(self, group: str) -> frozenset[str]:
        now = time.monotonic()
        cached = self._members.get(group)
        if cached is not None and now - cached[0] <= self._cache_seconds:
            return cached[1]
        members = await self._fetch(group)
        self._members[group] = (time.monotonic(), members)
        return members

    async def _fetch(self, group: str) -> frozenset[str]:
        group_id = group.lstrip("@")
        if not group_id.startswith("S"):
            groups = (await self._client.usergroups_list())["usergroups"]
            match = next((g for g in groups if g.get("handle") == group_id), None)
            if match is None:
                log.error("approvals.usergroup_not_found", usergroup=group)
                return frozenset()
            group_id = match["id"]
        users = (await self._client.usergroups_users_list(usergroup=group_id))["users"]
        return frozenset(users)


# -- asking and deciding -------------------------------------------------------------------------


@dataclass(frozen=True)
class WaitAnswer:
    """How a request ended, as the approvals saw it (the runner checks the records anyway)."""

    request_id: str
    outcome: Outcome
    by: str = ""  # who rejected or withdrew
    approvers: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class DecideAnswer:
    """What the person who pressed a button is told."""

    accepted: bool
    message: str
    decision: Decision | None = None


class Approvals(Protocol):
    """What the runner needs: ask (and post the request), wait for its end, withdraw it when the
    run is aborted, and pass on a button press."""

    async def ask(self, *, run: Run, plan: ApprovalPlan, note: str = "") -> ApprovalRequest: ...

    async def wait(self, *, run: Run, request: ApprovalRequest) -> WaitAnswer: ...

    async def withdraw(self, *, run: Run, request_id: str, by: str) -> None: ...

    async def decide(self, *, request_id: str, digest: str, approve: bool, by: str) -> DecideAnswer: ...


def button_value(request: ApprovalRequest) -> str:
    """What an Approve/Reject button carries: the request and the digest of the plan it shows."""
    return _canonical({"req": request.id, "digest": request.digest, "run": request.plan.run_id})


def _command_lines(step: StepPlan) -> list[str]:
    lines = [f"• `{escape(c.target)}`: `{escape(c.command)}`" for c in step.commands]
    return lines or ["• no command (bot-side step)"]


def render_request(request: ApprovalRequest, *, state: ApprovalState | None = None) -> list[Block]:
    """The request in the run's thread: cluster, hosts, commands, parameters (the backup),
    requester, expiry and who may approve; Approve asks for confirmation first."""
    plan = request.plan
    params = ", ".join(f"{k}=`{escape(str(v))}`" for k, v in sorted(plan.parameters.items())) or "none"
    titles = ", ".join(f"*{escape(s.title)}*" for s in plan.steps)
    head = (
        f":raised_hand: *Approval needed* on `{plan.cluster}` for {titles} "
        f"(run `{plan.run_id}`, {escape(plan.procedure_title)}, started by {who(plan.requester)})\n"
        f"*Hosts:* {', '.join(f'`{escape(t)}`' for t in plan.targets) or 'none'}\n"
        f"*Parameters:* {params}\n"
        f"*Needs:* {request.required} approval{'s' if request.required > 1 else ''} from {request.approvers}, "
        f"not {who(plan.requester)} · *expires* {slack_time(request.expires_at)} (counted when the step starts)"
    )
    blocks: list[Block] = []
    if request.note:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=_clip(f":warning: {request.note}", 3000))))
    blocks.insert(0, SectionBlock(text=MarkdownTextObject(text=_clip(head, 3000))))
    for step in plan.steps[:40]:
        text = f"*{escape(step.title)}* will send:\n" + "\n".join(_command_lines(step))
        blocks.append(SectionBlock(text=MarkdownTextObject(text=_clip(text, 3000))))
    outcome = state.outcome if state is not None else None
    approvers = state.approvers if state is not None else ()
    if approvers:
        got = ", ".join(f"<@{a}>" for a in approvers)
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=f"Approved by {got} ({len(approvers)} of {request.required})")]))
    if outcome is None:
        value = button_value(request)
        confirm = ConfirmObject(
            title="Approve these commands?",
            text=_clip(f"On {plan.cluster}: " + "; ".join(f"{s.title} ({len(s.commands)} commands)" for s in plan.steps), 300),
            confirm="Approve",
            deny="Cancel",
        )
        blocks.append(
            ActionsBlock(
                block_id=f"approval:{request.id}",
                elements=[
                    ButtonElement(text="Approve", action_id="approval_approve", value=value, style="primary", confirm=confirm),
                    ButtonElement(text="Reject", action_id="approval_reject", value=value, style="danger"),
                ],
            )
        )
    else:
        closing = state.closing if state is not None else None
        by = f" by <@{closing.by}>" if closing is not None and closing.by else ""
        at = closing.at if closing is not None else (state.approvals[-1].at if state and state.approvals else time.time())
        blocks.append(SectionBlock(text=MarkdownTextObject(text=f"*{outcome.value.capitalize()}*{by} {slack_time(at)}")))
    return blocks[:50]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RedisApprovals:
    """Approval requests recorded in Redis and asked in the run's thread."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        sender: ThrottledSender,
        approvers: Approvers,
        audit: Audit,
        policy: ApprovalPolicy,
        poll: float = 5.0,
        prefix: str = "etcdbot",
    ) -> None:
        self._redis = redis
        self._sender = sender
        self._approvers = approvers
        self._audit = audit
        self.policy = policy
        self._poll = poll
        self.records = ApprovalRecords(redis=redis, key=policy.key, audit=audit, prefix=prefix)

    async def ask(self, *, run: Run, plan: ApprovalPlan, note: str = "") -> ApprovalRequest:
        now = time.time()
        request = ApprovalRequest(
            id=secrets.token_hex(8), plan=plan, required=self.policy.required_for(plan.procedure),
            requested_at=now, expires_at=now + self.policy.expiry, approvers=self._approvers.describe(run.cluster),
            note=note,
        )
        await self.records.create(request)
        await self._audit.record(
            cluster=run.cluster, event="approval.requested", actor=run.requester, run_id=run.id,
            request=request.id, steps=[s.step_id for s in plan.steps], digest=request.digest,
            targets=list(plan.targets), commands=[[c.target, c.command] for s in plan.steps for c in s.commands],
            required=request.required, expires_at=request.expires_at, note=note,
        )
        titles = ", ".join(s.title for s in plan.steps)
        ts = await self._sender.post(
            channel=run.channel, text=f"Approval needed: {titles} (run {run.id})", blocks=render_request(request),
            thread_ts=run.message_ts,
        )
        await self.records.set_message(request.id, ts)
        return request

    async def wait(self, *, run: Run, request: ApprovalRequest) -> WaitAnswer:
        """Waits until the request is decided or expires; keeps its message up to date."""
        shown: tuple[str, ...] = ()
        notify = self.records.notify_key(request.id)
        while True:
            state = await self.records.state(request.id)
            if state is None:
                return WaitAnswer(request_id=request.id, outcome=Outcome.EXPIRED,
                                  reason="the approval request is no longer on record")
            outcome = state.outcome
            if state.approvers != shown or outcome is not None:
                shown = state.approvers
                self._show(run, state)
            if outcome is not None:
                closing = state.closing
                return WaitAnswer(request_id=request.id, outcome=outcome, by=closing.by if closing else "",
                                  approvers=state.approvers)
            remaining = request.expires_at - time.time()
            if remaining <= 0:
                expired = Decision(request_id=request.id, run_id=run.id, digest=request.digest,
                                   outcome=Outcome.EXPIRED, by="", at=time.time())
                status, _ = await self.records.record(expired, required=request.required)
                if status == "recorded":
                    await self._audit.record(
                        cluster=run.cluster, event="approval.decided", actor="", run_id=run.id, request=request.id,
                        outcome=Outcome.EXPIRED.value, digest=request.digest,
                    )
                continue  # read back whatever won
            await self._redis.blpop([notify], timeout=max(0.01, min(remaining, self._poll)))

    def _show(self, run: Run, state: ApprovalState) -> None:
        if state.message_ts:
            titles = ", ".join(s.title for s in state.request.plan.steps)
            outcome = state.outcome.value if state.outcome else f"{len(state.approvals)} of {state.request.required}"
            self._sender.update(channel=run.channel, ts=state.message_ts, text=f"Approval {outcome}: {titles}",
                                blocks=render_request(state.request, state=state))

    async def decide(self, *, request_id: str, digest: str, approve: bool, by: str) -> DecideAnswer:
        """A button press. Approve needs an approver of the cluster who is not the requester, on the
        plan the request shows, before it expires; Reject may come from an approver or from the
        requester (who may always withdraw their own request)."""
        state = await self.records.state(request_id)
        if state is None:
            return DecideAnswer(accepted=False, message="There is no such approval request on record; nothing was recorded.")
        request = state.request
        plan = request.plan
        if not hmac.compare_digest(digest, request.digest):
            return DecideAnswer(accepted=False, message="This button is for another plan than the request on record; "
                                                        "nothing was recorded.")
        if state.outcome is not None:
            return DecideAnswer(accepted=False, message=_closed_text(state))
        if time.time() >= request.expires_at:
            return DecideAnswer(accepted=False, message="This approval request has expired; nothing was recorded.")
        if approve and by == plan.requester:
            return DecideAnswer(
                accepted=False,
                message=f"You started this run, so you cannot approve it: {request.approvers} must approve.",
            )
        if approve and by in state.approvers:
            missing = request.required - len(state.approvers)
            return DecideAnswer(accepted=False, message=f"You already approved; {missing} more approval(s) needed "
                                                        "from other approvers.")
        if (approve or by != plan.requester) and not await self._approvers.is_approver(by, cluster=plan.cluster):
            return DecideAnswer(accepted=False, message=f"Only {request.approvers} can approve or reject this step.")
        outcome = Outcome.APPROVED if approve else Outcome.REJECTED
        decision = Decision(request_id=request.id, run_id=plan.run_id, digest=request.digest, outcome=outcome, by=by,
                            at=time.time())
        status, detail = await self.records.record(decision, required=request.required)
        if status != "recorded":
            again = await self.records.state(request_id)
            text = _closed_text(again) if again is not None and again.outcome is not None else f"Nothing recorded ({status})."
            return DecideAnswer(accepted=False, message=text)
        await self._audit.record(
            cluster=plan.cluster, event="approval.decided", actor=by, run_id=plan.run_id, request=request.id,
            outcome=outcome.value, digest=request.digest, steps=[s.step_id for s in plan.steps],
        )
        titles = ", ".join(s.title for s in plan.steps)
        if approve and int(detail) < request.required:
            text = f"Approved ({detail} of {request.required}): {titles} of run {plan.run_id}."
        else:
            text = f"{outcome.value.capitalize()}: {titles} of run {plan.run_id}."
        return DecideAnswer(accepted=True, message=text, decision=decision)

    async def withdraw(self, *, run: Run, request_id: str, by: str) -> None:
        state = await self.records.state(request_id)
        if state is None or state.outcome is not None:
            return
        decision = Decision(request_id=request_id, run_id=run.id, digest=state.request.digest,
                            outcome=Outcome.WITHDRAWN, by=by, at=time.time())
        status, _ = await self.records.record(decision, required=state.request.required)
        if status == "recorded":
            await self._audit.record(
                cluster=run.cluster, event="approval.decided", actor=by, run_id=run.id, request=request_id,
                outcome=Outcome.WITHDRAWN.value, digest=state.request.digest,
            )


def _closed_text(state: ApprovalState) -> str:
    closing = state.closing
    if closing is not None:
        who_ = f" by <@{closing.by}>" if closing.by else ""
        return f"Already {closing.outcome.value}{who_}; nothing was recorded."
    got = ", ".join(f"<@{a}>" for a in state.approvers)
    return f"Already approved by {got}; nothing was recorded."


def plan_for(run: Run, steps: Sequence[tuple[StepId, str, Sequence[PlannedCommand]]]) -> ApprovalPlan:
    """The approval plan of `steps` (id, title, commands) of `run`."""
    return ApprovalPlan(
        run_id=run.id, cluster=run.cluster, procedure=run.procedure, procedure_title=run.procedure_title,
        requester=run.requester, parameters=dict(run.parameters),
        steps=tuple(StepPlan(step_id=i, title=t, commands=tuple(c)) for i, t, c in steps),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
