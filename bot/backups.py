"""The backup store (a directory) and its catalogue (Redis): where a backup lands, how it lands
whole or not at all, and how it is listed.

Why it is built this way:
- A backup is written under `.incoming/<run id>/` and renamed into place only after both files
  were checksummed while streaming and matched the master's `sha256sum`; a crash, a dropped SSH
  connection or a full disk leaves at most an `.incoming` directory, never a half backup in the
  catalogue. The catalogue entry is written after the rename, and `metadata.json` beside the files
  holds the same record, so the catalogue can be rebuilt from the disk alone.
- With etcd encryption on, the static resources tarball holds the encryption keys; the document
  says to keep it apart from the snapshot, so `placement()` sends it to another tree
  (`keys_root`), which a deployment can put on another volume.
- Files are streamed in chunks with a bounded read-ahead: the bot's memory does not grow with the
  size of etcd.

- A backup is "checksummed" once both files matched the master's sha256 on arrival, and
  "drilled" only once a restore drill (bot/drill.py) restored its snapshot into a scratch etcd
  and found the revision, the key count and the ClusterVersion its metadata promises. The drill's
  time, result and duration live in the record (`drill`), on disk and in the catalogue; a failed
  drill is recorded too, so the backup is never taken for drilled.
- The catalogue is a cache of the disk: `Catalogue.sync()` makes it say what the metadata files
  say (at start, and after Redis lost its data).
- What the store must tell the rest of the bot (a drill ended, a backup was deleted, which
  backups a run is using) goes through `CatalogueHooks`, which the engine fills in: the
  foundation does not know Slack, the audit stream or the run store.

Not here: how bytes leave a master (bot/cluster/hosts.py), which steps run when (procedures/backup.py),
which backups retention deletes (bot/retention.py decides, bot/pruning.py applies).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bot import metrics
from bot.drill import Driller, DrillExpectation, DrillResult

BACKUP_ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[A-Za-z0-9-]{1,64}$")
INCOMING = ".incoming"
METADATA = "metadata.json"
SPACE_FACTOR = 1.2  # free space needed, as a multiple of the bytes to copy
STALE_INCOMING_SECONDS = 24 * 3600
CHUNK = 1 << 20  # bytes per read off a master
MAX_READ_AHEAD = 8  # chunks requested ahead when no copy rate is set


class StoreError(Exception):
    """The store cannot take this backup (full disk, unwritable); the text says what to do."""


def new_backup_id(*, run_id: str, at: float) -> str:
    """'20261127-081409-a1b2c3d4': sorts by time, unique per run, safe in a path and a shell."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(at)) + f"-{run_id}"


@dataclass(frozen=True)
class Placement:
    """Where one backup's two files go. `resources_dir == snapshot_dir` unless encryption is on."""

    snapshot_dir: Path
    resources_dir: Path

    @property
    def apart(self) -> bool:
        return self.snapshot_dir != self.resources_dir


def placement(*, root: Path, keys_root: Path, cluster: str, backup_id: str, encrypted: bool) -> Placement:
    """The snapshot always under `root/<cluster>/<id>`; the tarball beside it, or, with etcd
    encryption on (the tarball then holds the keys), under `keys_root/<cluster>/<id>`."""
    if not BACKUP_ID_RE.fullmatch(backup_id):
        raise ValueError(f"{backup_id!r} is not a backup id")
    snapshot_dir = root / cluster / backup_id
    if not encrypted:
        return Placement(snapshot_dir=snapshot_dir, resources_dir=snapshot_dir)
    if keys_root.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"the keys directory {keys_root} must not be inside the backup directory {root}")
    return Placement(snapshot_dir=snapshot_dir, resources_dir=keys_root / cluster / backup_id)


@dataclass(frozen=True)
class StoredFile:
    name: str
    role: str  # "snapshot" or "resources"
    size: int
    sha256: str
    path: str  # absolute path in the store


@dataclass(frozen=True)
class DrillOutcome:
    """The latest restore drill of a backup: when it started, whether it passed, how long it took,
    and what the scratch etcd showed (or why it failed)."""

    ok: bool
    at: float
    seconds: float
    error: str = ""
    revision: int = 0
    keys: int = 0
    by: str = ""  # the run that drilled it

    @classmethod
    def of(cls, result: DrillResult, *, by: str = "") -> DrillOutcome:
        return cls(ok=result.ok, at=result.started_at, seconds=round(result.seconds, 3), error=result.error,
                   revision=result.revision, keys=result.keys, by=by)

    def summary(self) -> str:
        if self.ok:
            return f"drill passed in {self.seconds:.1f} s (revision {self.revision}, {self.keys} keys)"
        return f"drill FAILED after {self.seconds:.1f} s: {self.error}"


@dataclass(frozen=True)
class BackupRecord:
    """One stored backup, as the catalogue and metadata.json hold it. `verified` means
    checksummed (both files matched the master's sha256 on arrival); `drill` is the latest
    restore drill, None until one ran; `drilled` is true only after a drill passed."""

    id: str
    cluster: str
    version: str  # the full cluster version (a restore needs the same z-stream)
    revision: int
    total_keys: int
    snapshot_hash: int  # etcdctl snapshot status's hash
    snapshot_size: int
    files: tuple[StoredFile, ...]
    host: str
    started_at: float
    finished_at: float
    run_id: str
    requester: str
    verified: bool
    encrypted: bool
    host_dir: str
    drill: DrillOutcome | None = None

    @property
    def checksummed(self) -> bool:
        return self.verified

    @property
    def drilled(self) -> bool:
        return self.drill is not None and self.drill.ok

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def for_storage(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = [asdict(f) for f in self.files]
        data["drill"] = asdict(self.drill) if self.drill is not None else None
        return data

    @classmethod
    def from_storage(cls, data: Mapping[str, Any]) -> BackupRecord:
        values = dict(data)
        values["files"] = tuple(StoredFile(**f) for f in data.get("files", ()))
        drill = data.get("drill")
        values["drill"] = DrillOutcome(**{k: v for k, v in drill.items() if k in DrillOutcome.__dataclass_fields__}) \
            if isinstance(drill, Mapping) else None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})

    def file(self, role: str) -> StoredFile:
        return next(f for f in self.files if f.role == role)

    def with_drill(self, outcome: DrillOutcome) -> BackupRecord:
        return replace(self, drill=outcome)


@dataclass
class Received:
    size: int = 0
    sha256: str = ""


@dataclass
class BackupStore:
    """The directory tree of backups. `copy_rate` (bytes/s, 0 = none) spares a master's network."""

    root: Path
    keys_root: Path | None = None
    copy_rate: int = 0
    driller: Driller | None = None  # restore drills of this store's backups (one at a time)
    _fsync: bool = field(default=True, repr=False)

    @property
    def read_ahead(self) -> int:
        """Chunks to request ahead: with a copy rate, about a second's worth, so the master's
        network sees the rate and not a burst of read-ahead."""
        if not self.copy_rate:
            return MAX_READ_AHEAD
        return max(1, min(MAX_READ_AHEAD, self.copy_rate // CHUNK))

    @property
    def keys(self) -> Path:
        return self.keys_root or self.root.parent / f"{self.root.name}-keys"

    def placement(self, *, cluster: str, backup_id: str, encrypted: bool) -> Placement:
        return placement(root=self.root, keys_root=self.keys, cluster=cluster, backup_id=backup_id, encrypted=encrypted)

    def incoming(self, *, run_id: str, encrypted: bool) -> Placement:
        """The temporary directories a run writes into (on the same filesystems as the final ones,
        so the rename is atomic)."""
        snapshot_dir = self.root / INCOMING / run_id
        resources_dir = self.keys / INCOMING / run_id if encrypted else snapshot_dir
        return Placement(snapshot_dir=snapshot_dir, resources_dir=resources_dir)

    def check_space(self, *, needed: int) -> None:
        """Refuses before copying when the store has less than needed*1.2 bytes free."""
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        wanted = int(needed * SPACE_FACTOR)
        if free < wanted:
            raise StoreError(
                f"the backup store {self.root} has {free:,} bytes free and this backup needs {wanted:,} "
                f"({needed:,} bytes plus 20%)"
            )

    def prepare(self, *, run_id: str, encrypted: bool) -> Placement:
        """Empty temporary directories for a run (a retried or resumed copy starts from zero)."""
        self.discard(run_id=run_id)
        self._sweep_stale()
        target = self.incoming(run_id=run_id, encrypted=encrypted)
        for directory in {target.snapshot_dir, target.resources_dir}:
            directory.mkdir(parents=True, mode=0o700)
        return target

    def discard(self, *, run_id: str) -> None:
        for base in (self.root, self.keys):
            shutil.rmtree(base / INCOMING / run_id, ignore_errors=True)

    def _sweep_stale(self) -> None:
        """Temporary directories of runs that died a day ago or more."""
        cutoff = time.time() - STALE_INCOMING_SECONDS
        for base in (self.root, self.keys):
            incoming = base / INCOMING
            if not incoming.is_dir():
                continue
            for entry in incoming.iterdir():
                try:
                    if entry.stat().st_mtime < cutoff:
                        shutil.rmtree(entry, ignore_errors=True)
                except OSError:
                    continue

    async def receive(self, *, chunks: AsyncIterator[bytes], dest: Path) -> Received:
        """Writes the chunks to `dest`, hashing them as they pass; memory stays at one chunk."""
        digest = hashlib.sha256()
        received = Received()
        started = time.monotonic()
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            async for chunk in chunks:
                # hashlib and os.write release the GIL: both off the event loop, beside the reads
                await asyncio.to_thread(_hash_and_write, digest, fd, chunk)
                received.size += len(chunk)
                if self.copy_rate:
                    ahead = received.size / self.copy_rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)  # the configured bandwidth limit
            if self._fsync:
                await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
        received.sha256 = digest.hexdigest()
        return received

    def commit(self, *, record: BackupRecord, encrypted: bool) -> Placement:
        """Writes metadata.json and renames the run's temporary directories into place. The
        snapshot directory is renamed last: once it exists, the backup is whole."""
        temp = self.incoming(run_id=record.run_id, encrypted=encrypted)
        final = self.placement(cluster=record.cluster, backup_id=record.id, encrypted=encrypted)
        if final.snapshot_dir.is_dir() and (final.snapshot_dir / METADATA).is_file():
            return final  # committed before a restart
        (temp.snapshot_dir / METADATA).write_text(json.dumps(record.for_storage(), indent=2, sort_keys=True) + "\n")
        if final.apart:
            final.resources_dir.parent.mkdir(parents=True, exist_ok=True)
            (temp.resources_dir / METADATA).write_text(
                json.dumps({"backup_id": record.id, "cluster": record.cluster, "snapshot_dir": str(final.snapshot_dir)})
                + "\n"
            )
            if not final.resources_dir.exists():
                os.rename(temp.resources_dir, final.resources_dir)
        final.snapshot_dir.parent.mkdir(parents=True, exist_ok=True)
        os.rename(temp.snapshot_dir, final.snapshot_dir)
        if self._fsync:
            _fsync_dir(final.snapshot_dir.parent)
        return final

    def update(self, record: BackupRecord) -> None:
        """Rewrites a committed backup's metadata.json (a drill's outcome), atomically: a reader
        sees the old file or the new one, never half of one."""
        directory = self.placement(cluster=record.cluster, backup_id=record.id, encrypted=record.encrypted).snapshot_dir
        target = directory / METADATA
        if not target.is_file():
            raise StoreError(f"backup {record.id} is not in the store any more ({directory})")
        temp = directory / f".{METADATA}.{os.getpid()}.tmp"
        temp.write_text(json.dumps(record.for_storage(), indent=2, sort_keys=True) + "\n")
        if self._fsync:
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(temp, target)

    def remove(self, record: BackupRecord) -> None:
        """Deletes a backup: its directories are first renamed under `.incoming` (one atomic step
        each, the snapshot's first, so a crash never leaves a half backup that looks whole), then removed."""
        where = self.placement(cluster=record.cluster, backup_id=record.id, encrypted=record.encrypted)
        dirs = [where.snapshot_dir] + ([where.resources_dir] if where.apart else [])
        for directory, base in zip(dirs, (self.root, self.keys), strict=False):
            if not directory.exists():
                continue
            trash = base / INCOMING / f"deleting-{record.id}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(directory, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def file_problems(self, record: BackupRecord) -> list[str]:
        """What no longer matches the record on disk (a missing file, another size or sha256).
        Reads every byte: call it off the event loop."""
        problems = []
        for stored in record.files:
            path = Path(stored.path)
            if not path.is_file():
                problems.append(f"{stored.name} is missing from the store ({path})")
                continue
            size = path.stat().st_size
            if size != stored.size:
                problems.append(f"{stored.name} has {size} bytes, the record says {stored.size}")
                continue
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    digest.update(chunk)
            if digest.hexdigest() != stored.sha256:
                problems.append(f"{stored.name} no longer matches its sha256 (the store's copy is damaged)")
        return problems

    async def prove(self, record: BackupRecord, *, by: str = "") -> DrillOutcome:
        """The restore drill of one backup: its files checked against their sha256, then its
        snapshot restored into a scratch etcd and read (bot/drill.py). Never raises for a bad
        backup: the outcome says what failed."""
        if self.driller is None:
            raise StoreError("no restore drill is configured for this store (ETCDBOT_DRILL_DIR)")
        started, clock = time.time(), time.monotonic()
        problems = await asyncio.to_thread(self.file_problems, record)
        if problems:
            return DrillOutcome(ok=False, at=started, seconds=round(time.monotonic() - clock, 3),
                                error="; ".join(problems), by=by)
        result = await self.driller.drill(Path(record.file("snapshot").path), expected=DrillExpectation(
            revision=record.revision, total_keys=record.total_keys, version=record.version))
        seconds = round(time.monotonic() - clock, 3)
        return replace(DrillOutcome.of(result, by=by), at=started, seconds=seconds)

    def records(self, *, cluster: str) -> list[BackupRecord]:
        """Every committed backup of a cluster, from the metadata files (the catalogue's source of truth)."""
        base = self.root / cluster
        found = []
        if base.is_dir():
            for meta in sorted(base.glob(f"*/{METADATA}")):
                try:
                    found.append(BackupRecord.from_storage(json.loads(meta.read_text())))
                except (ValueError, TypeError, KeyError):
                    continue
        return found


def _hash_and_write(digest: Any, fd: int, data: bytes) -> None:
    digest.update(data)
    _write_all(fd, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SeenCluster:
    """What the bot last read of a cluster's API that a restore needs when the API is down:
    the version (a restore needs the same z-stream) and the cluster-wide proxy (exported for
    cluster-restore.sh)."""

    cluster: str
    version: str
    proxy: Mapping[str, str]
    at: float
    masters: tuple[str, ...] = ()  # the nodes the API labelled master (SSH config may list workers too)

DrillHook = Callable[[BackupRecord, DrillOutcome, str], Awaitable[None]]  # record, outcome, who asked
DeleteHook = Callable[[BackupRecord, str, str, str], Awaitable[None]]  # record, why, actor, run id
InUse = Callable[[str], Awaitable[frozenset[str]]]  # cluster -> backup ids live runs name


async def _nothing(*_args: Any) -> None:
    return None


async def _none_in_use(_cluster: str) -> frozenset[str]:
    return frozenset()


@dataclass
class CatalogueHooks:
    """What the engine wants to hear from the store: a drill ended (it notifies a failed one), a
    backup was deleted (the audit stream), and which backups live runs use (retention keeps them)."""

    drilled: DrillHook = _nothing
    deleted: DeleteHook = _nothing
    in_use: InUse = _none_in_use


class Catalogue:
    """Backups by cluster in Redis: `etcdbot:backup:<id>` (JSON) and `etcdbot:backups:<cluster>`
    (a sorted set by finish time). Only checksummed, committed backups are ever added; the files
    and their metadata.json stay the source of truth (`sync`)."""

    def __init__(self, *, redis: aioredis.Redis, prefix: str = "etcdbot", hooks: CatalogueHooks | None = None) -> None:
        self._redis = redis
        self._prefix = prefix
        self.hooks = hooks or CatalogueHooks()

    def _key(self, backup_id: str) -> str:
        return f"{self._prefix}:backup:{backup_id}"

    def _index(self, cluster: str) -> str:
        return f"{self._prefix}:backups:{cluster}"

    async def add(self, record: BackupRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(record.id), json.dumps(record.for_storage(), sort_keys=True))
            pipe.zadd(self._index(record.cluster), {record.id: record.finished_at})
            await pipe.execute()
        metrics.backup_stored(cluster=record.cluster, size_bytes=sum(f.size for f in record.files),
                              finished_at=record.finished_at)

    async def get(self, backup_id: str) -> BackupRecord | None:
        raw = await self._redis.get(self._key(backup_id))
        return BackupRecord.from_storage(json.loads(raw)) if raw else None

    async def list(self, *, cluster: str, limit: int = 20) -> list[BackupRecord]:
        """Newest first."""
        ids = await self._redis.zrevrange(self._index(cluster), 0, limit - 1)
        if not ids:
            return []
        raws = await self._redis.mget([self._key(_text(i)) for i in ids])
        return [BackupRecord.from_storage(json.loads(r)) for r in raws if r]

    async def note_seen(self, seen: SeenCluster) -> None:
        """Keeps what the API said last (`seen_last()` answers with it when the API is down)."""
        await self._redis.set(f"{self._prefix}:cluster-seen:{seen.cluster}",
                              json.dumps({"version": seen.version, "proxy": dict(seen.proxy), "at": seen.at,
                                          "masters": list(seen.masters)}))

    async def seen_last(self, cluster: str) -> SeenCluster | None:
        raw = await self._redis.get(f"{self._prefix}:cluster-seen:{cluster}")
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return SeenCluster(cluster=cluster, version=str(data["version"]), at=float(data["at"]),
                               proxy={str(k): str(v) for k, v in dict(data.get("proxy") or {}).items()},
                               masters=tuple(str(m) for m in data.get("masters") or ()))
        except (ValueError, KeyError, TypeError):
            return None

    async def all(self, *, cluster: str) -> list[BackupRecord]:
        """Every backup of a cluster, newest first."""
        return await self.list(cluster=cluster, limit=1_000_000)

    async def update(self, record: BackupRecord) -> None:
        """Replaces a backup's entry (a drill's outcome); the same as `add` for Redis."""
        await self.add(record)

    async def remove(self, record: BackupRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(record.id))
            pipe.zrem(self._index(record.cluster), record.id)
            await pipe.execute()

    async def by_run(self, *, cluster: str, run_id: str, scan: int = 50) -> BackupRecord | None:
        """The backup a run made, among the newest `scan`."""
        return next((r for r in await self.list(cluster=cluster, limit=scan) if r.run_id == run_id), None)

    async def rebuild(self, records: Sequence[BackupRecord]) -> int:
        """Adds the given records (from `BackupStore.records()`) that the catalogue lacks."""
        added = 0
        for record in records:
            if not await self._redis.exists(self._key(record.id)):
                await self.add(record)
                added += 1
        return added

    async def sync(self, *, cluster: str, records: Sequence[BackupRecord]) -> SyncReport:
        """Makes the catalogue of `cluster` say what the store's metadata files say: adds what it
        lacks (after Redis lost its data), replaces what differs (a drill recorded on disk by a
        bot that died before Redis heard of it), removes what is gone from disk."""
        on_disk = {r.id: r for r in records}
        listed = {r.id: r for r in await self.all(cluster=cluster)}
        index_ids = {_text(i) for i in await self._redis.zrange(self._index(cluster), 0, -1)}
        added = changed = removed = 0
        for backup_id, record in on_disk.items():
            known = listed.get(backup_id)
            if known is None:
                added += 1
            elif known != record:
                changed += 1
            else:
                continue
            await self.add(record)
        for backup_id in (set(listed) | index_ids) - set(on_disk):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(backup_id))
                pipe.zrem(self._index(cluster), backup_id)
                await pipe.execute()
            removed += 1
        return SyncReport(added=added, changed=changed, removed=removed, total=len(on_disk))

    async def record_drill(self, *, store: BackupStore, record: BackupRecord, outcome: DrillOutcome,
                           asked_by: str) -> BackupRecord:
        """Writes a drill's outcome beside the backup (metadata.json, then the catalogue), counts
        it, and tells the engine (which notifies the channel of a failed one)."""
        updated = record.with_drill(outcome)
        store.update(updated)
        await self.update(updated)
        metrics.drill_finished(cluster=record.cluster, ok=outcome.ok, seconds=outcome.seconds,
                               finished_at=record.finished_at)
        await self.hooks.drilled(updated, outcome, asked_by)
        return updated


@dataclass(frozen=True)
class SyncReport:
    added: int
    changed: int
    removed: int
    total: int


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
