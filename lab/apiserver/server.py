"""The lab's kube-apiserver: HTTPS + bearer token, Kubernetes REST conventions over `Objects`.

Why it is shaped like this: every request that touches etcd is bounded by a deadline, so when
etcd loses quorum the API answers 504/503 Status objects (kubectl prints `Error from server ...`)
instead of hanging; `stop()` closes the socket and every open connection, so clients see a dead
apiserver (connection refused) exactly as when the last kube-apiserver static pod stops.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from lab import crilog
from lab.apiserver import discovery, exec_ws, openapi, protobuf, tables
from lab.apiserver.authz import (
    ADMIN,
    Attributes,
    Authorizer,
    UserInfo,
    forbidden,
    impersonate,
    review_attributes,
    rules_review_status,
)
from lab.apiserver.errors import (
    UNAUTHORIZED,
    ApiError,
    bad_request,
    invalid,
    method_not_allowed,
    not_found_path,
    success_body,
)
from lab.apiserver.objects import Objects
from lab.apiserver.patches import PatchError, json_patch, merge_patch
from lab.apiserver.protobuf import ProtobufError
from lab.apiserver.routing import Discovery, Target, parse
from lab.apiserver.selectors import field_selector, label_selector
from lab.apiserver.storage import AlreadyExists, Conflict, NotFound, StoreUnavailable
from lab.apiserver.watch import serve_watch


class ExecError(Exception):
    """The exec handler refuses: `status` is the HTTP code, `message` what kubectl prints."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


ExecHandler = Callable[[str, str, str, list[str], bool, bool], Awaitable[asyncio.subprocess.Process]]


@dataclass(frozen=True)
class LogSource:
    """Where the kubelet finds a container's output: its CRI log file, and whether it still grows."""

    path: Path
    live: Callable[[], bool]


# (namespace, pod, container, previous) -> the log; raises ExecError with the kubelet's refusal.
LogHandler = Callable[[str, str, str, bool], Awaitable[LogSource]]
Json = dict[str, Any]

# Who the request being handled runs as (the middleware sets it; one request is one task).
_USER: ContextVar[UserInfo] = ContextVar("lab_api_user", default=ADMIN)
PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
MERGE_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")
JSON_PATCH_TYPE = "application/json-patch+json"
# Core resources whose DELETE answers a Status (as Kubernetes' registries do); others the object.
DELETE_RETURNS_STATUS = frozenset({"secrets", "configmaps", "events", "nodes"})
EXEC_REFUSAL_MEMORY_S = 10.0
_REASONS = {403: "Forbidden", 400: "BadRequest", 404: "NotFound", 409: "Conflict", 500: "InternalError", 503: "ServiceUnavailable"}


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _json(body: Any, *, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


class ApiServer:
    """HTTPS Kubernetes API on host:port backed by `objects`; see module docstring."""

    def __init__(
        self,
        *,
        objects: Objects,
        host: str,
        port: int,
        cert_file: Path,
        key_file: Path,
        token: str,
        exec_handler: ExecHandler,
        version: dict[str, Any],
        log_handler: LogHandler | None = None,
    ) -> None:
        self.objects = objects
        self.host = host
        self.port = port
        self._token = token
        self._exec_handler = exec_handler
        self._log_handler = log_handler
        self.authorizer = Authorizer(objects)
        self._version = dict(version)
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(str(cert_file), str(key_file))
        self._runner: web.AppRunner | None = None
        self._exec_refusals: dict[tuple[str, str, str, tuple[str, ...]], tuple[float, ExecError]] = {}
        self._lock = asyncio.Lock()
        # One request's store work: a few store round trips, each bounded by the store timeout.
        self.request_timeout = max(4 * objects.store.timeout, 5.0)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen (idempotent). A fresh app per start: a stopped server keeps no state."""
        async with self._lock:
            if self._runner is not None:
                return
            app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._dispatch)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl, reuse_address=True)
            try:
                await site.start()
            except BaseException:
                await runner.cleanup()
                raise
            self._runner = runner

    async def stop(self) -> None:
        """Close the listening socket and all connections (idempotent); start() reopens."""
        async with self._lock:
            runner, self._runner = self._runner, None
            if runner is not None:
                await runner.cleanup()

    # -- middleware: auth, errors, deadlines ---------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._token.encode())

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS and not self._authorized(request):
            return _json(UNAUTHORIZED, status=401)
        try:
            user = ADMIN
            groups = request.headers.getall("Impersonate-Group", [])
            if request.headers.get("Impersonate-User") or groups:
                user = await self._bounded(impersonate(self.authorizer, ADMIN, request.headers, list(groups)))
            _USER.set(user)
            return await handler(request)
        except ApiError as exc:
            return _json(exc.body(), status=exc.code)
        except ExecError as exc:
            reason = _REASONS.get(exc.status, "InternalError")
            return _json(ApiError(code=exc.status, reason=reason, message=exc.message).body(), status=exc.status)
        except StoreUnavailable as exc:
            return _json(self._unavailable(request, timed_out=exc.timed_out).body(), status=504 if exc.timed_out else 503)
        except TimeoutError:
            return _json(self._unavailable(request, timed_out=True).body(), status=504)

    @staticmethod
    def _unavailable(request: web.Request, *, timed_out: bool) -> ApiError:
        """What a kube-apiserver without etcd quorum answers."""
        if timed_out:
            return ApiError(
                code=504, reason="Timeout",
                message="the server was unable to return a response in the time allotted, "
                        "but may still be processing the request",
                details={"causes": [{"reason": "StorageUnavailable", "message": "etcd: request timed out"}]},
            )
        return ApiError(code=503, reason="ServiceUnavailable", message="etcdserver: no etcd endpoint is available")

    async def _bounded(self, coro: Awaitable[Any]) -> Any:
        async with asyncio.timeout(self.request_timeout):
            return await coro

    # -- dispatch --------------------------------------------------------------------------

    async def _authorize(self, request: web.Request, attrs: Attributes, *, kind: str = "") -> None:
        user = _USER.get()
        if user.superuser:
            return
        allowed, _ = await self._bounded(self.authorizer.authorize(user, attrs))
        if not allowed:
            raise forbidden(user, attrs, kind=kind)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        target = parse(path)
        if isinstance(target, Target):
            await self._authorize(request, _attributes(request, target), kind=target.resource.name)
        elif path not in PUBLIC_PATHS:
            await self._authorize(request, Attributes(verb=request.method.lower() if request.method != "GET" else "get",
                                                      path=path))
        if path == "/version":
            return _json(self._version)
        if path in PUBLIC_PATHS:
            if path == "/readyz":
                await self._bounded(self.objects.store.revision())
            return web.Response(text="ok")
        if path.startswith("/openapi/v3"):
            doc = openapi.lookup(path)
            if doc is None:
                raise not_found_path()
            return _json(doc)
        if target is None:
            raise not_found_path()
        if isinstance(target, Discovery):
            return _json(self._discovery(request, target))
        if target.sub == "exec":
            return await self._exec(request, target)
        if target.sub == "log":
            return await self._log(request, target)
        if request.method == "GET" and target.name is None and _truthy(request.query.get("watch")):
            return await serve_watch(request, objects=self.objects, target=target,
                                     present=lambda obj: self._present(target, obj))
        return await self._bounded(self._rest(request, target))

    def _discovery(self, request: web.Request, target: Discovery) -> Json:
        if target.group is None:
            if target.root == "api":
                return discovery.api_versions(server_address=request.host)
            return discovery.api_group_list()
        if target.version is None:
            doc = discovery.api_group(target.group)
        else:
            doc = discovery.api_resource_list(group=target.group, version=target.version)
        if doc is None:
            raise not_found_path()
        return doc

    async def _rest(self, request: web.Request, target: Target) -> web.StreamResponse:
        try:
            return await self._verb(request, target)
        except NotFound as exc:
            raise ApiError(code=404, reason="NotFound", message=str(exc), details=self._details(target)) from None
        except AlreadyExists as exc:
            raise ApiError(code=409, reason="AlreadyExists", message=str(exc), details=self._details(target)) from None
        except Conflict as exc:
            raise ApiError(code=409, reason="Conflict", message=str(exc), details=self._details(target)) from None
        except PatchError as exc:
            raise invalid(str(exc)) from None

    @staticmethod
    def _details(target: Target, name: str | None = None) -> Json:
        details: Json = {"name": name or target.name or "", "kind": target.resource.name}
        if target.resource.group:
            details["group"] = target.resource.group
        return details

    async def _verb(self, request: web.Request, target: Target) -> web.StreamResponse:
        method, res = request.method, target.resource
        if not res.stored:
            if method != "POST" or target.name is not None:
                raise method_not_allowed()
            return await self._review(request, target)
        if target.name is None:
            if method == "GET":
                return await self._list(request, target)
            if method == "POST":
                return await self._create(request, target)
            raise method_not_allowed()
        if method == "GET":
            obj = await self.objects.get(res.name, target.name, target.namespace)
            if target.sub is None and tables.wants_table(request.headers.get("Accept", "")):
                return _json(self._table(request, target, [obj], obj["metadata"]["resourceVersion"]))
            return _json(self._present(target, obj))
        if method == "PUT":
            return _json(self._present(target, await self._update(request, target)))
        if method == "PATCH":
            return _json(self._present(target, await self._patch(request, target)))
        if method == "DELETE" and target.sub is None:
            deleted = await self.objects.delete(res.name, target.name, target.namespace)
            if res.name in DELETE_RETURNS_STATUS:
                details = self._details(target)
                details["uid"] = deleted["metadata"].get("uid", "")
                return _json(success_body(details=details))
            return _json(self._present(target, deleted))
        raise method_not_allowed()

    # -- verbs -------------------------------------------------------------------------------

    def _present(self, target: Target, obj: Json) -> Json:
        """The object as the requested group version shows it (CSRs are served as v1 and v1beta1)."""
        if obj.get("apiVersion") != target.resource.api_version(target.version):
            obj = {**obj, "apiVersion": target.resource.api_version(target.version)}
        return obj

    def _table(self, request: web.Request, target: Target, items: list[Json], rv: str) -> Json:
        return tables.table(
            resource=target.resource.name,
            items=[self._present(target, o) for o in items],
            resource_version=rv,
            now=self.objects.clock(),
            include_object=request.query.get("includeObject", "Metadata"),
        )

    async def _list(self, request: web.Request, target: Target) -> web.StreamResponse:
        res = target.resource
        labels, fields = request.query.get("labelSelector"), request.query.get("fieldSelector")
        try:
            label_selector(labels)
            field_selector(fields)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        items, rv = await self.objects.list(res.name, target.namespace, labels, fields)
        if tables.wants_table(request.headers.get("Accept", "")):
            return _json(self._table(request, target, items, rv))
        return _json({
            "kind": res.list_kind,
            "apiVersion": res.api_version(target.version),
            "metadata": {"resourceVersion": rv},
            "items": [self._present(target, o) for o in items],
        })

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if request.content_type == protobuf.CONTENT_TYPE:
            try:
                return protobuf.decode(raw)
            except ProtobufError as exc:
                raise ApiError(code=415, reason="UnsupportedMediaType", message=str(exc)) from None
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise bad_request(f"the request body is not JSON: {exc}") from None

    async def _object_body(self, request: web.Request, target: Target) -> Json:
        """The request's object, checked against the URL (kind, namespace, name) like Kubernetes."""
        body = await self._body(request)
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        res = target.resource
        if body.get("kind") and body["kind"] != res.kind:
            raise bad_request(f"the kind of the provided object ({body['kind']}) does not match {res.kind}")
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if res.namespaced:
            if meta.get("namespace") and meta["namespace"] != target.namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = target.namespace
        else:
            meta.pop("namespace", None)
        if target.name is not None and meta.get("name") and meta["name"] != target.name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({target.name})")
        if target.name is not None:
            meta["name"] = target.name
        body["apiVersion"] = res.api_version()
        return body

    async def _create(self, request: web.Request, target: Target) -> web.StreamResponse:
        if target.resource.namespaced and target.namespace is None:
            raise method_not_allowed()
        body = await self._object_body(request, target)
        if not body["metadata"].get("name") and not body["metadata"].get("generateName"):
            raise invalid(f"{target.resource.kind}.{target.resource.group or 'core'} is invalid: "
                          "metadata.name: Required value: name or generateName is required")
        if target.resource.namespaced and target.resource.name != "events":
            # NamespaceLifecycle admission: no objects in a namespace that does not exist.
            try:
                await self.objects.get("namespaces", target.namespace or "")
            except NotFound:
                raise ApiError(code=404, reason="NotFound", message=f'namespaces "{target.namespace}" not found',
                               details={"name": target.namespace, "kind": "namespaces"}) from None
        created = await self.objects.create(target.resource.name, body)
        return _json(self._present(target, created), status=201)

    async def _update(self, request: web.Request, target: Target) -> Json:
        res, name = target.resource, target.name or ""
        body = await self._object_body(request, target)
        if target.sub is None:
            return await self.objects.update(res.name, body)
        if target.sub not in ("status", "approval", "finalize"):
            raise method_not_allowed()
        current = await self.objects.get(res.name, name, target.namespace)
        new = copy.deepcopy(current)
        if target.sub == "status":
            new["status"] = body.get("status") or {}
        elif target.sub == "approval":
            new.setdefault("status", {})["conditions"] = (body.get("status") or {}).get("conditions") or []
        else:
            new.setdefault("spec", {})["finalizers"] = (body.get("spec") or {}).get("finalizers") or []
        wanted = body["metadata"].get("resourceVersion")
        new["metadata"]["resourceVersion"] = wanted or current["metadata"]["resourceVersion"]
        return await self.objects.update(res.name, new)

    async def _patch(self, request: web.Request, target: Target) -> Json:
        res, name = target.resource, target.name or ""
        content_type = request.content_type
        patch = await self._body(request)
        if content_type in MERGE_TYPES:
            if not isinstance(patch, dict):
                raise bad_request("a merge patch must be a JSON object")

            def apply(obj: Json) -> Json:
                return merge_patch(obj, patch)
        elif content_type == JSON_PATCH_TYPE:
            def apply(obj: Json) -> Json:
                return json_patch(obj, patch)
        else:
            raise ApiError(code=415, reason="UnsupportedMediaType",
                           message=f"the body of the request was in an unknown format - accepted media types "
                                   f"include: {JSON_PATCH_TYPE}, {', '.join(MERGE_TYPES)}")
        wanted = ((patch.get("metadata") or {}).get("resourceVersion")) if isinstance(patch, dict) else None

        def mutate(obj: Json) -> Json:
            if wanted and str(wanted) != obj["metadata"]["resourceVersion"]:
                raise Conflict(f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been '
                               "modified; please apply your changes to the latest version and try again")
            patched = apply(obj)
            if not isinstance(patched, dict):
                raise PatchError("the patch must leave an object")
            if target.sub in ("status", "approval"):
                result = copy.deepcopy(obj)
                result["status"] = patched.get("status") or {}
                return result
            # Identity and server-owned metadata are not patchable.
            meta = patched.setdefault("metadata", {})
            for key in ("name", "namespace", "uid", "creationTimestamp", "resourceVersion"):
                if key in obj["metadata"]:
                    meta[key] = obj["metadata"][key]
            return patched

        return await self.objects.mutate(res.name, name, mutate, target.namespace)

    # -- exec --------------------------------------------------------------------------------

    async def _exec(self, request: web.Request, target: Target) -> web.StreamResponse:
        """Check the pod and container, start the command, then bridge it over a WebSocket."""
        if request.method not in ("GET", "POST"):
            raise method_not_allowed()
        query = request.query
        command = query.getall("command", [])
        if not command:
            raise bad_request("you must specify at least 1 command")
        namespace, name = target.namespace or "", target.name or ""
        try:
            pod = await self._bounded(self.objects.get("pods", name, namespace))
        except NotFound as exc:
            raise ApiError(code=404, reason="NotFound", message=str(exc), details=self._details(target)) from None
        container = query.get("container", "") or _default_container(pod)
        names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        if container not in names:
            raise bad_request(f"container {container} is not valid for pod {name}")
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            raise bad_request(f"cannot exec into a container in a completed pod; current phase is {phase}")
        if not _container_running(pod, container):
            raise bad_request(f'container not found ("{container}")')
        key = (namespace, name, container, tuple(command))
        probe = web.WebSocketResponse(protocols=exec_ws.PROTOCOLS)
        if not probe.can_prepare(request).ok:
            # kubectl retries a failed WebSocket upgrade over SPDY and prints THAT answer: repeat
            # the handler's refusal of the WebSocket attempt instead of running the command again.
            refused = self._exec_refusals.get(key)
            if refused is not None and time.monotonic() - refused[0] < EXEC_REFUSAL_MEMORY_S:
                raise refused[1]
            raise bad_request("Upgrade request required: this server speaks exec over WebSocket "
                              "(v5.channel.k8s.io, v4.channel.k8s.io) only")
        stdin, tty = _truthy(query.get("stdin")), _truthy(query.get("tty"))
        try:
            proc = await self._exec_handler(namespace, name, container, list(command), stdin, tty)
        except ExecError as exc:
            now = time.monotonic()
            self._exec_refusals = {k: v for k, v in self._exec_refusals.items() if now - v[0] < EXEC_REFUSAL_MEMORY_S}
            self._exec_refusals[key] = (now, exc)
            raise
        return await exec_ws.serve_exec(request, proc, stdin=stdin)

    # -- access reviews ----------------------------------------------------------------------------

    async def _review(self, request: web.Request, target: Target) -> web.StreamResponse:
        """SelfSubjectAccessReview (`kubectl auth can-i`) and SelfSubjectRulesReview (`can-i --list`)."""
        body = await self._body(request)
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        user = _USER.get()
        spec = body.get("spec") or {}
        if target.resource.name == "selfsubjectrulesreviews":
            rules = await self.authorizer.rules(user, str(spec.get("namespace", "")))
            status = rules_review_status(rules)
        else:
            attrs = review_attributes(spec)
            if not attrs.verb:
                raise invalid("SelfSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes.verb: "
                              "Required value")
            allowed, reason = await self.authorizer.authorize(user, attrs)
            status = {"allowed": allowed}
            if reason:
                status["reason"] = reason
        answer = {"kind": target.resource.kind, "apiVersion": target.resource.api_version(target.version),
                  "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}
        return _json(answer, status=201)

    # -- log -----------------------------------------------------------------------------------

    async def _log(self, request: web.Request, target: Target) -> web.StreamResponse:
        """`pods/log`: the container's output as the kubelet serves it (text/plain, CRI prefix stripped)."""
        if request.method != "GET":
            raise method_not_allowed()
        query = request.query
        namespace, name = target.namespace or "", target.name or ""
        try:
            pod = await self._bounded(self.objects.get("pods", name, namespace))
        except NotFound as exc:
            raise ApiError(code=404, reason="NotFound", message=str(exc), details=self._details(target)) from None
        names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        container = query.get("container", "")
        if not container:
            if len(names) != 1:
                raise bad_request(f"a container name must be specified for pod {name}, choose one of: "
                                  f"[{' '.join(str(n) for n in names)}]")
            container = str(names[0])
        if container not in names:
            raise bad_request(f"container {container} is not valid for pod {name}")
        options = _log_options(query)
        if self._log_handler is None:
            raise bad_request("this server serves no container logs")
        source = await self._log_handler(namespace, name, container, _truthy(query.get("previous")))
        body = crilog.render(crilog.read(source.path), **options)
        if not _truthy(query.get("follow")) or not source.live():
            return web.Response(body=body, content_type="text/plain", charset="utf-8")
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        await response.write(body)
        offset = source.path.stat().st_size if source.path.exists() else 0
        while source.live() and self.serving:
            await asyncio.sleep(0.2)
            try:
                size = source.path.stat().st_size
            except OSError:
                break
            if size > offset:
                with open(source.path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read(size - offset)
                complete = chunk[: chunk.rfind(b"\n") + 1]
                offset += len(complete)
                if complete:
                    await response.write(crilog.render(crilog.parse(complete), timestamps=options["timestamps"]))
        await response.write_eof()
        return response


def _attributes(request: web.Request, target: Target) -> Attributes:
    """The RBAC verb and resource a request needs (exec is `create pods/exec`, log `get pods/log`)."""
    method = request.method
    if target.sub == "exec":
        verb = "create"
    elif method == "GET":
        verb = "get" if target.name else ("watch" if _truthy(request.query.get("watch")) else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if target.name else "deletecollection"}.get(method, method.lower())
    sub = target.sub if target.sub not in (None, "") else ""
    return Attributes(verb=verb, resource=target.resource.name, subresource=sub, group=target.resource.group,
                      namespace=target.namespace or "", name=target.name or "")


def _log_options(query: Any) -> dict[str, Any]:
    """tailLines, timestamps, sinceSeconds/sinceTime and limitBytes, checked as the API checks them."""

    def number(key: str) -> int | None:
        raw = query.get(key)
        if raw is None or raw == "":
            return None
        try:
            value = int(raw)
        except ValueError:
            raise bad_request(f"{key}: Invalid value: \"{raw}\": must be an integer") from None
        if value < 0 or (key != "tailLines" and value == 0):
            raise invalid(f"PodLogOptions \"\" is invalid: {key}: Invalid value: {value}: must be greater than 0")
        return value

    since: float | None = None
    seconds = number("sinceSeconds")
    if seconds is not None:
        since = time.time() - seconds
    elif query.get("sinceTime"):
        try:
            since = time.mktime(time.strptime(query["sinceTime"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        except ValueError:
            raise bad_request(f"sinceTime: Invalid value: \"{query['sinceTime']}\"") from None
    return {"tail": number("tailLines"), "timestamps": _truthy(query.get("timestamps")), "since": since,
            "limit_bytes": number("limitBytes")}


def _default_container(pod: Json) -> str:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    default = annotations.get("kubectl.kubernetes.io/default-container")
    if default:
        return default
    containers = (pod.get("spec") or {}).get("containers") or []
    return containers[0].get("name", "") if containers else ""


def _container_running(pod: Json, container: str) -> bool:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            return (status.get("state") or {}).get("running") is not None
    return False
