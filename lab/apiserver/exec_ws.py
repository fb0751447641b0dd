"""`pods/exec` over WebSocket: the channel.k8s.io framing kubectl 1.32 (v5) and the Python
client (v4/v5) speak, bridged to a local subprocess the lab's exec handler starts.

Framing: every binary message starts with a channel byte (0 stdin, 1 stdout, 2 stderr,
3 error/status JSON, 4 resize; v5 adds 255 = close a stream, e.g. stdin EOF). The exit status
goes on channel 3 as a Status so kubectl exits with the command's code and the Python client's
`returncode` is right. SPDY is not spoken: kubectl only falls back to it when the upgrade fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import Any

from aiohttp import WSMsgType, web

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
CHUNK = 32 * 1024
OUTPUT_DRAIN_S = 5.0


def exit_status(code: int) -> dict[str, Any]:
    """The Status the kubelet reports on the error channel for an exit code."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def _exit_code(returncode: int | None) -> int:
    if returncode is None:
        return 137
    if returncode < 0:  # killed by a signal: report it like a shell does
        return 128 + (-returncode if -returncode in signal.valid_signals() else 9)
    return returncode


async def _pump(stream: asyncio.StreamReader | None, ws: web.WebSocketResponse, channel: int) -> None:
    if stream is None:
        return
    while chunk := await stream.read(CHUNK):
        if ws.closed:
            return
        await ws.send_bytes(bytes([channel]) + chunk)


async def _feed_stdin(ws: web.WebSocketResponse, proc: asyncio.subprocess.Process, *, v5: bool) -> None:
    """Client -> process stdin until the client closes stdin (v5) or the socket."""
    stdin = proc.stdin
    try:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY or not msg.data:
                continue
            channel, payload = msg.data[0], msg.data[1:]
            if channel == STDIN and stdin is not None and not stdin.is_closing():
                stdin.write(payload)
                with contextlib.suppress(ConnectionError):
                    await stdin.drain()
            elif channel == CLOSE and v5 and payload[:1] == bytes([STDIN]) and stdin is not None:
                stdin.close()
            # RESIZE: the lab's commands have no terminal size to set.
    finally:
        if stdin is not None and not stdin.is_closing():
            stdin.close()


async def serve_exec(
    request: web.Request, proc: asyncio.subprocess.Process, *, stdin: bool, heartbeat: float = 30.0
) -> web.WebSocketResponse:
    """Upgrade and bridge until the process exits (then report its status) or the client leaves
    (then kill the process, so nothing outlives its session)."""
    ws = web.WebSocketResponse(protocols=PROTOCOLS, heartbeat=heartbeat, max_msg_size=16 * 1024 * 1024)
    try:
        await ws.prepare(request)
    except Exception:
        _kill(proc)
        await proc.wait()
        raise
    v5 = ws.ws_protocol == "v5.channel.k8s.io"
    if not stdin and proc.stdin is not None:
        proc.stdin.close()
    reader = asyncio.create_task(_feed_stdin(ws, proc, v5=v5))
    outputs = asyncio.gather(_pump(proc.stdout, ws, STDOUT), _pump(proc.stderr, ws, STDERR))
    waiter = asyncio.ensure_future(proc.wait())
    try:
        done, _ = await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            # The client went away before the command finished.
            _kill(proc)
            await proc.wait()
        # A background child may hold the pipes open after the command exits: bounded wait.
        with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(outputs), OUTPUT_DRAIN_S)
        if not ws.closed:
            status = exit_status(_exit_code(proc.returncode))
            await ws.send_bytes(bytes([ERROR]) + json.dumps(status).encode())
            await ws.close()
    finally:
        reader.cancel()
        outputs.cancel()
        if proc.returncode is None:
            _kill(proc)
            await proc.wait()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
    return ws


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
