"""Static pod manifests as OpenShift 4.5 lays them on a master, as real Pod YAML.

The `etcd` container's command is the real etcd command line (the kubelet emulation runs it);
the `etcdctl` container's env is what makes a plain `etcdctl member list -w table` work inside
it, and what the lab's cluster-backup.sh reads. Paths are the pod's own
(`/etc/kubernetes/static-pod-certs/...`, `/var/lib/etcd`), valid inside the host root.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Sequence

import yaml

from lab.spec import LabSpec, MasterSpec

ETCD_IMAGE = "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:36f86e2eeaaffe662df0d21041eb22b8198e0e58abeeae8c743c3e6e977e8009"
APISERVER_IMAGE = "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:8d6c1ae5f8f5b2a5e1e5e6f0e4dcd1bb8e0aa6c4b0ea1ab2c9bcbd07f3c4e2a1"
KCM_IMAGE = "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:1f8e8a0b7b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6"
SCHEDULER_IMAGE = "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:9a8b7c6d5e4f30211a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7080"

IMAGE_REPO = "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:"
# The images of 4.5.2 (the lab's default release), kept literal so a new lab's manifests stay
# byte-identical to earlier ones; other z-streams get their own digests (`images`).
_IMAGES_452 = {"etcd": ETCD_IMAGE, "kube-apiserver": APISERVER_IMAGE, "kube-controller-manager": KCM_IMAGE,
               "kube-scheduler": SCHEDULER_IMAGE}


def images(version: str) -> dict[str, str]:
    """Component -> image of one release: an upgrade changes every digest, as a new payload does."""
    if version == "4.5.2":
        return dict(_IMAGES_452)
    return {name: IMAGE_REPO + hashlib.sha256(f"{version}/{name}".encode()).hexdigest() for name in _IMAGES_452}


CERTS = "/etc/kubernetes/static-pod-certs"
SERVING_CA = f"{CERTS}/configmaps/etcd-serving-ca/ca-bundle.crt"
PEER_CA = f"{CERTS}/configmaps/etcd-peer-client-ca/ca-bundle.crt"
DATA_DIR = "/var/lib/etcd"


def cert_paths(node: str) -> dict[str, str]:
    return {
        "peer_cert": f"{CERTS}/secrets/etcd-all-peer/etcd-peer-{node}.crt",
        "peer_key": f"{CERTS}/secrets/etcd-all-peer/etcd-peer-{node}.key",
        "serving_cert": f"{CERTS}/secrets/etcd-all-serving/etcd-serving-{node}.crt",
        "serving_key": f"{CERTS}/secrets/etcd-all-serving/etcd-serving-{node}.key",
    }


def etcd_command(master: MasterSpec, *, initial_cluster: Sequence[MasterSpec], state: str) -> list[str]:
    certs = cert_paths(master.node)
    return [
        "etcd",
        f"--name={master.node}",
        f"--data-dir={DATA_DIR}",
        f"--initial-advertise-peer-urls={master.peer_url}",
        f"--listen-peer-urls={master.peer_url}",
        f"--listen-client-urls={master.client_url}",
        f"--advertise-client-urls={master.client_url}",
        f"--listen-metrics-urls=http://127.0.0.1:{master.metrics_port}",
        "--initial-cluster=" + ",".join(f"{m.node}={m.peer_url}" for m in initial_cluster),
        f"--initial-cluster-state={state}",
        "--initial-cluster-token=openshift-etcd",
        f"--cert-file={certs['serving_cert']}",
        f"--key-file={certs['serving_key']}",
        f"--trusted-ca-file={SERVING_CA}",
        "--client-cert-auth=true",
        f"--peer-cert-file={certs['peer_cert']}",
        f"--peer-key-file={certs['peer_key']}",
        f"--peer-trusted-ca-file={PEER_CA}",
        "--peer-client-cert-auth=true",
        "--heartbeat-interval=100",
        "--election-timeout=1000",
        "--snapshot-count=10000",
        "--quota-backend-bytes=2147483648",
        "--logger=zap",
        "--log-outputs=stderr",
    ]


def etcdctl_env(master: MasterSpec, *, endpoints: Sequence[MasterSpec]) -> list[dict[str, str]]:
    certs = cert_paths(master.node)
    return [
        {"name": "ETCDCTL_API", "value": "3"},
        {"name": "ETCDCTL_CACERT", "value": SERVING_CA},
        {"name": "ETCDCTL_CERT", "value": certs["peer_cert"]},
        {"name": "ETCDCTL_KEY", "value": certs["peer_key"]},
        {"name": "ETCDCTL_ENDPOINTS", "value": ",".join(m.client_url for m in endpoints)},
        {"name": "NODE_NAME", "value": master.node},
    ]


def _pod(name: str, *, revision: int, labels: dict[str, str], containers: list[dict], default: str) -> str:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": labels.pop("namespace"),
            "labels": {**labels, "revision": str(revision)},
            "annotations": {"kubectl.kubernetes.io/default-container": default},
        },
        "spec": {
            "containers": containers,
            "hostNetwork": True,
            "priorityClassName": "system-node-critical",
            "tolerations": [{"operator": "Exists"}],
            "volumes": [
                {"name": "static-pod-dir", "hostPath": {"path": "/etc/kubernetes/manifests"}},
                {"name": "resource-dir", "hostPath": {"path": f"/etc/kubernetes/static-pod-resources/etcd-pod-{revision}"}},
                {"name": "cert-dir", "hostPath": {"path": "/etc/kubernetes/static-pod-resources/etcd-certs"}},
                {"name": "data-dir", "hostPath": {"path": DATA_DIR}},
            ],
        },
    }
    return yaml.safe_dump(pod, sort_keys=False, width=10_000)


def readiness_probe(master: MasterSpec) -> dict:
    """The etcd container's readiness: etcd's own /health on its (loopback, plain HTTP) metrics URL."""
    return {"httpGet": {"host": "127.0.0.1", "path": "/health", "port": master.metrics_port, "scheme": "HTTP"},
            "initialDelaySeconds": 3, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3,
            "successThreshold": 1}


def _etcd_containers(master: MasterSpec, *, command: list[str], endpoints: Sequence[MasterSpec],
                     image: str = ETCD_IMAGE) -> list[dict]:
    mounts = [
        {"mountPath": "/etc/kubernetes/manifests", "name": "static-pod-dir"},
        {"mountPath": CERTS, "name": "cert-dir"},
        {"mountPath": DATA_DIR, "name": "data-dir"},
    ]
    return [
        {
            "name": "etcdctl",
            "image": image,
            "command": ["/bin/bash", "-c", "trap TERM INT; sleep infinity & wait"],
            "env": etcdctl_env(master, endpoints=endpoints),
            "volumeMounts": mounts,
        },
        {
            "name": "etcd",
            "image": image,
            "command": command,
            "env": etcdctl_env(master, endpoints=endpoints),
            "volumeMounts": mounts,
            "readinessProbe": readiness_probe(master),
            "securityContext": {"privileged": True},
        },
        {
            "name": "etcd-metrics",
            "image": image,
            "command": ["etcd", "grpc-proxy", "start", f"--metrics-addr=https://0.0.0.0:{9979}"],
            "volumeMounts": mounts,
        },
    ]


def etcd_pod_yaml(
    master: MasterSpec, *, revision: int, initial_cluster: Sequence[MasterSpec], endpoints: Sequence[MasterSpec],
    state: str = "new", version: str = "4.5.2",
) -> str:
    """`/etc/kubernetes/manifests/etcd-pod.yaml` of one master."""
    command = etcd_command(master, initial_cluster=initial_cluster, state=state)
    labels = {"namespace": "openshift-etcd", "app": "etcd", "k8s-app": "etcd", "etcd": "true"}
    return _pod("etcd", revision=revision, labels=labels, default="etcdctl",
                containers=_etcd_containers(master, command=command, endpoints=endpoints,
                                            image=images(version)["etcd"]))


def restore_pod_yaml(master: MasterSpec, *, revision: int, version: str = "4.5.2") -> str:
    """The restore pod: restores `/var/lib/etcd-backup/snapshot.db` into a fresh single-member data
    dir, then runs etcd on it, as OpenShift's restore-pod.yaml does."""
    single = etcd_command(master, initial_cluster=[master], state="new")
    restore = (
        "set -euo pipefail\n"
        "SNAPSHOT=/var/lib/etcd-backup/snapshot.db\n"
        "if [ ! -f \"$SNAPSHOT\" ]; then echo \"cannot find snapshot $SNAPSHOT\" >&2; exit 1; fi\n"
        "if [ -d /var/lib/etcd/member ]; then echo 'data dir /var/lib/etcd/member exists, not restoring'; else\n"
        "  UUID=$(cat /proc/sys/kernel/random/uuid)\n"
        "  ETCDCTL_API=3 etcdctl snapshot restore \"$SNAPSHOT\""
        f" --name {shlex.quote(master.node)}"
        f" --initial-cluster {shlex.quote(master.node + '=' + master.peer_url)}"
        " --initial-cluster-token \"openshift-etcd-$UUID\""
        f" --initial-advertise-peer-urls {shlex.quote(master.peer_url)}"
        " --data-dir \"/var/lib/etcd/restore-$UUID\"\n"
        "  mv \"/var/lib/etcd/restore-$UUID\"/* /var/lib/etcd/\n"
        "  rmdir \"/var/lib/etcd/restore-$UUID\"\n"
        "fi\n"
        "exec " + " ".join(shlex.quote(a) for a in single) + "\n"
    )
    labels = {"namespace": "openshift-etcd", "app": "etcd", "k8s-app": "etcd", "etcd": "true"}
    return _pod("etcd", revision=revision, labels=labels, default="etcdctl",
                containers=_etcd_containers(master, command=["/bin/bash", "-c", restore], endpoints=[master],
                                            image=images(version)["etcd"]))


def control_plane_pod_yaml(kind: str, *, revision: int, version: str = "4.5.2") -> str:
    """kube-apiserver / kube-controller-manager / kube-scheduler: containers without a process."""
    image = images(version)[kind]
    namespace = f"openshift-{kind}"
    containers = [{"name": kind, "image": image, "command": ["hyperkube", kind]}]
    if kind == "kube-apiserver":
        containers.append({"name": "kube-apiserver-insecure-readyz", "image": image, "command": ["cluster-kube-apiserver-operator"]})
    labels = {"namespace": namespace, "app": f"openshift-{kind}", kind.split("-")[-1]: "true"}
    return _pod(kind, revision=revision, labels=labels, default=kind, containers=containers)


CONTROL_PLANE_KINDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def all_endpoints(spec: LabSpec) -> list[MasterSpec]:
    return list(spec.masters)
