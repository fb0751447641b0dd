"""`/etcd-status` on the faults of chapter 2.3 that test_status.py does not cover: a killed etcd,
a stopped machine, an unreachable node. One lab for this module, so it runs beside the other."""

from __future__ import annotations

import subprocess

from tests.e2e.test_status import bot, status_until  # noqa: F401  (bot is a fixture)
from tests.labfixture import Lab, wait_for

NODE = "ip-10-0-164-97.ec2.internal"


def test_killed_etcd_names_the_member_and_the_next_command(lab: Lab, bot: subprocess.Popen[str]) -> None:  # noqa: F811
    lab.cli("fault", "kill-etcd", NODE)
    try:
        # the status answers in about a second now: wait for the operator's condition to catch up too
        out = status_until(lab, f"etcd pod on {NODE} is Error", timeout=120,
                           also=(f"2 of 3 members are available, {NODE} is unhealthy",))
        assert f"Run `/etcd-replace-member {NODE}` after a backup" in out
    finally:
        lab.cli("heal")
        wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=60, what="heal")


def test_stopped_machine_means_replace_machine_not_running(lab: Lab, bot: subprocess.Popen[str]) -> None:  # noqa: F811
    lab.cli("fault", "stop-machine", NODE)
    try:
        out = status_until(lab, "machine not running", timeout=120)
        assert NODE in out and "stopped" in out
        assert f"/etcd-replace-member {NODE}" in out
    finally:
        lab.cli("heal")
        wait_for(lambda: lab.members_message() == "3 of 3 members are available", timeout=60, what="heal")


def test_unreachable_node_means_replace_node_not_ready(lab: Lab, bot: subprocess.Popen[str]) -> None:  # noqa: F811
    lab.cli("fault", "node-notready", NODE)
    try:
        out = status_until(lab, "not ready", timeout=120)
        assert NODE in out and "NotReady" in out
        assert f"/etcd-replace-member {NODE}" in out
    finally:
        lab.cli("heal")
