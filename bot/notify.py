"""What the bot says in a cluster's channel about its backups when nobody asked: the line after a
scheduled backup, a failure with the on-call group mentioned, a failed restore drill, fires missed
while the bot was down, and "no drilled backup is recent enough".

Why one module: these lines are the bot's side of an on-call rota. They share one shape (what
happened, the facts a person checks, what to do now, who is paged) and one way to mention the
on-call group (`ETCDBOT_ONCALL_USERGROUP`, or a cluster's `oncall_usergroup`), so they are written
here as pure functions over records and tested as text; `Notifier` only resolves the group's
mention and posts to the cluster's first channel.

Exactly once across replicas is the caller's business (a Redis SET NX claim per event): the
scheduler's fire claim, the watch's daily claim, the run that did the drill.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.backups import BackupRecord, DrillOutcome
from bot.cluster.etcdctl import human_size
from bot.config import ClusterSettings, Settings
from bot.log import get_logger
from bot.progress import ThrottledSender, format_duration, slack_time
from bot.store import Run, StepState

log = get_logger(__name__)

USERGROUP_ID_RE = re.compile(r"^S[A-Z0-9]{2,}$")
MAX_LISTED = 10  # missed fires listed one by one; more are counted


def age_text(seconds: float) -> str:
    """A span as a person says it: "45 s", "12 min", "26 h", "3 d 4 h"."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        hours = seconds / 3600
        return f"{hours:.0f} h" if hours >= 10 else f"{hours:.1f} h"
    days, rest = divmod(int(seconds), 86400)
    return f"{days} d {rest // 3600} h" if rest >= 3600 else f"{days} d"


def mention_of(group: str | None, *, group_id: str | None = None) -> str:
    """Slack's mention of a user group (`<!subteam^S0123>`) when its ID is known, else `@handle`
    (readable, though it pages nobody); "" without a group."""
    if not group:
        return ""
    if USERGROUP_ID_RE.fullmatch(group):
        return f"<!subteam^{group}>"
    if group_id:
        return f"<!subteam^{group_id}|@{group}>"
    return f"@{group}"


def _oncall(mention: str) -> str:
    return f" {mention}" if mention else " (no on-call group is set: ETCDBOT_ONCALL_USERGROUP)"


def _next(next_fire: datetime | None) -> str:
    return f" Next scheduled backup: {slack_time(next_fire.timestamp())}." if next_fire else ""


def success_line(*, cluster: str, record: BackupRecord | None, run: Run, next_fire: datetime | None) -> str:
    """One line after a scheduled backup that succeeded: size, revision, duration, drill, next run."""
    took = format_duration((run.finished_at or time.time()) - run.created_at)
    if record is None:
        return f":white_check_mark: Scheduled backup of `{cluster}` done in {took} (run `{run.id}`).{_next(next_fire)}"
    drill = record.drill.summary() if record.drill else "not drilled"
    return (f":white_check_mark: Scheduled backup of `{cluster}`: `{record.id}`, {human_size(record.size)}, "
            f"revision {record.revision}, OpenShift {record.version}, took {took}; restore {drill}.{_next(next_fire)}")


def failed_step(run: Run) -> str:
    """The title of the step a run failed at ("" if it failed between steps)."""
    for record in run.steps:
        if record.state in (StepState.FAILED, StepState.INTERRUPTED):
            return record.title
    return ""


def failure_line(*, cluster: str, run: Run, mention: str, next_fire: datetime | None, what: str = "scheduled backup") -> str:
    """A bot-started backup that did not succeed: the step, the error, what to do, the on-call group."""
    step = failed_step(run)
    at = f" at step *{step}*" if step else ""
    why = f": {run.error}" if run.error else ""
    todo = run.next_action or f"Check the cluster with `/etcd-status {cluster}`."
    return (f":x: The {what} of `{cluster}` (run `{run.id}`) {run.state.value}{at}{why}. What to do: {todo} "
            f"Then take a backup by hand with `/etcd-backup {cluster}`.{_next(next_fire)}{_oncall(mention)}")


def drill_failed_line(*, record: BackupRecord, outcome: DrillOutcome, mention: str) -> str:
    return (f":rotating_light: Backup `{record.id}` of `{record.cluster}` (OpenShift {record.version}) FAILED its "
            f"restore drill: {outcome.error}. It is not marked drilled; do not count on it for a restore. "
            f"Take a new backup with `/etcd-backup {record.cluster}` and check it with "
            f"`/etcd-backup-verify <id>`.{_oncall(mention)}")


def missed_line(*, cluster: str, fires: Sequence[datetime], total: int, catch_up: bool, mention: str) -> str:
    """Fires nobody acted on while no bot ran: said once, however long ago."""
    shown = ", ".join(slack_time(f.timestamp()) for f in fires[:MAX_LISTED])
    more = f" and {total - MAX_LISTED} more" if total > MAX_LISTED else ""
    now = (" The latest one is being taken now." if catch_up
           else f" Take one now with `/etcd-backup {cluster}` if the next fire is far.")
    return (f":warning: {total} scheduled backup{'s' if total != 1 else ''} of `{cluster}` did not run while the "
            f"bot was down: {shown}{more}.{now}{_oncall(mention)}")


def stale_text(*, cluster: str, newest: BackupRecord | None, max_age: float, now: float) -> str:
    """The `/etcd-status` line and the warning's body: no drilled backup younger than max_age."""
    limit = age_text(max_age)
    if newest is None:
        return f"No drilled backup of `{cluster}` younger than {limit}: there is no drilled backup at all."
    return (f"No drilled backup of `{cluster}` younger than {limit}: the newest, `{newest.id}`, was taken "
            f"{age_text(now - newest.finished_at)} ago.")


def stale_line(*, cluster: str, newest: BackupRecord | None, max_age: float, now: float, mention: str) -> str:
    return (f":warning: {stale_text(cluster=cluster, newest=newest, max_age=max_age, now=now)} Take one with "
            f"`/etcd-backup {cluster}` and check the schedule (ETCDBOT_BACKUP_SCHEDULE) and `/etcd-backups "
            f"{cluster}`.{_oncall(mention)}")


@dataclass
class Notifier:
    """Posts a cluster's notifications in its first channel, with its on-call group's mention."""

    settings: Settings
    sender: ThrottledSender
    client: AsyncWebClient | None = None
    _group_ids: dict[str, str | None] = field(default_factory=dict)

    async def mention(self, cluster: ClusterSettings) -> str:
        group = self.settings.oncall_of(cluster)
        if not group or USERGROUP_ID_RE.fullmatch(group):
            return mention_of(group)
        if group not in self._group_ids:
            self._group_ids[group] = await self._lookup(group)
        return mention_of(group, group_id=self._group_ids[group])

    async def _lookup(self, handle: str) -> str | None:
        """The user group's ID by its handle (a mention needs the ID); None if Slack does not say."""
        if self.client is None:
            return None
        try:
            response = await self.client.usergroups_list()
        except (SlackApiError, OSError) as exc:
            log.warning("notify.usergroup_lookup_failed", group=handle, error=str(exc))
            return None
        for group in response.get("usergroups") or []:
            if group.get("handle") == handle:
                return str(group.get("id"))
        return None

    async def post(self, cluster: ClusterSettings, text: str) -> bool:
        if not cluster.channels:
            log.warning("notify.no_channel", cluster=cluster.name, text=text[:200])
            return False
        try:
            await self.sender.post(channel=cluster.channels[0], text=text)
        except (SlackApiError, OSError) as exc:
            log.warning("notify.post_failed", cluster=cluster.name, error=str(exc))
            return False
        return True
