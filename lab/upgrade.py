"""z-stream upgrades, as the cluster-version operator (CVO) shows them: `etcdbot-lab upgrade --to 4.5.3`.

Why the lab needs them: the document says to take a backup after every upgrade, because a restore
needs a backup of the same z-stream; a bot that records versions and refuses a backup of another
release can only be tested against a cluster whose version moves.

What an upgrade does here, in the CVO's order: ClusterVersion gets `spec.desiredUpdate`,
`status.desired` and a new `Partial` entry at the head of `status.history` (the old entries are
kept), and Progressing reads "Working towards 4.5.3: N% complete". Then each control plane
operator rolls a new revision of its static pods with the release's images (the etcd members
restart one by one on the data they have), and reports the new version in its ClusterOperator;
the other operators follow. The history entry becomes `Completed` and Progressing "Cluster version
is 4.5.3". New revisions' resource dirs record the release in `configmaps/<kind>-pod/version`, so
a backup's static_kuberesources tarball says which release it was taken on.

What it does not do: the machine-config operator's node reboots, update graphs and channels
(`oc adm upgrade` without `--to`), downgrades.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING, Any

from lab import seed
from lab.apiserver.storage import NotFound
from lab.controllers import TRANSIENT, set_condition

if TYPE_CHECKING:
    from lab.daemon import LabDaemon

# The control plane operators in the CVO's run-level order, and their ClusterOperators.
ROLLOUTS = (("etcds", "etcd"), ("kubeapiservers", "kube-apiserver"),
            ("kubecontrollermanagers", "kube-controller-manager"), ("kubeschedulers", "kube-scheduler"))
_VERSION = re.compile(r"4\.5\.(\d{1,3})")


class UpgradeError(Exception):
    """An upgrade the lab refuses (printed as the CLI's one-line error)."""


def parse_version(version: str) -> int | None:
    """The z of a 4.5.z release, or None for anything else."""
    match = _VERSION.fullmatch(version or "")
    return int(match.group(1)) if match else None


class ClusterVersionOperator:
    def __init__(self, daemon: LabDaemon) -> None:
        self.d = daemon
        self._task: asyncio.Task[Any] | None = None
        self._resumed = False
        self.state = "Completed"
        self.target = ""

    def summary(self) -> dict[str, str]:
        return {"state": self.state, "version": self.target or self.d.spec.version}

    async def start(self, version: str) -> str:
        current = self.d.spec.version
        z = parse_version(version)
        if z is None:
            raise UpgradeError(f"{version!r} is not an OpenShift 4.5 z-stream release (like 4.5.3)")
        if self._task is not None and not self._task.done():
            raise UpgradeError(f"an upgrade to {self.target} is in progress; wait for it to complete")
        if version == current:
            raise UpgradeError(f"the cluster is already at {version}")
        if z < (parse_version(current) or 0):
            raise UpgradeError(f"downgrades are not supported: the cluster is at {current}")
        try:
            await self._begin(version)
        except TRANSIENT as exc:
            raise UpgradeError(f"the API is unavailable, the upgrade was not started: {exc}") from None
        self._launch(version)
        return f"Updating to {version}"

    def _launch(self, version: str) -> None:
        self.state, self.target = "Partial", version
        self._task = self.d.spawn(self._run(version), name="upgrade")

    async def sync(self) -> None:
        """After a daemon restart, an upgrade left Partial in ClusterVersion goes on."""
        if self._resumed:
            return
        cv = await self.d.objects.get("clusterversions", "version")
        self._resumed = True
        history = (cv.get("status") or {}).get("history") or []
        if history and history[0].get("state") == "Partial" and (self._task is None or self._task.done()):
            self._launch(history[0]["version"])

    async def _begin(self, version: str) -> None:
        now = seed.iso(time.time())
        image = seed.release_image(version)

        def begin(cv: dict[str, Any]) -> dict[str, Any]:
            cv.setdefault("spec", {})["desiredUpdate"] = {"version": version, "image": image, "force": False}
            status = cv.setdefault("status", {})
            status["desired"] = {"version": version, "image": image}
            status["history"] = [{"state": "Partial", "startedTime": now, "completionTime": None,
                                  "version": version, "image": image, "verified": False},
                                 *(status.get("history") or [])]
            status["observedGeneration"] = int(status.get("observedGeneration") or 1) + 1
            set_condition(cv, "Progressing", "True", "", f"Working towards {version}: 0% complete")
            return cv

        await self.d.objects.mutate("clusterversions", "version", begin)

    async def _retry(self, what: Any) -> Any:
        """The CVO keeps trying while etcd or the API is unavailable."""
        while True:
            try:
                return await what()
            except TRANSIENT:
                await asyncio.sleep(1.0)

    async def _run(self, version: str) -> None:
        self.d.log(f"upgrade to {version} started")
        self.d.spec = self.d.spec.with_version(version)
        self.d.spec.save()
        operators, _ = await self._retry(lambda: self.d.objects.list("clusteroperators"))
        names = [o["metadata"]["name"] for o in operators]
        steps = len(ROLLOUTS) + 1
        for done, (resource, operator) in enumerate(ROLLOUTS):
            await self._progress(version, int(100 * done / steps))
            self.d.revisions.request(resource)
            while not await self._retry(lambda resource=resource: self._rolled_out(resource)):
                await asyncio.sleep(0.5)
            await self._retry(lambda operator=operator: self._report(operator, version))
        await self._progress(version, int(100 * len(ROLLOUTS) / steps))
        for name in names:
            if name not in {op for _, op in ROLLOUTS}:
                await self._retry(lambda name=name: self._report(name, version))
        await self._retry(lambda: self._complete(version))
        self.state = "Completed"
        self.d.log(f"upgrade to {version} completed")

    async def _rolled_out(self, resource: str) -> bool:
        if not self.d.revisions.settled(resource):
            return False
        obj = await self.d.objects.get(resource, "cluster")
        status = obj.get("status") or {}
        latest = status.get("latestAvailableRevision")
        return all(s.get("currentRevision") == latest for s in status.get("nodeStatuses") or [])

    async def _progress(self, version: str, percent: int) -> None:
        def update(cv: dict[str, Any]) -> dict[str, Any]:
            set_condition(cv, "Progressing", "True", "", f"Working towards {version}: {percent}% complete")
            return cv

        await self._retry(lambda: self.d.objects.mutate("clusterversions", "version", update))

    async def _report(self, operator: str, version: str) -> None:
        def update(co: dict[str, Any]) -> dict[str, Any]:
            versions = (co.get("status") or {}).get("versions") or [{"name": "operator"}]
            co.setdefault("status", {})["versions"] = [{**v, "version": version} for v in versions]
            return co

        try:
            await self.d.objects.mutate("clusteroperators", operator, update)
        except NotFound:
            pass

    async def _complete(self, version: str) -> None:
        now = seed.iso(time.time())

        def complete(cv: dict[str, Any]) -> dict[str, Any]:
            history = cv["status"]["history"]
            if history and history[0].get("version") == version:
                history[0].update(state="Completed", completionTime=now)
            set_condition(cv, "Progressing", "False", "", f"Cluster version is {version}")
            set_condition(cv, "Available", "True", "", f"Done applying {version}")
            return cv

        await self.d.objects.mutate("clusterversions", "version", complete)
