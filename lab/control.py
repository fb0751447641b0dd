"""The control socket: how `etcdbot-lab status|fault|heal|down` talk to a running daemon.

One JSON object per line each way, over DIR/control.sock. Requests are validated here so a
bad command line changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab import faults, upgrade

if TYPE_CHECKING:
    from lab.daemon import LabDaemon


class LabError(Exception):
    """A request the lab refuses; its message is printed as the CLI's one-line error."""


async def handle(daemon: LabDaemon, request: dict[str, Any]) -> dict[str, Any]:
    cmd = request.get("cmd")
    if cmd == "ping":
        return {"ready": daemon.ready, "pid": os.getpid()}
    if not daemon.ready:
        raise LabError("the lab is still starting")
    if cmd == "status":
        return await daemon.status()
    if cmd == "fault":
        return {"message": await faults.apply(daemon, str(request.get("kind")), request.get("target"))}
    if cmd == "heal":
        return {"message": await faults.heal(daemon, request.get("target"))}
    if cmd == "power-on":
        target = request.get("target")
        hosts = [h for h in daemon.all_hosts() if not target or h.node == target]
        for host in hosts:
            await daemon.power_on(host, after_shutdown=True)
        return {"message": "powered on " + ", ".join(h.node for h in hosts)}
    if cmd == "upgrade":
        return {"message": await daemon.upgrades.start(str(request.get("version", "")))}
    if cmd == "down":
        daemon.stopping.set()
        return {"message": "stopping"}
    raise LabError(f"unknown request {cmd!r}")


async def serve(daemon: LabDaemon) -> asyncio.AbstractServer:
    path = daemon.dir / "control.sock"
    path.unlink(missing_ok=True)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                reply = {"ok": True, **(await handle(daemon, json.loads(line)))}
            except (LabError, faults.FaultError, upgrade.UpgradeError, KeyError, ValueError) as exc:
                reply = {"ok": False, "error": str(exc).strip("'\"")}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass  # the CLI gave up waiting (a ping under load): nobody to answer
        finally:
            writer.close()

    return await asyncio.start_unix_server(on_client, path=str(path))


async def request(lab_dir: Path, payload: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(lab_dir / "control.sock")), timeout)
    try:
        writer.write(json.dumps(payload).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    if not line:
        raise LabError("the lab daemon closed the connection")
    return json.loads(line)
