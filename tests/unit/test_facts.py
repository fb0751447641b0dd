"""API JSON (as `oc get -o json` prints it) into facts; the EtcdMembersAvailable message read."""

from __future__ import annotations

from procedures.facts import (
    cluster_version,
    conditions,
    is_master_machine,
    machine_facts,
    node_facts,
    parse_members_available,
    pod_facts,
)

N = "ip-10-0-131-183.ec2.internal"


def test_pod_in_crashloop_reads_like_oc_get_pods():
    pod = {
        "metadata": {"name": f"etcd-{N}", "namespace": "openshift-etcd", "labels": {"app": "etcd"}},
        "spec": {"nodeName": N, "containers": [{"name": "etcdctl"}, {"name": "etcd"}, {"name": "etcd-metrics"}]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "etcd", "ready": False, "restartCount": 7,
             "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}}},
            {"name": "etcd-metrics", "ready": True, "restartCount": 0, "state": {"running": {}}},
            {"name": "etcdctl", "ready": True, "restartCount": 0, "state": {"running": {}}},
        ]},
    }
    facts = pod_facts(pod)
    assert (facts.node, facts.phase, facts.status, facts.restarts, facts.ready) == (N, "Running", "CrashLoopBackOff", 7, "2/3")
    assert facts.container_state == "waiting: CrashLoopBackOff" and facts.crashlooping


def test_pod_terminated_error():
    pod = {"metadata": {"name": f"etcd-{N}"}, "spec": {},
           "status": {"phase": "Running", "containerStatuses": [
               {"name": "etcd", "restartCount": 3, "state": {"terminated": {"reason": "Error", "exitCode": 1}}}]}}
    facts = pod_facts(pod)
    assert facts.node == N and facts.status == "Error" and facts.container_state == "terminated: Error (exit 1)"
    assert facts.crashlooping


def test_node_unreachable_and_notready():
    node = {"metadata": {"name": N}, "spec": {"taints": [{"key": "node-role.kubernetes.io/master"},
                                                         {"key": "node.kubernetes.io/unreachable"}]},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    facts = node_facts(node)
    assert facts.unreachable and facts.not_ready and facts.status == "NotReady"
    ready = node_facts({"metadata": {"name": N}, "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert not ready.not_ready and ready.status == "Ready"


def test_machine_instance_state():
    machine = {"metadata": {"name": "clustername-8qw5l-master-0",
                            "labels": {"machine.openshift.io/cluster-api-machine-role": "master"}},
               "status": {"phase": "Running", "nodeRef": {"kind": "Node", "name": N},
                          "providerStatus": {"instanceState": "stopped"}}}
    facts = machine_facts(machine)
    assert (facts.node, facts.instance_state, facts.not_running) == (N, "stopped", True)
    assert is_master_machine(machine)
    assert not machine_facts({"metadata": {"name": "m"}, "status": {}}).not_running  # unknown is not "not running"


def test_operator_conditions_and_version():
    etcd = {"status": {"conditions": [
        {"type": "EtcdMembersAvailable", "status": "True", "reason": "EtcdQuorate",
         "message": f"2 of 3 members are available, {N} is unhealthy"},
        {"type": "NodeControllerDegraded", "status": "False"},
        {"type": "NodeInstallerProgressing", "status": "False", "reason": "AllNodesAtLatestRevision",
         "message": "3 nodes are at revision 7"}]}}
    found = conditions(etcd, types=("EtcdMembersAvailable", "NodeInstallerProgressing", "Degraded"))
    assert [c.type for c in found] == ["EtcdMembersAvailable", "NodeInstallerProgressing"]
    assert cluster_version({"status": {"desired": {"version": "4.5.2"}}}) == "4.5.2"
    assert cluster_version({"status": {"history": [{"version": "4.5.1", "state": "Completed"}]}}) == "4.5.1"


def test_members_available_message():
    parsed = parse_members_available(f"2 of 3 members are available, {N} is unhealthy")
    assert parsed is not None and (parsed.available, parsed.total, parsed.unhealthy) == (2, 3, (N,))
    assert parse_members_available("3 members are available").available == 3
    both = parse_members_available("1 of 3 members are available, a-1 is unhealthy, b-2 has not started")
    assert both.unhealthy == ("a-1",) and both.not_started == ("b-2",)
    assert parse_members_available("something else") is None
