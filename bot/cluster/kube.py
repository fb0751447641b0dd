"""The Kubernetes/OpenShift API of one cluster, through the official `kubernetes` client.

The client is synchronous; every call goes through `asyncio.to_thread` so the bot's event loop
(Slack acks within 3 s) never waits on a socket, and every call carries `_request_timeout`.
Objects come back as plain JSON dicts, camelCase as the API writes them (the same shape `oc get
-o json` shows and the document's jsonpath reads), so one parser serves built-in and custom
resources alike.

`exec` gets its own ApiClient per call: `kubernetes.stream.stream` swaps the client's
transport while it runs, which would leak into concurrent calls sharing one client.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

# kubernetes>=35 loads its API classes lazily, and CoreV1Api's first load builds hundreds of pydantic
# models (2-4 s of CPU). Load them here, at start, not on the event loop during a 3-second ack.
from kubernetes.client import CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream

ETCD_NAMESPACE = "openshift-etcd"
MACHINE_NAMESPACE = "openshift-machine-api"
MASTER_LABEL = "node-role.kubernetes.io/master"

# (group, version, plural) of the OpenShift resources the document reads.
ETCDS = ("operator.openshift.io", "v1", "etcds")
MACHINES = ("machine.openshift.io", "v1beta1", "machines")
CLUSTER_VERSIONS = ("config.openshift.io", "v1", "clusterversions")
PROXIES = ("config.openshift.io", "v1", "proxies")
APISERVERS = ("config.openshift.io", "v1", "apiservers")
CLUSTER_OPERATORS = ("config.openshift.io", "v1", "clusteroperators")


class KubeError(Exception):
    """An API call that failed; `status` is the HTTP status (0 when the server never answered)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ExecResult:
    """What a command run in a container did; returncode None when it did not finish in time."""

    pod: str
    container: str
    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    elapsed: float


def _describe(exc: Exception) -> KubeError:
    if isinstance(exc, ApiException):
        reason = exc.reason or ""
        try:
            body = json.loads(exc.body or "{}")
            reason = body.get("message") or reason
        except (ValueError, TypeError):
            pass
        return KubeError(f"API {exc.status or 'unreachable'}: {reason}".strip(), status=exc.status or 0)
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\"\)]+)", text)
    if errno:
        return KubeError(f"API unreachable: {errno.group(1).strip()}")
    if "timed out" in text.lower() or isinstance(exc, TimeoutError):
        return KubeError("API unreachable: timed out")
    return KubeError(f"API unreachable: {type(exc).__name__}: {text[:200]}")


class KubeClient:
    """One cluster's API; `timeout` bounds every request in seconds."""

    def __init__(self, *, kubeconfig: Path, timeout: float = 10.0) -> None:
        self._kubeconfig = kubeconfig
        self._timeout = timeout
        self._api = self._new_api_client()

    def _new_api_client(self) -> k8s.ApiClient:
        api = k8s_config.new_client_from_config(config_file=str(self._kubeconfig))
        # One failed connection must not be retried three times behind our timeout.
        api.configuration.retries = 0
        return api

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def call() -> Any:
            try:
                return fn(*args, _request_timeout=self._timeout, **kwargs)
            except Exception as exc:  # the client raises urllib3, socket and ApiException errors alike
                raise _describe(exc) from exc

        # The thread is bounded by _request_timeout; wait_for is the belt to its braces.
        return await asyncio.wait_for(asyncio.to_thread(call), timeout=self._timeout + 2)

    async def _core_json(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        api = CoreV1Api(self._api)
        response = await self._call(getattr(api, method), *args, _preload_content=False, **kwargs)
        return json.loads(response.data)

    # ---- custom resources ----

    async def get_cluster_object(self, resource: tuple[str, str, str], name: str) -> dict[str, Any]:
        group, version, plural = resource
        api = CustomObjectsApi(self._api)
        return await self._call(api.get_cluster_custom_object, group, version, plural, name)

    async def list_cluster_objects(self, resource: tuple[str, str, str]) -> list[dict[str, Any]]:
        group, version, plural = resource
        api = CustomObjectsApi(self._api)
        return (await self._call(api.list_cluster_custom_object, group, version, plural)).get("items", [])

    async def get_etcd(self) -> dict[str, Any]:
        """`etcd/cluster` (operator.openshift.io/v1): the conditions the document reads."""
        return await self.get_cluster_object(ETCDS, "cluster")

    async def get_cluster_version(self) -> dict[str, Any]:
        return await self.get_cluster_object(CLUSTER_VERSIONS, "version")

    async def get_proxy(self) -> dict[str, Any]:
        return await self.get_cluster_object(PROXIES, "cluster")

    async def get_apiserver(self) -> dict[str, Any]:
        """`apiserver/cluster`: `spec.encryption.type` says whether etcd encryption is on."""
        return await self.get_cluster_object(APISERVERS, "cluster")

    async def list_cluster_operators(self) -> list[dict[str, Any]]:
        return await self.list_cluster_objects(CLUSTER_OPERATORS)

    async def list_machines(self) -> list[dict[str, Any]]:
        group, version, plural = MACHINES
        api = CustomObjectsApi(self._api)
        result = await self._call(api.list_namespaced_custom_object, group, version, MACHINE_NAMESPACE, plural)
        return result.get("items", [])

    # ---- core ----

    async def list_master_nodes(self) -> list[dict[str, Any]]:
        return (await self._core_json("list_node", label_selector=MASTER_LABEL)).get("items", [])

    async def list_etcd_pods(self) -> list[dict[str, Any]]:
        """The etcd static pods: label app=etcd, or named etcd-<node> (not the guard or installer pods)."""
        items = (await self._core_json("list_namespaced_pod", ETCD_NAMESPACE)).get("items", [])
        return [pod for pod in items if is_etcd_pod(pod)]

    async def list_secrets(self, *, namespace: str = ETCD_NAMESPACE) -> list[dict[str, Any]]:
        """Secret objects WITHOUT their data: callers need names, and values must never reach a log."""
        items = (await self._core_json("list_namespaced_secret", namespace)).get("items", [])
        return [{k: v for k, v in item.items() if k not in ("data", "stringData")} for item in items]

    # ---- exec ----

    async def exec(self, *, pod: str, container: str, argv: Sequence[str], timeout: float,
                   namespace: str = ETCD_NAMESPACE) -> ExecResult:
        """Runs argv (no shell) in a container over the v4.channel.k8s.io WebSocket protocol."""
        started = time.monotonic()

        def run() -> ExecResult:
            api = self._new_api_client()
            try:
                ws = stream(
                    CoreV1Api(api).connect_get_namespaced_pod_exec,
                    pod, namespace, container=container, command=list(argv),
                    stderr=True, stdin=False, stdout=True, tty=False,
                    _preload_content=False, _request_timeout=timeout,
                )
                stdout: list[str] = []
                stderr: list[str] = []
                deadline = started + timeout
                while ws.is_open() and time.monotonic() < deadline:
                    ws.update(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                    stdout.append(ws.read_stdout(timeout=0) or "")
                    stderr.append(ws.read_stderr(timeout=0) or "")
                finished = not ws.is_open()
                stdout.append(ws.read_stdout(timeout=0) or "")
                stderr.append(ws.read_stderr(timeout=0) or "")
                returncode = _returncode(ws) if finished else None
                ws.close()
            except Exception as exc:
                raise _describe(exc) from exc
            finally:
                api.close()
            return ExecResult(pod=pod, container=container, argv=tuple(argv), returncode=returncode,
                              stdout="".join(stdout), stderr="".join(stderr),
                              elapsed=time.monotonic() - started)

        return await asyncio.wait_for(asyncio.to_thread(run), timeout=timeout + 5)

    def close(self) -> None:
        self._api.close()


def _returncode(ws: Any) -> int | None:
    """The exit code from the error channel's Status; None if the server sent none we can read."""
    try:
        return int(ws.returncode)
    except (TypeError, KeyError, ValueError, IndexError, AttributeError):
        return None


def is_etcd_pod(pod: dict[str, Any]) -> bool:
    metadata = pod.get("metadata", {})
    name = str(metadata.get("name", ""))
    labels = metadata.get("labels") or {}
    if name.startswith(("etcd-quorum-guard", "installer-", "revision-pruner-", "etcd-operator")):
        return False
    return labels.get("app") == "etcd" or name.startswith("etcd-")
