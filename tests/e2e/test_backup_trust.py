"""Backups you can trust, tried as a new user would in the lab: the production bot as a process.

In order, on one lab (each test builds on the store the previous ones left):
1. `/etcd-backup` restores: its drill step passes, the metadata and `/etcd-backups` say "drilled".
2. A damaged copy in the store: `/etcd-backup-verify <id>` fails, the backup is no longer marked
   drilled (metadata, `/etcd-backups`), and the channel is told, with the on-call group.
3. etcd encryption on (`apiserver/cluster` spec.encryption.type aescbc): the static resources
   tarball (it holds the keys) lands in the keys directory, apart from the snapshot.
4. Redis FLUSHALL, then a bot restart: `/etcd-backups` lists every backup again, drills included.
5. `/etcd-backups prune --dry-run` shows what the stricter rules delete, and deletes nothing;
   `/etcd-backups prune` deletes exactly that, each deletion in the audit stream.
6. No drilled backup younger than max_backup_age: one warning, and `/etcd-status` shows it.
7. `etcdbot-lab upgrade` (when the lab has it): exactly one backup of the new version.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e.backup_support import BotProcess, blocks_text, command, seen, start_bot
from tests.labfixture import ROOT, Lab, lab_cli, wait_for

ONCALL = "S0APPROVERS"  # the lab workspace's user group (etcd-approvers)
STATE = {}  # what the tests of this module hand on to the next (backup ids), in order


def run_of(lab: Lab, *, since: int, title: str, states: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
    pattern = re.compile(rf"^{re.escape(title)} on (?P<cluster>[a-z0-9-]+): (?P<state>[a-z ]+) \(run (?P<run>[0-9a-f]+)\)$")

    def check() -> dict[str, Any] | None:
        for message in seen(lab, since=since):
            match = pattern.match(message.get("text", ""))
            if match and not message.get("thread_ts") and match["state"] in states:
                return {**message, "run_id": match["run"], "state": match["state"]}
        return None

    return wait_for(check, timeout=timeout, what=f"{title} in {states}", interval=0.2)


def stored_backups(lab: Lab, cluster: str = "lab") -> dict[str, dict[str, Any]]:
    """backup id -> metadata.json (test 2 damages a file on purpose: no checksum check here)."""
    base = lab.dir / "backups" / cluster
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(base.glob("*/metadata.json"))} if base.exists() else {}


def backup(lab: Lab) -> tuple[str, dict[str, Any], str]:
    """A person's `/etcd-backup`: (backup id, its metadata, the run message's text)."""
    before = set(stored_backups(lab))
    since = command(lab, "/etcd-backup")
    done = run_of(lab, since=since, title="Backing up etcd data", states=("succeeded", "failed"))
    text = blocks_text(done)
    assert done["state"] == "succeeded", text
    new = {k: v for k, v in stored_backups(lab).items() if k not in before}
    ((backup_id, meta),) = new.items()
    return backup_id, meta, text


def listing(lab: Lab) -> str:
    cursor = command(lab, "/etcd-backups")
    return wait_for(lambda: next((blocks_text(m) for m in seen(lab, since=cursor) if "Backups of" in m["text"]), None),
                    timeout=30, what="the catalogue")


def row(table: str, backup_id: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(backup_id))


def redis_client(lab: Lab) -> redis.Redis:
    return redis.Redis.from_url(lab.env["ETCDBOT_REDIS_URL"])


def settings(lab: Lab, **extra: str) -> dict[str, str]:
    return {"ETCDBOT_ONCALL_USERGROUP": ONCALL, "ETCDBOT_DRILL_DIR": str(lab.dir / "drill"), **extra}


@pytest.fixture(scope="module")
def bot(lab: Lab) -> Iterator[BotProcess]:
    process = start_bot(lab, **settings(lab, ETCDBOT_BACKUP_RETENTION='{"last": 3}'))
    try:
        yield process
    finally:
        process.stop()


def test_a_backup_is_drilled_and_listed_as_drilled(lab: Lab, bot: BotProcess) -> None:
    backup_id, meta, text = backup(lab)
    drill = meta["drill"]
    assert drill["ok"] and drill["revision"] == meta["revision"] and 0 < drill["seconds"] < 60, drill
    assert "Prove the backup restores" in text and f"backup `{backup_id}` restores: drill passed" in text
    assert not list((lab.dir / "drill").iterdir())  # the scratch etcd and its directory are gone
    line = row(listing(lab), backup_id)
    assert "4.5.2" in line and str(meta["revision"]) in line and re.search(r"yes \(\d+ s\)", line), line
    STATE["first"] = backup_id


def test_a_damaged_copy_fails_its_drill_is_never_marked_drilled_and_the_channel_is_told(lab: Lab, bot: BotProcess) -> None:
    backup_id = STATE["first"]
    meta = json.loads((lab.dir / "backups" / "lab" / backup_id / "metadata.json").read_text())
    snapshot = Path(next(f["path"] for f in meta["files"] if f["role"] == "snapshot"))
    with snapshot.open("r+b") as handle:  # what a bad disk does to a file at rest
        handle.seek(snapshot.stat().st_size // 2)
        handle.write(os.urandom(4096))
    since = command(lab, f"/etcd-backup-verify {backup_id}")
    done = run_of(lab, since=since, title="Verifying an etcd backup (restore drill)", states=("succeeded", "failed"))
    assert done["state"] == "failed", blocks_text(done)
    assert "FAILED its restore drill" in blocks_text(done) and "no longer matches its sha256" in blocks_text(done)
    notice = wait_for(lambda: next((m["text"] for m in seen(lab, since=since) if "FAILED its restore drill" in m["text"]
                                    and not m["text"].startswith("Verifying")), None), timeout=30, what="the notification")
    assert backup_id in notice and "not marked drilled" in notice and f"<!subteam^{ONCALL}" in notice
    after = json.loads((lab.dir / "backups" / "lab" / backup_id / "metadata.json").read_text())
    assert after["drill"]["ok"] is False and "sha256" in after["drill"]["error"]
    assert "FAILED" in row(listing(lab), backup_id)


def test_an_encrypted_clusters_tarball_goes_to_the_keys_directory(lab: Lab, bot: BotProcess) -> None:
    lab.kubectl("patch", "apiserver", "cluster", "--type=merge", "-p", '{"spec":{"encryption":{"type":"aescbc"}}}')
    try:
        backup_id, meta, text = backup(lab)
    finally:
        lab.kubectl("patch", "apiserver", "cluster", "--type=merge", "-p", '{"spec":{"encryption":null}}')
    assert meta["encrypted"] and "etcd encryption ON" in text
    files = {f["role"]: Path(f["path"]) for f in meta["files"]}
    assert files["snapshot"].parent == lab.dir / "backups" / "lab" / backup_id
    assert files["resources"].parent == lab.dir / "backups-keys" / "lab" / backup_id
    assert files["resources"].name.startswith("static_kuberesources_") and files["resources"].is_file()
    assert not list((lab.dir / "backups" / "lab" / backup_id).glob("static_kuberesources_*"))
    assert meta["drill"]["ok"]
    STATE["encrypted"] = backup_id
    STATE["third"], _, _ = backup(lab)


def test_after_flushall_and_a_restart_every_backup_is_listed_again(lab: Lab, bot: BotProcess) -> None:
    before = stored_backups(lab)
    assert len(before) == 3
    bot.stop()
    redis_client(lab).flushall()
    bot.env.update(settings(lab, ETCDBOT_BACKUP_RETENTION='{"last": 1}', ETCDBOT_MAX_BACKUP_AGE="25s",
                            ETCDBOT_WATCH_INTERVAL="2"))
    STATE["restarted"] = time.time()
    bot.start()
    table = listing(lab)
    for backup_id in before:
        assert backup_id in table
    assert "FAILED" in row(table, STATE["first"]) and "yes" in row(table, STATE["encrypted"])
    assert '"added": 3' in bot.log_path.read_text()  # the catalogue was rebuilt from disk


def test_prune_dry_run_shows_then_prune_deletes_each_one_audited(lab: Lab, bot: BotProcess) -> None:
    doomed = {STATE["first"], STATE["encrypted"]}  # last 1 (and newest drilled, newest 4.5.2) keeps the third
    since = command(lab, "/etcd-backups prune --dry-run")
    plan = wait_for(lambda: next((blocks_text(m) for m in seen(lab, since=since) if "Dry run" in m["text"]), None),
                    timeout=30, what="the dry run")
    for backup_id in doomed:
        assert re.search(rf"{backup_id} \([^)]*\): no retention rule keeps it", plan), plan
    assert re.search(rf"{STATE['third']} \([^)]*\): one of the last 1", plan), plan
    assert set(stored_backups(lab)) == doomed | {STATE["third"]}  # a dry run deletes nothing

    since = command(lab, "/etcd-backups prune")
    done = run_of(lab, since=since, title="Applying the retention rules to the backup store",
                  states=("succeeded", "failed"))
    assert done["state"] == "succeeded", blocks_text(done)
    assert set(stored_backups(lab)) == {STATE["third"]}
    assert not (lab.dir / "backups-keys" / "lab" / STATE["encrypted"]).exists()
    entries = redis_client(lab).xrange("etcdbot:audit:lab")
    deleted = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries
               if fields.get(b"event") == b"backup.deleted"]
    assert sorted(e["backup"] for e in deleted) == sorted(doomed)
    assert all(e["run"] == done["run_id"] and e["actor"] == "U0ALICE01" for e in deleted), deleted
    assert "deleted 2 backups" in blocks_text(done)


def test_no_recent_drilled_backup_warns_once_and_status_shows_it(lab: Lab, bot: BotProcess) -> None:
    since = 0
    warning = wait_for(lambda: [m["text"] for m in seen(lab, since=since) if "No drilled backup of `lab` younger" in m["text"]
                                and m["text"].startswith(":warning:")],
                       timeout=60, what="the age warning", interval=0.5)
    assert "younger than 25 s" in warning[0] and f"<!subteam^{ONCALL}" in warning[0] and STATE["third"] in warning[0]
    cursor = command(lab, "/etcd-status")
    status = wait_for(lambda: next((blocks_text(m) for m in seen(lab, since=cursor) if m["text"].startswith("etcd on lab")),
                                   None), timeout=60, what="the status message")
    assert "No drilled backup of `lab` younger than 25 s" in status
    time.sleep(5)  # reasoned: two more watch rounds (2 s apart) must NOT warn again
    again = [m for m in seen(lab, since=0) if "No drilled backup of `lab` younger" in m["text"] and m["text"].startswith(":warning:")]
    assert len(again) == 1


def _lab_upgrades() -> bool:
    help_text = subprocess.run([*lab_cli(), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=30).stdout
    return "upgrade" in help_text


@pytest.mark.skipif(not _lab_upgrades(), reason="this lab has no `etcdbot-lab upgrade` yet")
def test_an_upgrade_gets_exactly_one_backup_of_the_new_version(lab: Lab, bot: BotProcess) -> None:
    since = command(lab, "/etcd-runs")  # a cursor
    lab.cli("upgrade", "--to", "4.5.3", "--wait", timeout=300)
    new = wait_for(lambda: {k: m for k, m in stored_backups(lab).items() if m["version"] == "4.5.3" and m["drill"]},
                   timeout=150, what="a drilled backup of 4.5.3", interval=1.0)
    (backup_id, meta), = new.items()
    assert meta["requester"] == "upgrade" and meta["drill"]["ok"]
    note = next(m["text"] for m in seen(lab, since=since) if "is now OpenShift 4.5.3" in m["text"])
    assert "(was 4.5.2)" in note and "same z-stream" in note
    time.sleep(6)  # reasoned: three more watch rounds must not start another one
    assert [k for k, m in stored_backups(lab).items() if m["version"] == "4.5.3"] == [backup_id]
