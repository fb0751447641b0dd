"""Users as on RHCOS inside a host root: core is a real unprivileged uid, sudo really is root.

What a person types on a master and what RHCOS answers, checked on a bare host root (no daemon):
the kernel, not the stand-ins, refuses core's writes to root's files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lab.hosts import CORE, ROOT, SUDO_HELPER_DIR, create_host_root, run_in_host

RHCOS_ID = "uid=1000(core) gid=1000(core) groups=1000(core),4(adm),10(wheel),190(systemd-journal)"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = tmp_path / "hosts" / "master-0"
    create_host_root(root, node="master-0")
    return root


async def core(host: Path, command: str) -> tuple[int, str, str]:
    rc, out, err = await run_in_host(host, ["bash", "-c", command], user=CORE, cwd="/home/core")
    return rc, out.decode(), err.decode()


async def test_core_is_uid_1000_with_rhcos_groups(host: Path) -> None:
    rc, out, err = await core(host, "id; id -u; echo $USER $HOME")
    assert rc == 0, err
    assert out.splitlines() == [RHCOS_ID, "1000", "core /home/core"]
    rc, out, _ = await run_in_host(host, ["id", "-u"])
    assert (rc, out) == (0, b"0\n"), "the default user (containers, kubectl exec) is root"


async def test_root_files_refuse_core_with_rhcos_messages(host: Path) -> None:
    (host / "var/lib/etcd/member").mkdir()
    rc, _, err = await core(host, "mv /var/lib/etcd/ /tmp")
    assert (rc, err) == (1, "mv: cannot move '/var/lib/etcd/' to '/tmp/etcd': Permission denied\n")
    rc, _, err = await core(host, "ls /var/lib/etcd")
    assert (rc, err) == (2, "ls: cannot open directory '/var/lib/etcd': Permission denied\n")
    rc, _, err = await core(host, "touch /etc/kubernetes/manifests/x")
    assert (rc, err) == (1, "touch: cannot touch '/etc/kubernetes/manifests/x': Permission denied\n")
    assert (host / "var/lib/etcd/member").is_dir()

    rc, out, err = await core(host, "sudo mv /var/lib/etcd/ /tmp && sudo ls /tmp/etcd")
    assert (rc, out, err) == (0, "member\n", "")
    assert (host / "tmp/etcd/member").is_dir() and not (host / "var/lib/etcd").exists()


@pytest.mark.parametrize("sudo", ["sudo", "sudo -E", "sudo env LAB_X=1", "sudo -i", "sudo -s"])
async def test_every_sudo_form_is_root(host: Path, sudo: str) -> None:
    rc, out, err = await core(host, f"{sudo} id")
    assert (rc, err) == (0, "")
    assert out == "uid=0(root) gid=0(root) groups=0(root)\n"


async def test_sudo_env_and_caller(host: Path) -> None:
    rc, out, _ = await core(host, "sudo env | grep -E '^(USER|HOME|SUDO_USER|SUDO_UID|SUDO_GID)=' | sort")
    assert out.splitlines() == ["HOME=/root", "SUDO_GID=1000", "SUDO_UID=1000", "SUDO_USER=core", "USER=root"]
    rc, out, _ = await core(host, "sudo -i pwd")
    assert (rc, out) == (0, "/root\n")
    rc, out, _ = await core(host, "sudo sudo id -u")  # root's sudo needs no helper
    assert (rc, out) == (0, "0\n")


async def test_files_core_makes_are_cores(host: Path) -> None:
    rc, out, err = await core(host, "mkdir -p assets/x && touch assets/x/f && stat -c '%U:%G %a' assets/x/f")
    assert (rc, err) == (0, "")
    assert out == "core:core 644\n"
    st = (host / "home/core/assets/x/f").stat()
    assert (st.st_uid, st.st_gid) == (CORE.uid, CORE.gid)


async def test_sudo_helper_is_private_to_core_sessions(host: Path) -> None:
    """The setuid helper lives on a tmpfs in the session's own mount namespace: invisible outside
    the session and absent for root's processes; only the wheel group may execute it."""
    rc, out, _ = await core(host, f"stat -c '%U:%G %A' /{SUDO_HELPER_DIR}/setpriv")
    assert (rc, out) == (0, "root:wheel -rwsr-x---\n")
    assert not any((host / SUDO_HELPER_DIR).iterdir())
    rc, out, _ = await run_in_host(host, ["ls", "-A", f"/{SUDO_HELPER_DIR}"], user=ROOT)
    assert (rc, out) == (0, b"")


def test_layout_owners_and_modes(host: Path) -> None:
    def owner_mode(rel: str) -> tuple[int, int]:
        st = (host / rel).stat()
        return st.st_uid, stat.S_IMODE(st.st_mode)

    assert owner_mode("var/lib/etcd") == (0, 0o700)
    assert owner_mode("etc/kubernetes/manifests") == (0, 0o755)
    assert owner_mode("etc/kubernetes/static-pod-resources") == (0, 0o755)
    assert owner_mode("home/core") == (CORE.uid, 0o700)
    assert owner_mode("home/core/.bashrc") == (CORE.uid, 0o644)
    assert owner_mode("root") == (0, 0o700)
    group = (host / "etc/group").read_text().splitlines()
    assert "wheel:x:10:core" in group and "core:x:1000:" in group
    assert sum(ln.split(":")[2] == "10" for ln in group) == 1, "one group per gid"
    assert os.stat(host / "etc/passwd").st_mode & 0o777 == 0o644
