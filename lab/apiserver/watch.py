"""`?watch=true` by polling etcd: simple, bounded, and it stops when etcd does.

etcd's own watch API is a streaming gRPC call that the JSON gateway only offers as a long
POST; polling a prefix every half second is enough for the lab (kubectl get -w, controllers that
want to wait) and keeps every store call under a deadline. Events: ADDED / MODIFIED / DELETED as
newline-delimited WatchEvent JSON; the stream ends at timeoutSeconds or when etcd fails (clients
then list again, as with a real apiserver).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from lab.apiserver import tables
from lab.apiserver.storage import StoreUnavailable

if TYPE_CHECKING:
    from lab.apiserver.objects import Objects
    from lab.apiserver.routing import Target

POLL_S = 0.5
DEFAULT_TIMEOUT_S = 1800

Json = dict[str, Any]


def _ident(obj: Json) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


async def serve_watch(
    request: web.Request, *, objects: Objects, target: Target, present: Callable[[Json], Json]
) -> web.StreamResponse:
    res = target.resource
    query = request.query
    labels, fields = query.get("labelSelector"), query.get("fieldSelector")
    as_table = tables.wants_table(request.headers.get("Accept", ""))
    try:
        timeout_s = float(query.get("timeoutSeconds") or DEFAULT_TIMEOUT_S)
    except ValueError:
        timeout_s = DEFAULT_TIMEOUT_S
    since = query.get("resourceVersion") or "0"

    async def snapshot() -> dict[tuple[str, str], Json]:
        async with asyncio.timeout(objects.store.timeout * 2):
            items, _ = await objects.list(res.name, target.namespace, labels, fields)
        return {_ident(o): o for o in items}

    # The first read fails like any request (the middleware answers 503/504).
    known = await snapshot()
    response = web.StreamResponse(headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    await response.prepare(request)
    first = True

    async def emit(kind: str, obj: Json) -> None:
        nonlocal first
        shown: Json = present(obj)
        if as_table:
            shown = tables.table(resource=res.name, items=[shown],
                                 resource_version=obj["metadata"].get("resourceVersion", ""),
                                 now=objects.clock(), include_object=query.get("includeObject", "Metadata"))
            if not first:
                shown.pop("columnDefinitions")
        first = False
        await response.write(json.dumps({"type": kind, "object": shown}).encode() + b"\n")

    try:
        async with asyncio.timeout(timeout_s):
            for obj in known.values():
                if since in ("", "0") or int(obj["metadata"]["resourceVersion"]) > int(since):
                    await emit("ADDED", obj)
            while True:
                await asyncio.sleep(POLL_S)
                transport = request.transport
                if transport is None or transport.is_closing():
                    break  # the client left; without a write we would not notice otherwise
                current = await snapshot()
                for ident, obj in current.items():
                    old = known.get(ident)
                    if old is None:
                        await emit("ADDED", obj)
                    elif old["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]:
                        await emit("MODIFIED", obj)
                for ident, obj in known.items():
                    if ident not in current:
                        await emit("DELETED", obj)
                known = current
    except (TimeoutError, StoreUnavailable, ConnectionError, ValueError):
        pass
    return response
