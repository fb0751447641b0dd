"""`/etcd-backup` on a cluster installed 10 h ago: refused, with the time it becomes possible; and
`--dry-run` shows every command while changing nothing (etcd, the masters, the store)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.backup_support import (
    HEARTBEAT_PREFIXES,
    BotProcess,
    blocks_text,
    command,
    host_assets,
    keys_changed_since,
    revision,
    run_message,
    seen,
    start_bot,
    store_tree,
)
from tests.labfixture import Lab, wait_for

LAB_ARGS = ("--installed-hours-ago", "10", "--clock-speed", "30")


@pytest.fixture(scope="module")
def bot(lab: Lab) -> Iterator[BotProcess]:
    process = start_bot(lab)
    try:
        yield process
    finally:
        process.stop()


def possible_from(lab: Lab) -> str:
    cv = json.loads(lab.kubectl("get", "clusterversion", "version", "-o", "json").stdout)
    done = datetime.fromisoformat(cv["status"]["history"][-1]["completionTime"].replace("Z", "+00:00"))
    return f"{(done + timedelta(hours=24)).astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def test_refused_in_the_first_24_hours_with_the_time_it_becomes_possible(lab: Lab, bot: BotProcess) -> None:
    since = command(lab, "/etcd-backup")
    answer = wait_for(lambda: next((m["text"] for m in seen(lab, since=since) if "No backup of" in m["text"]), None),
                      timeout=30, what="the refusal")
    assert "24 h after installation" in answer and "possible from" in answer and possible_from(lab) in answer, answer
    assert run_message(lab, since=since) is None
    assert not (lab.dir / "backups" / "lab").exists()


def test_dry_run_changes_nothing(lab: Lab, bot: BotProcess) -> None:
    node = lab.masters[0]
    before_rev, before_hosts, before_store = revision(lab, node), host_assets(lab), store_tree(lab)
    since = command(lab, "/etcd-backup --dry-run")
    plan = wait_for(lambda: next((blocks_text(m) for m in seen(lab, since=since) if "Dry run" in m["text"]), None),
                    timeout=30, what="the plan")
    note = wait_for(lambda: next((m["text"] for m in seen(lab, since=since) if "No backup of" in m["text"]), None),
                    timeout=30, what="the note that a real run would be refused")
    assert "possible from" in note
    master = plan.split("master=`", 1)[1].split("`", 1)[0]
    assert master in lab.masters
    for expected in (f"ssh core@{master}", "sudo /usr/local/bin/cluster-backup.sh /home/core/assets/backup/RUN-ID",
                     "etcdctl snapshot status", "sha256sum", f"sftp core@{master}", "oc get clusterversion",
                     "oc get proxy cluster", "sudo rm -rf --"):
        assert expected in plan, expected
    assert run_message(lab, since=since) is None
    assert host_assets(lab) == before_hosts and store_tree(lab) == before_store
    changed = keys_changed_since(lab, node, before_rev)
    assert all(key.startswith(HEARTBEAT_PREFIXES) for key in changed), changed  # only the lab's own heartbeats
