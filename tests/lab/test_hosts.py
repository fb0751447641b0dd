"""lab.hosts: the host root layout and the way into it (mount namespace + chroot)."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from lab.hosts import CORE, HOSTFILES_DIR, create_host_root, host_argv, kill_group, run_in_host, spawn_in_host


def _mounts() -> list[str]:
    return sorted(Path("/proc/self/mountinfo").read_text().splitlines())


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = tmp_path / "hosts" / "master-0"
    create_host_root(root, node="master-0")
    return root


def test_layout(host: Path) -> None:
    for rel in ("etc/kubernetes/manifests", "etc/kubernetes/static-pod-resources", "var/lib/etcd",
                "home/core", "run/lab", "root", "usr-local-bin", "usr", "dev", "proc", "sys"):
        assert (host / rel).is_dir(), rel
    assert stat.S_IMODE((host / "tmp").stat().st_mode) == 0o1777
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        assert os.readlink(host / link) == target
    assert os.readlink(host / "etc/kubernetes/static-pod-certs") == "static-pod-resources/etcd-certs"
    assert (host / "etc/hostname").read_text() == "master-0\n"
    assert "core:x:1000:1000:" in (host / "etc/passwd").read_text()
    assert (host / "etc/ld.so.cache").exists()
    assert not any(any((host / d).iterdir()) for d in ("usr", "dev", "proc", "sys"))
    shipped = {p.name for p in HOSTFILES_DIR.iterdir() if p.is_file()}
    assert {"sudo", "crictl", "systemctl", "shutdown", "cluster-backup.sh", "cluster-restore.sh"} <= shipped
    for name in shipped:
        assert os.access(host / "usr-local-bin" / name, os.X_OK), name


def test_idempotent_keeps_state(host: Path) -> None:
    (host / "var/lib/etcd/member").mkdir()
    (host / "etc/kubernetes/manifests/etcd-pod.yaml").write_text("kind: Pod\n")
    create_host_root(host, node="master-0")
    assert (host / "var/lib/etcd/member").is_dir()
    assert (host / "etc/kubernetes/manifests/etcd-pod.yaml").read_text() == "kind: Pod\n"


async def test_paths_map_to_the_host_root(host: Path) -> None:
    before = _mounts()
    (host / "var/lib/etcd/member").mkdir()
    rc, out, err = await run_in_host(host, ["bash", "-c", "mv /var/lib/etcd/ /tmp && ls /tmp/etcd"])
    assert (rc, out, err) == (0, b"member\n", b"")
    assert (host / "tmp/etcd/member").is_dir() and not (host / "var/lib/etcd").exists()

    rc, _, err = await run_in_host(host, ["touch", "/usr/lab-must-fail"])
    assert rc != 0 and b"Read-only file system" in err

    rc, _, _ = await run_in_host(host, ["bash", "-c", "echo x > /etc/kubernetes/manifests/x"])
    assert rc == 0 and (host / "etc/kubernetes/manifests/x").read_text() == "x\n"

    rc, out, _ = await run_in_host(host, ["ls", "/usr/local/bin"])
    assert b"crictl" in out
    assert _mounts() == before


async def test_clean_env_hostname_cwd_stdin(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_LEAK_CHECK", "1")
    rc, out, _ = await run_in_host(host, ["bash", "-c", "hostname; pwd; env | sort; cat"],
                                   env={"FOO": "bar"}, stdin=b"from-stdin", cwd="/home/core", user=CORE)
    lines = out.decode().splitlines()
    assert rc == 0 and lines[0] == "master-0" and lines[1] == "/home/core"
    env = dict(ln.split("=", 1) for ln in lines[2:-1] if "=" in ln)
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin"
    assert (env["HOME"], env["USER"], env["LOGNAME"], env["HOSTNAME"], env["FOO"]) == (
        "/home/core", "core", "core", "master-0", "bar")
    assert "LAB_LEAK_CHECK" not in env
    assert lines[-1] == "from-stdin"


async def test_process_is_the_command(host: Path) -> None:
    proc = await spawn_in_host(host, ["sleep", "60"], stdout=None, stderr=None)
    try:
        deadline = time.monotonic() + 10
        while _cmdline(proc.pid) != b"sleep\x0060\x00":
            assert time.monotonic() < deadline, "the process never became the command"
            await asyncio.sleep(0.02)
        proc.kill()
        assert await asyncio.wait_for(proc.wait(), 10) == -9
    finally:
        kill_group(proc)
        await proc.wait()


async def test_timeout_kills(host: Path) -> None:
    with pytest.raises(TimeoutError):
        await run_in_host(host, ["bash", "-c", "sleep 60 & sleep 60"], timeout=0.5)


def test_host_argv_rejects_ambiguous_argv(host: Path) -> None:
    with pytest.raises(ValueError):
        host_argv(host, ["A=B", "x"])
    with pytest.raises(ValueError):
        host_argv(host, ["true"], cwd="relative")
