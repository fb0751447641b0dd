"""The CSR review of chapters 4 and 5.4: which pending CSRs are valid, on real PEM requests.

Valid: a node-bootstrapper client CSR for a node or machine the cluster knows; a
system:node:<name> serving CSR for an existing node naming only its addresses. Everything else is
suspicious, says why, and never appears as an approval in the plan."""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bot.procedure import acts
from procedures.cluster_nodes import NodeView, in_order, node_view
from procedures.csr_steps import approve_plan_of
from procedures.csrs import (
    BOOTSTRAPPER,
    CLIENT_SIGNER,
    SERVING_SIGNER,
    CsrView,
    describe,
    known_from,
    parse_request,
    review,
    summary,
)

MASTER = "ip-10-0-131-183.ec2.internal"
WORKER = "ip-10-0-179-95.ec2.internal"
NEW = "ip-10-0-140-7.ec2.internal"  # a machine whose node has not registered yet
CLIENT = ["digital signature", "key encipherment", "client auth"]
SERVING = ["digital signature", "key encipherment", "server auth"]
KEY = ec.generate_private_key(ec.SECP256R1())


def pem(cn: str, *, org: str = "system:nodes", dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if dns or ips:
        names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    request = builder.sign(KEY, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    return base64.b64encode(request).decode()


def csr(name: str, *, node: str, signer: str = CLIENT_SIGNER, user: str = BOOTSTRAPPER, usages: list[str] | None = None,
        request: str | None = None, approved: bool = False, created: str = "2024-05-01T10:00:00Z") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"request": request if request is not None else pem(f"system:node:{node}"), "signerName": signer,
                 "usages": usages if usages is not None else (CLIENT if signer == CLIENT_SIGNER else SERVING),
                 "username": user},
        "status": {"conditions": [{"type": "Approved", "status": "True"}]} if approved else {},
    }


def node(name: str, role: str, *, ready: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {f"node-role.kubernetes.io/{role}": ""}},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "reason": "" if ready else "KubeletNotReady"}],
                       "addresses": [{"type": "InternalIP", "address": "10.0.131.183" if role == "master" else "10.0.179.95"},
                                     {"type": "Hostname", "address": name}]}}


NODES = [node_view(node(WORKER, "worker")), node_view(node(MASTER, "master"))]
MACHINES = [
    {"metadata": {"name": "lab-master-0"}, "status": {"nodeRef": {"name": MASTER}}},
    {"metadata": {"name": "lab-master-3"}, "status": {"addresses": [{"type": "InternalDNS", "address": NEW}]}},
]
KNOWN = known_from(nodes=NODES, machines=MACHINES)


def test_node_view_reads_role_readiness_and_addresses() -> None:
    master = node_view(node(MASTER, "master", ready=True))
    worker = node_view(node(WORKER, "worker"))
    assert (master.role, master.ready, master.status) == ("master", True, "Ready")
    assert (worker.role, worker.ready, worker.status, worker.reason) == ("worker", False, "NotReady", "KubeletNotReady")
    assert "10.0.131.183" in master.addresses
    assert node_view({"metadata": {"name": "x", "labels": {}}}).role == "worker"  # no role label: a worker


def test_a_ready_status_from_before_the_shutdown_is_not_ready() -> None:
    """Right after a restart the API serves the statuses from before the shutdown: Ready, with an
    old heartbeat. Counted Ready, the review would wait for no CSR; only a newer heartbeat counts."""
    shutdown = 1_800_000_000.0
    stale = node(MASTER, "master", ready=True)
    stale["status"]["conditions"][0]["lastHeartbeatTime"] = "2027-01-15T07:59:00Z"  # 60 s before `shutdown`
    fresh = node(MASTER, "master", ready=True)
    fresh["status"]["conditions"][0]["lastHeartbeatTime"] = "2027-01-15T08:01:00Z"
    assert node_view(stale).ready  # no shutdown to compare with: as `oc get nodes` says
    old = node_view(stale, fresh_after=shutdown)
    assert not old.ready and old.reason.startswith("StaleStatus") and old.status == "NotReady"
    assert node_view(fresh, fresh_after=shutdown).ready
    assert not node_view(node(MASTER, "master", ready=True), fresh_after=shutdown).ready  # no heartbeat at all
    assert CsrView(nodes=(old,), csrs=(), read_at=shutdown).waiting_for() == (MASTER,)


def test_parse_request_reads_subject_and_host_names() -> None:
    found = parse_request(pem("system:node:a", dns=("a.example",), ips=("10.0.0.1",)))
    assert found.common_name == "system:node:a" and found.organizations == ("system:nodes",)
    assert found.hosts == ("a.example", "10.0.0.1")
    with pytest.raises(ValueError, match="not a PEM certificate request"):
        parse_request(base64.b64encode(b"hello").decode())


@pytest.mark.parametrize(("item", "why"), [
    (csr("csr-m", node=MASTER), f"node-bootstrapper CSR for node {MASTER} (machine lab-master-0)"),
    (csr("csr-w", node=WORKER), f"node-bootstrapper CSR for node {WORKER}"),
    (csr("csr-n", node=NEW), "node-bootstrapper CSR for machine lab-master-3 (its node is not registered yet)"),
    (csr("csr-s", node=MASTER, signer=SERVING_SIGNER, user=f"system:node:{MASTER}",
         request=pem(f"system:node:{MASTER}", dns=(MASTER,), ips=("10.0.131.183",))),
     f"system:node:{MASTER} serving CSR of an existing node"),
])
def test_valid_csrs(item: dict[str, Any], why: str) -> None:
    found = review(item, KNOWN)
    assert found.valid and found.pending and found.why == why
    assert found.node in (MASTER, WORKER, NEW)


@pytest.mark.parametrize(("item", "why"), [
    (csr("csr-forged", node="ip-10-0-99-99.ec2.internal"), "no node or machine named ip-10-0-99-99.ec2.internal"),
    (csr("csr-user", node=MASTER, user="system:admin"), "requested by system:admin, not by the node-bootstrapper"),
    (csr("csr-san", node=MASTER, request=pem(f"system:node:{MASTER}", dns=("evil.example",))),
     "a client certificate request that names hosts (evil.example)"),
    (csr("csr-usage", node=MASTER, usages=[*CLIENT, "server auth"]), "not a kubelet client's"),
    (csr("csr-org", node=MASTER, request=pem(f"system:node:{MASTER}", org="system:masters")),
     "O=system:masters: not a node's"),
    (csr("csr-cn", node=MASTER, request=pem("admin")), "CN=admin"),
    (csr("csr-signer", node=MASTER, signer="kubernetes.io/kube-apiserver-client"), "is not a kubelet's"),
    (csr("csr-garbage", node=MASTER, request="bm90IGEgcmVxdWVzdA=="), "not a PEM certificate request"),
    (csr("csr-s-user", node=MASTER, signer=SERVING_SIGNER, user=BOOTSTRAPPER), "not by the node itself"),
    (csr("csr-s-other", node=MASTER, signer=SERVING_SIGNER, user=f"system:node:{WORKER}"), "not by the node itself"),
    (csr("csr-s-new", node=NEW, signer=SERVING_SIGNER, user=f"system:node:{NEW}"), f"no node named {NEW}"),
    (csr("csr-s-host", node=MASTER, signer=SERVING_SIGNER, user=f"system:node:{MASTER}",
         request=pem(f"system:node:{MASTER}", dns=("api.example.com",), ips=("10.0.131.183",))),
     "names hosts node ip-10-0-131-183.ec2.internal does not have: api.example.com"),
    (csr("csr-s-usage", node=MASTER, signer=SERVING_SIGNER, user=f"system:node:{MASTER}", usages=CLIENT),
     "not a kubelet serving certificate's"),
])
def test_suspicious_csrs_say_why(item: dict[str, Any], why: str) -> None:
    found = review(item, KNOWN)
    assert not found.valid and why in found.why


def view(*items: dict[str, Any]) -> CsrView:
    return CsrView(nodes=tuple(in_order(NODES)), csrs=tuple(review(i, KNOWN) for i in items), read_at=1714557630.0)


def test_the_approval_plan_names_exactly_the_valid_pending_csrs_and_never_a_suspicious_one() -> None:
    seen = view(csr("csr-w", node=WORKER), csr("csr-m", node=MASTER), csr("csr-old", node=MASTER, approved=True),
                csr("csr-forged", node="ip-10-0-99-99.ec2.internal"))
    assert [c.name for c in seen.pending] == ["csr-m", "csr-w", "csr-forged"]  # masters first
    assert [c.name for c in seen.valid] == ["csr-m", "csr-w"]
    plan = approve_plan_of(seen)
    approvals = [p.command for p in plan if "certificate approve" in p.command]
    assert approvals == [f"oc adm certificate approve csr-m  # client CSR of {MASTER}",
                         f"oc adm certificate approve csr-w  # client CSR of {WORKER}"]
    assert not acts([p for p in plan if "csr-forged" in p.command])  # a note in the plan, never an action
    assert not acts(approve_plan_of(view(csr("csr-forged", node="ip-10-0-99-99.ec2.internal"))))  # only a forged one
    assert "never approved: csr-forged (suspicious: no node or machine named" in plan[-1].command
    [nothing] = approve_plan_of(view(csr("csr-old", node=MASTER, approved=True)))
    assert nothing.command.startswith("nothing to approve") and not acts([nothing])  # the runner asks nobody


def test_review_text_lists_requestor_node_usages_age_and_verdict() -> None:
    seen = view(csr("csr-m", node=MASTER, created="2024-05-01T10:00:00Z"),
                csr("csr-forged", node="ip-10-0-99-99.ec2.internal", created="2024-05-01T09:00:00Z"))
    text = describe(seen.pending, now=seen.read_at)
    assert f"csr-m  Pending  VALID: node-bootstrapper CSR for node {MASTER}" in text
    assert f"requestor: {BOOTSTRAPPER}" in text and "age: 30s" in text and "age: 60m" in text
    assert "usages: digital signature, key encipherment, client auth" in text
    assert "csr-forged  Pending  SUSPICIOUS, not approved: no node or machine named" in text
    line = summary(seen)
    assert line.startswith("1 valid pending CSR (client CSR of 1 master): csr-m") and "1 SUSPICIOUS" in line
    assert line.endswith("all 2 nodes NotReady")
    two = view(csr("csr-m", node=MASTER), csr("csr-w", node=WORKER),
               csr("csr-s", node=MASTER, signer=SERVING_SIGNER, user=f"system:node:{MASTER}"))
    assert summary(two).startswith("3 valid pending CSRs (client CSRs of 1 master, 1 worker; serving CSR of 1 master): "
                                   "csr-m, csr-s, csr-w")


def test_nodes_waiting_for_their_csr() -> None:
    seen = view(csr("csr-m", node=MASTER))
    assert seen.waiting_for() == (WORKER,)  # the master filed one
    assert seen.waiting_for([MASTER]) == ()
    ready = CsrView(nodes=(NodeView(name=WORKER, role="worker", ready=True),), csrs=(), read_at=0.0)
    assert ready.waiting_for() == ()
