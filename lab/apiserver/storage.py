"""etcd v3 as the API server's storage, spoken through etcd's JSON gRPC gateway.

Why the gateway and not a gRPC client: etcd 3.4 serves `POST /v3/kv/...` with base64 keys and
values on its client port, so aiohttp (already a dependency) is all we need, and every request
gets an explicit timeout. Why etcd at all: the lab's API must fail exactly when etcd does (no
quorum, member down) and a snapshot restore must bring back exactly the backed-up objects.

This module knows keys, values and revisions; it does not know what a Kubernetes object is
(that is `objects.py`).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp


class StoreUnavailable(Exception):
    """etcd did not answer in time, refused the connection, or has no leader/quorum.

    `timed_out` tells a hang (no quorum: the apiserver answers 504) from a refusal (503).
    """

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Conflict(Exception):
    """The object changed since the caller read it (stale resourceVersion)."""


class NotFound(Exception):
    """No object under that key."""


class AlreadyExists(Exception):
    """An object already exists under that key."""


@dataclass(frozen=True)
class KeyValue:
    """One etcd key-value pair with the revision that last modified it."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def _exists_at(key: str, mod_revision: int | None) -> list[dict[str, Any]]:
    """The txn compare of update() and delete(): the key exists and, if given, is still at mod_revision."""
    compare: list[dict[str, Any]] = [{"key": _b64(key), "target": "CREATE", "create_revision": "0", "result": "GREATER"}]
    if mod_revision is not None:
        compare.append({"key": _b64(key), "target": "MOD", "mod_revision": str(mod_revision), "result": "EQUAL"})
    return compare


def prefix_range_end(prefix: str) -> bytes:
    """The exclusive end key of a prefix scan (etcdctl's `--prefix`): last byte + 1."""
    raw = bytearray(prefix.encode())
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return bytes(raw[: i + 1])
    return b"\0"


def _kv(item: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(item["key"]).decode(),
        value=_unb64(item.get("value", "")),
        mod_revision=int(item.get("mod_revision", 0)),
        create_revision=int(item.get("create_revision", 0)),
    )


class EtcdStore:
    """etcd v3 via its JSON gRPC gateway (POST https://host:port/v3/kv/range|put|deleterange|txn,
    base64 keys/values) with TLS client certs, aiohttp client. Tries endpoints in order; each
    request has a timeout.

    Endpoints are tried in order because a real kube-apiserver is configured with all members
    (`--etcd-servers`) and keeps working while any member of a quorate cluster answers.
    """

    def __init__(
        self,
        *,
        endpoints: list[str],
        ca_file: Path,
        cert_file: Path,
        key_file: Path,
        timeout: float = 3.0,
    ) -> None:
        self._endpoints = list(endpoints)
        self._timeout = timeout
        self._ssl = ssl.create_default_context(cafile=str(ca_file))
        self._ssl.load_cert_chain(str(cert_file), str(key_file))
        # Lab certificates name 127.0.0.1/localhost; keep hostname checks on.
        self._session: aiohttp.ClientSession | None = None
        self._preferred: str | None = None

    @property
    def timeout(self) -> float:
        return self._timeout

    def set_endpoints(self, endpoints: list[str]) -> None:
        """Replace the member list (after a member is added or removed by the lab)."""
        self._endpoints = list(endpoints)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=64),
            )
        return self._session

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the first endpoint that answers; StoreUnavailable when none does in time.

        The whole attempt is bounded by the timeout, and each endpoint gets an equal share of it,
        so one hung member (stopped process, host without network) cannot eat the budget while
        the others have quorum. The endpoint that answered last is tried first next time. A
        cluster without quorum answers neither reads (linearizable) nor writes: the gateway call
        hangs or errors, both reported as StoreUnavailable (`timed_out` when nobody answered).
        """
        endpoints = list(self._endpoints)
        if not endpoints:
            raise StoreUnavailable("no etcd endpoints configured")
        if self._preferred in endpoints:
            endpoints.remove(self._preferred)
            endpoints.insert(0, self._preferred)
        share = self._timeout / len(endpoints)
        errors: list[str] = []
        timeouts = 0
        for endpoint in endpoints:
            url = endpoint.rstrip("/") + path
            try:
                async with asyncio.timeout(share), self._client().post(url, json=body) as resp:
                    data = await resp.json(content_type=None)
            except TimeoutError:
                timeouts += 1
                errors.append(f"{endpoint}: no answer within {share:.1f}s")
                continue
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                errors.append(f"{endpoint}: {exc}")
                continue
            if resp.status != 200 or not isinstance(data, dict) or "error" in data:
                message = (data.get("error") or data.get("message")) if isinstance(data, dict) else data
                errors.append(f"{endpoint}: {message}")
                continue
            self._preferred = endpoint
            return data
        raise StoreUnavailable("no etcd endpoint answered: " + "; ".join(errors), timed_out=timeouts > 0)

    async def get(self, key: str) -> KeyValue | None:
        data = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = data.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All pairs under the prefix, sorted by key, and the store revision of the read."""
        data = await self._call(
            "/v3/kv/range",
            {"key": _b64(prefix), "range_end": _b64(prefix_range_end(prefix))},
        )
        revision = int(data.get("header", {}).get("revision", 0))
        return [_kv(item) for item in data.get("kvs") or []], revision

    async def revision(self) -> int:
        """The current store revision (a linearizable read, so it fails without quorum)."""
        data = await self._call("/v3/kv/range", {"key": _b64("/"), "limit": 1, "count_only": True})
        return int(data.get("header", {}).get("revision", 0))

    async def create(self, key: str, value: bytes) -> int:
        """Put only if the key does not exist; returns the new mod revision."""
        data = await self._call(
            "/v3/kv/txn",
            {
                "compare": [{"key": _b64(key), "target": "CREATE", "create_revision": "0", "result": "EQUAL"}],
                "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
            },
        )
        if not data.get("succeeded"):
            raise AlreadyExists(key)
        return int(data["header"]["revision"])

    async def update(self, key: str, value: bytes, *, mod_revision: int | None) -> int:
        """Put over an existing key; with mod_revision, only if it is still that revision.

        Raises NotFound when the key is gone, Conflict when it moved on.
        """
        compare = _exists_at(key, mod_revision)
        data = await self._call(
            "/v3/kv/txn",
            {
                "compare": compare,
                "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
                "failure": [{"request_range": {"key": _b64(key)}}],
            },
        )
        if not data.get("succeeded"):
            responses = data.get("responses") or [{}]
            kvs = responses[0].get("response_range", {}).get("kvs") or []
            if not kvs:
                raise NotFound(key)
            raise Conflict(key)
        return int(data["header"]["revision"])

    async def delete(self, key: str, *, mod_revision: int | None = None) -> KeyValue:
        """Delete the key and return its last value; NotFound/Conflict like update()."""
        compare = _exists_at(key, mod_revision)
        data = await self._call(
            "/v3/kv/txn",
            {
                "compare": compare,
                "success": [{"request_delete_range": {"key": _b64(key), "prev_kv": True}}],
                "failure": [{"request_range": {"key": _b64(key)}}],
            },
        )
        responses = data.get("responses") or [{}]
        if not data.get("succeeded"):
            kvs = responses[0].get("response_range", {}).get("kvs") or []
            if not kvs:
                raise NotFound(key)
            raise Conflict(key)
        prev = responses[0].get("response_delete_range", {}).get("prev_kvs") or []
        if not prev:
            raise NotFound(key)
        kv = _kv(prev[0])
        return KeyValue(key=kv.key, value=kv.value, mod_revision=int(data["header"]["revision"]),
                        create_revision=kv.create_revision)
