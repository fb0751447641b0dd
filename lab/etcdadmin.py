"""The few etcd cluster calls the lab's controllers make (member list/add/remove, health),
over etcd's JSON gateway with the lab's client certificate. The bot never uses this: it reaches
etcd the documented ways (etcdctl in a pod, or on a host).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp


class EtcdUnavailable(Exception):
    """No endpoint answered in time."""


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]

    @property
    def hex_id(self) -> str:
        return f"{self.id:x}"


class EtcdAdmin:
    def __init__(self, *, ca_file: Path, cert_file: Path, key_file: Path, timeout: float = 2.0) -> None:
        self._ssl = ssl.create_default_context(cafile=str(ca_file))
        self._ssl.load_cert_chain(str(cert_file), str(key_file))
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _post(self, endpoints: list[str], path: str, body: dict) -> dict:
        last: Exception | None = None
        for endpoint in endpoints:
            try:
                async with self._http().post(endpoint + path, json=body, ssl=self._ssl) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status != 200:
                        raise EtcdUnavailable(f"{endpoint}: {data.get('error') or data}")
                    return data
            except (aiohttp.ClientError, TimeoutError, EtcdUnavailable) as exc:
                last = exc
        raise EtcdUnavailable(str(last) if last else "no endpoints")

    async def member_list(self, endpoints: list[str]) -> list[Member]:
        data = await self._post(endpoints, "/v3/cluster/member/list", {"linearizable": True})
        return [
            Member(id=int(m["ID"]), name=m.get("name", ""), peer_urls=tuple(m.get("peerURLs", [])),
                   client_urls=tuple(m.get("clientURLs", [])))
            for m in data.get("members", [])
        ]

    async def member_add(self, endpoints: list[str], *, peer_url: str) -> int:
        data = await self._post(endpoints, "/v3/cluster/member/add", {"peerURLs": [peer_url]})
        return int(data["member"]["ID"])

    async def member_remove(self, endpoints: list[str], *, member_id: int) -> None:
        await self._post(endpoints, "/v3/cluster/member/remove", {"ID": str(member_id)})

    async def healthy(self, endpoint: str) -> bool:
        """What `etcdctl endpoint health` asks: can this member serve a quorum read?"""
        try:
            async with self._http().get(endpoint + "/health", ssl=self._ssl) as resp:
                data = await resp.json(content_type=None)
                return resp.status == 200 and data.get("health") in ("true", True)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False

    async def health_map(self, endpoints: list[str]) -> dict[str, bool]:
        results = await asyncio.gather(*(self.healthy(e) for e in endpoints))
        return dict(zip(endpoints, results, strict=True))
