"""How the production composition (bot/services.py, bot/config.py) wires the safety core: the
approval settings reach the runner and the approvals, the HMAC key comes from the bot's secret,
and the runner's Slack traffic goes through the same metrics observer as Bolt's (a 429 from
the lab's workspace shows in `etcdbot_slack_ratelimited`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from bot.clusters import Clusters
from bot.config import ConfigError, load_settings
from bot.services import build_services
from lab.slack import SlackWorkspace
from tests.runner.conftest import APP_TOKEN, BOT_TOKEN, CHANNEL, DAVE, SIGNING_SECRET


def settings_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("x")
    clusters = [
        {"name": "prod", "kubeconfig": str(kubeconfig), "channels": [CHANNEL],
         "approvers": {"usergroup": "etcd-approvers-prod", "users": [DAVE]}},
        {"name": "test", "kubeconfig": str(kubeconfig)},
    ]
    return {"ETCDBOT_SLACK_BOT_TOKEN": BOT_TOKEN, "ETCDBOT_SLACK_APP_TOKEN": APP_TOKEN,
            "ETCDBOT_CLUSTERS": json.dumps(clusters), **extra}


def test_approval_settings(tmp_path: Path) -> None:
    s = load_settings(environ=settings_env(
        tmp_path, ETCDBOT_APPROVER_USERS='["U0CAROL01"]', ETCDBOT_APPROVALS_REQUIRED='{"restore": 2}',
        ETCDBOT_APPROVAL_EXPIRY="600"))
    assert s.approvers_of("prod").usergroup == "etcd-approvers-prod" and s.approvers_of("prod").users == (DAVE,)
    assert s.approvers_of("test").usergroup == "etcd-approvers" and s.approvers_of("test").users == ("U0CAROL01",)
    assert s.approvals_required == {"restore": 2} and s.approval_expiry == 600
    derived = s.approval_key()
    assert len(derived) == 32 and BOT_TOKEN.encode() not in derived
    own = load_settings(environ=settings_env(tmp_path, ETCDBOT_APPROVAL_SECRET="a-long-random-secret-value"))
    assert own.approval_key() != derived and "a-long-random-secret-value" in own.secret_values()
    for bad, named in ((("ETCDBOT_APPROVALS_REQUIRED", '{"restore": 0}'), "ETCDBOT_APPROVALS_REQUIRED"),
                       (("ETCDBOT_APPROVER_USERS", '["bob"]'), "ETCDBOT_APPROVER_USERS"),
                       (("ETCDBOT_APPROVAL_EXPIRY", "0"), "ETCDBOT_APPROVAL_EXPIRY")):
        with pytest.raises(ConfigError, match=named):
            load_settings(environ=settings_env(tmp_path, **dict([bad])))


def ratelimited(method: str) -> float:
    return REGISTRY.get_sample_value("etcdbot_slack_ratelimited_total", {"method": method}) or 0.0


async def test_the_runners_slack_client_is_observed(tmp_path: Path) -> None:
    workspace = SlackWorkspace(port=0, bot_token=BOT_TOKEN, app_token=APP_TOKEN, signing_secret=SIGNING_SECRET,
                               rate_limit_per_channel=(1, 60.0))  # the second post in a minute is refused
    await workspace.start()
    try:
        s = load_settings(environ=settings_env(tmp_path, ETCDBOT_SLACK_API_URL=workspace.base_url,
                                               ETCDBOT_APPROVALS_REQUIRED='{"restore": 2}'))
        services = build_services(s, clusters=Clusters(s))
        try:
            assert services.runner.approval_policy.required_for("restore") == 2
            assert services.runner.approval_policy.key == s.approval_key()
            before = ratelimited("chat.postMessage")
            await services.client.chat_postMessage(channel=CHANNEL, text="one")
            try:
                await services.client.chat_postMessage(channel=CHANNEL, text="two")
            except Exception:  # the 429 itself: what matters is that it was counted
                pass
            assert ratelimited("chat.postMessage") == before + 1
        finally:
            await services.sender.close()
            await services.redis.aclose()
            if services.client.session is not None:
                await services.client.session.close()
    finally:
        await workspace.stop()
