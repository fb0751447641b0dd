"""What the chapter 3, 4 and 5.4 end-to-end modules share: the runs' messages and approval requests
as people see them in the lab's workspace, pressing buttons, and reading the nodes and CSRs with
kubectl and ssh the way a person checks them. Waiting is on conditions with deadlines."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.backup_support import blocks_text, buttons, seen, workspace
from tests.labfixture import Lab, wait_for

TITLES = {
    "shutdown": "Shutting down the cluster gracefully",
    "restart-check": "Restarting the cluster gracefully",
    "approve-csrs": "Recovering from expired control plane certificates",
}
BOOTSTRAPPER = "system:serviceaccount:openshift-machine-config-operator:node-bootstrapper"


def run_message(lab: Lab, *, procedure: str, since: int, run_id: str | None = None) -> dict[str, Any] | None:
    pattern = re.compile(rf"^{re.escape(TITLES[procedure])} on (?P<cluster>[a-z0-9-]+): (?P<state>[a-z ]+) "
                         r"\(run (?P<run>[0-9a-f]+)\)$")
    for message in seen(lab, since=since):
        match = pattern.match(message.get("text", ""))
        if match and not (message.get("thread_ts") and message["thread_ts"] != message["ts"]) \
                and (run_id is None or match["run"] == run_id):
            return {**message, "run_id": match["run"], "state": match["state"], "cluster": match["cluster"]}
    return None


def wait_run(lab: Lab, *, procedure: str, since: int, states: tuple[str, ...], run_id: str | None = None,
             timeout: float = 180) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        message = run_message(lab, procedure=procedure, since=since, run_id=run_id)
        return message if message and message["state"] in states else None

    return wait_for(check, timeout=timeout, what=f"a {procedure} run in {states}", interval=0.3)


def approval_request(lab: Lab, *, run: dict[str, Any], since: int, skip: tuple[str, ...] = (),
                     timeout: float = 120) -> dict[str, Any]:
    """The run's open approval request (with its Approve button), other than those in `skip`."""

    def check() -> dict[str, Any] | None:
        found = [m for m in seen(lab, since=since, user="bob")
                 if "Approval needed" in blocks_text(m) and run["run_id"] in blocks_text(m)
                 and "Approve" in buttons(m) and m["ts"] not in skip]
        return found[-1] if found else None

    return wait_for(check, timeout=timeout, what=f"an approval request of run {run['run_id']}", interval=0.3)


def press(lab: Lab, *, user: str, action_id: str, message: dict[str, Any]) -> int:
    return int(workspace(lab).press(user=user, action_id=action_id, message_ts=message["ts"])["cursor"])


def answer(lab: Lab, *, since: int, contains: str, user: str = "alice", timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: next((m for m in seen(lab, since=since, user=user) if contains in blocks_text(m)), None),
                    timeout=timeout, what=f"{user}'s answer containing {contains!r}")


def thread_text(lab: Lab, *, run: dict[str, Any], since: int) -> str:
    return "\n".join(blocks_text(m) for m in seen(lab, since=since) if m.get("thread_ts") == run["ts"])


def nodes(lab: Lab) -> dict[str, str]:
    """`kubectl get nodes`: name -> STATUS."""
    out = lab.kubectl("get", "nodes").stdout.splitlines()[1:]
    return {line.split()[0]: line.split()[1] for line in out}


def csr_conditions(lab: Lab) -> dict[str, str]:
    """`kubectl get csr`: name -> CONDITION."""
    return {line.split()[0]: line.split()[-1] for line in lab.kubectl("get", "csr").stdout.splitlines()[1:]}


def all_off(lab: Lab) -> bool:
    return all(lab.ssh(n, "true", check=False, timeout=10).returncode != 0 for n in (*lab.masters, *lab.workers))


def forge_csr(lab: Lab, *, node: str, name: str = "csr-forged") -> str:
    """What an attacker (or a stray script) files: a node-bootstrapper client CSR for a node name
    no machine of the cluster has, made with kubectl as a person would."""
    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}"),
    ])).sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    body = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
            "spec": {"request": base64.b64encode(request).decode(), "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                     "usages": ["digital signature", "key encipherment", "client auth"], "username": BOOTSTRAPPER,
                     "groups": ["system:serviceaccounts", "system:authenticated"]}}
    lab.kubectl("create", "-f", "-", stdin=json.dumps(body))
    return name
