"""Lays a new lab's files down once: certificates, SSH keys, host roots with their static pod
manifests and certificates, the kubeconfig and the env file the bot and people source.

Everything here is idempotent per file, so a daemon restarted on an existing DIR keeps its
certificates, keys and data.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from lab import hosts, manifests, pki, sshd
from lab.spec import LabSpec, MasterSpec, NodeSpec, WorkerSpec

MASTER_ONLY_FILES = ("cluster-backup.sh", "cluster-restore.sh", "etcd-common-tools")


def pki_dir(spec: LabSpec) -> Path:
    return spec.path / "pki"


def host_root(spec: LabSpec, node: str) -> Path:
    return spec.path / "hosts" / node


def etcd_ca(spec: LabSpec) -> pki.KeyPair:
    d = pki_dir(spec)
    if not (d / "etcd-ca.crt").exists():
        pki.make_ca("etcd-signer").write(cert=d / "etcd-ca.crt", key=d / "etcd-ca.key")
    return pki.load_pair(cert=d / "etcd-ca.crt", key=d / "etcd-ca.key")


def node_certs(spec: LabSpec, master: MasterSpec, *, renew: bool = False) -> dict[str, pki.KeyPair]:
    """The node's peer/serving/metrics certificates, kept under DIR/pki/nodes/<node>/."""
    d = pki_dir(spec) / "nodes" / master.node
    if renew or not (d / "peer.crt").exists():
        for kind, pair in pki.etcd_node_certs(etcd_ca(spec), node=master.node, ip=master.ip).items():
            pair.write(cert=d / f"{kind}.crt", key=d / f"{kind}.key")
    return {kind: pki.load_pair(cert=d / f"{kind}.crt", key=d / f"{kind}.key") for kind in pki.ETCD_CERT_KINDS}


def etcd_client_files(spec: LabSpec) -> tuple[Path, Path, Path]:
    """CA, cert, key the API server and the lab's controllers use to reach etcd."""
    d = pki_dir(spec)
    if not (d / "etcd-client.crt").exists():
        pki.issue(etcd_ca(spec), common_name="system:kube-apiserver-etcd-client", hosts=["localhost"]).write(
            cert=d / "etcd-client.crt", key=d / "etcd-client.key"
        )
    return d / "etcd-ca.crt", d / "etcd-client.crt", d / "etcd-client.key"


def api_serving_files(spec: LabSpec) -> tuple[Path, Path, Path]:
    d = pki_dir(spec)
    if not (d / "api-ca.crt").exists():
        ca = pki.make_ca("kube-apiserver-lb-signer")
        ca.write(cert=d / "api-ca.crt", key=d / "api-ca.key")
        pki.issue(ca, common_name="api.lab.example.com", hosts=["127.0.0.1", "localhost", "api.lab.example.com"]).write(
            cert=d / "api.crt", key=d / "api.key"
        )
    return d / "api-ca.crt", d / "api.crt", d / "api.key"


def install_node_certs(spec: LabSpec, *, masters: list[MasterSpec]) -> None:
    """Every host holds every node's certs (etcd-all-peer etc.), as OpenShift's static pod resources do.

    Modes as the installer pod writes them (library-go ``installerpod``): directories 0755,
    configmap files 0644, secret files 0600, all root's; user core cannot read a key without sudo.
    """
    ca_pem = etcd_ca(spec).cert_pem
    all_certs = {m.node: node_certs(spec, m) for m in masters}
    for target in masters:
        base = host_root(spec, target.node) / "etc/kubernetes/static-pod-resources/etcd-certs"
        for name in ("etcd-serving-ca", "etcd-peer-client-ca", "etcd-metrics-proxy-serving-ca"):
            _make_dirs(base / "configmaps" / name)
            (base / "configmaps" / name / "ca-bundle.crt").write_bytes(ca_pem)
            (base / "configmaps" / name / "ca-bundle.crt").chmod(0o644)
        for node, certs in all_certs.items():
            for kind, folder in (("peer", "etcd-all-peer"), ("serving", "etcd-all-serving"),
                                 ("serving-metrics", "etcd-all-serving-metrics")):
                secret_dir = base / "secrets" / folder
                _make_dirs(secret_dir)
                cert, key = secret_dir / f"etcd-{kind}-{node}.crt", secret_dir / f"etcd-{kind}-{node}.key"
                certs[kind].write(cert=cert, key=key)
                cert.chmod(0o600)
                key.chmod(0o600)


def _make_dirs(path: Path) -> None:
    """mkdir -p with 0755 on what it creates up to the host's static-pod-resources (umask aside)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        created.chmod(0o755)


def _write_revision(resource_dir: Path, kind: str, text: str, *, version: str, reason: str) -> None:
    """A revision's resource dir as the installer lays it: the pod manifest, and the revisioned
    `<kind>-pod` configmap (pod.yaml, the release `version`, `forceRedeploymentReason`), which is
    how a backup's static_kuberesources tarball records the release it was taken on."""
    configmap = resource_dir / "configmaps" / f"{kind}-pod"
    _make_dirs(configmap)
    _write_config(resource_dir / f"{kind}-pod.yaml", text)
    _write_config(configmap / "pod.yaml", text)
    _write_config(configmap / "version", version)
    _write_config(configmap / "forceRedeploymentReason", reason)


def write_etcd_manifest(spec: LabSpec, master: MasterSpec, *, revision: int, initial_cluster: list[MasterSpec],
                        endpoints: list[MasterSpec], state: str, reason: str = "") -> None:
    root = host_root(spec, master.node)
    text = manifests.etcd_pod_yaml(master, revision=revision, initial_cluster=initial_cluster,
                                   endpoints=endpoints, state=state, version=spec.version)
    _write_revision(root / f"etc/kubernetes/static-pod-resources/etcd-pod-{revision}", "etcd", text,
                    version=spec.version, reason=reason)
    restore = root / "etc/kubernetes/static-pod-resources/etcd-certs/configmaps/restore-etcd-pod"
    _make_dirs(restore)
    _write_config(restore / "pod.yaml", manifests.restore_pod_yaml(master, revision=revision, version=spec.version))
    _atomic_write(root / "etc/kubernetes/manifests/etcd-pod.yaml", text)


def write_control_plane_manifest(spec: LabSpec, master: MasterSpec, kind: str, *, revision: int,
                                 reason: str = "") -> None:
    root = host_root(spec, master.node)
    text = manifests.control_plane_pod_yaml(kind, revision=revision, version=spec.version)
    resource_dir = root / f"etc/kubernetes/static-pod-resources/{kind}-pod-{revision}"
    _write_revision(resource_dir, kind, text, version=spec.version, reason=reason)
    _make_dirs(resource_dir / "configmaps" / "config")
    _write_config(resource_dir / "configmaps" / "config" / "config.yaml", json.dumps({"kind": kind, "revision": revision}))
    _atomic_write(root / f"etc/kubernetes/manifests/{kind}-pod.yaml", text)


def _write_config(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o644)


def _atomic_write(path: Path, text: str) -> None:
    """A static pod manifest: root's, 0644, replaced in one rename (the kubelet never reads half)."""
    _make_dirs(path.parent)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)


def prepare_host(spec: LabSpec, master: NodeSpec) -> None:
    root = host_root(spec, master.node)
    hosts.create_host_root(root, node=master.node)
    sshd.ensure_host_key(spec.path / "ssh" / f"host_{master.node}")
    if isinstance(master, WorkerSpec):
        # A worker runs no etcd: the machine config lays the etcd scripts and data dir on masters only.
        for name in MASTER_ONLY_FILES:
            (root / "usr-local-bin" / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (root / "var/lib/etcd").rmdir()


def ssh_paths(spec: LabSpec) -> dict[str, Path]:
    d = spec.path / "ssh"
    return {"key": d / "id_ed25519", "pub": d / "id_ed25519.pub", "known_hosts": d / "known_hosts",
            "config": d / "config", "authorized_keys": d / "authorized_keys"}


def write_ssh_files(spec: LabSpec) -> None:
    """Client key for core, authorized_keys, known_hosts and an ssh_config naming every node."""
    paths = ssh_paths(spec)
    paths["key"].parent.mkdir(parents=True, exist_ok=True)
    sshd.ensure_client_key(paths["key"])
    paths["authorized_keys"].write_text(paths["pub"].read_text())
    known, config = [], []
    for m in (*spec.masters, *spec.workers):
        host_key = spec.path / "ssh" / f"host_{m.node}"
        known.append(sshd.known_hosts_line("127.0.0.1", m.ssh_port, host_key))
        line = sshd.known_hosts_line("127.0.0.1", m.ssh_port, host_key).split(" ", 1)[1]
        known.append(f"{m.node} {line}")
        config.append(
            f"Host {m.node}\n  HostName 127.0.0.1\n  Port {m.ssh_port}\n  User core\n"
            f"  IdentityFile {paths['key']}\n  UserKnownHostsFile {paths['known_hosts']}\n"
            f"  HostKeyAlias {m.node}\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
        )
    paths["known_hosts"].write_text("\n".join(known) + "\n")
    paths["config"].write_text("\n".join(config))


def write_kubeconfig(spec: LabSpec) -> Path:
    ca, _, _ = api_serving_files(spec)
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {
            "server": f"https://127.0.0.1:{spec.api_port}",
            "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()}}],
        "users": [{"name": "system:admin", "user": {"token": spec.api_token}}],
        "contexts": [{"name": "admin", "context": {"cluster": "lab", "user": "system:admin"}}],
        "current-context": "admin",
    }
    path = spec.path / "kubeconfig"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def env_lines(spec: LabSpec) -> list[str]:
    """The settings a bot (and a person) needs to reach this lab, as shell export lines."""
    paths = ssh_paths(spec)
    cluster = {
        "name": spec.cluster_name,
        "kubeconfig": str(spec.path / "kubeconfig"),
        "channels": ["C0INCIDENT"],
        "ssh": {"user": "core", "private_key": str(paths["key"]), "known_hosts": str(paths["known_hosts"]),
                "hosts": {m.node: f"127.0.0.1:{m.ssh_port}" for m in spec.masters},
                "workers": {w.node: f"127.0.0.1:{w.ssh_port}" for w in spec.workers}},
        "peak_hours": "09:00-17:00",
        "timezone": "UTC",
    }
    values: list[tuple[str, str]] = [
        ("LAB_DIR", spec.dir),
        ("KUBECONFIG", str(spec.path / "kubeconfig")),
        ("LAB_SSH_CONFIG", str(paths["config"])),
        ("LAB_SSH_KEY", str(paths["key"])),
        ("LAB_KNOWN_HOSTS", str(paths["known_hosts"])),
        ("LAB_MASTERS", " ".join(m.node for m in spec.masters)),
        ("LAB_WORKERS", " ".join(w.node for w in spec.workers)),
    ]
    for m in (*spec.masters, *spec.workers):
        var = "LAB_SSH_" + m.node.split(".")[0].replace("-", "_").upper()
        values.append((var, f"core@127.0.0.1:{m.ssh_port}"))
    values += [
        ("ETCDBOT_REDIS_URL", f"redis://127.0.0.1:{spec.redis_port}/0"),
        ("ETCDBOT_SLACK_API_URL", f"http://127.0.0.1:{spec.slack_port}/api/"),
        ("ETCDBOT_SLACK_BOT_TOKEN", spec.slack_bot_token),
        ("ETCDBOT_SLACK_APP_TOKEN", spec.slack_app_token),
        ("ETCDBOT_SLACK_SIGNING_SECRET", spec.slack_signing_secret),
        ("ETCDBOT_BACKUP_DIR", str(spec.path / "backups")),
        ("ETCDBOT_APPROVER_USERGROUP", "etcd-approvers"),
        # The bot is closed by default: the lab's people (alice, bob, carol; not dave) may run commands.
        ("ETCDBOT_ALLOWED_USERS", '["U0ALICE01","U0BOB0001","U0CAROL01"]'),
        ("ETCDBOT_CLUSTERS", json.dumps([cluster], separators=(",", ":"))),
    ]
    if spec.bot_http_port and spec.bot_health_port:
        values += [("ETCDBOT_HTTP_PORT", str(spec.bot_http_port)), ("ETCDBOT_HEALTH_PORT", str(spec.bot_health_port))]
    return [f"export {k}={shlex.quote(v)}" for k, v in values]


def write_env(spec: LabSpec) -> Path:
    path = spec.path / "env"
    path.write_text("\n".join(env_lines(spec)) + "\n")
    path.chmod(0o600)
    return path


def lay_down(spec: LabSpec) -> None:
    """First start of a lab: every file the daemon needs."""
    for sub in ("pki", "ssh", "hosts", "redis", "backups", "logs"):
        (spec.path / sub).mkdir(parents=True, exist_ok=True)
    etcd_client_files(spec)
    api_serving_files(spec)
    masters = list(spec.masters)
    # Host roots are mostly small file and symlink copies: in threads, they overlap their syscalls.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda node: prepare_host(spec, node), (*masters, *spec.workers)))
    install_node_certs(spec, masters=masters)
    for m in masters:
        if not (host_root(spec, m.node) / "etc/kubernetes/manifests/etcd-pod.yaml").exists():
            write_etcd_manifest(spec, m, revision=2, initial_cluster=masters, endpoints=masters, state="new")
            for kind in manifests.CONTROL_PLANE_KINDS:
                write_control_plane_manifest(spec, m, kind, revision=2)
    write_ssh_files(spec)
    write_kubeconfig(spec)
    write_env(spec)
