"""URL -> what is addressed: a discovery document or a resource target.

Kept apart from the handlers because the grammar has one ambiguity worth a test:
`/api/v1/namespaces/<x>/status` is a namespace's subresource while
`/api/v1/namespaces/<x>/pods` is a namespaced collection.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.apiserver.resources import Resource, find


@dataclass(frozen=True)
class Target:
    """A resource URL: collection (name None) or object, optional subresource."""

    resource: Resource
    version: str
    namespace: str | None
    name: str | None
    sub: str | None


@dataclass(frozen=True)
class Discovery:
    """A discovery URL: `/api`, `/apis`, `/apis/<group>`, or a group version's resource list."""

    group: str | None
    version: str | None
    root: str  # "api" or "apis"


def parse(path: str) -> Target | Discovery | None:
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] not in ("api", "apis"):
        return None
    if parts[0] == "api":
        if len(parts) == 1:
            return Discovery(group=None, version=None, root="api")
        group, version, rest = "", parts[1], parts[2:]
    else:
        if len(parts) == 1:
            return Discovery(group=None, version=None, root="apis")
        if len(parts) == 2:
            return Discovery(group=parts[1], version=None, root="apis")
        group, version, rest = parts[1], parts[2], parts[3:]
    if not rest:
        return Discovery(group=group, version=version, root=parts[0])
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        inner = find(group=group, version=version, name=rest[2])
        if inner is not None and inner.namespaced:
            namespace, rest = rest[1], rest[2:]
    res = find(group=group, version=version, name=rest[0])
    if res is None or len(rest) > 3:
        return None
    if res.namespaced and namespace is None and len(rest) > 1:
        return None  # a namespaced object needs /namespaces/<ns>/ in its URL
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in res.subresources:
        return None
    return Target(resource=res, version=version, namespace=namespace, name=name, sub=sub)
