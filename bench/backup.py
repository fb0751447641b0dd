"""How long `/etcd-backup` takes against a raw `etcdctl snapshot save` + `scp` of the same data,
and how much the bot's memory grows while it copies (the copy is streamed, never read whole).

On a lab holding at least 200 MB of etcd data (1 MB values put with etcdctl), each of N runs
(default 3) measures, in the same lab and the same minute:
  raw: `sudo etcdctl snapshot save` on a master over SSH (and `sudo chown core`), then `scp` of
       that file to this machine;
  bot: from the slash command (`/etcd-backup`, as alice in the lab's workspace) until the progress
       message says succeeded; and the bot process's VmRSS / VmHWM (from /proc) before and after.
Prints the medians and the ratio bot/raw, the same until the backup is stored and verified (the run
less the bot's own drill and retention steps; target <= 1.2), each step's median, and the peak
memory growth (target < 50 MB).
Usage: .venv/bin/python bench/backup.py [--runs N] [--megabytes 200]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.backup_support import (  # noqa: E402 (after the path is set)
    ETCDCTL,
    blocks_text,
    command,
    etcdctl,
    fill_etcd,
    host_of,
    start_bot,
    wait_run,
)
from tests.labfixture import start_lab, stop_lab  # noqa: E402


def vm(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


STEP_LINE = re.compile(r"\*(\d+)\. (.+?)\* \(.*?\) · succeeded · ([0-9.]+) s")
AFTER_STORED = ("Prove the backup restores", "Apply the retention rules")  # the bot's own steps after the copy


def step_seconds(message: dict) -> dict[str, float]:  # type: ignore[type-arg]
    """Each step's duration as the run's final message shows it (title -> seconds)."""
    return {m.group(2): float(m.group(3)) for m in STEP_LINE.finditer(blocks_text(message))}


TOOK = re.compile(r"took ([0-9.]+) s")


def run_seconds(message: dict) -> float:  # type: ignore[type-arg]
    """The run's own time, from its record (created to finished), as the message's footer says it."""
    found = TOOK.search(blocks_text(message))
    return float(found.group(1)) if found else float("nan")


def raw_backup(lab, node: str, dest: Path) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    # as root (RHCOS: etcdctl's certificates are root's), then handed to core so that scp can read it
    lab.ssh(node, ETCDCTL.format("etcdctl snapshot save /home/core/raw.db >/dev/null") + " && sudo chown core /home/core/raw.db",
            timeout=600)
    subprocess.run(["scp", "-F", lab.env["LAB_SSH_CONFIG"], "-q", f"core@{node}:/home/core/raw.db", str(dest)],
                   check=True, timeout=600, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    lab.ssh(node, "sudo rm -f /home/core/raw.db")
    dest.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lab = start_lab(Path(tmp) / "lab")
        bot = None
        try:
            fill_etcd(lab, megabytes=args.megabytes)
            status = json.loads(etcdctl(lab, lab.masters[0], "etcdctl endpoint status -w json"))
            db_size = status[0]["Status"]["dbSize"]
            print(f"etcd DB size: {db_size / 1e6:.0f} MB")
            bot = start_bot(lab)
            assert bot.proc is not None
            pid = bot.proc.pid
            raws, bots, stored, rss_growth, hwm_growth = [], [], [], [], []
            per_step: dict[str, list[float]] = {}
            outside: list[float] = []
            for n in range(1, args.runs + 1):
                before = vm(pid)
                started = time.monotonic()
                since = command(lab, "/etcd-backup")
                done = wait_run(lab, since=since, states=("succeeded", "failed"), timeout=900)
                elapsed = time.monotonic() - started
                after = vm(pid)
                assert done["state"] == "succeeded", done
                raw = raw_backup(lab, host_of(done), Path(tmp) / "raw.db")
                raws.append(raw)
                bots.append(elapsed)
                steps = step_seconds(done)
                for title, seconds in steps.items():
                    per_step.setdefault(title, []).append(seconds)
                own = sum(v for k, v in steps.items() if k.startswith(AFTER_STORED))
                stored.append(elapsed - own)
                outside.append(elapsed - run_seconds(done))
                rss_growth.append((after["VmRSS"] - before["VmRSS"]) / 1024)
                hwm_growth.append((after["VmHWM"] - before["VmRSS"]) / 1024)
                print(f"run {n}: bot {elapsed:.1f} s (stored and verified after {stored[-1]:.1f} s, then drill and "
                      f"retention), raw snapshot+scp {raw:.1f} s, ratio {elapsed / raw:.2f} "
                      f"(stored: {stored[-1] / raw:.2f}); "
                      f"bot VmRSS {before['VmRSS'] / 1024:.0f} -> {after['VmRSS'] / 1024:.0f} MiB, "
                      f"VmHWM {after['VmHWM'] / 1024:.0f} MiB")
            bot_median, raw_median = statistics.median(bots), statistics.median(raws)
            ratios = [b / r for b, r in zip(bots, raws, strict=True)]
            print(f"median over {args.runs}: bot {bot_median:.1f} s, raw {raw_median:.1f} s, "
                  f"ratio of medians {bot_median / raw_median:.2f}, median of per-run ratios "
                  f"{statistics.median(ratios):.2f}")
            stored_ratios = [b / r for b, r in zip(stored, raws, strict=True)]
            print(f"until the backup is stored and verified (the run less its drill and retention steps): median "
                  f"{statistics.median(stored):.1f} s, median of per-run ratios {statistics.median(stored_ratios):.2f} "
                  "(target <= 1.2)")
            print(f"outside the run's own time (the command's ack, admission, lock and first post; the last "
                  f"update's turn in Slack's pacing; this bench's polling): median {statistics.median(outside):.2f} s")
            print("steps (median s): " + "; ".join(f"{title[:48]} {statistics.median(v):.2f}"
                                                   for title, v in per_step.items()))
            print(f"bot memory: RSS growth median {statistics.median(rss_growth):.1f} MiB, peak (VmHWM - RSS before) "
                  f"max {max(hwm_growth):.1f} MiB (target < 50)")
        finally:
            if bot is not None:
                bot.stop()
            stop_lab(lab)


if __name__ == "__main__":
    main()
