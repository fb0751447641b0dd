"""Backups made of real files in a real BackupStore, committed the way the backup procedure does
(`prepare`, write, `commit`), for tests of what happens to stored backups."""

from __future__ import annotations

import hashlib
import os
import secrets
import time

from bot.backups import BackupRecord, BackupStore, DrillOutcome, StoredFile, new_backup_id


def make_backup(store: BackupStore, *, cluster: str = "lab", at: float | None = None, version: str = "4.5.2",
                drilled: bool | None = None, size: int = 2048, encrypted: bool = False,
                snapshot: bytes | None = None, revision: int = 100, total_keys: int = 50) -> BackupRecord:
    """One committed backup finished at `at`; `drilled`: None never drilled, True passed, False failed."""
    at = time.time() if at is None else at
    run_id = secrets.token_hex(4)
    backup_id = new_backup_id(run_id=run_id, at=at)
    stamp = time.strftime("%Y-%m-%d_%H%M%S", time.gmtime(at))
    temp = store.prepare(run_id=run_id, encrypted=encrypted)
    final = store.placement(cluster=cluster, backup_id=backup_id, encrypted=encrypted)
    files = []
    for role, name, temp_dir, final_dir, data in (
        ("snapshot", f"snapshot_{stamp}.db", temp.snapshot_dir, final.snapshot_dir,
         snapshot if snapshot is not None else os.urandom(size)),
        ("resources", f"static_kuberesources_{stamp}.tar.gz", temp.resources_dir, final.resources_dir, os.urandom(size)),
    ):
        (temp_dir / name).write_bytes(data)
        files.append(StoredFile(name=name, role=role, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                path=str(final_dir / name)))
    drill = None if drilled is None else DrillOutcome(ok=drilled, at=at + 60, seconds=2.5, revision=revision,
                                                      keys=total_keys, error="" if drilled else "revision 1, the metadata says 100")
    record = BackupRecord(
        id=backup_id, cluster=cluster, version=version, revision=revision, total_keys=total_keys, snapshot_hash=1,
        snapshot_size=files[0].size, files=tuple(files), host="ip-10-0-131-183.ec2.internal",
        started_at=at - 30, finished_at=at, run_id=run_id, requester="U0ALICE01", verified=True,
        encrypted=encrypted, host_dir=f"/home/core/assets/backup/{run_id}", drill=drill,
    )
    store.commit(record=record, encrypted=encrypted)
    return record
