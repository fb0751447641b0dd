"""The bot's own cluster, told from the in-cluster configuration (KUBERNETES_SERVICE_HOST/PORT, the
service account token): /etcd-shutdown (and /etcd-restore) refuse it, and refuse when they cannot
tell. The admission helper is run on a step context whose cluster is the pod's own API."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from bot.cluster.incluster import InCluster, decide, detect, kubeconfig_server
from bot.config import load_settings
from bot.procedure import StepContext, Verdict
from procedures.guards import own_cluster_refusal

MASTERS = ("ip-10-0-131-183.ec2.internal", "ip-10-0-154-204.ec2.internal")


def account(tmp_path: Path, *, token: bool = True) -> Path:
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    if token:
        (directory / "token").write_text("eyJhbGciOi.fake.token")
        (directory / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    return directory


def test_not_in_a_pod_without_the_service_host(tmp_path: Path) -> None:
    assert detect(environ={}, serviceaccount_dir=account(tmp_path)) is None
    assert detect(environ={"KUBERNETES_SERVICE_HOST": "172.30.0.1"}, serviceaccount_dir=tmp_path) is None


def test_in_a_pod_with_and_without_a_token(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "172.30.0.1", "KUBERNETES_SERVICE_PORT": "443", "NODE_NAME": MASTERS[0]}
    found = detect(environ=env, serviceaccount_dir=account(tmp_path))
    assert found is not None and found.server == "https://172.30.0.1:443" and found.node_name == MASTERS[0]
    assert found.token is not None and found.ca is not None
    bare = detect(environ=env, serviceaccount_dir=tmp_path / "nothing")
    assert bare is not None and bare.token is None
    assert InCluster(host="fd02::1", port="443", token=None, ca=None).server == "https://[fd02::1]:443"


def test_kubeconfig_server(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "current-context": "b", "contexts": [{"name": "a", "context": {"cluster": "one"}},
                                             {"name": "b", "context": {"cluster": "two"}}],
        "clusters": [{"name": "one", "cluster": {"server": "https://one:6443"}},
                     {"name": "two", "cluster": {"server": "https://api.prod-east.example.com:6443"}}]}))
    assert kubeconfig_server(path) == "https://api.prod-east.example.com:6443"
    path.write_text("{not yaml")
    assert kubeconfig_server(path) == ""


POD = InCluster(host="172.30.0.1", port="443", token=Path("/t"), ca=Path("/c"), node_name="mgmt-worker-1")


@pytest.mark.parametrize(("kwargs", "same", "why"), [
    ({"incluster": None}, False, "does not run in a pod"),
    ({"target_server": "https://172.30.0.1:443"}, True, "points at this pod's own API"),
    ({"target_server": "https://kubernetes.default.svc"}, True, "points at this pod's own API"),
    ({"own_uid": "u1", "target_uid": "u1"}, True, "same uid (u1)"),
    ({"own_uid": "u1", "target_uid": "u2"}, False, "another uid"),
    # the target's API is down (a restore): the pod's node decides
    ({"own_uid": "u1", "target_nodes": MASTERS}, False, "not one of the cluster's nodes"),
    ({"own_uid": "u1", "target_nodes": (*MASTERS, "mgmt-worker-1")}, True, "one of the cluster's nodes"),
    ({"own_error": "403", "target_error": "down"}, None, "403; down"),
])
def test_decide(kwargs: dict, same: bool | None, why: str) -> None:
    arguments = {"incluster": POD, "target_server": "https://api.lab.example.com:6443", "own_uid": None,
                 "target_uid": None, "target_nodes": (), **kwargs}
    found = decide(**arguments)
    assert found.same is same and why in found.why


def test_unknown_without_a_node_name_says_how_to_fix() -> None:
    pod = InCluster(host="172.30.0.1", port="443", token=None, ca=None)
    found = decide(incluster=pod, target_server="https://api:6443", own_uid=None, target_uid="u2",
                   target_nodes=MASTERS, own_error="no service account token is mounted in this pod")
    assert found.same is None and "NODE_NAME is not set" in found.why and "no service account token" in found.why


def context(tmp_path: Path, *, server: str) -> StepContext:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k"}}],
                                          "clusters": [{"name": "k", "cluster": {"server": server}}]}))
    settings = load_settings(environ={
        "ETCDBOT_SLACK_BOT_TOKEN": "xoxb-x", "ETCDBOT_SLACK_APP_TOKEN": "xapp-x",
        "ETCDBOT_SERVICEACCOUNT_DIR": str(tmp_path / "serviceaccount"),
        "ETCDBOT_CLUSTERS": json.dumps([{"name": "prod", "kubeconfig": str(kubeconfig)}])})
    cluster = settings.cluster("prod")
    assert cluster is not None

    async def beat(_text: str) -> None:
        return None

    return StepContext(run_id="r1", cluster=cluster, settings=settings, parameters={}, kube=None,  # type: ignore[arg-type]
                       hosts=None, results={}, heartbeat=beat)  # type: ignore[arg-type]


async def test_the_admission_refuses_the_pods_own_cluster_and_passes_outside_a_pod(tmp_path: Path) -> None:
    account(tmp_path)
    ctx = context(tmp_path, server="https://172.30.0.1:443")
    env = {"KUBERNETES_SERVICE_HOST": "172.30.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    refused = await own_cluster_refusal(ctx, action="shut down", environ=env)
    assert refused is not None and refused.verdict is Verdict.REFUSE
    assert "`prod` is the cluster this bot runs on" in refused.message and "cannot shut down" in refused.message
    assert "docs/deploy.md" in refused.next_action
    assert await own_cluster_refusal(ctx, action="shut down", environ={}) is None


async def test_the_admission_refuses_when_it_cannot_tell(tmp_path: Path) -> None:
    account(tmp_path, token=False)
    ctx = context(tmp_path, server="https://api.prod.example.com:6443")
    env = {"KUBERNETES_SERVICE_HOST": "172.30.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    refused = await own_cluster_refusal(ctx, action="restore", environ=env)
    assert refused is not None and refused.verdict is Verdict.REFUSE
    assert "cannot tell whether `prod` is its own cluster" in refused.message and "will not restore" in refused.message
    assert "NODE_NAME" in refused.next_action


async def test_restore_admission_refuses_the_pods_own_cluster_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/etcd-restore stops the API the bot would run under: its admission asks the same question
    as /etcd-shutdown's before anything else (the backup is not even looked up)."""
    from procedures import restore

    account(tmp_path)
    ctx = context(tmp_path, server="https://172.30.0.1:443")
    ctx = replace(ctx, parameters={"backup-id": "20261130-031500-abcdef12"})
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "172.30.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    refused = await restore.admission(ctx)
    assert refused.verdict is Verdict.REFUSE
    assert "`prod` is the cluster this bot runs on" in refused.message and "cannot restore" in refused.message
