"""Settings: the lab's names, JSON decoding, and errors that name the variable and the fix."""

from __future__ import annotations

import json

import pytest

from bot.config import ConfigError, load_settings, read_env_file


@pytest.fixture
def files(tmp_path):
    for name in ("kubeconfig", "id_ed25519", "known_hosts"):
        (tmp_path / name).write_text("x")
    return tmp_path


def cluster(files, **changes):
    value = {"name": "lab", "kubeconfig": str(files / "kubeconfig"), "channels": ["C0INCIDENT"],
             "ssh": {"user": "core", "private_key": str(files / "id_ed25519"), "known_hosts": str(files / "known_hosts"),
                     "hosts": {"ip-10-0-131-183.ec2.internal": "127.0.0.1:40022"}},
             "peak_hours": "09:00-17:00", "timezone": "UTC"}
    value.update(changes)
    return value


def env(files, **extra):
    base = {
        "ETCDBOT_SLACK_BOT_TOKEN": "xoxb-lab-abc", "ETCDBOT_SLACK_APP_TOKEN": "xapp-lab-def",
        "ETCDBOT_SLACK_SIGNING_SECRET": "s3cr3t-signing", "ETCDBOT_CLUSTERS": json.dumps([cluster(files)]),
    }
    base.update(extra)
    return base


def test_defaults_and_the_lab_names(files):
    s = load_settings(environ=env(files, ETCDBOT_SLACK_API_URL="http://127.0.0.1:4567/api",
                                  ETCDBOT_ALLOWED_USERS='["U0ALICE1"]', ETCDBOT_ALLOWED_USERGROUP="etcd-operators",
                                  ETCDBOT_LOG_LEVEL="debug"))
    assert s.slack_api_url == "http://127.0.0.1:4567/api/"
    assert s.slack_mode == "socket" and s.http_port == 3000 and s.approver_usergroup == "etcd-approvers"
    assert s.allowed_users == ("U0ALICE1",) and s.allowed_usergroup == "etcd-operators" and s.log_level == "DEBUG"
    lab = s.cluster("lab")
    assert lab is not None and lab.ssh is not None
    assert lab.ssh.address("ip-10-0-131-183.ec2.internal") == ("127.0.0.1", 40022)
    assert s.cluster_for_channel("C0INCIDENT") is lab
    assert "xoxb-lab-abc" not in repr(s) and "s3cr3t-signing" not in repr(s)


def test_the_lock_timeout_is_45_s_unless_set(files):
    assert load_settings(environ=env(files)).lock_timeout == 45.0
    assert load_settings(environ=env(files, ETCDBOT_LOCK_TIMEOUT="15")).lock_timeout == 15.0


def test_empty_allowed_users_is_an_empty_list(files):
    assert load_settings(environ=env(files, ETCDBOT_ALLOWED_USERS="")).allowed_users == ()


@pytest.mark.parametrize(("extra", "expected"), [
    ({"ETCDBOT_CLUSTERS": "[{"}, "ETCDBOT_CLUSTERS: not valid JSON"),
    ({"ETCDBOT_SLACK_MODE": "websocket"}, "ETCDBOT_SLACK_MODE: Input should be 'socket' or 'http'. Set it to socket or http"),
    ({"ETCDBOT_ALLOWED_USERS": '["alice"]'}, "ETCDBOT_ALLOWED_USERS: 'alice' is not a Slack user ID"),
    ({"ETCDBOT_APPROVER_USERS": '["U0BOB0001", "bob"]'}, "ETCDBOT_APPROVER_USERS: 'bob' is not a Slack user ID"),
    ({"ETCDBOT_APPROVER_USERGROUP": "etcd approvers"}, "ETCDBOT_APPROVER_USERGROUP: 'etcd approvers' is not a user group"),
    ({"ETCDBOT_ALLOWED_USERGROUP": "ops;rm"}, "ETCDBOT_ALLOWED_USERGROUP: 'ops;rm' is not a user group"),
    ({"ETCDBOT_HTTP_PORT": "99999"}, "ETCDBOT_HTTP_PORT:"),
    ({"ETCDBOT_LOCK_TIMEOUT": "1"}, "ETCDBOT_LOCK_TIMEOUT:"),
    ({"ETCDBOT_SLACK_APP_TOKEN": ""}, "ETCDBOT_SLACK_APP_TOKEN"),
])
def test_errors_name_the_variable(files, extra, expected):
    environ = env(files, **extra)
    if extra.get("ETCDBOT_SLACK_APP_TOKEN") == "":
        del environ["ETCDBOT_SLACK_APP_TOKEN"]
    with pytest.raises(ConfigError) as error:
        load_settings(environ=environ)
    assert expected in str(error.value)


def test_nested_cluster_errors_have_a_path(files):
    bad = [cluster(files, name="Lab", kubeconfig="/nope/kubeconfig", timezone="Mars/Base",
                   ssh={"private_key": str(files / "id_ed25519"), "known_hosts": str(files / "known_hosts"),
                        "hosts": {"node-1": "127.0.0.1:notaport"}})]
    with pytest.raises(ConfigError) as error:
        load_settings(environ=env(files, ETCDBOT_CLUSTERS=json.dumps(bad)))
    text = str(error.value)
    assert "ETCDBOT_CLUSTERS[0].name: 'Lab' is not a cluster name" in text
    assert "ETCDBOT_CLUSTERS[0].kubeconfig: no such file: /nope/kubeconfig" in text
    assert "ETCDBOT_CLUSTERS[0].timezone" in text
    assert "ETCDBOT_CLUSTERS[0].ssh.hosts" in text


def test_a_clusters_approvers_are_checked_and_the_group_handle_loses_its_at(files):
    good = [cluster(files, approvers={"usergroup": "@etcd-approvers-lab", "users": ["U0CAROL01"]})]
    settings = load_settings(environ=env(files, ETCDBOT_CLUSTERS=json.dumps(good)))
    own = settings.approvers_of(good[0]["name"])
    assert own.usergroup == "etcd-approvers-lab" and own.users == ("U0CAROL01",)
    for approvers, expected in (({"users": ["carol"]}, "'carol' is not a Slack user ID"),
                                ({"usergroup": "a b"}, "'a b' is not a user group")):
        with pytest.raises(ConfigError) as error:
            load_settings(environ=env(files, ETCDBOT_CLUSTERS=json.dumps([cluster(files, approvers=approvers)])))
        assert "ETCDBOT_CLUSTERS[0].approvers" in str(error.value) and expected in str(error.value)


def test_missing_required_say_what_to_set():
    with pytest.raises(ConfigError) as error:
        load_settings(environ={})
    text = str(error.value)
    assert "ETCDBOT_SLACK_BOT_TOKEN: is not set. Set it to the bot token" in text
    assert "ETCDBOT_CLUSTERS: is not set" in text


def test_a_channel_belongs_to_one_cluster(files):
    two = [cluster(files), cluster(files, name="prod")]
    with pytest.raises(ConfigError, match="maps channel C0INCIDENT to both lab and prod"):
        load_settings(environ=env(files, ETCDBOT_CLUSTERS=json.dumps(two)))


def test_secrets_never_in_error_text(files):
    with pytest.raises(ConfigError) as error:
        load_settings(environ=env(files, ETCDBOT_SLACK_MODE="nope"))
    assert "xoxb-lab-abc" not in str(error.value)


def test_env_file_of_export_lines(files, tmp_path):
    path = tmp_path / "env"
    clusters = json.dumps([cluster(files)])
    lines = [f"export {k}={v!r}" if k != "ETCDBOT_CLUSTERS" else f"export {k}='{clusters}'"
             for k, v in env(files).items() if k != "ETCDBOT_CLUSTERS"]
    lines += [f"export ETCDBOT_CLUSTERS='{clusters}'", "# a comment", "export KUBECONFIG=/x/kubeconfig", ""]
    path.write_text("\n".join(lines))
    assert "KUBECONFIG" not in read_env_file(path)
    s = load_settings(env_file=path, environ={"ETCDBOT_LOG_LEVEL": "WARNING"})
    assert s.cluster_names == ("lab",) and s.log_level == "WARNING"


def test_env_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        read_env_file(tmp_path / "missing")
    (tmp_path / "bad").write_text("export ETCDBOT_X='unterminated\n")
    with pytest.raises(ConfigError, match="line 1"):
        read_env_file(tmp_path / "bad")
