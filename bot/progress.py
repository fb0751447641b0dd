"""A run's progress in Slack: one message per run, edited as each step starts and ends, and one
sender that keeps those edits within Slack's rate limits.

Why a sender of our own: in an incident every step edit is a `chat.update` on the same channel,
and Slack allows about one a second there, answering 429 with `Retry-After` past it. The edits
are snapshots, so an older one that has not gone out yet is worth nothing once a newer one
exists: `ThrottledSender.update()` keeps only the latest pending content per message, one worker
per channel paces calls and honours `Retry-After`, and `flush()` waits until the latest content
of a message has been delivered. So intermediate states may be skipped; the final state never is.
New messages (`post()`) are never merged: each is sent once, in order, and returns its `ts`.

Rendering is pure: `render_run()` and `render_plan()` turn records into Block Kit (slack_sdk's
models), so tests read blocks without a Slack.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slack_sdk.errors import SlackApiError
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

from bot.log import get_logger
from bot.procedure import PlannedCommand, Procedure, StepKind
from bot.slacktext import escape
from bot.store import Run, RunState, StepRecord, StepState
from bot.tasks import cancel_and_wait

log = get_logger(__name__)

# -- rendering ---------------------------------------------------------------------------------

RUN_ICONS = {
    RunState.PENDING: ":hourglass:",
    RunState.RUNNING: ":arrows_counterclockwise:",
    RunState.WAITING_APPROVAL: ":raised_hand:",
    RunState.SUCCEEDED: ":white_check_mark:",
    RunState.FAILED: ":x:",
    RunState.ABORTED: ":no_entry_sign:",
    RunState.INTERRUPTED: ":warning:",
}
STEP_ICONS = {
    StepState.PENDING: ":white_circle:",
    StepState.RUNNING: ":arrows_counterclockwise:",
    StepState.WAITING_APPROVAL: ":raised_hand:",
    StepState.SUCCEEDED: ":white_check_mark:",
    StepState.FAILED: ":x:",
    StepState.INTERRUPTED: ":warning:",
}
KIND_LABELS = {StepKind.READ: "read", StepKind.CHANGE: "change", StepKind.DESTRUCTIVE: "*destructive*"}
SECTION_LIMIT = 3000  # characters of a section's text
THREAD_CHUNK = 3500  # characters of command output per thread message


def who(requester: str) -> str:
    """A Slack user id as a mention; anything else (the "scheduler") as plain text, since
    `<@scheduler>` is no user and Slack would show it as a broken mention."""
    return f"<@{requester}>" if re.fullmatch(r"[UW][A-Z0-9]{2,}", requester) else requester


def slack_time(epoch: float) -> str:
    """A time every reader sees in their own time zone (UTC as the fallback text)."""
    fallback = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    return f"<!date^{int(epoch)}^{{date_short_pretty}} {{time_secs}}|{fallback}>"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs} s"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _step_line(number: int, record: StepRecord) -> str:
    parts = [f"{STEP_ICONS[record.state]} *{number}. {record.title}* ({KIND_LABELS[record.kind]})"]
    if record.state is not StepState.PENDING:
        parts.append(record.state.value.replace("_", " "))
    duration = format_duration(record.duration) if record.started_at else ""
    if duration:
        parts.append(duration)
    if record.attempts > 1:
        parts.append(f"attempt {record.attempts}")
    if record.approved_by:
        parts.append("approved by " + ", ".join(f"<@{a}>" for a in record.approved_by.split(",") if a))
    line = " · ".join(parts)
    detail = record.error or record.summary or record.note
    if detail:
        line += f"\n> {_clip(detail, 600)}"
    return line


def run_text(run: Run) -> str:
    """The notification text (and the fallback for clients that do not show blocks)."""
    return f"{run.procedure_title} on {run.cluster}: {run.state.value.replace('_', ' ')} (run {run.id})"


def render_run(run: Run) -> list[Block]:
    """The progress message of a run, in every state."""
    state = run.state.value.replace("_", " ")
    head = (
        f"{RUN_ICONS[run.state]} *{run.procedure_title}* on `{run.cluster}` · *{state}*\n"
        f"Run `{run.id}` started by {who(run.requester)} {slack_time(run.created_at)}"
    )
    if run.parameters:
        params = ", ".join(f"{k}=`{v}`" for k, v in sorted(run.parameters.items()))
        head += f"\nParameters: {params}"
    blocks: list[Block] = [SectionBlock(text=MarkdownTextObject(text=_clip(head, SECTION_LIMIT)))]
    for number, record in enumerate(run.steps, start=1):
        blocks.append(SectionBlock(text=MarkdownTextObject(text=_clip(_step_line(number, record), SECTION_LIMIT))))
    blocks.extend(_outcome_blocks(run))
    actions = _run_actions(run)
    if actions:
        blocks.append(ActionsBlock(block_id=f"run:{run.id}", elements=actions))
    stamp = f"Updated {slack_time(run.updated_at)}"
    if run.finished_at:
        stamp += f" · took {format_duration(run.finished_at - run.created_at)}"
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=stamp)]))
    return blocks


def _outcome_blocks(run: Run) -> list[Block]:
    lines: list[str] = []
    if run.state is RunState.INTERRUPTED:
        current = run.current_step
        where = f" during *{current.title}*" if current else ""
        if not run.error:
            lines.append(f"The bot restarted{where}. Press *Resume* to continue or *Abort* to stop here.")
        else:
            lines.append(f"The run was interrupted{where}. Press *Resume* to continue or *Abort* to stop here.")
        if current is not None and current.kind is StepKind.DESTRUCTIVE and current.state is StepState.INTERRUPTED:
            lines.append(
                f"*{current.title}* was running and may have partly happened. *Resume* asks a fresh approval "
                "(another approver, not the requester) before it runs again."
            )
            if current.planned:
                sent = "; ".join(f"`{escape(c.target)}`: `{escape(c.command)}`" for c in current.planned[:10])
                lines.append(f"It was about to send: {sent}")
        if run.confirm_rerun and current is not None:
            lines.append(
                f"*{current.title}* may have partly run and is not safe to repeat automatically. "
                "Check the cluster, then press *Re-run step anyway* to run it again, or *Abort*."
            )
    if run.error:
        lines.append(f"*What went wrong:* {run.error}")
    # What to do next gets a section of its own: a restore stopped half way says it per host.
    after = [f"*What to do next:* {run.next_action}"] if run.next_action else []
    if run.state in (RunState.FAILED, RunState.ABORTED):
        if run.ended_by:
            after.append(f"Stopped by <@{run.ended_by}>.")
        done = ", ".join(r.title for r in run.done_steps()) or "nothing"
        not_done = ", ".join(r.title for r in run.not_done_steps()) or "nothing"
        after.append(f"*Done:* {done}\n*Not done:* {not_done}")
    return [SectionBlock(text=MarkdownTextObject(text=_clip("\n".join(part), SECTION_LIMIT)))
            for part in (lines, after) if part]


def _button(*, text: str, action_id: str, value: str, style: str | None = None, confirm: str = "") -> ButtonElement:
    dialog = ConfirmObject(title="Are you sure?", text=confirm, confirm=text, deny="Cancel") if confirm else None
    return ButtonElement(text=text, action_id=action_id, value=value, style=style, confirm=dialog)


def _run_actions(run: Run) -> list[ButtonElement]:
    abort = _button(
        text="Abort",
        action_id="run_abort",
        value=run.id,
        style="danger",
        confirm="The run stops before its next step. A step already running finishes first.",
    )
    if run.state in (RunState.RUNNING, RunState.WAITING_APPROVAL, RunState.PENDING):
        return [abort]
    if run.state is RunState.INTERRUPTED:
        if run.confirm_rerun:
            rerun = _button(
                text="Re-run step anyway",
                action_id="run_rerun_step",
                value=run.id,
                style="danger",
                confirm="This step may already have partly run. Run it again?",
            )
            return [rerun, abort]
        return [_button(text="Resume", action_id="run_resume", value=run.id, style="primary"), abort]
    return []


def render_plan(
    *,
    procedure: Procedure,
    cluster: str,
    parameters: Mapping[str, Any],
    plan: Sequence[tuple[int, str, StepKind, Sequence[PlannedCommand]]],
) -> list[Block]:
    """The `--dry-run` answer: every step, its kind and every command it would send."""
    head = f":memo: *Dry run: {procedure.title}* on `{cluster}` — nothing was executed, no lock was taken."
    if parameters:
        head += "\nParameters: " + ", ".join(f"{k}=`{escape(str(v))}`" for k, v in sorted(parameters.items()))
    blocks: list[Block] = [SectionBlock(text=MarkdownTextObject(text=_clip(head, SECTION_LIMIT)))]
    for number, title, kind, commands in plan:
        lines = [f"*{number}. {title}* ({KIND_LABELS[kind]})"]
        if kind is StepKind.DESTRUCTIVE:
            lines[0] += " — needs a second person's approval"
        lines += [f"• `{escape(c.target)}`: `{escape(c.command)}`" for c in commands] or ["• no command (bot-side step)"]
        blocks.append(SectionBlock(text=MarkdownTextObject(text=_clip("\n".join(lines), SECTION_LIMIT))))
    return blocks[:50]


def output_chunks(*, title: str, output: str) -> list[str]:
    """Long command output as thread messages of code blocks, each within Slack's limits."""
    body = escape(output.replace("```", "'''"))
    chunks = [body[i : i + THREAD_CHUNK] for i in range(0, len(body), THREAD_CHUNK)] or [""]
    total = len(chunks)
    return [
        f"*{title}*" + (f" ({n}/{total})" if total > 1 else "") + f"\n```{chunk}```"
        for n, chunk in enumerate(chunks, start=1)
    ]


# -- sending -------------------------------------------------------------------------------------


# Asked right before an edit goes out: is it still ours to send? (A run message another bot
# instance has taken over must not be overwritten by a stale snapshot queued before a pause.)
Guard = Callable[[], Awaitable[bool]]


@dataclass
class _Content:
    text: str
    blocks: Sequence[Block | dict] | None
    version: int
    attempts: int = 0
    guard: Guard | None = None


@dataclass
class _Post:
    text: str
    blocks: Sequence[Block | dict] | None
    thread_ts: str | None
    done: asyncio.Future[str]
    attempts: int = 0


@dataclass
class _Channel:
    updates: dict[str, _Content] = field(default_factory=dict)  # ts -> latest pending content
    posts: deque[_Post] = field(default_factory=deque)
    not_before: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None


def _retry_after(error: SlackApiError) -> float | None:
    response = error.response
    if getattr(response, "status_code", None) != 429:
        return None
    headers = {str(k).lower(): v for k, v in (getattr(response, "headers", None) or {}).items()}
    value = headers.get("retry-after")
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0


class ThrottledSender:
    """All the bot's progress traffic to Slack goes through one of these (one per process)."""

    def __init__(
        self,
        *,
        client: AsyncWebClient,
        min_interval: float = 1.0,
        max_attempts: int = 5,
        max_retry_after: float = 120.0,
    ) -> None:
        self._client = client
        self._min_interval = min_interval
        self._max_attempts = max_attempts
        self._max_retry_after = max_retry_after
        self._channels: dict[str, _Channel] = {}
        self._wanted: dict[tuple[str, str], int] = {}
        self._settled: dict[tuple[str, str], int] = {}  # delivered, or given up on
        self._changed = asyncio.Condition()
        self._version = 0
        self._closed = False

    async def post(
        self, *, channel: str, text: str, blocks: Sequence[Block | dict] | None = None, thread_ts: str | None = None
    ) -> str:
        """Sends a new message (in its channel's turn) and returns its ts. Raises SlackApiError."""
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        chan = self._channel(channel)
        chan.posts.append(_Post(text=text, blocks=blocks, thread_ts=thread_ts, done=done))
        chan.wake.set()
        return await done

    def update(
        self, *, channel: str, ts: str, text: str, blocks: Sequence[Block | dict] | None = None, guard: Guard | None = None
    ) -> None:
        """Queues an edit; replaces any edit of the same message that has not gone out yet. With
        `guard`, the edit is dropped if the guard answers False when its turn comes."""
        self._version += 1
        chan = self._channel(channel)
        chan.updates.pop(ts, None)  # re-insert at the end: fairness between messages of a channel
        chan.updates[ts] = _Content(text=text, blocks=blocks, version=self._version, guard=guard)
        self._wanted[(channel, ts)] = self._version
        chan.wake.set()

    async def flush(self, *, channel: str, ts: str, timeout: float = 300.0) -> None:
        """Waits until the latest queued content of this message was delivered (or given up on)."""
        key = (channel, ts)
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self._settled.get(key, 0) >= self._wanted.get(key, 0))

    async def close(self) -> None:
        self._closed = True
        for chan in self._channels.values():
            if chan.worker is not None:
                await cancel_and_wait(chan.worker)
            for post in chan.posts:
                if not post.done.done():
                    post.done.cancel()

    def _channel(self, channel: str) -> _Channel:
        if self._closed:
            raise RuntimeError("ThrottledSender is closed")
        chan = self._channels.get(channel)
        if chan is None:
            chan = self._channels[channel] = _Channel()
        if chan.worker is None or chan.worker.done():
            chan.worker = asyncio.create_task(self._work(channel, chan), name=f"slack-sender-{channel}")
        return chan

    async def _work(self, channel: str, chan: _Channel) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not chan.posts and not chan.updates:
                chan.wake.clear()
                await chan.wake.wait()
                continue
            delay = chan.not_before - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing: Slack's limit, or the Retry-After it gave us
                continue
            if chan.posts:
                await self._send_post(channel, chan, chan.posts.popleft())
            else:
                ts = next(iter(chan.updates))
                await self._send_update(channel, chan, ts, chan.updates.pop(ts))
            chan.not_before = max(chan.not_before, loop.time() + self._min_interval)

    async def _send_post(self, channel: str, chan: _Channel, post: _Post) -> None:
        if post.done.done():  # the caller went away
            return
        post.attempts += 1
        try:
            response = await self._client.chat_postMessage(
                channel=channel, text=post.text, blocks=post.blocks, thread_ts=post.thread_ts
            )
        except Exception as exc:
            if self._requeue(chan, exc, attempts=post.attempts):
                chan.posts.appendleft(post)
            elif not post.done.done():
                post.done.set_exception(exc)
            return
        if not post.done.done():
            post.done.set_result(str(response["ts"]))

    async def _send_update(self, channel: str, chan: _Channel, ts: str, content: _Content) -> None:
        content.attempts += 1
        if content.guard is not None:
            try:
                wanted = await content.guard()
            except Exception as exc:  # cannot tell (Redis away): showing progress beats showing nothing
                log.warning("slack.update_guard_failed", channel=channel, ts=ts, error=str(exc))
                wanted = True
            if not wanted:
                await self._settle(channel, ts, content.version)
                return
        try:
            await self._client.chat_update(channel=channel, ts=ts, text=content.text, blocks=content.blocks)
        except Exception as exc:
            if self._requeue(chan, exc, attempts=content.attempts):
                chan.updates.setdefault(ts, content)  # unless a newer edit arrived meanwhile
                return
            log.error("slack.update_failed", channel=channel, ts=ts, error=str(exc))
        await self._settle(channel, ts, content.version)

    def _requeue(self, chan: _Channel, exc: Exception, *, attempts: int) -> bool:
        """Decides whether to try again, and when (sets the channel's `not_before`)."""
        loop = asyncio.get_running_loop()
        if isinstance(exc, SlackApiError):
            wait = _retry_after(exc)
            if wait is None:
                return False  # a real error answer (channel_not_found, ...): trying again won't help
            chan.not_before = loop.time() + min(wait, self._max_retry_after)
            log.info("slack.rate_limited", retry_after=wait)
            return attempts < self._max_attempts * 4  # 429s are expected: be patient with them
        if isinstance(exc, OSError | TimeoutError) or type(exc).__module__.startswith("aiohttp"):
            chan.not_before = loop.time() + min(2.0**attempts, 30.0)
            return attempts < self._max_attempts
        return False

    async def _settle(self, channel: str, ts: str, version: int) -> None:
        key = (channel, ts)
        async with self._changed:
            self._settled[key] = max(self._settled.get(key, 0), version)
            self._changed.notify_all()
