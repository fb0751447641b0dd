"""`/etcd-replace-member` refusals that change nothing, through the lab's Slack workspace: a
healthy node, a node the cluster does not have, more than 3 members, two unhealthy members, and
quorum loss (the reply points to `/etcd-restore`). A lab of 5 masters, so that two unhealthy
members still leave a quorum (with 3, two down is quorum loss) and `member list` shows more than
3 members. After each refusal: the same members, machines, secrets and redeployment reason, no
run started, no backup taken."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.backup_support import BotProcess, command, start_bot, stored_backups
from tests.e2e.replace_support import all_healthy, answer, masters, run_message, snapshot
from tests.labfixture import Lab, wait_for

LAB_ARGS = ("--clock-speed", "30", "--masters", "5")


@pytest.fixture(scope="module")
def bot(lab: Lab) -> Iterator[BotProcess]:
    process = start_bot(lab)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def healed(lab: Lab) -> Iterator[None]:
    all_healthy(lab, total=5)
    yield
    lab.cli("heal")
    all_healthy(lab, total=5, timeout=180)


def refused(lab: Lab, text: str, *, contains: str) -> str:
    """Types `text` as alice; returns the refusal, after checking that no run started."""
    since = command(lab, text)
    reply = answer(lab, since=since, contains=contains, timeout=90)["text"]
    assert reply.startswith(":no_entry:"), reply
    assert run_message(lab, since=since) is None
    return reply


def unchanged(lab: Lab, before: object, via: str) -> None:
    assert snapshot(lab, via) == before
    assert not stored_backups(lab)


def test_a_healthy_node(lab: Lab, bot: BotProcess, healed: None) -> None:
    node, via = masters(lab)[:2]
    before = snapshot(lab, via)
    reply = refused(lab, f"/etcd-replace-member {node}", contains="is healthy")
    assert f"`{node}` is healthy: nothing to replace" in reply and "/etcd-status lab" in reply
    unchanged(lab, before, via)


def test_a_node_the_cluster_does_not_have(lab: Lab, bot: BotProcess, healed: None) -> None:
    via = masters(lab)[0]
    before = snapshot(lab, via)
    reply = refused(lab, "/etcd-replace-member ip-10-0-9-9.ec2.internal", contains="is not a master")
    assert "`ip-10-0-9-9.ec2.internal` is not a master of `lab`" in reply and via in reply
    unchanged(lab, before, via)


def test_more_than_three_members(lab: Lab, bot: BotProcess, healed: None) -> None:
    bad, via = masters(lab)[:2]
    lab.cli("fault", "stop-machine", bad)
    wait_for(lambda: lab.members_message() == f"4 of 5 members are available, {bad} is unhealthy", timeout=60,
             what=f"{bad} unhealthy")
    before = snapshot(lab, via)
    reply = refused(lab, f"/etcd-replace-member {bad}", contains="members")
    assert "shows 5 members" in reply and "Ask a person" in reply
    unchanged(lab, before, via)


def test_two_unhealthy_members(lab: Lab, bot: BotProcess, healed: None) -> None:
    first, second, via = masters(lab)[:3]
    lab.cli("fault", "stop-machine", first)
    lab.cli("fault", "stop-machine", second)
    wait_for(lambda: lab.members_message().startswith("3 of 5 members are available"), timeout=60,
             what="two members unhealthy")
    before = snapshot(lab, via)
    reply = refused(lab, f"/etcd-replace-member {first}", contains="unhealthy")
    assert "more than one member is unhealthy" in reply and first in reply and second in reply
    unchanged(lab, before, via)


def test_quorum_loss_points_to_restore(lab: Lab, bot: BotProcess, healed: None) -> None:
    node = masters(lab)[0]
    via = masters(lab)[-1]
    before = snapshot(lab, via)
    lab.cli("fault", "lose-quorum")
    wait_for(lambda: lab.kubectl("get", "nodes", check=False, timeout=15).returncode != 0, timeout=60,
             what="the API gone with quorum")
    reply = refused(lab, f"/etcd-replace-member {node}", contains="quorum")
    # "lost quorum" when the masters answer over SSH; when they are too slow to, the reply still says
    # what quorum loss needs
    assert "quorum" in reply and "/etcd-restore <backup-id>" in reply
    lab.cli("heal")
    all_healthy(lab, total=5, timeout=180)
    unchanged(lab, before, via)
