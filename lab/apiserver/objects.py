"""Typed access to API objects stored in etcd, shared by the HTTP handlers and the lab's
in-process controllers (kubelet, operators), so both see one truth and both fail when etcd does.

What it adds over raw keys: metadata the server owns (uid, creationTimestamp, generation,
resourceVersion = etcd mod_revision), optimistic concurrency, merge patch, and selectors. What it
does not do: admission, defaulting beyond metadata, or cascading deletes.
"""

from __future__ import annotations

import copy
import json
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lab.apiserver.patches import merge_patch as apply_merge_patch
from lab.apiserver.resources import Resource, lookup
from lab.apiserver.selectors import field_selector as parse_field_selector
from lab.apiserver.selectors import label_selector as parse_label_selector
from lab.apiserver.storage import AlreadyExists, Conflict, EtcdStore, KeyValue, NotFound

Clock = Callable[[], datetime]
MUTATE_ATTEMPTS = 10


def format_time(when: datetime) -> str:
    """RFC 3339 in UTC with second precision, as metav1.Time serialises."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _wall_clock() -> datetime:
    return datetime.now(UTC)


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything that bumps metadata.generation when it changes (all but metadata/status)."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class Objects:
    """Typed access to API objects in the store: fills metadata.uid, creationTimestamp,
    resourceVersion (etcd mod_revision as string), generation; used by the API handlers AND
    in-process by the lab's controllers (kubelet, operators).

    `clock` lets the lab's accelerated clock stamp creationTimestamp; default is wall time.
    """

    def __init__(self, store: EtcdStore, *, clock: Clock | None = None) -> None:
        self.store = store
        self.clock: Clock = clock or _wall_clock

    # -- encoding -------------------------------------------------------------------------

    @staticmethod
    def _decode(res: Resource, kv: KeyValue) -> dict[str, Any]:
        obj = json.loads(kv.value)
        obj.setdefault("apiVersion", res.api_version())
        obj.setdefault("kind", res.kind)
        obj.setdefault("metadata", {})["resourceVersion"] = str(kv.mod_revision)
        return obj

    @staticmethod
    def _encode(obj: dict[str, Any]) -> bytes:
        stored = copy.deepcopy(obj)
        # Like Kubernetes, the revision is not part of the stored bytes: etcd keeps it.
        stored.get("metadata", {}).pop("resourceVersion", None)
        return json.dumps(stored, separators=(",", ":"), sort_keys=False).encode()

    @staticmethod
    def _name_ns(res: Resource, obj: dict[str, Any]) -> tuple[str, str | None]:
        meta = obj.get("metadata") or {}
        name = meta.get("name") or ""
        if not name:
            raise ValueError("metadata.name: Required value: name or generateName is required")
        namespace = meta.get("namespace") if res.namespaced else None
        if res.namespaced and not namespace:
            raise ValueError("metadata.namespace: Required value")
        return name, namespace

    # -- reads ----------------------------------------------------------------------------

    async def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        """The object; NotFound (message `<resource> "<name>" not found`) when absent."""
        res = lookup(resource)
        kv = await self.store.get(res.key(name, namespace))
        if kv is None:
            raise NotFound(f'{res.qualified} "{name}" not found')
        return self._decode(res, kv)

    async def list(
        self,
        resource: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """Matching objects sorted by namespace/name, and the store revision as resourceVersion.

        namespace None lists a namespaced resource across all namespaces. Selector syntax
        errors raise ValueError.
        """
        res = lookup(resource)
        match_labels = parse_label_selector(label_selector)
        match_fields = parse_field_selector(field_selector)
        kvs, revision = await self.store.list_prefix(res.prefix(namespace))
        items = [self._decode(res, kv) for kv in kvs]
        return [o for o in items if match_labels(o) and match_fields(o)], str(revision)

    # -- writes ---------------------------------------------------------------------------

    async def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new object; AlreadyExists (message `<resource> "<name>" already exists`)."""
        res = lookup(resource)
        new = copy.deepcopy(obj)
        meta = new.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not res.namespaced:
            meta.pop("namespace", None)
        name, namespace = self._name_ns(res, new)
        new["apiVersion"] = new.get("apiVersion") or res.api_version()
        new["kind"] = res.kind
        meta["uid"] = meta.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = meta.get("creationTimestamp") or format_time(self.clock())
        meta["generation"] = 1
        meta.pop("resourceVersion", None)
        if resource == "namespaces":
            new.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            new.setdefault("status", {}).setdefault("phase", "Active")
        try:
            revision = await self.store.create(res.key(name, namespace), self._encode(new))
        except AlreadyExists:
            raise AlreadyExists(f'{res.qualified} "{name}" already exists') from None
        meta["resourceVersion"] = str(revision)
        return new

    async def update(self, resource: str, obj: dict[str, Any], *, check_version: bool = True) -> dict[str, Any]:
        """Replace the stored object. With check_version and a metadata.resourceVersion, only if
        it is still that revision (Conflict otherwise), as a PUT does. Server-owned metadata
        (uid, creationTimestamp) is kept; generation is bumped when the spec changed.
        """
        res = lookup(resource)
        name, namespace = self._name_ns(res, obj)
        key = res.key(name, namespace)
        current_kv = await self.store.get(key)
        if current_kv is None:
            raise NotFound(f'{res.qualified} "{name}" not found')
        current = self._decode(res, current_kv)
        new = copy.deepcopy(obj)
        meta = new.setdefault("metadata", {})
        wanted = meta.get("resourceVersion") if check_version else None
        if wanted and str(wanted) != str(current_kv.mod_revision):
            raise Conflict(self._conflict_message(res, name))
        cur_meta = current["metadata"]
        if not res.namespaced:
            meta.pop("namespace", None)
        new["apiVersion"] = current.get("apiVersion") or res.api_version()
        new["kind"] = res.kind
        meta["uid"] = cur_meta.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = cur_meta.get("creationTimestamp") or format_time(self.clock())
        generation = int(cur_meta.get("generation") or 1)
        meta["generation"] = generation + 1 if _spec_part(new) != _spec_part(current) else generation
        try:
            revision = await self.store.update(key, self._encode(new), mod_revision=current_kv.mod_revision)
        except Conflict:
            raise Conflict(self._conflict_message(res, name)) from None
        except NotFound:
            raise NotFound(f'{res.qualified} "{name}" not found') from None
        meta["resourceVersion"] = str(revision)
        return new

    @staticmethod
    def _conflict_message(res: Resource, name: str) -> str:
        return (f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again")

    async def mutate(
        self,
        resource: str,
        name: str,
        fn: Callable[[dict[str, Any]], dict[str, Any] | None],
        namespace: str | None = None,
    ) -> dict[str, Any]:
        """Read-modify-write with retry on Conflict.

        fn gets a fresh copy of the object; it returns the new object, or None after editing the
        copy in place. When the result equals what was read, nothing is written.
        """
        last: Conflict | None = None
        for _ in range(MUTATE_ATTEMPTS):
            current = await self.get(resource, name, namespace)
            work = copy.deepcopy(current)
            result = fn(work)
            new = work if result is None else result
            if new == current:
                return current
            new.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
            try:
                return await self.update(resource, new)
            except Conflict as exc:
                last = exc
        assert last is not None
        raise last

    async def merge_patch(
        self, resource: str, name: str, patch: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        """RFC 7386 merge patch, retried on Conflict (a patch has no resourceVersion precondition
        unless it carries metadata.resourceVersion itself)."""
        wanted = ((patch.get("metadata") or {}).get("resourceVersion")) if isinstance(patch, dict) else None

        def apply(obj: dict[str, Any]) -> dict[str, Any]:
            if wanted and str(wanted) != obj["metadata"]["resourceVersion"]:
                raise Conflict(self._conflict_message(lookup(resource), name))
            return apply_merge_patch(obj, patch)

        return await self.mutate(resource, name, apply, namespace)

    async def delete(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        """Remove the object and return it as it was last stored."""
        res = lookup(resource)
        try:
            kv = await self.store.delete(res.key(name, namespace))
        except NotFound:
            raise NotFound(f'{res.qualified} "{name}" not found') from None
        return self._decode(res, kv)
