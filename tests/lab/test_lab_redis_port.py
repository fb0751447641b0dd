"""The lab's Redis port taken by another process between the spec and the start (several labs
start at once under xdist): `up` must fail saying "address already in use", so that the test
fixture starts the lab again on other ports, and never say ready with a Redis that is not there
(a bot would then talk to whatever holds the port: CI once saw an SSH banner)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab.daemon import LabDaemon


async def _taken_port() -> tuple[asyncio.Server, int]:
    async def banner(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-AsyncSSH_2.24.1\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


def _daemon(tmp_path: Path, port: int) -> LabDaemon:
    """Only what `_wait_for_redis` reads: the spec's port, the directory, the redis-server process."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "redis").mkdir()
    daemon = object.__new__(LabDaemon)
    daemon.spec = SimpleNamespace(redis_port=port)  # type: ignore[assignment]
    daemon.dir = tmp_path
    daemon.redis = None
    return daemon


async def test_a_taken_redis_port_fails_up_with_address_already_in_use(tmp_path: Path) -> None:
    server, port = await _taken_port()
    daemon = _daemon(tmp_path, port)
    try:
        await daemon._start_redis()
        with pytest.raises(RuntimeError) as failed:
            await daemon._wait_for_redis()
        assert "address already in use" in str(failed.value).lower(), failed.value
    finally:
        server.close()
        if daemon.redis is not None and daemon.redis.returncode is None:
            daemon.redis.kill()
        if daemon.redis is not None:
            await daemon.redis.wait()


async def test_a_free_port_answers_pong(tmp_path: Path) -> None:
    server, port = await _taken_port()
    server.close()
    await server.wait_closed()
    daemon = _daemon(tmp_path, port)
    try:
        await daemon._start_redis()
        await daemon._wait_for_redis()  # returns once redis-server answers PING
    finally:
        if daemon.redis is not None:
            daemon.redis.terminate()
            await daemon.redis.wait()
