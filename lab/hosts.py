"""A master's root directory and the way into it (mount namespace + chroot).

Why a whole root and not a bind mount per OpenShift path: the restore procedure runs
``mv /var/lib/etcd/ /tmp``, which fails with "Device or resource busy" when ``/var/lib/etcd``
is a mount point. With a per-host root where ``/etc``, ``/var``, ``/home``, ``/tmp``, ``/run`` and
``/root`` are plain directories, every command a person or the bot runs acts on that host's files
with the real absolute paths, exactly as after ``oc debug node/<n>`` + ``chroot /host``.

Entering a host (``host_argv``) is one exec chain, no helper process stays in between, so the
process the caller holds IS the command (signals reach it, killing it kills the command)::

    unshare --mount --uts --propagation private -- /bin/sh -c ENTER lab-enter-host ROOT NODE CWD ...
      -> chroot ROOT /usr/bin/env -i -C CWD NAME=VALUE... ARGV...

``ENTER`` is an inline ``sh`` script (kept out of the host's PATH on purpose) that binds the
system ``/usr`` read-only, binds ``ROOT/usr-local-bin`` over ``/usr/local/bin`` (the host's own,
writable, like RHCOS's ``/var/usrlocal``), binds ``/dev`` (recursively: ``/dev/pts`` for ptys),
``/proc`` and ``/sys`` (read-only), and sets the UTS hostname to the node name so ``hostname``
and prompts show the master. The mounts live in the new mount namespace only (private
propagation): they vanish when its last process exits and never show in the machine's mount
table.

Users as on RHCOS. A command enters as ``root`` (what the kubelet's containers and ``kubectl
exec`` into the etcd pod run as) or as ``core`` (SSH sessions): ``chroot --userspec=1000:1000
--groups=1000,4,10,190``, a real unprivileged uid whose permissions the kernel checks, so
``mv /var/lib/etcd /tmp`` fails with "Permission denied" as on a master. ``sudo`` gets root back
through a setuid-root copy of ``setpriv`` that the enter script puts, for ``core`` sessions only,
on a private tmpfs at ``/run/lab/sudo`` (mode 4750, group wheel: what RHCOS's
``%wheel NOPASSWD: ALL`` grants). Why a setuid helper: an unprivileged process cannot get root
back by any other means (exec resets the saved uid, capabilities kept for ``core`` would let
every command through), and the tmpfs makes it work whatever the lab directory's filesystem is
mounted with (``nosuid`` included). It needs a machine where setuid works (no ``no_new_privs``
on the lab's processes, as on any root shell or CI runner).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOSTFILES_DIR = Path(__file__).with_name("hostfiles")
HOST_PATH = "/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin"
CORE_UID = 1000
CORE_HOME = "/home/core"
SUDO_HELPER_DIR = "run/lab/sudo"  # the tmpfs with the setuid setpriv, inside the host root
WHEEL_GID = 10


@dataclass(frozen=True)
class HostUser:
    """A user a command runs as inside a host: ids as in RHCOS's /etc/passwd and /etc/group."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


ROOT = HostUser(name="root", uid=0, gid=0, groups=(0,), home="/root")
# RHCOS: uid=1000(core) gid=1000(core) groups=1000(core),4(adm),10(wheel),190(systemd-journal)
CORE = HostUser(name="core", uid=CORE_UID, gid=CORE_UID, groups=(CORE_UID, 4, WHEEL_GID, 190), home=CORE_HOME)
# The groups the lab writes itself (name, gid, members); system groups clashing with them are dropped.
_RHCOS_GROUPS = (("adm", 4, "core"), ("wheel", WHEEL_GID, "core"), ("systemd-journal", 190, "core"),
                 ("core", CORE_UID, ""))

# What a chrooted bash, python3 and etcdctl need from the real /etc (copied, symlinks kept:
# Debian's /etc/alternatives links point into /usr, which is bound inside).
_ETC_COPIES = (
    "hosts",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "protocols",
    "services",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "timezone",
    "ssl",
    "ca-certificates",
    "profile",
    "profile.d",
    "bash.bashrc",
    "inputrc",
    "locale.alias",
    "os-release",
    "python3",
    "python3.11",
    "python3.12",
    "python3.13",
)

_MANIFEST_DIR = "etc/kubernetes/manifests"
_RESOURCES_DIR = "etc/kubernetes/static-pod-resources"

_ENTER_SCRIPT = r"""
set -e
root=$1 node=$2 cwd=$3 userspec=$4 groups=$5
shift 5
mount --bind /usr "$root/usr"
mount -o remount,bind,ro "$root/usr"
mount --bind "$root/usr-local-bin" "$root/usr/local/bin"
mount --rbind /dev "$root/dev"
mount --bind /proc "$root/proc"
mount --bind /sys "$root/sys"
mount -o remount,bind,ro "$root/sys"
hostname "$node"
if [ "$userspec" = 0:0 ]; then
  exec /usr/sbin/chroot "$root" /usr/bin/env -i -C "$cwd" "$@"
fi
helper=$root/SUDO_HELPER_DIR
mkdir -p "$helper"
mount -t tmpfs -o size=512k,mode=0755,nodev lab-sudo "$helper"
cp /usr/bin/setpriv "$helper/setpriv"
chown 0:WHEEL_GID "$helper/setpriv"
chmod 4750 "$helper/setpriv"
exec /usr/sbin/chroot --userspec="$userspec" --groups="$groups" "$root" /usr/bin/env -i -C "$cwd" "$@"
""".replace("SUDO_HELPER_DIR", SUDO_HELPER_DIR).replace("WHEEL_GID", str(WHEEL_GID))

# Makes the (already session-leading) process's stdin its controlling terminal, then execs:
# a shell on a pty needs it for job control and for SIGHUP when the SSH session goes away.
_CTTY_SNIPPET = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)

_PS1 = {
    "core": r"[core@\h \W]$ ",
    "root": r"[root@\h \W]# ",
}


def create_host_root(root: Path, *, node: str) -> None:
    """Create (or refresh) the host root of ``lab/README.md`` for master ``node``.

    Idempotent: re-running it refreshes ``etc`` copies and the stand-ins in ``usr-local-bin``
    but never touches the host's state (data dir, manifests, home, run/lab contents).
    """
    root.mkdir(parents=True, exist_ok=True)
    # Explicit modes for every directory core walks through: the daemon's umask must not decide
    # what a non-root session can reach. Root-owned, as on a master (the daemon runs as root).
    for rel, mode in (
        ("etc", 0o755),
        ("etc/kubernetes", 0o755),
        ("var", 0o755),
        ("var/lib", 0o755),
        ("var/lib/etcd", 0o700),
        ("var/tmp", 0o1777),
        ("var/log", 0o755),
        ("home", 0o755),
        ("home/core", 0o700),
        ("tmp", 0o1777),
        ("run", 0o755),
        ("run/lab", 0o755),
        (SUDO_HELPER_DIR, 0o755),
        ("root", 0o700),
        ("usr-local-bin", 0o755),
        ("usr", 0o755),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        (_MANIFEST_DIR, 0o755),
        (_RESOURCES_DIR, 0o755),
    ):
        path = root / rel
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)  # mkdir's mode is filtered by umask; 1777 needs an explicit chmod

    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        _ensure_symlink(root / link, target)
    _ensure_symlink(root / "etc/kubernetes/static-pod-certs", "static-pod-resources/etcd-certs")

    _copy_etc(root / "etc")
    _write_users(root / "etc")
    (root / "etc/hostname").write_text(f"{node}\n")
    for user, home in (("core", root / "home/core"), ("root", root / "root")):
        rc = home / ".bashrc"
        if not rc.exists():
            rc.write_text(f"# lab host shell\nPS1='{_PS1[user]}'\n")
        profile = home / ".bash_profile"
        if not profile.exists():
            profile.write_text("[ -f ~/.bashrc ] && . ~/.bashrc\n")
        for path in (rc, profile):
            if user == "core":
                os.chown(path, CORE.uid, CORE.gid)
            path.chmod(0o644)
    os.chown(root / "home/core", CORE.uid, CORE.gid)
    install_hostfiles(root)


def install_hostfiles(root: Path) -> None:
    """Install the stand-ins of ``lab/hostfiles/`` into the host's ``/usr/local/bin``."""
    dest_dir = root / "usr-local-bin"
    dest_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted(HOSTFILES_DIR.iterdir()):
        if not src.is_file() or src.name.startswith((".", "_")):
            continue
        dest = dest_dir / src.name
        tmp = dest.with_name(f".{src.name}.tmp")
        shutil.copyfile(src, tmp)
        tmp.chmod(0o755)
        os.replace(tmp, dest)  # atomic: a running script is never half-overwritten


def _ensure_symlink(link: Path, target: str) -> None:
    if link.is_symlink():
        if os.readlink(link) == target:
            return
        link.unlink()
    elif link.exists():
        return  # a real directory there (e.g. made by a script): leave it alone
    link.symlink_to(target)


def _copy_etc(etc: Path) -> None:
    real = Path("/etc")
    for name in _ETC_COPIES:
        src = real / name
        if not (src.exists() or src.is_symlink()):
            continue
        _copy_entry(src, etc / name)


def _copy_entry(src: Path, dest: Path) -> None:
    """Copy a file, symlink (as a symlink) or directory tree, replacing what is at ``dest``."""
    if src.is_dir() and not src.is_symlink():
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            dest.unlink()
        dest.mkdir(exist_ok=True)
        shutil.copystat(src, dest)
        for child in src.iterdir():
            _copy_entry(child, dest / child.name)
        return
    if dest.is_symlink() or dest.exists():
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        else:
            dest.unlink()
    shutil.copy2(src, dest, follow_symlinks=False)


def _write_users(etc: Path) -> None:
    """passwd/group: the real system accounts (so ``ls -l`` names match) plus RHCOS's ``core``
    with its groups (adm, wheel, systemd-journal); system entries clashing with those are dropped."""
    ours = {name for name, _, _ in _RHCOS_GROUPS}
    our_gids = {str(gid) for _, gid, _ in _RHCOS_GROUPS}

    def keep_user(line: str) -> bool:
        fields = line.split(":")
        return len(fields) > 3 and fields[0] != "core" and fields[2] != str(CORE.uid)

    def keep_group(line: str) -> bool:
        fields = line.split(":")
        return len(fields) > 3 and fields[0] not in ours and fields[2] not in our_gids

    passwd = [ln for ln in _read_lines(Path("/etc/passwd")) if keep_user(ln)]
    if not any(ln.startswith("root:") for ln in passwd):
        passwd.insert(0, "root:x:0:0:root:/root:/bin/bash")
    passwd.append(f"core:x:{CORE.uid}:{CORE.gid}:CoreOS Admin:{CORE.home}:/bin/bash")
    group = [ln for ln in _read_lines(Path("/etc/group")) if keep_group(ln)]
    if not any(ln.startswith("root:") for ln in group):
        group.insert(0, "root:x:0:")
    group += [f"{name}:x:{gid}:{members}" for name, gid, members in _RHCOS_GROUPS]
    (etc / "passwd").write_text("\n".join(passwd) + "\n")
    (etc / "group").write_text("\n".join(group) + "\n")
    for name in ("passwd", "group"):
        (etc / name).chmod(0o644)


def _read_lines(path: Path) -> list[str]:
    try:
        return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    except OSError:
        return []


def host_env(root: Path, env: Mapping[str, str] | None = None, *, user: HostUser = ROOT) -> dict[str, str]:
    """The clean environment a command in the host starts with (a login of ``user``)."""
    node = _node_name(root)
    base = {
        "PATH": HOST_PATH,
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "HOSTNAME": node,
        "SHELL": "/bin/bash",
    }
    base.update(env or {})
    return base


def _node_name(root: Path) -> str:
    try:
        return (root / "etc/hostname").read_text().strip() or root.name
    except OSError:
        return root.name


def host_argv(
    root: Path,
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str = "/",
    controlling_tty: bool = False,
    user: HostUser = ROOT,
) -> list[str]:
    """The argv that runs ``argv`` inside the host ``root`` as ``user`` (see the module docstring).

    ``controlling_tty``: make stdin (a pty slave) the controlling terminal first; the caller
    must start the process in a new session (``spawn_in_host`` does).
    """
    if not argv:
        raise ValueError("empty argv")
    if "=" in argv[0]:
        raise ValueError(f"argv[0] must not contain '=' (env would take it as a variable): {argv[0]!r}")
    if not cwd.startswith("/"):
        raise ValueError(f"cwd must be absolute inside the host: {cwd!r}")
    root = Path(root).resolve()
    full_env = host_env(root, env, user=user)
    assignments = [f"{k}={v}" for k, v in full_env.items()]
    for k in full_env:
        if not k or "=" in k:
            raise ValueError(f"bad environment name {k!r}")
    command = list(argv)
    if controlling_tty:
        command = ["/usr/bin/python3", "-c", _CTTY_SNIPPET, *command]
    return [
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        _ENTER_SCRIPT,
        "lab-enter-host",
        str(root),
        _node_name(root),
        cwd,
        f"{user.uid}:{user.gid}",
        ",".join(str(g) for g in user.groups),
        *assignments,
        *command,
    ]


async def spawn_in_host(
    root: Path,
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str = "/",
    stdout: Any = asyncio.subprocess.PIPE,
    stderr: Any = asyncio.subprocess.PIPE,
    stdin: Any = asyncio.subprocess.DEVNULL,
    controlling_tty: bool = False,
    user: HostUser = ROOT,
) -> asyncio.subprocess.Process:
    """Start ``argv`` in the host as ``user``, in its own session (a whole process group can be signalled)."""
    return await asyncio.create_subprocess_exec(
        *host_argv(root, argv, env=env, cwd=cwd, controlling_tty=controlling_tty, user=user),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )


async def run_in_host(
    root: Path,
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 - the interface the lab's callers use
    cwd: str = "/",
    user: HostUser = ROOT,
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` in the host as ``user`` to completion: ``(returncode, stdout, stderr)``.

    On timeout the whole process group is killed and ``TimeoutError`` is raised.
    """
    proc = await spawn_in_host(
        root,
        argv,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        user=user,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except (TimeoutError, asyncio.CancelledError):
        kill_group(proc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


def kill_group(proc: asyncio.subprocess.Process, sig: int = signal.SIGKILL) -> None:
    """Signal the process group of a process started by ``spawn_in_host`` (ignores gone ones)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def is_executable(path: Path) -> bool:
    """True if ``path`` is a regular file with an execute bit (used by tests and the daemon)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)
