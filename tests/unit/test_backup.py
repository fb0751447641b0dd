"""Chapter 1's decisions and the backup store, without a cluster: install time and the 24 h rule,
peak hours, proxy env, encryption and where the tarball goes, picking the master, parsing what
the host prints, the commands sent, and the store's all-or-nothing commit."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, time

import pytest

from bot.backups import (
    BackupRecord,
    BackupStore,
    DrillOutcome,
    StoredFile,
    StoreError,
    new_backup_id,
    placement,
)
from bot.procedure import StepFailed
from handlers.backup import render_catalogue
from handlers.procedures import refusal_text
from procedures import backup as ch1
from procedures.facts import ClusterFacts, MemberFacts, NodeFacts

T0 = datetime(2026, 11, 25, 8, 43, 22, tzinfo=UTC)


def cv(*history: dict, created: str = "2026-11-25T08:13:22Z") -> dict:
    return {"metadata": {"creationTimestamp": created},
            "status": {"desired": {"version": "4.5.9"}, "history": list(history)}}


def test_install_time_is_the_oldest_history_entry_and_version_the_newest_completed() -> None:
    obj = cv({"state": "Partial", "version": "4.5.9", "startedTime": "2026-11-27T00:00:00Z"},
             {"state": "Completed", "version": "4.5.2", "completionTime": "2026-11-26T00:00:00Z"},
             {"state": "Completed", "version": "4.5.1", "completionTime": "2026-11-25T08:43:22Z"})
    assert ch1.installed_at(obj) == T0
    assert ch1.full_version(obj) == "4.5.2"
    assert ch1.installed_at(cv()) == datetime(2026, 11, 25, 8, 13, 22, tzinfo=UTC)
    assert ch1.full_version(cv()) == "4.5.9"
    assert ch1.installed_at({}) is None


def test_24_hours() -> None:
    assert ch1.possible_at(T0) == datetime(2026, 11, 26, 8, 43, 22, tzinfo=UTC)
    assert ch1.too_young(installed=T0, now=datetime(2026, 11, 26, 8, 43, 21, tzinfo=UTC))
    assert not ch1.too_young(installed=T0, now=datetime(2026, 11, 26, 8, 43, 22, tzinfo=UTC))
    assert not ch1.too_young(installed=None, now=T0)
    refusal = ch1.age_refusal(cluster="prod", installed=T0, now=datetime(2026, 11, 26, 8, 0, tzinfo=UTC))
    assert refusal is not None and refusal.until == ch1.possible_at(T0).timestamp()
    text = refusal_text(refusal)
    assert "2026-11-26 08:43 UTC" in text and "/etcd-backup prod" in text and "possible from" in text
    assert ch1.age_refusal(cluster="prod", installed=T0, now=datetime(2026, 11, 26, 8, 44, tzinfo=UTC)) is None


@pytest.mark.parametrize(("hhmm", "window", "tz", "peak"), [
    ("08:59", ("09:00", "17:00"), "UTC", False),
    ("09:00", ("09:00", "17:00"), "UTC", True),
    ("17:00", ("09:00", "17:00"), "UTC", False),
    ("08:30", ("09:00", "17:00"), "Europe/Berlin", True),  # 09:30 in Berlin (winter)
    ("23:30", ("22:00", "06:00"), "UTC", True),
    ("05:59", ("22:00", "06:00"), "UTC", True),
    ("12:00", ("22:00", "06:00"), "UTC", False),
    ("12:00", ("00:00", "00:00"), "UTC", False),
])
def test_peak_hours(hhmm: str, window: tuple[str, str], tz: str, peak: bool) -> None:
    h, m = (int(x) for x in hhmm.split(":"))
    start, end = (time(*(int(x) for x in w.split(":"))) for w in window)
    now = datetime(2026, 11, 27, h, m, tzinfo=UTC)
    assert ch1.in_peak_hours(now=now, window=(start, end), timezone=tz) is peak


def test_proxy_env() -> None:
    assert ch1.proxy_env({"spec": {"trustedCA": {"name": ""}}}) == {}
    spec = {"httpProxy": "http://proxy.example.com:3128", "httpsProxy": "http://u:p%40ss@proxy:3128",
            "noProxy": ".cluster.local,.svc,10.0.0.0/16,localhost"}
    env = ch1.proxy_env({"spec": spec})
    assert env == {"HTTP_PROXY": spec["httpProxy"], "HTTPS_PROXY": spec["httpsProxy"], "NO_PROXY": spec["noProxy"]}
    command = ch1.backup_script_command(directory="/home/core/assets/backup/ab12", env=env)
    assert command[:2] == ["sudo", "env"] and command[-2:] == [ch1.BACKUP_SCRIPT, "/home/core/assets/backup/ab12"]
    with pytest.raises(StepFailed):
        ch1.proxy_env({"spec": {"httpProxy": "http://x; rm -rf /"}})


def test_encryption_and_where_the_tarball_goes(tmp_path) -> None:
    assert not ch1.encryption_on(None) and not ch1.encryption_on({"spec": {}})
    assert not ch1.encryption_on({"spec": {"encryption": {"type": "identity"}}})
    assert ch1.encryption_on({"spec": {"encryption": {"type": "aescbc"}}})
    root, keys = tmp_path / "backups", tmp_path / "keys"
    plain = placement(root=root, keys_root=keys, cluster="prod", backup_id="20261127-081409-ab12", encrypted=False)
    assert plain.snapshot_dir == plain.resources_dir == root / "prod" / "20261127-081409-ab12" and not plain.apart
    apart = placement(root=root, keys_root=keys, cluster="prod", backup_id="20261127-081409-ab12", encrypted=True)
    assert apart.snapshot_dir == root / "prod" / "20261127-081409-ab12"
    assert apart.resources_dir == keys / "prod" / "20261127-081409-ab12" and apart.apart
    with pytest.raises(ValueError):
        placement(root=root, keys_root=root / "keys", cluster="prod", backup_id="20261127-081409-ab12", encrypted=True)
    with pytest.raises(ValueError):
        placement(root=root, keys_root=keys, cluster="prod", backup_id="../etc", encrypted=False)
    assert BackupStore(root=root).keys == tmp_path / "backups-keys"


def member(name: str, *, healthy: bool = True, leader: bool = False) -> MemberFacts:
    return MemberFacts(name=name, id=name[-2:], endpoint=f"https://{name}:2379", healthy=healthy, leader=leader)


def test_candidates_healthy_reachable_ready_followers_first() -> None:
    facts = ClusterFacts(
        cluster="prod", api_available=True, version="4.5.2", members_known=True,
        members=(member("m-a", leader=True), member("m-b"), member("m-c", healthy=False), member("m-d")),
        nodes=(NodeFacts(name="m-d", ready="False", unreachable=False),),
    )
    assert ch1.candidates(facts, ssh_nodes=("m-a", "m-b", "m-c", "m-d")) == ["m-b", "m-a"]
    assert ch1.candidates(facts, ssh_nodes=("m-a",)) == ["m-a"]


def test_parsing_what_the_host_prints() -> None:
    status = ch1.parse_snapshot_status('{"hash":2987402482,"revision":95,"totalKey":100,"totalSize":208896}\n')
    assert status == ch1.SnapshotStatus(hash=2987402482, revision=95, total_keys=100, total_size=208896)
    with pytest.raises(ValueError):
        ch1.parse_snapshot_status("Error: snapshot file integrity check failed")
    sums = ch1.parse_sha256sum("34ee" + "0" * 60 + "  /d/snapshot_2026-11-27_081409.db\n" + "78b0" + "1" * 60 +
                               "  /d/static_kuberesources_2026-11-27_081409.tar.gz\n")
    assert sums == {"snapshot_2026-11-27_081409.db": "34ee" + "0" * 60,
                    "static_kuberesources_2026-11-27_081409.tar.gz": "78b0" + "1" * 60}
    files = ch1.parse_listing("208928\tsnapshot_2026-11-27_081409.db\n1810\tstatic_kuberesources_2026-11-27_081409.tar.gz\n")
    assert (files.snapshot_size, files.resources_size) == (208928, 1810)
    with pytest.raises(ValueError):
        ch1.parse_listing("208928\tsnapshot_2026-11-27_081409.db\n")


def test_commands_refuse_what_they_must_not_send() -> None:
    assert ch1.host_dir("ab12cd34") == "/home/core/assets/backup/ab12cd34"
    for bad in ("../x", "a b", "a;b", ""):
        with pytest.raises(ValueError):
            ch1.host_dir(bad)
    with pytest.raises(ValueError):
        ch1.clear_dir_command("/home/core")
    with pytest.raises(ValueError):
        ch1.own_command(directory="/home/core/assets/backup/x", uid="0; rm", gid="0")


def record(run_id: str = "ab12", files: tuple[StoredFile, ...] = ()) -> BackupRecord:
    return BackupRecord(id=new_backup_id(run_id=run_id, at=T0.timestamp()), cluster="prod", version="4.5.2",
                        revision=95, total_keys=100, snapshot_hash=1, snapshot_size=10, files=files, host="m-a",
                        started_at=1.0, finished_at=2.0, run_id=run_id, requester="U1", verified=True,
                        encrypted=False, host_dir="/home/core/assets/backup/ab12")


async def chunks(*parts: bytes):
    for part in parts:
        yield part


async def test_store_streams_hashes_and_commits_all_or_nothing(tmp_path) -> None:
    store = BackupStore(root=tmp_path / "backups")
    target = store.prepare(run_id="ab12", encrypted=False)
    got = await store.receive(chunks=chunks(b"a" * 10, b"b" * 5), dest=target.snapshot_dir / "snapshot_x.db")
    assert got.size == 15 and got.sha256 == hashlib.sha256(b"a" * 10 + b"b" * 5).hexdigest()
    assert not (tmp_path / "backups" / "prod").exists()  # nothing is a backup before commit
    rec = record()
    final = store.commit(record=rec, encrypted=False)
    assert (final.snapshot_dir / "snapshot_x.db").is_file() and (final.snapshot_dir / "metadata.json").is_file()
    assert not any((tmp_path / "backups" / ".incoming").iterdir())
    assert [r.id for r in store.records(cluster="prod")] == [rec.id]
    assert store.commit(record=rec, encrypted=False) == final  # again after a restart: idempotent


async def test_encrypted_backups_put_the_tarball_apart(tmp_path) -> None:
    store = BackupStore(root=tmp_path / "backups", keys_root=tmp_path / "keys")
    target = store.prepare(run_id="ab12", encrypted=True)
    assert target.apart
    await store.receive(chunks=chunks(b"s"), dest=target.snapshot_dir / "snapshot_x.db")
    await store.receive(chunks=chunks(b"k"), dest=target.resources_dir / "static_kuberesources_x.tar.gz")
    final = store.commit(record=record(), encrypted=True)
    assert (final.resources_dir / "static_kuberesources_x.tar.gz").is_file()
    assert not (final.snapshot_dir / "static_kuberesources_x.tar.gz").exists()
    assert str(final.resources_dir).startswith(str(tmp_path / "keys"))


def test_full_store_is_refused_before_copying(tmp_path) -> None:
    store = BackupStore(root=tmp_path)
    store.check_space(needed=1)
    with pytest.raises(StoreError, match="plus 20%"):
        store.check_space(needed=10**18)


def test_discard_leaves_nothing(tmp_path) -> None:
    store = BackupStore(root=tmp_path / "b", keys_root=tmp_path / "k")
    target = store.prepare(run_id="ab12", encrypted=True)
    (target.snapshot_dir / "half").write_bytes(b"x")
    store.discard(run_id="ab12")
    assert not target.snapshot_dir.exists() and not target.resources_dir.exists()


def test_catalogue_rendering() -> None:
    files = (StoredFile(name="snapshot_x.db", role="snapshot", size=10, sha256="0" * 64, path="/b/snapshot_x.db"),)
    plain = record(files=files)
    drilled = replace(record(run_id="cd34", files=files), finished_at=7200.0,
                      drill=DrillOutcome(ok=True, at=7300.0, seconds=3.2, revision=95, keys=100))
    failed = replace(record(run_id="ef56", files=files), drill=DrillOutcome(ok=False, at=7300.0, seconds=1.0,
                                                                           error="revision 94, the metadata says 95"))
    blocks = render_catalogue(cluster="prod", records=[drilled, plain, failed], now=3 * 3600.0)
    text = blocks[0].text.text  # type: ignore[attr-defined]
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("2026")}
    assert "4.5.2" in lines[drilled.id] and "1970-01-01 02:00" in lines[drilled.id] and "60 min" in lines[drilled.id]
    assert "yes (3 s)" in lines[drilled.id] and "not yet" in lines[plain.id] and "FAILED" in lines[failed.id]
    assert "AGE" in text and "REVISION" in text and "DRILLED" in text and "10 B" in lines[plain.id]
    assert "revision 94, the metadata says 95" in blocks[1].text.text  # type: ignore[attr-defined]
    empty = render_catalogue(cluster="prod", records=[])[0].text.text  # type: ignore[attr-defined]
    assert "/etcd-backup prod" in empty


def test_the_ssh_users_ids_come_from_one_id() -> None:
    from procedures.backup import ID_RE

    found = ID_RE.search("uid=1000(core) gid=1000(core) groups=1000(core),4(adm),10(wheel)\n")
    assert found is not None and found.groups() == ("1000", "1000")
    assert ID_RE.search("uid=1000 gid=1001\n").groups() == ("1000", "1001")  # type: ignore[union-attr]
    assert ID_RE.search("core\n") is None
