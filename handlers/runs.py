"""Slack in and out for runs: `/etcd-runs`, `/etcd-abort`, and the buttons of run and approval
messages (Resume, Abort, Re-run step anyway, Approve, Reject).

Every listener acks first (Slack wants it within 3 s) and then answers the person ephemerally
through `respond()`; the run's own message is the runner's to edit. Who may use these at all is
the app's authorisation middleware; who may approve is decided by the approvals (bot/approvals.py),
because that rule must hold whichever way a decision arrives.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.models.blocks import Block, MarkdownTextObject, SectionBlock

from bot.audit import RunSummary
from bot.progress import slack_time
from bot.runner import Runner
from bot.slacktext import escape
from bot.store import Quarantined
from handlers.common import counted

RUN_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
# channel id, text after the command -> cluster name, or None when it cannot tell
ClusterResolver = Callable[[str, str], str | None]

STATE_ICONS = {
    "running": ":arrows_counterclockwise:",
    "waiting_approval": ":raised_hand:",
    "succeeded": ":white_check_mark:",
    "failed": ":x:",
    "aborted": ":no_entry_sign:",
    "interrupted": ":warning:",
}


def render_runs(*, cluster: str, runs: Sequence[RunSummary], quarantined: Sequence[Quarantined] = ()) -> list[Block]:
    blocks: list[Block] = []
    if not runs:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=f"No runs on `{cluster}` yet.")))
    else:
        lines = [f"*Recent runs on `{cluster}`*"]
        for run in runs:
            icon = STATE_ICONS.get(run.state, ":grey_question:")
            lines.append(
                f"{icon} `{run.run_id}` {run.procedure} · {run.state.replace('_', ' ')} · "
                f"by <@{run.requester}> {slack_time(run.started_at)}"
            )
        blocks.append(SectionBlock(text=MarkdownTextObject(text="\n".join(lines)[:3000])))
    if quarantined:
        lines = [":biohazard_sign: *Records that could not be read, moved aside* (the bot ignores them; "
                 "inspect them with redis-cli, then delete them)"]
        for note in quarantined:
            lines.append(f"• {note.kind} `{escape(note.record_id)}` {slack_time(note.at)}: {escape(note.reason[:200])} "
                         f"→ `{escape(note.moved_to or 'gone')}`")
        blocks.append(SectionBlock(text=MarkdownTextObject(text="\n".join(lines)[:3000])))
    return blocks


def _action_value(body: dict[str, Any]) -> str:
    return str(body["actions"][0].get("value", ""))


def register(app: AsyncApp, *, runner: Runner, resolve_cluster: ClusterResolver | None = None,
             command_middleware: Sequence[Any] = (), action_middleware: Sequence[Any] = ()) -> None:
    """Adds the listeners. `resolve_cluster(channel_id, text)` picks the cluster of `/etcd-runs`
    when the text names none (the app knows the channel mapping; without it a name is required).
    The middlewares authorise the commands and the buttons that act on a run (approval buttons
    are checked against the approver group by the runner itself)."""

    async def runs_command(ack: Any, command: dict[str, Any], respond: Any) -> None:
        text = (command.get("text") or "").strip()
        cluster = text.split()[0] if text else None
        if cluster is None and resolve_cluster is not None:
            cluster = resolve_cluster(command.get("channel_id", ""), text)
        if not cluster:
            await ack("Which cluster? `/etcd-runs <cluster>`")
            return
        await ack()
        summaries = await runner.recent_runs(cluster=cluster, limit=10)
        aside = await runner.quarantined(cluster=cluster, limit=5)
        await respond(text=f"Recent runs on {cluster}",
                      blocks=render_runs(cluster=cluster, runs=summaries, quarantined=aside))

    async def abort_command(ack: Any, command: dict[str, Any], respond: Any) -> None:
        run_id = (command.get("text") or "").strip()
        if not RUN_ID_RE.fullmatch(run_id):
            await ack("Which run? `/etcd-abort <run>` (the id in the run's message; `/etcd-runs` lists them)")
            return
        await ack()
        answer = await runner.abort(run_id, by=command["user_id"])
        await respond(text=answer.message)

    app.command("/etcd-runs", middleware=list(command_middleware))(counted("/etcd-runs", runs_command))
    app.command("/etcd-abort", middleware=list(command_middleware))(counted("/etcd-abort", abort_command))

    @app.action("run_abort", middleware=list(action_middleware))
    async def abort_button(ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        answer = await runner.abort(_action_value(body), by=body["user"]["id"])
        await respond(text=answer.message, replace_original=False, response_type="ephemeral")

    @app.action("run_resume", middleware=list(action_middleware))
    async def resume_button(ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        answer = await runner.resume(_action_value(body), by=body["user"]["id"])
        await respond(text=answer.message, replace_original=False, response_type="ephemeral")

    @app.action("run_rerun_step", middleware=list(action_middleware))
    async def rerun_button(ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        answer = await runner.resume(_action_value(body), by=body["user"]["id"], rerun_unsafe=True)
        await respond(text=answer.message, replace_original=False, response_type="ephemeral")

    async def decide(*, ack: Any, body: dict[str, Any], respond: Any, approve: bool) -> None:
        await ack()
        try:
            value = json.loads(_action_value(body))
            request_id, digest = str(value["req"]), str(value["digest"])
        except (ValueError, KeyError, TypeError):
            await respond(text="This button carries no approval I can read.", replace_original=False)
            return
        answer = await runner.decide_approval(request_id=request_id, digest=digest, approve=approve,
                                              by=body["user"]["id"])
        await respond(text=answer.message, replace_original=False, response_type="ephemeral")

    @app.action("approval_approve")
    async def approve_button(ack: Any, body: dict[str, Any], respond: Any) -> None:
        await decide(ack=ack, body=body, respond=respond, approve=True)

    @app.action("approval_reject")
    async def reject_button(ack: Any, body: dict[str, Any], respond: Any) -> None:
        await decide(ack=ack, body=body, respond=respond, approve=False)
