"""lab.apiserver with REAL kubectl 1.32 and the REAL `kubernetes` client against a real etcd:
discovery, auth, CRUD, patches, selectors, OpenShift 4.5 tables, errors when etcd is gone."""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from tests.lab.etcd_fixture import ApiLab

ETCD_MSG = "3 of 3 members are available"


def _node(name: str, *, ready: str = "True", unschedulable: bool = False, taints: list | None = None) -> dict:
    return {
        "metadata": {"name": name, "labels": {"node-role.kubernetes.io/master": "", "kubernetes.io/hostname": name}},
        "spec": {"unschedulable": unschedulable, "taints": taints or []},
        "status": {
            "conditions": [{"type": "Ready", "status": ready}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
            # Every required field: kubernetes>=35 validates models with pydantic.
            "nodeInfo": {"kubeletVersion": "v1.18.3+2fbd7c7", "osImage": "Red Hat Enterprise Linux CoreOS",
                         "kernelVersion": "4.18.0-193.el8.x86_64", "containerRuntimeVersion": "cri-o://1.18.2",
                         "architecture": "amd64", "bootID": "b", "kubeProxyVersion": "v1.18.3", "machineID": "m",
                         "operatingSystem": "linux", "systemUUID": "u"},
        },
    }


def _etcd_pod(node: str, *, crash: bool = False) -> dict:
    running = {"running": {"startedAt": "2020-07-20T10:00:00Z"}}
    statuses = [
        {"name": "etcdctl", "ready": True, "restartCount": 0, "state": running},
        {"name": "etcd", "ready": not crash, "restartCount": 5 if crash else 0,
         "state": {"waiting": {"reason": "CrashLoopBackOff"}} if crash else running},
        {"name": "etcd-metrics", "ready": True, "restartCount": 0, "state": running},
    ]
    for status in statuses:
        status.update(image="quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0", imageID="sha256:0")
    return {
        "metadata": {"name": f"etcd-{node}", "namespace": "openshift-etcd", "labels": {"app": "etcd", "k8s-app": "etcd"},
                     "annotations": {"kubectl.kubernetes.io/default-container": "etcd"}},
        "spec": {"nodeName": node, "containers": [{"name": "etcdctl"}, {"name": "etcd"}, {"name": "etcd-metrics"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "containerStatuses": statuses},
    }


def seed(lab: ApiLab) -> None:
    objs: list[tuple[str, dict[str, Any]]] = [
        ("namespaces", {"metadata": {"name": "openshift-etcd"}}),
        ("namespaces", {"metadata": {"name": "openshift-machine-api"}}),
        ("nodes", _node("master-0")),
        ("nodes", _node("master-1", unschedulable=True)),
        ("nodes", _node("master-2", ready="Unknown",
                        taints=[{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
                                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}])),
        ("nodes", {"metadata": {"name": "worker-0", "labels": {"node-role.kubernetes.io/worker": ""}},
                   "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": None}}),
        ("pods", _etcd_pod("master-0")),
        ("pods", _etcd_pod("master-1")),
        ("pods", _etcd_pod("master-2", crash=True)),
        ("secrets", {"metadata": {"name": "etcd-peer-master-0", "namespace": "openshift-etcd"},
                     "type": "kubernetes.io/tls", "data": {"tls.crt": "eA==", "tls.key": "eA=="}}),
        ("configmaps", {"metadata": {"name": "etcd-pod", "namespace": "openshift-etcd"}, "data": {"pod.yaml": "x"}}),
        ("etcds", {"apiVersion": "operator.openshift.io/v1", "kind": "Etcd", "metadata": {"name": "cluster"},
                   "spec": {"managementState": "Managed"},
                   "status": {"conditions": [
                       {"type": "EtcdMembersDegraded", "status": "False", "message": "No unhealthy members found"},
                       {"type": "EtcdMembersAvailable", "status": "True", "message": ETCD_MSG}]}}),
        ("machines", {"apiVersion": "machine.openshift.io/v1beta1", "kind": "Machine",
                      "metadata": {"name": "lab-master-0", "namespace": "openshift-machine-api",
                                   "labels": {"machine.openshift.io/instance-type": "m5.xlarge",
                                              "machine.openshift.io/region": "us-east-1",
                                              "machine.openshift.io/zone": "us-east-1a"}},
                      "spec": {"providerID": "aws:///us-east-1a/i-0abc"},
                      "status": {"phase": "Running", "nodeRef": {"kind": "Node", "name": "master-0"},
                                 "providerStatus": {"instanceState": "running"}}}),
        ("clusteroperators", {"metadata": {"name": "etcd"}, "status": {
            "versions": [{"name": "raw-internal", "version": "4.5.2"}, {"name": "operator", "version": "4.5.2"}],
            "conditions": [{"type": "Available", "status": "True", "lastTransitionTime": "2020-07-20T10:00:00Z"},
                           {"type": "Progressing", "status": "False", "lastTransitionTime": "2020-07-20T10:00:00Z"},
                           {"type": "Degraded", "status": "False", "lastTransitionTime": "2020-07-20T10:00:00Z"}]}}),
        ("clusterversions", {"metadata": {"name": "version"}, "status": {
            "history": [{"state": "Completed", "version": "4.5.2"}],
            "conditions": [{"type": "Available", "status": "True", "lastTransitionTime": "2020-07-20T10:00:00Z"},
                           {"type": "Progressing", "status": "False", "lastTransitionTime": "2020-07-20T10:00:00Z",
                            "message": "Cluster version is 4.5.2"}]}}),
        ("certificatesigningrequests", {"metadata": {"name": "csr-pending"}, "spec": {
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "username": "system:serviceaccount:openshift-machine-config-operator:node-bootstrapper",
            "request": "eA==", "usages": ["digital signature", "client auth"]}}),
        ("certificatesigningrequests", {"metadata": {"name": "csr-issued"}, "spec": {
            "signerName": "kubernetes.io/kubelet-serving", "username": "system:node:master-0", "request": "eA=="},
            "status": {"conditions": [{"type": "Approved", "status": "True", "reason": "x"}], "certificate": "eA=="}}),
    ]
    for resource, obj in objs:
        lab.run(lab.objects.create(resource, obj))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiLab]:
    lab = ApiLab(tmp_path_factory.mktemp("apiserver"))
    try:
        seed(lab)
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def api(lab: ApiLab) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(lab.kubeconfig))


def _columns(output: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in output.strip().splitlines()]


def _raw(lab: ApiLab, path: str, *, token: str | None, ctx_ca: Path) -> tuple[int, dict]:
    ctx = ssl.create_default_context(cafile=str(ctx_ca))
    req = urllib.request.Request(lab.url + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# -- auth and discovery -------------------------------------------------------------------------

def test_auth(lab: ApiLab) -> None:
    expected = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "Unauthorized",
                "reason": "Unauthorized", "code": 401}
    assert _raw(lab, "/api/v1/nodes", token=None, ctx_ca=lab.ca.cert_file) == (401, expected)
    assert _raw(lab, "/api/v1/nodes", token="wrong", ctx_ca=lab.ca.cert_file) == (401, expected)
    code, body = _raw(lab, "/version", token=lab.token, ctx_ca=lab.ca.cert_file)
    assert code == 200 and body["gitVersion"].startswith("v1.18.3")


def test_kubectl_discovery(lab: ApiLab) -> None:
    out = lab.kubectl("api-resources").stdout
    rows = {r[0]: r for r in _columns(out)[1:]}
    for name, short in (("nodes", "no"), ("pods", "po"), ("namespaces", "ns"), ("configmaps", "cm"),
                        ("certificatesigningrequests", "csr"), ("clusteroperators", "co")):
        assert rows[name][1] == short, rows[name]
    assert rows["machines"][1:] == ["machine.openshift.io/v1beta1", "true", "Machine"]
    assert rows["etcds"][1:] == ["operator.openshift.io/v1", "false", "Etcd"]
    assert "certificates.k8s.io/v1beta1" in lab.kubectl("api-versions").stdout
    _, body = _raw(lab, "/api/v1", token=lab.token, ctx_ca=lab.ca.cert_file)
    subs = {r["name"]: r["verbs"] for r in body["resources"]}
    assert "create" in subs["pods/exec"] and "update" in subs["pods/status"]


# -- tables ------------------------------------------------------------------------------------------

def test_get_nodes_table(lab: ApiLab) -> None:
    rows = _columns(lab.kubectl("get", "nodes").stdout)
    assert rows[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    by_name = {r[0]: r for r in rows[1:]}
    assert by_name["master-0"][1:3] == ["Ready", "master"]
    assert by_name["master-1"][1] == "Ready,SchedulingDisabled"
    assert by_name["master-2"][1] == "NotReady"
    assert by_name["worker-0"][2] == "worker"
    assert re.fullmatch(r"\d+s", by_name["master-0"][3]) and by_name["master-0"][4] == "v1.18.3+2fbd7c7"
    wide = _columns(lab.kubectl("get", "nodes", "-o", "wide", "-l", "node-role.kubernetes.io/master").stdout)
    assert wide[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE",
                       "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    assert [r[0] for r in wide[1:]] == ["master-0", "master-1", "master-2"]
    assert wide[1][5:] == ["10.0.0.1", "<none>", "Red Hat Enterprise Linux CoreOS", "4.18.0-193.el8.x86_64",
                           "cri-o://1.18.2"]


def test_get_pods_table(lab: ApiLab) -> None:
    rows = _columns(lab.kubectl("get", "pods", "-n", "openshift-etcd").stdout)
    assert rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    by_name = {r[0]: r for r in rows[1:]}
    assert by_name["etcd-master-0"][1:4] == ["3/3", "Running", "0"]
    assert by_name["etcd-master-2"][1:4] == ["2/3", "CrashLoopBackOff", "5"]
    wide = _columns(lab.kubectl("get", "pods", "-A", "-o", "wide").stdout)
    assert wide[0] == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE",
                       "READINESS GATES"]
    assert wide[1][0] == "openshift-etcd" and wide[1][6:] == ["10.0.0.1", "master-0", "<none>", "<none>"]
    # Field and label selectors, as the procedures use them.
    out = lab.kubectl("get", "pods", "-n", "openshift-etcd", "--field-selector", "spec.nodeName=master-1",
                      "-l", "app=etcd", "-o", "name").stdout
    assert out.split() == ["pod/etcd-master-1"]
    out = lab.kubectl("get", "pods", "-A", "-l", "app!=etcd", "-o", "name").stdout
    assert out.strip() == ""
    out = lab.kubectl("get", "pods", "-n", "openshift-etcd", "-l", "!app", "-o", "name").stdout
    assert out.strip() == ""
    out = lab.kubectl("get", "pods", "-A", "--field-selector", "status.phase=Running,metadata.name!=etcd-master-0",
                      "-o", "name").stdout
    assert out.split() == ["pod/etcd-master-1", "pod/etcd-master-2"]


def test_other_tables(lab: ApiLab) -> None:
    def table(*args: str) -> list[list[str]]:
        return _columns(lab.kubectl("get", *args).stdout)

    secrets = table("secrets", "-n", "openshift-etcd")
    assert secrets[0] == ["NAME", "TYPE", "DATA", "AGE"] and secrets[1][:3] == ["etcd-peer-master-0", "kubernetes.io/tls", "2"]
    cms = table("cm", "-n", "openshift-etcd")
    assert cms[0] == ["NAME", "DATA", "AGE"] and cms[1][:2] == ["etcd-pod", "1"]
    ns = table("ns")
    assert ns[0] == ["NAME", "STATUS", "AGE"] and ns[1][:2] == ["openshift-etcd", "Active"]
    machines = table("machines", "-A", "-o", "wide")
    assert machines[0] == ["NAMESPACE", "NAME", "PHASE", "TYPE", "REGION", "ZONE", "AGE", "NODE", "PROVIDERID", "STATE"]
    assert machines[1][:6] == ["openshift-machine-api", "lab-master-0", "Running", "m5.xlarge", "us-east-1", "us-east-1a"]
    assert machines[1][7:] == ["master-0", "aws:///us-east-1a/i-0abc", "running"]
    co = table("co")
    assert co[0] == ["NAME", "VERSION", "AVAILABLE", "PROGRESSING", "DEGRADED", "SINCE"]
    assert co[1][:5] == ["etcd", "4.5.2", "True", "False", "False"] and re.fullmatch(r"\d+y\d*d?", co[1][5])
    cv = table("clusterversion")
    assert cv[0] == ["NAME", "VERSION", "AVAILABLE", "PROGRESSING", "SINCE", "STATUS"]
    assert cv[1][:4] == ["version", "4.5.2", "True", "False"] and cv[1][5] == "Cluster version is 4.5.2"
    csr = {r[0]: r for r in table("csr")}
    assert csr["NAME"] == ["NAME", "AGE", "SIGNERNAME", "REQUESTOR", "CONDITION"]
    assert csr["csr-pending"][2:] == ["kubernetes.io/kube-apiserver-client-kubelet",
                                      "system:serviceaccount:openshift-machine-config-operator:node-bootstrapper",
                                      "Pending"]
    assert csr["csr-issued"][4] == "Approved,Issued"
    etcd = table("etcd")
    assert etcd[0] == ["NAME", "AGE"] and etcd[1][0] == "cluster"


def test_jsonpath_and_yaml(lab: ApiLab) -> None:
    out = lab.kubectl("get", "etcd", "-o=jsonpath={range .items[0].status.conditions[?(@.type==\"EtcdMembersAvailable\")]}"
                      "{.message}{\"\\n\"}").stdout
    assert out.strip() == ETCD_MSG  # kubectl itself adds a newline after an unterminated range
    out = lab.kubectl("get", "nodes", "-o", "jsonpath={range .items[*]}{\"\\n\"}{.metadata.name}{\"\\t\"}"
                      "{range .spec.taints[*]}{.key}{\" \"}").stdout
    lines = dict(line.split("\t") for line in out.strip("\n").splitlines())
    assert lines["master-2"].split() == ["node.kubernetes.io/unreachable"] * 2 and lines["master-0"].strip() == ""
    y = lab.kubectl("get", "etcd", "cluster", "-o", "yaml").stdout
    assert "kind: Etcd" in y and "resourceVersion:" in y and "uid:" in y


# -- writes -----------------------------------------------------------------------------------------------

MACHINE = """apiVersion: machine.openshift.io/v1beta1
kind: Machine
metadata:
  name: lab-master-3
  namespace: openshift-machine-api
  labels:
    machine.openshift.io/cluster-api-machine-role: master
spec:
  providerSpec: {}
"""


def test_apply_patch_delete(lab: ApiLab) -> None:
    out = lab.kubectl("apply", "-f", "-", stdin=MACHINE).stdout
    assert out.strip() == "machine.machine.openshift.io/lab-master-3 created"
    got = json.loads(lab.kubectl("get", "machine", "-n", "openshift-machine-api", "lab-master-3", "-o", "json").stdout)
    assert "kubectl.kubernetes.io/last-applied-configuration" in got["metadata"]["annotations"]
    out = lab.kubectl("apply", "-f", "-", stdin=MACHINE).stdout
    assert "unchanged" in out
    lab.kubectl("patch", "etcd", "cluster", "--type=merge", "-p", '{"spec":{"forceRedeploymentReason":"recovery-1"}}')
    etcd = lab.run(lab.objects.get("etcds", "cluster"))
    assert etcd["spec"]["forceRedeploymentReason"] == "recovery-1" and etcd["metadata"]["generation"] == 2
    lab.kubectl("patch", "node", "master-0", "-p", '{"spec":{"unschedulable":true}}')  # strategic merge
    lab.kubectl("patch", "node", "master-0", "--type=json", "-p", '[{"op":"replace","path":"/spec/unschedulable","value":false}]')
    assert lab.run(lab.objects.get("nodes", "master-0"))["spec"]["unschedulable"] is False
    lab.kubectl("label", "node", "master-0", "lab=yes")
    assert lab.kubectl("get", "nodes", "-l", "lab=yes", "-o", "name").stdout.split() == ["node/master-0"]
    out = lab.kubectl("delete", "machine", "-n", "openshift-machine-api", "lab-master-3").stdout
    assert out.strip() == 'machine.machine.openshift.io "lab-master-3" deleted'
    lab.kubectl("create", "secret", "generic", "tmp", "-n", "openshift-etcd", "--from-literal=a=b")
    out = lab.kubectl("delete", "secret", "-n", "openshift-etcd", "tmp").stdout
    assert out.strip() == 'secret "tmp" deleted'


def test_errors(lab: ApiLab) -> None:
    err = lab.kubectl("get", "pod", "-n", "openshift-etcd", "nope", check=False)
    assert err.returncode == 1 and err.stderr.strip() == 'Error from server (NotFound): pods "nope" not found'
    err = lab.kubectl("get", "machine", "-n", "openshift-machine-api", "nope", check=False)
    assert 'machines.machine.openshift.io "nope" not found' in err.stderr
    err = lab.kubectl("create", "namespace", "openshift-etcd", check=False)
    assert 'Error from server (AlreadyExists): namespaces "openshift-etcd" already exists' in err.stderr
    err = lab.kubectl("create", "configmap", "x", "-n", "no-such-ns", check=False)
    assert 'namespaces "no-such-ns" not found' in err.stderr
    err = lab.kubectl("get", "pods", "-A", "-l", "a in (", check=False)
    assert err.returncode != 0


def test_csr_approve(lab: ApiLab) -> None:
    out = lab.kubectl("certificate", "approve", "csr-pending").stdout
    assert "approved" in out
    rows = {r[0]: r for r in _columns(lab.kubectl("get", "csr").stdout)}
    assert rows["csr-pending"][4] == "Approved"
    csr = lab.run(lab.objects.get("certificatesigningrequests", "csr-pending"))
    assert csr["status"]["conditions"][0]["type"] == "Approved"


# -- the Python client -----------------------------------------------------------------------------------

def test_python_client(lab: ApiLab, api: k8s.ApiClient) -> None:
    core = k8s.CoreV1Api(api)
    nodes = core.list_node(label_selector="node-role.kubernetes.io/master")
    assert [n.metadata.name for n in nodes.items] == ["master-0", "master-1", "master-2"]
    pods = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=master-2")
    assert pods.items[0].status.container_statuses[1].state.waiting.reason == "CrashLoopBackOff"
    cm = core.create_namespaced_config_map("openshift-etcd", k8s.V1ConfigMap(
        metadata=k8s.V1ObjectMeta(name="py"), data={"a": "1"}))
    cm.data["a"] = "2"
    updated = core.replace_namespaced_config_map("py", "openshift-etcd", cm)
    assert int(updated.metadata.resource_version) > int(cm.metadata.resource_version)
    with pytest.raises(k8s.ApiException) as exc:
        core.replace_namespaced_config_map("py", "openshift-etcd", cm)  # stale resourceVersion
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "Conflict"
    core.patch_namespaced_config_map("py", "openshift-etcd", {"data": {"b": "3"}})
    assert core.read_namespaced_config_map("py", "openshift-etcd").data == {"a": "2", "b": "3"}
    core.delete_namespaced_config_map("py", "openshift-etcd")
    with pytest.raises(k8s.ApiException) as exc:
        core.read_namespaced_config_map("py", "openshift-etcd")
    assert exc.value.status == 404
    custom = k8s.CustomObjectsApi(api)
    etcd = custom.get_cluster_custom_object("operator.openshift.io", "v1", "etcds", "cluster")
    assert etcd["status"]["conditions"][1]["message"] == ETCD_MSG
    custom.patch_cluster_custom_object_status("operator.openshift.io", "v1", "etcds", "cluster",
                                              {"status": {"latestAvailableRevision": 7}})
    assert lab.run(lab.objects.get("etcds", "cluster"))["status"]["latestAvailableRevision"] == 7
    machines = custom.list_namespaced_custom_object("machine.openshift.io", "v1beta1", "openshift-machine-api", "machines")
    assert machines["items"][0]["metadata"]["name"] == "lab-master-0"
    csrs = k8s.CertificatesV1Api(api).list_certificate_signing_request()
    assert {c.metadata.name for c in csrs.items} >= {"csr-pending", "csr-issued"}
