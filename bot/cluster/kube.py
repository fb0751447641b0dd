"""The Kubernetes/OpenShift API of one cluster, through the official `kubernetes` client.

The client is synchronous; every call goes through `asyncio.to_thread` so the bot's event loop
(Slack acks within 3 s) never waits on a socket, and every call carries `_request_timeout`.
Objects come back as plain JSON dicts, camelCase as the API writes them (the same shape `oc get
-o json` shows and the document's jsonpath reads), so one parser serves built-in and custom
resources alike.

`exec` gets its own ApiClient per call: `kubernetes.stream.stream` swaps the client's
transport while it runs, which would leak into concurrent calls sharing one client.

Write verbs (patch, create, delete, CSR approve) exist for the procedures that change the
cluster. Each calls the fence it was bound to first (`with_fence`, done for every step by its
`StepContext`): a run that no longer holds its cluster's lock cannot write. A client that was
never bound (the one `/etcd-status` reads with) refuses every write.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
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

Fence = Callable[[], Awaitable[None]]
PATCH_TYPES = {"merge": "application/merge-patch+json", "json": "application/json-patch+json",
               "strategic": "application/strategic-merge-patch+json"}
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class Resource:
    """A kind of object, as its REST path names it: group ("" for core), version, plural."""

    group: str
    version: str
    plural: str
    namespaced: bool

    def path(self, *, namespace: str = "", name: str = "", sub: str = "") -> str:
        for part in (namespace, name):
            if part and not NAME_RE.fullmatch(part):
                raise ValueError(f"{part!r} is not an object name")
        if self.namespaced and not namespace:
            raise ValueError(f"{self.plural} are namespaced: name the namespace")
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


NODE = Resource("", "v1", "nodes", namespaced=False)
POD = Resource("", "v1", "pods", namespaced=True)
SECRET = Resource("", "v1", "secrets", namespaced=True)
CSR = Resource("certificates.k8s.io", "v1", "certificatesigningrequests", namespaced=False)
ETCD = Resource(*ETCDS, namespaced=False)
MACHINE = Resource(*MACHINES, namespaced=True)
CLUSTER_OPERATOR = Resource(*CLUSTER_OPERATORS, namespaced=False)
KUBE_APISERVER = Resource("operator.openshift.io", "v1", "kubeapiservers", namespaced=False)


@dataclass(frozen=True)
class Condition:
    """One status condition of an operator (`type`, `status` "True"/"False"/"Unknown", why)."""

    type: str
    status: str
    reason: str = ""
    message: str = ""

    @property
    def true(self) -> bool:
        return self.status == "True"


def parse_conditions(obj: Mapping[str, Any]) -> tuple[Condition, ...]:
    return tuple(
        Condition(type=str(c.get("type", "")), status=str(c.get("status", "")), reason=str(c.get("reason") or ""),
                  message=str(c.get("message") or ""))
        for c in ((obj.get("status") or {}).get("conditions") or ())
        if isinstance(c, Mapping)
    )


def kube_time(value: Any) -> float | None:
    """A Kubernetes timestamp (RFC 3339, `2020-07-14T17:18:00Z`) as epoch seconds; None when it is
    absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def csr_pending(csr: Mapping[str, Any]) -> bool:
    """A CSR with neither an Approved nor a Denied condition (what `oc get csr` shows as Pending)."""
    kinds = {c.type for c in parse_conditions(csr)}
    return not kinds & {"Approved", "Denied"}


class UnfencedWrite(RuntimeError):
    """A write through a client no run's fence was bound to: a bug, refused before it acts."""


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
        self._fence: Fence | None = None

    def with_fence(self, fence: Fence) -> KubeClient:
        """This client (same connection pool) whose write verbs call `fence` before acting."""
        bound = copy.copy(self)
        bound._fence = fence
        return bound

    async def _guard(self, verb: str) -> None:
        if self._fence is None:
            raise UnfencedWrite(f"{verb}: a write needs a run's fence (use ctx.kube in a step)")
        await self._fence()

    async def _request(self, method: str, path: str, *, body: Any = None, content_type: str = "application/json",
                       query: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """One REST call as JSON: the generic path for reads and writes of any kind."""
        headers = {"Accept": "application/json", "Content-Type": content_type}

        def call() -> dict[str, Any]:
            try:
                serialized = self._api.param_serialize(
                    method=method, resource_path=path, query_params=list(query), header_params=headers, body=body,
                    auth_settings=["BearerToken"],
                )
                response = self._api.call_api(*serialized, _request_timeout=self._timeout)
                data = response.read()
                if not 200 <= response.status < 300:
                    raise ApiException(status=response.status, reason=response.reason, body=data)
            except Exception as exc:
                raise _describe(exc) from exc
            return json.loads(data) if data else {}

        return await asyncio.wait_for(asyncio.to_thread(call), timeout=self._timeout + 2)

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

    # ---- any kind, by Resource ----

    async def get_object(self, resource: Resource, name: str, *, namespace: str = "") -> dict[str, Any]:
        return await self._request("GET", resource.path(namespace=namespace, name=name))

    async def list_objects(self, resource: Resource, *, namespace: str = "", label_selector: str = "") -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        return (await self._request("GET", resource.path(namespace=namespace), query=query)).get("items", [])

    async def nodes_by_role(self, role: str) -> list[dict[str, Any]]:
        """`oc get nodes -l node-role.kubernetes.io/<role>` (master, worker, infra...)."""
        if not re.fullmatch(r"[a-z0-9-]{1,63}", role):
            raise ValueError(f"{role!r} is not a node role")
        return await self.list_objects(NODE, label_selector=f"node-role.kubernetes.io/{role}")

    async def operator_conditions(self, name: str) -> tuple[Condition, ...]:
        """`oc get clusteroperator <name>`'s conditions (Available, Progressing, Degraded...)."""
        return parse_conditions(await self.get_object(CLUSTER_OPERATOR, name))

    async def etcd_conditions(self) -> tuple[Condition, ...]:
        """`etcd/cluster`'s conditions (EtcdMembersAvailable, NodeInstallerProgressing...)."""
        return parse_conditions(await self.get_etcd())

    async def list_csrs(self, *, pending_only: bool = False) -> list[dict[str, Any]]:
        """`oc get csr` (pending only: neither approved nor denied)."""
        items = await self.list_objects(CSR)
        return [c for c in items if csr_pending(c)] if pending_only else items

    # ---- writes (each calls the fence first) ----

    async def patch(self, resource: Resource, name: str, patch: Any, *, namespace: str = "",
                    patch_type: str = "merge", sub: str = "") -> dict[str, Any]:
        """`oc patch <kind> <name> --type=<merge|json|strategic> -p '<patch>'`."""
        if patch_type not in PATCH_TYPES:
            raise ValueError(f"patch type {patch_type!r}: use one of {', '.join(PATCH_TYPES)}")
        path = resource.path(namespace=namespace, name=name, sub=sub)
        await self._guard(f"patch {resource.plural}/{name}")
        return await self._request("PATCH", path, body=patch, content_type=PATCH_TYPES[patch_type])

    async def create(self, resource: Resource, body: Mapping[str, Any], *, namespace: str = "") -> dict[str, Any]:
        """`oc create -f` of one object."""
        path = resource.path(namespace=namespace)
        await self._guard(f"create {resource.plural}")
        return await self._request("POST", path, body=dict(body))

    async def delete(self, resource: Resource, name: str, *, namespace: str = "") -> dict[str, Any]:
        """`oc delete <kind> <name>`; an object already gone is not an error (the step may be repeated)."""
        path = resource.path(namespace=namespace, name=name)
        await self._guard(f"delete {resource.plural}/{name}")
        try:
            return await self._request("DELETE", path)
        except KubeError as exc:
            if exc.status == 404:
                return {}
            raise

    async def approve_csr(self, name: str, *, reason: str = "EtcdbotApprove",
                          message: str = "Approved by etcdbot") -> dict[str, Any]:
        """`oc adm certificate approve <name>`: an Approved condition, PUT to the approval subresource."""
        path = CSR.path(name=name, sub="approval")
        await self._guard(f"approve csr/{name}")
        csr = await self.get_object(CSR, name)
        if any(c.type == "Approved" for c in parse_conditions(csr)):
            return csr
        status = dict(csr.get("status") or {})
        status["conditions"] = [*(status.get("conditions") or []), {
            "type": "Approved", "status": "True", "reason": reason, "message": message,
            "lastUpdateTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }]
        return await self._request("PUT", path, body={**csr, "status": status})

    # ---- logs ----

    async def pod_log(self, *, pod: str, container: str, previous: bool = False, tail_lines: int = 60,
                      namespace: str = ETCD_NAMESPACE) -> str:
        """`oc logs [--previous] --tail N pod -c container`: with `previous`, the last dead
        instance's log (why a crashed container crashed)."""
        api = CoreV1Api(self._api)
        response = await self._call(api.read_namespaced_pod_log, pod, namespace, container=container,
                                    previous=previous, tail_lines=tail_lines, _preload_content=False)
        return bytes(response.data).decode(errors="replace")

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
