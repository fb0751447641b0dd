"""`/etcd-status` beside the manual sequence, for every row of the fault table, side by side.

For each row (healthy, then each lab fault on one master, or on the cluster) the fault is
applied, the bench waits until the bot's diagnosis shows it, then runs the bot and the manual
sequence alternately, `--runs` times each, so machine noise hits both alike; then heals.

- Bot: from sending the slash command (the lab's Slack workspace) to the status message in the
  channel; the diagnosis of every run is kept, and a row whose diagnosis changed between runs is
  flagged.
- Manual: the commands an SRE runs by hand for the same facts (document 2.2/2.3), one after
  another, machine time only (no typing): with the API up, the `oc get` reads and `etcdctl` in an
  etcd pod on a healthy node; with the API gone (api-down, lose-quorum), one `kubectl` that fails,
  then `crictl ps -a` on every master and etcdctl over SSH on a master whose etcd runs.

Prints one row per fault: bot median, manual median, ratio, the bot's state, and the worst bot run.

Usage: .venv/bin/python bench/status.py [--runs 5] [--faults healthy,kill-etcd,...] [--dir LAB_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.cluster.hosts import ETCD_MANIFEST, etcdctl_env_from_manifest  # noqa: E402
from lab.slack.client import workspace_root  # noqa: E402
from tests.botprocess import Bot  # noqa: E402
from tests.labfixture import Lab, parse_env, start_lab, stop_lab, wait_for  # noqa: E402

JSONPATH_MEMBERS = '{range .items[0].status.conditions[?(@.type=="EtcdMembersAvailable")]}{.message}{"\\n"}'
JSONPATH_MACHINES = '{range .items[*]}{@.status.nodeRef.name}{"\\t"}{@.status.providerStatus.instanceState}{"\\n"}'
JSONPATH_TAINTS = '{range .items[*]}{"\\n"}{.metadata.name}{"\\t"}{range .spec.taints[*]}{.key}{" "}'


@dataclass(frozen=True)
class Row:
    fault: str  # "healthy" or an `etcdbot-lab fault` kind
    on_node: bool  # the fault takes a node (the first master)
    shows: Callable[[str], str]  # node -> text the bot's diagnosis holds once the fault is visible
    api_down: bool = False


ROWS = (
    Row("healthy", False, lambda node: "etcd is healthy"),
    Row("kill-etcd", True, lambda node: f"etcd pod on {node} is Error"),
    Row("crashloop-etcd", True, lambda node: f"etcd pod on {node} is CrashLoopBackOff"),
    Row("stop-machine", True, lambda node: f"machine of {node} is stopped"),
    Row("node-notready", True, lambda node: f"{node} has the node.kubernetes.io/unreachable taint"),
    Row("slow-etcd", True, lambda node: f"etcd member {node} is unhealthy"),
    Row("lose-quorum", False, lambda node: "etcd has lost quorum", api_down=True),
    Row("api-down", False, lambda node: "The API is unavailable", api_down=True),
    Row("drop-ssh", True, lambda node: "etcd is healthy"),
)


def lab_call(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def bot_once(lab_base: str) -> tuple[float, str]:
    """(seconds from the slash command to the status message, the message's text)."""
    t0 = time.monotonic()
    sent = lab_call(lab_base, "_lab/command", {"user": "alice", "channel": "incident", "text": "/etcd-status"})
    deadline = t0 + 60
    while time.monotonic() < deadline:
        records = lab_call(lab_base, f"_lab/transcript?channel=incident&since={sent['cursor']}")["records"]
        for r in records:
            if r.get("kind") == "failure":
                raise RuntimeError(f"Slack shows a failure: {r}")
            if r.get("kind") == "message" and not r.get("ephemeral_for") and "etcd on lab" in json.dumps(r.get("blocks")):
                return time.monotonic() - t0, str(r.get("text", ""))
        time.sleep(0.02)
    raise RuntimeError("no status message within 60 s")


def manual_api(lab: Lab, pod_node: str) -> list[list[str]]:
    pod = f"etcd-{pod_node}"
    return [
        ["kubectl", "get", "etcd", f"-o=jsonpath={JSONPATH_MEMBERS}"],
        ["kubectl", "get", "machines", "-A", f"-ojsonpath={JSONPATH_MACHINES}"],
        ["kubectl", "get", "nodes", "-o", f"jsonpath={JSONPATH_TAINTS}"],
        ["kubectl", "get", "nodes", "-l", "node-role.kubernetes.io/master"],
        ["kubectl", "get", "pods", "-n", "openshift-etcd"],
        ["kubectl", "exec", "-n", "openshift-etcd", pod, "-c", "etcdctl", "--", "etcdctl", "member", "list", "-w", "table"],
        ["kubectl", "exec", "-n", "openshift-etcd", pod, "-c", "etcdctl", "--", "etcdctl", "endpoint", "status",
         "--cluster", "-w", "table"],
        ["kubectl", "exec", "-n", "openshift-etcd", pod, "-c", "etcdctl", "--", "etcdctl", "endpoint", "health",
         "--cluster"],
        ["kubectl", "get", "clusterversion"],
    ]


def ssh_argv(lab: Lab, node: str, command: str) -> list[str]:
    return ["ssh", "-F", lab.env["LAB_SSH_CONFIG"], "-o", "ConnectTimeout=5", f"core@{node}", command]


def manual_ssh(lab: Lab, etcd_node: str, env: dict[str, str]) -> list[list[str]]:
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    return [
        ["kubectl", "get", "etcd", f"-o=jsonpath={JSONPATH_MEMBERS}"],  # fails: that is how one learns the API is gone
        *(ssh_argv(lab, node, "sudo crictl ps -a") for node in lab.masters),
        ssh_argv(lab, etcd_node, f"sudo cat {ETCD_MANIFEST}"),
        ssh_argv(lab, etcd_node, f"sudo env {exports} etcdctl member list -w table"),
        ssh_argv(lab, etcd_node, f"sudo env {exports} etcdctl endpoint status --cluster -w table"),
        ssh_argv(lab, etcd_node, f"sudo env {exports} etcdctl endpoint health --cluster"),
    ]


def manual_once(lab: Lab, commands: list[list[str]]) -> float:
    t0 = time.monotonic()
    for argv in commands:
        subprocess.run(argv, capture_output=True, env={**os.environ, "KUBECONFIG": lab.env["KUBECONFIG"]},
                       timeout=120, stdin=subprocess.DEVNULL, check=False)
    return time.monotonic() - t0


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


@dataclass
class Result:
    row: Row
    bot: list[float]
    manual: list[float]
    texts: list[str]


def measure(lab: Lab, lab_base: str, row: Row, *, runs: int) -> Result:
    node = lab.masters[0]
    healthy_node = lab.masters[1]
    survivor = lab.masters[-1]  # lose-quorum stops the first two
    if row.fault != "healthy":
        lab.cli("fault", row.fault, *([node] if row.on_node else []))
    try:
        needle = row.shows(node)
        wait_for(lambda: needle in bot_once(lab_base)[1], timeout=180, interval=1,
                 what=f"the bot's status to show {needle!r} ({row.fault})")
        if row.api_down:
            manifest = lab.ssh(survivor, f"sudo cat {ETCD_MANIFEST}").stdout
            commands = manual_ssh(lab, survivor, etcdctl_env_from_manifest(manifest))
        else:
            commands = manual_api(lab, healthy_node)
        bot_times, manual_times, texts = [], [], []
        for _ in range(runs):
            took, text = bot_once(lab_base)
            bot_times.append(took)
            texts.append(text)
            manual_times.append(manual_once(lab, commands))
        return Result(row, bot_times, manual_times, texts)
    finally:
        if row.fault != "healthy":
            lab.cli("heal")
            wait_for(lambda: lab.kubectl("get", "etcd", f"-o=jsonpath={JSONPATH_MEMBERS}", check=False).stdout.strip()
                     == "3 of 3 members are available", timeout=180, interval=1, what="the lab healed")
            wait_for(lambda: "etcd is healthy" in bot_once(lab_base)[1], timeout=120, interval=1,
                     what="the bot's status healthy again")


def report(results: list[Result], *, runs: int, load: tuple[float, float]) -> None:
    print(f"/etcd-status, {runs} runs per row, bot and manual alternating (medians; the fault on "
          f"the first master, or on the cluster); load average {load[0]:.1f} at start, {load[1]:.1f} at end")
    print(f"{'fault':<15} {'bot median':>10} {'bot max':>8} {'manual median':>13} {'ratio':>6}  bot's diagnosis")
    for r in results:
        bm, mm = statistics.median(r.bot), statistics.median(r.manual)
        first = r.texts[0].removeprefix("etcd on lab: ")
        # a crashlooping container's attempt count grows between runs; anything else is a change
        texts = {re.sub(r"attempt \d+", "attempt N", t) for t in r.texts}
        stable = "" if len(texts) == 1 else f"  [diagnosis changed between runs: {len(texts)} texts]"
        print(f"{r.row.fault:<15} {bm:>9.2f}s {max(r.bot):>7.2f}s {mm:>12.2f}s {mm / bm:>5.1f}x  {first[:90]}{stable}")
    worst = max(statistics.median(r.bot) for r in results)
    print(f"slowest row's bot median: {worst:.2f} s (goal: 2 s)")


def run(lab: Lab, *, runs: int, faults: list[str]) -> None:
    lab_base = workspace_root(lab.dir).rstrip("/") + "/"
    load_before = os.getloadavg()[0]
    bot = Bot(lab=lab, mode="socket", log_path=lab.dir / "bot-bench-status.log").start()
    try:
        bot_once(lab_base)  # warm-up: the first command of a fresh bot
        rows = [r for r in ROWS if r.fault in faults]
        results = [measure(lab, lab_base, row, runs=runs) for row in rows]
    finally:
        bot.stop()
    report(results, runs=runs, load=(load_before, os.getloadavg()[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--faults", default=",".join(r.fault for r in ROWS),
                        help="comma-separated rows (default: all)")
    parser.add_argument("--dir", type=Path, help="a running lab (default: a fresh one, stopped afterwards)")
    args = parser.parse_args()
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = set(faults) - {r.fault for r in ROWS}
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    if args.dir:
        lab_dir = args.dir.resolve()
        run(Lab(dir=lab_dir, env=parse_env((lab_dir / "env").read_text())), runs=args.runs, faults=faults)
        return
    with tempfile.TemporaryDirectory(prefix="etcdbot-bench-status-") as tmp:
        lab = start_lab(Path(tmp) / "lab")
        try:
            run(lab, runs=args.runs, faults=faults)
        finally:
            stop_lab(lab)


if __name__ == "__main__":
    main()
