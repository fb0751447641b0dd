"""The chart's side of backups you can trust, rendered by the real `helm template`: the keys
directory on a volume of its own (an encrypted cluster's tarball must not land on the read-only
root), the drill's scratch volume, retention and notification settings, and the optional
PrometheusRule and Grafana dashboard, whose every metric the bot really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from bot import metrics
from tests.deploy.conftest import CHART, render

BOTH = {"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "prom"}, "maxBackupAgeHours": 30},
                    "grafanaDashboard": {"enabled": True}},
        "backups": {"retention": {"last": 3, "daily": 7, "weekly": 4, "monthly": 12}, "maxAge": "30h",
                    "keys": {"persistence": {"storageClass": "encrypted-gp3"}}},
        "notifications": {"oncallUsergroup": "S0ONCALL", "watchInterval": 30}}


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def bot_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [d for d in kinds(docs, "Deployment") if not d["metadata"]["name"].endswith("-redis")]
    return deployment["spec"]["template"]["spec"]


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return next(d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"] == "etcdbot")["data"]


def exported_metrics() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= {family.name, f"{family.name}_total", f"{family.name}_bucket"}
    return names


def test_the_keys_directory_is_a_volume_of_its_own(helm: str, tmp_path: Path) -> None:
    docs = render(helm, BOTH, tmp_path)
    pod = bot_pod(docs)
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data = config(docs)
    assert mounts["keys"] == data["ETCDBOT_BACKUP_KEYS_DIR"] == "/var/lib/etcdbot/keys"
    assert mounts["backups"] == data["ETCDBOT_BACKUP_DIR"] and mounts["keys"] != mounts["backups"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["keys"]["persistentVolumeClaim"]["claimName"] == "etcdbot-keys"
    pvc = next(d for d in kinds(docs, "PersistentVolumeClaim") if d["metadata"]["name"] == "etcdbot-keys")
    assert pvc["spec"]["storageClassName"] == "encrypted-gp3"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert mounts["drill"] == data["ETCDBOT_DRILL_DIR"] and volumes["drill"]["emptyDir"]["sizeLimit"] == "6Gi"
    # Without persistence the keys still get a writable volume, never the read-only root.
    plain = bot_pod(render(helm, {"backups": {"keys": {"persistence": {"enabled": False}}}}, tmp_path / "plain"))
    assert {v["name"]: v for v in plain["volumes"]}["keys"] == {"name": "keys", "emptyDir": {}}


def test_retention_age_and_on_call_settings(helm: str, tmp_path: Path) -> None:
    data = config(render(helm, BOTH, tmp_path))
    assert json.loads(data["ETCDBOT_BACKUP_RETENTION"]) == {"last": 3, "daily": 7, "weekly": 4, "monthly": 12}
    assert data["ETCDBOT_MAX_BACKUP_AGE"] == "30h" and data["ETCDBOT_ONCALL_USERGROUP"] == "S0ONCALL"
    assert data["ETCDBOT_WATCH_INTERVAL"] == "30" and data["ETCDBOT_DRILL_TIMEOUT"] == "300"
    defaults = config(render(helm, {}, tmp_path / "defaults"))
    assert json.loads(defaults["ETCDBOT_BACKUP_RETENTION"]) == {"last": 7, "daily": 7, "weekly": 4, "monthly": 6}
    assert "ETCDBOT_ONCALL_USERGROUP" not in defaults


def test_alerts_and_dashboard_only_when_asked(helm: str, tmp_path: Path) -> None:
    off = render(helm, {}, tmp_path)
    assert not kinds(off, "PrometheusRule") and "etcdbot-dashboard" not in {d["metadata"]["name"] for d in off}
    docs = render(helm, BOTH, tmp_path / "on")
    (rule,) = kinds(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {"EtcdBackupTooOld", "EtcdBackupDrillFailed", "EtcdScheduledBackupMissed"}
    assert alerts["EtcdBackupTooOld"]["expr"].endswith("> 108000")  # 30 h
    assert 'outcome="failed"' in alerts["EtcdBackupDrillFailed"]["expr"]
    assert "missed" in alerts["EtcdScheduledBackupMissed"]["expr"]
    runbook = (CHART.parents[1] / "docs" / "runbooks" / "etcd-backup.md").read_text().lower()
    for name, alert in alerts.items():
        assert alert["annotations"]["runbook"].endswith(f"#alert-{name.lower()}")
        assert f"alert: {name.lower()}" in runbook, f"the runbook does not cover {name}"
    dashboard_cm = next(d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"] == "etcdbot-dashboard")
    assert dashboard_cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_cm["data"]["etcdbot-backups.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]] + [a["expr"] for a in alerts.values()]
    used = {m for e in exprs for m in re.findall(r"\betcdbot_[a-z_]+", e)}
    assert used and used <= exported_metrics(), used - exported_metrics()


@pytest.mark.parametrize("name", ["etcdbot_drills_total", "etcdbot_drill_duration_seconds_bucket",
                                  "etcdbot_backup_last_drilled_timestamp_seconds", "etcdbot_retention_deletions_total",
                                  "etcdbot_backups_total"])
def test_the_metrics_of_the_issue_exist(name: str) -> None:
    assert name in exported_metrics()
