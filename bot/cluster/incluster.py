"""Does the bot run inside the cluster it is about to shut down or restore?

Why it exists: `/etcd-shutdown` powers off every node and `/etcd-restore` takes the API and etcd
away for minutes. A bot running as a pod of that cluster would stop itself half way, with the
lock held and nobody told what was done. So both refuse the bot's own cluster (docs/deploy.md:
run the bot on a management cluster).

How it tells, from the in-cluster configuration every pod gets:
- `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT` say the bot runs in a pod at all; the
  service account token (`<dir>/token`, `<dir>/ca.crt`) lets it ask its own API;
- same cluster when the target's kubeconfig points at the pod's own API (the service address,
  or `kubernetes.default.svc`), or when `kube-system` has the same uid through both (a
  namespace's uid is unique to one cluster's etcd: the usual cluster identity);
- when one side does not answer (a restore is asked precisely when the target's API is down),
  the pod's node (`NODE_NAME`, from the downward API) among the target's nodes says "same";
  a known node name outside them says "another cluster".
- anything else is "cannot tell", and the callers refuse: a guess is not good enough here.

Not here: what to do about it (procedures/guards.py turns the verdict into an admission).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from kubernetes import client as k8s
from kubernetes.config.incluster_config import InClusterConfigLoader

from bot.cluster.kube import KubeClient, KubeError, Resource

SERVICE_HOST = "KUBERNETES_SERVICE_HOST"
SERVICE_PORT = "KUBERNETES_SERVICE_PORT"
NODE_NAME = "NODE_NAME"  # set from the downward API (spec.nodeName) by the chart
SERVICE_NAMES = frozenset({"kubernetes", "kubernetes.default", "kubernetes.default.svc",
                           "kubernetes.default.svc.cluster.local"})
NAMESPACE = Resource("", "v1", "namespaces", namespaced=False)
IDENTITY_NAMESPACE = "kube-system"
TIMEOUT = 5.0


@dataclass(frozen=True)
class InCluster:
    """The in-cluster configuration of the pod the bot runs in."""

    host: str
    port: str
    token: Path | None  # None: no service account token mounted
    ca: Path | None
    node_name: str = ""

    @property
    def server(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


def detect(*, environ: Mapping[str, str], serviceaccount_dir: Path) -> InCluster | None:
    """The pod's in-cluster configuration, or None when the bot does not run in a pod."""
    host, port = environ.get(SERVICE_HOST, "").strip(), environ.get(SERVICE_PORT, "").strip()
    if not host or not port:
        return None
    token, ca = serviceaccount_dir / "token", serviceaccount_dir / "ca.crt"
    return InCluster(host=host, port=port, token=token if token.is_file() else None, ca=ca if ca.is_file() else None,
                     node_name=environ.get(NODE_NAME, "").strip())


def kubeconfig_server(path: Path) -> str:
    """The API server URL the kubeconfig's current context uses ("" when it cannot be read)."""
    try:
        config = yaml.safe_load(path.read_text()) or {}
        context_name = config.get("current-context")
        contexts = {c.get("name"): c.get("context") or {} for c in config.get("contexts") or []}
        cluster_name = contexts.get(context_name, {}).get("cluster")
        clusters = {c.get("name"): c.get("cluster") or {} for c in config.get("clusters") or []}
        return str(clusters.get(cluster_name, {}).get("server") or "")
    except (OSError, yaml.YAMLError, AttributeError, TypeError):
        return ""


def _same_address(server: str, incluster: InCluster) -> bool:
    parts = urlsplit(server)
    host = (parts.hostname or "").lower().rstrip(".")
    if host in SERVICE_NAMES:
        return True
    port = str(parts.port or 443)
    try:
        same_host = ipaddress.ip_address(host) == ipaddress.ip_address(incluster.host)
    except ValueError:
        same_host = host == incluster.host.lower()
    return same_host and port == incluster.port


@dataclass(frozen=True)
class SelfCheck:
    """Is the target the bot's own cluster: True, False, or None (cannot tell); and why."""

    same: bool | None
    why: str


def decide(*, incluster: InCluster | None, target_server: str, own_uid: str | None, target_uid: str | None,
           target_nodes: Collection[str], own_error: str = "", target_error: str = "") -> SelfCheck:
    """The rule, without I/O (unit-tested)."""
    if incluster is None:
        return SelfCheck(False, f"the bot does not run in a pod ({SERVICE_HOST} is not set)")
    if target_server and _same_address(target_server, incluster):
        return SelfCheck(True, f"its kubeconfig points at this pod's own API ({target_server})")
    if own_uid and target_uid:
        if own_uid == target_uid:
            return SelfCheck(True, f"namespace {IDENTITY_NAMESPACE} has the same uid ({own_uid}) seen from this pod "
                                   "and through the cluster's kubeconfig")
        return SelfCheck(False, f"namespace {IDENTITY_NAMESPACE} has another uid in this pod's cluster")
    nodes = set(target_nodes)
    if incluster.node_name and incluster.node_name in nodes:
        return SelfCheck(True, f"this pod runs on node {incluster.node_name}, one of the cluster's nodes")
    if incluster.node_name and nodes:
        return SelfCheck(False, f"this pod runs on node {incluster.node_name}, which is not one of the cluster's nodes")
    missing = [e for e in (own_error, target_error) if e]
    if not incluster.node_name:
        missing.append(f"{NODE_NAME} is not set (the downward API's spec.nodeName)")
    return SelfCheck(None, "; ".join(missing) or "no identity could be read")


# ---- reading the identities ------------------------------------------------------------------

_own_uid_cache: dict[tuple[str, str, str], str] = {}


async def own_uid(incluster: InCluster, *, timeout: float = TIMEOUT) -> str:
    """The uid of `kube-system` in the pod's own cluster, through its service account (cached:
    it never changes while the pod lives). Raises KubeError when it cannot be read."""
    if incluster.token is None or incluster.ca is None:
        raise KubeError("no service account token is mounted in this pod")
    key = (incluster.host, incluster.port, str(incluster.token))
    if key in _own_uid_cache:
        return _own_uid_cache[key]

    def read() -> str:
        loader = InClusterConfigLoader(token_filename=str(incluster.token), cert_filename=str(incluster.ca),
                                       environ={SERVICE_HOST: incluster.host, SERVICE_PORT: incluster.port})
        configuration = k8s.Configuration()
        loader.load_and_set(configuration)
        configuration.retries = 0
        api = k8s.ApiClient(configuration)
        try:
            namespace: Any = k8s.CoreV1Api(api).read_namespace(IDENTITY_NAMESPACE, _request_timeout=timeout)
            return str(namespace.metadata.uid or "")
        except Exception as exc:  # the client raises urllib3, socket and ApiException errors alike
            status = getattr(exc, "status", None)
            raise KubeError(f"this pod's own API did not say ({status or type(exc).__name__})") from exc
        finally:
            api.close()

    started = time.monotonic()
    uid = await asyncio.wait_for(asyncio.to_thread(read), timeout=timeout + 2)
    if not uid:
        raise KubeError(f"this pod's own API answered without a uid ({time.monotonic() - started:.1f} s)")
    _own_uid_cache[key] = uid
    return uid


async def cluster_uid(kube: KubeClient) -> str:
    """The uid of `kube-system` through a cluster's kubeconfig. Raises KubeError."""
    uid = str(((await kube.get_object(NAMESPACE, IDENTITY_NAMESPACE)).get("metadata") or {}).get("uid") or "")
    if not uid:
        raise KubeError(f"namespace {IDENTITY_NAMESPACE} has no uid")
    return uid
