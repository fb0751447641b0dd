"""`/etcd-status [cluster]`: ack at once, then ONE message in the channel with the facts and the diagnosis.

The diagnosis comes first because that is what a person in an incident reads; the tables below
it are the evidence, in the document's terms (member list, `oc get pods`, `oc get nodes`,
machines, the etcd operator's conditions), and the footer says which sources answered, how fast,
and which did not (a dead source is marked, not waited on).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import (
    Block,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    SectionBlock,
)

from bot.acks import ACKS
from bot.cluster.etcdctl import human_size
from bot.clusters import Clusters, StatusReport
from bot.config import Settings
from bot.log import get_logger
from handlers.common import (
    CLUSTER_ARG,
    CommandSpec,
    command_context,
    escape,
    parse_for_cluster,
)
from procedures.diagnosis import Diagnosis, State
from procedures.facts import ClusterFacts, ContainerLog, SourceState

log = get_logger("etcdbot.status")

SPEC = CommandSpec("/etcd-status", (CLUSTER_ARG,))
SECTION_LIMIT = 2900  # Slack allows 3000 characters in a section's text

STATE_ICON = {
    State.HEALTHY: ":large_green_circle:",
    State.ROLLOUT: ":large_blue_circle:",
    State.EXPECTED_BACK: ":large_blue_circle:",
    State.ATTENTION: ":large_yellow_circle:",
    State.MEMBER_UNHEALTHY: ":large_yellow_circle:",
    State.UNKNOWN: ":white_circle:",
    State.EXTRA_MEMBERS: ":red_circle:",
    State.QUORUM_LOST: ":red_circle:",
}
SOURCE_ICON = {SourceState.OK: "✓", SourceState.PARTIAL: "◐", SourceState.FAILED: "✗", SourceState.TIMEOUT: "⏱",
               SourceState.SKIPPED: "–"}


def _table(rows: Sequence[Sequence[str]]) -> str:
    """A monospaced table inside a code block, cut to fit a section."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    text = "\n".join(lines)
    if len(text) > SECTION_LIMIT - 100:
        text = text[: SECTION_LIMIT - 120] + "\n…"
    return f"```\n{escape(text)}\n```"


def _yes(value: bool | None, *, yes: str = "yes", no: str = "NO") -> str:
    return "?" if value is None else (yes if value else no)


def _section(title: str, body: str) -> SectionBlock:
    return SectionBlock(text=MarkdownTextObject(text=f"*{title}*\n{body}"[:SECTION_LIMIT]))


def _log_body(found: ContainerLog) -> str:
    if found.error:
        return f"_could not read it: {escape(found.error)}_"
    reason = f"*{escape(found.reason)}*\n" if found.reason else ""
    lines = "\n".join(found.lines)
    if len(lines) > SECTION_LIMIT - 400:
        lines = "…" + lines[-(SECTION_LIMIT - 400):]
    return f"{reason}```\n{escape(lines)}\n```"


def render_status(facts: ClusterFacts, diagnosis: Diagnosis) -> list[Block]:
    """The status message as Block Kit blocks (pure: tested on ClusterFacts values)."""
    icon = STATE_ICON.get(diagnosis.state, ":red_circle:")
    version = f"OpenShift {facts.version}" if facts.version else "version unknown"
    api = "API available" if facts.api_available else "*API unavailable*: read from the masters over SSH"
    blocks: list[Block] = [
        HeaderBlock(text=f"etcd on {facts.cluster}"[:150]),
        SectionBlock(text=MarkdownTextObject(text=f"{icon} {escape(diagnosis.summary)}"[:SECTION_LIMIT])),
        ContextBlock(elements=[MarkdownTextObject(
            text=f"Cluster `{facts.cluster}` · {version} · {api} · procedure: {escape(diagnosis.procedure)}")]),
    ]
    if diagnosis.next_command:
        blocks.append(_section("Next", f"`{escape(diagnosis.next_command)}`"))
    for found in facts.logs[:3]:
        blocks.append(_section(f"Why etcd on {found.node} fails ({escape(found.source)})", _log_body(found)))
    blocks.append(DividerBlock())
    message = facts.members_available_message
    blocks.append(_section("EtcdMembersAvailable", escape(message) if message else "_not read (API unavailable)_"
                           if not facts.api_available else "_condition not set_"))

    if facts.members:
        rows = [("NAME", "ID", "ENDPOINT", "HEALTHY", "LEADER", "DB SIZE", "REVISION")]
        for m in facts.members:
            rows.append((m.name, m.id, m.endpoint or "-", _yes(m.healthy), _yes(m.leader, no="no"),
                         human_size(m.db_size) if m.db_size is not None else "-",
                         str(m.revision) if m.revision is not None else "-"))
        via = f" (etcdctl, {facts.etcdctl_via})" if facts.etcdctl_via else ""
        blocks.append(_section(f"Members{via}", _table(rows)))
    else:
        blocks.append(_section("Members", "_etcdctl did not answer: see sources below_"))

    if facts.pods:
        rows = [("POD", "NODE", "PHASE", "STATUS", "CONTAINER", "RESTARTS")]
        rows += [(p.name, p.node, p.phase, p.status, p.container_state, str(p.restarts)) for p in facts.pods]
        blocks.append(_section("etcd pods (openshift-etcd)", _table(rows)))
    if facts.hosts:
        rows = [("HOST", "SSH", "ETCD CONTAINER", "ATTEMPT")]
        rows += [(h.node, "ok" if h.reachable else "NO ANSWER", h.etcd_state or ("-" if h.reachable else "?"),
                  str(h.etcd_attempt)) for h in facts.hosts]
        blocks.append(_section("Masters over SSH (crictl ps -a)", _table(rows)))
    if facts.nodes:
        rows = [("NODE", "STATUS", "UNREACHABLE TAINT")]
        rows += [(n.name, n.status, "yes" if n.unreachable else "no") for n in facts.nodes]
        blocks.append(_section("Master nodes", _table(rows)))
    if facts.machines:
        rows = [("MACHINE", "NODE", "PHASE", "INSTANCE STATE")]
        rows += [(m.name, m.node or "-", m.phase, m.instance_state or "-") for m in facts.machines]
        blocks.append(_section("Machines (openshift-machine-api)", _table(rows)))
    if facts.conditions:
        rows = [("CONDITION", "STATUS", "REASON", "MESSAGE")]
        rows += [(c.type, c.status, c.reason or "-", c.message or "-") for c in facts.conditions]
        blocks.append(_section("etcd operator (etcd/cluster)", _table(rows)))

    sources = " · ".join(
        f"{SOURCE_ICON[s.state]} {s.name} {s.state.value}" + (f" {s.elapsed:.1f}s" if s.elapsed else "")
        + (f": {escape(s.detail)}" if s.detail and s.state is not SourceState.OK else "")
        for s in facts.sources
    )
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=f"Sources: {sources}"[:2900])]))
    return blocks


def fallback_text(facts: ClusterFacts, diagnosis: Diagnosis) -> str:
    """The notification text (and what screen readers say)."""
    return f"etcd on {facts.cluster}: {diagnosis.summary}"[:3000]


class RenderedOnce:
    """The message of the latest report, rendered once: asks that shared one collection (a burst
    in an incident channel) share its blocks too, as plain dicts, which slack_sdk sends without
    building and validating Block Kit models again. Rendering 200 times was most of the bot's
    work after a burst's acks, and it ran on the event loop the next acks wait for."""

    def __init__(self) -> None:
        self._last: tuple[StatusReport, list[dict[str, Any]], str] | None = None

    def __call__(self, report: StatusReport) -> tuple[list[dict[str, Any]], str]:
        if self._last is None or self._last[0] is not report:
            blocks = [block.to_dict() for block in render_status(report.facts, report.diagnosis)]
            self._last = (report, blocks, fallback_text(report.facts, report.diagnosis))
        return self._last[1], self._last[2]


def make_handler(*, settings: Settings, clusters: Clusters,
                 note: Callable[[str], Awaitable[str | None]] | None = None) -> Callable[..., Awaitable[None]]:
    """`note(cluster)`: a line added below the diagnosis (the backup-age warning of bot/watch.py)."""
    rendered = RenderedOnce()

    async def handle_status(ack: Callable[..., Awaitable[Any]], command: dict[str, Any], client: Any,
                            respond: Callable[..., Awaitable[Any]]) -> None:
        found = await parse_for_cluster(ack=ack, command=command, spec=SPEC, settings=settings)
        if found is None:
            return
        _, cluster = found
        await ack(text=f"Checking etcd on {cluster}…", response_type="ephemeral")
        log.info("status.start", cluster=cluster, **command_context(command))
        report: StatusReport = await clusters.status(cluster)
        await ACKS.settled()  # render and post after the acks of a burst, not between them
        blocks, text = rendered(report)
        extra = await note(cluster) if note is not None else None
        if extra:  # a copy: the rendered blocks are shared by every ask of this report
            blocks = [*blocks[:3], SectionBlock(text=MarkdownTextObject(text=f":warning: *Backups:* {escape(extra)}")).to_dict(),
                      *blocks[3:]]
        log.info("status.done", cluster=cluster, state=report.diagnosis.state.value,
                 sources={s.name: s.state.value for s in report.facts.sources})
        try:
            await client.chat_postMessage(channel=command["channel_id"], blocks=blocks, text=text)
        except SlackApiError as exc:
            # Not in the channel (a private one, or never invited): answer through the command's response_url.
            log.warning("status.post_failed", error=exc.response.get("error"), cluster=cluster)
            await respond(blocks=blocks, text=text, response_type="in_channel")

    return handle_status
