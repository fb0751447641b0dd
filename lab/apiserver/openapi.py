"""A minimal `/openapi/v3`, only so kubectl 1.32 can validate with `fieldValidation=Strict`.

kubectl's default `--validate=strict` first asks /openapi/v3 whether the server supports the
`fieldValidation` query parameter (a PATCH operation tagged with the object's GVK that lists it);
otherwise it downloads the protobuf /openapi/v2 schema for client-side validation and, without
one, refuses `kubectl apply`. Listing that parameter is enough: kubectl then leaves validation to
the server, which in the lab accepts any fields (real 4.5 CRDs preserve unknown fields too).
No schemas are served, so `kubectl explain` has nothing to show.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lab.apiserver.resources import RESOURCES, Resource, groups

Json = dict[str, Any]


def _gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def _item_path(res: Resource, version: str) -> str:
    ns = "/namespaces/{namespace}" if res.namespaced else ""
    return f"/{_gv_path(res.group, version)}{ns}/{res.name}/{{name}}"


def group_version_doc(group: str, version: str) -> Json | None:
    paths: Json = {}
    for res in RESOURCES:
        if res.group != group or version not in res.versions:
            continue
        gvk = {"group": group, "version": version, "kind": res.kind}
        params = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                  {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}]
        if res.namespaced:
            params.append({"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}})
        op = {"operationId": f"patch{res.kind}", "parameters": params, "x-kubernetes-action": "patch",
              "x-kubernetes-group-version-kind": gvk, "responses": {"200": {"description": "OK"}}}
        paths[_item_path(res, version)] = {"patch": op}
    if not paths:
        return None
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.18.3"}, "paths": paths}


def _hash(doc: Json) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:64].upper()


def root_doc() -> Json:
    paths: Json = {}
    for group, versions in groups().items():
        for version in versions:
            doc = group_version_doc(group, version)
            if doc is not None:
                gv = _gv_path(group, version)
                paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={_hash(doc)}"}
    return {"paths": paths}


def lookup(path: str) -> Json | None:
    """The document at /openapi/v3[/<gv path>], or None."""
    rest = path.removeprefix("/openapi/v3").strip("/")
    if not rest:
        return root_doc()
    parts = rest.split("/")
    if parts[0] == "api" and len(parts) == 2:
        return group_version_doc("", parts[1])
    if parts[0] == "apis" and len(parts) == 3:
        return group_version_doc(parts[1], parts[2])
    return None
