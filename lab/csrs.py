"""Certificate signing requests as a restarted or certificate-expired cluster shows them.

After a master comes back from a shutdown (or when its kubelet certificates expire) it files a
client CSR as `system:serviceaccount:openshift-machine-config-operator:node-bootstrapper`; once
that is approved and issued it files a serving CSR as `system:node:<name>`. The node is Ready
again when both are issued, which is the loop chapter 4 and 5.4 of the document walk through.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lab import pki, seed

if TYPE_CHECKING:
    from lab.daemon import LabDaemon

BOOTSTRAPPER = "system:serviceaccount:openshift-machine-config-operator:node-bootstrapper"


def csr_pem(node: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}")])
    request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM)


def csr_object(node: str, *, serving: bool, epoch: int) -> dict[str, Any]:
    name = "csr-" + secrets.token_hex(3)[:5]
    if serving:
        user, groups = f"system:node:{node}", ["system:nodes", "system:authenticated"]
        signer, usages = "kubernetes.io/kubelet-serving", ["digital signature", "key encipherment", "server auth"]
    else:
        user = BOOTSTRAPPER
        groups = ["system:serviceaccounts", "system:serviceaccounts:openshift-machine-config-operator", "system:authenticated"]
        signer, usages = "kubernetes.io/kube-apiserver-client-kubelet", ["digital signature", "key encipherment", "client auth"]
    return {
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name, "generateName": "csr-", "creationTimestamp": seed.iso(time.time()),
                     "labels": {"lab.etcdbot/node": node, "lab.etcdbot/kind": "serving" if serving else "client",
                                "lab.etcdbot/epoch": str(epoch)}},
        "spec": {"request": base64.b64encode(csr_pem(node)).decode(), "signerName": signer, "usages": usages,
                 "username": user, "groups": groups},
        "status": {},
    }


def is_approved(csr: dict[str, Any]) -> bool:
    return any(c.get("type") == "Approved" and c.get("status", "True") == "True"
               for c in csr.get("status", {}).get("conditions", []) or [])


class CsrController:
    def __init__(self, daemon: LabDaemon) -> None:
        self.d = daemon
        self._queue: list[dict[str, Any]] = []
        self._ca: pki.KeyPair | None = None
        self._epoch: dict[str, int] = {}  # node -> which restart its current CSRs belong to

    def after_restart(self, node: str) -> None:
        host = self.d.host(node)
        if host is not None:
            host.certs_expired = True
        self._epoch[node] = self._epoch.get(node, 0) + 1
        self._queue.append(csr_object(node, serving=False, epoch=self._epoch[node]))

    async def sync(self) -> None:
        while self._queue:
            await self.d.objects.create("certificatesigningrequests", self._queue[0])
            self._queue.pop(0)
        items, _ = await self.d.objects.list("certificatesigningrequests")
        issued: dict[str, set[str]] = {}
        for csr in items:
            labels = csr["metadata"].get("labels", {})
            node, kind = labels.get("lab.etcdbot/node"), labels.get("lab.etcdbot/kind")
            if not node or labels.get("lab.etcdbot/epoch") != str(self._epoch.get(node)):
                continue
            if not is_approved(csr):
                continue
            if not csr.get("status", {}).get("certificate"):
                await self._issue(csr)
                if kind == "client":
                    self._queue.append(csr_object(node, serving=True, epoch=self._epoch[node]))
            issued.setdefault(node, set()).add(str(kind))
        for node, kinds in issued.items():
            host = self.d.host(node)
            pending = any(not is_approved(c) and c["metadata"].get("labels", {}).get("lab.etcdbot/node") == node
                          for c in items) or any(q["metadata"]["labels"]["lab.etcdbot/node"] == node for q in self._queue)
            if host is not None and host.certs_expired and {"client", "serving"} <= kinds and not pending:
                host.certs_expired = False
                self.d.poke()

    async def _issue(self, csr: dict[str, Any]) -> None:
        if self._ca is None:
            self._ca = pki.make_ca("kubelet-signer")
        node = csr["metadata"]["labels"]["lab.etcdbot/node"]
        cert = pki.issue(self._ca, common_name=f"system:node:{node}", organization="system:nodes", hosts=[node])

        def update(obj: dict[str, Any]) -> dict[str, Any]:
            obj.setdefault("status", {})["certificate"] = base64.b64encode(cert.cert_pem).decode()
            return obj

        await self.d.objects.mutate("certificatesigningrequests", csr["metadata"]["name"], update)
