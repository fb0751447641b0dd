"""Chapters 2.4.A, 3, 4 and 5.4 done by hand against the lab, with the document's commands."""

from __future__ import annotations

import json

import yaml

from tests.labfixture import Lab, wait_for

LAB_ARGS = ("--clock-speed", "60")


def etcdctl(lab: Lab, pod_node: str, *args: str) -> str:
    return lab.kubectl("exec", "-n", "openshift-etcd", f"etcd-{pod_node}", "--", "etcdctl", *args).stdout


def test_replace_member_whose_machine_is_not_running(lab: Lab) -> None:
    bad, good, _ = lab.masters
    lab.cli("fault", "stop-machine", bad)
    wait_for(lambda: lab.members_message() == f"2 of 3 members are available, {bad} is unhealthy", timeout=30,
             what="the member to be unhealthy")
    members = json.loads(etcdctl(lab, good, "member", "list", "-w", "json"))["members"]
    bad_id = next(f"{m['ID']:x}" for m in members if m["name"] == bad)
    assert "removed from cluster" in etcdctl(lab, good, "member", "remove", bad_id)
    assert bad not in etcdctl(lab, good, "member", "list", "-w", "table")
    for kind in ("peer", "serving", "serving-metrics"):
        assert "deleted" in lab.kubectl("delete", "secret", "-n", "openshift-etcd", f"etcd-{kind}-{bad}").stdout

    machines = yaml.safe_load(lab.kubectl("get", "machines", "-n", "openshift-machine-api", "-o", "yaml").stdout)
    old = next(m for m in machines["items"] if m["status"]["nodeRef"]["name"] == bad)
    new = dict(old)
    old_name = old["metadata"]["name"]
    new_name = old_name.rsplit("-", 1)[0] + "-3"
    new["metadata"] = {k: v for k, v in old["metadata"].items()
                       if k not in ("annotations", "generation", "resourceVersion", "uid", "creationTimestamp")}
    new["metadata"]["name"] = new_name
    new["metadata"]["selfLink"] = old["metadata"].get("selfLink", "").replace(old_name, new_name)
    new.pop("status")
    new["spec"] = {k: v for k, v in old["spec"].items() if k != "providerID"}
    lab.kubectl("delete", "machine", "-n", "openshift-machine-api", old_name)
    assert "created" in lab.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(new)).stdout

    def phase() -> str:
        return lab.kubectl("get", "machine", "-n", "openshift-machine-api", new_name,
                           "-o", "jsonpath={.status.phase}").stdout

    wait_for(lambda: phase() == "Provisioning", timeout=30, what="Provisioning")
    wait_for(lambda: phase() == "Running", timeout=60, what="Running")
    new_node = lab.kubectl("get", "machine", "-n", "openshift-machine-api", new_name,
                           "-o", "jsonpath={.status.nodeRef.name}").stdout
    assert new_node and new_node not in lab.masters
    wait_for(lambda: sum(1 for line in lab.kubectl("get", "pods", "-n", "openshift-etcd").stdout.splitlines()
                         if line.startswith("etcd-") and "3/3" in line and "Running" in line) == 3,
             timeout=120, what="three etcd pods Running")
    table = etcdctl(lab, good, "member", "list", "-w", "table")
    assert new_node in table and bad not in table
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=60, what="3 of 3")


def test_graceful_shutdown_and_restart_with_csrs(lab: Lab) -> None:
    nodes = lab.kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
    for node in nodes:
        out = lab.ssh(node, "sudo shutdown -h 1")
        assert "Shutdown scheduled" in out.stderr + out.stdout
    wait_for(lambda: all(lab.ssh(n, "true", check=False, timeout=10).returncode != 0 for n in nodes),
             timeout=60, what="every master powered off after a lab minute")
    lab.cli("power-on")
    wait_for(lambda: lab.kubectl("get", "nodes", check=False).returncode == 0, timeout=60, what="the API back")
    pending = wait_for(lambda: [line.split()[0] for line in lab.kubectl("get", "csr").stdout.splitlines()
                                if "Pending" in line] or None, timeout=30, what="pending CSRs")
    described = lab.kubectl("describe", "csr", pending[0]).stdout
    assert "node-bootstrapper" in described
    nodes_out = lab.kubectl("get", "nodes", "-l", "node-role.kubernetes.io/master").stdout
    assert "NotReady" in nodes_out

    def approve_pending() -> bool:
        names = [line.split()[0] for line in lab.kubectl("get", "csr").stdout.splitlines() if "Pending" in line]
        for name in names:
            lab.kubectl("certificate", "approve", name)
        out = lab.kubectl("get", "nodes", "-l", "node-role.kubernetes.io/master").stdout
        return "NotReady" not in out and not names

    wait_for(approve_pending, timeout=60, what="all masters Ready after approving their CSRs", interval=1)
    operators = lab.kubectl("get", "clusteroperators").stdout.splitlines()[1:]
    assert all(line.split()[4] == "False" for line in operators)


def test_delete_object_and_expire_certs_faults(lab: Lab) -> None:
    lab.cli("fault", "delete-object", "configmaps/demo/payments-config")
    assert "payments-config" not in lab.kubectl("get", "configmaps", "-n", "demo").stdout
    bad = lab.cli("fault", "delete-object", "configmaps/demo/payments-config", check=False)
    assert bad.returncode == 1 and "does not exist" in bad.stderr
    lab.cli("fault", "expire-certs")
    wait_for(lambda: "NotReady" in lab.kubectl("get", "nodes").stdout, timeout=30, what="nodes NotReady")
    wait_for(lambda: "Pending" in lab.kubectl("get", "csr").stdout, timeout=30, what="pending CSRs")
