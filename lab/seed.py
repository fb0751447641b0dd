"""The API objects of a freshly installed OpenShift 4.5 cluster, as the document reads them.

Written once, into the lab's etcd, when a lab first comes up. Shapes follow openshift/api:
`etcds.operator.openshift.io` status (conditions, nodeStatuses, latestAvailableRevision),
`machine.openshift.io/v1beta1` Machine (phase, providerStatus.instanceState, nodeRef),
ClusterVersion, ClusterOperator, Proxy.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

from lab import bootstrap, pki
from lab.spec import ZONES, LabSpec, MasterSpec, NodeSpec, WorkerSpec

CLUSTER_OPERATORS = [
    "authentication", "cloud-credential", "cluster-autoscaler", "config-operator", "console",
    "csi-snapshot-controller", "dns", "etcd", "image-registry", "ingress", "insights", "kube-apiserver",
    "kube-controller-manager", "kube-scheduler", "kube-storage-version-migrator", "machine-api",
    "machine-approver", "machine-config", "marketplace", "monitoring", "network", "node-tuning",
    "openshift-apiserver", "openshift-controller-manager", "openshift-samples", "operator-lifecycle-manager",
    "operator-lifecycle-manager-catalog", "operator-lifecycle-manager-packageserver", "service-ca", "storage",
]
NAMESPACES = [
    "default", "kube-system", "openshift-config", "openshift-etcd", "openshift-etcd-operator",
    "openshift-kube-apiserver", "openshift-kube-controller-manager", "openshift-kube-scheduler",
    "openshift-machine-api", "openshift-machine-config-operator", "demo",
]
OPERATOR_RESOURCES = ("etcds", "kubeapiservers", "kubecontrollermanagers", "kubeschedulers")
KUBELET_VERSION = "v1.18.3+b0068a8"


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def meta(name: str, *, namespace: str | None = None, created: float, **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "creationTimestamp": iso(created)}
    if namespace:
        m["namespace"] = namespace
    m.update(extra)
    return m


def instance_type(node: NodeSpec) -> str:
    return "m5.xlarge" if node.role == "master" else "m5.large"


def node_object(master: NodeSpec, *, created: float) -> dict[str, Any]:
    """A master's or a worker's Node: role label, the master taint on masters only."""
    itype = instance_type(master)
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": meta(master.node, created=created, labels={
            "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/instance-type": itype,
            "beta.kubernetes.io/os": "linux", "kubernetes.io/hostname": master.node.split(".")[0],
            "kubernetes.io/os": "linux", f"node-role.kubernetes.io/{master.role}": "",
            "node.kubernetes.io/instance-type": itype, "topology.kubernetes.io/zone": master.zone,
            "topology.kubernetes.io/region": "us-east-1",
            "node.openshift.io/os_id": "rhcos",
        }, annotations={"machine.openshift.io/machine": f"openshift-machine-api/{master.machine}",
                        "machineconfiguration.openshift.io/state": "Done"}),
        "spec": {"providerID": f"aws:///{master.zone}/i-0{uuid.uuid5(uuid.NAMESPACE_DNS, master.node).hex[:16]}",
                 "taints": [{"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}]
                 if master.role == "master" else []},
        "status": node_status(ready=True, master=master),
    }


def node_status(*, ready: bool, master: NodeSpec, reason: str = "") -> dict[str, Any]:
    now = iso(time.time())
    if ready:
        ready_cond = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                      "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now}
    else:
        ready_cond = {"type": "Ready", "status": "Unknown", "reason": reason or "NodeStatusUnknown",
                      "message": "Kubelet stopped posting node status.", "lastHeartbeatTime": now,
                      "lastTransitionTime": now}
    return {
        "addresses": [{"type": "InternalIP", "address": master.ip},
                      {"type": "Hostname", "address": master.node},
                      {"type": "InternalDNS", "address": master.node}],
        "conditions": [ready_cond],
        "nodeInfo": {"kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
                     "osImage": "Red Hat Enterprise Linux CoreOS 45.82.202007141718-0 (Ootpa)",
                     "kernelVersion": "4.18.0-193.13.2.el8_2.x86_64",
                     "containerRuntimeVersion": "cri-o://1.18.3-5.rhaos4.5.git1c13d1d.el8",
                     "architecture": "amd64", "operatingSystem": "linux",
                     "bootID": str(uuid.uuid5(uuid.NAMESPACE_OID, master.node + "boot")),
                     "machineID": uuid.uuid5(uuid.NAMESPACE_OID, master.node).hex,
                     "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, master.node)).upper()},
    }


def provider_spec(spec: LabSpec, *, role: str, zone: str) -> dict[str, Any]:
    return {"value": {
        "apiVersion": "awsproviderconfig.openshift.io/v1beta1", "kind": "AWSMachineProviderConfig",
        "ami": {"id": "ami-0d5f9982f029fbc14"}, "instanceType": "m5.xlarge" if role == "master" else "m5.large",
        "placement": {"availabilityZone": zone, "region": "us-east-1"},
        "iamInstanceProfile": {"id": f"{spec.infra_id}-{role}-profile"},
        "subnet": {"filters": [{"name": "tag:Name", "values": [f"{spec.infra_id}-private-{zone}"]}]},
        "userDataSecret": {"name": f"{role}-user-data"}, "credentialsSecret": {"name": "aws-cloud-credentials"},
    }}


def machine_labels(spec: LabSpec, *, role: str, zone: str) -> dict[str, str]:
    return {
        "machine.openshift.io/cluster-api-cluster": spec.infra_id,
        "machine.openshift.io/cluster-api-machine-role": role,
        "machine.openshift.io/cluster-api-machine-type": role,
        "machine.openshift.io/instance-type": "m5.xlarge" if role == "master" else "m5.large",
        "machine.openshift.io/region": "us-east-1", "machine.openshift.io/zone": zone,
    }


def machineset_uid(spec: LabSpec, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{spec.infra_id}/{name}"))


def machine_object(spec: LabSpec, master: NodeSpec, *, created: float) -> dict[str, Any]:
    instance = "i-0" + uuid.uuid5(uuid.NAMESPACE_DNS, master.node).hex[:16]
    labels = machine_labels(spec, role=master.role, zone=master.zone)
    extra: dict[str, Any] = {}
    if isinstance(master, WorkerSpec):
        labels["machine.openshift.io/cluster-api-machineset"] = master.machineset
        extra["ownerReferences"] = [{"apiVersion": "machine.openshift.io/v1beta1", "kind": "MachineSet",
                                     "name": master.machineset, "uid": machineset_uid(spec, master.machineset),
                                     "controller": True, "blockOwnerDeletion": True}]
    return {
        "apiVersion": "machine.openshift.io/v1beta1", "kind": "Machine",
        "metadata": meta(master.machine, namespace="openshift-machine-api", created=created, labels=labels,
                         annotations={"machine.openshift.io/instance-state": "running"},
                         finalizers=["machine.machine.openshift.io"],
                         selfLink=f"/apis/machine.openshift.io/v1beta1/namespaces/openshift-machine-api/machines/{master.machine}",
                         **extra),
        "spec": {
            "metadata": {},
            "providerID": f"aws:///{master.zone}/{instance}",
            "providerSpec": provider_spec(spec, role=master.role, zone=master.zone),
        },
        "status": machine_status(master, phase="Running", instance_state="running", instance_id=instance),
    }


def machineset_object(spec: LabSpec, zone: str, *, replicas: int, created: float) -> dict[str, Any]:
    """A worker MachineSet as the installer makes one per zone (machine.openshift.io/v1beta1)."""
    name = f"{spec.infra_id}-worker-{zone}"
    selector = {"machine.openshift.io/cluster-api-cluster": spec.infra_id,
                "machine.openshift.io/cluster-api-machineset": name}
    return {
        "apiVersion": "machine.openshift.io/v1beta1", "kind": "MachineSet",
        "metadata": meta(name, namespace="openshift-machine-api", created=created, uid=machineset_uid(spec, name),
                         labels={"machine.openshift.io/cluster-api-cluster": spec.infra_id},
                         selfLink=f"/apis/machine.openshift.io/v1beta1/namespaces/openshift-machine-api/machinesets/{name}"),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**selector, "machine.openshift.io/cluster-api-machine-role": "worker",
                                        "machine.openshift.io/cluster-api-machine-type": "worker"}},
                "spec": {"metadata": {}, "providerSpec": provider_spec(spec, role="worker", zone=zone)},
            },
        },
        "status": {"replicas": replicas, "fullyLabeledReplicas": replicas, "readyReplicas": replicas,
                   "availableReplicas": replicas, "observedGeneration": 1},
    }


def machine_status(master: NodeSpec | None, *, phase: str, instance_state: str, instance_id: str) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "lastUpdated": iso(time.time()),
        "providerStatus": {"apiVersion": "awsproviderconfig.openshift.io/v1beta1", "kind": "AWSMachineProviderStatus",
                           "instanceId": instance_id, "instanceState": instance_state,
                           "conditions": [{"type": "MachineCreation", "status": "True", "reason": "MachineCreationSucceeded"}]},
    }
    if master is not None:
        status["nodeRef"] = {"kind": "Node", "name": master.node}
        status["addresses"] = [{"type": "InternalIP", "address": master.ip},
                               {"type": "InternalDNS", "address": master.node}]
    return status


def operator_object(resource: str, *, nodes: list[str], revision: int, created: float) -> dict[str, Any]:
    kinds = {"etcds": "Etcd", "kubeapiservers": "KubeAPIServer", "kubecontrollermanagers": "KubeControllerManager",
             "kubeschedulers": "KubeScheduler"}
    return {
        "apiVersion": "operator.openshift.io/v1", "kind": kinds[resource],
        "metadata": meta("cluster", created=created, annotations={"release.openshift.io/create-only": "true"}),
        "spec": {"managementState": "Managed", "forceRedeploymentReason": "", "logLevel": "", "operatorLogLevel": ""},
        "status": {
            "latestAvailableRevision": revision,
            "latestAvailableRevisionReason": "",
            "readyReplicas": 0,
            "nodeStatuses": [{"nodeName": n, "currentRevision": revision} for n in nodes],
            "conditions": [
                condition("NodeInstallerProgressing", "False", "AllNodesAtLatestRevision",
                          f"{len(nodes)} nodes are at revision {revision}"),
                condition("NodeControllerDegraded", "False", "MasterNodesReady", "All master nodes are ready"),
                condition("StaticPodsAvailable", "True", "AsExpected", f"{len(nodes)} nodes are active; {len(nodes)} nodes are at revision {revision}"),
            ] + ([condition("EtcdMembersAvailable", "True", "EtcdQuorate", f"{len(nodes)} of {len(nodes)} members are available")]
                 if resource == "etcds" else []),
        },
    }


def condition(ctype: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": iso(time.time())}


def cluster_operator(name: str, *, version: str, created: float) -> dict[str, Any]:
    since = iso(created + 1800)
    return {
        "apiVersion": "config.openshift.io/v1", "kind": "ClusterOperator",
        "metadata": meta(name, created=created),
        "spec": {},
        "status": {
            "conditions": [
                {"type": "Available", "status": "True", "lastTransitionTime": since, "reason": "AsExpected"},
                {"type": "Progressing", "status": "False", "lastTransitionTime": since, "reason": "AsExpected"},
                {"type": "Degraded", "status": "False", "lastTransitionTime": since, "reason": "AsExpected"},
            ],
            "versions": [{"name": "operator", "version": version}],
        },
    }


def release_image(version: str) -> str:
    return f"quay.io/openshift-release-dev/ocp-release@sha256:{uuid.uuid5(uuid.NAMESPACE_URL, version).hex * 2}"


def cluster_version(spec: LabSpec) -> dict[str, Any]:
    done = spec.installed_at + 1800
    return {
        "apiVersion": "config.openshift.io/v1", "kind": "ClusterVersion",
        "metadata": meta("version", created=spec.installed_at),
        "spec": {"channel": "stable-4.5", "clusterID": str(uuid.uuid5(uuid.NAMESPACE_URL, spec.infra_id)),
                 "upstream": "https://api.openshift.com/api/upgrades_info/v1/graph"},
        "status": {
            "desired": {"version": spec.version, "image": release_image(spec.version)},
            "history": [{"state": "Completed", "version": spec.version, "image": release_image(spec.version),
                         "startedTime": iso(spec.installed_at), "completionTime": iso(done), "verified": False}],
            "observedGeneration": 1, "versionHash": "lab",
            "conditions": [
                {"type": "Available", "status": "True", "lastTransitionTime": iso(done), "message": f"Done applying {spec.version}"},
                {"type": "Failing", "status": "False", "lastTransitionTime": iso(done)},
                {"type": "Progressing", "status": "False", "lastTransitionTime": iso(done), "message": f"Cluster version is {spec.version}"},
                {"type": "RetrievedUpdates", "status": "True", "lastTransitionTime": iso(done)},
            ],
        },
    }


def tls_secret(name: str, pair: pki.KeyPair, *, node: str, created: float) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": meta(name, namespace="openshift-etcd", created=created,
                         annotations={"auth.openshift.io/certificate-hostnames": node}),
        "data": {"tls.crt": base64.b64encode(pair.cert_pem).decode(), "tls.key": base64.b64encode(pair.key_pem).decode()},
    }


def node_secrets(spec: LabSpec, master: MasterSpec, *, created: float, renew: bool = False) -> list[dict[str, Any]]:
    certs = bootstrap.node_certs(spec, master, renew=renew)
    return [tls_secret(f"etcd-{kind}-{master.node}", certs[kind], node=master.node, created=created)
            for kind in pki.ETCD_CERT_KINDS]


def initial_objects(spec: LabSpec) -> list[tuple[str, dict[str, Any]]]:
    """(resource, object) pairs in creation order."""
    t0 = spec.installed_at
    nodes = [m.node for m in spec.masters]
    out: list[tuple[str, dict[str, Any]]] = []
    for ns in NAMESPACES:
        out.append(("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": meta(ns, created=t0),
                                   "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}))
    for m in spec.masters:
        out.append(("nodes", node_object(m, created=t0 + 300)))
        out.append(("machines", machine_object(spec, m, created=t0)))
        for secret in node_secrets(spec, m, created=t0 + 600):
            out.append(("secrets", secret))
    for zone in ZONES:
        replicas = sum(1 for w in spec.workers if w.zone == zone)
        out.append(("machinesets", machineset_object(spec, zone, replicas=replicas, created=t0)))
    for w in spec.workers:
        out.append(("machines", machine_object(spec, w, created=t0 + 900)))
        out.append(("nodes", node_object(w, created=t0 + 1200)))
    out += rbac_objects(created=t0)
    ca_pem = bootstrap.etcd_ca(spec).cert_pem.decode()
    for name in ("etcd-serving-ca", "etcd-peer-client-ca"):
        out.append(("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                   "metadata": meta(name, namespace="openshift-etcd", created=t0 + 600),
                                   "data": {"ca-bundle.crt": ca_pem}}))
    for resource in OPERATOR_RESOURCES:
        out.append((resource, operator_object(resource, nodes=nodes, revision=2, created=t0)))
    for name in CLUSTER_OPERATORS:
        out.append(("clusteroperators", cluster_operator(name, version=spec.version, created=t0)))
    out.append(("clusterversions", cluster_version(spec)))
    out.append(("proxies", {"apiVersion": "config.openshift.io/v1", "kind": "Proxy",
                            "metadata": meta("cluster", created=t0), "spec": {"trustedCA": {"name": ""}}, "status": {}}))
    # etcd encryption is off at install (`oc patch apiserver cluster` turns it on, e.g. aescbc).
    out.append(("apiservers", {"apiVersion": "config.openshift.io/v1", "kind": "APIServer",
                               "metadata": meta("cluster", created=t0), "spec": {"audit": {"profile": "Default"}},
                               "status": {}}))
    # Something for "someone deleted something critical": the demo app's config.
    out.append(("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": meta("payments-config", namespace="demo", created=t0 + 3600),
                               "data": {"database": "payments-db.demo.svc:5432", "replicas": "3"}}))
    return out


def rbac_objects(*, created: float) -> list[tuple[str, dict[str, Any]]]:
    """The RBAC the lab's authorizer reads: cluster-admin bound to system:masters (the kubeconfig's
    user is in it), and the view role, for people and tests to bind other users to."""
    group = "rbac.authorization.k8s.io"
    everything = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]
    read = ["get", "list", "watch"]
    view = [
        {"apiGroups": [""], "resources": ["pods", "pods/log", "nodes", "namespaces", "configmaps", "events"], "verbs": read},
        {"apiGroups": ["operator.openshift.io", "config.openshift.io", "machine.openshift.io", "certificates.k8s.io"],
         "resources": ["*"], "verbs": read},
    ]
    annotations = {"rbac.authorization.kubernetes.io/autoupdate": "true"}
    return [
        ("clusterroles", {"apiVersion": f"{group}/v1", "kind": "ClusterRole",
                          "metadata": meta("cluster-admin", created=created, annotations=annotations,
                                           labels={"kubernetes.io/bootstrapping": "rbac-defaults"}),
                          "rules": everything}),
        ("clusterroles", {"apiVersion": f"{group}/v1", "kind": "ClusterRole",
                          "metadata": meta("view", created=created, annotations=annotations,
                                           labels={"kubernetes.io/bootstrapping": "rbac-defaults"}),
                          "rules": view}),
        ("clusterrolebindings", {"apiVersion": f"{group}/v1", "kind": "ClusterRoleBinding",
                                 "metadata": meta("cluster-admin", created=created, annotations=annotations,
                                                  labels={"kubernetes.io/bootstrapping": "rbac-defaults"}),
                                 "roleRef": {"apiGroup": group, "kind": "ClusterRole", "name": "cluster-admin"},
                                 "subjects": [{"apiGroup": group, "kind": "Group", "name": "system:masters"}]}),
    ]
