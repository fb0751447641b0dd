"""bot/cluster/etcd.py and the survey shell of bot/cluster/etcdctl.py: where etcdctl may run, what
one round trip asks, how its mixed output is read, and etcd's crash log condensed. The survey
shell runs against a real etcd with a dead endpoint beside it: the dead one must be marked, with
etcdctl's reason, within the call's limit."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from bot.cluster import etcdctl
from bot.cluster.etcd import (
    Etcd,
    EtcdTimeouts,
    EtcdUnavailable,
    Ran,
    not_ready_nodes,
    pod_endpoints,
    split_endpoints,
    usable_pods,
)
from procedures.facts import log_excerpt

FIXTURES = Path(__file__).parent / "fixtures" / "etcd34"


def pod(node: str, *, phase: str = "Running", etcd: str = "running", etcdctl_state: str = "running",
        reason: str = "", endpoints: str = "") -> dict:
    def state(kind: str) -> dict:
        return {kind: {"reason": reason}} if kind != "running" else {"running": {}}

    return {
        "metadata": {"name": f"etcd-{node}"},
        "spec": {"nodeName": node, "containers": [
            {"name": "etcdctl", "env": [{"name": "ETCDCTL_ENDPOINTS", "value": endpoints}] if endpoints else []},
            {"name": "etcd"}]},
        "status": {"phase": phase, "containerStatuses": [
            {"name": "etcd", "state": state(etcd)}, {"name": "etcdctl", "state": state(etcdctl_state)}]},
    }


def test_usable_pods_ready_nodes_first_never_crashlooping_nor_avoided() -> None:
    pods = [pod("a"), pod("b"), pod("c", etcd="waiting", reason="CrashLoopBackOff"), pod("d", phase="Pending"),
            pod("e", etcdctl_state="terminated"), pod("f", etcd="terminated", reason="Error")]
    assert usable_pods(pods, not_ready={"a"}, avoid={"b"}) == [("etcd-f", "f"), ("etcd-a", "a")]
    # a Ready node whose etcd container runs beats one whose etcd exited
    assert usable_pods(pods)[0] == ("etcd-a", "a")


def test_not_ready_nodes_by_taint_or_condition() -> None:
    nodes = [
        {"metadata": {"name": "a"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        {"metadata": {"name": "b"}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}},
        {"metadata": {"name": "c"}, "spec": {"taints": [{"key": "node.kubernetes.io/unreachable"}]},
         "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
    ]
    assert not_ready_nodes(nodes) == {"b", "c"}


def test_endpoints_from_the_pod_spec_are_checked_urls() -> None:
    assert pod_endpoints(pod("a", endpoints="https://10.0.0.1:2379,https://10.0.0.2:2379")) == (
        "https://10.0.0.1:2379", "https://10.0.0.2:2379")
    assert split_endpoints("https://10.0.0.1:2379,$(reboot),https://x:1;rm") == ("https://10.0.0.1:2379",)


def test_survey_command_quotes_every_value_and_refuses_what_is_not_a_url() -> None:
    argv = etcdctl.survey_command(endpoints=["https://10.0.0.1:2379", "https://10.0.0.2:2379"],
                                  flags=["--dial-timeout=1000ms"])
    assert argv[:2] == ["sh", "-c"]
    script = argv[2]
    assert script.startswith("etcdctl member list -w json --dial-timeout=1000ms & ")
    assert "ETCDCTL_ENDPOINTS=https://10.0.0.1:2379 etcdctl endpoint status -w json" in script
    assert "ETCDCTL_ENDPOINTS=https://10.0.0.1:2379,https://10.0.0.2:2379 etcdctl endpoint health" in script
    assert script.endswith(" & wait")
    with pytest.raises(ValueError):
        etcdctl.survey_command(endpoints=["https://10.0.0.1:2379; reboot"])
    assert "member list" not in etcdctl.survey_command(endpoints=["http://a:1"], member_list=False)[2]


def test_member_remove_takes_only_a_member_id() -> None:
    assert etcdctl.member_remove_command("6fc1e7c9db35841d")[:4] == ["etcdctl", "member", "remove", "6fc1e7c9db35841d"]
    for bad in ("", "6FC1", "12345678901234567", "1; reboot"):
        with pytest.raises(ValueError):
            etcdctl.member_remove_command(bad)


def test_parse_survey_tells_the_outputs_apart_and_flags_garbage() -> None:
    lines = [(FIXTURES / name).read_text().strip() for name in ("member_list_3.json", "health_3.json")]
    status = (FIXTURES / "status_3.json").read_text().strip()
    out = etcdctl.parse_survey("\n".join([*lines, status, "[]"]))
    assert out.members is not None and len(out.members.members) == 3
    assert len(out.health) == 3 and len(out.statuses) == 3 and not out.garbled
    assert etcdctl.parse_survey(lines[0] + '\n{"members": [{"ID": 1, "na').garbled
    assert etcdctl.parse_survey('{"header": {}}').garbled


def test_status_failures_name_each_dead_endpoint_with_its_reason() -> None:
    err = (FIXTURES / "status_3_one_down.err").read_text()
    assert etcdctl.status_failures(err) == {"http://127.0.0.1:24703": "context deadline exceeded"}


def test_crash_log_condensed_to_why() -> None:
    reason, lines = log_excerpt((FIXTURES / "crash_invalid_database.log").read_text())
    assert reason == ("panic failed to open database (path=/var/lib/etcd/member/snap/db, error=invalid database)")
    assert lines[-1] == "panic: failed to open database"
    assert not any(line.startswith(("goroutine", "go.etcd.io", "\t")) for line in lines)
    assert log_excerpt("") == (None, ())


# ---- against a real etcd ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_etcd(tmp_path: Path) -> Iterator[str]:
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("etcd not installed")
    client, peer = _free_port(), _free_port()
    url = f"http://127.0.0.1:{client}"
    proc = subprocess.Popen(
        ["etcd", "--name", "m0", "--data-dir", str(tmp_path / "data"), "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}", "--initial-cluster", f"m0=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["etcdctl", "--endpoints", url, "endpoint", "health"], capture_output=True,
                             timeout=10).returncode != 0:
            assert time.monotonic() < deadline, "etcd did not start"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class LocalPlace:
    """etcdctl on this machine with a given ETCDCTL_ENDPOINTS: the same commands a pod or a master
    runs, without the transport (the transports are tested against the lab)."""

    def __init__(self, endpoints: Sequence[str], *, node: str = "local") -> None:
        self.node = node
        self._env = {"ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": ",".join(endpoints), "PATH": "/usr/bin:/bin"}
        self.hint = tuple(endpoints)
        self.commands: list[list[str]] = []

    @property
    def where(self) -> str:
        return f"local {self.node}"

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self.hint

    async def etcdctl(self, argv: Sequence[str], *, endpoints: str | None, timeout: float) -> Ran:
        self.commands.append(list(argv))
        env = {**self._env, **({"ETCDCTL_ENDPOINTS": endpoints} if endpoints else {})}
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return Ran(None, "", f"no answer within {timeout:.1f}s", time.monotonic() - started)
        except asyncio.CancelledError:  # a hedged call that lost the race: leave no etcdctl behind
            proc.kill()
            await proc.wait()
            raise
        return Ran(proc.returncode, out.decode(), err.decode(), time.monotonic() - started)


class Places(Etcd):
    """An Etcd whose places are given (the pods and masters are the lab tests' business)."""

    def __init__(self, places: Sequence[LocalPlace], **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(kube=None, hosts=None, **kwargs)
        self._given = list(places)

    async def _places(self, errors):  # type: ignore[no-untyped-def, override]
        if self._place is not None:
            yield self._place
        for place in self._given:
            if place is not self._place:
                yield place


async def test_survey_in_one_round_trip_marks_a_dead_member_within_the_limit(one_etcd: str) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    place = LocalPlace([one_etcd, dead])
    timeouts = EtcdTimeouts(dial=1.0, command=1.0, margin=2.0)
    started = time.monotonic()
    survey = await Places([place], timeouts=timeouts).survey()
    elapsed = time.monotonic() - started
    assert len(place.commands) == 1, "member list, statuses and health in one shell"
    assert [m.name for m in survey.members.members] == ["m0"]
    assert [s.endpoint for s in survey.statuses.answered] == [one_etcd]
    assert {h.endpoint: h.healthy for h in survey.health} == {one_etcd: True}
    assert survey.via == "local local"
    assert elapsed < timeouts.call + 0.5
    # the dead endpoint is not a member, so it is asked but left out of the answer
    health = await Places([place], timeouts=timeouts).endpoint_health(
        etcdctl.MemberList(cluster_id="1", members=(etcdctl.Member(id="1", name="x", peer_urls=(), client_urls=(dead,)),)))
    assert health[0].healthy is False and health[0].error


async def test_a_place_that_does_not_answer_is_skipped_and_reported(one_etcd: str) -> None:
    dead = LocalPlace([f"http://127.0.0.1:{_free_port()}"], node="dead")
    good = LocalPlace([one_etcd], node="good")
    etcd = Places([dead, good], timeouts=EtcdTimeouts(dial=0.5, command=0.5, margin=2.0))
    members = await etcd.member_list()
    assert etcd.via == "local good" and len(members.members) == 1
    with pytest.raises(EtcdUnavailable, match="local dead: member list"):
        await Places([dead], timeouts=EtcdTimeouts(dial=0.5, command=0.5, margin=2.0)).member_list()


async def test_member_remove_calls_the_fence_first_and_a_refusing_fence_stops_it(one_etcd: str) -> None:
    place = LocalPlace([one_etcd])
    etcd = Places([place])
    members = await etcd.member_list()
    calls: list[str] = []

    async def refuse() -> None:
        calls.append("fence")
        raise RuntimeError("the run no longer holds the cluster")

    with pytest.raises(RuntimeError, match="no longer holds"):
        await etcd.member_remove(members.members[0].id, fence=refuse)
    assert calls == ["fence"]
    assert not any(c[:3] == ["etcdctl", "member", "remove"] for c in place.commands)
    assert len((await etcd.member_list()).members) == 1
