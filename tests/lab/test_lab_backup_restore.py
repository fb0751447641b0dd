"""Chapter 1 and 5.3 by hand, as the document says: cluster-backup.sh on one master, a change,
then the restore on a recovery host (other masters' static pods and data moved away,
cluster-restore.sh, kubelet restarts, forced redeployment) -- and the change is gone."""

from __future__ import annotations

import re

from tests.labfixture import Lab, wait_for


def test_backup_change_restore(lab: Lab) -> None:
    recovery = lab.masters[0]
    out = lab.ssh(recovery, "sudo /usr/local/bin/cluster-backup.sh /home/core/assets/backup", timeout=60).stdout
    assert "successfully saved" in out
    files = lab.ssh(recovery, "ls /home/core/assets/backup").stdout.split()
    assert len(files) == 2
    assert any(re.fullmatch(r"snapshot_\d{4}-\d{2}-\d{2}_\d{6}\.db", f) for f in files), files
    assert any(re.fullmatch(r"static_kuberesources_\d{4}-\d{2}-\d{2}_\d{6}\.tar\.gz", f) for f in files), files

    # The change a restore must undo: something created, something critical deleted.
    lab.kubectl("create", "configmap", "made-after-backup", "-n", "demo", "--from-literal=a=b")
    lab.kubectl("delete", "configmap", "payments-config", "-n", "demo")

    lab.ssh(recovery, "sudo cp -r /home/core/assets/backup /home/core/backup")  # root's 0600 files
    lab.restore_by_hand(recovery=recovery)
    configmaps = lab.kubectl("get", "configmaps", "-n", "demo").stdout
    assert "payments-config" in configmaps and "made-after-backup" not in configmaps

    lab.kubectl("patch", "etcd", "cluster", "--type=merge", "-p", '{"spec":{"forceRedeploymentReason":"recovery-1"}}')
    jsonpath = "{range .items[0].status.conditions[?(@.type==\"NodeInstallerProgressing\")]}{.reason}{\"\\n\"}"
    wait_for(lambda: lab.kubectl("get", "etcd", "-o=jsonpath=" + jsonpath).stdout.strip() == "AllNodesAtLatestRevision"
             and lab.members_message() == "3 of 3 members are available", timeout=120,
             what="etcd scaled back to three members")
    for resource in ("kubeapiserver", "kubecontrollermanager", "kubescheduler"):
        lab.kubectl("patch", resource, "cluster", "--type=merge", "-p",
                    '{"spec":{"forceRedeploymentReason":"recovery-1"}}')
    wait_for(lambda: all("kube-apiserver" in lab.ssh(n, "sudo crictl ps").stdout for n in lab.masters),
             timeout=120, what="kube-apiserver back on every master")

    def running_etcd_pods() -> int:  # the mirror pods' status follows the kubelet's next sync
        pods = lab.kubectl("get", "pods", "-n", "openshift-etcd").stdout
        return sum(1 for line in pods.splitlines() if line.startswith("etcd-") and "Running" in line)

    wait_for(lambda: running_etcd_pods() == 3, timeout=60, what="three etcd pods Running in the API")
