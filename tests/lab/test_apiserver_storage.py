"""lab.apiserver storage + objects against a real TLS etcd: revisions, conflicts, selectors,
patches, and StoreUnavailable when etcd is gone."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lab.apiserver.objects import Objects
from lab.apiserver.patches import json_patch
from lab.apiserver.storage import AlreadyExists, Conflict, EtcdStore, NotFound, StoreUnavailable
from tests.lab.etcd_fixture import EtcdProcess, free_port, start_etcd


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    proc = start_etcd(dir=tmp_path / "etcd")
    yield proc
    proc.stop()


@pytest.fixture
async def objects(etcd: EtcdProcess) -> AsyncIterator[Objects]:
    store = EtcdStore(endpoints=[etcd.endpoint], ca_file=etcd.ca.cert_file, cert_file=etcd.client.cert,
                      key_file=etcd.client.key, timeout=2.0)
    yield Objects(store)
    await store.close()


def _pod(name: str, ns: str = "openshift-etcd", **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": "master-0", "containers": [{"name": "etcd"}]}, "status": {"phase": "Running"}}


async def test_crud_revisions_and_keys(objects: Objects, etcd: EtcdProcess) -> None:
    created = await objects.create("pods", _pod("etcd-master-0", app="etcd"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    got = await objects.get("pods", "etcd-master-0", "openshift-etcd")
    assert got["metadata"]["resourceVersion"] == meta["resourceVersion"]
    # Stored like Kubernetes: JSON under /kubernetes.io/pods/<ns>/<name>, no resourceVersion inside.
    out = etcd.etcdctl("get", "/kubernetes.io/pods/openshift-etcd/etcd-master-0", "--print-value-only")
    assert '"name":"etcd-master-0"' in out.stdout and "resourceVersion" not in out.stdout
    with pytest.raises(AlreadyExists):
        await objects.create("pods", _pod("etcd-master-0"))

    got["spec"]["nodeName"] = "master-1"
    updated = await objects.update("pods", got)
    assert updated["metadata"]["generation"] == 2
    assert int(updated["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    with pytest.raises(Conflict):
        await objects.update("pods", got)  # stale resourceVersion
    forced = await objects.update("pods", got, check_version=False)
    assert forced["metadata"]["uid"] == meta["uid"]

    patched = await objects.merge_patch("pods", "etcd-master-0", {"metadata": {"labels": {"app": None, "x": "y"}}},
                                        "openshift-etcd")
    assert patched["metadata"]["labels"] == {"x": "y"}

    def bump(obj: dict) -> None:
        obj["status"]["phase"] = "Failed"

    mutated = await objects.mutate("pods", "etcd-master-0", bump, "openshift-etcd")
    assert mutated["status"]["phase"] == "Failed" and mutated["metadata"]["generation"] == patched["metadata"]["generation"]
    unchanged = await objects.mutate("pods", "etcd-master-0", lambda o: None, "openshift-etcd")
    assert unchanged["metadata"]["resourceVersion"] == mutated["metadata"]["resourceVersion"]

    deleted = await objects.delete("pods", "etcd-master-0", "openshift-etcd")
    assert deleted["metadata"]["name"] == "etcd-master-0"
    with pytest.raises(NotFound, match='pods "etcd-master-0" not found'):
        await objects.get("pods", "etcd-master-0", "openshift-etcd")
    with pytest.raises(NotFound):
        await objects.delete("pods", "etcd-master-0", "openshift-etcd")


async def test_list_selectors(objects: Objects) -> None:
    await objects.create("pods", _pod("a", app="etcd", tier="x"))
    await objects.create("pods", _pod("b", app="etcd"))
    await objects.create("pods", _pod("c", ns="other", app="web"))
    await objects.create("namespaces", {"metadata": {"name": "openshift-etcd"}})
    names = lambda items: [o["metadata"]["name"] for o in items]  # noqa: E731
    items, rv = await objects.list("pods")
    assert names(items) == ["a", "b", "c"] and int(rv) > 0
    assert names((await objects.list("pods", "openshift-etcd"))[0]) == ["a", "b"]
    assert names((await objects.list("pods", label_selector="app=etcd,!tier"))[0]) == ["b"]
    assert names((await objects.list("pods", label_selector="app!=etcd"))[0]) == ["c"]
    assert names((await objects.list("pods", label_selector="tier"))[0]) == ["a"]
    assert names((await objects.list("pods", label_selector="app in (web, x)"))[0]) == ["c"]
    assert names((await objects.list("pods", field_selector="metadata.namespace=other"))[0]) == ["c"]
    assert names((await objects.list("pods", field_selector="metadata.name!=a,status.phase=Running"))[0]) == ["b", "c"]
    ns = await objects.get("namespaces", "openshift-etcd")
    assert ns["status"]["phase"] == "Active"


def test_json_patch() -> None:
    doc = {"a": {"b": [1, 2]}, "c": 1}
    out = json_patch(doc, [{"op": "add", "path": "/a/b/-", "value": 3}, {"op": "remove", "path": "/c"},
                           {"op": "replace", "path": "/a/b/0", "value": 0}, {"op": "add", "path": "/d~1e", "value": 1}])
    assert out == {"a": {"b": [0, 2, 3]}, "d/e": 1} and doc["c"] == 1


async def test_hung_member_does_not_eat_the_budget(etcd: EtcdProcess) -> None:
    """A listener that never answers (like a stopped member) first in the list: still served."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        store = EtcdStore(endpoints=[f"https://127.0.0.1:{hung.getsockname()[1]}", etcd.endpoint],
                          ca_file=etcd.ca.cert_file, cert_file=etcd.client.cert, key_file=etcd.client.key, timeout=2.0)
        try:
            created = await Objects(store).create("nodes", {"metadata": {"name": "master-0"}})
            assert created["metadata"]["resourceVersion"]
        finally:
            await store.close()


async def test_unavailable_is_bounded(etcd: EtcdProcess) -> None:
    # A port nobody listens on, then the real member killed: both StoreUnavailable, in bounded time.
    store = EtcdStore(endpoints=[f"https://127.0.0.1:{free_port()}", etcd.endpoint], ca_file=etcd.ca.cert_file,
                      cert_file=etcd.client.cert, key_file=etcd.client.key, timeout=1.0)
    objects = Objects(store)
    try:
        await objects.create("nodes", {"metadata": {"name": "master-0"}})  # second endpoint answers
        etcd.stop()
        start = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await objects.get("nodes", "master-0")
        assert time.monotonic() - start < 3
    finally:
        await store.close()
