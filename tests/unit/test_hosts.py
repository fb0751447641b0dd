"""crictl's table, the etcd static pod's etcdctl env, and commands built only from quoted values."""

from __future__ import annotations

import pytest
import yaml

from bot.cluster.hosts import (
    UnsafeCommandError,
    etcdctl_env_from_manifest,
    host_etcdctl_command,
    parse_crictl_ps,
    shell_command,
)
from procedures.facts import host_facts

# cri-tools 1.18 output: tabwriter minwidth 20, padding 3; CREATED holds spaces.
CRICTL = (
    "CONTAINER           IMAGE                                                                                                                    CREATED              STATE               NAME                                          ATTEMPT             POD ID\n"
    "3ad41b7908e32       quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:36f86e2eeaaffe662df0d21041eb22b8198e0e58abeeae8c743c3e6e977e8009   About a minute ago   Running             etcd                                          4                   7c05f8af362f0\n"
    "9e1bb2a3f10c7       quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:36f86e2eeaaffe662df0d21041eb22b8198e0e58abeeae8c743c3e6e977e8009   2 hours ago          Exited              etcd                                          3                   7c05f8af362f0\n"
    "0f12aa3b4c5d6       quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:36f86e2eeaaffe662df0d21041eb22b8198e0e58abeeae8c743c3e6e977e8009   2 hours ago          Running             etcdctl                                       0                   7c05f8af362f0\n"
    "aa12aa3b4c5d6       quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:8d6c1ae5f8f5b2a5e1e5e6f0e4dcd1bb8e0aa6c4b0ea1ab2c9bcbd07f3c4e2a1   6 hours ago          Running             kube-apiserver-insecure-readyz                0                   1b2c3d4e5f607\n"
)


def test_crictl_table_columns_with_spaces_in_created():
    rows = parse_crictl_ps(CRICTL)
    assert [(r.name, r.state, r.attempt) for r in rows[:3]] == [("etcd", "Running", 4), ("etcd", "Exited", 3),
                                                                ("etcdctl", "Running", 0)]
    assert rows[0].created == "About a minute ago" and rows[0].pod_id == "7c05f8af362f0"
    assert rows[3].name == "kube-apiserver-insecure-readyz"


def test_crictl_empty_and_header_only():
    assert parse_crictl_ps("") == ()
    header = "CONTAINER           IMAGE               CREATED             STATE               NAME                ATTEMPT             POD ID\n"
    assert parse_crictl_ps(header) == ()


def test_crictl_refuses_other_output():
    with pytest.raises(ValueError):
        parse_crictl_ps("FATA[0002] connect: connect endpoint 'unix:///var/run/crio/crio.sock'")


def test_host_facts_prefer_the_running_etcd_container():
    facts = host_facts(node="n", containers=parse_crictl_ps(CRICTL))
    assert facts.etcd_state == "Running" and facts.etcd_attempt == 4


def test_host_facts_exited_only():
    exited = "\n".join(line for line in CRICTL.splitlines() if "Running" not in line)
    facts = host_facts(node="n", containers=parse_crictl_ps(exited))
    assert facts.etcd_state == "Exited"


MANIFEST = yaml.safe_dump({
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "etcd", "namespace": "openshift-etcd"},
    "spec": {"containers": [
        {"name": "etcdctl", "env": [
            {"name": "ETCDCTL_API", "value": "3"},
            {"name": "ETCDCTL_CACERT", "value": "/etc/kubernetes/static-pod-certs/configmaps/etcd-serving-ca/ca-bundle.crt"},
            {"name": "ETCDCTL_CERT", "value": "/etc/kubernetes/static-pod-certs/secrets/etcd-all-peer/etcd-peer-n.crt"},
            {"name": "ETCDCTL_KEY", "value": "/etc/kubernetes/static-pod-certs/secrets/etcd-all-peer/etcd-peer-n.key"},
            {"name": "ETCDCTL_ENDPOINTS", "value": "https://10.0.131.183:2379,https://10.0.164.97:2379"},
            {"name": "NODE_NAME", "value": "n"},
        ]},
        {"name": "etcd", "command": ["etcd"]},
    ]},
})


def test_etcdctl_env_from_the_static_pod():
    env = etcdctl_env_from_manifest(MANIFEST)
    assert set(env) == {"ETCDCTL_API", "ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY", "ETCDCTL_ENDPOINTS"}
    argv = host_etcdctl_command(env=env, etcdctl_argv=["etcdctl", "endpoint", "status", "--cluster", "-w", "json"])
    assert argv[:2] == ["sudo", "env"] and argv[-6:] == ["etcdctl", "endpoint", "status", "--cluster", "-w", "json"]
    assert "ETCDCTL_ENDPOINTS=https://10.0.131.183:2379,https://10.0.164.97:2379" in argv


def test_manifest_without_certs_is_refused():
    with pytest.raises(ValueError, match="ETCDCTL_CACERT"):
        etcdctl_env_from_manifest(yaml.safe_dump({"spec": {"containers": [{"name": "etcdctl", "env": []}]}}))


def test_every_value_is_quoted():
    assert shell_command(["sudo", "cat", "/etc/a b", "x;rm -rf /", "$(id)"]) == (
        "sudo cat '/etc/a b' 'x;rm -rf /' '$(id)'")


@pytest.mark.parametrize("bad", [["a\nb"], ["a\x00"], []])
def test_control_characters_are_refused(bad):
    with pytest.raises(UnsafeCommandError):
        shell_command(bad)


def test_only_etcdctl_variables_may_be_set():
    with pytest.raises(UnsafeCommandError):
        host_etcdctl_command(env={"LD_PRELOAD": "/x"}, etcdctl_argv=["etcdctl"])
