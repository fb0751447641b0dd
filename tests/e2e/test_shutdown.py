"""Chapters 3, 4 and 5.4 end to end: the production bot as a process against a lab with two
workers, driven as people drive it in the lab's Slack workspace.

In order, on one lab: `--dry-run` and the refusals that change nothing (no recent backup; the
bot's own cluster; a second procedure while one runs; the requester approving alone); alice's
`/etcd-shutdown` with its backup first, approved by bob, every master and worker down with each
node's answer in the thread; `etcdbot-lab power-on`, a forged CSR, and `/etcd-restart-check`:
the CSRs reviewed, bob approves the valid ones, the forged one is flagged and never approved, all
nodes Ready, no operator Degraded, "the cluster is back"; then `expire-certs` and
`/etcd-approve-csrs` bring every node back with bob's approval."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.backup_support import (
    BotProcess,
    blocks_text,
    buttons,
    clusters_setting,
    command,
    seen,
    stored_backups,
)
from tests.e2e.shutdown_support import (
    all_off,
    answer,
    approval_request,
    csr_conditions,
    forge_csr,
    nodes,
    press,
    run_message,
    thread_text,
    wait_run,
)
from tests.labfixture import Lab, wait_for

LAB_ARGS = ("--clock-speed", "30", "--workers", "2")  # `shutdown -h 1` powers off after 2 s
FORGED_NODE = "ip-10-0-99-99.ec2.internal"
SETTINGS = {
    "ETCDBOT_RESTART_TIMEOUT": "150",  # each wait after power-on (seconds)
    "ETCDBOT_CSR_SETTLE": "40",  # for every NotReady node's CSR to appear
    "ETCDBOT_SHUTDOWN_OFF_TIMEOUT": "120",
    # Tests may run in a pod themselves: the bot under test must not take the runner's pod for its own.
    "KUBERNETES_SERVICE_HOST": "",
}


@pytest.fixture(scope="module")
def bot(lab: Lab) -> Iterator[BotProcess]:
    process = BotProcess(lab=lab, env={"ETCDBOT_CLUSTERS": clusters_setting(lab), **SETTINGS}).start()
    try:
        yield process
    finally:
        process.stop()
        assert "xoxb-" not in process.log_path.read_text(), "a token reached the bot's log"


def every_node(lab: Lab) -> list[str]:
    return [*lab.masters, *lab.workers]


def unchanged(lab: Lab) -> None:
    """Nothing was shut down: every node answers SSH with no shutdown scheduled, and is Ready."""
    for node in every_node(lab):
        assert lab.ssh(node, "test ! -e /run/lab/shutdown && echo up").stdout.strip() == "up", node
    assert set(nodes(lab).values()) == {"Ready"}


def test_dry_run_lists_every_node_and_command_and_changes_nothing(lab: Lab, bot: BotProcess) -> None:
    since = command(lab, "/etcd-shutdown --dry-run")
    plan = answer(lab, since=since, contains="Dry run: Shutting down the cluster gracefully")
    text = blocks_text(plan)
    assert len(lab.workers) == 2
    for node in every_node(lab):
        assert f"`ssh core@{node}`: `sudo shutdown -h 1`" in text, node
    assert f"masters=`{', '.join(sorted(lab.masters))}`" in text and f"workers=`{', '.join(sorted(lab.workers))}`" in text
    assert "needs a second person's approval" in text and "chapter 1's steps" in text
    note = answer(lab, since=since, contains="No shutdown without a backup")
    assert "A run would ask first: *Back up, then shut down*" in blocks_text(note)
    assert run_message(lab, procedure="shutdown", since=since) is None
    unchanged(lab)


def test_help_knows_the_three_commands(lab: Lab, bot: BotProcess) -> None:
    since = command(lab, "/etcd-help")
    text = blocks_text(answer(lab, since=since, contains="etcdbot commands"))
    for usage in ("/etcd-shutdown [cluster] [--dry-run]", "/etcd-restart-check [cluster] [--dry-run]",
                  "/etcd-approve-csrs [cluster] [--dry-run]"):
        assert f"`{usage}`" in text, text
    coming = next((line for line in text.splitlines() if line.startswith("_Coming:_")), "")
    assert "shutdown" not in coming and "csrs" not in coming and "restart" not in coming


def test_without_a_recent_backup_it_refuses_and_offers_to_take_one(lab: Lab, bot: BotProcess) -> None:
    since = command(lab, "/etcd-shutdown")
    warned = answer(lab, since=since, contains="No shutdown without a backup")
    assert "no usable backup of OpenShift 4.5.2 younger than 1 h" in blocks_text(warned)
    assert buttons(warned) == ["Back up, then shut down"]
    assert run_message(lab, procedure="shutdown", since=since) is None
    assert stored_backups(lab) == {}
    unchanged(lab)


def test_approve_csrs_with_none_pending_asks_nobody(lab: Lab, bot: BotProcess) -> None:
    """A healthy cluster: nothing pending, so the run reviews, approves nothing and finishes; no
    second person is asked to approve "nothing"."""
    before = csr_conditions(lab)
    since = command(lab, "/etcd-approve-csrs")
    done = wait_run(lab, procedure="approve-csrs", since=since, states=("succeeded", "failed"), timeout=120)
    text = blocks_text(done)
    assert done["state"] == "succeeded", text
    assert text.count("nothing to approve: no valid CSR was pending") == 2 and "all 5 nodes Ready" in text, text
    assert not [m for m in seen(lab, since=since, user="bob") if "Approval needed" in blocks_text(m)]
    assert csr_conditions(lab) == before  # no CSR changed
    unchanged(lab)


def service_account(lab: Lab, directory: Path) -> Path:
    """A pod's service account directory whose token and CA are the lab API's: as if the bot ran
    in a pod of the lab's cluster."""
    directory.mkdir(parents=True, exist_ok=True)
    kubeconfig = yaml.safe_load(Path(lab.env["KUBECONFIG"]).read_text())
    (directory / "token").write_text(kubeconfig["users"][0]["user"]["token"])
    (directory / "ca.crt").write_bytes((lab.dir / "pki" / "api-ca.crt").read_bytes())
    (directory / "namespace").write_text("etcdbot")
    return directory


def test_the_bots_own_cluster_is_refused(lab: Lab, bot: BotProcess, tmp_path: Path) -> None:
    """The bot started as a pod of the lab's cluster would be: KUBERNETES_SERVICE_HOST/PORT name
    the lab's API (as `localhost`, so only the kube-system uid read through the service account
    token can tell), and the token is mounted."""
    port = json.loads((lab.dir / "lab.json").read_text())["api_port"]
    bot.stop()
    inside = BotProcess(lab=lab, env={
        "ETCDBOT_CLUSTERS": clusters_setting(lab), **SETTINGS,
        "KUBERNETES_SERVICE_HOST": "localhost", "KUBERNETES_SERVICE_PORT": str(port),
        "ETCDBOT_SERVICEACCOUNT_DIR": str(service_account(lab, tmp_path / "serviceaccount")),
    }).start()
    try:
        since = command(lab, "/etcd-shutdown")
        refused = blocks_text(answer(lab, since=since, contains=":no_entry:"))
        assert "`lab` is the cluster this bot runs on: namespace kube-system has the same uid" in refused
        assert "docs/deploy.md" in refused
        assert run_message(lab, procedure="shutdown", since=since) is None
    finally:
        inside.stop()
        bot.start()
    unchanged(lab)


@pytest.fixture(scope="module")
def shutdown(lab: Lab, bot: BotProcess) -> dict:
    """alice's `/etcd-shutdown`: she presses *Back up, then shut down*; bob approves the block.
    Checked on the way: bob's `/etcd-restart-check` is busy, alice cannot approve her own run."""
    since = command(lab, "/etcd-shutdown")
    answer(lab, since=since, contains="No shutdown without a backup")
    pressed = int(workspace_press(lab, user="alice", button_text="Back up, then shut down"))
    run = wait_for(lambda: run_message(lab, procedure="shutdown", since=pressed), timeout=60, what="the run")
    request = approval_request(lab, run=run, since=pressed, timeout=180)
    wait_for(lambda: run_message(lab, procedure="shutdown", since=pressed)["state"] == "waiting approval", timeout=30,
             what="the run waiting for approval")

    busy_since = command(lab, "/etcd-restart-check", user="bob")
    busy = blocks_text(answer(lab, since=busy_since, user="bob", contains="is busy"))
    assert f"run `{run['run_id']}`" in busy and "Shutting down the cluster gracefully" in busy
    assert run_message(lab, procedure="restart-check", since=busy_since) is None

    asked = blocks_text(request)  # one approval for the block: its plan names every node and command
    for node in every_node(lab):
        assert f"`ssh core@{node}`: `sudo shutdown -h 1`" in asked, asked
    own = press(lab, user="alice", action_id="approval_approve", message=request)
    assert "cannot approve" in blocks_text(answer(lab, since=own, contains="cannot approve"))
    unchanged(lab)  # the requester alone changed nothing

    press(lab, user="bob", action_id="approval_approve", message=request)
    done = wait_run(lab, procedure="shutdown", since=pressed, run_id=run["run_id"], states=("succeeded", "failed"),
                    timeout=240)
    return {"since": pressed, "run": done, "thread": thread_text(lab, run=done, since=pressed)}


def workspace_press(lab: Lab, *, user: str, button_text: str) -> int:
    from tests.e2e.backup_support import workspace

    return int(workspace(lab).press(user=user, button_text=button_text, channel="incident")["cursor"])


def test_shutdown_by_alice_approved_by_bob_takes_every_node_down(lab: Lab, shutdown: dict) -> None:
    done, thread = shutdown["run"], shutdown["thread"]
    text = blocks_text(done)
    assert done["state"] == "succeeded", text
    assert "took backup `" in text and "before the shutdown" in text
    assert len(stored_backups(lab)) == 1
    assert "5 nodes scheduled to power off in 1 minute" in text and "all 5 nodes are off" in text
    for node in every_node(lab):
        assert f"==== Shut down {node}" in thread, node
    assert thread.count("Shutdown scheduled for") == 5, thread
    assert all_off(lab)
    assert lab.kubectl("get", "nodes", check=False, timeout=10).returncode != 0  # the API went with the masters


def test_power_on_then_the_restart_check_brings_the_cluster_back(lab: Lab, bot: BotProcess, shutdown: dict) -> None:
    assert shutdown["run"]["state"] == "succeeded"
    lab.cli("power-on")
    wait_for(lambda: lab.kubectl("get", "nodes", check=False, timeout=10).returncode == 0, timeout=120,
             what="the API back after power-on", interval=1)
    forged = forge_csr(lab, node=FORGED_NODE)
    since = command(lab, "/etcd-restart-check")
    run = wait_for(lambda: run_message(lab, procedure="restart-check", since=since), timeout=60, what="the check")

    first = approval_request(lab, run=run, since=since, timeout=120)
    review = thread_text(lab, run=run, since=since)
    assert f"{forged}  Pending  SUSPICIOUS, not approved: no node or machine named {FORGED_NODE}" in review
    assert review.count("VALID: node-bootstrapper CSR for node") == 5, review
    assert "requestor: system:serviceaccount:openshift-machine-config-operator:node-bootstrapper" in review
    assert "usages: digital signature, key encipherment, client auth" in review and "age: " in review
    assert set(nodes(lab).values()) == {"NotReady"}
    asked = blocks_text(first)  # the approval's plan: exactly the valid CSRs, the forged one never
    assert asked.count("oc adm certificate approve csr-") == 5 and "approve csr-forged" not in asked
    assert f"never approved: {forged} (suspicious: no node or machine named {FORGED_NODE}" in asked
    press(lab, user="bob", action_id="approval_approve", message=first)

    second = approval_request(lab, run=run, since=since, skip=(first["ts"],), timeout=120)
    press(lab, user="bob", action_id="approval_approve", message=second)
    done = wait_run(lab, procedure="restart-check", since=since, run_id=run["run_id"], states=("succeeded", "failed"),
                    timeout=240)
    text = blocks_text(done)
    assert done["state"] == "succeeded", text
    assert "approved 5 CSRs" in text and "1 suspicious left pending: csr-forged" in text
    assert "all 3 master nodes Ready" in text and "all 2 worker nodes Ready" in text
    assert "none of the" in text and "cluster operators is Degraded" in text
    assert "the cluster is back" in text
    assert "shut down by <@U0ALICE01>" in text and shutdown["run"]["run_id"] in text
    assert set(nodes(lab).values()) == {"Ready"}
    conditions = csr_conditions(lab)
    assert conditions[forged] == "Pending"  # flagged, never approved
    assert sum(1 for c in conditions.values() if c == "Approved,Issued") == 10  # client and serving, 5 nodes
    degraded = lab.kubectl("get", "clusteroperators").stdout.splitlines()[1:]
    assert all(line.split()[4] == "False" for line in degraded)


def test_expired_certificates_then_approve_csrs_brings_every_node_back(lab: Lab, bot: BotProcess,
                                                                      shutdown: dict) -> None:
    lab.cli("fault", "expire-certs")
    wait_for(lambda: set(nodes(lab).values()) == {"NotReady"}, timeout=60, what="every node NotReady")
    since = command(lab, "/etcd-approve-csrs")
    run = wait_for(lambda: run_message(lab, procedure="approve-csrs", since=since), timeout=60, what="the run")
    first = approval_request(lab, run=run, since=since, timeout=120)
    own = press(lab, user="alice", action_id="approval_approve", message=first)
    assert "cannot approve" in blocks_text(answer(lab, since=own, contains="cannot approve"))
    assert set(nodes(lab).values()) == {"NotReady"}
    press(lab, user="bob", action_id="approval_approve", message=first)
    second = approval_request(lab, run=run, since=since, skip=(first["ts"],), timeout=120)
    press(lab, user="bob", action_id="approval_approve", message=second)
    done = wait_run(lab, procedure="approve-csrs", since=since, run_id=run["run_id"], states=("succeeded", "failed"),
                    timeout=240)
    text = blocks_text(done)
    assert done["state"] == "succeeded", text
    assert "all 5 nodes Ready" in text and "csr-forged" in text  # still flagged
    assert set(nodes(lab).values()) == {"Ready"}
    assert csr_conditions(lab)["csr-forged"] == "Pending"


async def test_a_node_that_does_not_come_back_means_restore_from_the_newest_usable_backup(
        lab: Lab, shutdown: dict) -> None:
    """The restart check's wait for the workers, alone (the one-step harness) with a short deadline,
    while a worker's machine is stopped: the run would stop and say to restore, naming the backup
    taken before the shutdown and the `/etcd-restore` command."""
    from bot.harness import StepEnvironment
    from bot.procedure import StepFailed
    from procedures import restart_check

    (backup_id,) = stored_backups(lab)
    worker = lab.workers[0]
    lab.cli("fault", "stop-machine", worker)
    try:
        wait_for(lambda: nodes(lab)[worker] == "NotReady", timeout=60, what=f"{worker} NotReady")
        async with StepEnvironment.from_env_file(lab.dir / "env", environ={"ETCDBOT_RESTART_TIMEOUT": "4"}) as env:
            env.given(restart_check.S_EXPECT, restart_check.Expected(masters=tuple(lab.masters),
                                                                    workers=tuple(lab.workers), version="4.5.2"))
            step = next(s for s in restart_check.STEPS if s.id == restart_check.S_WORKERS)
            with pytest.raises(StepFailed) as failed:
                await env.run(step)
    finally:
        lab.cli("heal", worker)
    assert "the cluster did not recover: gave up waiting for every worker node Ready after 4 s" in failed.value.message
    assert f"NotReady: {worker}" in failed.value.message
    assert f"`/etcd-restore {backup_id} lab`" in failed.value.next_action
    assert "the newest usable backup" in failed.value.next_action and "OpenShift 4.5.2" in failed.value.next_action
    assert any("waiting for every worker node Ready" in beat for beat in env.heartbeats)
    wait_for(lambda: set(nodes(lab).values()) == {"Ready"}, timeout=60, what="every node Ready after heal")
