"""bot/metrics.py: label values stay in bounded sets whatever they are given; Slack responses and
commands are counted where the code says."""

from __future__ import annotations

from prometheus_client import REGISTRY

from bot import metrics
from handlers.common import counted, mark_outcome, refuse


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_user_text_never_becomes_a_label() -> None:
    before = value("etcdbot_commands_total", command="other", outcome="ok")
    metrics.command_handled("/etcd-status; rm -rf /", "ok")
    metrics.command_handled("/etcd-nosuch", "ok")
    assert value("etcdbot_commands_total", command="other", outcome="ok") == before + 2
    metrics.command_handled("/etcd-status", "whatever the caller says")
    assert value("etcdbot_commands_total", command="/etcd-status", outcome="other") >= 1
    metrics.slack_response(url="http://x/api/chat.postMessage", status=200,
                           body={"ok": False, "error": "xoxb-not-an-error code with spaces"})
    assert value("etcdbot_slack_api_errors_total", method="chat.postMessage", error="other") >= 1
    exposed = metrics.exposition()[0].decode()
    assert "rm -rf" not in exposed and "xoxb-" not in exposed and "etcd-nosuch" not in exposed


def test_slack_errors_and_429s_by_method() -> None:
    before = value("etcdbot_slack_ratelimited_total", method="chat.update")
    metrics.slack_response(url="http://127.0.0.1:1/api/chat.update?x=1", status=429, body={"ok": False})
    metrics.slack_response(url="http://127.0.0.1:1/api/chat.update", status=200, body={"ok": True})
    assert value("etcdbot_slack_ratelimited_total", method="chat.update") == before + 1
    errors = value("etcdbot_slack_api_errors_total", method="chat.postMessage", error="channel_not_found")
    metrics.slack_response(url="http://h/api/chat.postMessage", status=200, body={"ok": False, "error": "channel_not_found"})
    assert value("etcdbot_slack_api_errors_total", method="chat.postMessage", error="channel_not_found") == errors + 1


def test_backup_runs_counted_by_outcome_and_the_newest_stored_backup_wins() -> None:
    failed = value("etcdbot_backups_total", cluster="lab", outcome="failed")
    metrics.run_finished(procedure="backup", outcome="failed", seconds=3, cluster="lab")
    metrics.run_finished(procedure="status", outcome="failed", seconds=3, cluster="lab")
    assert value("etcdbot_backups_total", cluster="lab", outcome="failed") == failed + 1
    # a cluster name of this test's own: the registry is the process's, shared with other tests
    metrics.backup_stored(cluster="metrics-test", size_bytes=1234, finished_at=1700000000.0)
    metrics.backup_stored(cluster="metrics-test", size_bytes=99, finished_at=1600000000.0)  # an older one, rebuilt
    assert value("etcdbot_backup_last_success_timestamp_seconds", cluster="metrics-test") == 1700000000.0
    assert value("etcdbot_backup_bytes", cluster="metrics-test") == 1234


async def test_counted_listener_outcomes() -> None:
    async def ack(**_kwargs: object) -> None:
        return None

    async def ok(ack, command) -> None:  # type: ignore[no-untyped-def]
        await ack()

    async def refused(ack, command) -> None:  # type: ignore[no-untyped-def]
        await refuse(ack=ack, command=command, reason="no", kind="usage")

    async def busy(ack, command) -> None:  # type: ignore[no-untyped-def]
        mark_outcome("busy")

    async def broken(ack, command) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    command = {"command": "/etcd-backup", "user_id": "U0ALICE01"}
    names = {"ok": ok, "refused_usage": refused, "busy": busy, "error": broken}
    before = {k: value("etcdbot_commands_total", command="/etcd-backup", outcome=k) for k in names}
    for outcome, listener in names.items():
        try:
            await counted("/etcd-backup", listener)(ack=ack, command=command)
        except RuntimeError:
            assert outcome == "error"
    for outcome in names:
        assert value("etcdbot_commands_total", command="/etcd-backup", outcome=outcome) == before[outcome] + 1
    # refused by a middleware (no counted listener around it): counted once, directly
    auth_before = value("etcdbot_commands_total", command="/etcd-backup", outcome="refused_auth")
    await refuse(ack=ack, command=command, reason="not allowed", kind="not-allowed")
    assert value("etcdbot_commands_total", command="/etcd-backup", outcome="refused_auth") == auth_before + 1
