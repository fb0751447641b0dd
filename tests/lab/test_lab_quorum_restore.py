"""Chapter 5.3 by hand after a real quorum loss: a majority of members whose data is damaged
(etcd crashes at every start), the API gone, SSH still there. The document's restore brings the
cluster back to the backup's state, and its redeployments back to three healthy members."""

from __future__ import annotations

import time

from tests.labfixture import Lab, wait_for

LAB_ARGS = ("--clock-speed", "60", "--workers", "0")


def test_restore_after_lose_quorum(lab: Lab) -> None:
    recovery = lab.masters[0]
    out = lab.ssh(recovery, "sudo /usr/local/bin/cluster-backup.sh /home/core/assets/backup", timeout=60).stdout
    assert "successfully saved" in out
    lab.ssh(recovery, "sudo cp -r /home/core/assets/backup /home/core/backup")  # root's 0600 files
    lab.kubectl("create", "configmap", "made-after-backup", "-n", "demo", "--from-literal=a=b")
    lab.kubectl("delete", "configmap", "payments-config", "-n", "demo")

    message = lab.cli("fault", "lose-quorum").stdout
    assert recovery in message  # the recovery host is one of the damaged members: the harder case
    wait_for(lambda: lab.kubectl("get", "nodes", check=False, timeout=60).returncode != 0, timeout=60,
             what="kubectl to fail without quorum")
    assert "lose-quorum" in lab.cli("status").stdout

    lab.restore_by_hand(recovery=recovery)
    configmaps = lab.kubectl("get", "configmaps", "-n", "demo").stdout
    assert "payments-config" in configmaps and "made-after-backup" not in configmaps
    wait_for(lambda: lab.pod_status(recovery) == "Running", timeout=60, what="the restored etcd pod Running")

    reason = f"recovery-{time.time_ns()}"
    lab.force_redeployment("etcd", reason)
    for resource in ("kubeapiserver", "kubecontrollermanager", "kubescheduler"):
        lab.force_redeployment(resource, reason)
    # etcdctl reports endpoint health on stderr
    health = wait_for(lambda: (out := lab.etcdctl(recovery, "endpoint", "health", "--cluster", check=False))
                      .returncode == 0 and (text := out.stdout + out.stderr).count("is healthy") == 3 and text,
                      timeout=120, what="three healthy members")
    assert "unhealthy" not in health
    wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=60, what="3 of 3")
    for node in lab.masters:
        running = lab.ssh(node, "sudo crictl ps").stdout
        assert " etcd " in running and " kube-apiserver " in running, (node, running)
        assert lab.pod_status(node) == "Running"
    status = lab.cli("status").stdout
    assert "faults none" in status, status  # cured by the procedure, not by `heal`
    configmaps = lab.kubectl("get", "configmaps", "-n", "demo").stdout
    assert "payments-config" in configmaps and "made-after-backup" not in configmaps
