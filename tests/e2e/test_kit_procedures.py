"""The procedure kit in the real bot: a test procedure loaded with ETCDBOT_PROCEDURE_MODULES gets
its slash command, its admission is rendered (a refusal; a warning whose button starts it with
the override), its steps pass typed results; and a bot with no allowed users refuses everyone,
naming the setting, and says so on /readyz."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.botprocess import get
from tests.e2e.backup_support import BotProcess, blocks_text, buttons, command, seen, workspace
from tests.labfixture import Lab, wait_for

SAMPLE = re.compile(r"^Kit sample on (?P<cluster>[a-z0-9-]+): (?P<state>[a-z ]+) \(run (?P<run>[0-9a-f]+)\)$")


@pytest.fixture(scope="module")
def bot(lab: Lab) -> Iterator[BotProcess]:
    process = BotProcess(lab=lab, env={"ETCDBOT_PROCEDURE_MODULES": "tests.kit.sample_procedure"}).start()
    try:
        yield process
    finally:
        process.stop()


def sample_run(lab: Lab, *, since: int, states: tuple[str, ...] = ("succeeded", "failed")) -> dict:
    def check() -> dict | None:
        for message in seen(lab, since=since):
            match = SAMPLE.match(message.get("text", ""))
            if match and not message.get("thread_ts") and match["state"] in states:
                return message
        return None

    return wait_for(check, timeout=60, what=f"the sample run in {states}", interval=0.2)


def answer(lab: Lab, *, since: int, contains: str, user: str = "alice") -> dict:
    return wait_for(lambda: next((m for m in seen(lab, since=since, user=user) if contains in m.get("text", "")), None),
                    timeout=30, what=f"an answer with {contains!r}")


def test_a_loaded_procedure_runs_with_typed_results(lab: Lab, bot: BotProcess) -> None:
    since = command(lab, "/etcd-kit-sample yes")
    done = sample_run(lab, since=since)
    text = blocks_text(done)
    assert "succeeded" in done["text"], text
    assert "3 masters" in text and f"the answer was yes, first master {sorted(lab.masters)[0]}" in text


def test_admission_refusal_and_warning_with_its_override(lab: Lab, bot: BotProcess) -> None:
    since = command(lab, "/etcd-kit-sample no")
    refused = answer(lab, since=since, contains="The answer is no.")
    assert refused["text"].startswith(":no_entry:") and "Ask again with `yes`." in refused["text"]

    since = command(lab, "/etcd-kit-sample maybe")
    warned = answer(lab, since=since, contains="only maybe")
    assert buttons(warned) == ["Go on anyway"]
    workspace(lab).press(user="alice", button_text="Go on anyway", channel="incident")
    done = sample_run(lab, since=since)
    assert "succeeded" in done["text"] and "the answer was maybe" in blocks_text(done)


def test_dry_run_of_a_refused_start_shows_the_plan_and_the_refusal(lab: Lab, bot: BotProcess) -> None:
    since = command(lab, "/etcd-kit-sample no --dry-run")
    plan = answer(lab, since=since, contains="Dry run")
    assert "oc get nodes -l node-role.kubernetes.io/master" in blocks_text(plan)
    assert answer(lab, since=since, contains="The answer is no.")


def test_a_person_not_allowed_is_refused(lab: Lab, bot: BotProcess) -> None:
    since = command(lab, "/etcd-kit-sample yes", user="dave")
    refused = answer(lab, since=since, user="dave", contains="You may not run")
    assert "`/etcd-kit-sample`" in refused["text"]


def test_closed_by_default(lab: Lab, bot: BotProcess) -> None:
    bot.stop()
    closed = BotProcess(lab=lab, env={"ETCDBOT_ALLOWED_USERS": "", "ETCDBOT_ALLOWED_USERGROUP": ""}).start()
    try:
        status, body = get(f"http://127.0.0.1:{lab.env['ETCDBOT_HEALTH_PORT']}/readyz")
        assert status == 200 and json.loads(body)["access"].startswith("closed"), body
        assert "ETCDBOT_ALLOWED_USERS" in json.loads(body)["access"]
        for text in ("/etcd-status", "/etcd-backup", "/etcd-runs"):
            since = command(lab, text)
            refused = answer(lab, since=since, contains="You may not run")
            assert "ETCDBOT_ALLOWED_USERS" in refused["text"] and "ETCDBOT_ALLOWED_USERGROUP" in refused["text"]
        assert "every command is refused" in closed.log_path.read_text()
    finally:
        closed.stop()
        bot.start()
