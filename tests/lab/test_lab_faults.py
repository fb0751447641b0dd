"""Faults and what the cluster shows after each, as the document's commands read it."""

from __future__ import annotations

from tests.labfixture import Lab, wait_for


def pod_row(lab: Lab, node: str) -> list[str] | None:
    out = lab.kubectl("get", "pods", "-n", "openshift-etcd", check=False).stdout
    for line in out.splitlines():
        if line.startswith(f"etcd-{node} "):
            return line.split()
    return None


def test_kill_etcd_then_heal(lab: Lab) -> None:
    node = lab.masters[0]
    lab.cli("fault", "kill-etcd", node)
    wait_for(lambda: lab.members_message() == f"2 of 3 members are available, {node} is unhealthy",
             timeout=30, what="EtcdMembersAvailable to name the unhealthy member")
    row = wait_for(lambda: (r := pod_row(lab, node)) and r[1] == "2/3" and r[2] == "Error" and r,
                   timeout=30, what="the pod to show the etcd container's failure")
    assert row[2] == "Error"
    lab.cli("heal")
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=60, what="heal")


def test_crashloop_etcd_then_heal(lab: Lab) -> None:
    node = lab.masters[1]
    lab.cli("fault", "crashloop-etcd", node)
    wait_for(lambda: (r := pod_row(lab, node)) and r[2] == "CrashLoopBackOff", timeout=60,
             what="the pod to show CrashLoopBackOff")
    lab.cli("heal")
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=60, what="heal")
    wait_for(lambda: (r := pod_row(lab, node)) and r[2] == "Running", timeout=30, what="pod Running again")


def test_stop_machine_shows_in_machines_and_nodes(lab: Lab) -> None:
    node = lab.masters[2]
    lab.cli("fault", "stop-machine", node)
    jsonpath = "{range .items[*]}{@.status.nodeRef.name}{\"\\t\"}{@.status.providerStatus.instanceState}{\"\\n\"}"
    wait_for(lambda: f"{node}\tstopped" in lab.kubectl("get", "machines", "-A", "-ojsonpath=" + jsonpath).stdout,
             timeout=30, what="instanceState stopped")
    taints = "{range .items[*]}{\"\\n\"}{.metadata.name}{\"\\t\"}{range .spec.taints[*]}{.key}{\" \"}"
    wait_for(lambda: any(line.startswith(node) and "node.kubernetes.io/unreachable" in line
                         for line in lab.kubectl("get", "nodes", "-o", "jsonpath=" + taints).stdout.splitlines()),
             timeout=30, what="the unreachable taint")
    assert lab.ssh(node, "true", check=False).returncode != 0
    lab.cli("heal")
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=60, what="heal")
    assert lab.ssh(node, "true").returncode == 0


def test_lose_quorum_fails_kubectl_keeps_ssh(lab: Lab) -> None:
    lab.cli("fault", "lose-quorum")
    wait_for(lambda: lab.kubectl("get", "nodes", check=False, timeout=60).returncode != 0, timeout=60,
             what="kubectl to fail without quorum")
    for node in lab.masters:
        assert lab.ssh(node, "sudo crictl ps").returncode == 0
    lab.cli("heal")
    wait_for(lambda: lab.kubectl("get", "nodes", check=False).returncode == 0, timeout=60, what="API back")
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=60, what="quorum back")


def test_api_down_refuses_connections(lab: Lab) -> None:
    lab.cli("fault", "api-down")
    proc = lab.kubectl("get", "nodes", check=False, timeout=60)
    assert proc.returncode != 0 and "refused" in proc.stderr
    lab.cli("heal")
    wait_for(lambda: lab.kubectl("get", "nodes", check=False).returncode == 0, timeout=30, what="API back")


def test_bad_command_lines_change_nothing(lab: Lab) -> None:
    for args in (("fault", "melt-down", lab.masters[0]), ("fault", "kill-etcd", "ip-1-2-3-4.ec2.internal"),
                 ("fault", "kill-etcd"), ("up",)):
        proc = lab.cli(*args, check=False)
        assert proc.returncode != 0, args
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("etcdbot-lab: ")
    status = lab.cli("status").stdout
    assert "faults none" in status


def test_node_notready_and_slow_etcd(lab: Lab) -> None:
    unreachable, slow = lab.masters[0], lab.masters[1]
    lab.cli("fault", "node-notready", unreachable)
    nodes = wait_for(lambda: (out := lab.kubectl("get", "nodes", "-l", "node-role.kubernetes.io/master").stdout)
                     and f"{unreachable}   NotReady" in out and out, timeout=30, what="the node NotReady")
    assert "NotReady" in nodes
    taints = "{range .items[*]}{\"\\n\"}{.metadata.name}{\"\\t\"}{range .spec.taints[*]}{.key}{\" \"}"
    assert any(line.startswith(unreachable) and "unreachable" in line
               for line in lab.kubectl("get", "nodes", "-o", "jsonpath=" + taints).stdout.splitlines())
    lab.cli("heal")
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=60, what="heal")

    lab.cli("fault", "slow-etcd", slow)
    wait_for(lambda: lab.members_message() == f"2 of 3 members are available, {slow} is unhealthy", timeout=30,
             what="the frozen member reported unhealthy")
    lab.cli("heal")
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=60, what="heal")
