"""SSH into a lab master: one asyncssh server per host, on its own loopback port.

Why asyncssh rather than a real sshd: a real sshd would need a system user, PAM and a config per
host; the lab needs commands to land in the host's root (``lab.hosts``), to be cut off on demand
(power-off, the SSH faults) and to start again on the same port, all from the daemon's event
loop. What a client sees is what OpenSSH on RHCOS gives user ``core``: public key auth only, a
stable host key (the lab writes it to known_hosts), exec requests run by ``bash -c``, an
interactive login shell on a pty owned by core, exit statuses and signals, and SFTP (so ``scp``
works) served by OpenSSH's own ``sftp-server``. Every session process runs as the unprivileged
``core`` (uid 1000, ``lab.hosts.CORE``); only ``sudo`` raises to root.

Session processes run in their own session (``spawn_in_host``). When a connection goes away, a
pty session gets a hangup (its pty master is closed, as sshd does), a non-pty command only loses
its pipes (it keeps running like under a real sshd); ``stop()`` additionally kills every session
process, because it is what powering the host off does.

SSH faults (``lab.faults``), each lasting until ``heal``: ``block()`` closes the listener so
connections are refused, as on a host whose sshd is down; ``stall()`` keeps accepting and
authenticating, but no command (nor SFTP) starts until ``heal()``, as on a half-dead host; a
command still waiting then runs, one whose client gave up never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import os
import signal
import struct
import termios
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.constants import EXTENDED_DATA_STDERR

from lab.hosts import CORE, CORE_HOME, kill_group, spawn_in_host

USER = "core"
_CHUNK = 65536
# OpenSSH's SFTP server (RHCOS: /usr/libexec/openssh/sftp-server; Debian's package path here,
# as the host's /usr is the machine's). Package openssh-sftp-server.
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
TTY_GID = 5  # group tty: sshd hands the user a pty owned by user:tty, mode 0620


def _write_key(path: Path, key: asyncssh.SSHKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(key.export_private_key())
    tmp.chmod(0o600)
    os.replace(tmp, path)
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key())


def ensure_host_key(path: Path) -> None:
    """An ed25519 host key at ``path`` (and ``path.pub``), created once so known_hosts stays valid."""
    if not path.exists():
        _write_key(path, asyncssh.generate_private_key("ssh-ed25519", comment="etcdbot-lab host key"))
    elif not path.with_name(path.name + ".pub").exists():
        path.with_name(path.name + ".pub").write_bytes(asyncssh.read_private_key(str(path)).export_public_key())


def ensure_client_key(path: Path) -> None:
    """The lab's ed25519 key for user ``core`` (OpenSSH format at ``path``, public key at ``path.pub``)."""
    if not path.exists():
        _write_key(path, asyncssh.generate_private_key("ssh-ed25519", comment="core@etcdbot-lab"))
    elif not path.with_name(path.name + ".pub").exists():
        path.with_name(path.name + ".pub").write_bytes(asyncssh.read_private_key(str(path)).export_public_key())


def known_hosts_line(host: str, port: int, host_key_path: Path) -> str:
    """``[127.0.0.1]:2222 ssh-ed25519 AAAA...`` (OpenSSH's form; plain host for port 22)."""
    key = asyncssh.read_private_key(str(host_key_path))
    algo, blob = key.export_public_key("openssh").decode().split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {algo} {blob}"


class _Session(asyncssh.SSHServerProcess[bytes]):
    """A session whose ``sftp`` subsystem goes to the process factory like a command.

    asyncssh serves SFTP itself, inside the daemon (root); a real sshd execs ``sftp-server`` as
    the user. Taking the subsystem here lets the lab run OpenSSH's own as ``core``, so what core
    may read or write over SFTP and scp is what the kernel allows uid 1000.
    """

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "sftp" and os.path.exists(SFTP_SERVER)

    def session_started(self) -> None:
        if self.channel.get_subsystem() != "sftp":
            super().session_started()
            return
        # What asyncssh does for a command session (SSHServerStreamSession.session_started).
        stdin: asyncssh.SSHReader[bytes] = asyncssh.SSHReader(self, self.channel)
        stdout: asyncssh.SSHWriter[bytes] = asyncssh.SSHWriter(self, self.channel)
        stderr: asyncssh.SSHWriter[bytes] = asyncssh.SSHWriter(self, self.channel, EXTENDED_DATA_STDERR)
        handler = self._start_process(stdin, stdout, stderr)
        if inspect.isawaitable(handler):
            asyncio.ensure_future(handler)


class _ConnectionHandler(asyncssh.SSHServer):
    """Per-connection auth policy: user core, public key only, keys read at each login."""

    def __init__(self, owner: HostSSHServer):
        self._owner = owner
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._owner._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        if username == USER and self._conn is not None:
            try:
                self._conn.set_authorized_keys(asyncssh.read_authorized_keys(str(self._owner.authorized_keys_path)))
            except (OSError, ValueError):
                pass  # no keys: every attempt fails, as with a missing authorized_keys
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def session_requested(self) -> _Session:
        return _Session(self._owner._session, None, 0, False)


class HostSSHServer:
    """The SSH endpoint of one master. ``start``/``stop`` may alternate (power cycles, faults)."""

    def __init__(
        self,
        *,
        node: str,
        root: Path,
        port: int,
        host_key_path: Path,
        authorized_keys_path: Path,
        host: str = "127.0.0.1",
    ):
        self.node = node
        self.root = Path(root)
        self.port = port
        self.host = host
        self.host_key_path = Path(host_key_path)
        self.authorized_keys_path = Path(authorized_keys_path)
        self._listener: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._procs: set[asyncio.subprocess.Process] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.blocked = False
        self._flowing = asyncio.Event()  # cleared while stalled
        self._flowing.set()
        self._session = self._track(self._handle_process)

    @property
    def running(self) -> bool:
        return self._listener is not None

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    async def start(self) -> None:
        """Listen (again). A no-op while blocked: power cycles do not lift an SSH outage, heal does."""
        if self._listener is not None or self.blocked:
            return
        ensure_host_key(self.host_key_path)
        self._listener = await asyncssh.create_server(
            lambda: _ConnectionHandler(self),
            self.host,
            self.port,
            server_host_keys=[str(self.host_key_path)],
            encoding=None,
            line_editor=False,
            reuse_address=True,
            login_timeout=30,
        )

    async def block(self) -> None:
        """SSH down: refuse connections and cut the open ones (their commands keep running)."""
        self.blocked = True
        await self.stop(kill_sessions=False)

    def stall(self) -> None:
        """Half-dead host: connections and logins succeed, commands wait for ``heal()``."""
        self._flowing.clear()

    def heal(self) -> None:
        """End ``block()`` and ``stall()``: waiting commands start; ``start()`` listens again."""
        self.blocked = False
        self._flowing.set()

    async def stop(self, *, kill_sessions: bool = True) -> None:
        """Close the listener, drop every connection and (by default) kill session processes."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.wait_closed(), 5)
        self.drop_connections()
        if kill_sessions:
            for proc in list(self._procs):
                kill_group(proc, signal.SIGKILL)
            for proc in list(self._procs):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 5)
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def drop_connections(self) -> None:
        """Cut every open connection at once (no disconnect message), as a network drop does."""
        for conn in list(self._connections):
            conn.abort()
        self._connections.clear()

    # ---- sessions ------------------------------------------------------------------------------

    def _track(
        self, handler: Callable[[asyncssh.SSHServerProcess], Awaitable[None]]
    ) -> Callable[[asyncssh.SSHServerProcess], Awaitable[None]]:
        async def run(process: asyncssh.SSHServerProcess) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
            try:
                await handler(process)
            finally:
                if task is not None:
                    self._tasks.discard(task)

        return run

    def _session_env(self, process: asyncssh.SSHServerProcess, term: str | None) -> dict[str, str]:
        conn = process.channel.get_connection()
        peer = conn.get_extra_info("peername") or ("127.0.0.1", 0)
        local = conn.get_extra_info("sockname") or (self.host, self.port)
        env = {
            "SSH_CLIENT": f"{peer[0]} {peer[1]} {local[1]}",
            "SSH_CONNECTION": f"{peer[0]} {peer[1]} {local[0]} {local[1]}",
            "MAIL": "/var/spool/mail/core",
        }
        if term:
            env["TERM"] = term
        return env

    async def _handle_process(self, process: asyncssh.SSHServerProcess) -> None:
        if not await self._wait_flowing(process):
            return  # stalled, and the client gave up: the command never starts
        if process.subsystem and (process.subsystem != "sftp" or not os.path.exists(SFTP_SERVER)):
            detail = "" if process.subsystem != "sftp" else f" (lab: install openssh-sftp-server for {SFTP_SERVER})"
            process.stderr.write(f"subsystem request failed on channel: {process.subsystem}{detail}\n".encode())
            process.exit(1)
            return
        command = process.command
        term = process.get_terminal_type()
        env = self._session_env(process, term)
        if process.subsystem:
            argv = [SFTP_SERVER]
        else:
            argv = ["bash", "-c", command] if command is not None else ["bash", "-l"]
        try:
            if term and not process.subsystem:
                status = await self._run_pty(process, argv, env)
            else:
                status = await self._run_pipes(process, argv, env)
        except Exception as exc:  # a broken session must not take the server down
            with contextlib.suppress(Exception):
                process.stderr.write(f"lab sshd: {exc}\n".encode())
            status = 255
        _finish(process, status)

    async def _wait_flowing(self, process: asyncssh.SSHServerProcess) -> bool:
        """Hold a session while stalled; False if its channel closed first."""
        if self._flowing.is_set():
            return True
        flowing = asyncio.create_task(self._flowing.wait())
        closed = asyncio.create_task(process.channel.wait_closed())
        try:
            await asyncio.wait({flowing, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            flowing.cancel()
            closed.cancel()
        return self._flowing.is_set() and not process.channel.is_closing()

    async def _run_pipes(self, process: asyncssh.SSHServerProcess, argv: list[str], env: dict[str, str]) -> int | None:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            proc = await spawn_in_host(self.root, argv, env=env, cwd=CORE_HOME, stdin=in_r, stdout=out_w, stderr=err_w,
                                       user=CORE)
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        self._procs.add(proc)
        loop = asyncio.get_running_loop()
        stdin_w = await _pipe_writer(loop, in_w)
        out = _FdReader(loop, out_r)
        err = _FdReader(loop, err_r)
        feeder = asyncio.create_task(_feed(process, stdin_w, proc))
        closed = asyncio.create_task(process.channel.wait_closed())
        copies = asyncio.gather(_copy(out, process.stdout), _copy(err, process.stderr))
        try:
            done, _ = await asyncio.wait({copies, closed}, return_when=asyncio.FIRST_COMPLETED)
            if closed in done:
                return None  # client gone: the command keeps running without its pipes
            status = await proc.wait()
            return status
        finally:
            feeder.cancel()
            closed.cancel()
            copies.cancel()
            out.close()
            err.close()
            stdin_w.close()
            self._forget_when_done(proc)

    async def _run_pty(self, process: asyncssh.SSHServerProcess, argv: list[str], env: dict[str, str]) -> int | None:
        master, slave = os.openpty()
        width, height, pixw, pixh = process.get_terminal_size()
        _set_winsize(master, width, height, pixw, pixh)
        env["SSH_TTY"] = os.ttyname(slave)
        try:
            os.fchown(slave, CORE.uid, TTY_GID)  # as sshd does: the user's own terminal
            os.fchmod(slave, 0o620)
            proc = await spawn_in_host(
                self.root, argv, env=env, cwd=CORE_HOME, stdin=slave, stdout=slave, stderr=slave,
                controlling_tty=True, user=CORE,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._procs.add(proc)
        loop = asyncio.get_running_loop()
        master_w = await _pipe_writer(loop, os.dup(master))
        out = _FdReader(loop, master)
        feeder = asyncio.create_task(_feed(process, master_w, proc, winsize_fd=master, close_at_eof=False))
        closed = asyncio.create_task(process.channel.wait_closed())
        copy = asyncio.create_task(_copy(out, process.stdout))
        exited = asyncio.create_task(proc.wait())
        try:
            done, _ = await asyncio.wait({exited, closed}, return_when=asyncio.FIRST_COMPLETED)
            if exited not in done:
                kill_group(proc, signal.SIGHUP)  # the hangup a closed pty master also delivers
                return None
            # drain what the shell wrote before exiting; background holders of the pty get a hangup
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(copy), 0.5)
            return proc.returncode
        finally:
            for task in (feeder, closed, copy, exited):
                task.cancel()
            out.close()
            master_w.close()
            self._forget_when_done(proc)

    def _forget_when_done(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is not None:
            self._procs.discard(proc)
            return

        async def reap() -> None:
            with contextlib.suppress(Exception):
                await proc.wait()
            self._procs.discard(proc)

        task = asyncio.get_running_loop().create_task(reap())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _finish(process: asyncssh.SSHServerProcess, status: int | None) -> None:
    with contextlib.suppress(Exception):
        if status is None:
            process.close()
        elif status < 0:
            try:
                name = signal.Signals(-status).name.removeprefix("SIG")
            except ValueError:
                name = "KILL"
            process.exit_with_signal(name)
        else:
            process.exit(status)


def _set_winsize(fd: int, width: int, height: int, pixw: int, pixh: int) -> None:
    if width and height:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, pixw, pixh))


class _FdReader:
    """Non-blocking reads of a pipe or pty master fd; EOF (or EIO of a hung-up pty) -> b''."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int):
        self._loop = loop
        self._fd = fd
        os.set_blocking(fd, False)
        self._closed = False

    async def read(self) -> bytes:
        while not self._closed:
            try:
                return os.read(self._fd, _CHUNK)
            except BlockingIOError:
                pass
            except OSError:
                return b""  # EIO: the pty has no more writers
            ready: asyncio.Future[None] = self._loop.create_future()
            self._loop.add_reader(self._fd, _set_ready, ready)
            try:
                await ready
            finally:
                self._loop.remove_reader(self._fd)
        return b""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self._fd)


def _set_ready(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _pipe_writer(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamWriter:
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb", 0))
    return asyncio.StreamWriter(transport, protocol, None, loop)


async def _copy(reader: _FdReader, writer: asyncssh.SSHWriter) -> None:
    while True:
        data = await reader.read()
        if not data:
            return
        try:
            writer.write(data)
            await writer.drain()
        except Exception:
            return


async def _feed(
    process: asyncssh.SSHServerProcess,
    writer: asyncio.StreamWriter,
    proc: asyncio.subprocess.Process,
    *,
    winsize_fd: int | None = None,
    close_at_eof: bool = True,
) -> None:
    """Client stdin -> the command; window changes and signals from the client are applied."""
    while True:
        try:
            data = await process.stdin.read(_CHUNK)
        except asyncssh.TerminalSizeChanged as change:
            if winsize_fd is not None:
                _set_winsize(winsize_fd, change.width, change.height, change.pixwidth, change.pixheight)
            continue
        except asyncssh.SignalReceived as sig:
            with contextlib.suppress(ValueError, ProcessLookupError):
                proc.send_signal(signal.Signals[f"SIG{sig.signal}"])
            continue
        except asyncssh.BreakReceived:
            continue
        except Exception:
            break
        if not data:
            break
        try:
            writer.write(data)
            await writer.drain()
        except (BrokenPipeError, ConnectionResetError, OSError):
            return
    if close_at_eof:
        writer.close()
    else:
        with contextlib.suppress(Exception):
            writer.write(b"\x04")  # a client's EOF on a pty is the terminal's EOF character
