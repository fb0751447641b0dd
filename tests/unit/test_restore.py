"""/etcd-restore without a cluster: its command line, the commands it sends (as the approval
shows them), how it reads crictl, a host's state and a rollout, the per-host report a person gets
when a restore stops half way, and the kit's wait with a deadline."""

from __future__ import annotations

import asyncio

import pytest

from bot.backups import BackupRecord, StoredFile
from bot.procedure import NotYet, WaitTimedOut, registered, wait_until
from handlers.common import UsageError, parse_args
from handlers.procedures import spec_of
from procedures import restore
from procedures import restore_checks as checks
from procedures import restore_hosts as rh
from procedures import restore_rollout as rollout

RUN = "ab12cd34"
A, B, C = "ip-10-0-131-183.ec2.internal", "ip-10-0-154-204.ec2.internal", "ip-10-0-164-97.ec2.internal"
CRICTL = """\
CONTAINER           IMAGE                                                              CREATED             STATE               NAME                       ATTEMPT             POD ID
3ad41b7908e32       36f86e2eeaaffe662df0d21041eb22b8198e0e58abeeae8c743c3e6e977e8009   About a minute ago  Running             etcd                       0                   7c05f8af362f0
4bd41b7908e33       36f86e2eeaaffe662df0d21041eb22b8198e0e58abeeae8c743c3e6e977e8009   About a minute ago  Running             etcd-operator              0                   8c05f8af362f0
5cd41b7908e34       36f86e2eeaaffe662df0d21041eb22b8198e0e58abeeae8c743c3e6e977e8009   2 hours ago         Running             kube-apiserver             0                   9c05f8af362f0
"""


# ---- the command line ----

def test_the_command_takes_a_backup_id_and_an_optional_recovery_host():
    spec = spec_of(registered("restore"))
    assert spec.usage == "/etcd-restore <backup-id> [cluster] [--recovery-host RECOVERY-HOST] [--dry-run]"
    parsed = parse_args(f"20261127-081409-a1b2c3d4 --recovery-host {B} lab --dry-run", spec=spec)
    assert parsed.values == {"backup-id": "20261127-081409-a1b2c3d4", "recovery-host": B, "cluster": "lab"}
    assert parsed.flags == {"--dry-run"}
    assert parse_args(f"20261127-081409-a1b2c3d4 --recovery-host={B}", spec=spec).values["recovery-host"] == B


@pytest.mark.parametrize(("text", "says"), [
    ("", "needs a backup-id"),
    ("nope", "`nope` is not a valid backup-id"),
    ("20261127-081409-a1b2c3d4 --recovery-host", "`--recovery-host` needs a recovery-host"),
    ("20261127-081409-a1b2c3d4 --recovery-host $(reboot)", "`$(reboot)` is not a valid recovery-host"),
    (f"20261127-081409-a1b2c3d4 --recovery-host {A} --recovery-host {B}", "given twice"),
])
def test_bad_arguments_say_what_to_type(text, says):
    with pytest.raises(UsageError) as error:
        parse_args(text, spec=spec_of(registered("restore")))
    assert says in str(error.value)


# ---- the commands, as the document writes them ----

def test_commands_move_into_the_runs_own_directory():
    assert rh.command_text(rh.move_etcd_manifest_command(RUN)) == \
        "sudo mv /etc/kubernetes/manifests/etcd-pod.yaml /tmp/etcdbot-restore-ab12cd34/"
    assert rh.command_text(rh.move_apiserver_manifest_command(RUN)) == \
        "sudo mv /etc/kubernetes/manifests/kube-apiserver-pod.yaml /tmp/etcdbot-restore-ab12cd34/"
    assert rh.command_text(rh.move_data_dir_command(RUN)) == "sudo mv /var/lib/etcd /tmp/etcdbot-restore-ab12cd34/etcd"
    assert rh.aside_dir("cd34ab12") != rh.aside_dir(RUN)  # a second run never collides
    with pytest.raises(ValueError):
        rh.aside_dir("../x")


def test_restore_script_exports_the_proxy_only_when_set():
    assert rh.command_text(rh.restore_script_command({})) == "sudo -E /usr/local/bin/cluster-restore.sh /home/core/backup"
    proxied = rh.restore_script_command({"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": ".cluster.local,10.0.0.0/16"})
    assert rh.command_text(proxied) == ("env HTTP_PROXY=http://proxy:3128 NO_PROXY=.cluster.local,10.0.0.0/16 "
                                        "sudo -E /usr/local/bin/cluster-restore.sh /home/core/backup")
    with pytest.raises(ValueError):
        rh.restore_script_command({"HTTP_PROXY": "http://x;reboot"})


def test_only_backup_file_names_reach_the_host():
    assert rh.host_file("snapshot_2026-11-27_081409.db") == "/home/core/backup/snapshot_2026-11-27_081409.db"
    with pytest.raises(ValueError):
        rh.host_file("../../etc/passwd")


def test_an_earlier_backup_dir_is_moved_aside_only_when_in_the_way():
    ours = {"snapshot_2026-11-27_081409.db", "static_kuberesources_2026-11-27_081409.tar.gz"}

    def in_the_way(rc, stdout):
        return rh.backup_dir_in_the_way(rc=rc, stdout=stdout, user="core", names=ours)

    assert not in_the_way(1, "find: '/home/core/backup': No such file or directory")
    assert not in_the_way(0, "core 0 backup\ncore 1 snapshot_2026-11-27_081409.db\n")  # a repeated copy
    assert in_the_way(0, "core 0 backup\ncore 1 snapshot_2026-01-01_000000.db\n")  # another backup's file
    assert in_the_way(0, "root 0 backup\n")  # `sudo cp -r` made it: core cannot write there
    assert in_the_way(0, "core 0 backup\nroot 1 snapshot_2026-11-27_081409.db\n")
    assert in_the_way(1, "find: '/home/core/backup': Permission denied")
    assert rh.command_text(rh.move_previous_backup_command(RUN)) == "sudo mv /home/core/backup /home/core/backup.before-ab12cd34"


def test_redeployment_reasons_are_unique_and_name_the_run():
    first = rollout.redeployment_reason(RUN, now_ns=1_700_000_000_123_456_789)
    assert first == "recovery-2023-11-14 22:13:20.123456789+00:00 run ab12cd34"
    assert rollout.redeployment_reason(RUN, now_ns=1_700_000_000_123_456_790) != first
    assert rollout.patch_text("etcd", first) == (
        "oc patch etcd cluster -p='{\"spec\": {\"forceRedeploymentReason\": \"" + first + "\"}}' --type=merge")


# ---- reading what hosts and the API answer ----

def test_crictl_filters_like_the_documents_grep():
    assert [c.name for c in rh.etcd_containers(CRICTL)] == ["etcd"]  # `grep etcd | grep -v operator`
    assert [c.name for c in rh.apiserver_containers(CRICTL)] == ["kube-apiserver"]
    assert rh.running_etcd(CRICTL)
    assert rh.etcd_containers(CRICTL.splitlines()[0]) == ()


def test_host_state_from_ls():
    aside = rh.aside_dir(RUN)
    state = rh.parse_probe(B, RUN, rc=2, stdout=f"{aside}/etcd-pod.yaml\n{aside}/kube-apiserver-pod.yaml\n/var/lib/etcd\n")
    assert state.reachable and state.etcd_manifest_aside and state.apiserver_manifest_aside
    assert state.data_dir_in_place and not state.data_dir_aside and not state.stopped_and_moved
    assert not rh.parse_probe(B, RUN, rc=None, stdout="", error="SSH to x failed").reachable
    untouched = rh.parse_probe(C, RUN, rc=0, stdout="\n".join(rh.probe_paths(RUN)[:3]))
    assert untouched.untouched and rh.rollback_commands(untouched, RUN) == []


def test_rollout_is_done_only_when_every_master_is_at_a_newer_revision():
    def obj(reason, message, latest, currents):
        return {"status": {"latestAvailableRevision": latest,
                           "nodeStatuses": [{"nodeName": n, "currentRevision": r} for n, r in zip((A, B, C), currents, strict=False)],
                           "conditions": [{"type": "NodeInstallerProgressing", "status": "False", "reason": reason,
                                           "message": message}]}}
    mixed = rollout.read_rollout(obj("NodeInstaller", "2 nodes are at revision 6; 1 nodes are at revision 7", 7, (6, 6, 7)))
    assert not mixed.done(masters=3, newer_than=6)
    done = rollout.read_rollout(obj("AllNodesAtLatestRevision", "3 nodes are at revision 7", 7, (7, 7, 7)))
    assert done.done(masters=3, newer_than=6) and done.done(masters=3, newer_than=None)
    assert not done.done(masters=3, newer_than=7)  # the old revision's "all at latest": the rollout has not begun
    two = rollout.read_rollout(obj("AllNodesAtLatestRevision", "2 nodes are at revision 7", 7, (7, 7)))
    assert not two.done(masters=3, newer_than=6)  # a master without an installer yet


# ---- what a person reads when a restore stops half way ----

def _states():
    aside = rh.aside_dir(RUN)
    return [
        rh.parse_probe(A, RUN, rc=0, stdout="/etc/kubernetes/manifests/etcd-pod.yaml\n"
                                            "/etc/kubernetes/manifests/kube-apiserver-pod.yaml\n/var/lib/etcd\n"),
        rh.parse_probe(B, RUN, rc=2, stdout=f"{aside}/etcd-pod.yaml\n{aside}/kube-apiserver-pod.yaml\n{aside}/etcd\n"),
        rh.parse_probe(C, RUN, rc=None, stdout="", error="SSH to C failed: Connection refused"),
    ]


def test_report_says_per_host_state_and_the_next_commands():
    text = rh.report(_states(), recovery=A, run_id=RUN, restore_done=False, proxy={},
                     known={C: (rh.ETCD_DONE,)}, runbook="RUNBOOK")
    lines = text.splitlines()
    assert lines[0] == (f"• `{A}` (recovery host): restore script not run. Next, once every other master is done: "
                        "`sudo -E /usr/local/bin/cluster-restore.sh /home/core/backup`")
    aside = "/tmp/etcdbot-restore-ab12cd34"
    assert lines[1] == (f"• `{B}`: etcd-pod.yaml moved, kube-apiserver-pod.yaml moved, data dir moved. Done. Back: "
                        f"`sudo mv {aside}/etcd /var/lib/etcd`; `sudo mv {aside}/kube-apiserver-pod.yaml "
                        f"/etc/kubernetes/manifests/`; `sudo mv {aside}/etcd-pod.yaml /etc/kubernetes/manifests/`")
    assert lines[2].startswith(f"• `{C}`: did not answer SSH (SSH to C failed: Connection refused), state unknown; "
                               "the bot had done: etcd pod manifest moved. Next: `sudo mv "
                               "/etc/kubernetes/manifests/kube-apiserver-pod.yaml /tmp/etcdbot-restore-ab12cd34/`")
    assert f"Back (when it answers): what is in `{aside}/`, the data dir first" in lines[2]
    assert f"*To finish:* restore SSH to `{C}`, then press *Resume*" in text
    assert "*To roll back* (the restore script has not run)" in text
    assert len(text) < 1500  # one Slack section, beside the run's other lines


def test_after_the_restore_script_there_is_no_rolling_back():
    text = rh.report(_states(), recovery=A, run_id=RUN, restore_done=True, proxy={}, known={}, runbook="RUNBOOK")
    assert "restore script done" in text and "no rolling back" in text and "To roll back" not in text


# ---- admission's pure parts ----

def _record(version="4.5.2"):
    return BackupRecord(id="20261127-081409-a1b2c3d4", cluster="lab", version=version, revision=5, total_keys=9,
                        snapshot_hash=1, snapshot_size=1, files=(StoredFile("s.db", "snapshot", 1, "0" * 64, "/x"),),
                        host=A, started_at=0, finished_at=1, run_id="a1b2c3d4", requester="U1", verified=True,
                        encrypted=False, host_dir="/h")


def test_versions_differ_both_are_shown():
    view = checks.ClusterView(version="4.5.3", proxy={}, masters=(A, B, C), api_up=True, source="read from the API now")
    text = checks.version_mismatch(backup=_record(), view=view)
    assert "OpenShift 4.5.2" in text and "runs 4.5.3 (read from the API now)" in text and "same z-stream" in text
    assert checks.version_mismatch(backup=_record("4.5.3"), view=view) == ""


def test_missing_and_changed_files_are_named(tmp_path):
    good = tmp_path / "snapshot_2026-11-27_081409.db"
    good.write_bytes(b"etcd")
    record = _record()
    digest = checks.sha256_file(good)
    files = (StoredFile(good.name, "snapshot", 4, digest, str(good)),
             StoredFile("static_kuberesources_2026-11-27_081409.tar.gz", "resources", 4, "1" * 64,
                        str(tmp_path / "gone.tar.gz")))
    from dataclasses import replace
    assert checks.file_problems(replace(record, files=files)) == [
        f"static_kuberesources_2026-11-27_081409.tar.gz is missing from the store ({tmp_path / 'gone.tar.gz'})"]
    good.write_bytes(b"etcd, changed")
    problems = checks.file_problems(replace(record, files=files[:1] + (replace(files[1], path=str(good)),)))
    assert problems[0].startswith(f"{good.name} has sha256 ") and "the file changed since the backup" in problems[0]


def test_ages():
    assert checks.age_text(59) == "0 min"
    assert checks.age_text(3 * 3600 + 120) == "3 h 2 min"
    assert checks.age_text(2 * 86400 + 3600) == "2 d 1 h"


# ---- the kit's wait ----

def test_a_wait_names_what_it_waits_for_and_gives_up_at_its_deadline():
    notes: list[str] = []

    async def heartbeat(text: str) -> None:
        notes.append(text)

    async def never() -> NotYet:
        return NotYet("2 nodes are at revision 6; 1 nodes are at revision 7")

    with pytest.raises(WaitTimedOut) as error:
        asyncio.run(wait_until(never, what="etcd at the latest revision", deadline=0.3, heartbeat=heartbeat, interval=0.05))
    assert "gave up waiting for etcd at the latest revision after 0.3 s" in error.value.message
    assert "last seen: 2 nodes are at revision 6; 1 nodes are at revision 7" in error.value.message
    assert notes and notes[0].startswith("waiting for etcd at the latest revision (0 s of at most 0.3 s): 2 nodes")

    answers = iter([NotYet("not yet"), "done"])

    async def soon() -> str | NotYet:
        return next(answers)

    assert asyncio.run(wait_until(soon, what="x", deadline=5, heartbeat=heartbeat, interval=0.01)) == "done"


def test_the_approved_block_is_one_group_in_the_documents_order():
    steps = restore.build().steps
    destructive = [s for s in steps if s.kind.value == "destructive"]
    assert [s.id for s in destructive] == [restore.S_STOP, restore.S_DATA, restore.S_RESTORE]
    assert {s.approval_group for s in destructive} == {"restore"} and not any(s.safe_to_repeat for s in destructive)
    ids = [s.id for s in steps]
    assert ids.index(restore.S_COPY) < ids.index(restore.S_STOP) < ids.index(restore.S_RESTORE) < ids.index(restore.S_KUBELET)
    assert ids[-5:-1] == [f"ch5.3.redeploy-{n}" for n in ("etcd", "kubeapiserver", "kubecontrollermanager", "kubescheduler")]
