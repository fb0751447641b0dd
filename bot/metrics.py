"""The bot's Prometheus metrics, defined once, and the small functions the code calls to record them.

Why one module: every label value a metric takes is decided here, from a bounded set (command
names the bot registers, procedure and step ids from code, enum values, Slack's error codes
shaped like identifiers). Nothing a person typed, no token and no URL ever becomes a label: an
unbounded label is a memory leak in Prometheus, and a label is published to anyone who can
scrape `/metrics`. Callers pass raw values; `_bounded()` maps anything unexpected to "other".

Slack Web API calls are observed with a retry handler (`SlackApiObserver`) rather than a client
subclass, because Bolt builds a fresh AsyncWebClient per request and copies only the retry
handlers across: the observer sees every response, including 429s a later handler retries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

OTHER = "other"
# Identifier-shaped values only (Slack error codes, API method names, step ids, cluster names).
_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
# The commands the bot may ever register; anything else someone types is "other".
KNOWN_COMMANDS = frozenset({
    "/etcd-status", "/etcd-backup", "/etcd-backups", "/etcd-backup-verify", "/etcd-replace-member",
    "/etcd-restore", "/etcd-shutdown", "/etcd-restart-check", "/etcd-approve-csrs", "/etcd-runs",
    "/etcd-abort", "/etcd-help",
})
BACKUP_PROCEDURE = "backup"  # procedures/backup.py's NAME (bot/ does not import procedures/ here)
COMMAND_OUTCOMES = frozenset({"ok", "refused_usage", "refused_auth", "busy", "error"})

RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
FAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, float("inf"))

COMMANDS = Counter("etcdbot_commands", "Slash commands handled, by command and outcome.", ["command", "outcome"])
HTTP_REFUSED = Counter(
    "etcdbot_slack_http_refused", "Slack HTTP-mode requests refused before dispatch (401), by reason.", ["reason"]
)
RUN_DURATION = Histogram(
    "etcdbot_run_duration_seconds", "Procedure runs, from start to outcome.", ["procedure", "outcome"],
    buckets=RUN_BUCKETS,
)
STEP_DURATION = Histogram(
    "etcdbot_step_duration_seconds", "Procedure steps, all attempts included.", ["procedure", "step", "outcome"],
    buckets=RUN_BUCKETS,
)
LOCK_WAIT = Histogram(
    "etcdbot_lock_wait_seconds", "Time to take (or be refused) a cluster lock in Redis.", ["cluster"],
    buckets=FAST_BUCKETS,
)
ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 3, float("inf"))
ACK_LATENCY = Histogram(
    "etcdbot_slack_ack_seconds",
    "HTTP mode: from reading a Slack request to its response (the ack), as the bot sees it.",
    buckets=ACK_BUCKETS,
)
LOCK_BUSY = Counter("etcdbot_lock_busy", "Runs refused because the cluster's lock was held.", ["cluster"])
APPROVALS = Counter("etcdbot_approvals", "Approval requests by how they ended.", ["decision"])
SLACK_API_ERRORS = Counter(
    "etcdbot_slack_api_errors", "Slack Web API responses with ok=false or a non-200 status.", ["method", "error"]
)
SLACK_RATELIMITED = Counter("etcdbot_slack_ratelimited", "Slack Web API 429 responses.", ["method"])
BACKUPS = Counter("etcdbot_backups", "etcd backups by outcome.", ["cluster", "outcome"])
BACKUP_LAST_SUCCESS = Gauge(
    "etcdbot_backup_last_success_timestamp_seconds", "Unix time of the last successful backup.", ["cluster"]
)
_newest_backup: dict[str, float] = {}
# One count per scheduled fire, by how it ended (a fire another replica took is "duplicate").
SCHEDULED_OUTCOMES = frozenset({"succeeded", "failed", "aborted", "interrupted", "busy", "refused", "refused_young", "duplicate",
                                "timeout", "error", "missed"})
SCHEDULED_BACKUPS = Counter("etcdbot_scheduled_backups", "Scheduled backup fires by outcome.", ["cluster", "outcome"])
BACKUP_BYTES = Gauge("etcdbot_backup_bytes", "Size of the last successful backup (snapshot + static pod resources).",
                     ["cluster"])
# Backups you can trust: restore drills, the newest drilled backup, retention.
DRILL_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))
DRILLS = Counter("etcdbot_drills", "Restore drills by outcome (passed / failed).", ["cluster", "outcome"])
DRILL_DURATION = Histogram("etcdbot_drill_duration_seconds", "Restore drills, checksum to scratch etcd stopped.",
                           ["cluster", "outcome"], buckets=DRILL_BUCKETS)
LAST_DRILLED = Gauge(
    "etcdbot_backup_last_drilled_timestamp_seconds",
    "Unix time at which the newest backup whose restore drill passed was taken (0: none).", ["cluster"],
)
RETENTION_DELETIONS = Counter("etcdbot_retention_deletions", "Backups deleted by the retention rules.", ["cluster"])


def _bounded(value: object, allowed: Iterable[str] | None = None) -> str:
    text = str(value or "").strip()
    if allowed is not None:
        return text.lower() if text.lower() in allowed else OTHER
    return text if _IDENT.fullmatch(text) else OTHER


def slack_error_code(value: object) -> str:
    """A Slack error code (`channel_not_found`) as a label or log value; anything else is "other"."""
    return _bounded(value)


def command_handled(command: object, outcome: str) -> None:
    COMMANDS.labels(command=_bounded(command, KNOWN_COMMANDS), outcome=_bounded(outcome, COMMAND_OUTCOMES)).inc()


def ack_sent(seconds: float) -> None:
    ACK_LATENCY.observe(seconds)


def http_refused(reason: str) -> None:
    HTTP_REFUSED.labels(reason=_bounded(reason)).inc()


def run_finished(*, procedure: str, outcome: str, seconds: float, cluster: str = "") -> None:
    RUN_DURATION.labels(procedure=_bounded(procedure), outcome=_bounded(outcome)).observe(max(seconds, 0.0))
    if procedure == BACKUP_PROCEDURE:
        BACKUPS.labels(cluster=_bounded(cluster), outcome=_bounded(outcome)).inc()


def step_finished(*, procedure: str, step: str, outcome: str, seconds: float) -> None:
    STEP_DURATION.labels(procedure=_bounded(procedure), step=_bounded(step), outcome=_bounded(outcome)).observe(
        max(seconds, 0.0)
    )


def lock_attempt(*, cluster: str, seconds: float, acquired: bool) -> None:
    LOCK_WAIT.labels(cluster=_bounded(cluster)).observe(max(seconds, 0.0))
    if not acquired:
        LOCK_BUSY.labels(cluster=_bounded(cluster)).inc()


def approval_decided(decision: str) -> None:
    APPROVALS.labels(decision=_bounded(decision)).inc()


def scheduled_backup(*, cluster: str, outcome: str) -> None:
    """A scheduled fire ended; its run (if any) is also counted in `etcdbot_backups` like any backup."""
    SCHEDULED_BACKUPS.labels(cluster=_bounded(cluster), outcome=_bounded(outcome, SCHEDULED_OUTCOMES)).inc()


def backup_stored(*, cluster: str, size_bytes: int, finished_at: float) -> None:
    """A verified backup entered the catalogue (also on a rebuild at start): the newest one sets
    the last-success time and the size. Outcomes are counted by `run_finished`."""
    label = _bounded(cluster)
    if finished_at >= _newest_backup.get(label, 0.0):
        _newest_backup[label] = finished_at
        BACKUP_LAST_SUCCESS.labels(cluster=label).set(finished_at)
        BACKUP_BYTES.labels(cluster=label).set(size_bytes)


def drill_finished(*, cluster: str, ok: bool, seconds: float, finished_at: float) -> None:
    """A restore drill ended; a passed one of a newer backup moves the last-drilled time."""
    label, outcome = _bounded(cluster), "passed" if ok else "failed"
    DRILLS.labels(cluster=label, outcome=outcome).inc()
    DRILL_DURATION.labels(cluster=label, outcome=outcome).observe(max(seconds, 0.0))
    if ok:
        newest_drilled(cluster=cluster, finished_at=finished_at, only_newer=True)


_last_drilled: dict[str, float] = {}


def newest_drilled(*, cluster: str, finished_at: float | None, only_newer: bool = False) -> None:
    """Sets the last-drilled gauge (from the catalogue, by every replica, so each one's /metrics
    says the same); None: no drilled backup."""
    label = _bounded(cluster)
    value = finished_at or 0.0
    if only_newer and value < _last_drilled.get(label, 0.0):
        return
    _last_drilled[label] = value
    LAST_DRILLED.labels(cluster=label).set(value)


def retention_deleted(*, cluster: str, count: int = 1) -> None:
    RETENTION_DELETIONS.labels(cluster=_bounded(cluster)).inc(count)


def slack_method(url: str) -> str:
    """`http://host/api/chat.postMessage?x=1` -> `chat.postMessage` (a code-chosen name, bounded)."""
    return _bounded(url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])


def slack_response(*, url: str, status: int, body: Any) -> None:
    method = slack_method(url)
    if status == 429:
        SLACK_RATELIMITED.labels(method=method).inc()
        SLACK_API_ERRORS.labels(method=method, error="ratelimited").inc()
        return
    if isinstance(body, dict) and body.get("ok") is False:
        SLACK_API_ERRORS.labels(method=method, error=_bounded(body.get("error"))).inc()
    elif status >= 400:
        SLACK_API_ERRORS.labels(method=method, error=f"http_{status // 100}xx").inc()


class SlackApiObserver(AsyncRetryHandler):
    """A retry handler that never retries: it counts errors and 429s, then lets the next handler decide."""

    def __init__(self) -> None:
        super().__init__(max_retry_count=1_000_000)

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is not None:
            slack_response(url=request.url, status=response.status_code, body=response.body)
        elif error is not None:
            SLACK_API_ERRORS.labels(method=slack_method(request.url), error="connection").inc()
        return False


def exposition(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The `/metrics` body and its content type."""
    return _generate_latest(registry), CONTENT_TYPE_LATEST
