"""etcdctl's JSON, as etcd 3.4 prints it (fixtures captured from real etcd 3.4.23 members), into typed values."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bot.cluster import etcdctl
from procedures.facts import members_from_etcdctl

FIXTURES = Path(__file__).parent / "fixtures" / "etcd34"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_member_ids_are_shown_in_hex_as_the_table_prints_them():
    assert etcdctl.member_id_hex(13668033151171901709) == "bdae9bbc11dd390d"
    parsed = etcdctl.parse_member_list(fixture("member_list_3.json"))
    # `etcdctl member list -w table` printed these IDs for the same cluster.
    assert {m.id: m.name for m in parsed.members} == {
        "5cae315174de75b1": "b", "71a84c8821a8935d": "c", "f4a457008d1441f2": "a"}
    assert parsed.members[0].endpoint == "http://127.0.0.1:24702"
    assert all(m.started for m in parsed.members)


def test_unstarted_member_has_no_name():
    text = ('{"header":{"cluster_id":1,"member_id":2,"raft_term":2},"members":[{"ID":2,"name":"a",'
            '"peerURLs":["http://p:1"],"clientURLs":["http://c:1"]},{"ID":3,"peerURLs":["http://p:2"]}]}')
    members = etcdctl.parse_member_list(text).members
    assert not members[1].started and members[1].endpoint is None


def test_endpoint_status_leader_db_size_revision():
    statuses = etcdctl.parse_endpoint_status(fixture("status_3.json"))
    assert len(statuses) == 3
    leader = [s for s in statuses if s.is_leader]
    assert [s.member_id for s in leader] == ["5cae315174de75b1"]
    assert statuses[0].db_size == 20480 and statuses[0].revision == 2 and statuses[0].version == "3.4.23"


def test_endpoint_status_with_a_member_down_keeps_the_answers_and_names_the_dead_one():
    statuses = etcdctl.parse_endpoint_status(fixture("status_3_one_down.json"))
    assert len(statuses) == 2
    assert etcdctl.unreachable_endpoints(fixture("status_3_one_down.err")) == ("http://127.0.0.1:24703",)


def test_endpoint_health():
    health = etcdctl.parse_endpoint_health(fixture("health_3_one_down.json"))
    bad = [h for h in health if not h.healthy]
    assert [(h.endpoint, h.error) for h in bad] == [("http://127.0.0.1:24703", "context deadline exceeded")]


def test_join_of_the_three_answers():
    members = members_from_etcdctl(
        members=etcdctl.parse_member_list(fixture("member_list_3_one_down.json")),
        statuses=etcdctl.parse_endpoint_status(fixture("status_3_one_down.json")),
        health=etcdctl.parse_endpoint_health(fixture("health_3_one_down.json")),
    )
    by_name = {m.name: m for m in members}
    assert by_name["c"].healthy is False and by_name["c"].leader is None and by_name["c"].db_size is None
    assert by_name["b"].healthy is True and by_name["b"].leader is True and by_name["b"].revision == 2
    assert by_name["a"].leader is False


@pytest.mark.parametrize("text", ["", "Error: context deadline exceeded", "[", '{"members": 3}'])
def test_garbage_is_a_parse_error(text):
    with pytest.raises(etcdctl.EtcdctlParseError):
        etcdctl.parse_member_list(text)


def test_human_size_matches_etcdctl_table():
    assert etcdctl.human_size(20480) == "20 kB"
    assert etcdctl.human_size(31_000_000) == "31 MB"
    assert etcdctl.human_size(500) == "500 B"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("etcd") is None or shutil.which("etcdctl") is None, reason="etcd not installed")
def test_our_commands_against_a_real_etcd(tmp_path):
    client, peer = _free_port(), _free_port()
    url = f"http://127.0.0.1:{client}"
    proc = subprocess.Popen(
        ["etcd", "--name", "ip-10-0-131-183.ec2.internal", "--data-dir", str(tmp_path / "data"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"ip-10-0-131-183.ec2.internal=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        env = {"ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": url, "PATH": "/usr/bin:/bin"}

        def run(argv: list[str]) -> str:
            deadline = time.monotonic() + 15
            while True:
                done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20)
                if done.returncode == 0 or time.monotonic() > deadline:
                    return done.stdout
                time.sleep(0.3)

        members = etcdctl.parse_member_list(run(etcdctl.member_list_command()))
        statuses = etcdctl.parse_endpoint_status(run(etcdctl.endpoint_status_command()))
        health = etcdctl.parse_endpoint_health(run(etcdctl.endpoint_health_command()))
        facts = members_from_etcdctl(members=members, statuses=statuses, health=health)
        assert len(facts) == 1
        only = facts[0]
        assert only.name == "ip-10-0-131-183.ec2.internal" and only.endpoint == url
        assert only.healthy is True and only.leader is True and only.revision >= 1 and only.db_size > 0
        assert len(only.id) == 16 or only.id == format(int(only.id, 16), "x")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
