"""Machine API emulation (machine.openshift.io/v1beta1 in openshift-machine-api).

A new Machine goes Provisioning -> Provisioned -> Running on the lab clock and brings up a new
master host (with its own SSH and static pods) and a Ready node; etcd then scales up through
the operator's revision rollout. Deleting a Machine (master or worker) terminates its instance: the
host powers off for good and its Node goes away. Worker MachineSets report their replicas and
ready replicas; they do not create replacement machines. A stopped instance shows
`providerStatus.instanceState: stopped` while the phase stays Running, as on AWS.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from lab import seed
from lab.apiserver.storage import AlreadyExists, NotFound
from lab.spec import MasterSpec, new_master, next_replacement_ip

if TYPE_CHECKING:
    from lab.daemon import LabDaemon

NAMESPACE = "openshift-machine-api"
PROVISIONING_LAB_SECONDS = 120.0
BOOT_LAB_SECONDS = 60.0
MACHINESET_RESYNC_SECONDS = 3.0  # wall seconds between MachineSet status updates (two list calls each)


class MachineController:
    def __init__(self, daemon: LabDaemon) -> None:
        self.d = daemon
        self._instance_state: dict[str, str] = {}  # node -> state still to write
        self._provisioning: dict[str, float] = {}  # machine -> monotonic deadline
        self._booting: dict[str, tuple[float, MasterSpec]] = {}
        self._next_machinesets = 0.0

    def set_instance_state(self, node: str, state: str) -> None:
        self._instance_state[node] = state

    async def sync(self) -> None:
        items, _ = await self.d.objects.list("machines", namespace=NAMESPACE)
        by_node = {m.get("status", {}).get("nodeRef", {}).get("name"): m for m in items}
        names = {m["metadata"]["name"] for m in items}
        for host in self.d.all_hosts():
            if host.node not in by_node and host.spec.machine not in names:
                await self._terminate(host.node)
        for node, state in list(self._instance_state.items()):
            machine = by_node.get(node)
            if machine is not None:
                await self._write_state(machine["metadata"]["name"], state)
            self._instance_state.pop(node, None)
        for machine in items:
            await self._advance(machine)
        if time.monotonic() >= self._next_machinesets:
            self._next_machinesets = time.monotonic() + MACHINESET_RESYNC_SECONDS
            await self._machinesets(items)

    async def _machinesets(self, machines: list[dict[str, Any]]) -> None:
        """MachineSet status: its machines, and how many of them back a Ready node."""
        sets, _ = await self.d.objects.list("machinesets", namespace=NAMESPACE)
        if not sets:
            return
        nodes, _ = await self.d.objects.list("nodes")
        ready_nodes = {n["metadata"]["name"] for n in nodes
                       if any(c.get("type") == "Ready" and c.get("status") == "True"
                              for c in (n.get("status") or {}).get("conditions") or [])}
        for ms in sets:
            name = ms["metadata"]["name"]
            owned = [m for m in machines
                     if (m["metadata"].get("labels") or {}).get("machine.openshift.io/cluster-api-machineset") == name]
            ready = sum(1 for m in owned if (m.get("status") or {}).get("nodeRef", {}).get("name") in ready_nodes)
            status = {"replicas": len(owned), "fullyLabeledReplicas": len(owned), "readyReplicas": ready,
                      "availableReplicas": ready, "observedGeneration": ms["metadata"].get("generation", 1)}
            if all((ms.get("status") or {}).get(k) == v for k, v in status.items()):
                continue

            def update(obj: dict[str, Any], *, status: dict[str, Any] = status) -> dict[str, Any]:
                obj["status"] = {**(obj.get("status") or {}), **status}
                return obj

            with contextlib.suppress(NotFound):
                await self.d.objects.mutate("machinesets", name, update, namespace=NAMESPACE)

    async def _write_state(self, name: str, state: str) -> None:
        def update(m: dict[str, Any]) -> dict[str, Any]:
            m["status"].setdefault("providerStatus", {})["instanceState"] = state
            m["metadata"].setdefault("annotations", {})["machine.openshift.io/instance-state"] = state
            return m

        await self.d.objects.mutate("machines", name, update, namespace=NAMESPACE)

    async def _terminate(self, node: str) -> None:
        self.d.log(f"machine of {node} deleted: terminating the instance")
        await self.d.remove_master(node)
        with contextlib.suppress(NotFound):
            await self.d.objects.delete("nodes", node)
        # The pod garbage collector removes pods bound to a node that no longer exists.
        pods, _ = await self.d.objects.list("pods", field_selector=f"spec.nodeName={node}")
        for pod in pods:
            with contextlib.suppress(NotFound):
                await self.d.objects.delete("pods", pod["metadata"]["name"], namespace=pod["metadata"]["namespace"])

    async def _advance(self, machine: dict[str, Any]) -> None:
        name = machine["metadata"]["name"]
        phase = machine.get("status", {}).get("phase")
        now = time.monotonic()
        if not phase:
            self._provisioning[name] = self.d.clock.deadline(PROVISIONING_LAB_SECONDS)
            await self._set_status(name, seed.machine_status(None, phase="Provisioning", instance_state="pending",
                                                             instance_id=_instance_id(name)))
        elif phase == "Provisioning" and now >= self._provisioning.get(name, 0):
            master = self._new_master(name)
            self._booting[name] = (self.d.clock.deadline(BOOT_LAB_SECONDS), master)
            await self._set_status(name, seed.machine_status(None, phase="Provisioned", instance_state="running",
                                                             instance_id=_instance_id(name)))
        elif phase == "Provisioned" and name in self._booting and now >= self._booting[name][0]:
            _, master = self._booting.pop(name)
            await self.d.add_master(master)
            with contextlib.suppress(AlreadyExists):
                await self.d.objects.create("nodes", seed.node_object(master, created=time.time()))
            await self._set_status(name, seed.machine_status(master, phase="Running", instance_state="running",
                                                             instance_id=_instance_id(name)))
            self.d.log(f"machine {name} is Running as node {master.node}")

    def _new_master(self, machine: str) -> MasterSpec:
        index = int(machine.rsplit("-", 1)[-1]) if machine.rsplit("-", 1)[-1].isdigit() else len(self.d.spec.masters)
        master = new_master(index=index, ip=next_replacement_ip(self.d.spec), infra_id=self.d.spec.infra_id)
        return MasterSpec(**{**master.__dict__, "machine": machine})

    async def _set_status(self, name: str, status: dict[str, Any]) -> None:
        def update(m: dict[str, Any]) -> dict[str, Any]:
            m["status"] = status
            return m

        await self.d.objects.mutate("machines", name, update, namespace=NAMESPACE)


def _instance_id(machine: str) -> str:
    import hashlib

    return "i-0" + hashlib.sha256(machine.encode()).hexdigest()[:16]
