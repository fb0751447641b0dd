"""The resource types the lab's API serves, in one table.

Discovery, storage keys, URL routing and tables all read this registry, so a resource is added
in one place. Keys follow Kubernetes' own layout in etcd (`/kubernetes.io/<resource>/<ns>/<name>`,
nodes under `minions`, custom groups under `/kubernetes.io/<group>/<resource>/...`), so
`etcdctl get --prefix /kubernetes.io/` in the lab looks like it does on a real master.
"""

from __future__ import annotations

from dataclasses import dataclass

KEY_ROOT = "/kubernetes.io/"
MAIN_VERBS: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Resource:
    """One served resource: names, group, versions (first = preferred and stored), scope."""

    name: str
    singular: str
    kind: str
    group: str
    versions: tuple[str, ...]
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ("status",)
    categories: tuple[str, ...] = ()
    storage_name: str = ""
    verbs: tuple[str, ...] = MAIN_VERBS
    stored: bool = True  # reviews (SelfSubjectAccessReview) are answered, never stored

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def qualified(self) -> str:
        """`pods`, `machines.machine.openshift.io`: how Kubernetes names it in error messages."""
        return f"{self.name}.{self.group}" if self.group else self.name

    @property
    def preferred_version(self) -> str:
        return self.versions[0]

    def api_version(self, version: str | None = None) -> str:
        v = version or self.preferred_version
        return f"{self.group}/{v}" if self.group else v

    def prefix(self, namespace: str | None = None) -> str:
        """The etcd key prefix of all objects (or of one namespace's objects)."""
        base = KEY_ROOT + (self.group + "/" if self.group else "") + (self.storage_name or self.name) + "/"
        if self.namespaced and namespace:
            return base + namespace + "/"
        return base

    def key(self, name: str, namespace: str | None = None) -> str:
        if self.namespaced:
            if not namespace:
                raise ValueError(f"{self.name} are namespaced: a namespace is required")
            return self.prefix(namespace) + name
        return self.prefix() + name

    def subresource_verbs(self, sub: str) -> tuple[str, ...]:
        return {
            "status": ("get", "patch", "update"),
            "approval": ("get", "patch", "update"),
            "exec": ("create", "get"),
            "log": ("get",),
            "finalize": ("update",),
            "scale": ("get", "patch", "update"),
        }.get(sub, ("get",))

    def subresource_kind(self, sub: str) -> str:
        return {"exec": "PodExecOptions", "log": "Pod", "scale": "Scale"}.get(sub, self.kind)


_CORE = ("v1",)
_OPERATOR = "operator.openshift.io"
_CONFIG = "config.openshift.io"
_MACHINE = "machine.openshift.io"
_RBAC = "rbac.authorization.k8s.io"
_AUTHZ = "authorization.k8s.io"

RESOURCES: tuple[Resource, ...] = (
    Resource("nodes", "node", "Node", "", _CORE, False, ("no",), storage_name="minions"),
    Resource("namespaces", "namespace", "Namespace", "", _CORE, False, ("ns",), ("status", "finalize")),
    Resource("pods", "pod", "Pod", "", _CORE, True, ("po",), ("status", "exec", "log"), ("all",)),
    Resource("secrets", "secret", "Secret", "", _CORE, True, (), ()),
    Resource("configmaps", "configmap", "ConfigMap", "", _CORE, True, ("cm",), ()),
    Resource("events", "event", "Event", "", _CORE, True, ("ev",), ()),
    Resource("etcds", "etcd", "Etcd", _OPERATOR, ("v1",), False),
    Resource("kubeapiservers", "kubeapiserver", "KubeAPIServer", _OPERATOR, ("v1",), False),
    Resource("kubecontrollermanagers", "kubecontrollermanager", "KubeControllerManager", _OPERATOR, ("v1",), False),
    Resource("kubeschedulers", "kubescheduler", "KubeScheduler", _OPERATOR, ("v1",), False),
    Resource("machines", "machine", "Machine", _MACHINE, ("v1beta1",), True),
    Resource("machinesets", "machineset", "MachineSet", _MACHINE, ("v1beta1",), True),
    Resource("clusteroperators", "clusteroperator", "ClusterOperator", _CONFIG, ("v1",), False, ("co",)),
    Resource("clusterversions", "clusterversion", "ClusterVersion", _CONFIG, ("v1",), False),
    Resource("proxies", "proxy", "Proxy", _CONFIG, ("v1",), False),
    Resource("apiservers", "apiserver", "APIServer", _CONFIG, ("v1",), False),
    Resource(
        "certificatesigningrequests", "certificatesigningrequest", "CertificateSigningRequest",
        "certificates.k8s.io", ("v1", "v1beta1"), False, ("csr",), ("status", "approval"),
    ),
    Resource("clusterroles", "clusterrole", "ClusterRole", _RBAC, ("v1",), False, (), ()),
    Resource("clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", _RBAC, ("v1",), False, (), ()),
    Resource("roles", "role", "Role", _RBAC, ("v1",), True, (), ()),
    Resource("rolebindings", "rolebinding", "RoleBinding", _RBAC, ("v1",), True, (), ()),
    Resource("selfsubjectaccessreviews", "selfsubjectaccessreview", "SelfSubjectAccessReview", _AUTHZ, ("v1",),
             False, (), (), verbs=("create",), stored=False),
    Resource("selfsubjectrulesreviews", "selfsubjectrulesreview", "SelfSubjectRulesReview", _AUTHZ, ("v1",),
             False, (), (), verbs=("create",), stored=False),
)

BY_NAME: dict[str, Resource] = {r.name: r for r in RESOURCES}


def lookup(name: str) -> Resource:
    """The resource by plural name; KeyError for a resource the lab does not serve."""
    return BY_NAME[name]


def find(*, group: str, version: str, name: str) -> Resource | None:
    """The resource served at /api(s)/<group>/<version>/<name>, if any."""
    res = BY_NAME.get(name)
    if res is None or res.group != group or version not in res.versions:
        return None
    return res


def groups() -> dict[str, list[str]]:
    """Group name -> versions (preferred first), in registry order; core is ""."""
    out: dict[str, list[str]] = {}
    for res in RESOURCES:
        versions = out.setdefault(res.group, [])
        for v in res.versions:
            if v not in versions:
                versions.append(v)
    return out
