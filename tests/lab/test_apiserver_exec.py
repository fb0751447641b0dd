"""pods/exec over WebSocket with real kubectl (v5.channel.k8s.io) and the Python client, plus the
server's failure modes: etcd gone (503/504 Status, bounded), stop/start (connection refused),
and watch."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.stream import stream

from tests.lab.etcd_fixture import ApiLab


def _pod(name: str, *, running: bool = True) -> dict[str, Any]:
    state = {"running": {"startedAt": "2020-07-20T10:00:00Z"}} if running else {"waiting": {"reason": "CrashLoopBackOff"}}
    return {
        "metadata": {"name": name, "namespace": "openshift-etcd",
                     "annotations": {"kubectl.kubernetes.io/default-container": "etcdctl"}},
        "spec": {"nodeName": "master-0", "containers": [{"name": "etcd"}, {"name": "etcdctl"}, {"name": "forbidden"}]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": c, "ready": running, "restartCount": 0, "state": state, "image": "i", "imageID": "i"}
            for c in ("etcd", "etcdctl", "forbidden")]},
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiLab]:
    lab = ApiLab(tmp_path_factory.mktemp("apiserver-exec"))
    try:
        lab.run(lab.objects.create("namespaces", {"metadata": {"name": "openshift-etcd"}}))
        lab.run(lab.objects.create("pods", _pod("etcd-master-0")))
        lab.run(lab.objects.create("pods", _pod("etcd-master-1", running=False)))
        yield lab
    finally:
        lab.close()


def test_kubectl_exec_output_and_exit_code(lab: ApiLab) -> None:
    p = lab.kubectl("exec", "-n", "openshift-etcd", "etcd-master-0", "--", "sh", "-c", "echo out; echo err >&2; exit 3",
                    check=False)
    assert (p.returncode, p.stdout, p.stderr.strip()) == (3, "out\n", "err\ncommand terminated with exit code 3")
    p = lab.kubectl("exec", "-n", "openshift-etcd", "etcd-master-0", "-c", "etcd", "--", "true")
    assert p.returncode == 0 and p.stdout == ""


def test_kubectl_exec_stdin(lab: ApiLab) -> None:
    data = "".join(f"line {i}\n" for i in range(2000))
    p = lab.kubectl("exec", "-i", "-n", "openshift-etcd", "etcd-master-0", "--", "cat", stdin=data)
    assert p.stdout == data
    p = lab.kubectl("exec", "-i", "-n", "openshift-etcd", "etcd-master-0", "--", "sh", "-c", "wc -l", stdin="a\nb\n")
    assert p.stdout.strip() == "2"


def test_kubectl_exec_refusals(lab: ApiLab) -> None:
    p = lab.kubectl("exec", "-n", "openshift-etcd", "nope", "--", "true", check=False)
    assert p.returncode == 1 and 'pods "nope" not found' in p.stderr
    p = lab.kubectl("exec", "-n", "openshift-etcd", "etcd-master-1", "-c", "etcd", "--", "true", check=False)
    assert p.returncode == 1 and 'container not found ("etcd")' in p.stderr
    p = lab.kubectl("exec", "-n", "openshift-etcd", "etcd-master-0", "-c", "forbidden", "--", "true", check=False)
    assert p.returncode == 1 and "exec into forbidden is not allowed" in p.stderr


def test_python_client_exec(lab: ApiLab) -> None:
    api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(lab.kubeconfig)))
    resp = stream(api.connect_get_namespaced_pod_exec, "etcd-master-0", "openshift-etcd",
                  command=["sh", "-c", "echo hello; echo oops >&2; exit 4"], container="etcdctl",
                  stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    resp.run_forever(timeout=20)
    assert resp.read_stdout() == "hello\n" and resp.read_stderr() == "oops\n"
    assert resp.returncode == 4
    out = stream(api.connect_get_namespaced_pod_exec, "etcd-master-0", "openshift-etcd", command=["echo", "hi"],
                 stderr=True, stdin=False, stdout=True, tty=False)
    assert out == "hi\n"


def test_v4_protocol_raw(lab: ApiLab) -> None:
    """The v4 framing with no stdin-close message: output, then the Status on channel 3."""

    async def run() -> tuple[bytes, dict[str, Any]]:
        ctx = ssl.create_default_context(cafile=str(lab.ca.cert_file))
        url = (f"{lab.url}/api/v1/namespaces/openshift-etcd/pods/etcd-master-0/exec"
               "?command=sh&command=-c&command=echo+v4%3B+exit+0&stdout=true&stderr=true")
        out, status = b"", {}
        async with aiohttp.ClientSession() as session, session.ws_connect(
            url, protocols=("v4.channel.k8s.io",), ssl=ctx, headers={"Authorization": f"Bearer {lab.token}"},
            timeout=aiohttp.ClientWSTimeout(ws_close=10),
        ) as ws:
            assert ws.protocol == "v4.channel.k8s.io"
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY and msg.data[0] == 1:
                    out += msg.data[1:]
                elif msg.type == aiohttp.WSMsgType.BINARY and msg.data[0] == 3:
                    status = json.loads(msg.data[1:])
        return out, status

    out, status = lab.run(run())
    assert out == b"v4\n" and status == {"metadata": {}, "status": "Success"}


def test_watch(lab: ApiLab) -> None:
    ctx = ssl.create_default_context(cafile=str(lab.ca.cert_file))
    req = urllib.request.Request(f"{lab.url}/api/v1/namespaces/openshift-etcd/configmaps?watch=true&timeoutSeconds=10",
                                 headers={"Authorization": f"Bearer {lab.token}"})
    with urllib.request.urlopen(req, context=ctx, timeout=15) as resp:
        lab.run(lab.objects.create("configmaps", {"metadata": {"name": "w", "namespace": "openshift-etcd"}}))
        first = json.loads(resp.readline())
        lab.run(lab.objects.merge_patch("configmaps", "w", {"data": {"a": "b"}}, "openshift-etcd"))
        second = json.loads(resp.readline())
        lab.run(lab.objects.delete("configmaps", "w", "openshift-etcd"))
        third = json.loads(resp.readline())
    assert [first["type"], second["type"], third["type"]] == ["ADDED", "MODIFIED", "DELETED"]
    assert second["object"]["data"] == {"a": "b"}


def test_stop_start(lab: ApiLab) -> None:
    lab.run(lab.server.stop())
    assert not lab.server.serving
    p = lab.kubectl("get", "pods", "-A", check=False)
    assert p.returncode == 1 and "127.0.0.1:" in p.stderr and "was refused" in p.stderr
    lab.run(lab.server.stop())  # idempotent
    lab.run(lab.server.start())
    lab.run(lab.server.start())
    assert lab.server.serving
    assert "etcd-master-0" in lab.kubectl("get", "pods", "-A").stdout


def test_etcd_gone_gives_status_errors(lab: ApiLab) -> None:
    """Last: kills this module's etcd. A dead etcd answers fast (503); a hung one at the deadline (504)."""
    lab.etcd.proc.send_signal(subprocess.signal.SIGSTOP)  # hung: no answers, like a member without quorum
    try:
        start = time.monotonic()
        p = lab.kubectl("get", "pods", "-A", check=False)
        assert p.returncode == 1 and "Error from server (Timeout)" in p.stderr, p.stderr
        assert time.monotonic() - start < 15
        p = lab.kubectl("version", check=False)  # discovery and /version need no etcd
        assert "Server Version: v1.18.3" in p.stdout
    finally:
        lab.etcd.proc.send_signal(subprocess.signal.SIGCONT)
    lab.etcd.stop()
    p = lab.kubectl("get", "nodes", check=False)
    assert p.returncode == 1 and "Error from server (ServiceUnavailable)" in p.stderr, p.stderr
    p = lab.kubectl("exec", "-n", "openshift-etcd", "etcd-master-0", "--", "true", check=False)
    assert p.returncode == 1 and ("Error from server" in p.stderr or "unable to upgrade" in p.stderr)
