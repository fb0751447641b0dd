"""lab.sshd: SSH into a lab host with the real OpenSSH client and with asyncssh."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from lab.hosts import create_host_root
from lab.sshd import HostSSHServer, ensure_client_key, ensure_host_key, known_hosts_line

NODE = "master-0"


@dataclass
class SSHLab:
    root: Path
    server: HostSSHServer
    key: Path
    known_hosts: Path
    port: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[SSHLab]:
    root = tmp_path / "hosts" / NODE
    create_host_root(root, node=NODE)
    ssh_dir = tmp_path / "ssh"
    key, host_key = ssh_dir / "id_ed25519", ssh_dir / f"host_{NODE}"
    ensure_client_key(key)
    ensure_host_key(host_key)
    (ssh_dir / "authorized_keys").write_bytes(key.with_name("id_ed25519.pub").read_bytes())
    port = _free_port()
    (ssh_dir / "known_hosts").write_text(known_hosts_line("127.0.0.1", port, host_key) + "\n")
    server = HostSSHServer(node=NODE, root=root, port=port, host_key_path=host_key,
                           authorized_keys_path=ssh_dir / "authorized_keys")
    await server.start()
    try:
        yield SSHLab(root, server, key, ssh_dir / "known_hosts", port)
    finally:
        await server.stop()
        assert not server._procs


def _ssh_opts(lab: SSHLab, key: Path | None = None, known_hosts: Path | None = None) -> list[str]:
    return ["-F", "/dev/null", "-i", str(key or lab.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts or lab.known_hosts}",
            "-o", "ConnectTimeout=10"]


async def _run(*argv: str, stdin: bytes | None = None, deadline: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), deadline)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _ssh(lab: SSHLab, command: str, *, user: str = "core", key: Path | None = None,
               known_hosts: Path | None = None, stdin: bytes | None = None) -> tuple[int, str, str]:
    return await _run("ssh", *_ssh_opts(lab, key, known_hosts), "-p", str(lab.port), f"{user}@127.0.0.1", command,
                      stdin=stdin)


def _write_containers(root: Path) -> None:
    now = time.time()
    containers = [{"id": "3ad41b7908e32" + "a" * 51, "image": "36f86e2eeaaffe662df0d21041eb22b8198e0e58abeeae8c743c3e6e977e8009",
                   "created": now - 70, "state": "Running", "name": "etcd", "attempt": 0,
                   "pod_id": "7c05f8af362f0" + "b" * 51, "pod": f"etcd-{NODE}", "namespace": "openshift-etcd"}]
    (root / "run/lab/containers.json").write_text(json.dumps({"containers": containers}))


async def test_real_ssh_client_exec(lab: SSHLab) -> None:
    _write_containers(lab.root)
    rc, out, err = await _ssh(lab, "sudo crictl ps | grep etcd | grep -v operator")
    assert rc == 0, err
    assert out.split() == ["3ad41b7908e32", "36f86e2eeaaffe662df0d21041eb22b8198e0e58abeeae8c743c3e6e977e8009",
                           "About", "a", "minute", "ago", "Running", "etcd", "0", "7c05f8af362f0"]

    rc, out, err = await _ssh(lab, "hostname; pwd; echo to-err >&2; exit 3")
    assert (rc, out, err) == (3, f"{NODE}\n/home/core\n", "to-err\n")

    rc, out, _ = await _ssh(lab, "cat > /home/core/in.txt && wc -c < /home/core/in.txt", stdin=b"x" * 100_000)
    assert (rc, out.strip()) == (0, "100000")
    assert (lab.root / "home/core/in.txt").read_bytes() == b"x" * 100_000

    rc, _, err = await _ssh(lab, "crictl ps")  # not through sudo: refused as for a non-root user
    assert rc == 1 and "make sure you are running as root" in err


async def test_real_ssh_client_refusals(lab: SSHLab, tmp_path: Path) -> None:
    rc, _, err = await _ssh(lab, "true", user="root")
    assert rc == 255 and "Permission denied (publickey)" in err

    other = tmp_path / "other_key"
    ensure_client_key(other)
    rc, _, err = await _ssh(lab, "true", key=other)
    assert rc == 255 and "Permission denied (publickey)" in err

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    rc, _, err = await _ssh(lab, "true", known_hosts=empty)
    assert rc == 255 and "Host key verification failed" in err


async def test_real_scp(lab: SSHLab, tmp_path: Path) -> None:
    src = tmp_path / "backup"
    src.mkdir()
    (src / "snapshot_2020-06-03_123456.db").write_bytes(b"snap" * 1000)
    rc, _, err = await _run("scp", *_ssh_opts(lab), "-r", "-P", str(lab.port), str(src), "core@127.0.0.1:")
    assert rc == 0, err
    assert (lab.root / "home/core/backup/snapshot_2020-06-03_123456.db").read_bytes() == b"snap" * 1000


async def _connect(lab: SSHLab, **kwargs: object) -> asyncssh.SSHClientConnection:
    options = {"username": "core", "client_keys": [str(lab.key)], "known_hosts": str(lab.known_hosts)}
    options.update(kwargs)
    return await asyncio.wait_for(asyncssh.connect("127.0.0.1", lab.port, **options), 15)  # type: ignore[arg-type]


async def test_asyncssh_exec_and_sftp(lab: SSHLab, tmp_path: Path) -> None:
    async with await _connect(lab) as conn:
        result = await asyncio.wait_for(conn.run("sudo -E env | grep -E '^(USER|SUDO_USER)=' | sort; exit 7"), 15)
        assert result.exit_status == 7
        assert result.stdout == "SUDO_USER=core\nUSER=root\n"
        result = await asyncio.wait_for(conn.run("cat", input="through stdin"), 15)
        assert result.stdout == "through stdin"

        local = tmp_path / "up.txt"
        local.write_text("payload")
        async with conn.start_sftp_client() as sftp:
            await sftp.makedirs("backup", exist_ok=True)
            await sftp.put(str(local), "backup/up.txt")
            await sftp.put(str(local), "/tmp/abs.txt")
            await sftp.get("/etc/hostname", str(tmp_path / "hostname"))
            assert await sftp.realpath(".") == "/home/core"
        assert (lab.root / "home/core/backup/up.txt").read_text() == "payload"
        assert (lab.root / "tmp/abs.txt").read_text() == "payload"
        assert (tmp_path / "hostname").read_text() == f"{NODE}\n"


async def test_asyncssh_refusals(lab: SSHLab, tmp_path: Path) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(lab, client_keys=None, password="core")
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(lab, username="root")
    wrong = tmp_path / "wrong_known_hosts"
    other = tmp_path / "other_host_key"
    ensure_host_key(other)
    wrong.write_text(known_hosts_line("127.0.0.1", lab.port, other) + "\n")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await _connect(lab, known_hosts=str(wrong))


async def test_interactive_pty_shell(lab: SSHLab) -> None:
    async with await _connect(lab) as conn:
        proc = await conn.create_process(term_type="xterm", term_size=(120, 40))
        proc.stdin.write("tty; stty size; echo $((6*7)); sudo -i\nhostname; echo \"I am $USER\"; exit\nexit 4\n")
        out = await asyncio.wait_for(proc.stdout.read(), 20)
        await asyncio.wait_for(proc.wait_closed(), 10)
        assert proc.exit_status == 4
        assert "[core@master-0 ~]$" in out
        assert "/dev/pts/" in out and "40 120" in out and "42" in out
        assert "I am root" in out and "[root@master-0 ~]#" in out


async def test_stop_drops_connections_and_restarts(lab: SSHLab) -> None:
    conn = await _connect(lab)
    proc = await conn.create_process("echo started; exec sleep 60")
    assert await asyncio.wait_for(proc.stdout.readline(), 10) == "started\n"
    assert len(lab.server._procs) == 1
    await lab.server.stop()
    await asyncio.wait_for(conn.wait_closed(), 10)
    assert not lab.server._procs
    with pytest.raises(OSError):
        await _connect(lab)
    await lab.server.start()
    async with await _connect(lab) as again:
        assert (await asyncio.wait_for(again.run("echo back"), 15)).stdout == "back\n"

    conn = await _connect(lab)
    lab.server.drop_connections()
    await asyncio.wait_for(conn.wait_closed(), 10)
    async with await _connect(lab) as again:
        assert (await asyncio.wait_for(again.run("echo still serving"), 15)).stdout == "still serving\n"
