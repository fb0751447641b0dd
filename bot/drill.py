"""The restore drill: proves that a stored backup restores, on the bot's own machine, without
touching any cluster.

Why it exists: a backup nobody has restored is a hope, not a backup. A sha256 proves the file is
the one the master wrote; it does not prove etcd can start from it, nor that it holds the
cluster the catalogue says it does. The drill does what 5.3 does on the recovery host, in
miniature and on loopback: `etcdctl snapshot restore` into a scratch directory, an `etcd`
process on free 127.0.0.1 ports over that directory, then three reads checked against the
backup's metadata:
- the store's revision (the restored member keeps the snapshot's revision);
- the number of live keys (at least one, never more than the snapshot's total);
- a known key, the ClusterVersion object, whose version must be the backup's version.

Guard rails: one drill at a time per bot (a drill holds a snapshot's worth of disk and an etcd
process), a free-space check before anything is written, a deadline on the whole drill and on
each command, and the scratch etcd and directory removed whatever happens.

Not here: when a drill runs or where its result is recorded (the backup procedure and the
catalogue); nothing here knows Slack or Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLUSTERVERSION_KEY = "/kubernetes.io/config.openshift.io/clusterversions/version"
SPACE_FACTOR = 3.0  # free space needed, as a multiple of the snapshot: the restored db plus its WAL
DEFAULT_TIMEOUT = 300.0
COMMAND_TIMEOUT = 120.0
READY_TIMEOUT = 60.0


class DrillError(Exception):
    """Why a drill failed, in words a person can act on."""


@dataclass(frozen=True)
class DrillExpectation:
    """What the backup's metadata says the snapshot holds."""

    revision: int
    total_keys: int
    version: str


@dataclass(frozen=True)
class DrillResult:
    """One drill: passed or not, when, how long, and what the scratch etcd showed."""

    ok: bool
    started_at: float
    seconds: float
    revision: int = 0
    keys: int = 0
    version: str = ""
    error: str = ""

    def summary(self) -> str:
        if not self.ok:
            return f"restore drill FAILED after {self.seconds:.1f} s: {self.error}"
        return (
            f"restore drill passed in {self.seconds:.1f} s: etcd started from the snapshot, "
            f"revision {self.revision}, {self.keys} keys, ClusterVersion {self.version}"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """etcdctl reads ETCDCTL_* from the environment (certs, endpoints): the drill's commands must
    not pick up the bot's or an operator's, so they get a minimal environment of their own."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ETCDCTL_API": "3", "HOME": tempfile.gettempdir()}


async def _run(argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_clean_env(), start_new_session=True
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except (TimeoutError, asyncio.CancelledError) as exc:  # cancelled: the run was aborted or its lock lost
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise DrillError(f"`{' '.join(argv[:3])}` did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        text = (err or out).decode(errors="replace").strip().splitlines()
        last = text[-1] if text else f"exit {proc.returncode}"
        if "expected sha256" in last:  # etcdctl prints both digests as byte lists: say what it means
            last = ("the snapshot fails etcd's own integrity check (the sha256 `etcdctl snapshot save` appended "
                    "does not match its content): it was damaged before or while it was copied")
        raise DrillError(f"`{' '.join(argv[:3])}` failed: {last[:500]}")
    return out.decode(errors="replace")


def check_space(*, work_dir: Path, snapshot_size: int) -> None:
    """Refuses a drill that could fill the disk the bot itself needs."""
    work_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work_dir).free
    needed = int(snapshot_size * SPACE_FACTOR)
    if free < needed:
        raise DrillError(
            f"not enough free space in {work_dir} for a drill: {free // 2**20} MiB free, "
            f"{needed // 2**20} MiB needed; free space or set ETCDBOT_DRILL_DIR to a larger volume"
        )


def check_result(*, expected: DrillExpectation, revision: int, keys: int, version: str) -> list[str]:
    """What the scratch etcd showed that the metadata does not agree with (empty: all good)."""
    problems = []
    if revision != expected.revision:
        problems.append(f"revision {revision}, the backup's metadata says {expected.revision}")
    if keys <= 0:
        problems.append("no keys in the restored store")
    elif expected.total_keys and keys > expected.total_keys:
        problems.append(f"{keys} keys, more than the snapshot's {expected.total_keys}")
    if not version:
        problems.append("no ClusterVersion object in the restored store")
    elif expected.version and version != expected.version:
        problems.append(f"ClusterVersion {version}, the backup's metadata says {expected.version}")
    return problems


def clusterversion_of(raw: str) -> str:
    """The version a ClusterVersion object (JSON, as stored in etcd) says the cluster runs."""
    if not raw.strip():
        return ""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        return ""
    desired = (obj.get("status") or {}).get("desired") or {}
    if desired.get("version"):
        return str(desired["version"])
    for entry in (obj.get("status") or {}).get("history") or []:
        if entry.get("state") == "Completed" and entry.get("version"):
            return str(entry["version"])
    return ""


class Driller:
    """Runs restore drills one at a time, each in a scratch directory under `work_dir`."""

    def __init__(
        self,
        *,
        work_dir: Path,
        etcd: str = "etcd",
        etcdctl: str = "etcdctl",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.work_dir = work_dir
        self.etcd = etcd
        self.etcdctl = etcdctl
        self.timeout = timeout
        self._one_at_a_time = asyncio.Lock()

    @property
    def busy(self) -> bool:
        return self._one_at_a_time.locked()

    async def drill(self, snapshot: Path, *, expected: DrillExpectation) -> DrillResult:
        """Restores `snapshot` into a scratch etcd and checks it; never raises for a bad backup:
        the result says what failed."""
        async with self._one_at_a_time:
            started, clock = time.time(), time.monotonic()
            try:
                async with asyncio.timeout(self.timeout):
                    revision, keys, version = await self._drill(snapshot)
            except TimeoutError:
                return DrillResult(ok=False, started_at=started, seconds=time.monotonic() - clock,
                                   error=f"the drill did not finish within {self.timeout:g} s")
            except (DrillError, OSError) as exc:
                return DrillResult(ok=False, started_at=started, seconds=time.monotonic() - clock, error=str(exc))
            problems = check_result(expected=expected, revision=revision, keys=keys, version=version)
            return DrillResult(
                ok=not problems, started_at=started, seconds=time.monotonic() - clock, revision=revision,
                keys=keys, version=version, error="; ".join(problems),
            )

    async def _drill(self, snapshot: Path) -> tuple[int, int, str]:
        if not snapshot.is_file():
            raise DrillError(f"the snapshot {snapshot} is missing from the store")
        check_space(work_dir=self.work_dir, snapshot_size=snapshot.stat().st_size)
        scratch = Path(tempfile.mkdtemp(prefix="drill-", dir=self.work_dir))
        proc: asyncio.subprocess.Process | None = None
        try:
            data_dir = scratch / "etcd"
            client, peer = _free_port(), _free_port()
            client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
            await _run([
                self.etcdctl, "snapshot", "restore", str(snapshot), "--data-dir", str(data_dir),
                "--name", "drill", "--initial-cluster", f"drill={peer_url}",
                "--initial-advertise-peer-urls", peer_url, "--initial-cluster-token", "etcdbot-drill",
            ])
            log = (scratch / "etcd.log").open("wb")
            try:
                proc = await asyncio.create_subprocess_exec(
                    self.etcd, "--name", "drill", "--data-dir", str(data_dir),
                    "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                    "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                    "--initial-cluster", f"drill={peer_url}", "--initial-cluster-state", "existing",
                    stdout=log, stderr=log, env=_clean_env(), start_new_session=True,
                )
            finally:
                log.close()
            await self._wait_ready(client_url, proc, scratch / "etcd.log")
            # etcdctl 3.4 has no --count-only: a range's `count` is the whole range's, whatever the limit.
            count = json.loads(await _run([self.etcdctl, "--endpoints", client_url, "get", "", "--prefix",
                                           "--keys-only", "--limit", "1", "-w", "json"]))
            raw = await _run([self.etcdctl, "--endpoints", client_url, "get", CLUSTERVERSION_KEY, "--print-value-only"])
            return int(count["header"]["revision"]), int(count.get("count", 0)), clusterversion_of(raw)
        finally:
            if proc is not None:
                await _stop(proc)
            shutil.rmtree(scratch, ignore_errors=True)

    async def _wait_ready(self, client_url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.returncode is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
                raise DrillError(f"etcd exited at start from the restored data ({tail[0][:300] if tail else 'no log'})")
            try:
                await _run([self.etcdctl, "--endpoints", client_url, "--dial-timeout", "1s",
                            "--command-timeout", "2s", "endpoint", "health"], timeout=5)
                return
            except DrillError:
                if time.monotonic() > deadline:
                    raise DrillError(f"the scratch etcd was not healthy within {READY_TIMEOUT:g} s") from None
            await asyncio.sleep(0.1)  # poll interval while etcd starts, bounded by the deadline above


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
