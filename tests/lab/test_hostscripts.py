"""The host stand-ins of lab/hostfiles: cluster-backup.sh / cluster-restore.sh against a real
single-member TLS etcd running inside a host root, plus crictl, sudo, systemctl and shutdown."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import re
import shutil
import socket
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lab.hosts import CORE, create_host_root, kill_group, run_in_host, spawn_in_host

NODE = "master-0"
CERTS = "/etc/kubernetes/static-pod-certs"
CA = f"{CERTS}/configmaps/etcd-serving-ca/ca-bundle.crt"
PEER_CRT = f"{CERTS}/secrets/etcd-all-peer/etcd-peer-{NODE}.crt"
PEER_KEY = f"{CERTS}/secrets/etcd-all-peer/etcd-peer-{NODE}.key"
SERVING_CRT = f"{CERTS}/secrets/etcd-all-serving/etcd-serving-{NODE}.crt"
SERVING_KEY = f"{CERTS}/secrets/etcd-all-serving/etcd-serving-{NODE}.key"
REVISIONS = {"kube-apiserver-pod": 7, "kube-controller-manager-pod": 8, "kube-scheduler-pod": 6, "etcd-pod": 3}
CONTAINERS_OF = {
    "etcd-pod.yaml": ("etcd", "etcdctl", "etcd-metrics"),
    "kube-apiserver-pod.yaml": ("kube-apiserver",),
    "kube-controller-manager-pod.yaml": ("kube-controller-manager",),
    "kube-scheduler-pod.yaml": ("kube-scheduler",),
}
STAMP = r"\d{4}-\d{2}-\d{2}_\d{6}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_certs(certs_dir: Path) -> None:
    """A CA and one cert for server and client use (the etcd pod mounts them as etcd-certs)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "etcd-signer")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"system:etcd-peer:{NODE}")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {CA: ca.public_bytes(serialization.Encoding.PEM), PEER_CRT: cert.public_bytes(serialization.Encoding.PEM),
             PEER_KEY: _pem_key(key), SERVING_CRT: cert.public_bytes(serialization.Encoding.PEM),
             SERVING_KEY: _pem_key(key)}
    for path, data in files.items():
        dest = certs_dir / path.removeprefix(f"{CERTS}/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)


def _etcd_command(client: str, peer: str) -> list[str]:
    return ["etcd", f"--name={NODE}", "--data-dir=/var/lib/etcd", f"--initial-cluster={NODE}={peer}",
            "--initial-cluster-state=new", f"--initial-advertise-peer-urls={peer}",
            f"--cert-file={SERVING_CRT}", f"--key-file={SERVING_KEY}", f"--trusted-ca-file={CA}",
            "--client-cert-auth=true", f"--peer-cert-file={PEER_CRT}", f"--peer-key-file={PEER_KEY}",
            f"--peer-trusted-ca-file={CA}", "--peer-client-cert-auth=true",
            f"--advertise-client-urls={client}", f"--listen-client-urls={client}", f"--listen-peer-urls={peer}"]


def _etcd_pod_yaml(command: list[str], client: str, *, name: str = "etcd") -> str:
    env = [{"name": "ETCDCTL_API", "value": "3"}, {"name": "ETCDCTL_CACERT", "value": CA},
           {"name": "ETCDCTL_CERT", "value": PEER_CRT}, {"name": "ETCDCTL_KEY", "value": PEER_KEY},
           {"name": "ETCDCTL_ENDPOINTS", "value": f"https://127.0.0.1:1,{client}"},
           {"name": "ETCD_DATA_DIR", "value": "/var/lib/etcd"}]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "openshift-etcd", "labels": {"app": "etcd", "revision": "3"}},
           "spec": {"containers": [
               {"name": "etcdctl", "image": "quay.io/openshift/etcd@sha256:" + "1" * 64,
                "command": ["/bin/bash", "-c", "trap TERM INT; sleep infinity & wait"], "env": env},
               {"name": "etcd", "image": "quay.io/openshift/etcd@sha256:" + "1" * 64, "command": command,
                "env": [{"name": "ETCDCTL_ENDPOINTS", "value": "https://127.0.0.1:2"}]},
               {"name": "etcd-metrics", "image": "quay.io/openshift/etcd@sha256:" + "1" * 64,
                "command": ["etcd", "grpc-proxy", "start"]}],
               "hostNetwork": True}}
    return yaml.safe_dump(pod, sort_keys=False, width=10_000)


def _static_pod_yaml(kind: str, revision: int) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": kind.removesuffix("-pod"), "namespace": f"openshift-{kind}",
                                        "labels": {"revision": str(revision)}},
                           "spec": {"containers": [{"name": kind.removesuffix("-pod"), "image": "x"}]}})


@dataclass
class Master:
    root: Path
    client_url: str
    etcd: asyncio.subprocess.Process

    def real(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    async def etcdctl(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "etcdctl", f"--endpoints={self.client_url}", f"--cacert={self.real(CA)}", f"--cert={self.real(PEER_CRT)}",
            f"--key={self.real(PEER_KEY)}", "--dial-timeout=2s", "--command-timeout=5s", *args,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        if proc.returncode != 0:
            raise RuntimeError(err.decode())
        return out.decode()

    async def sh(self, command: str, **env: str) -> tuple[int, str, str]:
        """A command as user core, as over SSH (sudo where the document says sudo)."""
        rc, out, err = await run_in_host(self.root, ["bash", "-c", command], env=env, timeout=120, user=CORE)
        return rc, out.decode(), err.decode()


def _write_containers(root: Path) -> None:
    manifests = {p.name for p in (root / "etc/kubernetes/manifests").iterdir()}
    now = time.time()
    containers = [
        {"id": f"{i:02d}" + "c" * 62, "image": "quay.io/openshift/x@sha256:" + "2" * 64, "created": now - 3600,
         "state": "Running", "name": name, "attempt": 0, "pod_id": f"{i:02d}" + "d" * 62, "pod": f"{name}-{NODE}",
         "namespace": "openshift-etcd"}
        for i, name in enumerate(n for m, names in CONTAINERS_OF.items() if m in manifests for n in names)]
    tmp = root / "run/lab/.containers.json.tmp"
    tmp.write_text(json.dumps({"containers": containers}))
    tmp.replace(root / "run/lab/containers.json")


@pytest.fixture
async def master(tmp_path: Path) -> AsyncIterator[Master]:
    root = tmp_path / "hosts" / NODE
    create_host_root(root, node=NODE)
    resources = root / "etc/kubernetes/static-pod-resources"
    _write_certs(resources / "etcd-certs")
    client, peer = f"https://127.0.0.1:{_free_port()}", f"https://127.0.0.1:{_free_port()}"
    command = _etcd_command(client, peer)
    manifests = root / "etc/kubernetes/manifests"
    (manifests / "etcd-pod.yaml").write_text(_etcd_pod_yaml(command, client))
    restore_pod = resources / "etcd-certs/configmaps/restore-etcd-pod/pod.yaml"
    restore_pod.parent.mkdir(parents=True)
    restore_pod.write_text(_etcd_pod_yaml(command, client, name="etcd-restore"))
    for kind, revision in REVISIONS.items():
        for rev, age in ((revision - 1, 7200), (revision, 60)):  # the latest by mtime, as `ls -t` sees it
            d = resources / f"{kind}-{rev}"
            (d / "configmaps/config").mkdir(parents=True)
            (d / f"{kind}.yaml").write_text(_static_pod_yaml(kind, rev) if kind != "etcd-pod"
                                            else _etcd_pod_yaml(command, client))
            (d / "configmaps/config/config.yaml").write_text(f"revision: {rev}\n")
            for p in (d / f"{kind}.yaml", d / "configmaps/config/config.yaml", d / "configmaps/config",
                      d / "configmaps", d):
                t = time.time() - age
                os.utime(p, (t, t))
        if kind != "etcd-pod":
            (manifests / f"{kind}.yaml").write_text(_static_pod_yaml(kind, revision))
    _write_containers(root)
    log = (tmp_path / "etcd.log").open("wb")
    etcd = await spawn_in_host(root, command, stdout=log, stderr=asyncio.subprocess.STDOUT)
    m = Master(root, client, etcd)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                await m.etcdctl("endpoint", "health")
                break
            except RuntimeError:
                assert etcd.returncode is None, (tmp_path / "etcd.log").read_text()
                assert time.monotonic() < deadline, "etcd did not become healthy"
                await asyncio.sleep(0.2)
        yield m
    finally:
        kill_group(etcd)
        await etcd.wait()
        log.close()


async def _fake_kubelet(m: Master, stop: asyncio.Event) -> None:
    """What the lab's kubelet does for the scripts: containers follow the manifests dir."""
    manifests = m.root / "etc/kubernetes/manifests"
    while not stop.is_set():
        if not (manifests / "etcd-pod.yaml").exists() and m.etcd.returncode is None:
            kill_group(m.etcd, 15)
            await m.etcd.wait()
        _write_containers(m.root)
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except TimeoutError:
            pass


async def test_backup(master: Master) -> None:
    await master.etcdctl("put", "/kubernetes.io/namespaces/before-backup", "x")
    rc, out, err = await master.sh("sudo /usr/local/bin/cluster-backup.sh /home/core/assets/backup")
    assert rc == 0, out + err
    lines = out.splitlines()
    assert re.fullmatch(r"[0-9a-f]{64}", lines[0])
    assert lines[1].startswith("etcdctl version: 3.4.") and lines[2] == "API version: 3.4"
    assert lines[3:7] == [f"found latest {k}: /etc/kubernetes/static-pod-resources/{k}-{v}" for k, v in REVISIONS.items()]
    assert re.fullmatch(rf"Snapshot saved at /home/core/assets/backup/snapshot_{STAMP}\.db", lines[-2])
    assert lines[-1] == "snapshot db and kube resources are successfully saved to /home/core/assets/backup"

    backup = master.real("/home/core/assets/backup")
    names = sorted(p.name for p in backup.iterdir())
    assert len(names) == 2
    stamp = re.fullmatch(rf"snapshot_({STAMP})\.db", names[0])
    assert stamp and names[1] == f"static_kuberesources_{stamp.group(1)}.tar.gz"
    assert (backup / names[1]).stat().st_mode & 0o777 == 0o600
    with tarfile.open(backup / names[1]) as tar:
        tops = {"/".join(n.split("/")[:2]) for n in tar.getnames()}
        assert tops == {f"static-pod-resources/{k}-{v}" for k, v in REVISIONS.items()}
        assert "static-pod-resources/kube-apiserver-pod-7/kube-apiserver-pod.yaml" in tar.getnames()
    status = json.loads(await master.etcdctl("snapshot", "status", str(backup / names[0]), "-w", "json"))
    assert status["totalKey"] >= 1


async def test_backup_refusals(master: Master) -> None:
    rc, out, _ = await master.sh("/usr/local/bin/cluster-backup.sh /home/core/assets/backup")
    assert (rc, out) == (1, "This script must be run as root\n")
    rc, out, _ = await master.sh("sudo /usr/local/bin/cluster-backup.sh")
    assert (rc, out) == (1, "Path to backup dir required: ./cluster-backup.sh <path-to-backup-dir>\n")
    rc, out, _ = await master.sh("touch /home/core/file; sudo /usr/local/bin/cluster-backup.sh /home/core/file")
    assert (rc, out) == (1, "Path to backup dir required: ./cluster-backup.sh <path-to-backup-dir>\n")
    rc, _, err = await master.sh("sudo cluster-backup.sh /home/core/assets/backup")  # not in sudo's secure_path
    assert (rc, err) == (1, "sudo: cluster-backup.sh: command not found\n")

    for d in master.real("/etc/kubernetes/static-pod-resources").glob("kube-scheduler-pod-*"):
        shutil.rmtree(d)
    rc, out, _ = await master.sh("sudo /usr/local/bin/cluster-backup.sh /home/core/assets/backup")
    assert rc == 1 and out.splitlines()[-1] == "error finding static-pod-resource kube-scheduler-pod"
    assert not any(master.real("/home/core/assets/backup").iterdir())


async def test_restore(master: Master) -> None:
    await master.etcdctl("put", "/kubernetes.io/namespaces/before-backup", "x")
    rc, out, err = await master.sh("sudo /usr/local/bin/cluster-backup.sh /home/core/assets/backup")
    assert rc == 0, out + err
    await master.etcdctl("put", "/kubernetes.io/namespaces/after-backup", "y")
    backup = master.real("/home/core/backup")
    shutil.copytree(master.real("/home/core/assets/backup"), backup)
    snapshot = next(backup.glob("snapshot_*.db"))
    (backup / "snapshot_2000-01-01_000000.db").write_bytes(b"an older snapshot: never used")

    stop = asyncio.Event()
    kubelet = asyncio.create_task(_fake_kubelet(master, stop))
    try:
        rc, out, err = await master.sh("sudo -E /usr/local/bin/cluster-restore.sh /home/core/backup")
    finally:
        stop.set()
        await kubelet
    assert rc == 0, out + err
    lines = out.splitlines()
    assert lines[:4] == ["...stopping kube-apiserver-pod.yaml", "...stopping kube-controller-manager-pod.yaml",
                         "...stopping kube-scheduler-pod.yaml", "...stopping etcd-pod.yaml"]
    waits = [ln for ln in lines if ln.startswith("Waiting for container")]
    assert waits == [f"Waiting for container {c} to stop" for c in
                     ("etcd", "etcdctl", "etcd-metrics", "kube-controller-manager", "kube-apiserver", "kube-scheduler")]
    assert "Moving etcd data-dir /var/lib/etcd/member to /var/lib/etcd-backup" in lines
    assert lines[lines.index("starting restore-etcd static pod") + 1:] == [
        "starting kube-apiserver-pod.yaml", "static-pod-resources/kube-apiserver-pod-7/kube-apiserver-pod.yaml",
        "starting kube-controller-manager-pod.yaml",
        "static-pod-resources/kube-controller-manager-pod-8/kube-controller-manager-pod.yaml",
        "starting kube-scheduler-pod.yaml", "static-pod-resources/kube-scheduler-pod-6/kube-scheduler-pod.yaml"]

    stopped = master.real("/home/core/assets/manifests-stopped")
    assert sorted(p.name for p in stopped.iterdir()) == sorted(CONTAINERS_OF)
    assert list(master.real("/var/lib/etcd").iterdir()) == []
    assert (master.real("/var/lib/etcd-backup/member/snap/db")).exists()
    assert master.real("/var/lib/etcd-backup/snapshot.db").read_bytes() == snapshot.read_bytes()
    manifests = master.real("/etc/kubernetes/manifests")
    restore_pod = master.real("/etc/kubernetes/static-pod-resources/etcd-certs/configmaps/restore-etcd-pod/pod.yaml")
    assert (manifests / "etcd-pod.yaml").read_text() == restore_pod.read_text()
    for kind in ("kube-apiserver-pod", "kube-controller-manager-pod", "kube-scheduler-pod"):
        assert yaml.safe_load((manifests / f"{kind}.yaml").read_text())["metadata"]["labels"]["revision"] == str(
            REVISIONS[kind])

    # what the restore pod does with it: the restored data has the backup's keys, not later ones
    restored = master.root.parent / "restored.etcd"
    proc = await asyncio.create_subprocess_exec(
        "etcdctl", "snapshot", "restore", str(master.real("/var/lib/etcd-backup/snapshot.db")),
        f"--data-dir={restored}", env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert (restored / "member/snap/db").exists()


async def test_restore_refusals(master: Master) -> None:
    usage = ("Path to the directory containing backup files is required: ./cluster-restore.sh <path-to-backup>\n"
             "The backup directory is expected to be contain two files:\n        1. etcd snapshot\n"
             "        2. A copy of the Static POD resources at the time of backup\n")
    before = sorted(p.name for p in master.real("/etc/kubernetes/manifests").iterdir())
    rc, out, _ = await master.sh("/usr/local/bin/cluster-restore.sh /home/core/backup")
    assert (rc, out) == (1, "This script must be run as root\n")
    rc, out, _ = await master.sh("sudo -E /usr/local/bin/cluster-restore.sh")
    assert (rc, out) == (1, usage)
    rc, out, _ = await master.sh("sudo -E /usr/local/bin/cluster-restore.sh /home/core/no-such-dir")
    assert (rc, out) == (1, usage)
    master.real("/home/core/backup").mkdir()
    master.real("/home/core/backup/static_kuberesources_2020-06-03_123456.tar.gz").write_bytes(b"")
    rc, out, err = await master.sh("sudo -E /usr/local/bin/cluster-restore.sh /home/core/backup")
    assert (rc, out) == (1, "etcd snapshot  does not exist\n")
    assert "cannot access '/home/core/backup/snapshot*.db'" in err
    assert sorted(p.name for p in master.real("/etc/kubernetes/manifests").iterdir()) == before
    assert master.etcd.returncode is None


async def test_crictl_sudo_systemctl_shutdown(master: Master) -> None:
    rc, out, _ = await master.sh("sudo crictl ps --name '^etcd' ; sudo crictl ps -q --label io.kubernetes.container.name=etcd")
    lines = out.splitlines()
    assert rc == 0 and re.fullmatch(r"CONTAINER\s{11}IMAGE\s+CREATED\s+STATE\s+NAME\s+ATTEMPT\s+POD ID", lines[0])
    assert len(lines) == 5 and lines[-1] == "00" + "c" * 62
    assert sorted(ln.split()[7] for ln in lines[1:4]) == ["etcd", "etcd-metrics", "etcdctl"]
    assert lines[1].split()[:7] == ["00ccccccccccc", "quay.io/openshift/x@sha256:" + "2" * 64,
                                    "About", "an", "hour", "ago", "Running"]
    assert lines[0].index("IMAGE") == 20 and lines[1].index("quay.io") == 20  # tabwriter: minwidth 20

    rc, out, _ = await master.sh("sudo -i pwd; sudo -s pwd; sudo env | grep -E '^(HOME|USER)=' | sort",)
    assert out.splitlines() == ["/root", "/", "HOME=/root", "USER=root"]

    rc, out, err = await master.sh("sudo shutdown -h 10")
    assert rc == 0 and re.fullmatch(r"Shutdown scheduled for \w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \w+, "
                                    r"use 'shutdown -c' to cancel\.\n", err)
    assert json.loads(master.real("/run/lab/shutdown").read_text())["minutes"] == 10
    rc, _, _ = await master.sh("sudo shutdown -c")
    assert rc == 0 and not master.real("/run/lab/shutdown").exists()
    rc, _, err = await master.sh("shutdown -h now")
    assert rc == 1 and "Interactive authentication required" in err

    restart = asyncio.create_task(master.sh("sudo systemctl restart kubelet.service"))
    flag = master.real("/run/lab/kubelet-restart")
    deadline = time.monotonic() + 15
    while not flag.exists():
        assert time.monotonic() < deadline and not restart.done()
        await asyncio.sleep(0.05)
    flag.unlink()  # the kubelet emulation acknowledges the restart
    rc, _, err = await asyncio.wait_for(restart, 15)
    assert (rc, err) == (0, "")
    rc, _, err = await master.sh("sudo -E systemctl restart kubelet", LAB_SYSTEMCTL_TIMEOUT="0.3")
    assert rc == 1 and "Job for kubelet.service failed because a timeout was exceeded." in err
    rc, _, err = await master.sh("sudo systemctl restart crio")
    assert (rc, err) == (5, "Failed to restart crio.service: Unit crio.service not found.\n")
    rc, out, _ = await master.sh("systemctl status kubelet")
    assert rc == 0 and "Active: active (running)" in out
