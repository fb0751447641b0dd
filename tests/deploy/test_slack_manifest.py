"""slack/manifest.yaml: a Slack app manifest with every command, least scopes, Socket Mode; and the
same command list in the docs and the chart README."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.conftest import REPO

MANIFEST = REPO / "slack" / "manifest.yaml"
COMMANDS = [
    "/etcd-status", "/etcd-backup", "/etcd-backups", "/etcd-backup-verify", "/etcd-replace-member",
    "/etcd-restore", "/etcd-shutdown", "/etcd-restart-check", "/etcd-approve-csrs", "/etcd-runs",
    "/etcd-abort", "/etcd-help",
]
SCOPES = {"commands", "chat:write", "users:read", "usergroups:read", "channels:read"}
COMMAND_RE = re.compile(r"(?<![\w/-])/etcd-[a-z]+(?:-[a-z]+)*(?![\w-])")


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def manifest_commands(manifest: dict) -> list[str]:
    return [c["command"] for c in manifest["features"]["slash_commands"]]


def test_identity_and_settings(manifest: dict) -> None:
    assert manifest["display_information"]["name"] == "etcdbot"
    assert len(manifest["display_information"]["description"]) <= 140
    assert manifest["features"]["bot_user"]["display_name"] == "etcdbot"
    settings = manifest["settings"]
    assert settings["socket_mode_enabled"] is True
    assert settings["interactivity"]["is_enabled"] is True
    assert "request_url" not in settings["interactivity"], "Socket Mode needs no request URL"


def test_every_command_once_with_description_and_hint(manifest: dict) -> None:
    commands = manifest_commands(manifest)
    assert commands == COMMANDS
    for entry in manifest["features"]["slash_commands"]:
        assert set(entry) <= {"command", "description", "usage_hint", "should_escape", "url"}
        assert 0 < len(entry["description"]) <= 100, entry["command"]
        assert 0 < len(entry["usage_hint"]) <= 100, entry["command"]
        assert "url" not in entry, "Socket Mode: commands arrive over the socket"


def test_scopes_are_the_ones_used(manifest: dict) -> None:
    scopes = manifest["oauth_config"]["scopes"]
    assert set(scopes) == {"bot"}, "no user scopes"
    assert set(scopes["bot"]) == SCOPES
    assert len(scopes["bot"]) == len(SCOPES)
    assert "chat:write.public" not in scopes["bot"]


@pytest.mark.parametrize("doc", ["docs/slack-app.md", "helm/etcdbot/README.md"])
def test_docs_list_the_same_commands(manifest: dict, doc: str) -> None:
    text = (REPO / doc).read_text()
    assert sorted(set(COMMAND_RE.findall(text))) == sorted(manifest_commands(manifest))


def test_docs_name_the_scopes() -> None:
    text = (REPO / "docs" / "slack-app.md").read_text()
    for scope in SCOPES | {"connections:write", "chat:write.public"}:
        assert f"`{scope}`" in text, scope

