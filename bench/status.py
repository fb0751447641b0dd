"""`/etcd-status` against the manual baseline, measured side by side in one run.

Bot: time from sending the slash command (the lab's Slack workspace) to the status message in
the channel, and the ack latency the workspace records. Manual baseline: the commands an SRE runs
by hand for the same facts (document 2.2/2.3), one after another, machine time only (no typing).
Runs alternate bot / manual so that machine noise hits both alike. Prints medians, p95s, ratio.

Usage: .venv/bin/python bench/status.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "lab.cli"]
JSONPATH_MEMBERS = '{range .items[0].status.conditions[?(@.type=="EtcdMembersAvailable")]}{.message}{"\\n"}'
JSONPATH_MACHINES = '{range .items[*]}{@.status.nodeRef.name}{"\\t"}{@.status.providerStatus.instanceState}{"\\n"}'
JSONPATH_TAINTS = '{range .items[*]}{"\\n"}{.metadata.name}{"\\t"}{range .spec.taints[*]}{.key}{" "}'


def parse_env(path: Path) -> dict[str, str]:
    import shlex

    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[7:].partition("=")
            env[key] = shlex.split(value)[0]
    return env


def manual_commands(node: str) -> list[list[str]]:
    pod = f"etcd-{node}"
    return [
        ["kubectl", "get", "etcd", f"-o=jsonpath={JSONPATH_MEMBERS}"],
        ["kubectl", "get", "machines", "-A", f"-ojsonpath={JSONPATH_MACHINES}"],
        ["kubectl", "get", "nodes", "-o", f"jsonpath={JSONPATH_TAINTS}"],
        ["kubectl", "get", "nodes", "-l", "node-role.kubernetes.io/master"],
        ["kubectl", "get", "pods", "-n", "openshift-etcd"],
        ["kubectl", "exec", "-n", "openshift-etcd", pod, "--", "etcdctl", "member", "list", "-w", "table"],
        ["kubectl", "exec", "-n", "openshift-etcd", pod, "--", "etcdctl", "endpoint", "status", "--cluster", "-w", "table"],
        ["kubectl", "exec", "-n", "openshift-etcd", pod, "--", "etcdctl", "endpoint", "health", "--cluster"],
        ["kubectl", "get", "clusterversion"],
    ]


def lab_call(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def bot_once(lab_base: str) -> tuple[float, float]:
    """(seconds to the status message, ack latency)."""
    t0 = time.monotonic()
    sent = lab_call(lab_base, "_lab/command", {"user": "alice", "channel": "incident", "text": "/etcd-status"})
    deadline = t0 + 60
    ack = None
    while time.monotonic() < deadline:
        records = lab_call(lab_base, f"_lab/transcript?channel=incident&since={sent['cursor']}")["records"]
        for r in records:
            if r.get("kind") == "failure":
                raise RuntimeError(f"Slack shows a failure: {r}")
            if r.get("kind") == "ack" and ack is None:
                ack = r.get("latency")
            if r.get("kind") == "message" and not r.get("ephemeral_for") and "etcd on lab" in json.dumps(r.get("blocks")):
                return time.monotonic() - t0, float(ack or 0.0)
        time.sleep(0.02)
    raise RuntimeError("no status message within 60 s")


def manual_once(env: dict[str, str], node: str) -> float:
    t0 = time.monotonic()
    for argv in manual_commands(node):
        subprocess.run(argv, check=True, capture_output=True, env={**os.environ, "KUBECONFIG": env["KUBECONFIG"]},
                       timeout=60)
    return time.monotonic() - t0


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lab_dir = Path(tmp) / "lab"
        subprocess.run([*CLI, "up", "--dir", str(lab_dir)], check=True, capture_output=True, cwd=ROOT)
        env = parse_env(lab_dir / "env")
        lab_base = env["ETCDBOT_SLACK_API_URL"].removesuffix("api/")
        bot_env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDBOT_")}
        bot = subprocess.Popen([sys.executable, "-m", "bot.main", "run", "--env-file", str(lab_dir / "env")], cwd=ROOT,
                               env=bot_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            node = env["LAB_MASTERS"].split()[0]
            deadline = time.monotonic() + 60
            while lab_call(lab_base, "_lab/status").get("socket_connections", 0) < 1:
                if time.monotonic() > deadline or bot.poll() is not None:
                    raise RuntimeError("the bot did not connect to the workspace")
                time.sleep(0.1)
            bot_once(lab_base)  # warm-up: the first Socket Mode connection
            manual_once(env, node)
            bot_times, acks, manual_times = [], [], []
            for _ in range(args.runs):
                total, ack = bot_once(lab_base)
                bot_times.append(total)
                acks.append(ack)
                manual_times.append(manual_once(env, node))
        finally:
            os.killpg(bot.pid, signal.SIGTERM)
            bot.wait(timeout=15)
            subprocess.run([*CLI, "down", "--dir", str(lab_dir)], capture_output=True, cwd=ROOT)
    bm, mm = statistics.median(bot_times), statistics.median(manual_times)
    print(f"runs: {args.runs} (bot and manual alternating, same lab)")
    print(f"bot    /etcd-status to final message: median {bm:.3f} s  p95 {p95(bot_times):.3f} s")
    print(f"bot    ack latency:                   median {statistics.median(acks) * 1000:.0f} ms  "
          f"p95 {p95(acks) * 1000:.0f} ms")
    print(f"manual {len(manual_commands('x'))} kubectl/etcdctl commands:      median {mm:.3f} s  "
          f"p95 {p95(manual_times):.3f} s")
    print(f"ratio manual/bot (medians): {mm / bm:.1f}x")


if __name__ == "__main__":
    main()
