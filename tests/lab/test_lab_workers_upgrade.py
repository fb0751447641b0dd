"""Workers (nodes, machines in MachineSets, shutdown and power-on with their CSRs) and a z-stream
upgrade as `kubectl get clusterversion` and the masters show it."""

from __future__ import annotations

import json
import re

from tests.labfixture import Lab, wait_for

LAB_ARGS = ("--clock-speed", "60")  # the default two workers


def rows(lab: Lab, *args: str) -> list[list[str]]:
    return [line.split() for line in lab.kubectl(*args).stdout.splitlines()[1:]]


def test_workers_are_ready_nodes_in_machinesets(lab: Lab) -> None:
    assert len(lab.workers) == 2
    workers = rows(lab, "get", "nodes", "-l", "node-role.kubernetes.io/worker")
    assert sorted(r[0] for r in workers) == sorted(lab.workers)
    assert all(r[1] == "Ready" and r[2] == "worker" for r in workers)
    sets = rows(lab, "get", "machinesets", "-n", "openshift-machine-api")
    assert [r[0].split("-worker-")[1] for r in sets] == ["us-east-1a", "us-east-1b", "us-east-1c"]
    assert [r[1:5] for r in sets] == [["1", "1", "1", "1"], ["1", "1", "1", "1"], ["0", "0", "0", "0"]]
    machines = json.loads(lab.kubectl("get", "machines", "-n", "openshift-machine-api", "-o", "json").stdout)["items"]
    worker_machines = [m for m in machines
                       if m["metadata"]["labels"]["machine.openshift.io/cluster-api-machine-role"] == "worker"]
    assert sorted(m["status"]["nodeRef"]["name"] for m in worker_machines) == sorted(lab.workers)
    for m in worker_machines:
        machineset = m["metadata"]["labels"]["machine.openshift.io/cluster-api-machineset"]
        assert re.fullmatch(re.escape(machineset) + r"-[a-z0-9]{5}", m["metadata"]["name"])
        assert m["metadata"]["ownerReferences"][0]["kind"] == "MachineSet"
        assert m["status"]["phase"] == "Running" and m["status"]["providerStatus"]["instanceState"] == "running"
    worker = lab.workers[0]
    assert lab.ssh(worker, "hostname").stdout.strip() == worker
    assert lab.ssh(worker, "test -e /usr/local/bin/cluster-backup.sh", check=False).returncode != 0
    assert lab.ssh(worker, "sudo crictl ps -q").stdout.strip() == ""  # no etcd, no static pods


def test_workers_shut_down_power_on_and_raise_csrs(lab: Lab) -> None:
    for worker in lab.workers:
        out = lab.ssh(worker, "sudo shutdown -h 1")
        assert "Shutdown scheduled" in out.stderr + out.stdout
    wait_for(lambda: all(lab.ssh(w, "true", check=False, timeout=10).returncode != 0 for w in lab.workers),
             timeout=60, what="the workers powered off after a lab minute")
    jsonpath = "{range .items[*]}{@.status.nodeRef.name}{\"\\t\"}{@.status.providerStatus.instanceState}{\"\\n\"}"
    wait_for(lambda: all(f"{w}\tstopped" in lab.kubectl("get", "machines", "-A", "-o", "jsonpath=" + jsonpath).stdout
                         for w in lab.workers), timeout=30, what="the workers' instances stopped")
    wait_for(lambda: all(r[1] == "NotReady" for r in rows(lab, "get", "nodes", "-l", "node-role.kubernetes.io/worker")),
             timeout=30, what="the workers NotReady")

    lab.cli("power-on")
    pending = wait_for(lambda: [r for r in rows(lab, "get", "csr") if r[-1] == "Pending"] or None, timeout=30,
                       what="pending CSRs")
    assert all("node-bootstrapper" in r[3] for r in pending) and len(pending) == 2
    described = lab.kubectl("describe", "csr", pending[0][0]).stdout
    assert "kubernetes.io/kube-apiserver-client-kubelet" in described
    assert all(r[1] == "NotReady" for r in rows(lab, "get", "nodes", "-l", "node-role.kubernetes.io/worker"))

    approved: set[str] = set()

    def approve_pending() -> bool:
        names = [r[0] for r in rows(lab, "get", "csr") if r[-1] == "Pending"]
        for name in names:
            lab.kubectl("certificate", "approve", name)
        approved.update(names)
        workers = rows(lab, "get", "nodes", "-l", "node-role.kubernetes.io/worker")
        return not names and all(r[1] == "Ready" for r in workers)

    wait_for(approve_pending, timeout=60, what="the workers Ready after approving their CSRs", interval=1)
    csrs = {r[0]: r for r in rows(lab, "get", "csr")}
    serving = [csrs[n] for n in approved if csrs[n][2] == "kubernetes.io/kubelet-serving"]
    assert sorted(r[3] for r in serving) == sorted(f"system:node:{w}" for w in lab.workers)
    assert all(csrs[n][-1] == "Approved,Issued" for n in approved)
    wait_for(lambda: [r[3] for r in rows(lab, "get", "machinesets", "-n", "openshift-machine-api")] == ["1", "1", "0"],
             timeout=30, what="the MachineSets' workers ready again")


def test_upgrade_to_the_next_z_stream(lab: Lab) -> None:
    version = rows(lab, "get", "clusterversion")[0]
    assert version[:2] == ["version", "4.5.2"]
    before_image = lab.ssh(lab.masters[0], "sudo crictl ps --name '^etcd$' -o json").stdout
    lab.etcdctl(lab.masters[0], "put", "/lab/upgrade-marker", "written-on-4.5.2")

    assert "Updating to 4.5.3" in lab.cli("upgrade", "--to", "4.5.3").stdout
    wait_for(lambda: "Working towards 4.5.3" in lab.kubectl("get", "clusterversion").stdout, timeout=30,
             what="Progressing: Working towards 4.5.3")
    refused = lab.cli("upgrade", "--to", "4.5.4", check=False)
    assert refused.returncode == 1 and "in progress" in refused.stderr
    wait_for(lambda: rows(lab, "get", "clusterversion")[0][1] == "4.5.3", timeout=180, what="VERSION 4.5.3",
             interval=1)
    row = lab.kubectl("get", "clusterversion").stdout.splitlines()[1]
    assert row.split()[2:4] == ["True", "False"] and row.endswith("Cluster version is 4.5.3")
    cv = json.loads(lab.kubectl("get", "clusterversion", "version", "-o", "json").stdout)
    assert [(h["state"], h["version"]) for h in cv["status"]["history"]] == [("Completed", "4.5.3"),
                                                                           ("Completed", "4.5.2")]
    assert cv["status"]["desired"]["version"] == "4.5.3" and cv["spec"]["desiredUpdate"]["version"] == "4.5.3"
    operators = rows(lab, "get", "clusteroperators")
    assert {r[1] for r in operators} == {"4.5.3"}

    # The members kept their data through the rollout that gave them the new release's image.
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=60, what="3 of 3")
    for node in lab.masters:
        pod = json.loads(lab.kubectl("get", "pod", "-n", "openshift-etcd", f"etcd-{node}", "-o", "json").stdout)
        etcd = next(c for c in pod["spec"]["containers"] if c["name"] == "etcd")
        own = next(a.split("=", 1)[1] for a in etcd["command"] if a.startswith("--listen-client-urls="))
        value = lab.kubectl("exec", "-n", "openshift-etcd", f"etcd-{node}", "--", "env", f"ETCDCTL_ENDPOINTS={own}",
                            "etcdctl", "get", "/lab/upgrade-marker", "--print-value-only", "--consistency=s").stdout
        assert value.strip() == "written-on-4.5.2", node  # read from this member's own data
    assert lab.ssh(lab.masters[0], "sudo crictl ps --name '^etcd$' -o json").stdout != before_image

    # A backup taken now records the new release in its static pod resources.
    lab.ssh(lab.masters[1], "sudo /usr/local/bin/cluster-backup.sh /home/core/assets/backup", timeout=60)
    recorded = lab.ssh(lab.masters[1], "sudo tar -xzOf /home/core/assets/backup/static_kuberesources_*.tar.gz "
                                       "--wildcards '*/configmaps/etcd-pod/version'").stdout
    assert recorded == "4.5.3"

    for bad, why in (("4.5.3", "already at 4.5.3"), ("4.5.2", "downgrades are not supported"),
                     ("4.6.1", "4.5 z-stream")):
        refused = lab.cli("upgrade", "--to", bad, check=False)
        assert refused.returncode == 1 and why in refused.stderr, refused.stderr
