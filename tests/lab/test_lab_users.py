"""A running lab as a person meets it: `ssh core@<master>` is an unprivileged login, sudo is root,
the SSH outages last until `heal`, and every address a client is given is loopback.

All with the real `ssh`, `kubectl` and the lab's ssh_config and kubeconfig.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.labfixture import Lab, wait_for

LOOPBACK = {"127.0.0.1", "localhost"}


def etcd_running(lab: Lab, node: str) -> bool:
    return "Running" in lab.ssh(node, "sudo crictl ps --name '^etcd$'").stdout


def test_core_cannot_and_sudo_can_move_the_data_dir(lab: Lab) -> None:
    """5.3 step 3 on one master: stop its etcd pod, then move the data directory away."""
    node = lab.masters[0]
    assert lab.ssh(node, "id -u").stdout == "1000\n"
    assert lab.ssh(node, "sudo id -u; sudo -E id -u; sudo env ETCDCTL_API=3 id -u").stdout == "0\n0\n0\n"

    lab.ssh(node, "sudo mv /etc/kubernetes/manifests/etcd-pod.yaml /tmp")
    wait_for(lambda: not etcd_running(lab, node), timeout=30, what=f"etcd stopped on {node}")
    refused = lab.ssh(node, "mv /var/lib/etcd/ /tmp", check=False)
    assert (refused.returncode, refused.stderr) == (
        1, "mv: cannot move '/var/lib/etcd/' to '/tmp/etcd': Permission denied\n")
    assert lab.ssh(node, "sudo mv /var/lib/etcd/ /tmp && sudo ls /tmp/etcd").stdout == "member\n"

    lab.ssh(node, "sudo mv /tmp/etcd /var/lib/etcd && sudo mv /tmp/etcd-pod.yaml /etc/kubernetes/manifests/")
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=60,
             what="the member back with its data")


def test_owners_and_modes_as_on_a_master(lab: Lab) -> None:
    node = lab.masters[1]
    key = f"/etc/kubernetes/static-pod-resources/etcd-certs/secrets/etcd-all-peer/etcd-peer-{node}.key"
    paths = ["/var/lib/etcd", "/etc/kubernetes/manifests", "/etc/kubernetes/manifests/etcd-pod.yaml",
             "/etc/kubernetes/static-pod-resources", key, "/home/core"]
    out = lab.ssh(node, "stat -c '%n %U %a' " + " ".join(paths)).stdout.splitlines()
    assert out == ["/var/lib/etcd root 700", "/etc/kubernetes/manifests root 755",
                   "/etc/kubernetes/manifests/etcd-pod.yaml root 644", "/etc/kubernetes/static-pod-resources root 755",
                   f"{key} root 600", "/home/core core 700"]
    denied = lab.ssh(node, f"cat {key}", check=False)
    assert (denied.returncode, denied.stderr) == (1, f"cat: {key}: Permission denied\n")
    assert lab.ssh(node, f"sudo cat {key}").stdout.startswith("-----BEGIN")


def test_kubectl_exec_runs_as_the_container(lab: Lab) -> None:
    node = lab.masters[2]
    out = lab.kubectl("exec", "-n", "openshift-etcd", f"etcd-{node}", "-c", "etcdctl", "--", "id", "-u").stdout
    assert out == "0\n"


def test_block_ssh_until_heal(lab: Lab) -> None:
    blocked, other = lab.masters[0], lab.masters[1]
    lab.cli("fault", "block-ssh", blocked)
    refused = lab.ssh(blocked, "true", check=False)
    assert refused.returncode == 255 and "Connection refused" in refused.stderr
    assert lab.ssh(other, "true").returncode == 0
    assert f"block-ssh {blocked}" in lab.cli("status").stdout
    lab.cli("heal", blocked)
    assert lab.ssh(blocked, "echo back").stdout == "back\n"


def test_stall_ssh_until_heal(lab: Lab) -> None:
    node = lab.masters[2]
    lab.cli("fault", "stall-ssh", node)
    with pytest.raises(subprocess.TimeoutExpired) as hung:
        subprocess.run(["ssh", "-v", "-F", lab.env["LAB_SSH_CONFIG"], f"core@{node}", "true"],
                       capture_output=True, text=True, timeout=3, stdin=subprocess.DEVNULL)
    assert b"Authenticated to" in (hung.value.stderr or b""), "logins still succeed; the command hangs"
    lab.cli("heal")
    assert lab.ssh(node, "echo answered").stdout == "answered\n"


def test_every_client_address_is_loopback(lab: Lab) -> None:
    """The objects keep AWS-like 10.0.x.x addresses; every address a client dials is loopback."""
    for node in lab.masters:
        effective = subprocess.run(["ssh", "-G", "-F", lab.env["LAB_SSH_CONFIG"], node], capture_output=True,
                                   text=True, check=True).stdout.splitlines()
        assert "hostname 127.0.0.1" in effective, node
    kubeconfig = yaml.safe_load(Path(lab.env["KUBECONFIG"]).read_text())
    assert {urlsplit(c["cluster"]["server"]).hostname for c in kubeconfig["clusters"]} <= LOOPBACK
    clusters = json.loads(lab.env["ETCDBOT_CLUSTERS"])
    assert {hp.rsplit(":", 1)[0] for c in clusters for hp in c["ssh"]["hosts"].values()} <= LOOPBACK
    for name in ("ETCDBOT_REDIS_URL", "ETCDBOT_SLACK_API_URL"):
        assert urlsplit(lab.env[name]).hostname in LOOPBACK, name

    ips = lab.kubectl("get", "nodes", "-o", "jsonpath={.items[*].status.addresses[?(@.type=='InternalIP')].address}")
    assert all(ip.startswith("10.0.") for ip in ips.stdout.split()) and ips.stdout.split()

    listening = _listening_addresses(lab.pids())
    assert listening and set(listening) <= {"127.0.0.1"}, listening


def _listening_addresses(pids: list[int]) -> list[str]:
    """Local addresses of the TCP sockets the lab's processes listen on (from /proc/net/tcp{,6})."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                found.append(_address(fields[1].split(":")[0], width))
    return found


def _address(hex_addr: str, width: int) -> str:
    if width == 8:
        return ".".join(str(b) for b in reversed(bytes.fromhex(hex_addr)))
    return "ipv6:" + hex_addr
