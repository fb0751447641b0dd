"""Chapter 3 and 4 rules without a cluster: which nodes lack an SSH address, what a node answered,
which backup counts as "taken before" and which one a restore would use, the shutdown record as
Redis stores it, and the worker SSH settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.backups import BackupRecord, DrillOutcome, StoredFile
from bot.cluster.hosts import CommandResult
from bot.config import ConfigError, load_settings
from bot.shutdowns import NodeAnswer, ShutdownRecord
from procedures.cluster_nodes import NodeView
from procedures.guards import fresh_backup, newest_usable, restore_advice, usable
from procedures.shutdown import answer_text, without_address

M1, M2, W1 = "ip-10-0-131-183.ec2.internal", "ip-10-0-154-204.ec2.internal", "ip-10-0-179-95.ec2.internal"


def test_every_node_needs_an_ssh_address_and_a_master_must_be_a_master() -> None:
    nodes = [NodeView(M1, "master", True), NodeView(M2, "master", True), NodeView(W1, "worker", True)]
    assert without_address(nodes, masters=(M1, M2), workers=(W1,)) == []
    assert without_address(nodes, masters=(M1, M2), workers=()) == [W1]
    assert without_address(nodes, masters=(M1,), workers=(M2, W1)) == [M2]  # a master listed as a worker


def result(rc: int | None, *, stdout: str = "", stderr: str = "", error: str | None = None) -> CommandResult:
    return CommandResult(node=M1, argv=("sudo", "shutdown", "-h", "1"), rc=rc, stdout=stdout, stderr=stderr,
                         elapsed=0.1, error=error)


def test_a_nodes_answer() -> None:
    said = "Shutdown scheduled for Mon 2024-05-06 10:01:00 UTC, use 'shutdown -c' to cancel."
    assert answer_text(result(0, stderr=said + "\n")) == said
    assert answer_text(result(None, error="SSH to x failed: refused")) == "SSH to x failed: refused"
    assert answer_text(result(1, stderr="Interactive authentication required.")) == "Interactive authentication required."
    assert answer_text(result(0)) == "scheduled" and answer_text(result(3)) == "exit code 3"


def record(backup_id: str, *, version: str = "4.5.2", finished: float = 10_000.0, verified: bool = True,
           path: str = "/store/x/snapshot.db", drilled: bool | None = True) -> BackupRecord:
    return BackupRecord(id=backup_id, cluster="lab", version=version, revision=9, total_keys=5, snapshot_hash=1,
                        snapshot_size=10, files=(StoredFile(name="snapshot.db", role="snapshot", size=10, sha256="ab",
                                                            path=path),),
                        host=M1, started_at=finished - 5, finished_at=finished, run_id="r", requester="U1",
                        verified=verified, encrypted=False, host_dir="/home/core/assets/backup/r",
                        drill=None if drilled is None else DrillOutcome(ok=drilled, at=finished, seconds=1.0))


def present(_record: BackupRecord) -> bool:
    return True


def test_the_backup_taken_before_is_recent_usable_and_of_the_running_version() -> None:
    records = [record("old", finished=1_000.0), record("other", version="4.5.1", finished=9_900.0),
               record("bad", finished=9_950.0, verified=False), record("good", finished=9_000.0)]
    assert fresh_backup(records, version="4.5.2", now=10_000.0, max_age=3600, present=present).id == "good"
    assert fresh_backup(records, version="4.5.2", now=20_000.0, max_age=3600, present=present) is None
    assert fresh_backup(records, version="4.5.2", now=10_000.0, max_age=3600, present=lambda r: r.id != "good") is None
    assert newest_usable(records, version="4.5.2", present=present).id == "good"
    assert newest_usable(records, version="4.5.3", present=present) is None


def test_only_a_verified_and_drilled_backup_is_usable() -> None:
    assert usable(record("d"))
    assert not usable(record("d", drilled=False)), "a failed drill"
    assert not usable(record("d", drilled=None)), "never drilled"
    assert not usable(record("d", verified=False))


def test_files_must_still_be_in_the_store(tmp_path: Path) -> None:
    from procedures.guards import files_present

    kept = tmp_path / "snapshot.db"
    kept.write_bytes(b"x")
    assert files_present(record("a", path=str(kept)))
    assert not files_present(record("b", path=str(tmp_path / "gone.db")))


def test_restore_advice_names_the_backup_and_the_command() -> None:
    advice = restore_advice(cluster="lab", found=record("20240501-100000-abcd", finished=1714557600.0), version="4.5.2")
    assert "`/etcd-restore 20240501-100000-abcd lab`" in advice and "OpenShift 4.5.2" in advice
    assert "2024-05-01 10:00 UTC" in advice
    none = restore_advice(cluster="lab", found=None, version="4.5.2")
    assert "no usable backup of OpenShift 4.5.2" in none and "/etcd-backups" in none


def test_the_shutdown_record_round_trips_through_json() -> None:
    shutdown = ShutdownRecord(cluster="lab", run_id="r1", requester="U0ALICE01", at=1.0, version="4.5.2",
                              backup_id="b1", nodes=(NodeAnswer(M1, "master", True, "Shutdown scheduled"),
                                                     NodeAnswer(W1, "worker", False, "no answer")))
    again = ShutdownRecord.from_storage(json.loads(json.dumps(shutdown.for_storage())))
    assert again == shutdown and again.masters == (M1,) and again.workers == (W1,)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name in ("kubeconfig", "id_ed25519", "known_hosts"):
        (tmp_path / name).write_text("x")
    return tmp_path


def settings(files: Path, ssh: dict) -> dict[str, str]:
    cluster = {"name": "lab", "kubeconfig": str(files / "kubeconfig"),
               "ssh": {"private_key": str(files / "id_ed25519"), "known_hosts": str(files / "known_hosts"), **ssh}}
    return {"ETCDBOT_SLACK_BOT_TOKEN": "xoxb-x", "ETCDBOT_SLACK_APP_TOKEN": "xapp-x",
            "ETCDBOT_CLUSTERS": json.dumps([cluster])}


def test_worker_ssh_addresses_apart_from_the_masters(files: Path) -> None:
    from bot.clusters import hosts_for

    loaded = load_settings(environ=settings(files, {"hosts": {M1: "127.0.0.1:40022"}, "workers": {W1: "127.0.0.1:40030"}}))
    cluster = loaded.cluster("lab")
    assert cluster is not None and cluster.ssh is not None
    assert cluster.ssh.address(W1) == ("127.0.0.1", 40030)
    hosts = hosts_for(cluster)
    assert hosts is not None and hosts.nodes == (M1,) and hosts.workers == (W1,)  # `nodes` stays the masters
    assert hosts.target(W1).port == 40030
    assert loaded.shutdown_backup_max_age == 3600 and loaded.restart_timeout == 1800 and loaded.csr_settle == 120
    with pytest.raises(ConfigError, match="listed both as a master"):
        load_settings(environ=settings(files, {"hosts": {M1: "127.0.0.1:1"}, "workers": {M1: "127.0.0.1:2"}}))
    with pytest.raises(ConfigError, match="is not a node name"):
        load_settings(environ=settings(files, {"hosts": {M1: "127.0.0.1:1"}, "workers": {"Bad Name": "127.0.0.1:2"}}))
