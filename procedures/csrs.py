"""Reviewing certificate signing requests (chapters 4 and 5.4): which pending CSRs are valid.

The document says "review the details of a CSR to verify that it is valid, approve each valid
CSR". Approving one grants a node identity in the cluster, so the bot does the review a careful
person does and says why, CSR by CSR; a second person approves (the steps that approve are
destructive). Valid, and offered for approval, are only:
- a node-bootstrapper CSR (`kubernetes.io/kube-apiserver-client-kubelet`, requested by
  `system:serviceaccount:openshift-machine-config-operator:node-bootstrapper`) whose subject is
  `CN=system:node:<name>, O=system:nodes`, with a kubelet client's usages and no host names, for
  a node or a machine the cluster knows;
- a `system:node:<name>` serving CSR (`kubernetes.io/kubelet-serving`, requested by that node
  itself, same subject) for an existing node, naming only that node's own addresses.
Anything else is suspicious, flagged with the reason, and never approved.

Pure functions (parse, review, render) are unit-tested; `read_csrs` reads the API.
"""

from __future__ import annotations

import base64
import ipaddress
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from bot.cluster.kube import CSR, MACHINE, NODE, KubeClient, csr_pending, kube_time, parse_conditions
from bot.config import NODE_NAME_RE
from procedures.cluster_nodes import NodeView, in_order, node_view

BOOTSTRAPPER = "system:serviceaccount:openshift-machine-config-operator:node-bootstrapper"
CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
NODE_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
CLIENT_USAGES = frozenset({"digital signature", "key encipherment", "client auth"})
SERVING_USAGES = frozenset({"digital signature", "key encipherment", "server auth"})


@dataclass(frozen=True)
class Request:
    """What a CSR's PEM request asks for."""

    common_name: str
    organizations: tuple[str, ...]
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()

    @property
    def hosts(self) -> tuple[str, ...]:
        return (*self.dns_names, *self.ip_addresses)


def parse_request(encoded: str) -> Request:
    """`spec.request` (base64 of a PEM CERTIFICATE REQUEST) -> its subject and host names."""
    try:
        pem = base64.b64decode(encoded, validate=True)
        request = x509.load_pem_x509_csr(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError("the request is not a PEM certificate request") from exc
    names = [a.value for a in request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = tuple(str(a.value) for a in request.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        pass
    return Request(common_name=str(names[0]) if names else "", organizations=orgs, dns_names=dns, ip_addresses=ips)


@dataclass(frozen=True)
class Known:
    """What the cluster knows of its nodes: Node objects (name -> addresses) and the node names
    its Machines give (nodeRef, InternalDNS/Hostname addresses) -> the machine's name."""

    nodes: Mapping[str, tuple[str, ...]]
    machines: Mapping[str, str]


def known_from(*, nodes: Iterable[NodeView], machines: Iterable[Mapping[str, Any]]) -> Known:
    by_node: dict[str, str] = {}
    for machine in machines:
        name = str((machine.get("metadata") or {}).get("name", ""))
        status = machine.get("status") or {}
        ref = str((status.get("nodeRef") or {}).get("name") or "")
        if ref:
            by_node[ref] = name
        for address in status.get("addresses") or []:
            if address.get("type") in ("InternalDNS", "Hostname") and address.get("address"):
                by_node.setdefault(str(address["address"]), name)
    return Known(nodes={n.name: (n.name, *n.addresses) for n in nodes}, machines=by_node)


@dataclass(frozen=True)
class CsrReview:
    name: str
    requestor: str
    node: str  # the node the CSR is for ("" when it names none)
    kind: str  # "client" (node-bootstrapper), "serving", or "other"
    signer: str
    usages: tuple[str, ...]
    created: float  # epoch seconds (0: unknown)
    condition: str  # "Pending", "Approved", "Denied"
    valid: bool
    why: str  # valid: what it is; not valid: why it is suspicious

    @property
    def pending(self) -> bool:
        return self.condition == "Pending"

    def age(self, now: float) -> str:
        if not self.created:
            return "?"
        seconds = max(0, int(now - self.created))
        if seconds < 120:
            return f"{seconds}s"
        if seconds < 7200:
            return f"{seconds // 60}m"
        return f"{seconds // 3600}h"


def _created(csr: Mapping[str, Any]) -> float:
    return kube_time((csr.get("metadata") or {}).get("creationTimestamp")) or 0.0


def _condition(csr: Mapping[str, Any]) -> str:
    kinds = {c.type for c in parse_conditions(csr) if c.status in ("True", "")}
    if "Denied" in kinds:
        return "Denied"
    if "Approved" in kinds:
        return "Approved"
    return "Pending" if csr_pending(csr) else "Approved"


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower().rstrip(".") == b.lower().rstrip(".")


def review(csr: Mapping[str, Any], known: Known) -> CsrReview:
    """One CSR, judged by the rules of the module docstring."""
    spec = csr.get("spec") or {}
    name = str((csr.get("metadata") or {}).get("name", ""))
    requestor = str(spec.get("username") or "")
    signer = str(spec.get("signerName") or "")
    usages = tuple(str(u) for u in spec.get("usages") or ())
    base = {"name": name, "requestor": requestor, "signer": signer, "usages": usages, "created": _created(csr),
            "condition": _condition(csr)}
    kind = "client" if signer == CLIENT_SIGNER else "serving" if signer == SERVING_SIGNER else "other"

    def verdict(node: str, valid: bool, why: str) -> CsrReview:
        return CsrReview(node=node, kind=kind, valid=valid, why=why, **base)

    try:
        request = parse_request(str(spec.get("request") or ""))
    except ValueError as exc:
        return verdict("", False, str(exc))
    node = request.common_name[len(NODE_PREFIX):] if request.common_name.startswith(NODE_PREFIX) else ""
    if kind == "other":
        return verdict(node, False, f"signer {signer or 'none'} is not a kubelet's (client or serving)")
    if not node or not NODE_NAME_RE.fullmatch(node) or request.organizations != (NODES_GROUP,):
        orgs = ",".join(request.organizations) or "none"
        return verdict(node, False, f"its subject is CN={request.common_name or 'none'}, O={orgs}: not a node's "
                                    f"(CN={NODE_PREFIX}<name>, O={NODES_GROUP})")
    if kind == "client":
        if requestor != BOOTSTRAPPER:
            return verdict(node, False, f"a kubelet client CSR requested by {requestor or 'nobody'}, "
                                        "not by the node-bootstrapper")
        if request.hosts:
            return verdict(node, False, f"a client certificate request that names hosts ({', '.join(request.hosts)})")
        if "client auth" not in usages or not set(usages) <= CLIENT_USAGES:
            return verdict(node, False, f"usages {', '.join(usages) or 'none'}: not a kubelet client's")
        if node in known.nodes:
            machine = known.machines.get(node)
            return verdict(node, True, f"node-bootstrapper CSR for node {node}"
                                       + (f" (machine {machine})" if machine else ""))
        if node in known.machines:
            return verdict(node, True, f"node-bootstrapper CSR for machine {known.machines[node]} (its node is "
                                       "not registered yet)")
        return verdict(node, False, f"no node or machine named {node} in the cluster")
    if requestor != f"{NODE_PREFIX}{node}":
        return verdict(node, False, f"a serving CSR for {node} requested by {requestor or 'nobody'}, not by the node "
                                    "itself")
    if "server auth" not in usages or not set(usages) <= SERVING_USAGES:
        return verdict(node, False, f"usages {', '.join(usages) or 'none'}: not a kubelet serving certificate's")
    if node not in known.nodes:
        return verdict(node, False, f"no node named {node} in the cluster")
    foreign = [h for h in request.hosts if not any(_same_address(h, a) for a in known.nodes[node])]
    if foreign:
        return verdict(node, False, f"names hosts node {node} does not have: {', '.join(foreign)}")
    return verdict(node, True, f"{NODE_PREFIX}{node} serving CSR of an existing node")


@dataclass(frozen=True)
class CsrView:
    """The cluster as the CSR review sees it: its nodes (masters first) and every CSR, reviewed."""

    nodes: tuple[NodeView, ...]
    csrs: tuple[CsrReview, ...]
    read_at: float

    @property
    def pending(self) -> tuple[CsrReview, ...]:
        roles = {n.name: n.master for n in self.nodes}
        found = [c for c in self.csrs if c.pending]
        return tuple(sorted(found, key=lambda c: (not roles.get(c.node, False), c.node, c.kind != "client", c.name)))

    @property
    def valid(self) -> tuple[CsrReview, ...]:
        return tuple(c for c in self.pending if c.valid)

    @property
    def suspicious(self) -> tuple[CsrReview, ...]:
        return tuple(c for c in self.pending if not c.valid)

    @property
    def not_ready(self) -> tuple[NodeView, ...]:
        return tuple(n for n in self.nodes if not n.ready)

    def waiting_for(self, nodes: Iterable[str] | None = None) -> tuple[str, ...]:
        """NotReady nodes (of `nodes`, default all) with no pending CSR naming them yet."""
        asked = {c.node for c in self.pending}
        wanted = set(nodes) if nodes is not None else None
        return tuple(n.name for n in self.not_ready if n.name not in asked and (wanted is None or n.name in wanted))


async def read_csrs(kube: KubeClient, *, fresh_after: float | None = None) -> CsrView:
    """`oc get csr`, `oc get nodes`, `oc get machines -A` and the review (`fresh_after`: see
    cluster_nodes.node_view). Raises KubeError."""
    csrs = await kube.list_objects(CSR)
    nodes = in_order([node_view(n, fresh_after=fresh_after) for n in await kube.list_objects(NODE)])
    try:
        machines = await kube.list_objects(MACHINE, namespace="openshift-machine-api")
    except Exception:  # no Machine API (a UPI cluster): nodes alone say what is known
        machines = []
    known = known_from(nodes=nodes, machines=machines)
    return CsrView(nodes=tuple(nodes), csrs=tuple(review(c, known) for c in csrs), read_at=time.time())


def describe(reviews: Sequence[CsrReview], *, now: float) -> str:
    """The review as the thread shows it: one paragraph per CSR, like `oc describe csr`, with the verdict."""
    lines = []
    for c in reviews:
        verdict = "VALID" if c.valid else "SUSPICIOUS, not approved"
        lines += [
            f"{c.name}  {c.condition}  {verdict}: {c.why}",
            f"  requestor: {c.requestor or '-'}",
            f"  node: {c.node or '-'}   signer: {c.signer or '-'}   age: {c.age(now)}",
            f"  usages: {', '.join(c.usages) or '-'}",
        ]
    return "\n".join(lines)


def whose(view: CsrView, reviews: Sequence[CsrReview]) -> str:
    """'client CSRs of 3 masters, 2 workers; serving CSR of 1 master': what a list of CSRs is for."""
    roles = {n.name: n.role for n in view.nodes}
    parts = []
    for kind in ("client", "serving"):
        of = [roles.get(c.node, "unknown node") for c in reviews if c.kind == kind]
        if of:
            counts = {role: of.count(role) for role in dict.fromkeys(of)}
            parts.append(f"{kind} CSR{'s' if len(of) != 1 else ''} of "
                         + ", ".join(f"{n} {r}{'s' if n != 1 else ''}" for r, n in counts.items()))
    return "; ".join(parts)


def summary(view: CsrView) -> str:
    """One line for the progress message (the thread has the details)."""
    valid, suspicious = view.valid, view.suspicious
    parts = [f"{len(valid)} valid pending CSR{'s' if len(valid) != 1 else ''}"
             + (f" ({whose(view, valid)}): {', '.join(c.name for c in valid)}" if valid else "")]
    if suspicious:
        parts.append(f"{len(suspicious)} SUSPICIOUS, never approved: "
                     + ", ".join(f"{c.name} ({c.why})" for c in suspicious))
    not_ready = view.not_ready
    if not not_ready:
        parts.append("every node Ready")
    elif len(not_ready) == len(view.nodes):
        parts.append(f"all {len(not_ready)} nodes NotReady")
    else:
        parts.append("NotReady: " + ", ".join(n.name for n in not_ready))
    return "; ".join(parts)
