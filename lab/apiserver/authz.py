"""Who is asking and what they may do: the lab's authentication, impersonation and RBAC.

Why real RBAC and not "the token may do everything": `kubectl auth can-i` (a
SelfSubjectAccessReview) must answer from the cluster's own roles and bindings, and a bot or a
person impersonating a narrower user (`kubectl --as=...`) must meet the same 403s OpenShift gives
it. The kubeconfig's bearer token is `system:admin` in group `system:masters`, which Kubernetes
lets through before RBAC (the superuser group); everyone else is judged by the ClusterRoles,
Roles and their bindings stored in etcd like every other object.

What it does not do: aggregated cluster roles, escalation checks on role writes, OpenShift's
SCCs or its projects API, authentication of any token but the lab's one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lab.apiserver.errors import ApiError
from lab.apiserver.objects import Objects
from lab.apiserver.storage import NotFound

SUPERUSER_GROUP = "system:masters"
AUTHENTICATED = "system:authenticated"
# Paths the system:discovery and system:public-info-viewer roles open to every authenticated user.
DISCOVERY_PREFIXES = ("/api", "/apis", "/version", "/openapi", "/healthz", "/livez", "/readyz")
# What system:basic-user lets every authenticated user create: questions about themselves.
SELF_REVIEWS = ("selfsubjectaccessreviews", "selfsubjectrulesreviews")

Json = dict[str, Any]


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...]

    @property
    def superuser(self) -> bool:
        return SUPERUSER_GROUP in self.groups


ADMIN = UserInfo("system:admin", (SUPERUSER_GROUP, AUTHENTICATED))


@dataclass(frozen=True)
class Attributes:
    """One request as the authorizer sees it (resource or non-resource)."""

    verb: str
    resource: str = ""
    subresource: str = ""
    group: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    @property
    def is_resource(self) -> bool:
        return bool(self.resource)


@dataclass
class Rules:
    """What a user may do in one namespace: RBAC PolicyRules and where each came from."""

    resource: list[tuple[Json, str]] = field(default_factory=list)
    non_resource: list[tuple[Json, str]] = field(default_factory=list)


def _has(values: Iterable[str] | None, wanted: str) -> bool:
    values = list(values or [])
    return "*" in values or wanted in values


def rule_allows(rule: Json, attrs: Attributes) -> bool:
    """rbac/v1 PolicyRule matching, as Kubernetes' RBAC authorizer does it."""
    if not _has(rule.get("verbs"), attrs.verb):
        return False
    if not attrs.is_resource:
        for url in rule.get("nonResourceURLs") or []:
            if url == "*" or url == attrs.path or (url.endswith("*") and attrs.path.startswith(url[:-1])):
                return True
        return False
    if not _has(rule.get("apiGroups"), attrs.group):
        return False
    combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    resources = rule.get("resources") or []
    if not any(r == "*" or r == combined or (attrs.subresource and r == f"*/{attrs.subresource}") for r in resources):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def _subject_matches(subject: Json, user: UserInfo, binding_namespace: str) -> str | None:
    """The subject's description when it names this user, else None."""
    kind, name = subject.get("kind"), subject.get("name", "")
    if kind == "User" and name == user.name:
        return f'User "{name}"'
    if kind == "Group" and name in user.groups:
        return f'Group "{name}"'
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        if user.name == f"system:serviceaccount:{namespace}:{name}":
            return f'ServiceAccount "{namespace}/{name}"'
    return None


class Authorizer:
    """RBAC over the objects in etcd; the superuser group short-circuits without a read."""

    def __init__(self, objects: Objects) -> None:
        self.objects = objects

    async def _role_rules(self, kind: str, name: str, namespace: str) -> list[Json]:
        try:
            if kind == "ClusterRole":
                role = await self.objects.get("clusterroles", name)
            else:
                role = await self.objects.get("roles", name, namespace)
        except NotFound:
            return []
        return list(role.get("rules") or [])

    async def rules(self, user: UserInfo, namespace: str) -> Rules:
        """Every rule that applies to `user` in `namespace` (cluster-wide bindings included)."""
        found = Rules()
        bindings, _ = await self.objects.list("clusterrolebindings")
        scoped: list[tuple[Json, str]] = [(b, "") for b in bindings]
        if namespace:
            role_bindings, _ = await self.objects.list("rolebindings", namespace)
            scoped += [(b, namespace) for b in role_bindings]
        for binding, ns in scoped:
            who = next((w for s in binding.get("subjects") or [] if (w := _subject_matches(s, user, ns))), None)
            if who is None:
                continue
            ref = binding.get("roleRef") or {}
            kind, role = ref.get("kind", ""), ref.get("name", "")
            bname = binding["metadata"]["name"]
            source = (f'ClusterRoleBinding "{bname}"' if not ns else f'RoleBinding "{bname}/{ns}"') + \
                f' of {kind} "{role}" to {who}'
            for rule in await self._role_rules(kind, role, ns):
                target = found.non_resource if rule.get("nonResourceURLs") else found.resource
                target.append((rule, source))
        return found

    async def authorize(self, user: UserInfo, attrs: Attributes) -> tuple[bool, str]:
        """(allowed, reason) as a SubjectAccessReview reports it."""
        if user.superuser:
            return True, ""
        if not attrs.is_resource and attrs.verb == "get" and attrs.path.startswith(DISCOVERY_PREFIXES):
            return True, 'RBAC: allowed by ClusterRoleBinding "system:discovery" of ClusterRole "system:discovery" ' \
                         'to Group "system:authenticated"'
        if attrs.verb == "create" and attrs.group == "authorization.k8s.io" and attrs.resource in SELF_REVIEWS:
            return True, 'RBAC: allowed by ClusterRoleBinding "system:basic-user" of ClusterRole "system:basic-user" ' \
                         'to Group "system:authenticated"'
        rules = await self.rules(user, attrs.namespace)
        pool = rules.resource if attrs.is_resource else rules.non_resource
        for rule, source in pool:
            if rule_allows(rule, attrs):
                return True, f"RBAC: allowed by {source}"
        return False, ""


def forbidden(user: UserInfo, attrs: Attributes, *, kind: str = "") -> ApiError:
    """The 403 Kubernetes answers a request RBAC does not allow."""
    if not attrs.is_resource:
        return ApiError(code=403, reason="Forbidden",
                        message=f'forbidden: User "{user.name}" cannot {attrs.verb} path "{attrs.path}"')
    combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
    subject = f'{qualified} "{attrs.name}"' if attrs.name else qualified
    scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    details: Json = {"kind": kind or attrs.resource}
    if attrs.group:
        details["group"] = attrs.group
    if attrs.name:
        details["name"] = attrs.name
    return ApiError(code=403, reason="Forbidden", details=details,
                    message=f'{subject} is forbidden: User "{user.name}" cannot {attrs.verb} resource "{combined}" '
                            f'in API group "{attrs.group}" {scope}')


async def impersonate(authorizer: Authorizer, user: UserInfo, headers: Mapping[str, str],
                      group_headers: list[str]) -> UserInfo:
    """`kubectl --as USER [--as-group G]`: the request runs as that user if `user` may impersonate."""
    name = headers.get("Impersonate-User", "")
    if not name and not group_headers:
        return user
    if not name:
        raise ApiError(code=400, reason="BadRequest",
                       message="requested [] without impersonating a user")
    checks: list[Attributes] = []
    groups = list(group_headers)
    if name.startswith("system:serviceaccount:") and name.count(":") == 3:
        _, _, ns, sa = name.split(":")
        checks.append(Attributes(verb="impersonate", resource="serviceaccounts", namespace=ns, name=sa))
        if not group_headers:
            groups = ["system:serviceaccounts", f"system:serviceaccounts:{ns}"]
    else:
        checks.append(Attributes(verb="impersonate", resource="users", name=name))
    checks += [Attributes(verb="impersonate", resource="groups", name=g) for g in group_headers]
    for attrs in checks:
        allowed, _ = await authorizer.authorize(user, attrs)
        if not allowed:
            raise forbidden(user, attrs)
    if AUTHENTICATED not in groups and name != "system:anonymous":
        groups.append(AUTHENTICATED)
    return UserInfo(name, tuple(groups))


def review_attributes(spec: Json) -> Attributes:
    """A SubjectAccessReview's spec -> attributes (resourceAttributes or nonResourceAttributes)."""
    res = spec.get("resourceAttributes")
    if isinstance(res, dict):
        return Attributes(verb=str(res.get("verb", "")), resource=str(res.get("resource", "")),
                          subresource=str(res.get("subresource", "")), group=str(res.get("group", "")),
                          namespace=str(res.get("namespace", "")), name=str(res.get("name", "")))
    non = spec.get("nonResourceAttributes") or {}
    return Attributes(verb=str(non.get("verb", "")), path=str(non.get("path", "")))


def rules_review_status(rules: Rules) -> Json:
    """SelfSubjectRulesReview status: the rules as they are, the way RBAC's rule resolver lists them."""
    def clean(rule: Json, keys: tuple[str, ...]) -> Json:
        return {k: list(rule[k]) for k in keys if rule.get(k)}

    resource = [clean(r, ("verbs", "apiGroups", "resources", "resourceNames")) for r, _ in rules.resource]
    non_resource = [clean(r, ("verbs", "nonResourceURLs")) for r, _ in rules.non_resource]
    non_resource.append({"verbs": ["get"], "nonResourceURLs": [f"{p}*" if p != "/version" else p
                                                               for p in DISCOVERY_PREFIXES]})
    return {"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": False}
