"""The one-step harness against a real lab: chapter 1's steps run one at a time, each reading
what the step before it left as a typed result; what a step did is checked the way a person
checks it (ssh, kubectl). And the fence: a step whose run lost its lock changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.cluster.kube import Resource, UnfencedWrite
from bot.harness import StepEnvironment
from bot.procedure import StepFailed, Verdict
from procedures import backup
from tests.labfixture import Lab

STEPS = {step.id: step for step in backup.STEPS}


@pytest.fixture
async def env(lab: Lab, tmp_path) -> AsyncIterator[StepEnvironment]:
    environ = {"ETCDBOT_BACKUP_DIR": str(tmp_path / "store"), "ETCDBOT_ALLOWED_USERS": '["U0ALICE01"]'}
    async with StepEnvironment.from_env_file(lab.dir / "env", environ=environ) as environment:
        yield environment


def host_dir_exists(lab: Lab, node: str, directory: str) -> bool:
    return lab.ssh(node, f"sudo test -d {directory} && echo yes || echo no").stdout.strip() == "yes"


async def test_backup_steps_one_at_a_time(lab: Lab, env: StepEnvironment) -> None:
    prereqs = await env.run(STEPS[backup.S_PREREQS])
    assert env.result(backup.S_PREREQS, backup.Prerequisites).version == "4.5.2", prereqs.summary

    await env.run(STEPS[backup.S_PICK])
    picked = env.result(backup.S_PICK, backup.PickedMasters)
    assert picked.candidates and set(picked.candidates) <= set(lab.masters)

    await env.run(STEPS[backup.S_SCRIPT])
    made = env.result(backup.S_SCRIPT, backup.ScriptOutput)
    assert made.host == picked.candidates[0] and made.dir == f"/home/core/assets/backup/{env.run_id}"
    listing = lab.ssh(made.host, f"sudo ls {made.dir}").stdout.split()
    assert sorted(listing) == sorted([made.snapshot, made.resources])
    assert env.heartbeats and made.host in env.heartbeats[0]

    await env.run(STEPS[backup.S_COPY])  # the copy, and the master's checks at the same time
    copied = env.result(backup.S_COPY, backup.CopiedFiles)
    sums = lab.ssh(made.host, f"sudo sha256sum {made.snapshot_path}").stdout.split()[0]
    assert copied.verified is not None and copied.verified.total_keys > 0
    assert copied.verified.sha256[made.snapshot] == sums == copied.files[made.snapshot].sha256

    await env.run(STEPS[backup.S_CLEAN])
    assert not host_dir_exists(lab, made.host, made.dir)


async def test_a_step_reads_a_given_result_and_a_lost_lock_changes_nothing(lab: Lab, env: StepEnvironment) -> None:
    node = lab.masters[0]

    async def lost() -> None:
        raise StepFailed("the lock of `lab` is held by another run now", next_action="Nothing was done.")

    env.fence = lost
    env.given(backup.S_PICK, backup.PickedMasters(candidates=(node,)))
    with pytest.raises(StepFailed, match="held by another run"):
        await env.run(STEPS[backup.S_SCRIPT])
    assert not host_dir_exists(lab, node, f"/home/core/assets/backup/{env.run_id}")


async def test_admission_and_plans(env: StepEnvironment) -> None:
    procedure = backup.build({})
    admission = await env.admit(procedure)
    assert admission.verdict in (Verdict.OK, Verdict.WARN)  # 48 h old: never refused
    env.parameters = {"master": "ip-10-0-131-183.ec2.internal"}
    plan = await env.plan(STEPS[backup.S_SCRIPT])
    assert any("sudo /usr/local/bin/cluster-backup.sh /home/core/assets/backup/" in c.command for c in plan)


CONFIGMAP = Resource("", "v1", "configmaps", namespaced=True)


async def test_kube_write_verbs_are_fenced_and_act_as_oc_does(lab: Lab, env: StepEnvironment) -> None:
    fenced: list[str] = []

    async def fence() -> None:
        fenced.append("checked")

    env.fence = fence
    kube = env.context().kube
    await kube.create(CONFIGMAP, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kit-probe"},
                                  "data": {"a": "1"}}, namespace="default")
    await kube.patch(CONFIGMAP, "kit-probe", {"data": {"a": "2"}}, namespace="default")
    assert lab.kubectl("get", "configmap", "kit-probe", "-n", "default", "-o", "jsonpath={.data.a}").stdout == "2"
    await kube.delete(CONFIGMAP, "kit-probe", namespace="default")
    await kube.delete(CONFIGMAP, "kit-probe", namespace="default")  # gone already: not an error
    assert lab.kubectl("get", "configmap", "kit-probe", "-n", "default", check=False).returncode != 0
    assert len(fenced) == 4

    masters = {n["metadata"]["name"] for n in await kube.nodes_by_role("master")}
    assert masters == set(lab.masters)
    assert {c.type for c in await kube.etcd_conditions()} >= {"EtcdMembersAvailable"}
    assert isinstance(await kube.list_csrs(pending_only=True), list)

    unbound = env._clusters.kube(env.cluster)  # the client /etcd-status reads with: never bound to a fence
    with pytest.raises(UnfencedWrite):
        await unbound.delete(CONFIGMAP, "anything", namespace="default")


async def test_node_shell_changes_and_uploads_behind_the_fence(lab: Lab, env: StepEnvironment) -> None:
    node = lab.masters[1]
    hosts = env.context().hosts
    assert set(await hosts.masters()) == set(lab.masters)
    written = await hosts.upload(node=node, data=b"probe\n", path="/home/core/kit-probe.txt")
    assert written == 6 and lab.ssh(node, "cat /home/core/kit-probe.txt").stdout == "probe\n"
    async with hosts.session(node) as session:
        assert (await session.change(argv=["sudo", "rm", "-f", "/home/core/kit-probe.txt"], timeout=30)).ok
        assert (await session.run(argv=["id", "-u"], timeout=30)).ok
    chunks = [c async for c in hosts.download(node=node, path="/etc/hostname")]
    assert b"".join(chunks).strip()

    async def lost() -> None:
        raise StepFailed("lock lost")

    env.fence = lost
    refused = env.context().hosts
    with pytest.raises(StepFailed):
        await refused.upload(node=node, data=b"x", path="/home/core/kit-probe.txt")
    with pytest.raises(StepFailed):
        await refused.change(node=node, argv=["touch", "/home/core/kit-probe.txt"], timeout=30)
    assert lab.ssh(node, "test -e /home/core/kit-probe.txt && echo yes || echo no").stdout.strip() == "no"


async def test_etcd_access_reads_and_a_lost_fence_removes_no_member(lab: Lab, env: StepEnvironment) -> None:
    etcd = env.context().need_etcd()
    members = await etcd.member_list()
    assert sorted(m.name for m in members.members) == sorted(lab.masters)
    assert etcd.via.startswith(("exec in etcd-", "SSH on "))
    health = await etcd.endpoint_health()
    assert len(health) == 3 and all(h.healthy for h in health)

    async def lost() -> None:
        raise StepFailed("lock lost")

    env.fence = lost
    doomed = members.members[0].id
    with pytest.raises(StepFailed):
        await env.context().need_etcd().member_remove(doomed)
    assert len((await env.context().need_etcd().member_list()).members) == 3
    avoided = env.context().need_etcd().avoiding(lab.masters[0])
    await avoided.member_list()
    assert lab.masters[0] not in avoided.via
