"""The restore drill against a real etcd 3.4: a snapshot taken from a live member is restored
into a scratch etcd and checked against its metadata; a corrupted or mislabelled one fails with
a reason, and nothing is left behind (no process, no scratch directory)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.drill import (
    CLUSTERVERSION_KEY,
    Driller,
    DrillError,
    DrillExpectation,
    check_result,
    check_space,
    clusterversion_of,
)
from tests.lab.etcd_fixture import free_port

CV = {"kind": "ClusterVersion", "metadata": {"name": "version"},
      "status": {"desired": {"version": "4.5.2"}, "history": [{"state": "Completed", "version": "4.5.2"}]}}


def _etcdctl(endpoint: str, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "ETCDCTL_API": "3"}
    return subprocess.run(["etcdctl", "--endpoints", endpoint, *args], env=env, check=True, capture_output=True,
                          text=True, timeout=30).stdout


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, int]]]:
    """A live single-member etcd with a ClusterVersion and some objects, saved to a snapshot."""
    root = tmp_path_factory.mktemp("etcd")
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    proc = subprocess.Popen(
        ["etcd", "--name", "m0", "--data-dir", str(root / "data"), "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"m0=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _etcdctl(url, "--dial-timeout", "1s", "endpoint", "health")
                break
            except subprocess.CalledProcessError:
                assert time.monotonic() < deadline, "etcd did not start"
                time.sleep(0.1)
        _etcdctl(url, "put", CLUSTERVERSION_KEY, json.dumps(CV))
        for i in range(20):
            _etcdctl(url, "put", f"/kubernetes.io/configmaps/default/cm-{i}", "{}")
        _etcdctl(url, "del", "/kubernetes.io/configmaps/default/cm-0")
        path = root / "snapshot_2026-11-30_031500.db"
        _etcdctl(url, "snapshot", "save", str(path))
        status = json.loads(subprocess.run(["etcdctl", "snapshot", "status", str(path), "-w", "json"],
                                           env={"PATH": os.environ["PATH"], "ETCDCTL_API": "3"},
                                           check=True, capture_output=True, text=True).stdout)
        yield path, {"revision": status["revision"], "total_keys": status["totalKey"]}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _leftovers(work: Path) -> list[Path]:
    return list(work.iterdir()) if work.exists() else []


def _no_drill_etcd(work: Path) -> bool:
    out = subprocess.run(["pgrep", "-f", f"--data-dir {work}"], capture_output=True, text=True).stdout
    return out.strip() == ""


async def test_a_good_snapshot_passes_and_leaves_nothing(snapshot: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    path, meta = snapshot
    driller = Driller(work_dir=tmp_path / "drills")
    result = await driller.drill(path, expected=DrillExpectation(version="4.5.2", **meta))
    assert result.ok, result.error
    assert result.revision == meta["revision"]
    assert result.keys == 20  # 21 written, one deleted
    assert result.version == "4.5.2"
    assert "passed" in result.summary()
    assert _leftovers(tmp_path / "drills") == []
    assert _no_drill_etcd(tmp_path / "drills")


async def test_a_corrupted_snapshot_fails_with_the_reason(snapshot: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    path, meta = snapshot
    bad = tmp_path / "corrupt.db"
    data = bytearray(path.read_bytes())
    for i in range(4096, 4096 + 512):
        data[i] ^= 0xFF
    bad.write_bytes(bytes(data))
    result = await Driller(work_dir=tmp_path / "drills").drill(bad, expected=DrillExpectation(version="4.5.2", **meta))
    assert not result.ok
    assert "snapshot restore" in result.error
    assert "FAILED" in result.summary()
    assert _leftovers(tmp_path / "drills") == []


async def test_metadata_that_disagrees_fails(snapshot: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    path, meta = snapshot
    wrong = DrillExpectation(version="4.5.3", revision=meta["revision"] + 5, total_keys=meta["total_keys"])
    result = await Driller(work_dir=tmp_path / "drills").drill(path, expected=wrong)
    assert not result.ok
    assert "revision" in result.error and "4.5.3" in result.error


async def test_a_missing_snapshot_fails(tmp_path: Path) -> None:
    result = await Driller(work_dir=tmp_path).drill(tmp_path / "nope.db", expected=DrillExpectation(1, 1, "4.5.2"))
    assert not result.ok and "missing" in result.error


async def test_drills_run_one_at_a_time(snapshot: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    path, meta = snapshot
    driller = Driller(work_dir=tmp_path / "drills")
    expected = DrillExpectation(version="4.5.2", **meta)
    first = asyncio.create_task(driller.drill(path, expected=expected))
    await asyncio.sleep(0)
    assert driller.busy
    second = await driller.drill(path, expected=expected)
    one = await first
    assert one.ok and second.ok
    assert second.started_at >= one.started_at + one.seconds - 0.05  # the second waited for the first


async def test_the_deadline_stops_a_drill(snapshot: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    path, meta = snapshot
    result = await Driller(work_dir=tmp_path / "drills", timeout=0.05).drill(
        path, expected=DrillExpectation(version="4.5.2", **meta))
    assert not result.ok and "did not finish within" in result.error
    assert _leftovers(tmp_path / "drills") == []
    assert _no_drill_etcd(tmp_path / "drills")


def test_space_check_refuses_when_the_disk_is_too_small(tmp_path: Path) -> None:
    with pytest.raises(DrillError, match="not enough free space"):
        check_space(work_dir=tmp_path, snapshot_size=2**62)
    check_space(work_dir=tmp_path, snapshot_size=1024)


def test_check_result_names_every_disagreement() -> None:
    exp = DrillExpectation(revision=10, total_keys=5, version="4.5.2")
    assert check_result(expected=exp, revision=10, keys=5, version="4.5.2") == []
    problems = check_result(expected=exp, revision=9, keys=6, version="")
    assert len(problems) == 3


def test_clusterversion_of_reads_desired_then_history() -> None:
    assert clusterversion_of(json.dumps(CV)) == "4.5.2"
    hist = {"status": {"history": [{"state": "Partial", "version": "4.5.3"}, {"state": "Completed", "version": "4.5.2"}]}}
    assert clusterversion_of(json.dumps(hist)) == "4.5.2"
    assert clusterversion_of("") == "" and clusterversion_of("not json") == ""
