"""What the `/etcd-backup` end-to-end modules share: the production bot as a process (started,
SIGKILLed, restarted), people in the lab's workspace, and reading the cluster, the masters and the
backup store the way a person checks them. Waiting is on conditions with deadlines."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lab.slack.client import LabClient, workspace_root
from tests.labfixture import ROOT, Lab, wait_for

RUN_TEXT = re.compile(r"^Backing up etcd data on (?P<cluster>[a-z0-9-]+): (?P<state>[a-z ]+) \(run (?P<run>[0-9a-f]+)\)$")
HEARTBEAT_PREFIXES = ("/kubernetes.io/minions/", "/kubernetes.io/leases/", "/kubernetes.io/events/",
                      "/kubernetes.io/pods/", "/kubernetes.io/operator.openshift.io/", "/kubernetes.io/configmaps/openshift-etcd/")


def _window(start: datetime, hours: float) -> str:
    end = start + timedelta(hours=hours)
    return f"{start:%H:%M}-{end:%H:%M}"


def clusters_setting(lab: Lab) -> str:
    """The lab's cluster with peak hours that do not include now, and `lab-peak` (same cluster,
    another lock) whose peak hours do: so one bot serves both the plain and the peak-time cases."""
    base = json.loads(lab.env["ETCDBOT_CLUSTERS"])[0]
    now = datetime.now(UTC)
    calm = {**base, "peak_hours": _window(now + timedelta(hours=3), 1), "timezone": "UTC"}
    busy = {**base, "name": "lab-peak", "channels": [], "peak_hours": _window(now - timedelta(hours=1), 2),
            "timezone": "UTC"}
    return json.dumps([calm, busy])


@dataclass
class BotProcess:
    lab: Lab
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None

    @property
    def log_path(self) -> Path:
        return self.lab.dir / "bot.log"

    def start(self) -> BotProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDBOT_")}
        env.update(self.env)
        sessions = self.log_path.read_text().count("A new session") if self.log_path.exists() else 0
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bot.main", "run", "--env-file", str(self.lab.dir / "env")],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            )

        def connected() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()[-3000:]
            return self.log_path.read_text().count("A new session") > sessions

        try:
            wait_for(connected, timeout=45, what="the bot's Socket Mode session")
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """What a crash does: SIGKILL, nothing said, nothing cleaned."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


E2E_LOCK_TIMEOUT = "15"  # a SIGKILLed bot's run is taken over after 15 s, not 45 (renewed every 5 s)


def start_bot(lab: Lab, **env: str) -> BotProcess:
    settings = {"ETCDBOT_CLUSTERS": clusters_setting(lab), "ETCDBOT_LOCK_TIMEOUT": E2E_LOCK_TIMEOUT, **env}
    return BotProcess(lab=lab, env=settings).start()


def workspace(lab: Lab) -> LabClient:
    return LabClient(root=workspace_root(lab.dir))


def command(lab: Lab, text: str, *, user: str = "alice") -> int:
    """Types a slash command; returns the workspace cursor from before it."""
    return int(workspace(lab).command(user=user, channel="incident", text=text)["cursor"])


def seen(lab: Lab, *, since: int, user: str = "alice") -> list[dict[str, Any]]:
    return workspace(lab).view(user=user, since=since, channel="incident")["messages"]


def blocks_text(message: dict[str, Any]) -> str:
    parts = [message.get("text", "")]
    for block in message.get("blocks") or []:
        text = block.get("text")
        if isinstance(text, dict):
            parts.append(text.get("text", ""))
        for element in block.get("elements") or []:
            if isinstance(element, dict):
                inner = element.get("text")
                parts.append(inner if isinstance(inner, str) else (inner or {}).get("text", ""))
    return "\n".join(parts)


def buttons(message: dict[str, Any]) -> list[str]:
    return [e.get("text", {}).get("text", "") for b in message.get("blocks") or [] if b.get("type") == "actions"
            for e in b.get("elements") or []]


def run_message(lab: Lab, *, since: int, run_id: str | None = None, user: str = "alice",
                cluster: str | None = None) -> dict[str, Any] | None:
    for message in seen(lab, since=since, user=user):
        match = RUN_TEXT.match(message.get("text", ""))
        if (match and not message.get("thread_ts") and (run_id is None or match["run"] == run_id)
                and (cluster is None or match["cluster"] == cluster)):
            return {**message, "run_id": match["run"], "state": match["state"], "cluster": match["cluster"]}
    return None


def wait_run(lab: Lab, *, since: int, states: tuple[str, ...], run_id: str | None = None,
             cluster: str | None = None, timeout: float = 120) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        message = run_message(lab, since=since, run_id=run_id, cluster=cluster)
        return message if message and message["state"] in states else None

    return wait_for(check, timeout=timeout, what=f"a backup run in {states}", interval=0.2)


def wait_step_running(lab: Lab, *, since: int, step_title: str, note: str = "",
                      timeout: float = 120) -> dict[str, Any]:
    """The progress message shows `step_title` running (with `note` in its heartbeat, if given):
    the hook to inject a fault mid-step."""

    def check() -> dict[str, Any] | None:
        message = run_message(lab, since=since)
        if message is None:
            return None
        lines = blocks_text(message).splitlines()
        for number, line in enumerate(lines):
            following = lines[number + 1] if number + 1 < len(lines) else ""
            if step_title in line and "· running" in line and note in following:
                return message
        if message["state"] in ("succeeded", "failed"):
            raise AssertionError(f"the run ended before {step_title!r} was seen running: {blocks_text(message)}")
        return None

    return wait_for(check, timeout=timeout, what=f"step {step_title!r} running", interval=0.05)


def host_of(message: dict[str, Any]) -> str:
    found = re.search(r"> on (ip-[0-9-]+\.ec2\.internal):", blocks_text(message))
    assert found, blocks_text(message)
    return found.group(1)


# ---- the cluster, the masters, the store -------------------------------------------------------

ETCDCTL = ('sudo bash -c "source /usr/local/bin/etcd-common-tools; lab_load_etcd_env; '
           'export ETCDCTL_ENDPOINTS=\\$ETCD_LOCAL_ENDPOINT; {}"')


def etcdctl(lab: Lab, node: str, args: str, *, timeout: float = 60) -> str:
    return lab.ssh(node, ETCDCTL.format(args), timeout=timeout).stdout


def fill_etcd(lab: Lab, *, megabytes: int, node: str | None = None) -> None:
    """Large values under /fill/ (1 MB each, below etcd's request limit): a DB worth copying."""
    target = node or lab.masters[0]
    loop = (f"for i in \\$(seq 1 {megabytes}); do head -c 750000 /dev/urandom | base64 -w0 | "
            "etcdctl put /fill/\\$i >/dev/null || exit 1; done")
    etcdctl(lab, target, loop, timeout=60 + megabytes)


def revision(lab: Lab, node: str) -> int:
    return int(json.loads(etcdctl(lab, node, "etcdctl endpoint status -w json"))[0]["Status"]["header"]["revision"])


def keys_changed_since(lab: Lab, node: str, rev: int) -> list[str]:
    raw = json.loads(etcdctl(lab, node, "etcdctl get '' --prefix --keys-only -w json"))
    return sorted(base64.b64decode(kv["key"]).decode() for kv in raw.get("kvs", []) if kv["mod_revision"] > rev)


def host_assets(lab: Lab) -> dict[str, str]:
    return {node: lab.ssh(node, "sudo find /home/core/assets 2>/dev/null | sort || true").stdout for node in lab.masters}


def store_tree(lab: Lab) -> list[str]:
    roots = [lab.dir / "backups", lab.dir / "backups-keys"]
    return sorted(str(p.relative_to(lab.dir)) for root in roots if root.exists() for p in root.rglob("*"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stored_backups(lab: Lab, cluster: str = "lab") -> dict[str, dict[str, Any]]:
    """backup id -> metadata.json, checking on the way that both files are there and match it."""
    found = {}
    base = lab.dir / "backups" / cluster
    for meta_path in sorted(base.glob("*/metadata.json")) if base.exists() else []:
        meta = json.loads(meta_path.read_text())
        assert {f["role"] for f in meta["files"]} == {"snapshot", "resources"}, meta
        for item in meta["files"]:
            path = Path(item["path"])
            assert path.is_file(), path
            assert path.stat().st_size == item["size"] and sha256(path) == item["sha256"], item
        found[meta["id"]] = meta
    return found


def no_partial_backups(lab: Lab) -> None:
    for root in (lab.dir / "backups", lab.dir / "backups-keys"):
        incoming = root / ".incoming"
        leftovers = list(incoming.iterdir()) if incoming.exists() else []
        assert not leftovers, f"half-written backups left in {incoming}: {leftovers}"
        for run_dir in (root / "lab").glob("*") if (root / "lab").exists() else []:
            assert (run_dir / "metadata.json").is_file(), f"a backup directory without metadata: {run_dir}"
