"""The Helm chart, rendered by the real `helm`: least-privilege RBAC, secrets kept out of
ConfigMaps, hardened containers, probes, storage, and every ETCDBOT_* setting wired."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import CHART, NAMESPACE, render, run_helm

FAKE = {
    "slackBotToken": "xoxb-1111-2222-bottokenvalue",
    "slackAppToken": "xapp-1-A111-2222-apptokenvalue",
    "slackSigningSecret": "0123456789abcdef0123456789abcdef",
    "sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAfakekeymaterial\n-----END OPENSSH PRIVATE KEY-----\n",
    "sshKnownHosts": "10.0.131.183 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIfakehostkey\n",
}
REDIS_PASSWORD = "s3cr3t-redis-pw"

# Every variant of the brief, plus one with every setting filled in.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "external-redis": {"redis": {"enabled": False, "url": f"redis://:{REDIS_PASSWORD}@redis.example:6379/0"}},
    "existing-secret": {"existingSecret": "etcdbot-slack-and-ssh"},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "http-mode": {"slack": {"mode": "http"}, "route": {"enabled": True, "host": "etcdbot.apps.example.com"}},
    "two-replicas": {"replicaCount": 2, "backups": {"persistence": {"accessModes": ["ReadWriteMany"]},
                                                    "keys": {"persistence": {"accessModes": ["ReadWriteMany"]}}}},
    "openshift": {"openshift": True},
    "redis-password": {"redis": {"auth": {"password": REDIS_PASSWORD}}},
    "full": {
        "secrets": FAKE,
        "slack": {"mode": "socket", "apiUrl": "http://slack.lab:4000/api/"},
        "access": {"allowedUsers": ["U012ABCDEF"], "allowedUsergroup": "etcd-operators",
                   "approverUsergroup": "etcd-approvers"},
        "kubeconfigs": {"existingSecret": "etcdbot-kubeconfigs"},
        "clusters": [
            {"name": "prod-east", "kubeconfig": "/etc/etcdbot/kubeconfigs/prod-east", "channels": ["C0INCIDENT"],
             "ssh": {"user": "core", "hosts": {"ip-10-0-131-183.ec2.internal": "10.0.131.183:22"}},
             "peak_hours": "08:00-18:00", "timezone": "Europe/Berlin"},
            {"name": "local", "channels": ["C0LOCAL"]},
        ],
        "backups": {"schedule": "30 2 * * *"},
        "notifications": {"oncallUsergroup": "etcd-oncall"},
        "logLevel": "DEBUG",
        "extraConfig": {"ETCDBOT_EXTRA_FLAG": "on"},
    },
}

ALL_SETTINGS = {
    "ETCDBOT_SLACK_BOT_TOKEN", "ETCDBOT_SLACK_APP_TOKEN", "ETCDBOT_SLACK_SIGNING_SECRET", "ETCDBOT_SLACK_API_URL",
    "ETCDBOT_SLACK_MODE", "ETCDBOT_HTTP_PORT", "ETCDBOT_HEALTH_PORT", "ETCDBOT_REDIS_URL", "ETCDBOT_BACKUP_DIR",
    "ETCDBOT_LOG_LEVEL", "ETCDBOT_ALLOWED_USERS", "ETCDBOT_ALLOWED_USERGROUP", "ETCDBOT_APPROVER_USERGROUP",
    "ETCDBOT_CLUSTERS", "ETCDBOT_BACKUP_SCHEDULE", "ETCDBOT_REDIS_PASSWORD",
    "ETCDBOT_BACKUP_KEYS_DIR", "ETCDBOT_DRILL_DIR", "ETCDBOT_DRILL_TIMEOUT", "ETCDBOT_BACKUP_RETENTION",
    "ETCDBOT_MAX_BACKUP_AGE", "ETCDBOT_ONCALL_USERGROUP", "ETCDBOT_WATCH_INTERVAL",
    "ETCDBOT_APPROVER_USERS", "ETCDBOT_APPROVALS_REQUIRED", "ETCDBOT_APPROVAL_EXPIRY", "ETCDBOT_APPROVAL_SECRET",
}
SECRET_ENV = {"ETCDBOT_SLACK_BOT_TOKEN", "ETCDBOT_SLACK_APP_TOKEN", "ETCDBOT_SLACK_SIGNING_SECRET"}

# The permissions PROCEDURES.md needs, and nothing else: (namespace or "", apiGroup, resource, verb, names).
CLUSTER = ""
EXPECTED_RBAC = {
    *{(CLUSTER, "", "nodes", v, ()) for v in ("get", "list")},
    (CLUSTER, "", "namespaces", "get", ("kube-system",)),
    *{(CLUSTER, "operator.openshift.io", r, "list", ())
      for r in ("etcds", "kubeapiservers", "kubecontrollermanagers", "kubeschedulers")},
    *{(CLUSTER, "operator.openshift.io", r, v, ("cluster",))
      for r in ("etcds", "kubeapiservers", "kubecontrollermanagers", "kubeschedulers") for v in ("get", "patch")},
    *{(CLUSTER, "config.openshift.io", r, v, ())
      for r in ("clusteroperators", "clusterversions", "proxies") for v in ("get", "list")},
    (CLUSTER, "config.openshift.io", "apiservers", "get", ("cluster",)),  # etcd encryption on or off
    *{(CLUSTER, "certificates.k8s.io", "certificatesigningrequests", v, ()) for v in ("get", "list")},
    (CLUSTER, "certificates.k8s.io", "certificatesigningrequests/approval", "update", ()),
    (CLUSTER, "certificates.k8s.io", "signers", "approve",
     ("kubernetes.io/kube-apiserver-client-kubelet", "kubernetes.io/kubelet-serving")),
    *{("openshift-etcd", "", "pods", v, ()) for v in ("get", "list")},
    *{("openshift-etcd", "", "pods/exec", v, ()) for v in ("get", "create")},
    *{("openshift-etcd", "", "secrets", v, ()) for v in ("get", "list", "delete")},
    *{("openshift-machine-api", "machine.openshift.io", "machines", v, ())
      for v in ("get", "list", "create", "delete")},
}


@pytest.fixture(scope="module")
def rendered(helm: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return {name: render(helm, values, tmp_path_factory.mktemp(name)) for name, values in VARIANTS.items()}


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def bot_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment", "etcdbot")


def bot_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = bot_deployment(docs)["spec"]["template"]["spec"]["containers"]
    return container


def configmap_data(docs: list[dict[str, Any]]) -> dict[str, str]:
    return one(docs, "ConfigMap", "etcdbot")["data"]


# --- lint -------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict(helm: str, tmp_path: Path, variant: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), values=VARIANTS[variant], tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2}, "ReadWriteMany"),
        ({"redis": {"enabled": False}}, "redis.url"),
        ({"slack": {"mode": "websocket"}}, "slack.mode must be socket or http"),
        ({"route": {"enabled": True}}, "route.enabled is for slack.mode=http"),
        ({"extraConfig": {"SLACK_TOKEN": "x"}}, "must start with ETCDBOT_"),
    ],
)
def test_bad_values_fail_the_render(helm: str, tmp_path: Path, values: dict[str, Any], message: str) -> None:
    result = run_helm(helm, "template", "etcdbot", str(CHART), values=values, tmp_path=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr


# --- RBAC -------------------------------------------------------------------------------------

def rbac_grants(docs: list[dict[str, Any]]) -> set[tuple[str, str, str, str, tuple[str, ...]]]:
    grants = set()
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        scope = CLUSTER if doc["kind"] == "ClusterRole" else doc["metadata"]["namespace"]
        for rule in doc["rules"]:
            assert "nonResourceURLs" not in rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        grants.add((scope, group, resource, verb, tuple(sorted(rule.get("resourceNames", ())))))
    return grants


@pytest.mark.parametrize("variant", VARIANTS)
def test_rbac_has_no_wildcards(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    rules = [r for d in rendered[variant] if d["kind"] in ("ClusterRole", "Role") for r in d["rules"]]
    assert rules
    for rule in rules:
        for field in ("verbs", "resources", "apiGroups", "resourceNames"):
            assert all("*" not in item for item in rule.get(field, [])), rule


def test_rbac_is_exactly_what_the_procedures_use(rendered: dict[str, list[dict[str, Any]]]) -> None:
    grants = rbac_grants(rendered["default"])
    assert grants - EXPECTED_RBAC == set(), "granted but not needed"
    assert EXPECTED_RBAC - grants == set(), "needed but not granted"


def test_rbac_binds_the_bots_service_account(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default"]
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    assert bot_deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"] == sa
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
             for d in docs if d["kind"] in ("ClusterRole", "Role")}
    bindings = of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding")
    assert len(bindings) == len(roles) == 3
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
        ref = binding["roleRef"]
        assert (ref["kind"], binding["metadata"].get("namespace"), ref["name"]) in roles


def test_every_rbac_resource_is_documented() -> None:
    readme = (CHART / "README.md").read_text()
    for resource in {g[2] for g in EXPECTED_RBAC}:
        assert re.search(rf"\b{re.escape(resource)}\b", readme), f"{resource} is not explained in the chart README"


# --- secrets and config -----------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_no_secret_in_any_configmap(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    configmaps = of_kind(rendered[variant], "ConfigMap")
    assert configmaps
    secret_values = [v.strip() for v in FAKE.values()] + [REDIS_PASSWORD]
    for cm in configmaps:
        for key, value in cm.get("data", {}).items():
            assert not re.search(r"TOKEN|SECRET|PASSWORD|PRIVATE", key), key
            assert not re.search(r"xox[abpr]-|xapp-|PRIVATE KEY", value), (key, value)
            for secret in secret_values:
                assert secret not in value, f"a secret value leaked into ConfigMap key {key}"


def test_secret_holds_the_secret_values(rendered: dict[str, list[dict[str, Any]]]) -> None:
    import base64

    data = one(rendered["full"], "Secret", "etcdbot")["data"]
    decoded = {k: base64.b64decode(v).decode() for k, v in data.items()}
    generated = decoded.pop("redis-password")
    assert len(generated) == 32 and generated.isalnum(), "the bundled Redis gets a random password by default"
    hmac_key = decoded.pop("approval-secret")
    assert len(hmac_key) == 48 and hmac_key.isalnum(), "approval records get a random HMAC key by default"
    assert decoded == {
        "slack-bot-token": FAKE["slackBotToken"],
        "slack-app-token": FAKE["slackAppToken"],
        "slack-signing-secret": FAKE["slackSigningSecret"],
        "ssh-privatekey": FAKE["sshPrivateKey"],
        "ssh-known-hosts": FAKE["sshKnownHosts"],
    }
    ext = one(rendered["external-redis"], "Secret", "etcdbot")["data"]
    assert base64.b64decode(ext["redis-url"]).decode().startswith(f"redis://:{REDIS_PASSWORD}@")


@pytest.mark.parametrize("variant", VARIANTS)
def test_secret_keys_are_wired(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    docs = rendered[variant]
    values = VARIANTS[variant]
    secret_name = values.get("existingSecret") or "etcdbot"
    secrets = of_kind(docs, "Secret")
    if values.get("existingSecret"):
        assert secrets == [], "existingSecret: the chart must not create its own Secret"
        available = None
    else:
        available = set(one(docs, "Secret", secret_name)["data"])

    container = bot_container(docs)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    node = next(e for e in container["env"] if e["name"] == "NODE_NAME")  # the own-cluster check (bot/cluster/incluster.py)
    assert node["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert SECRET_ENV <= refs.keys()
    for ref in refs.values():
        assert ref["name"] == secret_name
        if available is not None:
            assert ref["key"] in available
    mode = (values.get("slack") or {}).get("mode", "socket")
    assert refs["ETCDBOT_SLACK_BOT_TOKEN"].get("optional") is not True
    assert refs["ETCDBOT_SLACK_APP_TOKEN"].get("optional") is (mode == "http")
    assert refs["ETCDBOT_SLACK_SIGNING_SECRET"].get("optional") is (mode == "socket")
    # an existing Secret may lack the HMAC key: the bot then derives it from its token
    assert refs["ETCDBOT_APPROVAL_SECRET"] == {"name": secret_name, "key": "approval-secret", "optional": True}

    pod = bot_deployment(docs)["spec"]["template"]["spec"]
    ssh_volume = next(v for v in pod["volumes"] if v["name"] == "ssh")["secret"]
    assert ssh_volume["secretName"] == secret_name
    assert {i["key"]: i["path"] for i in ssh_volume["items"]} == {
        "ssh-privatekey": "id_ed25519", "ssh-known-hosts": "known_hosts"}
    assert ssh_volume["defaultMode"] & 0o007 == 0, "the SSH key must not be world-readable"
    if available is not None:
        assert {i["key"] for i in ssh_volume["items"]} <= available
    mount = next(m for m in container["volumeMounts"] if m["name"] == "ssh")
    assert mount == {"name": "ssh", "mountPath": "/etc/etcdbot/ssh", "readOnly": True}


def test_every_setting_reaches_the_bot(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["full"]
    container = bot_container(docs)
    assert container["envFrom"] == [{"configMapRef": {"name": "etcdbot"}}]
    data = configmap_data(docs)
    provided = set(data) | {e["name"] for e in container["env"]}
    assert ALL_SETTINGS <= provided
    assert data["ETCDBOT_SLACK_API_URL"] == "http://slack.lab:4000/api/"
    assert data["ETCDBOT_SLACK_MODE"] == "socket"
    assert data["ETCDBOT_HTTP_PORT"] == "3000"
    assert data["ETCDBOT_HEALTH_PORT"] == "8080"
    assert data["ETCDBOT_REDIS_URL"] == "redis://etcdbot-redis:6379/0"
    assert data["ETCDBOT_BACKUP_DIR"] == "/var/lib/etcdbot/backups"
    assert data["ETCDBOT_BACKUP_SCHEDULE"] == "30 2 * * *"
    assert data["ETCDBOT_LOG_LEVEL"] == "DEBUG"
    assert json.loads(data["ETCDBOT_ALLOWED_USERS"]) == ["U012ABCDEF"]
    assert data["ETCDBOT_ALLOWED_USERGROUP"] == "etcd-operators"
    assert data["ETCDBOT_APPROVER_USERGROUP"] == "etcd-approvers"
    assert json.loads(data["ETCDBOT_APPROVER_USERS"]) == []
    assert json.loads(data["ETCDBOT_APPROVALS_REQUIRED"]) == {}
    assert data["ETCDBOT_APPROVAL_EXPIRY"] == "900"
    assert data["ETCDBOT_EXTRA_FLAG"] == "on"


def test_clusters_render_to_json_with_the_mounted_files(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["full"]
    clusters = json.loads(configmap_data(docs)["ETCDBOT_CLUSTERS"])
    assert [c["name"] for c in clusters] == ["prod-east", "local"]
    prod, local = clusters
    assert prod["kubeconfig"] == "/etc/etcdbot/kubeconfigs/prod-east"
    assert prod["channels"] == ["C0INCIDENT"]
    assert prod["ssh"] == {
        "user": "core",
        "hosts": {"ip-10-0-131-183.ec2.internal": "10.0.131.183:22"},
        "private_key": "/etc/etcdbot/ssh/id_ed25519",
        "known_hosts": "/etc/etcdbot/ssh/known_hosts",
    }
    assert (prod["peak_hours"], prod["timezone"]) == ("08:00-18:00", "Europe/Berlin")
    assert "kubeconfig" not in local and "ssh" not in local, "omitted fields stay omitted (in-cluster account)"

    container = bot_container(docs)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/etc/etcdbot/kubeconfigs"] == "kubeconfigs"
    pod = bot_deployment(docs)["spec"]["template"]["spec"]
    kube_volume = next(v for v in pod["volumes"] if v["name"] == "kubeconfigs")
    assert kube_volume["secret"]["secretName"] == "etcdbot-kubeconfigs"
    # The default clusters list: ssh paths filled in too.
    (default,) = json.loads(configmap_data(rendered["default"])["ETCDBOT_CLUSTERS"])
    assert default["ssh"]["private_key"] == "/etc/etcdbot/ssh/id_ed25519"
    assert "kubeconfigs" not in {v["name"] for v in bot_deployment(rendered["default"])["spec"]["template"]["spec"]["volumes"]}


# --- pods: hardening, probes, storage ------------------------------------------------------------

def pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_is_hardened(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    openshift = VARIANTS[variant].get("openshift", False)
    pods = pod_specs(rendered[variant])
    assert pods
    for pod in pods:
        pod_sc = pod.get("securityContext", {})
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod.get("initContainers", []) + pod["containers"]:
            sc = container["securityContext"]
            name = container["name"]
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert "privileged" not in sc or sc["privileged"] is False, name
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and tmp[0]["name"] in tmp_volumes, f"{name}: /tmp must be an emptyDir"
            if openshift:
                # the restricted SCC picks uid and fsGroup, and refuses seccomp before 4.11
                for field in ("runAsUser", "runAsGroup", "fsGroup", "seccompProfile"):
                    assert field not in sc and field not in pod_sc, (name, field)
            else:
                profile = sc.get("seccompProfile", pod_sc.get("seccompProfile"))
                assert profile == {"type": "RuntimeDefault"}, name
                assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, name
    if not openshift:
        bot_pod = bot_deployment(rendered[variant])["spec"]["template"]["spec"]
        assert bot_pod["securityContext"]["runAsUser"] == 10001


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_and_ports(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    docs = rendered[variant]
    container = bot_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == 8080
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]

    http_mode = (VARIANTS[variant].get("slack") or {}).get("mode") == "http"
    service = one(docs, "Service", "etcdbot")
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert svc_ports["metrics"] == (8080, "health")
    assert service["spec"]["selector"] == bot_deployment(docs)["spec"]["selector"]["matchLabels"]
    if http_mode:
        assert ports["http"] == 3000
        assert svc_ports["http"] == (3000, "http")
        route = one(docs, "Route", "etcdbot")
        assert route["spec"]["port"]["targetPort"] == "http"
        assert route["spec"]["tls"]["termination"] == "edge"
    else:
        assert "http" not in ports and "http" not in svc_ports
        assert of_kind(docs, "Route") == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_backup_store_is_a_pvc(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    docs = rendered[variant]
    pvc = one(docs, "PersistentVolumeClaim", "etcdbot-backups")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pod = bot_deployment(docs)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "backups")
    assert volume["persistentVolumeClaim"]["claimName"] == "etcdbot-backups"
    mount = next(m for m in bot_container(docs)["volumeMounts"] if m["name"] == "backups")
    assert mount["mountPath"] == configmap_data(docs)["ETCDBOT_BACKUP_DIR"] == "/var/lib/etcdbot/backups"


def test_replicas_and_rollout(rendered: dict[str, list[dict[str, Any]]]) -> None:
    single = bot_deployment(rendered["default"])["spec"]
    assert single["replicas"] == 1
    assert single["strategy"] == {"type": "Recreate"}, "a RWO volume cannot follow a rolling update"
    two = rendered["two-replicas"]
    assert bot_deployment(two)["spec"]["replicas"] == 2
    assert "strategy" not in bot_deployment(two)["spec"]
    assert one(two, "PersistentVolumeClaim", "etcdbot-backups")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert configmap_data(two)["ETCDBOT_REDIS_URL"] == "redis://etcdbot-redis:6379/0"


def test_config_change_rolls_the_pods(helm: str, tmp_path: Path) -> None:
    def checksum(values: dict[str, Any], sub: str) -> str:
        docs = render(helm, values, tmp_path / sub)
        return bot_deployment(docs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}, "a") == checksum({}, "b")
    assert checksum({}, "c") != checksum({"logLevel": "DEBUG"}, "d")


# --- Redis, monitoring ------------------------------------------------------------------------

def test_bundled_redis(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default"]
    redis = one(docs, "Deployment", "etcdbot-redis")
    pod = redis["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--appendonly" in container["args"]
    data = next(v for v in pod["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"]["claimName"] == "etcdbot-redis"
    one(docs, "PersistentVolumeClaim", "etcdbot-redis")
    service = one(docs, "Service", "etcdbot-redis")
    assert service["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] != bot_deployment(docs)["spec"]["selector"]["matchLabels"]
    policy = one(docs, "NetworkPolicy", "etcdbot-redis")
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed == bot_deployment(docs)["spec"]["selector"]["matchLabels"]
    assert configmap_data(docs)["ETCDBOT_REDIS_URL"] == "redis://etcdbot-redis:6379/0"


def redis_password_of(docs: list[dict[str, Any]]) -> str:
    import base64

    return base64.b64decode(one(docs, "Secret", "etcdbot")["data"]["redis-password"]).decode()


@pytest.mark.parametrize("variant", ["default", "existing-secret", "redis-password"])
def test_bundled_redis_requires_a_password_from_the_secret(rendered: dict[str, list[dict[str, Any]]],
                                                           variant: str) -> None:
    docs = rendered[variant]
    secret = VARIANTS[variant].get("existingSecret") or "etcdbot"
    (redis,) = one(docs, "Deployment", "etcdbot-redis")["spec"]["template"]["spec"]["containers"]
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)", args
    env = {e["name"]: e for e in redis["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "redis-password"}
    probe = " ".join(redis["readinessProbe"]["exec"]["command"])
    assert "REDISCLI_AUTH" in probe and "redis-cli ping" in probe
    bot_env = {e["name"]: e for e in bot_container(docs)["env"]}
    assert bot_env["ETCDBOT_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "redis-password"}
    if variant == "redis-password":
        assert redis_password_of(docs) == REDIS_PASSWORD
    elif variant == "default":
        password = redis_password_of(docs)
        assert len(password) == 32
        for value in configmap_data(docs).values():
            assert password not in value


def test_the_defaults_are_closed(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """With the chart's defaults nobody may run a command until access.* allows someone."""
    from bot.auth import Authorizer

    data = configmap_data(rendered["default"])
    authorizer = Authorizer(allowed_users=json.loads(data["ETCDBOT_ALLOWED_USERS"]),
                            allowed_usergroup=data.get("ETCDBOT_ALLOWED_USERGROUP"))
    assert authorizer.closed
    opened = configmap_data(rendered["full"])
    assert not Authorizer(allowed_users=json.loads(opened["ETCDBOT_ALLOWED_USERS"]),
                          allowed_usergroup=opened.get("ETCDBOT_ALLOWED_USERGROUP")).closed


def test_external_redis(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["external-redis"]
    assert [d["metadata"]["name"] for d in docs if "redis" in d["metadata"]["name"]] == []
    assert "ETCDBOT_REDIS_URL" not in configmap_data(docs), "the URL may hold a password: Secret only"
    env = {e["name"]: e for e in bot_container(docs)["env"]}
    assert env["ETCDBOT_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "etcdbot", "key": "redis-url"}


def test_service_monitor_switch(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert of_kind(rendered["default"], "ServiceMonitor") == []
    docs = rendered["service-monitor"]
    monitor = one(docs, "ServiceMonitor", "etcdbot")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    service = one(docs, "Service", "etcdbot")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
