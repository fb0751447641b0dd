"""`ctx.hosts`: SSH to a cluster's nodes for a step, bound to the run's fence.

`bot/cluster/hosts.py` knows how to reach one node (asyncssh, timeouts, quoting). This wraps it
with what a procedure step needs and nothing a status check needs:
- reads (`run`, `session().run`, `download`) never wait on the lock;
- changes (`change`, `session().change`, `upload`) call the run's fence first, so a replica
  that lost the cluster's lock cannot act on a host;
- `masters()` answers with the API's view of the master role when the API answers (a restore or
  a member replacement must not mistake a worker for a master), else with the configured nodes.

The SSH user is an unprivileged `core`, as on RHCOS: commands on root-owned files say `sudo`
themselves, and an upload lands where `core` may write (move it into place with `sudo mv`).

Every command and upload is reported, with its exit status, to the `note` the shell was built
with (the engine writes it to the run's audit stream): what was sent to a host is on record
whatever the procedure.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import asyncssh

from bot.cluster.hosts import (
    CommandResult,
    HostCopyError,
    Hosts,
    HostSession,
    UnsafeCommandError,
    shell_command,
)

if TYPE_CHECKING:
    from bot.cluster.kube import KubeClient

Fence = Callable[[], Awaitable[None]]


class CommandNote(Protocol):
    """Told of every command sent (target: a node, or "api"), after it ended: its exit status
    (None: it never finished), how long it took, and the error when it did not finish."""

    async def __call__(self, *, target: str, command: str, rc: int | None, elapsed: float, error: str = "") -> None: ...


async def _noted(note: CommandNote | None, result: CommandResult) -> CommandResult:
    if note is not None:
        with contextlib.suppress(Exception):  # the record of a command must never fail the command
            await note(target=result.node, command=shell_command(result.argv), rc=result.rc, elapsed=result.elapsed,
                       error=result.error or "")
    return result


class UnfencedChange(RuntimeError):
    """A changing host command through a shell no run's fence was bound to: refused."""


class NodeSession:
    """Several commands on one node over one SSH connection (see `HostSession`)."""

    def __init__(self, session: HostSession, *, fence: Fence | None, note: CommandNote | None = None) -> None:
        self._session = session
        self._fence = fence
        self._note = note

    @property
    def node(self) -> str:
        return self._session.target.node

    async def __aenter__(self) -> NodeSession:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._session.close()

    async def run(self, *, argv: Sequence[str], timeout: float) -> CommandResult:
        """A command that reads (or whose change is the caller's own bookkeeping, like `id -u`)."""
        return await _noted(self._note, await self._session.run(argv=argv, timeout=timeout))

    async def change(self, *, argv: Sequence[str], timeout: float) -> CommandResult:
        """A command that changes the host: the fence first."""
        await _guard(self._fence, f"{argv[0] if argv else ''} on {self.node}")
        return await _noted(self._note, await self._session.run(argv=argv, timeout=timeout))


async def _guard(fence: Fence | None, what: str) -> None:
    if fence is None:
        raise UnfencedChange(f"{what}: a change needs a run's fence (use ctx.hosts in a step)")
    await fence()


class NodeShell:
    """The nodes of one cluster a step may reach over SSH (the configured `ssh.hosts`)."""

    def __init__(self, hosts: Hosts, *, kube: KubeClient | None = None, fence: Fence | None = None,
                 note: CommandNote | None = None) -> None:
        self._hosts = hosts
        self._kube = kube
        self._fence = fence
        self._note = note

    def with_fence(self, fence: Fence) -> NodeShell:
        return NodeShell(self._hosts, kube=self._kube, fence=fence, note=self._note)

    @property
    def nodes(self) -> tuple[str, ...]:
        """The masters with an SSH address (`ssh.hosts`)."""
        return self._hosts.nodes

    @property
    def workers(self) -> tuple[str, ...]:
        """The workers with an SSH address (`ssh.workers`): only the shutdown (chapter 3) needs them."""
        return self._hosts.workers

    @property
    def every_node(self) -> tuple[str, ...]:
        """Masters, then workers: every node this cluster's settings give an SSH address."""
        return (*self._hosts.nodes, *self._hosts.workers)

    async def masters(self) -> tuple[str, ...]:
        """The reachable nodes the API labels master, in configured order; the configured nodes
        when the API cannot say (it is down in the procedures that need SSH most)."""
        if self._kube is None:
            return self.nodes
        try:
            labelled = {str(n.get("metadata", {}).get("name", "")) for n in await self._kube.nodes_by_role("master")}
        except Exception:  # the API is down: SSH is the way in, and the configured hosts are the masters
            return self.nodes
        return tuple(n for n in self.nodes if n in labelled) or self.nodes

    def session(self, node: str) -> NodeSession:
        return NodeSession(self._hosts.session(node), fence=self._fence, note=self._note)

    async def run(self, *, node: str, argv: Sequence[str], timeout: float) -> CommandResult:
        """One command that reads; never raises for a dead host (rc None)."""
        return await _noted(self._note, await self._hosts.run(node=node, argv=argv, timeout=timeout))

    async def change(self, *, node: str, argv: Sequence[str], timeout: float) -> CommandResult:
        """One command that changes the host: the fence first, then as `run`."""
        await _guard(self._fence, f"{argv[0] if argv else ''} on {node}")
        return await _noted(self._note, await self._hosts.run(node=node, argv=argv, timeout=timeout))

    def download(self, *, node: str, path: str, chunk_size: int = 1 << 20, read_ahead: int = 8,
                 idle_timeout: float = 60.0) -> AsyncIterator[bytes]:
        """Streams a file off a node over SFTP (`Hosts.read_file`); the SSH user must be able to
        read it (`sudo chown` it first when root made it)."""
        return self._hosts.read_file(node=node, path=path, chunk_size=chunk_size, read_ahead=read_ahead,
                                     idle_timeout=idle_timeout)

    read_file = download  # the name `Hosts` uses, for steps written against it

    async def upload(self, *, node: str, data: bytes, path: str, mode: int = 0o600, timeout: float = 120.0) -> int:
        """Writes `data` to `path` on a node over SFTP (the fence first), in a temporary name
        renamed into place, so a reader never sees half a file. Returns the bytes written. The
        SSH user must be able to write the directory: upload beside it, then `sudo mv`."""
        if not path.startswith("/") or "\x00" in path or "\n" in path or ".." in path.split("/"):
            raise UnsafeCommandError(f"{path!r} is not an absolute path a step may write")
        await _guard(self._fence, f"upload {path} to {node}")
        target = self._hosts.target(node)
        partial = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.part")
        try:
            async with asyncio.timeout(timeout):
                conn: Any
                async with Hosts._connect(target, timeout=timeout) as conn:
                    async with conn.start_sftp_client() as sftp:
                        async with sftp.open(partial, "wb") as remote:
                            await remote.write(data)
                        await sftp.chmod(partial, mode)
                        await sftp.posix_rename(partial, path)
        except TimeoutError:
            raise HostCopyError(f"{node} did not take {path} within {timeout:.0f} s") from None
        except (OSError, asyncssh.Error) as exc:
            raise HostCopyError(f"writing {path} on {node} failed: {exc}") from exc
        return len(data)

    async def upload_file(self, *, node: str, source: Path, path: str, mode: int = 0o600,
                          timeout: float = 3600.0) -> int:
        """Streams a local file to `path` on a node over SFTP (the fence first; asyncssh's `put`
        reads it in blocks with requests in flight, so memory does not grow with the file), under a
        temporary name renamed into place: a reader never sees half a file. Returns the bytes sent."""
        if not path.startswith("/") or "\x00" in path or "\n" in path or ".." in path.split("/"):
            raise UnsafeCommandError(f"{path!r} is not an absolute path a step may write")
        await _guard(self._fence, f"upload {path} to {node}")
        target = self._hosts.target(node)
        partial = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.part")
        started = time.monotonic()
        command = f"sftp put {source.name} {path}"
        error = ""
        try:
            async with asyncio.timeout(timeout):
                conn: Any
                async with Hosts._connect(target, timeout=min(timeout, 30.0)) as conn:
                    async with conn.start_sftp_client() as sftp:
                        await sftp.put(str(source), partial)
                        await sftp.chmod(partial, mode)
                        await sftp.posix_rename(partial, path)
        except TimeoutError:
            error = f"{node} did not take {path} within {timeout:.0f} s"
            raise HostCopyError(error) from None
        except (OSError, asyncssh.Error) as exc:
            error = f"writing {path} on {node} failed: {exc}"
            raise HostCopyError(error) from exc
        finally:
            if self._note is not None:
                with contextlib.suppress(Exception):
                    await self._note(target=node, command=command, rc=None if error else 0,
                                     elapsed=time.monotonic() - started, error=error)
        return source.stat().st_size
