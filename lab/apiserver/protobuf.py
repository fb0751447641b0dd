"""Decode the Kubernetes protobuf request bodies kubectl's typed clients send.

kubectl 1.32 writes built-in types with `Content-Type: application/vnd.kubernetes.protobuf`
(`kubectl certificate approve` PUTs the CSR to /approval that way; `kubectl create secret`,
`configmap`, `namespace` POST that way), and a real apiserver always accepts it. We answer in
JSON (kubectl also accepts JSON) and decode only the request bodies of the types a lab user
writes with typed commands. Fields the schemas below do not name are skipped, as protobuf does.

Wire format: magic `k8s\\0`, then runtime.Unknown {typeMeta=1 {apiVersion=1, kind=2}, raw=2}
whose `raw` is the object's message (field numbers from k8s.io/api generated.proto).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"

# A schema maps field number -> (json name, kind, repeated). Kinds: "string", "bytes" (base64 in
# JSON), "int", "bool", "time", "map:string", "map:bytes", or a nested schema (dict).
Schema = dict[int, tuple[str, Any, bool]]

TIME = "time"
OWNER_REFERENCE: Schema = {1: ("kind", "string", False), 3: ("name", "string", False), 4: ("uid", "string", False),
                           5: ("apiVersion", "string", False), 6: ("controller", "bool", False),
                           7: ("blockOwnerDeletion", "bool", False)}
OBJECT_META: Schema = {
    1: ("name", "string", False), 2: ("generateName", "string", False), 3: ("namespace", "string", False),
    5: ("uid", "string", False), 6: ("resourceVersion", "string", False), 7: ("generation", "int", False),
    8: ("creationTimestamp", TIME, False), 9: ("deletionTimestamp", TIME, False),
    10: ("deletionGracePeriodSeconds", "int", False), 11: ("labels", "map:string", False),
    12: ("annotations", "map:string", False), 13: ("ownerReferences", OWNER_REFERENCE, True),
    14: ("finalizers", "string", True),
}
SECRET: Schema = {1: ("metadata", OBJECT_META, False), 2: ("data", "map:bytes", False), 3: ("type", "string", False),
                  4: ("stringData", "map:string", False), 5: ("immutable", "bool", False)}
CONFIG_MAP: Schema = {1: ("metadata", OBJECT_META, False), 2: ("data", "map:string", False),
                      3: ("binaryData", "map:bytes", False), 4: ("immutable", "bool", False)}
NAMESPACE: Schema = {1: ("metadata", OBJECT_META, False),
                     2: ("spec", {1: ("finalizers", "string", True)}, False),
                     3: ("status", {1: ("phase", "string", False)}, False)}
CSR_CONDITION: Schema = {1: ("type", "string", False), 6: ("status", "string", False), 2: ("reason", "string", False),
                         3: ("message", "string", False), 4: ("lastUpdateTime", TIME, False),
                         5: ("lastTransitionTime", TIME, False)}
CSR: Schema = {
    1: ("metadata", OBJECT_META, False),
    2: ("spec", {1: ("request", "bytes", False), 7: ("signerName", "string", False),
                 8: ("expirationSeconds", "int", False), 5: ("usages", "string", True),
                 2: ("username", "string", False), 3: ("uid", "string", False), 4: ("groups", "string", True)}, False),
    3: ("status", {1: ("conditions", CSR_CONDITION, True), 2: ("certificate", "bytes", False)}, False),
}
RESOURCE_ATTRIBUTES: Schema = {1: ("namespace", "string", False), 2: ("verb", "string", False),
                               3: ("group", "string", False), 4: ("version", "string", False),
                               5: ("resource", "string", False), 6: ("subresource", "string", False),
                               7: ("name", "string", False)}
NON_RESOURCE_ATTRIBUTES: Schema = {1: ("path", "string", False), 2: ("verb", "string", False)}
# `kubectl auth can-i` (authorization.k8s.io/v1 generated.proto)
SELF_SUBJECT_ACCESS_REVIEW: Schema = {
    1: ("metadata", OBJECT_META, False),
    2: ("spec", {1: ("resourceAttributes", RESOURCE_ATTRIBUTES, False),
                 2: ("nonResourceAttributes", NON_RESOURCE_ATTRIBUTES, False)}, False),
}
SELF_SUBJECT_RULES_REVIEW: Schema = {1: ("metadata", OBJECT_META, False),
                                     2: ("spec", {1: ("namespace", "string", False)}, False)}
# rbac.authorization.k8s.io/v1 (`kubectl create role|rolebinding|clusterrole|clusterrolebinding`)
POLICY_RULE: Schema = {1: ("verbs", "string", True), 2: ("apiGroups", "string", True), 3: ("resources", "string", True),
                       4: ("resourceNames", "string", True), 5: ("nonResourceURLs", "string", True)}
SUBJECT: Schema = {1: ("kind", "string", False), 2: ("apiGroup", "string", False), 3: ("name", "string", False),
                   4: ("namespace", "string", False)}
ROLE_REF: Schema = {1: ("apiGroup", "string", False), 2: ("kind", "string", False), 3: ("name", "string", False)}
ROLE: Schema = {1: ("metadata", OBJECT_META, False), 2: ("rules", POLICY_RULE, True)}
BINDING: Schema = {1: ("metadata", OBJECT_META, False), 2: ("subjects", SUBJECT, True), 3: ("roleRef", ROLE_REF, False)}
SCHEMAS: dict[str, Schema] = {"Role": ROLE, "ClusterRole": ROLE, "RoleBinding": BINDING, "ClusterRoleBinding": BINDING,
                              "Secret": SECRET, "ConfigMap": CONFIG_MAP, "Namespace": NAMESPACE,
                              "CertificateSigningRequest": CSR, "SelfSubjectAccessReview": SELF_SUBJECT_ACCESS_REVIEW,
                              "SelfSubjectRulesReview": SELF_SUBJECT_RULES_REVIEW}


class ProtobufError(ValueError):
    """Not a Kubernetes protobuf body, or a kind this server cannot decode."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) in order; length-delimited values as bytes."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def _time(data: bytes) -> str:
    seconds = next((v for n, w, v in _fields(data) if n == 1 and w == 0), 0)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _scalar(kind: str, wire: int, value: Any) -> Any:
    if kind == "string":
        return bytes(value).decode()
    if kind == "bytes":
        return base64.b64encode(bytes(value)).decode()
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return value - (1 << 64) if value >= 1 << 63 else value
    if kind == TIME:
        return _time(bytes(value))
    raise ProtobufError(f"unknown kind {kind}")


def decode_message(data: bytes, schema: Schema) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for number, wire, value in _fields(data):
        if number not in schema:
            continue
        name, kind, repeated = schema[number]
        if isinstance(kind, str) and kind.startswith("map:"):
            entry = {n: v for n, _, v in _fields(bytes(value))}
            key = bytes(entry.get(1, b"")).decode()
            obj.setdefault(name, {})[key] = _scalar(kind[4:], 2, entry.get(2, b""))
            continue
        decoded = decode_message(bytes(value), kind) if isinstance(kind, dict) else _scalar(kind, wire, value)
        if repeated:
            obj.setdefault(name, []).append(decoded)
        else:
            obj[name] = decoded
    return obj


def decode(body: bytes) -> dict[str, Any]:
    """A JSON-shaped object from a `k8s\\0` protobuf envelope; ProtobufError otherwise."""
    if not body.startswith(MAGIC):
        raise ProtobufError("not a Kubernetes protobuf envelope")
    unknown = {n: v for n, _, v in _fields(body[len(MAGIC):])}
    type_meta = {n: bytes(v).decode() for n, _, v in _fields(bytes(unknown.get(1, b"")))}
    api_version, kind = type_meta.get(1, ""), type_meta.get(2, "")
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise ProtobufError(f"this lab server cannot decode protobuf {kind or 'objects'}; send JSON")
    obj = decode_message(bytes(unknown.get(2, b"")), schema)
    return {"apiVersion": api_version, "kind": kind, **obj}
