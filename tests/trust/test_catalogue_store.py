"""The store on disk is the source of truth: the catalogue rebuilt from it after Redis lost its
data, a drill's outcome written atomically beside the backup, a deleted backup gone whole; and
the restore drill of a stored backup (a real etcd snapshot, a real scratch etcd) recorded, with a
damaged copy failing and never marked drilled."""

from __future__ import annotations

import json
import os
from pathlib import Path

import redis.asyncio as aioredis

from bot.backups import BackupStore, Catalogue, CatalogueHooks, DrillOutcome
from bot.drill import Driller
from tests.trust.stored import make_backup
from tests.unit.test_drill import snapshot  # noqa: F401  (the module's real-etcd snapshot fixture)


def metadata(store: BackupStore, record_id: str, cluster: str = "lab") -> dict:
    return json.loads((store.root / cluster / record_id / "metadata.json").read_text())


async def test_flushall_then_sync_lists_every_backup_again(rds: aioredis.Redis, tmp_path: Path) -> None:
    store = BackupStore(root=tmp_path / "backups", keys_root=tmp_path / "keys", _fsync=False)
    catalogue = Catalogue(redis=rds)
    made = [make_backup(store, at=1_790_000_000 + i * 3600, drilled=i % 2 == 0, encrypted=i == 1) for i in range(5)]
    for record in made:
        await catalogue.add(record)
    await rds.flushall()
    assert await catalogue.all(cluster="lab") == []
    report = await catalogue.sync(cluster="lab", records=store.records(cluster="lab"))
    assert (report.added, report.changed, report.removed, report.total) == (5, 0, 0, 5)
    listed = await catalogue.all(cluster="lab")
    assert [r.id for r in listed] == [r.id for r in reversed(made)]  # newest first
    assert listed == list(reversed(made))  # every field, drills included

    # A backup deleted by hand disappears from the catalogue; a drill recorded on disk only shows.
    store.remove(made[0])
    store.update(made[1].with_drill(DrillOutcome(ok=True, at=1.0, seconds=2.0, revision=100, keys=50)))
    report = await catalogue.sync(cluster="lab", records=store.records(cluster="lab"))
    assert (report.added, report.changed, report.removed) == (0, 1, 1)
    after = {r.id: r for r in await catalogue.all(cluster="lab")}
    assert made[0].id not in after and after[made[1].id].drilled


async def test_update_is_atomic_and_remove_leaves_nothing(tmp_path: Path) -> None:
    store = BackupStore(root=tmp_path / "backups", keys_root=tmp_path / "keys", _fsync=False)
    record = make_backup(store, encrypted=True)
    store.update(record.with_drill(DrillOutcome(ok=False, at=5.0, seconds=1.5, error="etcd exited")))
    meta = metadata(store, record.id)
    assert meta["drill"] == {"ok": False, "at": 5.0, "seconds": 1.5, "error": "etcd exited", "revision": 0, "keys": 0,
                             "by": ""}
    assert meta["verified"] is True  # checksummed, still
    assert [p.name for p in (store.root / "lab" / record.id).iterdir() if p.name.startswith(".")] == []
    store.remove(record)
    assert not (store.root / "lab" / record.id).exists() and not (store.keys / "lab" / record.id).exists()
    assert list((store.root / ".incoming").iterdir()) == [] and list((store.keys / ".incoming").iterdir()) == []


async def test_a_stored_backup_is_drilled_and_a_damaged_one_never_marked_drilled(
        rds: aioredis.Redis, tmp_path: Path, snapshot: tuple[Path, dict[str, int]]) -> None:  # noqa: F811
    path, meta = snapshot
    heard = []

    async def drilled(record, outcome, by):  # type: ignore[no-untyped-def]
        heard.append((record.id, outcome.ok, by))

    store = BackupStore(root=tmp_path / "backups", _fsync=False, driller=Driller(work_dir=tmp_path / "drill"))
    catalogue = Catalogue(redis=rds, hooks=CatalogueHooks(drilled=drilled))
    good = make_backup(store, snapshot=path.read_bytes(), revision=meta["revision"], total_keys=meta["total_keys"])
    await catalogue.add(good)
    outcome = await store.prove(good, by="run1")
    assert outcome.ok, outcome.error
    await catalogue.record_drill(store=store, record=good, outcome=outcome, asked_by="U0ALICE01")
    assert metadata(store, good.id)["drill"]["ok"] is True
    assert (await catalogue.get(good.id)).drilled  # type: ignore[union-attr]
    assert heard == [(good.id, True, "U0ALICE01")]
    assert list((tmp_path / "drill").iterdir()) == []  # the scratch etcd's directory is gone

    # Bytes flipped in the store's copy: the drill fails on the checksum, nothing is restored.
    damaged = make_backup(store, snapshot=path.read_bytes(), revision=meta["revision"], total_keys=meta["total_keys"])
    snap = Path(damaged.file("snapshot").path)
    with snap.open("r+b") as handle:
        handle.seek(os.path.getsize(snap) // 2)
        handle.write(b"\xff" * 64)
    outcome = await store.prove(damaged)
    assert not outcome.ok and "no longer matches its sha256" in outcome.error
    recorded = await catalogue.record_drill(store=store, record=damaged, outcome=outcome, asked_by="scheduler")
    assert not recorded.drilled and metadata(store, damaged.id)["drill"]["ok"] is False
    assert heard[-1] == (damaged.id, False, "scheduler")

    # Damaged before it was ever checksummed (a bad disk on the master): the sha256 matches, the
    # restore itself refuses it.
    raw = bytearray(path.read_bytes())
    for at in range(len(raw) // 2, len(raw) // 2 + 64):  # every bit flipped: changed whatever was there
        raw[at] ^= 0xFF
    born_bad = make_backup(store, snapshot=bytes(raw), revision=meta["revision"], total_keys=meta["total_keys"])
    outcome = await store.prove(born_bad)
    assert not outcome.ok and "fails etcd's own integrity check" in outcome.error, outcome
    assert list((tmp_path / "drill").iterdir()) == []
