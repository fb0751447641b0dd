"""Server-side printing: the meta.k8s.io/v1 Table answers `kubectl get` asks for.

A server that answers a plain list gets only NAME and AGE printed; these are the columns
OpenShift 4.5 (Kubernetes 1.18) prints, computed the way its printers compute them (pod STATUS
from container states, node ROLES from labels, CSR CONDITION). AGE-like cells are rendered here
as Kubernetes' HumanDuration strings against the lab's clock, as a real apiserver renders them
against its own: that way a sped-up lab clock ages objects consistently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]
Cell = str | int | None


@dataclass(frozen=True)
class Column:
    """One column: its header (kubectl upper-cases it), type, priority (1 = only with -o wide)."""

    name: str
    cell: Callable[[Obj, datetime], Cell]
    type: str = "string"
    priority: int = 0
    format: str = ""
    description: str = ""

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "format": self.format,
                "description": self.description or self.name, "priority": self.priority}


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def since(timestamp: str | None, now: datetime) -> str:
    """translateTimestampSince: `<unknown>` for a missing time."""
    if not timestamp:
        return "<unknown>"
    try:
        when = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return human_duration((now - when).total_seconds())


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _status(obj: Obj) -> Obj:
    return obj.get("status") or {}


def _condition(obj: Obj, kind: str) -> Obj:
    for cond in _status(obj).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def _or_none(value: Any) -> str:
    return str(value) if value not in (None, "") else "<none>"


NAME = Column("Name", lambda o, now: _meta(o).get("name", ""), format="name",
              description="Name must be unique within a namespace.")
AGE = Column("Age", lambda o, now: since(_meta(o).get("creationTimestamp"), now),
             description="CreationTimestamp is a timestamp representing the server time when this object was created.")


# -- nodes -------------------------------------------------------------------------------

def node_status(node: Obj) -> str:
    ready = _condition(node, "Ready")
    parts = ["Unknown"] if not ready else ["Ready" if ready.get("status") == "True" else "NotReady"]
    if (node.get("spec") or {}).get("unschedulable"):
        parts.append("SchedulingDisabled")
    return ",".join(parts)


def node_roles(node: Obj) -> str:
    roles: set[str] = set()
    for key, value in (_meta(node).get("labels") or {}).items():
        if key.startswith("node-role.kubernetes.io/"):
            role = key.removeprefix("node-role.kubernetes.io/")
            if role:
                roles.add(role)
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    return ",".join(sorted(roles)) or "<none>"


def _node_address(node: Obj, kind: str) -> str:
    for addr in _status(node).get("addresses") or []:
        if addr.get("type") == kind:
            return addr.get("address", "<none>")
    return "<none>"


def _node_info(node: Obj, field: str) -> str:
    return (_status(node).get("nodeInfo") or {}).get(field) or "<unknown>"


NODE_COLUMNS = (
    NAME,
    Column("Status", lambda o, now: node_status(o)),
    Column("Roles", lambda o, now: node_roles(o)),
    AGE,
    Column("Version", lambda o, now: _node_info(o, "kubeletVersion") if _status(o).get("nodeInfo") else ""),
    Column("Internal-IP", lambda o, now: _node_address(o, "InternalIP"), priority=1),
    Column("External-IP", lambda o, now: _node_address(o, "ExternalIP"), priority=1),
    Column("OS-Image", lambda o, now: _node_info(o, "osImage"), priority=1),
    Column("Kernel-Version", lambda o, now: _node_info(o, "kernelVersion"), priority=1),
    Column("Container-Runtime", lambda o, now: _node_info(o, "containerRuntimeVersion"), priority=1),
)


# -- pods --------------------------------------------------------------------------------

@dataclass(frozen=True)
class PodSummary:
    ready: str
    status: str
    restarts: int


def pod_summary(pod: Obj) -> PodSummary:
    """READY, STATUS and RESTARTS as Kubernetes 1.18's printPod computes them."""
    spec, status = pod.get("spec") or {}, _status(pod)
    total = len(spec.get("containers") or [])
    ready = restarts = 0
    reason = status.get("reason") or status.get("phase") or ""
    initializing = False
    init_specs = spec.get("initContainers") or []
    for i, cs in enumerate(status.get("initContainerStatuses") or []):
        restarts += int(cs.get("restartCount") or 0)
        state = cs.get("state") or {}
        term, wait = state.get("terminated"), state.get("waiting")
        if term is not None and int(term.get("exitCode") or 0) == 0:
            continue
        if term is not None:
            if term.get("reason"):
                reason = "Init:" + term["reason"]
            elif term.get("signal"):
                reason = f"Init:Signal:{term['signal']}"
            else:
                reason = f"Init:ExitCode:{term.get('exitCode', 0)}"
        elif wait is not None and wait.get("reason") and wait.get("reason") != "PodInitializing":
            reason = "Init:" + wait["reason"]
        else:
            reason = f"Init:{i}/{len(init_specs)}"
        initializing = True
        break
    if not initializing:
        restarts = 0
        has_running = False
        for cs in reversed(status.get("containerStatuses") or []):
            restarts += int(cs.get("restartCount") or 0)
            state = cs.get("state") or {}
            term, wait = state.get("terminated"), state.get("waiting")
            if wait is not None and wait.get("reason"):
                reason = wait["reason"]
            elif term is not None and term.get("reason"):
                reason = term["reason"]
            elif term is not None:
                reason = f"Signal:{term['signal']}" if term.get("signal") else f"ExitCode:{term.get('exitCode', 0)}"
            elif cs.get("ready") and state.get("running") is not None:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            reason = "Running"
    if _meta(pod).get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    return PodSummary(ready=f"{ready}/{total}", status=reason, restarts=restarts)


def _readiness_gates(pod: Obj) -> str:
    gates = (pod.get("spec") or {}).get("readinessGates") or []
    if not gates:
        return "<none>"
    conds = {c.get("type"): c.get("status") for c in _status(pod).get("conditions") or []}
    true = sum(1 for g in gates if conds.get(g.get("conditionType")) == "True")
    return f"{true}/{len(gates)}"


POD_COLUMNS = (
    NAME,
    Column("Ready", lambda o, now: pod_summary(o).ready),
    Column("Status", lambda o, now: pod_summary(o).status),
    Column("Restarts", lambda o, now: pod_summary(o).restarts, type="integer"),
    AGE,
    Column("IP", lambda o, now: _or_none(_status(o).get("podIP")), priority=1),
    Column("Node", lambda o, now: _or_none((o.get("spec") or {}).get("nodeName")), priority=1),
    Column("Nominated Node", lambda o, now: _or_none(_status(o).get("nominatedNodeName")), priority=1),
    Column("Readiness Gates", lambda o, now: _readiness_gates(o), priority=1),
)


# -- the rest ------------------------------------------------------------------------------

def csr_condition(csr: Obj) -> str:
    types = {c.get("type") for c in _status(csr).get("conditions") or []}
    out = "Denied" if "Denied" in types else "Approved" if "Approved" in types else "Pending"
    if "Failed" in types:
        out += ",Failed"
    if _status(csr).get("certificate"):
        out += ",Issued"
    return out


def _label(key: str) -> Callable[[Obj, datetime], Cell]:
    return lambda o, now: (_meta(o).get("labels") or {}).get(key)


def _cond_status(kind: str) -> Callable[[Obj, datetime], Cell]:
    return lambda o, now: _condition(o, kind).get("status")


def _cond_since(kind: str) -> Callable[[Obj, datetime], Cell]:
    def cell(o: Obj, now: datetime) -> Cell:
        when = _condition(o, kind).get("lastTransitionTime")
        return since(when, now) if when else None
    return cell


def _operator_version(o: Obj, now: datetime) -> Cell:
    for v in _status(o).get("versions") or []:
        if v.get("name") == "operator":
            return v.get("version")
    return None


def _completed_version(o: Obj, now: datetime) -> Cell:
    for h in _status(o).get("history") or []:
        if h.get("state") == "Completed":
            return h.get("version")
    return None


def _machine_state(o: Obj, now: datetime) -> Cell:
    state = ((_status(o).get("providerStatus") or {}).get("instanceState"))
    return state or (_meta(o).get("annotations") or {}).get("machine.openshift.io/instance-state")


def _event_object(o: Obj, now: datetime) -> Cell:
    ref = o.get("involvedObject") or {}
    return f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"


COLUMNS: dict[str, tuple[Column, ...]] = {
    "nodes": NODE_COLUMNS,
    "pods": POD_COLUMNS,
    "namespaces": (NAME, Column("Status", lambda o, now: _status(o).get("phase", "")), AGE),
    "secrets": (
        NAME,
        Column("Type", lambda o, now: o.get("type", "Opaque")),
        Column("Data", lambda o, now: len(o.get("data") or {}), type="integer"),
        AGE,
    ),
    "configmaps": (
        NAME,
        Column("Data", lambda o, now: len(o.get("data") or {}) + len(o.get("binaryData") or {}), type="integer"),
        AGE,
    ),
    "events": (
        Column("Last Seen", lambda o, now: since(o.get("lastTimestamp") or o.get("eventTime")
                                                 or _meta(o).get("creationTimestamp"), now)),
        Column("Type", lambda o, now: o.get("type", "")),
        Column("Reason", lambda o, now: o.get("reason", "")),
        Column("Object", _event_object),
        Column("Message", lambda o, now: str(o.get("message", "")).strip()),
    ),
    "machines": (
        NAME,
        Column("Phase", lambda o, now: _status(o).get("phase")),
        Column("Type", _label("machine.openshift.io/instance-type")),
        Column("Region", _label("machine.openshift.io/region")),
        Column("Zone", _label("machine.openshift.io/zone")),
        AGE,
        Column("Node", lambda o, now: (_status(o).get("nodeRef") or {}).get("name"), priority=1),
        Column("ProviderID", lambda o, now: (o.get("spec") or {}).get("providerID"), priority=1),
        Column("State", _machine_state, priority=1),
    ),
    "machinesets": (
        NAME,
        Column("Desired", lambda o, now: (o.get("spec") or {}).get("replicas"), type="integer"),
        Column("Current", lambda o, now: _status(o).get("replicas"), type="integer"),
        Column("Ready", lambda o, now: _status(o).get("readyReplicas"), type="integer"),
        Column("Available", lambda o, now: _status(o).get("availableReplicas"), type="integer"),
        AGE,
    ),
    "clusteroperators": (
        NAME,
        Column("Version", _operator_version),
        Column("Available", _cond_status("Available")),
        Column("Progressing", _cond_status("Progressing")),
        Column("Degraded", _cond_status("Degraded")),
        Column("Since", _cond_since("Available")),
    ),
    "clusterversions": (
        NAME,
        Column("Version", _completed_version),
        Column("Available", _cond_status("Available")),
        Column("Progressing", _cond_status("Progressing")),
        Column("Since", _cond_since("Progressing")),
        Column("Status", lambda o, now: _condition(o, "Progressing").get("message")),
    ),
    "certificatesigningrequests": (
        NAME,
        AGE,
        Column("SignerName", lambda o, now: (o.get("spec") or {}).get("signerName")),
        Column("Requestor", lambda o, now: (o.get("spec") or {}).get("username")),
        Column("Condition", lambda o, now: csr_condition(o)),
    ),
}


def wants_table(accept: str) -> bool:
    """True when the Accept header asks for meta.k8s.io/v1 Table (kubectl get does, first)."""
    for part in accept.split(","):
        params = {p.strip() for p in part.split(";")[1:]}
        if "as=Table" in params and "g=meta.k8s.io" in params:
            return True
    return False


def _row_object(obj: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": _meta(obj)}


def table(*, resource: str, items: list[Obj], resource_version: str, now: datetime,
          include_object: str = "Metadata") -> Obj:
    """A meta.k8s.io/v1 Table of the items with the resource's columns (NAME, AGE by default)."""
    columns = COLUMNS.get(resource, (NAME, AGE))
    rows = []
    for obj in items:
        row: Obj = {"cells": [col.cell(obj, now) for col in columns]}
        embedded = _row_object(obj, include_object)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [col.definition() for col in columns],
        "rows": rows,
    }
