"""The lab as a person sees it after `etcdbot-lab up && source DIR/env`: the document's own
commands through the real kubectl and ssh print what OpenShift 4.5 prints."""

from __future__ import annotations

import re

from tests.labfixture import Lab, wait_for


def test_etcd_members_available(lab: Lab) -> None:
    assert wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=30,
                    what="EtcdMembersAvailable to read 3 of 3")


def test_etcd_pods_listed_like_openshift(lab: Lab) -> None:
    def rows() -> list[list[str]] | None:
        out = lab.kubectl("get", "pods", "-n", "openshift-etcd").stdout
        found = [line.split() for line in out.splitlines() if line.startswith("etcd-")]
        return found if len(found) == 3 and all(r[1] == "3/3" and r[2] == "Running" for r in found) else None

    found = wait_for(rows, timeout=30, what="three etcd pods 3/3 Running")
    assert {r[0] for r in found} == {f"etcd-{n}" for n in lab.masters}
    header = lab.kubectl("get", "pods", "-n", "openshift-etcd").stdout.splitlines()[0].split()
    assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]


def test_nodes_machines_secrets_and_operators(lab: Lab) -> None:
    nodes = lab.kubectl("get", "nodes", "-l", "node-role.kubernetes.io/master").stdout.splitlines()
    assert nodes[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert sorted(line.split()[0] for line in nodes[1:]) == sorted(lab.masters)
    assert all(line.split()[1] == "Ready" and line.split()[2] == "master" for line in nodes[1:])

    machines = lab.kubectl("get", "machines", "-n", "openshift-machine-api", "-o", "wide").stdout.splitlines()
    assert machines[0].split()[:2] == ["NAME", "PHASE"]
    assert "STATE" in machines[0]
    assert len(machines) == 6 and all("Running" in m and "running" in m for m in machines[1:])
    names = sorted(m.split()[0] for m in machines[1:])
    assert all(re.match(r"clustername-\w+-master-[0-2]$", n) for n in names[:3])
    assert all(re.match(r"clustername-\w+-worker-us-east-1[abc]-\w{5}$", n) for n in names[3:])  # the default 2 workers

    node = lab.masters[0]
    secrets = [line.split()[0] for line in lab.kubectl("get", "secrets", "-n", "openshift-etcd").stdout.splitlines()
               if node in line]
    assert sorted(secrets) == sorted(f"etcd-{k}-{node}" for k in ("peer", "serving", "serving-metrics"))

    operators = lab.kubectl("get", "clusteroperators").stdout.splitlines()
    assert operators[0].split() == ["NAME", "VERSION", "AVAILABLE", "PROGRESSING", "DEGRADED", "SINCE"]
    etcd_row = next(line.split() for line in operators if line.startswith("etcd "))
    assert etcd_row[1:5] == ["4.5.2", "True", "False", "False"]

    version = lab.kubectl("get", "clusterversion").stdout.splitlines()
    assert version[1].split()[:2] == ["version", "4.5.2"]
    assert "Cluster version is 4.5.2" in version[1]
    assert lab.kubectl("get", "csr").returncode == 0


def test_member_list_in_etcd_pod(lab: Lab) -> None:
    out = lab.kubectl("exec", "-n", "openshift-etcd", f"etcd-{lab.masters[1]}", "--",
                      "etcdctl", "member", "list", "-w", "table").stdout
    assert "| STATUS  |" in out or "STATUS" in out
    for node in lab.masters:
        assert re.search(rf"\| *[0-9a-f]{{1,16}} \| started \| *{re.escape(node)} \|", out), out


def test_crictl_over_ssh(lab: Lab) -> None:
    out = lab.ssh(lab.masters[0], "sudo crictl ps | grep etcd | grep -v operator").stdout
    lines = [line.split() for line in out.splitlines()]
    names = {cols[-3] if len(cols) >= 7 else "" for cols in lines}
    assert {"etcd", "etcdctl", "etcd-metrics"} <= names, out
    assert all("Running" in line for line in out.splitlines())


def test_force_redeployment_rolls_node_by_node(lab: Lab) -> None:
    def condition() -> tuple[str, str]:
        out = lab.kubectl("get", "etcd", "-o=jsonpath={range .items[0].status.conditions[?(@.type==\"NodeInstallerProgressing\")]}"
                          "{.reason}{\"\\n\"}{.message}{\"\\n\"}").stdout.split("\n")
        return out[0], out[1]

    reason, message = condition()
    assert reason == "AllNodesAtLatestRevision"
    start = int(re.match(r"3 nodes are at revision (\d+)", message).group(1))  # type: ignore[union-attr]
    patched = lab.kubectl("patch", "etcd", "cluster", "--type=merge", "-p",
                          '{"spec":{"forceRedeploymentReason":"recovery-test"}}').stdout
    assert "patched" in patched
    seen = set()

    def done() -> bool:
        r, m = condition()
        seen.add(m)
        return r == "AllNodesAtLatestRevision" and m == f"3 nodes are at revision {start + 1}"

    wait_for(done, timeout=60, what="the new revision on all nodes", interval=0.1)
    assert f"2 nodes are at revision {start}; 1 nodes are at revision {start + 1}" in seen
    assert wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=30,
                    what="all members back after the rollout")
