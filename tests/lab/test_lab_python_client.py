"""The document's reads through the official `kubernetes` Python client, the way the bot reads:
typed core objects, custom objects for OpenShift's groups, and exec over the v4 WebSocket."""

from __future__ import annotations

from kubernetes import client, config
from kubernetes.stream import stream

from tests.labfixture import Lab


def api_client(lab: Lab) -> client.ApiClient:
    return config.new_client_from_config(config_file=lab.env["KUBECONFIG"])


def test_typed_reads(lab: Lab) -> None:
    with api_client(lab) as api:
        core = client.CoreV1Api(api)
        nodes = core.list_node(label_selector="node-role.kubernetes.io/master").items
        assert sorted(n.metadata.name for n in nodes) == sorted(lab.masters)
        assert all(c.status == "True" for n in nodes for c in n.status.conditions if c.type == "Ready")
        pods = core.list_namespaced_pod("openshift-etcd").items
        assert {p.metadata.name for p in pods} >= {f"etcd-{n}" for n in lab.masters}
        secret = core.read_namespaced_secret(f"etcd-peer-{lab.masters[0]}", "openshift-etcd")
        assert secret.type == "kubernetes.io/tls" and set(secret.data) == {"tls.crt", "tls.key"}


def test_custom_objects(lab: Lab) -> None:
    with api_client(lab) as api:
        custom = client.CustomObjectsApi(api)
        etcd = custom.get_cluster_custom_object("operator.openshift.io", "v1", "etcds", "cluster")
        types = {c["type"] for c in etcd["status"]["conditions"]}
        assert {"EtcdMembersAvailable", "NodeInstallerProgressing"} <= types
        machines = custom.list_namespaced_custom_object("machine.openshift.io", "v1beta1", "openshift-machine-api",
                                                        "machines")["items"]
        masters = [m for m in machines if m["metadata"]["labels"]["machine.openshift.io/cluster-api-machine-role"] == "master"]
        assert {m["status"]["nodeRef"]["name"] for m in masters} == set(lab.masters)
        assert {m["status"]["nodeRef"]["name"] for m in machines if m not in masters} == set(lab.workers)
        version = custom.get_cluster_custom_object("config.openshift.io", "v1", "clusterversions", "version")
        assert version["status"]["desired"]["version"] == "4.5.2"
        proxy = custom.get_cluster_custom_object("config.openshift.io", "v1", "proxies", "cluster")
        assert "httpProxy" not in proxy["spec"]


def test_exec_etcdctl_in_pod(lab: Lab) -> None:
    with api_client(lab) as api:
        core = client.CoreV1Api(api)
        ws = stream(core.connect_get_namespaced_pod_exec, f"etcd-{lab.masters[0]}", "openshift-etcd",
                    container="etcdctl", command=["etcdctl", "endpoint", "health", "--cluster", "-w", "json"],
                    stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
        ws.run_forever(timeout=20)
        out = ws.read_stdout()
        assert ws.returncode == 0
        assert out.count('"health":true') == 3, out
