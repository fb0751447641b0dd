"""`/etcd-status` end to end: the production bot (`etcdbot run --env-file DIR/env`) against a lab,
driven as a person drives it (`etcdbot-lab slack command --as alice`), with the lab's faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.labfixture import ROOT, Lab, wait_for

NODE = "ip-10-0-131-183.ec2.internal"


@pytest.fixture(scope="module")
def bot(lab: Lab) -> Iterator[subprocess.Popen[str]]:
    log = (lab.dir / "bot.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDBOT_")}
    proc = subprocess.Popen([sys.executable, "-m", "bot.main", "run", "--env-file", str(lab.dir / "env")],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        wait_for(lambda: "session" in (lab.dir / "bot.log").read_text() or proc.poll() is not None,
                 timeout=30, what="the bot's Socket Mode session")
        assert proc.poll() is None, (lab.dir / "bot.log").read_text()
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
        assert "xoxb-" not in (lab.dir / "bot.log").read_text(), "a token reached the bot's log"


def status(lab: Lab, text: str = "") -> str:
    args = ["slack", "command", "--as", "alice", "--channel", "incident", "--quiet", "12", "--wait", "90",
            f"/etcd-status {text}".strip()]
    return lab.cli(*args, timeout=120).stdout


def status_until(lab: Lab, needle: str, *, timeout: float, also: tuple[str, ...] = ()) -> str:
    """Asks again until the status shows `needle` and everything in `also` (faults take a moment to
    show in the cluster, and its parts, such as the operator's condition, do not show at once)."""

    def check() -> str | None:
        out = status(lab)
        return out if all(text in out for text in (needle, *also)) else None

    return wait_for(check, timeout=timeout, what=f"a status showing {(needle, *also)!r}", interval=2)


def test_healthy(lab: Lab, bot: subprocess.Popen[str]) -> None:
    out = status(lab)
    assert "Checking etcd on lab…" in out
    assert "etcd is healthy: 3 of 3 members are healthy" in out
    for expected in ("OpenShift 4.5.2", "3 of 3 members are available", "LEADER", "REVISION", "etcd-" + NODE,
                     "INSTANCE STATE", "NodeInstallerProgressing", "Sources:"):
        assert expected in out, expected


def test_garbage_arguments_are_refused(lab: Lab, bot: subprocess.Popen[str]) -> None:
    out = status(lab, "nosuch")
    assert "I know no cluster `nosuch`" in out and "Try `/etcd-status lab`" in out
    assert "Checking etcd" not in out


def test_crashlooping_pod(lab: Lab, bot: subprocess.Popen[str]) -> None:
    lab.cli("fault", "crashloop-etcd", NODE)
    try:
        out = status_until(lab, "CrashLoopBackOff: replace the member", timeout=120)
        assert f"Run `/etcd-replace-member {NODE}` after a backup" in out
        # and why, in etcd's own words: its previous log
        assert f"Why etcd on {NODE} fails" in out and "failed to open database" in out
    finally:
        lab.cli("heal")


def test_api_down_reads_the_masters_over_ssh(lab: Lab, bot: subprocess.Popen[str]) -> None:
    lab.cli("fault", "api-down")
    try:
        out = status_until(lab, "The API is unavailable", timeout=120)
        assert "Masters over SSH" in out and "SSH on " in out
    finally:
        lab.cli("heal")


def test_quorum_loss_means_restore(lab: Lab, bot: subprocess.Popen[str]) -> None:
    lab.cli("fault", "lose-quorum")
    try:
        out = status_until(lab, "etcd has lost quorum", timeout=150)
        assert "/etcd-restore <backup-id>" in out or "/etcd-restore &lt;backup-id&gt;" in out
    finally:
        lab.cli("heal")
