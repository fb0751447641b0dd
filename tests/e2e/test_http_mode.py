"""HTTP mode end to end, health and metrics, and no secret anywhere: the production bot against a lab.

The lab's workspace delivers slash commands as Slack's signed HTTP requests to the bot's port
(`/_lab/http-delivery`); forged, stale and unsigned requests are POSTed at the same port and must
get 401 and do nothing. The module ends by grepping every log, the workspace's record and the
`/metrics` text for each secret the lab handed the bot.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lab.slack.signing import signed_headers
from tests.botprocess import Bot, get
from tests.e2e.backup_support import blocks_text, clusters_setting, command, stored_backups, wait_run
from tests.labfixture import Lab

SCRAPED: list[str] = []  # /metrics texts seen during the module, grepped for secrets at the end


def status(lab: Lab, text: str = "", *, wait: float = 90) -> str:
    args = ["slack", "command", "--as", "alice", "--channel", "incident", "--quiet", "8", "--wait", str(wait),
            f"/etcd-status {text}".strip()]
    return lab.cli(*args, timeout=wait + 30).stdout


def metrics_text(bot: Bot) -> str:
    code, body = get(bot.health_url + "/metrics")
    assert code == 200
    SCRAPED.append(body)
    return body


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from the exposition text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        if not metric.startswith(name + "{") and metric != name:
            continue
        found = metric[len(name) + 1:-1].split(",") if "{" in metric else []
        if ",".join(sorted(found)) == wanted:
            return float(value)
    return 0.0


def post(url: str, body: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body.encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def http_bot(lab: Lab) -> Iterator[Bot]:
    # peak hours away from now, so /etcd-backup runs without the peak-time question
    bot = Bot(lab=lab, mode="http", log_path=lab.dir / "bot-http.log",
              env={"ETCDBOT_CLUSTERS": clusters_setting(lab)}).start()
    try:
        yield bot
    finally:
        bot.stop()


def test_socket_mode_status_health_and_metrics(lab: Lab) -> None:
    bot = Bot(lab=lab, mode="socket", log_path=lab.dir / "bot-socket.log").start()
    try:
        assert "etcd is healthy: 3 of 3 members are healthy" in status(lab)
        code, body = get(bot.health_url + "/healthz")
        assert code == 200
        code, body = get(bot.health_url + "/readyz")
        assert code == 200 and json.loads(body)["checks"] == {"redis": "ok", "slack": "ok"}
        text = metrics_text(bot)
        assert sample(text, "etcdbot_commands_total", command="/etcd-status", outcome="ok") == 1
    finally:
        bot.stop()


def test_status_over_http(lab: Lab, http_bot: Bot) -> None:
    assert http_bot.workspace._call("GET", "status")["http_delivery"]
    out = status(lab)
    assert "Checking etcd on lab…" in out and "etcd is healthy: 3 of 3 members are healthy" in out
    assert "http.listening" in http_bot.log()
    acks = [json.loads(line) for line in (lab.dir / "logs" / "slack.jsonl").read_text().splitlines()]
    assert any(r.get("kind") == "ack" and r.get("late") is False for r in acks)
    assert sample(metrics_text(http_bot), "etcdbot_commands_total", command="/etcd-status", outcome="ok") == 1


def _command_body(lab: Lab, text: str = "") -> str:
    return urllib.parse.urlencode({
        "token": "lab0verification0token", "team_id": "T0LAB0001", "channel_id": "C0INCIDENT",
        "user_id": "U0ALICE01", "user_name": "alice", "command": "/etcd-status", "text": text,
        "response_url": "http://127.0.0.1:9/hooks/none", "trigger_id": "1.2.3",
    })


@pytest.mark.parametrize("kind", ["bad_signature", "stale_timestamp", "missing_headers", "other_body"])
def test_forged_stale_and_unsigned_requests_get_401_and_do_nothing(lab: Lab, http_bot: Bot, kind: str) -> None:
    secret = lab.env["ETCDBOT_SLACK_SIGNING_SECRET"]
    body = _command_body(lab)
    form = "application/x-www-form-urlencoded"
    headers = {
        "bad_signature": lambda: signed_headers(signing_secret="not-" + secret, timestamp=int(time.time()),
                                                body=body, content_type=form),
        "stale_timestamp": lambda: signed_headers(signing_secret=secret, timestamp=int(time.time()) - 301,
                                                  body=body, content_type=form),
        "missing_headers": lambda: {"Content-Type": form},
        # a real signature, of another body: the signature covers every byte
        "other_body": lambda: signed_headers(signing_secret=secret, timestamp=int(time.time()),
                                             body=_command_body(lab, "x"), content_type=form),
    }[kind]()
    reason = "bad_signature" if kind == "other_body" else kind
    before = sample(metrics_text(http_bot), "etcdbot_slack_http_refused_total", reason=reason)
    cursor = http_bot.workspace._call("GET", "status")["cursor"]
    log_before = len(http_bot.log())
    assert post(http_bot.events_url, body, headers) == 401
    assert sample(metrics_text(http_bot), "etcdbot_slack_http_refused_total", reason=reason) == before + 1
    http_bot.workspace.quiet(quiet=1.0, timeout=10)
    assert http_bot.workspace.transcript(since=cursor)["records"] == []  # nothing posted, nothing called
    new_log = http_bot.log()[log_before:]
    assert f'"reason": "{reason}"' in new_log and "status.start" not in new_log


def test_refused_command_and_error_path_over_http(lab: Lab, http_bot: Bot) -> None:
    out = status(lab, "nosuch")
    assert "I know no cluster `nosuch`" in out
    lab.cli("fault", "api-down")
    try:
        out = status(lab, wait=120)
        assert "etcd on lab" in out  # the report still comes, with the API marked as failed
    finally:
        lab.cli("heal")
    text = metrics_text(http_bot)
    assert sample(text, "etcdbot_commands_total", command="/etcd-status", outcome="refused_usage") == 1


def test_backup_over_http(lab: Lab, http_bot: Bot) -> None:
    since = command(lab, "/etcd-backup")
    done = wait_run(lab, since=since, states=("succeeded", "failed"))
    assert done["state"] == "succeeded", blocks_text(done)
    (meta,) = stored_backups(lab).values()
    text = metrics_text(http_bot)
    assert sample(text, "etcdbot_backups_total", cluster="lab", outcome="succeeded") == 1
    assert sample(text, "etcdbot_backup_bytes", cluster="lab") == sum(f["size"] for f in meta["files"])
    assert sample(text, "etcdbot_lock_busy_total", cluster="lab") == 0
    assert sample(text, "etcdbot_run_duration_seconds_count", procedure="backup", outcome="succeeded") == 1


def _secrets(lab: Lab) -> dict[str, str]:
    found = {name: lab.env[name] for name in
             ("ETCDBOT_SLACK_BOT_TOKEN", "ETCDBOT_SLACK_APP_TOKEN", "ETCDBOT_SLACK_SIGNING_SECRET")}
    kubeconfig = yaml.safe_load(Path(lab.env["KUBECONFIG"]).read_text())
    for user in kubeconfig["users"]:
        if user["user"].get("token"):
            found[f"kubeconfig token of {user['name']}"] = user["user"]["token"]
    key_lines = [line for line in Path(lab.env["LAB_SSH_KEY"]).read_text().splitlines()
                 if line and not line.startswith("-----")]
    for number, line in enumerate(key_lines):
        if len(line) >= 16:
            found[f"SSH private key line {number}"] = line
    assert any(k.startswith("kubeconfig token") for k in found) and any(k.startswith("SSH") for k in found)
    return found


def test_no_secret_in_logs_records_or_metrics(lab: Lab, http_bot: Bot) -> None:
    SCRAPED.append(metrics_text(http_bot))
    http_bot.stop()  # every line written before reading
    files = sorted({*lab.dir.glob("*.log"), *(lab.dir / "logs").rglob("*")} - {lab.dir / "logs"})
    names = {f.name for f in files}
    assert {"bot-socket.log", "bot-http.log", "daemon.log", "slack.jsonl"} <= names, names
    texts = {str(f): f.read_text(errors="replace") for f in files if f.is_file()}
    texts.update({f"/metrics #{i}": t for i, t in enumerate(SCRAPED)})
    assert len(SCRAPED) >= 5
    leaks = [(name, where) for name, secret in _secrets(lab).items() for where, text in texts.items()
             if secret in text]
    assert not leaks, f"secrets found: {leaks}"
