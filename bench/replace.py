"""How long `/etcd-replace-member` (variant A, a stopped machine) takes beside the same steps of
document 2.4 scripted by hand, in the same lab, one after the other.

Each of N rounds (default 3) stops one master's machine (`etcdbot-lab fault stop-machine`), waits
until EtcdMembersAvailable names it, then times:
  hand: the document's commands as a person scripts them, with kubectl and etcdctl in an etcd pod
        on another node: member list, member remove, member list; delete the 3 secrets; get the
        machine, edit it (next index, fields stripped), delete it, wait until it is gone, apply
        the new one, wait Provisioning -> Running; wait for 3 etcd pods Running, member list shows
        exactly 3, endpoint health --cluster healthy, the new node's secrets issued (polling every
        0.25 s, faster than a person);
  bot:  from the slash command (alice, in the lab's workspace) until the progress message says
        succeeded, bob pressing Approve as soon as each request appears. A backup taken before the
        rounds is recent, so the bot's first step takes none (the hand script takes none either).
Then another master's machine is stopped for the other side. Prints each round, the medians and
the ratio bot/hand (target: within 1.2x, median of 3).
Usage: .venv/bin/python bench/replace.py [--runs N] [--clock-speed 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e import backup_support  # noqa: E402 (after the path is set)
from tests.e2e.backup_support import command, start_bot  # noqa: E402
from tests.e2e.replace_support import (  # noqa: E402
    approve_until_done,
    healthy_cluster,
    machine_of,
    machines,
    masters,
    members,
    secrets,
    unhealthy,
    wait_run,
)
from tests.labfixture import Lab, start_lab, stop_lab, wait_for  # noqa: E402

POLL = 0.25


def etcdctl(lab: Lab, via: str, *args: str) -> str:
    return lab.kubectl("exec", "-n", "openshift-etcd", f"etcd-{via}", "-c", "etcdctl", "--", "etcdctl", *args).stdout


def by_hand(lab: Lab, *, bad: str, via: str) -> str:
    """Document 2.4.A with its own commands; returns the new node."""
    member_id = next(m["id"] for m in members(lab, via) if m["name"] == bad)
    assert "removed from cluster" in etcdctl(lab, via, "member", "remove", member_id)
    assert member_id not in {m["id"] for m in members(lab, via)}
    for kind in ("etcd-peer", "etcd-serving", "etcd-serving-metrics"):
        lab.kubectl("delete", "secret", "-n", "openshift-etcd", f"{kind}-{bad}")
    old_name = machine_of(lab, bad)
    old = yaml.safe_load(lab.kubectl("get", "machine", old_name, "-n", "openshift-machine-api", "-o", "yaml").stdout)
    base = old_name.rsplit("-", 1)[0]
    index = max(int(n.rsplit("-", 1)[1]) for n in machines(lab) if n.startswith(base + "-")) + 1
    new_name = f"{base}-{index}"
    old.pop("status", None)
    old["spec"].pop("providerID", None)
    for key in ("annotations", "generation", "resourceVersion", "uid", "creationTimestamp"):
        old["metadata"].pop(key, None)
    old["metadata"]["name"] = new_name
    lab.kubectl("delete", "machine", "-n", "openshift-machine-api", old_name)
    wait_for(lambda: old_name not in machines(lab), timeout=300, what="the old machine gone", interval=POLL)
    lab.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(old))

    def running() -> str | None:
        found = machines(lab).get(new_name, {}).get("status", {})
        return found.get("nodeRef", {}).get("name") if found.get("phase") == "Running" else None

    new_node = wait_for(running, timeout=600, what="the new machine Running", interval=POLL)

    def three_pods() -> bool:
        lines = lab.kubectl("get", "pods", "-n", "openshift-etcd", "--no-headers").stdout.splitlines()
        up = [line.split()[0] for line in lines if line.startswith("etcd-") and line.split()[2] == "Running"]
        return len(up) == 3 and f"etcd-{new_node}" in up

    wait_for(three_pods, timeout=600, what="3 etcd pods Running", interval=POLL)

    def verified() -> bool:
        listed = members(lab, via)
        named = {m["name"] for m in listed}
        issued = {f"{k}-{new_node}" for k in ("etcd-peer", "etcd-serving", "etcd-serving-metrics")} <= secrets(lab)
        return len(listed) == 3 and new_node in named and issued and healthy_cluster(lab, via)

    wait_for(verified, timeout=600, what="3 healthy members", interval=POLL)
    return new_node


def by_bot(lab: Lab, *, bad: str, show: bool = False) -> None:
    since = command(lab, f"/etcd-replace-member {bad}")
    started = wait_run(lab, since=since, states=("waiting approval", "running"), timeout=300)
    done, approved = approve_until_done(lab, since=since, run_id=started["run_id"], user="bob", timeout=900,
                                        interval=0.2)
    text = backup_support.blocks_text(done)
    assert done["state"] == "succeeded", text
    steps = [line.split("*")[1].split(".")[0] + ": " + line.split(" · ")[2] for line in text.splitlines()
             if line.startswith(":white_check_mark: *") and " · succeeded · " in line]
    print("  bot steps: " + "; ".join(steps) + f"; approvals: {len(approved)}", flush=True)
    if show:
        print(text, "\n---\n", "\n---\n".join(approved), flush=True)


def break_one(lab: Lab) -> tuple[str, str]:
    """Stops the machine of a master (not the one etcdctl is read through); returns (bad, via)."""
    all_masters = masters(lab)
    via, bad = all_masters[0], all_masters[-1]
    lab.cli("fault", "stop-machine", bad)
    unhealthy(lab, bad, timeout=120)
    return bad, via


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clock-speed", default="30")
    parser.add_argument("--show", action="store_true", help="print the bot's run message and approval requests")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lab = start_lab(Path(tmp) / "lab", "--clock-speed", args.clock_speed)
        bot = None
        try:
            bot = start_bot(lab)
            since = command(lab, "/etcd-backup")
            assert backup_support.wait_run(lab, since=since, states=("succeeded", "failed"))["state"] == "succeeded"
            hands, bots = [], []
            for n in range(1, args.runs + 1):
                bad, via = break_one(lab)
                started = time.monotonic()
                by_hand(lab, bad=bad, via=via)
                hands.append(time.monotonic() - started)
                bad, _via = break_one(lab)
                started = time.monotonic()
                by_bot(lab, bad=bad, show=args.show)
                bots.append(time.monotonic() - started)
                print(f"round {n}: by hand {hands[-1]:.1f} s, bot {bots[-1]:.1f} s, ratio {bots[-1] / hands[-1]:.2f}",
                      flush=True)
            hand, bot_median = statistics.median(hands), statistics.median(bots)
            ratios = [b / h for b, h in zip(bots, hands, strict=True)]
            print(json.dumps({"runs": args.runs, "hand_median_s": round(hand, 1), "bot_median_s": round(bot_median, 1),
                              "ratio_of_medians": round(bot_median / hand, 2),
                              "median_of_ratios": round(statistics.median(ratios), 2), "target": 1.2}))
        finally:
            if bot is not None:
                bot.stop()
            stop_lab(lab)


if __name__ == "__main__":
    main()
