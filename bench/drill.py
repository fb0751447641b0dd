"""How long the bot's restore drill takes against the same steps done raw, and how much the
bot's own memory grows while it drills (the snapshot is never read into the bot).

Builds a single etcd holding about 200 MB (1 MB values), saves one snapshot, then N times
(default 3), side by side in the same minute:
  raw:  `etcdctl snapshot restore` into a temp dir + `etcd` start until healthy + one read
        (`etcdctl get` of the ClusterVersion key), then stop;
  bot:  the bot's drill of the same snapshot stored as a backup: `BackupStore.prove()` (sha256 of
        both stored files against the record, then `Driller.drill()`: restore, start, three reads
        checked against the metadata, stop, clean up), with this process's VmRSS before and its
        peak (VmHWM, reset through /proc/self/clear_refs) after.
Prints the medians, the median of per-run ratios bot/raw (target <= 2) and the peak memory
growth (target < 50 MB).
Usage: .venv/bin/python bench/drill.py [--runs N] [--megabytes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.backups import BackupRecord, BackupStore, StoredFile  # noqa: E402
from bot.drill import CLUSTERVERSION_KEY, Driller  # noqa: E402
from tests.lab.etcd_fixture import free_port  # noqa: E402

ENV = {"PATH": os.environ["PATH"], "ETCDCTL_API": "3"}


def etcdctl(*args: str, stdin: bytes | None = None, timeout: float = 120) -> str:
    return subprocess.run(["etcdctl", *args], env=ENV, input=stdin, check=True, capture_output=True,
                          timeout=timeout).stdout.decode()


def start_etcd(data_dir: Path, *, existing: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    client, peer = free_port(), free_port()
    url, purl = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    argv = ["etcd", "--name", "m", "--data-dir", str(data_dir), "--listen-client-urls", url,
            "--advertise-client-urls", url, "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
            "--initial-cluster", f"m={purl}", "--quota-backend-bytes", str(8 * 2**30)]
    if existing:
        argv += ["--initial-cluster-state", "existing"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 60
    while True:
        try:
            etcdctl("--endpoints", url, "--dial-timeout", "1s", "endpoint", "health", timeout=5)
            return proc, url
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


def raw_sequence(snapshot: Path, work: Path) -> float:
    started = time.monotonic()
    data = work / "raw"
    peer = free_port()
    etcdctl("snapshot", "restore", str(snapshot), "--data-dir", str(data), "--name", "m",
            "--initial-cluster", f"m=http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}")
    proc, url = start_etcd(data, existing=True)
    try:
        etcdctl("--endpoints", url, "get", CLUSTERVERSION_KEY, "--print-value-only")
        return time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


def stored_backup(store: BackupStore, snapshot: Path, status: dict[str, int]) -> BackupRecord:
    """The snapshot (and a small tarball) committed to the store as the backup procedure does."""
    import hashlib

    run_id, backup_id = "bench0001", "20261130-030000-bench0001"
    temp = store.prepare(run_id=run_id, encrypted=False)
    final = store.placement(cluster="bench", backup_id=backup_id, encrypted=False)
    shutil.copyfile(snapshot, temp.snapshot_dir / "snapshot_2026-11-30_030000.db")
    (temp.snapshot_dir / "static_kuberesources_2026-11-30_030000.tar.gz").write_bytes(os.urandom(1 << 16))
    files = []
    for name, role in (("snapshot_2026-11-30_030000.db", "snapshot"),
                       ("static_kuberesources_2026-11-30_030000.tar.gz", "resources")):
        digest = hashlib.sha256()
        with (temp.snapshot_dir / name).open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        files.append(StoredFile(name=name, role=role, size=(temp.snapshot_dir / name).stat().st_size,
                                sha256=digest.hexdigest(), path=str(final.snapshot_dir / name)))
    record = BackupRecord(id=backup_id, cluster="bench", version="4.5.2", revision=status["revision"],
                          total_keys=status["totalKey"], snapshot_hash=status["hash"], snapshot_size=status["totalSize"],
                          files=tuple(files), host="bench", started_at=time.time(), finished_at=time.time(),
                          run_id=run_id, requester="bench", verified=True, encrypted=False, host_dir="")
    store.commit(record=record, encrypted=False)
    return record


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def vm() -> dict[str, int]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-drill-") as tmp:
        work = Path(tmp)
        proc, url = start_etcd(work / "source")
        try:
            cv = {"status": {"desired": {"version": "4.5.2"}}}
            etcdctl("--endpoints", url, "put", CLUSTERVERSION_KEY, json.dumps(cv))
            value = os.urandom(1 << 19).hex().encode()  # 1 MiB of text
            for i in range(args.megabytes):
                etcdctl("--endpoints", url, "put", f"/kubernetes.io/configmaps/bench/cm-{i}", stdin=value)
            snapshot = work / "snapshot.db"
            etcdctl("--endpoints", url, "snapshot", "save", str(snapshot), timeout=600)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        status = json.loads(etcdctl("snapshot", "status", str(snapshot), "-w", "json"))
        size_mb = snapshot.stat().st_size / 1e6
        store = BackupStore(root=work / "store", driller=Driller(work_dir=work / "drills"))
        record = stored_backup(store, snapshot, status)
        raws, bots, ratios, growth = [], [], [], []
        for run in range(args.runs):
            raw = raw_sequence(snapshot, work)
            reset_peak()
            before = vm()
            started = time.monotonic()
            result = asyncio.run(store.prove(record))
            bot = time.monotonic() - started
            after = vm()
            if not result.ok:
                raise SystemExit(f"drill failed: {result.error}")
            raws.append(raw)
            bots.append(bot)
            ratios.append(bot / raw)
            growth.append((after["VmHWM"] - before["VmRSS"]) / 1024)
            print(f"run {run + 1}: raw {raw:.2f} s, bot {bot:.2f} s, ratio {bot / raw:.2f}, "
                  f"peak growth {growth[-1]:.1f} MiB")
        print(f"snapshot {size_mb:.0f} MB, {args.runs} runs")
        print(f"raw restore + etcd start + one read: median {statistics.median(raws):.2f} s")
        print(f"bot drill (sha256 of the stored files, restore, start, 3 checked reads, stop, clean): "
              f"median {statistics.median(bots):.2f} s")
        print(f"ratio bot/raw: median of per-run ratios {statistics.median(ratios):.2f} (target <= 2)")
        print(f"bot memory: peak growth median {statistics.median(growth):.1f} MiB (target < 50)")


if __name__ == "__main__":
    main()
