"""A running lab for a test module: `etcdbot-lab up` on a fresh directory, torn down after.

Tests drive it the way a person does: the real `kubectl` with the lab's kubeconfig, the real
`ssh` with its ssh_config, `etcdbot-lab fault|heal`. Waiting is always on a condition with a
deadline (`wait_for`), never a bare sleep.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def lab_cli() -> list[str]:
    return [sys.executable, "-m", "lab.cli"]


def parse_env(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def wait_for(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll `check` until it returns something truthy; fail with `what` and the last value at the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # the condition may raise while the system converges
            last = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


@dataclass
class Lab:
    dir: Path
    env: dict[str, str]

    @property
    def masters(self) -> list[str]:
        return self.env["LAB_MASTERS"].split()

    @property
    def workers(self) -> list[str]:
        return self.env.get("LAB_WORKERS", "").split()

    def etcdctl(self, pod_node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`etcdctl ARGS` in the etcd pod of `pod_node` (its etcdctl container), as the document runs it."""
        return self.kubectl("exec", "-n", "openshift-etcd", f"etcd-{pod_node}", "--", "etcdctl", *args, check=check)

    def pod_status(self, node: str) -> str | None:
        """The STATUS column of `kubectl get pods -n openshift-etcd` for the etcd pod of `node`."""
        out = self.kubectl("get", "pods", "-n", "openshift-etcd", check=False).stdout
        for line in out.splitlines():
            if line.startswith(f"etcd-{node} "):
                return line.split()[2]
        return None

    def operator_condition(self, resource: str, ctype: str) -> tuple[str, str]:
        """(reason, message) of one condition of `oc get <resource> cluster`."""
        out = self.kubectl("get", resource, "cluster", "-o",
                           f"jsonpath={{range .status.conditions[?(@.type==\"{ctype}\")]}}{{.reason}}{{\"\\n\"}}{{.message}}",
                           check=False).stdout
        reason, _, message = out.partition("\n")
        return reason, message

    def force_redeployment(self, resource: str, reason: str, *, timeout: float = 180) -> None:
        """The document's `oc patch <resource> cluster ... forceRedeploymentReason`, then wait for
        NodeInstallerProgressing to read AllNodesAtLatestRevision on a revision newer than before."""
        before = self.operator_condition(resource, "NodeInstallerProgressing")[1]
        self.kubectl("patch", resource, "cluster", "--type=merge", "-p",
                     json.dumps({"spec": {"forceRedeploymentReason": reason}}))
        wait_for(lambda: (c := self.operator_condition(resource, "NodeInstallerProgressing"))[0]
                 == "AllNodesAtLatestRevision" and c[1] != before,
                 timeout=timeout, what=f"{resource}: all nodes at the latest revision", interval=1)

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*lab_cli(), *args, "--dir", str(self.dir)], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        if check and proc.returncode != 0:
            raise AssertionError(f"etcdbot-lab {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def kubectl(self, *args: str, check: bool = True, timeout: float = 30, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=timeout, input=stdin,
                              env={**os.environ, "KUBECONFIG": self.env["KUBECONFIG"]})
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def ssh(self, node: str, command: str, *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["ssh", "-F", self.env["LAB_SSH_CONFIG"], "-o", "ConnectTimeout=5", f"core@{node}", command],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"ssh {node} {command!r} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def members_message(self) -> str:
        return self.kubectl(
            "get", "etcd",
            "-o=jsonpath={range .items[0].status.conditions[?(@.type==\"EtcdMembersAvailable\")]}{.message}{\"\\n\"}",
        ).stdout.strip()

    def restore_by_hand(self, *, recovery: str, backup_dir: str = "/home/core/backup") -> None:
        """Chapter 5.3 steps 3-6 with the document's own commands: on every other master move the
        etcd and kube-apiserver static pods and the data dir away, run cluster-restore.sh on the
        recovery host, restart every kubelet, wait for the restored etcd and the API."""
        others = [n for n in self.masters if n != recovery]
        for node in others:
            self.ssh(node, "sudo mv /etc/kubernetes/manifests/etcd-pod.yaml /tmp")
            wait_for(lambda node=node: self.ssh(node, "sudo crictl ps | grep etcd | grep -v operator || true").stdout == "",
                     timeout=30, what=f"etcd containers gone on {node}")
            self.ssh(node, "sudo mv /etc/kubernetes/manifests/kube-apiserver-pod.yaml /tmp")
            wait_for(lambda node=node: self.ssh(node, "sudo crictl ps | grep kube-apiserver | grep -v operator || true").stdout == "",
                     timeout=30, what=f"kube-apiserver gone on {node}")
            self.ssh(node, "sudo mv /var/lib/etcd/ /tmp")
        restore = self.ssh(recovery, f"sudo -E /usr/local/bin/cluster-restore.sh {backup_dir}", timeout=120)
        assert restore.returncode == 0
        for node in self.masters:
            self.ssh(node, "sudo systemctl restart kubelet.service")
        wait_for(lambda: "Running" in self.ssh(recovery, "sudo crictl ps | grep etcd | grep -v operator || true").stdout,
                 timeout=60, what="the restored etcd running on the recovery host")
        wait_for(lambda: self.kubectl("get", "nodes", check=False).returncode == 0, timeout=60, what="the API back")

    def pids(self) -> list[int]:
        pids = []
        for name in ("daemon.pid", "children.pids"):
            path = self.dir / name
            if path.exists():
                pids += [int(x) for x in path.read_text().split() if x.isdigit()]
        return pids


def start_lab(lab_dir: Path, *extra: str, attempts: int = 3) -> Lab:
    """`etcdbot-lab up` in `lab_dir`. The lab picks free ports, then binds them; with several labs
    and bots starting at once (xdist), another process can take a port in between. Only that
    failure is tried again, in a fresh directory beside the first."""
    for attempt in range(1, attempts + 1):
        where = lab_dir if attempt == 1 else lab_dir.with_name(f"{lab_dir.name}-retry{attempt}")
        proc = subprocess.run([*lab_cli(), "up", "--dir", str(where), *extra], capture_output=True, text=True,
                              timeout=150, cwd=ROOT)
        if proc.returncode == 0:
            return Lab(dir=where, env=parse_env(proc.stdout))
        log = (where / "logs" / "daemon.log")
        tail = log.read_text()[-3000:] if log.exists() else ""
        if "address already in use" not in (proc.stderr + tail).lower() or attempt == attempts:
            raise AssertionError(f"etcdbot-lab up failed: {proc.stderr}\n{tail}")
        subprocess.run([*lab_cli(), "down", "--dir", str(where)], capture_output=True, text=True, timeout=90, cwd=ROOT)
    raise AssertionError("unreachable")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def stop_lab(lab: Lab) -> None:
    pids = lab.pids()
    subprocess.run([*lab_cli(), "down", "--dir", str(lab.dir)], capture_output=True, text=True, timeout=90, cwd=ROOT)
    alive = [p for p in pids if pid_alive(p)]
    assert not alive, f"processes left behind by the lab: {alive}"
