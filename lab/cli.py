"""`etcdbot-lab`: start, inspect, break and stop a local OpenShift 4.5 control plane.

Every subcommand takes `--dir DIR` (default ./.lab). A bad command line gets one line on stderr
and a non-zero exit, and changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab import control, faults, upgrade
from lab.spec import DEFAULT_WORKERS, LabSpec, new_lab_spec

REQUIRED_BINARIES = {"etcd": "etcd-server", "etcdctl": "etcd-client", "redis-server": "redis-server",
                     "unshare": "util-linux", "python3": "python3"}
UP_DEADLINE_SECONDS = 90.0
DOWN_DEADLINE_SECONDS = 30.0


class CliError(Exception):
    """Printed as `etcdbot-lab: <message>`, exit 1."""


def _ask(lab_dir: Path, payload: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
    return asyncio.run(control.request(lab_dir, payload, timeout=timeout))


def running_daemon(lab_dir: Path) -> dict[str, Any] | None:
    """The daemon's ping answer, or None when no daemon serves this DIR."""
    if not (lab_dir / "control.sock").exists():
        return None
    try:
        return _ask(lab_dir, {"cmd": "ping"}, timeout=3)
    except (OSError, TimeoutError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        if state == "Z":
            return False
    return True


# ---- up -------------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    lab_dir = Path(args.dir).resolve()
    missing = [f"{b} (apt package {p})" for b, p in REQUIRED_BINARIES.items() if shutil.which(b) is None]
    if missing:
        raise CliError("missing " + ", ".join(missing) + "; run `make deps` or install them")
    if args.masters < 1 or args.masters > 7 or args.masters % 2 == 0:
        raise CliError("--masters must be an odd number from 1 to 7 (etcd needs a majority)")
    if args.clock_speed <= 0:
        raise CliError("--clock-speed must be positive")
    if args.workers < 0 or args.workers > 6:
        raise CliError("--workers must be from 0 to 6")
    if upgrade.parse_version(args.version) is None:
        raise CliError(f"--version must be an OpenShift 4.5 z-stream like 4.5.2, not {args.version!r}")
    ping = running_daemon(lab_dir)
    if ping is not None:
        raise CliError(f"a lab is already running in {lab_dir} (pid {ping.get('pid')}); "
                       f"`etcdbot-lab down --dir {args.dir}` first, or choose another --dir")
    if (lab_dir / "lab.json").exists():
        print(f"resuming the stopped lab in {lab_dir} (its data and certificates are kept)", file=sys.stderr)
    else:
        lab_dir.mkdir(parents=True, exist_ok=True)
        new_lab_spec(lab_dir=lab_dir, masters=args.masters, version=args.version, workers=args.workers,
                     installed_hours_ago=args.installed_hours_ago, clock_speed=args.clock_speed).save()
    for stale in ("start-failed", "children.pids"):
        (lab_dir / stale).unlink(missing_ok=True)
    (lab_dir / "logs").mkdir(exist_ok=True)
    started = time.monotonic()
    with open(lab_dir / "logs" / "daemon.log", "ab") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "lab.daemon", str(lab_dir)], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  cwd=str(Path(__file__).resolve().parent.parent))
    deadline = started + UP_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            reason = (lab_dir / "start-failed").read_text() if (lab_dir / "start-failed").exists() else "it exited"
            _kill_leftovers(lab_dir)
            raise CliError(f"the lab did not start: {reason} (see {lab_dir}/logs/daemon.log)")
        ping = running_daemon(lab_dir)
        if ping and ping.get("ready"):
            break
        time.sleep(0.2)
    else:
        _stop(lab_dir)
        raise CliError(f"the lab did not become ready in {UP_DEADLINE_SECONDS:.0f} s (see {lab_dir}/logs/daemon.log)")
    print((lab_dir / "env").read_text(), end="")
    print(f"# lab up in {time.monotonic() - started:.1f} s; `source {lab_dir}/env`", file=sys.stderr)
    return 0


# ---- down -----------------------------------------------------------------------------------
def _pids(lab_dir: Path) -> list[int]:
    pids = []
    for name in ("daemon.pid", "children.pids"):
        with contextlib.suppress(OSError):
            pids += [int(x) for x in (lab_dir / name).read_text().split() if x.strip().isdigit()]
    return pids


def _kill_leftovers(lab_dir: Path) -> list[int]:
    killed = []
    for pid in _pids(lab_dir):
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def _stop(lab_dir: Path) -> None:
    if running_daemon(lab_dir) is not None:
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            _ask(lab_dir, {"cmd": "down"}, timeout=5)
    daemon_pid = next(iter(_pids(lab_dir)), None) if (lab_dir / "daemon.pid").exists() else None
    deadline = time.monotonic() + DOWN_DEADLINE_SECONDS
    while daemon_pid and _pid_alive(daemon_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    _kill_leftovers(lab_dir)
    for name in ("control.sock", "children.pids", "daemon.pid"):
        (lab_dir / name).unlink(missing_ok=True)


def cmd_down(args: argparse.Namespace) -> int:
    lab_dir = Path(args.dir).resolve()
    if not (lab_dir / "lab.json").exists():
        raise CliError(f"no lab in {lab_dir}")
    _stop(lab_dir)
    if args.purge:
        shutil.rmtree(lab_dir, ignore_errors=True)
        print(f"lab in {lab_dir} stopped and removed")
    else:
        print(f"lab in {lab_dir} stopped (data kept; `up` resumes it, `down --purge` removes it)")
    return 0


# ---- status, fault, heal, power-on ----------------------------------------------------------
def _require_running(lab_dir: Path) -> None:
    if running_daemon(lab_dir) is None:
        raise CliError(f"no lab is running in {lab_dir}; start one with `etcdbot-lab up --dir {lab_dir}`")


def _call(lab_dir: Path, payload: dict[str, Any], *, timeout: float = 60.0) -> dict[str, Any]:
    _require_running(lab_dir)
    reply = _ask(lab_dir, payload, timeout=timeout)
    if not reply.get("ok"):
        raise CliError(reply.get("error", "the lab refused"))
    return reply


def cmd_status(args: argparse.Namespace) -> int:
    reply = _call(Path(args.dir).resolve(), {"cmd": "status"})
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    print(f"lab {reply['dir']}  OpenShift {reply['version']}")
    print(f"  API    {reply['api']}")
    print(f"  etcd   {reply['etcd']}")
    print(f"  Slack  {reply['slack']}")
    print(f"  Redis  {reply['redis']}")
    for h in reply["hosts"]:
        if h.get("role", "master") == "master":
            print(f"  {h['node']:32} power {h['power']:3}  etcd {h['etcd']:11}  kube-apiserver {h['kube-apiserver']:11}"
                  f"  ssh {h['ssh']}")
        else:
            print(f"  {h['node']:32} power {h['power']:3}  worker{'':44}  ssh {h['ssh']}")
    if reply.get("upgrade", {}).get("state") == "Partial":
        print(f"  upgrade to {reply['upgrade']['version']} in progress")
    print("  faults " + (", ".join(reply["faults"]) or "none"))
    return 0


def _validate_node(lab_dir: Path, node: str | None, *, masters_only: bool = False) -> None:
    if node is None:
        return
    spec = LabSpec.load(lab_dir)
    try:
        found = spec.node(node)
    except KeyError as exc:
        raise CliError(str(exc).strip("'\"")) from exc
    if masters_only and found.role != "master":
        raise CliError(f"{node} is a worker: it runs no etcd; the masters are: {', '.join(m.node for m in spec.masters)}")


def cmd_fault(args: argparse.Namespace) -> int:
    lab_dir = Path(args.dir).resolve()
    if args.kind not in faults.KINDS:
        raise CliError(f"unknown fault {args.kind!r}; known: {', '.join(faults.KINDS)}")
    if args.kind in faults.NODE_FAULTS:
        if not args.target:
            raise CliError(f"fault {args.kind} needs a node: etcdbot-lab fault {args.kind} NODE")
        _require_running(lab_dir)
        _validate_node(lab_dir, args.target, masters_only=args.kind not in faults.ANY_NODE_FAULTS)
    print(_call(lab_dir, {"cmd": "fault", "kind": args.kind, "target": args.target})["message"])
    return 0


def _node_request(cmd: str) -> Any:
    """`heal [NODE]` and `power-on [NODE]`: one request about all nodes or one valid node."""

    def run(args: argparse.Namespace) -> int:
        lab_dir = Path(args.dir).resolve()
        _require_running(lab_dir)
        _validate_node(lab_dir, args.node)
        print(_call(lab_dir, {"cmd": cmd, "target": args.node})["message"])
        return 0

    return run


cmd_heal = _node_request("heal")
cmd_power_on = _node_request("power-on")


def cmd_upgrade(args: argparse.Namespace) -> int:
    """Start a z-stream upgrade, as `oc adm upgrade --to` does; `--wait` blocks until it completes."""
    lab_dir = Path(args.dir).resolve()
    if upgrade.parse_version(args.to) is None:
        raise CliError(f"--to must be an OpenShift 4.5 z-stream like 4.5.3, not {args.to!r}")
    print(_call(lab_dir, {"cmd": "upgrade", "version": args.to})["message"])
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        reply = _call(lab_dir, {"cmd": "status"})
        if reply.get("upgrade", {}).get("state") == "Completed" and reply.get("version") == args.to:
            print(f"Cluster version is {args.to}")
            return 0
        time.sleep(0.5)
    raise CliError(f"the upgrade to {args.to} did not complete in {args.timeout:.0f} s; "
                   "`kubectl get clusterversion` shows where it is")


# ---- parser ---------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, not argparse's usage block
        self.exit(2, f"etcdbot-lab: {message} (see `etcdbot-lab --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="etcdbot-lab", description=__doc__)
    common = _Parser(add_help=False)
    common.add_argument("--dir", default=os.environ.get("LAB_DIR", "./.lab"), help="the lab directory (default ./.lab)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    up = sub.add_parser("up", parents=[common], help="start a lab in the background")
    up.add_argument("--masters", type=int, default=3)
    up.add_argument("--version", default="4.5.2", help="the cluster's OpenShift version (z-stream)")
    up.add_argument("--installed-hours-ago", type=float, default=48.0)
    up.add_argument("--clock-speed", type=float, default=1.0, help="lab clock speed (waits run N times faster)")
    up.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="worker nodes (default 2; no etcd on them)")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", parents=[common], help="stop the lab and every process it started")
    down.add_argument("--purge", action="store_true", help="also remove the lab directory")
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", parents=[common], help="what runs and what is broken")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    fault = sub.add_parser("fault", parents=[common], help="inject a fault: " + ", ".join(faults.KINDS))
    fault.add_argument("kind")
    fault.add_argument("target", nargs="?")
    fault.set_defaults(func=cmd_fault)

    heal = sub.add_parser("heal", parents=[common], help="undo faults (all, or one node's)")
    heal.add_argument("node", nargs="?")
    heal.set_defaults(func=cmd_heal)

    power = sub.add_parser("power-on", parents=[common], help="power nodes on after `shutdown -h` (chapter 4)")
    power.add_argument("node", nargs="?")
    power.set_defaults(func=cmd_power_on)

    upgrade_cmd = sub.add_parser("upgrade", parents=[common], help="move the cluster to another 4.5 z-stream")
    upgrade_cmd.add_argument("--to", required=True, help="the release to upgrade to, e.g. 4.5.3")
    upgrade_cmd.add_argument("--wait", action="store_true", help="return when ClusterVersion says Completed")
    upgrade_cmd.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits (default 300)")
    upgrade_cmd.set_defaults(func=cmd_upgrade)

    with contextlib.suppress(ImportError):
        from lab.slack.client import add_slack_commands

        add_slack_commands(sub, parents=[common])
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except CliError as exc:
        print(f"etcdbot-lab: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
