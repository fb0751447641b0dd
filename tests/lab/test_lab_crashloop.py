"""A crashlooping etcd as an SRE meets it: the pod in CrashLoopBackOff, etcd's own last words in
`kubectl logs --previous` and `crictl logs`, the kubelet's BackOff in the events, and the
document's 2.4.B, done by hand, curing it. Also what RBAC answers to `kubectl auth can-i`."""

from __future__ import annotations

import json
import re
import time

from tests.labfixture import Lab, wait_for

LAB_ARGS = ("--clock-speed", "60", "--workers", "0")
WHY = "failed to open database"  # etcd's panic on a database it cannot read


def crashlooping(lab: Lab, node: str) -> None:
    lab.cli("fault", "crashloop-etcd", node)
    wait_for(lambda: lab.pod_status(node) == "CrashLoopBackOff", timeout=60, what=f"etcd-{node} in CrashLoopBackOff")


def members_healthy(lab: Lab, via: str, count: int) -> bool:
    out = lab.etcdctl(via, "endpoint", "health", "--cluster", check=False)
    healthy = [line for line in (out.stdout + out.stderr).splitlines() if "is healthy" in line]
    return out.returncode == 0 and len(healthy) == count


def test_logs_previous_crictl_logs_and_backoff_events(lab: Lab) -> None:
    node, other = lab.masters[1], lab.masters[0]
    never = lab.kubectl("logs", "-n", "openshift-etcd", f"etcd-{other}", "-c", "etcd", "--previous", check=False)
    assert never.returncode != 0
    assert f'previous terminated container "etcd" in pod "etcd-{other}" not found' in never.stderr

    crashlooping(lab, node)
    previous = lab.kubectl("logs", "-n", "openshift-etcd", f"etcd-{node}", "-c", "etcd", "--previous").stdout
    assert WHY in previous and "invalid database" in previous, previous[-2000:]
    assert not re.search(r"^\S+ (stdout|stderr) [FP] ", previous, re.M), "kubectl logs shows the CRI prefix"
    tail = lab.kubectl("logs", "-n", "openshift-etcd", f"etcd-{node}", "-c", "etcd", "--previous", "--tail=2").stdout
    assert len(tail.splitlines()) == 2 and tail.splitlines() == previous.splitlines()[-2:]
    stamped = lab.kubectl("logs", "-n", "openshift-etcd", f"etcd-{node}", "-c", "etcd", "--previous",
                          "--tail=1", "--timestamps").stdout
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ", stamped), stamped

    events = wait_for(lambda: (out := lab.kubectl("get", "events", "-n", "openshift-etcd").stdout)
                      and re.search(rf"Warning\s+BackOff\s+pod/etcd-{re.escape(node)}\s+Back-off restarting failed container",
                                    out) and out, timeout=30, what="the kubelet's BackOff event")
    assert re.search(rf"Normal\s+Started\s+pod/etcd-{re.escape(node)}\s+Started container etcd", events)
    described = json.loads(lab.kubectl("get", "events", "-n", "openshift-etcd", "-o", "json").stdout)["items"]
    backoff = next(e for e in described if e["reason"] == "BackOff" and e["involvedObject"]["name"] == f"etcd-{node}")
    assert backoff["involvedObject"]["fieldPath"] == "spec.containers{etcd}"
    assert backoff["source"] == {"component": "kubelet", "host": node}

    # Over SSH, on the node: crictl keeps the dead container and shows the same output.
    # The kubelet keeps one dead instance per container: a restart between `ps -a` and `logs`
    # removes the listed one, as on a real node. Ask again until both see the same instance.
    def exited_logs() -> tuple[str, str] | None:
        listed = lab.ssh(node, "sudo crictl ps -a --name '^etcd$'").stdout
        exited = [line.split() for line in listed.splitlines()[1:] if " Exited " in line]
        if not exited:
            return None
        logs = lab.ssh(node, f"sudo crictl logs {exited[0][0]}", timeout=30, check=False)
        return (exited[0][0], logs.stdout + logs.stderr) if logs.returncode == 0 else None

    container, output = wait_for(exited_logs, timeout=60, what="an exited etcd instance's crictl logs")
    assert WHY in output
    assert "FATA" in lab.ssh(node, f"crictl logs {container}", check=False).stderr  # not without sudo

    lab.cli("heal")
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=90, what="heal cures it")
    wait_for(lambda: lab.pod_status(node) == "Running", timeout=30, what="the pod Running again")


def test_document_2_4_b_by_hand_cures_a_crashloop(lab: Lab) -> None:
    bad, good = lab.masters[2], lab.masters[0]
    crashlooping(lab, bad)
    wait_for(lambda: lab.members_message() == f"2 of 3 members are available, {bad} is unhealthy", timeout=30,
             what="EtcdMembersAvailable to name the crashlooping member")

    # 1. On the node: stop the static pod and move the data directory away.
    lab.ssh(bad, "sudo mkdir /var/lib/etcd-backup")
    lab.ssh(bad, "sudo mv /etc/kubernetes/manifests/etcd-pod.yaml /var/lib/etcd-backup/")
    lab.ssh(bad, "sudo mv /var/lib/etcd/ /tmp")
    # 2. Remove the member from a pod on another node.
    table = lab.etcdctl(good, "member", "list", "-w", "table").stdout
    member_id = next(line.split("|")[1].strip() for line in table.splitlines() if f" {bad} " in line)
    assert "removed from cluster" in lab.etcdctl(good, "member", "remove", member_id).stdout
    assert bad not in lab.etcdctl(good, "member", "list", "-w", "table").stdout
    # 3. Delete the node's three secrets.
    for kind in ("peer", "serving", "serving-metrics"):
        assert "deleted" in lab.kubectl("delete", "secret", "-n", "openshift-etcd", f"etcd-{kind}-{bad}").stdout
    # 4. Force a redeployment.
    lab.force_redeployment("etcd", f"single-master-recovery-{time.time_ns()}")
    # 5. Verify: every member healthy, the node's etcd Running, its secrets reissued.
    wait_for(lambda: members_healthy(lab, good, 3), timeout=120, what="etcdctl endpoint health --cluster: 3 healthy")
    wait_for(lambda: lab.pod_status(bad) == "Running", timeout=60, what=f"etcd-{bad} Running")
    table = lab.etcdctl(good, "member", "list", "-w", "table").stdout
    assert bad in table and len([line for line in table.splitlines() if "started" in line]) == 3
    assert f"etcd-peer-{bad}" in lab.kubectl("get", "secrets", "-n", "openshift-etcd").stdout
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=60, what="3 of 3")


def test_slow_member_fails_its_readiness_probe(lab: Lab) -> None:
    node = lab.masters[0]
    lab.cli("fault", "slow-etcd", node)
    wait_for(lambda: re.search(rf"Warning\s+Unhealthy\s+pod/etcd-{re.escape(node)}\s+Readiness probe failed",
                               lab.kubectl("get", "events", "-n", "openshift-etcd").stdout),
             timeout=60, what="an Unhealthy event for the frozen member")
    lab.cli("heal")
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=60, what="heal")


def test_auth_can_i_answers_from_rbac(lab: Lab) -> None:
    assert lab.kubectl("auth", "can-i", "delete", "secrets", "-n", "openshift-etcd").stdout.strip() == "yes"
    listed = lab.kubectl("auth", "can-i", "--list").stdout
    assert listed.splitlines()[0].split()[:2] == ["Resources", "Non-Resource"] and "*.*" in listed

    # alice is nobody until a binding says otherwise
    denied = lab.kubectl("auth", "can-i", "list", "pods", "-n", "demo", "--as", "alice", check=False)
    assert denied.stdout.strip() == "no" and denied.returncode == 1
    lab.kubectl("create", "rolebinding", "alice-view", "-n", "demo", "--clusterrole=view", "--user=alice")
    assert lab.kubectl("auth", "can-i", "list", "pods", "-n", "demo", "--as", "alice").stdout.strip() == "yes"
    assert lab.kubectl("auth", "can-i", "delete", "pods", "-n", "demo", "--as", "alice",
                       check=False).stdout.strip() == "no"
    assert lab.kubectl("auth", "can-i", "list", "pods", "-n", "openshift-etcd", "--as", "alice",
                       check=False).stdout.strip() == "no"
    refused = lab.kubectl("get", "secrets", "-n", "openshift-etcd", "--as", "alice", check=False)
    assert refused.returncode != 0
    assert ('secrets is forbidden: User "alice" cannot list resource "secrets" in API group "" in the namespace '
            '"openshift-etcd"') in refused.stderr
    assert "payments-config" in lab.kubectl("get", "configmaps", "-n", "demo", "--as", "alice").stdout
