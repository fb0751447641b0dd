"""A shell on a master over SSH (asyncssh), for when the Kubernetes API cannot help.

The document itself goes to the hosts when the API is gone (restore, shutdown, `crictl ps`).
Every command is a list of values, each checked and joined with `shlex.quote`: no text typed
in Slack reaches a shell unquoted. Every connection and command has a timeout; an error comes
back as a value (`CommandResult` with rc None) so a dead host is reported, not raised through
a status check.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import shlex
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import yaml

CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes128-ctr", "aes256-ctr")


class UnsafeCommandError(ValueError):
    """A command argument that must not reach a shell (NUL or newline)."""


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to log in to one master."""

    node: str
    host: str
    port: int
    user: str
    private_key: Path
    known_hosts: Path
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class CommandResult:
    """What a command did. rc is None when it never finished (no connection, timeout)."""

    node: str
    argv: tuple[str, ...]
    rc: int | None
    stdout: str
    stderr: str
    elapsed: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0


def shell_command(argv: Sequence[str]) -> str:
    """['sudo', 'cat', '/etc/x y'] -> "sudo cat '/etc/x y'", refusing values no command needs."""
    if not argv:
        raise UnsafeCommandError("empty command")
    for arg in argv:
        if not isinstance(arg, str):
            raise UnsafeCommandError(f"argument {arg!r} is not text")
        if "\x00" in arg or "\n" in arg or "\r" in arg:
            raise UnsafeCommandError(f"argument {arg!r} holds a control character")
    return " ".join(shlex.quote(arg) for arg in argv)


class Hosts:
    """The masters of one cluster, reachable by node name; and its workers, which only a step
    that names one reaches (`nodes` is the masters: everything etcd-related means them).

    `run` keeps one SSH connection per master open between commands (each command is a channel
    on it): a handshake costs a key exchange and, on a loaded master, a good part of a second,
    which a status in an incident cannot spend on every command. A connection the master drops
    is noticed (keepalives, or the drop itself) and reopened by the next command; a command whose
    channel could not even open on a stale connection is sent once more on a fresh one (it never
    started, so that is safe). `warm()` opens them ahead of need; `close()` closes them.
    """

    # OpenSSH's MaxSessions is 10 channels per connection; stay under it.
    CHANNELS_PER_HOST = 8
    KEEPALIVE = 15.0

    def __init__(self, targets: Mapping[str, SshTarget], *, workers: Mapping[str, SshTarget] | None = None) -> None:
        self._targets = dict(targets)
        self._workers = {k: v for k, v in (workers or {}).items() if k not in self._targets}
        self._pool: dict[str, Any] = {}
        self._opening: dict[str, asyncio.Future[Any]] = {}
        self._channels: dict[str, asyncio.Semaphore] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def nodes(self) -> tuple[str, ...]:
        """The masters."""
        return tuple(self._targets)

    @property
    def workers(self) -> tuple[str, ...]:
        """The worker nodes with an SSH address (`ssh.workers`)."""
        return tuple(self._workers)

    def target(self, node: str) -> SshTarget:
        try:
            return self._targets[node] if node in self._targets else self._workers[node]
        except KeyError:
            known = ", ".join((*self._targets, *self._workers)) or "none"
            raise KeyError(f"no SSH address for {node}; known: {known}") from None

    async def run(self, *, node: str, argv: Sequence[str], timeout: float) -> CommandResult:
        """Runs one command on one master; never raises for connection or command failures."""
        target = self.target(node)
        command = shell_command(argv)
        started = time.monotonic()

        def result(rc: int | None, stdout: str = "", stderr: str = "", error: str | None = None) -> CommandResult:
            return CommandResult(node=node, argv=tuple(argv), rc=rc, stdout=stdout, stderr=stderr,
                                 elapsed=time.monotonic() - started, error=error)

        process: Any = None
        try:
            async with asyncio.timeout(timeout), self._channel_slot(node):
                for attempt in (1, 2):
                    conn, fresh = await self._connection(target, timeout=timeout)
                    try:
                        process = await conn.create_process(command)
                        break
                    except asyncssh.ChannelOpenError:
                        self._discard(node, conn)
                        if fresh or attempt == 2:
                            raise
                completed = await process.wait(check=False)
        except TimeoutError:
            return result(None, error=f"no answer from {node} within {timeout:.0f}s")
        except (OSError, asyncssh.Error) as exc:
            return result(None, error=f"SSH to {node} failed: {exc}")
        finally:
            if process is not None and process.exit_status is None:
                process.close()  # timed out or cancelled: do not leave the channel open on the shared connection
        rc = completed.exit_status if completed.exit_status is not None else -1
        return result(rc, _text(completed.stdout), _text(completed.stderr))

    async def warm(self, *, timeout: float = 10.0) -> dict[str, str | None]:
        """Opens a connection to every master that has none; node -> None, or why it failed."""
        async def one(node: str) -> str | None:
            try:
                async with asyncio.timeout(timeout):
                    await self._connection(self.target(node), timeout=timeout)
            except TimeoutError:
                return f"no answer within {timeout:.0f}s"
            except (OSError, asyncssh.Error) as exc:
                return str(exc) or type(exc).__name__
            return None

        return dict(zip(self.nodes, await asyncio.gather(*(one(n) for n in self.nodes)), strict=True))

    async def close(self) -> None:
        """Closes the kept connections (at the bot's stop)."""
        pool, self._pool = self._pool, {}
        for conn in pool.values():
            conn.close()
        for conn in pool.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)

    def _same_loop(self) -> None:
        """Connections belong to the loop that opened them; a new loop (a test's) starts afresh."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._pool, self._opening, self._channels = {}, {}, {}

    def _channel_slot(self, node: str) -> asyncio.Semaphore:
        self._same_loop()
        return self._channels.setdefault(node, asyncio.Semaphore(self.CHANNELS_PER_HOST))

    async def _connection(self, target: SshTarget, *, timeout: float) -> tuple[Any, bool]:
        """(connection, freshly opened). Concurrent callers share one handshake; a caller that
        gives up does not cancel it for the others."""
        self._same_loop()
        node = target.node
        conn = self._pool.get(node)
        if conn is not None and not conn.is_closed():
            return conn, False
        opening = self._opening.get(node)
        if opening is None:
            opening = asyncio.ensure_future(self._open(target, timeout=timeout))
            self._opening[node] = opening
            opening.add_done_callback(functools.partial(self._opened, node))
        return await asyncio.shield(opening), True

    def _opened(self, node: str, done: asyncio.Future[Any]) -> None:
        if self._opening.get(node) is done:
            del self._opening[node]
        if not done.cancelled():
            done.exception()  # retrieved here: every waiter may have given up already

    async def _open(self, target: SshTarget, *, timeout: float) -> Any:
        conn = await self._connect(target, timeout=timeout, keepalive=self.KEEPALIVE)
        self._pool[target.node] = conn
        return conn

    def _discard(self, node: str, conn: Any) -> None:
        if self._pool.get(node) is conn:
            del self._pool[node]
        conn.close()

    def session(self, node: str) -> HostSession:
        """Several commands over one SSH connection (`async with hosts.session(node) as s`); each
        handshake costs a round of key exchange, which adds up over a procedure's commands."""
        return HostSession(target=self.target(node))

    @staticmethod
    def _connect(target: SshTarget, *, timeout: float, keepalive: float = 0.0) -> Any:  # asyncssh's awaitable context manager
        return asyncssh.connect(
            target.host,
            port=target.port,
            username=target.user,
            client_keys=[str(target.private_key)],
            known_hosts=str(target.known_hosts),
            connect_timeout=min(target.connect_timeout, timeout),
            agent_path=None,
            # A host key we do not know is refused; a proxy or config file must not redirect us.
            config=None,
            # AES-GCM first: CPUs do it in hardware, and a backup copy is hundreds of MB (measured
            # twice as fast as asyncssh's default chacha20 here); no compression of etcd's data.
            encryption_algs=CIPHERS,
            compression_algs=None,
            # A kept connection learns that its master is gone within two missed keepalives.
            keepalive_interval=keepalive,
            keepalive_count_max=2,
        )

    async def read_file(
        self, *, node: str, path: str, chunk_size: int = 1 << 20, read_ahead: int = 8, idle_timeout: float = 60.0
    ) -> AsyncIterator[bytes]:
        """Streams a file off a master over SFTP, in order, `chunk_size` bytes at a time, with up to
        `read_ahead` chunks requested ahead (asyncssh splits each into parallel requests; without
        read-ahead the pipe would drain between chunks). Each chunk must arrive within
        `idle_timeout`; a dropped connection raises `HostCopyError`. Memory stays at about
        `read_ahead + 1` chunks, whatever the file's size."""
        target = self.target(node)
        if "\x00" in path or "\n" in path:
            raise UnsafeCommandError(f"path {path!r} holds a control character")
        pending: deque[asyncio.Task[bytes]] = deque()
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout(idle_timeout):
                    conn = await stack.enter_async_context(self._connect(target, timeout=idle_timeout))
                    sftp = await stack.enter_async_context(await conn.start_sftp_client())
                    remote = await stack.enter_async_context(await sftp.open(path, "rb"))
                    size = (await remote.stat()).size or 0
                offsets = iter(range(0, size, chunk_size))
                try:
                    for offset in offsets:
                        pending.append(asyncio.ensure_future(remote.read(chunk_size, offset)))
                        if len(pending) >= read_ahead:
                            break
                    while pending:
                        async with asyncio.timeout(idle_timeout):
                            chunk = await pending.popleft()
                        offset = next(offsets, None)
                        if offset is not None:
                            pending.append(asyncio.ensure_future(remote.read(chunk_size, offset)))
                        if chunk:
                            yield chunk
                finally:
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
        except TimeoutError:
            raise HostCopyError(f"{node} sent nothing for {idle_timeout:.0f} s while copying {path}") from None
        except (OSError, asyncssh.Error) as exc:
            raise HostCopyError(f"copying {path} from {node} failed: {exc}") from exc


class HostSession:
    """One master over one lazily opened SSH connection; like `Hosts.run`, it never raises for a
    dead host or a failed command (rc None / non-zero), and a lost connection is reopened once
    on the next command."""

    def __init__(self, *, target: SshTarget) -> None:
        self.target = target
        self._conn: Any = None

    async def __aenter__(self) -> HostSession:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)

    async def run(self, *, argv: Sequence[str], timeout: float) -> CommandResult:
        command = shell_command(argv)
        node = self.target.node
        started = time.monotonic()

        def result(rc: int | None, stdout: str = "", stderr: str = "", error: str | None = None) -> CommandResult:
            return CommandResult(node=node, argv=tuple(argv), rc=rc, stdout=stdout, stderr=stderr,
                                 elapsed=time.monotonic() - started, error=error)

        try:
            async with asyncio.timeout(timeout):
                if self._conn is None:
                    self._conn = await Hosts._connect(self.target, timeout=timeout)
                completed = await self._conn.run(command, check=False)
        except TimeoutError:
            await self.close()
            return result(None, error=f"no answer from {node} within {timeout:.0f}s")
        except (OSError, asyncssh.Error) as exc:
            await self.close()
            return result(None, error=f"SSH to {node} failed: {exc}")
        rc = completed.exit_status if completed.exit_status is not None else -1
        return result(rc, _text(completed.stdout), _text(completed.stderr))


class HostCopyError(Exception):
    """A file could not be streamed off a master (connection lost, no such file, timeout)."""


def _text(data: object) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return str(data)


# ---- crictl ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrictlContainer:
    """One row of `crictl ps`."""

    id: str
    image: str
    created: str
    state: str
    name: str
    attempt: int
    pod_id: str
    pod: str = ""


def crictl_ps_command(*, all_states: bool = True) -> list[str]:
    return ["sudo", "crictl", "ps", *(["-a"] if all_states else [])]


def parse_crictl_ps(stdout: str) -> tuple[CrictlContainer, ...]:
    """Parses crictl's table (`CONTAINER IMAGE CREATED STATE NAME ATTEMPT POD ID [POD]`).

    crictl pads columns with a tabwriter, so the header's column starts are every row's column
    starts; CREATED holds spaces ("2 hours ago"), which is why rows are cut at those offsets and
    not split on whitespace.
    """
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return ()
    header = lines[0]
    if not header.startswith("CONTAINER"):
        raise ValueError(f"not crictl ps output: {header[:80]!r}")
    # Titles are separated by the tabwriter's padding (3+ spaces); "POD ID" holds a single space.
    starts = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", header)]
    rows = []
    for line in lines[1:]:
        cells: dict[str, str] = {}
        for position, (start, name) in enumerate(starts):
            end = starts[position + 1][0] if position + 1 < len(starts) else None
            cells[name] = line[start:end].strip()
        attempt = cells.get("ATTEMPT", "0")
        rows.append(
            CrictlContainer(
                id=cells.get("CONTAINER", ""),
                image=cells.get("IMAGE", ""),
                created=cells.get("CREATED", ""),
                state=cells.get("STATE", ""),
                name=cells.get("NAME", ""),
                attempt=int(attempt) if attempt.isdigit() else 0,
                pod_id=cells.get("POD ID", ""),
                pod=cells.get("POD", ""),
            )
        )
    return tuple(rows)


# ---- the etcd static pod manifest ---------------------------------------------------------

ETCD_MANIFEST = "/etc/kubernetes/manifests/etcd-pod.yaml"
ETCDCTL_ENV_NAMES = ("ETCDCTL_API", "ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY", "ETCDCTL_ENDPOINTS")


def read_manifest_command() -> list[str]:
    return ["sudo", "cat", ETCD_MANIFEST]


def etcdctl_env_from_manifest(text: str) -> dict[str, str]:
    """The etcdctl container's ETCDCTL_* env from the etcd static pod: what makes etcdctl work on the host."""
    pod = yaml.safe_load(text)
    if not isinstance(pod, dict):
        raise ValueError("etcd-pod.yaml is not a pod")
    containers = pod.get("spec", {}).get("containers", []) or []
    by_name = {c.get("name"): c for c in containers if isinstance(c, dict)}
    container = by_name.get("etcdctl") or by_name.get("etcd")
    if container is None:
        raise ValueError("etcd-pod.yaml has no etcdctl container")
    env = {e["name"]: str(e.get("value", "")) for e in container.get("env", []) or [] if "name" in e}
    found = {k: v for k, v in env.items() if k in ETCDCTL_ENV_NAMES and v}
    missing = [k for k in ("ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY", "ETCDCTL_ENDPOINTS") if k not in found]
    if missing:
        raise ValueError(f"etcd-pod.yaml's etcdctl container lacks {', '.join(missing)}")
    found.setdefault("ETCDCTL_API", "3")
    return found


def host_etcdctl_command(*, env: Mapping[str, str], etcdctl_argv: Sequence[str]) -> list[str]:
    """`sudo env ETCDCTL_...=... etcdctl ...`: the host's certificates are root's to read."""
    for key in env:
        if key not in ETCDCTL_ENV_NAMES:
            raise UnsafeCommandError(f"unexpected environment variable {key}")
    return ["sudo", "env", *(f"{k}={v}" for k, v in sorted(env.items())), *etcdctl_argv]
