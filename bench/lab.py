"""How long `etcdbot-lab up` and `down` take, and how much memory a running lab holds.

Prints the median of N runs (default 5) of each, and the total RSS of every process of the lab
(the daemon, etcd members, redis, and anything they started) measured on a running lab, with the
default two workers (hosts with SSH and a kubelet, no etcd) unless --workers says otherwise.
Usage: .venv/bin/python bench/lab.py [--runs N] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "lab.cli"]


def descendants(pid: int) -> set[int]:
    """pid and every process whose parent chain or session leads to it."""
    found = {pid}
    changed = True
    while changed:
        changed = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().split(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            child, ppid = int(stat.parent.name), int(fields[1])
            if ppid in found and child not in found:
                found.add(child)
                changed = True
    return found


def rss_kib(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    ups, downs, rss = [], [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            lab_dir = Path(tmp) / "lab"
            t0 = time.monotonic()
            subprocess.run([*CLI, "up", "--dir", str(lab_dir), "--workers", str(args.workers)], check=True,
                           capture_output=True, cwd=ROOT)
            ups.append(time.monotonic() - t0)
            pids: set[int] = set()
            for name in ("daemon.pid", "children.pids"):
                for pid in (lab_dir / name).read_text().split():
                    pids |= descendants(int(pid))
            rss.append(rss_kib(pids) / 1024)
            t0 = time.monotonic()
            subprocess.run([*CLI, "down", "--dir", str(lab_dir)], check=True, capture_output=True, cwd=ROOT)
            downs.append(time.monotonic() - t0)
    print(f"runs: {args.runs}, workers: {args.workers}, load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"up:   median {statistics.median(ups):.2f} s  (min {min(ups):.2f}, max {max(ups):.2f})")
    print(f"down: median {statistics.median(downs):.2f} s  (min {min(downs):.2f}, max {max(downs):.2f})")
    print(f"lab RSS (daemon, 3 etcd members, redis; {args.workers} workers): median {statistics.median(rss):.0f} MiB "
          f"(min {min(rss):.0f}, max {max(rss):.0f})")


if __name__ == "__main__":
    main()
