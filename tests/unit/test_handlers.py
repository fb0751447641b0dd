"""Argument parsing, cluster resolution, refusals, Block Kit rendering and the status handler's flow."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bot.auth import Authorizer
from bot.clusters import StatusReport
from bot.config import load_settings
from handlers.common import UsageError, authorization_middleware, parse_args, resolve_cluster
from handlers.help import render_help
from handlers.status import SPEC, make_handler, render_status
from procedures.diagnosis import diagnose
from procedures.facts import HostFacts, SourceReport, SourceState
from tests.unit.factories import A, B, C, api_down, healthy, unhealthy, with_pod


@pytest.fixture
def settings(tmp_path):
    (tmp_path / "kc").write_text("x")

    def make(*names: str, channels: dict[str, list[str]] | None = None):
        clusters = [{"name": n, "kubeconfig": str(tmp_path / "kc"), "channels": (channels or {}).get(n, [])}
                    for n in names]
        return load_settings(environ={"ETCDBOT_SLACK_BOT_TOKEN": "xoxb-1", "ETCDBOT_SLACK_APP_TOKEN": "xapp-1",
                                      "ETCDBOT_SLACK_SIGNING_SECRET": "s", "ETCDBOT_CLUSTERS": json.dumps(clusters)})
    return make


# ---- parsing ----

def test_no_argument_and_one_cluster():
    assert parse_args("", spec=SPEC).values == {}
    assert parse_args("  prod-1 ", spec=SPEC).values == {"cluster": "prod-1"}


@pytest.mark.parametrize(("text", "says"), [
    ("lab extra", "takes at most 1 argument (an optional cluster); I do not know what to do with `extra`"),
    ("Lab!", "`Lab!` is not a valid cluster. Usage: `/etcd-status [cluster]`, e.g. `/etcd-status lab`"),
    ("--force", "has no option `--force`"),
    ("x" * 600, "too long"),
    ("`rm -rf`", "I do not know what to do with `-rf'`. Usage: `/etcd-status [cluster]`, e.g. `/etcd-status lab`"),
    ("$(reboot)", "`$(reboot)` is not a valid cluster"),
])
def test_garbage_arguments_say_what_to_type(text, says):
    with pytest.raises(UsageError) as error:
        parse_args(text, spec=SPEC)
    assert says in str(error.value)


# ---- cluster resolution ----

def test_explicit_then_channel_then_only(settings):
    one = settings("lab")
    assert resolve_cluster(settings=one, explicit=None, channel_id="C0OTHER", command="/etcd-status") == "lab"
    two = settings("lab", "prod", channels={"prod": ["C0PROD"]})
    assert resolve_cluster(settings=two, explicit=None, channel_id="C0PROD", command="/etcd-status") == "prod"
    assert resolve_cluster(settings=two, explicit="lab", channel_id="C0PROD", command="/etcd-status") == "lab"


def test_unknown_cluster_lists_the_known(settings):
    with pytest.raises(UsageError) as error:
        resolve_cluster(settings=settings("lab", "prod"), explicit="staging", channel_id="C1", command="/etcd-status")
    assert str(error.value) == "I know no cluster `staging`. Known clusters: `lab`, `prod`. Try `/etcd-status lab`."


def test_unmapped_channel_with_several_clusters(settings):
    with pytest.raises(UsageError) as error:
        resolve_cluster(settings=settings("lab", "prod"), explicit=None, channel_id="C1", command="/etcd-status")
    assert "mapped to no cluster and 2 are configured: `lab`, `prod`. Name one: `/etcd-status lab`." in str(error.value)


# ---- rendering ----

def _all_text(blocks) -> str:
    return json.dumps([b.to_dict() for b in blocks])


def test_render_healthy_has_everything_the_issue_lists():
    facts = healthy()
    blocks = render_status(facts, diagnose(facts))
    text = _all_text(blocks)
    assert len(blocks) <= 50
    for expected in ("etcd on lab", "OpenShift 4.5.2", "API available", "3 of 3 members are available",
                     "6fc1e7c9db35841d", "https://10.0.0.2379:2379", "31 MB", "123456", "HEALTHY", "LEADER",
                     f"etcd-{A}", "RESTARTS", "Ready", "UNREACHABLE TAINT", "clustername-8qw5l-master-0", "running",
                     "NodeInstallerProgressing", "AllNodesAtLatestRevision", "Degraded", "Sources:", "etcd is healthy"):
        assert expected in text, expected
    for block in blocks:
        block.validate_json()


def test_render_crashloop_shows_the_next_command():
    facts = with_pod(unhealthy(healthy(), A), A, status="CrashLoopBackOff", restarts=7)
    text = _all_text(render_status(facts, diagnose(facts)))
    assert f"`/etcd-replace-member {A}`" in text and "CrashLoopBackOff" in text and "NO" in text


def test_render_escapes_mrkdwn_so_placeholders_survive():
    facts = unhealthy(healthy(), A, C)
    text = _all_text(render_status(facts, diagnose(facts)))
    assert "`/etcd-restore &lt;backup-id&gt;`" in text and "<backup-id>" not in text


def test_render_api_unavailable_marks_sources():
    hosts = (HostFacts(node=A, reachable=False, error="timeout"), HostFacts(node=B, reachable=True, etcd_state="Running"),
             HostFacts(node=C, reachable=True, etcd_state="Running"))
    facts = replace(api_down(hosts=hosts), sources=(
        SourceReport("API", SourceState.TIMEOUT, 8.0, "no answer within 8s"),
        SourceReport("SSH crictl", SourceState.OK, 0.4),
        SourceReport("etcdctl (SSH)", SourceState.FAILED, 3.0, "no master reachable")))
    text = _all_text(render_status(facts, diagnose(facts)))
    assert "API unavailable" in text and "NO ANSWER" in text
    assert "API timeout 8.0s: no answer within 8s" in text and "etcdctl (SSH) failed" in text


def test_help_lists_available_and_coming():
    text = render_help(available={"/etcd-status", "/etcd-help"}, clusters=("lab",))
    assert "`/etcd-status [cluster]`" in text and "_Coming:_" in text and "`/etcd-backup`" in text


# ---- the handler and the middleware, with Bolt's arguments faked ----

class Recorder:
    def __init__(self):
        self.calls = []

    async def __call__(self, **kwargs):
        self.calls.append(kwargs)


class FakeClient:
    def __init__(self, members=()):
        self.posted = []
        self.members = list(members)

    async def chat_postMessage(self, **kwargs):  # noqa: N802 (slack_sdk's name)
        self.posted.append(kwargs)

    async def usergroups_list(self):
        return {"ok": True, "usergroups": [{"id": "S0OPS", "handle": "etcd-operators"}]}

    async def usergroups_users_list(self, *, usergroup):
        assert usergroup == "S0OPS"
        return {"ok": True, "users": self.members}


class FakeClusters:
    def __init__(self, facts):
        self.facts = facts
        self.asked = []

    async def status(self, name, **_):
        self.asked.append(name)
        return StatusReport(facts=self.facts, diagnosis=diagnose(self.facts))


def command(text="", channel="C0INCIDENT", user="U0ALICE1"):
    return {"command": "/etcd-status", "text": text, "channel_id": channel, "user_id": user, "token": "tok"}


async def test_status_acks_then_posts_one_message(settings):
    ack, respond, client, clusters = Recorder(), Recorder(), FakeClient(), FakeClusters(healthy())
    handler = make_handler(settings=settings("lab"), clusters=clusters)
    await handler(ack=ack, command=command(), client=client, respond=respond)
    assert ack.calls == [{"text": "Checking etcd on lab…", "response_type": "ephemeral"}]
    assert clusters.asked == ["lab"]
    assert len(client.posted) == 1 and client.posted[0]["channel"] == "C0INCIDENT"
    assert "etcd is healthy" in client.posted[0]["text"]


async def test_status_garbage_refused_nothing_run(settings):
    ack, client, clusters = Recorder(), FakeClient(), FakeClusters(healthy())
    handler = make_handler(settings=settings("lab", "prod"), clusters=clusters)
    await handler(ack=ack, command=command("staging"), client=client, respond=Recorder())
    assert ack.calls[0]["response_type"] == "ephemeral" and "I know no cluster `staging`" in ack.calls[0]["text"]
    assert clusters.asked == [] and client.posted == []


async def test_middleware_refuses_a_user_outside_the_group():
    authorizer = Authorizer(allowed_users=(), allowed_usergroup="etcd-operators")
    ack, nexts = Recorder(), []

    async def next_():
        nexts.append(True)

    middleware = authorization_middleware(authorizer)
    await middleware(ack=ack, command=command(user="U0MALLORY"), client=FakeClient(["U0ALICE1"]), next=next_)
    assert nexts == [] and "You may not run `/etcd-status`" in ack.calls[0]["text"]
    assert "@etcd-operators" in ack.calls[0]["text"]
    await middleware(ack=Recorder(), command=command(user="U0ALICE1"), client=FakeClient(["U0ALICE1"]), next=next_)
    assert nexts == [True]


async def test_authorizer_listed_user_and_closed_default():
    listed = Authorizer(allowed_users=("U0BOB1",), allowed_usergroup=None)
    assert (await listed.check(client=FakeClient(), user_id="U0BOB1")).allowed
    assert not (await listed.check(client=FakeClient(), user_id="U0EVE1")).allowed
    closed = await Authorizer(allowed_users=(), allowed_usergroup=None).check(client=FakeClient(), user_id="U1")
    assert not closed.allowed
    assert "ETCDBOT_ALLOWED_USERS" in closed.reason and "ETCDBOT_ALLOWED_USERGROUP" in closed.reason


async def test_a_closed_bot_refuses_every_command_naming_the_setting():
    middleware = authorization_middleware(Authorizer(allowed_users=(), allowed_usergroup=None))
    nexts: list[bool] = []

    async def next_():
        nexts.append(True)

    for text in ("/etcd-status", "/etcd-backup", "/etcd-runs"):
        ack = Recorder()
        await middleware(ack=ack, command={**command(user="U0ALICE1"), "command": text}, client=FakeClient(), next=next_)
        assert f"You may not run `{text}`" in ack.calls[0]["text"]
        assert "ETCDBOT_ALLOWED_USERS" in ack.calls[0]["text"] and ack.calls[0]["response_type"] == "ephemeral"
    assert nexts == []
