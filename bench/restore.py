"""How long `/etcd-restore` takes beside the same chapter 5.3 steps scripted by hand, on the same
lab and the same backup, and where the time goes.

Each of N runs (default 3), from a lost quorum (`etcdbot-lab fault lose-quorum`) both times:
  by hand: the tests' scripted restore: `scp` of the backup's two files to the recovery host and
           `sha256sum` there, `Lab.restore_by_hand` (static pods and data directories moved on
           the other masters, cluster-restore.sh, kubelets restarted, the restored etcd and the
           API back), the recovery host's etcd pod Running, then `Lab.force_redeployment` of etcd,
           kubeapiserver, kubecontrollermanager, kubescheduler, and `3 of 3 members are available`;
  bot:     from alice's `/etcd-restore <id>` until the run's message says succeeded, bob pressing
           Approve as soon as the request shows in the thread.
The two alternate which goes first. Before each scripted run the previous one's `/tmp/etcd` is
removed from the other masters (untimed): the document's `mv /var/lib/etcd/ /tmp` fails with
"Directory not empty" on a second restore, which is why the bot moves into a directory per run. Prints per run and the medians: both totals, the ratio
(target: the bot within 1.2x), the bot's time without the approval round trip, and the phases of
each side (the bot's from the audit stream's step events).
Usage: .venv/bin/python bench/restore.py [--runs N] [--clock-speed 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.backup_support import command, start_bot, stored_backups  # noqa: E402 (after the path is set)
from tests.e2e.restore_support import approval_request, audit, backup, press, wait_restore  # noqa: E402
from tests.labfixture import Lab, start_lab, stop_lab, wait_for  # noqa: E402

OPERATORS = ("etcd", "kubeapiserver", "kubecontrollermanager", "kubescheduler")


def lose_quorum(lab: Lab) -> None:
    lab.cli("fault", "lose-quorum")
    wait_for(lambda: lab.kubectl("get", "nodes", check=False, timeout=15).returncode != 0, timeout=60,
             what="the API failing without quorum")


def by_hand(lab: Lab, meta: dict) -> dict[str, float]:
    """The scripted restore; seconds per phase."""
    phases: dict[str, float] = {}
    recovery = lab.masters[0]
    for node in lab.masters[1:]:  # the document's `mv /var/lib/etcd/ /tmp` fails on a second run
        lab.ssh(node, "sudo rm -rf /tmp/etcd /tmp/etcd-pod.yaml /tmp/kube-apiserver-pod.yaml")  # (not timed)
    mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name] = now - mark
        mark = now

    lab.ssh(recovery, "rm -rf /home/core/backup && mkdir -p /home/core/backup")
    for item in meta["files"]:
        subprocess.run(["scp", "-F", lab.env["LAB_SSH_CONFIG"], "-q", item["path"], f"core@{recovery}:/home/core/backup/"],
                       check=True, timeout=600, stdin=subprocess.DEVNULL)
        name = Path(item["path"]).name
        assert lab.ssh(recovery, f"sha256sum /home/core/backup/{name}").stdout.split()[0] == item["sha256"]
    lap("copy the backup")
    lab.restore_by_hand(recovery=recovery)
    lap("stop, move, restore script, kubelets, API back")
    wait_for(lambda: lab.pod_status(recovery) == "Running", timeout=120, what="the restored etcd pod Running")
    lap("single member pod Running")
    reason = f"recovery-{time.time_ns()}"
    for operator in OPERATORS:
        lab.force_redeployment(operator, reason, timeout=900)
        lap(f"redeploy {operator}")
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=300, what="3 of 3")
    lap("3 of 3 members")
    return phases


def by_bot(lab: Lab, backup_id: str) -> tuple[dict[str, float], float]:
    """The bot's run; seconds per step (from the audit stream) and the approval round trip."""
    since = command(lab, f"/etcd-restore {backup_id}")
    run = wait_restore(lab, since=since, states=("waiting approval",), timeout=300)
    asked = time.monotonic()
    press(lab, user="bob", action_id="approval_approve", message=approval_request(lab, run=run, since=since))
    approval = time.monotonic() - asked
    done = wait_restore(lab, since=since, run_id=run["run_id"], states=("succeeded", "failed", "interrupted"),
                        timeout=1800)
    assert done["state"] == "succeeded", done
    started: dict[str, float] = {}
    steps: dict[str, float] = {}
    for entry in audit(lab):
        if entry.get("run") != run["run_id"]:
            continue
        if entry.get("event") == "step.started":
            started[entry["step"]] = float(entry["at"])
        elif entry.get("event") == "step.finished" and entry["step"] in started:
            steps[entry["step"].removeprefix("ch5.3.")] = float(entry["at"]) - started[entry["step"]]
    return steps, approval


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clock-speed", default="10")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lab = start_lab(Path(tmp) / "lab", "--clock-speed", args.clock_speed, "--workers", "0")
        bot = None
        try:
            bot = start_bot(lab)
            backup_id = backup(lab)
            meta = stored_backups(lab)[backup_id]
            hands, bots, bots_net = [], [], []
            hand_phases: dict[str, list[float]] = defaultdict(list)
            bot_steps: dict[str, list[float]] = defaultdict(list)
            for n in range(1, args.runs + 1):
                order = ("hand", "bot") if n % 2 else ("bot", "hand")
                for side in order:
                    lose_quorum(lab)
                    started = time.monotonic()
                    if side == "hand":
                        phases = by_hand(lab, meta)
                        hands.append(time.monotonic() - started)
                        for name, seconds in phases.items():
                            hand_phases[name].append(seconds)
                    else:
                        steps, approval = by_bot(lab, backup_id)
                        total = time.monotonic() - started
                        bots.append(total)
                        bots_net.append(total - approval)
                        for name, seconds in steps.items():
                            bot_steps[name].append(seconds)
                        bot_steps["(approval round trip)"].append(approval)
                print(f"run {n} ({' first, '.join(order)} second): by hand {hands[-1]:.1f} s, bot {bots[-1]:.1f} s "
                      f"({bots_net[-1]:.1f} s without the approval round trip), ratio {bots[-1] / hands[-1]:.2f}",
                      flush=True)
            hand, bot_total, net = statistics.median(hands), statistics.median(bots), statistics.median(bots_net)
            ratios = [b / h for b, h in zip(bots, hands, strict=True)]
            print(f"median over {args.runs}: by hand {hand:.1f} s, bot {bot_total:.1f} s, ratio of medians "
                  f"{bot_total / hand:.2f}, median of per-run ratios {statistics.median(ratios):.2f} (target <= 1.2); "
                  f"bot without the approval round trip {net:.1f} s, ratio {net / hand:.2f}")
            print("where the time goes, by hand (median s):")
            for name, values in hand_phases.items():
                print(f"  {statistics.median(values):6.1f}  {name}")
            print("where the time goes, bot (median s per step):")
            for name, values in bot_steps.items():
                print(f"  {statistics.median(values):6.1f}  {name}")
        finally:
            if bot is not None:
                bot.stop()
            stop_lab(lab)


if __name__ == "__main__":
    main()
