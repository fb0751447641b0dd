"""lab.sshd faults, with the real OpenSSH client: block (refused until heal) and stall (logins
succeed, commands hang until heal); plus core's identity and SFTP rights over a real session."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.lab.test_sshd import SSHLab, _run, _ssh, _ssh_opts
from tests.lab.test_sshd import lab as lab  # noqa: F401 - the fixture, shared with test_sshd


async def test_block_refuses_until_heal_even_across_restarts(lab: SSHLab) -> None:  # noqa: F811
    conn = asyncio.create_task(_ssh(lab, "echo started; exec sleep 30"))
    await lab.server.block()
    rc, _, err = await _ssh(lab, "true")
    assert rc == 255 and "Connection refused" in err
    rc, out, _ = await asyncio.wait_for(conn, 20)
    assert rc == 255, "the open connection is cut, as a network drop does"

    await lab.server.start()  # what power-on does: an outage outlasts it
    rc, _, err = await _ssh(lab, "true")
    assert rc == 255 and "Connection refused" in err

    lab.server.heal()
    await lab.server.start()
    assert await _ssh(lab, "echo back") == (0, "back\n", "")


async def test_stall_accepts_logins_and_holds_commands_until_heal(lab: SSHLab) -> None:  # noqa: F811
    lab.server.stall()
    waiting = asyncio.create_task(_run("ssh", *_ssh_opts(lab), "-v", "-p", str(lab.port), "core@127.0.0.1",
                                       "echo ran > /home/core/waited; echo released", deadline=60))
    gave_up = await _run("timeout", "3", "ssh", *_ssh_opts(lab), "-v", "-p", str(lab.port), "core@127.0.0.1",
                         "touch /home/core/gave-up")
    assert gave_up[0] == 124, "a command on a stalled host hangs (killed by timeout(1) after 3 s)"
    assert "Authenticated to 127.0.0.1" in gave_up[2], "the connection and the login still succeed"
    assert not waiting.done()
    assert not (lab.root / "home/core/waited").exists()

    lab.server.heal()
    rc, out, _ = await asyncio.wait_for(waiting, 30)
    assert (rc, out) == (0, "released\n")
    assert (lab.root / "home/core/waited").read_text() == "ran\n"
    assert await _ssh(lab, "echo fine") == (0, "fine\n", "")
    assert not (lab.root / "home/core/gave-up").exists(), "a command whose client left never runs"


async def test_sessions_are_core_and_sftp_has_cores_rights(lab: SSHLab, tmp_path: Path) -> None:  # noqa: F811
    assert await _ssh(lab, "id -u; sudo id -u") == (0, "1000\n0\n", "")
    (lab.root / "var/lib/etcd/member").mkdir()
    rc, _, err = await _ssh(lab, "mv /var/lib/etcd /tmp")
    assert (rc, err) == (1, "mv: cannot move '/var/lib/etcd' to '/tmp/etcd': Permission denied\n")

    secret = lab.root / "etc/kubernetes/secret.key"
    secret.write_text("root only")
    secret.chmod(0o600)
    rc, _, err = await _run("scp", *_ssh_opts(lab), "-P", str(lab.port), "core@127.0.0.1:/etc/kubernetes/secret.key",
                            str(tmp_path / "stolen"))
    assert rc == 1 and "Permission denied" in err
    local = tmp_path / "up"
    local.write_text("x")
    rc, _, err = await _run("scp", *_ssh_opts(lab), "-P", str(lab.port), str(local),
                            "core@127.0.0.1:/etc/kubernetes/manifests/")
    assert rc == 1 and "Permission denied" in err
    rc, _, err = await _run("scp", *_ssh_opts(lab), "-P", str(lab.port), str(local), "core@127.0.0.1:up")
    assert rc == 0, err
    assert (lab.root / "home/core/up").stat().st_uid == 1000
