"""What chapter 5.3 does on the masters, as values: the paths, the commands (argv lists the host
shell quotes), how to read `crictl ps` and a host's state, and the per-host report a person needs
when a restore stops half way.

Why a module apart from procedures/restore.py: these are pure functions (no cluster, no Slack),
so every command the approval shows and every sentence of the failure report is unit-tested
without a lab, and the steps stay short.

Where the bot differs from the page, and why:
- The document moves the manifests and the data directory into `/tmp` under their own names. A
  second restore (or a retry) would then collide with the first one's leftovers (`mv /var/lib/etcd/
  /tmp` moves the data INTO an existing `/tmp/etcd`). The bot moves them into a directory of the
  run, `/tmp/etcdbot-restore-<run id>/`, so every run's leftovers are apart and the way back is
  one `mv` per item.
- "Wait until `crictl ps | grep etcd | grep -v operator` is empty" is done by reading `sudo crictl
  ps` and looking at the container names (no pipe reaches a shell).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bot.cluster.hosts import CrictlContainer, parse_crictl_ps, shell_command

MANIFESTS = "/etc/kubernetes/manifests"
ETCD_MANIFEST = f"{MANIFESTS}/etcd-pod.yaml"
APISERVER_MANIFEST = f"{MANIFESTS}/kube-apiserver-pod.yaml"
DATA_DIR = "/var/lib/etcd"
HOST_BACKUP_DIR = "/home/core/backup"
RESTORE_SCRIPT = "/usr/local/bin/cluster-restore.sh"
RUN_ID_RE = re.compile(r"^([a-z0-9-]{1,64}|RUN-ID)$")  # RUN-ID: what a dry run's plan shows
PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
PROXY_VALUE_RE = re.compile(r"^[A-Za-z0-9:/._,@%*=+~\[\]-]{1,4096}$")
BACKUP_FILE_RE = re.compile(r"^(snapshot_[0-9]{4}-[0-9]{2}-[0-9]{2}_[0-9]{6}\.db|"
                            r"static_kuberesources_[0-9]{4}-[0-9]{2}-[0-9]{2}_[0-9]{6}\.tar\.gz)$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def aside_dir(run_id: str) -> str:
    """Where this run moves a master's etcd and kube-apiserver manifests and its data directory."""
    if not RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"{run_id!r} is not a run id")
    return f"/tmp/etcdbot-restore-{run_id}"


def previous_backup_dir(run_id: str) -> str:
    """Where an earlier `/home/core/backup` holding other files goes, so cluster-restore.sh (which
    takes the newest file of each kind in the directory) only ever sees this backup."""
    if not RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"{run_id!r} is not a run id")
    return f"{HOST_BACKUP_DIR}.before-{run_id}"


# ---- commands (argv lists; the host shell joins them with shlex.quote) -------------------------


def mkdir_aside_command(run_id: str) -> list[str]:
    return ["sudo", "mkdir", "-p", aside_dir(run_id)]


def move_etcd_manifest_command(run_id: str) -> list[str]:
    return ["sudo", "mv", ETCD_MANIFEST, aside_dir(run_id) + "/"]


def move_apiserver_manifest_command(run_id: str) -> list[str]:
    return ["sudo", "mv", APISERVER_MANIFEST, aside_dir(run_id) + "/"]


def move_data_dir_command(run_id: str) -> list[str]:
    return ["sudo", "mv", DATA_DIR, aside_dir(run_id) + "/etcd"]


def crictl_command() -> list[str]:
    return ["sudo", "crictl", "ps"]


def restart_kubelet_command() -> list[str]:
    return ["sudo", "systemctl", "restart", "kubelet.service"]


def restore_script_command(proxy: Mapping[str, str]) -> list[str]:
    """`sudo -E /usr/local/bin/cluster-restore.sh /home/core/backup`, with the cluster-wide proxy
    exported first when it is set (the document: "be sure that you have exported NO_PROXY,
    HTTP_PROXY, and HTTPS_PROXY"); `env` is how an argv exports."""
    exports = []
    for name in PROXY_NAMES:
        value = proxy.get(name)
        if not value:
            continue
        if not PROXY_VALUE_RE.fullmatch(value):
            raise ValueError(f"the proxy setting {name} holds characters a proxy does not need")
        exports.append(f"{name}={value}")
    return [*(["env", *exports] if exports else []), "sudo", "-E", RESTORE_SCRIPT, HOST_BACKUP_DIR]


def list_backup_dir_command() -> list[str]:
    """Owner and name of `/home/core/backup` and of what it holds (exit 1: it is not there, or the
    SSH user may not read it)."""
    return ["find", HOST_BACKUP_DIR, "-maxdepth", "1", "-printf", "%u %d %f\\n"]


def backup_dir_in_the_way(*, rc: int | None, stdout: str, user: str, names: set[str]) -> bool:
    """Whether an existing `/home/core/backup` must be moved aside before the copy: it holds other
    files (cluster-restore.sh would take the newest of each kind), or it, or a file in it, is not
    the SSH user's (the copy could not write there). Not there at all: nothing to move."""
    if rc is None:
        raise ValueError("no answer")
    if rc != 0:
        return "No such file" not in stdout
    for line in stdout.splitlines():
        owner, _, rest = line.partition(" ")
        depth, _, name = rest.partition(" ")
        if not owner:
            continue
        if owner != user or (depth != "0" and name not in names):
            return True
    return False


def move_previous_backup_command(run_id: str) -> list[str]:
    return ["sudo", "mv", HOST_BACKUP_DIR, previous_backup_dir(run_id)]


def make_backup_dir_command() -> list[str]:
    return ["mkdir", "-p", HOST_BACKUP_DIR]


def host_file(name: str) -> str:
    if not BACKUP_FILE_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a backup file name")
    return f"{HOST_BACKUP_DIR}/{name}"


def sha256_command(names: Sequence[str]) -> list[str]:
    return ["sha256sum", *(host_file(n) for n in names)]


def probe_paths(run_id: str) -> tuple[str, ...]:
    aside = aside_dir(run_id)
    return (ETCD_MANIFEST, APISERVER_MANIFEST, DATA_DIR, f"{aside}/etcd-pod.yaml",
            f"{aside}/kube-apiserver-pod.yaml", f"{aside}/etcd")


def probe_command(run_id: str) -> list[str]:
    """One read that says where a master's manifests and data directory are: `ls -d` prints the
    paths that exist (and exits 2 when some do not)."""
    return ["sudo", "ls", "-d", "--", *probe_paths(run_id)]


def command_text(argv: Sequence[str]) -> str:
    return shell_command(argv)


# ---- reading what the hosts answer -------------------------------------------------------------


def etcd_containers(stdout: str) -> tuple[CrictlContainer, ...]:
    """The rows `crictl ps | grep etcd | grep -v operator` keeps, by container name."""
    return tuple(c for c in parse_crictl_ps(stdout) if "etcd" in c.name and "operator" not in c.name)


def apiserver_containers(stdout: str) -> tuple[CrictlContainer, ...]:
    """The rows `crictl ps | grep kube-apiserver | grep -v operator` keeps, by container name."""
    return tuple(c for c in parse_crictl_ps(stdout) if "kube-apiserver" in c.name and "operator" not in c.name)


def running_etcd(stdout: str) -> bool:
    """The document's check on the recovery host: an `etcd` container Running."""
    return any(c.name == "etcd" and c.state.lower().endswith("running") for c in parse_crictl_ps(stdout))


def parse_sha256sum(stdout: str) -> dict[str, str]:
    """`sha256sum A B` -> {basename: hex}."""
    found = {}
    for line in stdout.splitlines():
        digest, _, path = line.strip().partition("  ")
        if SHA256_RE.fullmatch(digest) and path:
            found[path.rsplit("/", 1)[-1]] = digest
    return found


@dataclass(frozen=True)
class HostState:
    """Where a master's etcd and kube-apiserver manifests and data directory are, as `ls -d` said
    (`reachable` False: the host did not answer, nothing is known)."""

    node: str
    reachable: bool
    etcd_manifest_in_place: bool = False
    apiserver_manifest_in_place: bool = False
    data_dir_in_place: bool = False
    etcd_manifest_aside: bool = False
    apiserver_manifest_aside: bool = False
    data_dir_aside: bool = False
    error: str = ""

    @property
    def untouched(self) -> bool:
        return self.reachable and not (self.etcd_manifest_aside or self.apiserver_manifest_aside or self.data_dir_aside)

    @property
    def stopped_and_moved(self) -> bool:
        """Everything 5.3 does to a non-recovery master before the restore script is done."""
        return (self.reachable and self.etcd_manifest_aside and self.apiserver_manifest_aside and self.data_dir_aside
                and not self.etcd_manifest_in_place and not self.apiserver_manifest_in_place)


def parse_probe(node: str, run_id: str, *, rc: int | None, stdout: str, error: str = "") -> HostState:
    if rc is None or rc not in (0, 1, 2):
        return HostState(node=node, reachable=False, error=error or f"exit status {rc}")
    present = {line.strip().rstrip("/") for line in stdout.splitlines() if line.strip()}
    etcd, apiserver, data, etcd_aside, apiserver_aside, data_aside = probe_paths(run_id)
    return HostState(node=node, reachable=True, etcd_manifest_in_place=etcd in present,
                     apiserver_manifest_in_place=apiserver in present, data_dir_in_place=data in present,
                     etcd_manifest_aside=etcd_aside in present, apiserver_manifest_aside=apiserver_aside in present,
                     data_dir_aside=data_aside in present)


# ---- the report when a restore stops half way ---------------------------------------------------

# What the steps record as done on a host (HostsDone), read back by the report.
ETCD_DONE = "etcd pod manifest moved"
APISERVER_DONE = "kube-apiserver pod manifest moved"
DATA_DONE = "data dir moved"


def describe_state(state: HostState, *, recovery: bool, restore_done: bool, known: Sequence[str] = ()) -> str:
    """One line about one master, as a person checks it by hand."""
    role = " (recovery host)" if recovery else ""
    if not state.reachable:
        did = f"; the bot had done: {', '.join(known)}" if known else "; the bot had done nothing there"
        return f"`{state.node}`{role}: did not answer SSH ({state.error or 'no answer'}), state unknown{did}"
    if recovery:
        restore = "restore script done" if restore_done else "restore script not run"
        return f"`{state.node}`{role}: {restore}"

    def where(in_place: bool, aside: bool, name: str) -> str:
        if aside and not in_place:
            return f"{name} moved"
        if in_place and not aside:
            return f"{name} in place"
        if in_place and aside:
            return f"{name} in place AND a copy moved aside"
        return f"{name} missing"

    parts = [where(state.etcd_manifest_in_place, state.etcd_manifest_aside, "etcd-pod.yaml"),
             where(state.apiserver_manifest_in_place, state.apiserver_manifest_aside, "kube-apiserver-pod.yaml"),
             where(state.data_dir_in_place, state.data_dir_aside, "data dir")]
    return f"`{state.node}`{role}: " + ", ".join(parts)


def finish_commands(state: HostState, run_id: str, *, known: Sequence[str] = ()) -> list[str]:
    """The document's commands a non-recovery master still needs before the restore script (for
    a host that does not answer: those the bot had not done there, as far as it knows)."""
    if not state.reachable:
        steps = ((ETCD_DONE, move_etcd_manifest_command(run_id)), (APISERVER_DONE, move_apiserver_manifest_command(run_id)),
                 (DATA_DONE, move_data_dir_command(run_id)))
        left = [argv for done, argv in steps if done not in known]
        return [command_text(c) for c in ([mkdir_aside_command(run_id), *left] if left else [])]
    commands = []
    if state.etcd_manifest_in_place or state.apiserver_manifest_in_place or (state.data_dir_in_place and not state.data_dir_aside):
        commands.append(mkdir_aside_command(run_id))
    if state.etcd_manifest_in_place:
        commands.append(move_etcd_manifest_command(run_id))
    if state.apiserver_manifest_in_place:
        commands.append(move_apiserver_manifest_command(run_id))
    if state.data_dir_in_place and not state.data_dir_aside:
        commands.append(move_data_dir_command(run_id))
    return [command_text(c) for c in commands]


def rollback_commands(state: HostState, run_id: str) -> list[str]:
    """What puts a non-recovery master back as it was before this run (valid while the restore
    script has not run): the data directory first, then the manifests (the kubelet starts etcd
    the moment its manifest is back, and it must find its data)."""
    aside = aside_dir(run_id)
    commands = []
    if state.data_dir_aside and not state.data_dir_in_place:
        commands.append(["sudo", "mv", f"{aside}/etcd", DATA_DIR])
    if state.apiserver_manifest_aside and not state.apiserver_manifest_in_place:
        commands.append(["sudo", "mv", f"{aside}/kube-apiserver-pod.yaml", MANIFESTS + "/"])
    if state.etcd_manifest_aside and not state.etcd_manifest_in_place:
        commands.append(["sudo", "mv", f"{aside}/etcd-pod.yaml", MANIFESTS + "/"])
    return [command_text(c) for c in commands]


def report(states: Sequence[HostState], *, recovery: str, run_id: str, restore_done: bool, proxy: Mapping[str, str],
           known: Mapping[str, Sequence[str]], runbook: str) -> str:
    """Per master: what state it is in, the next command it needs and, while the restore script
    has not run, the commands that put it back; then how to go on. Short enough for one Slack
    section beside the run's other lines."""
    lines = []
    for state in states:
        line = "• " + describe_state(state, recovery=state.node == recovery, restore_done=restore_done,
                                     known=known.get(state.node, ()))
        if state.node == recovery:
            if not restore_done:
                line += f". Next, once every other master is done: `{command_text(restore_script_command(proxy))}`"
        elif not restore_done:
            todo = finish_commands(state, run_id, known=known.get(state.node, ()))
            next_one = next((c for c in todo if not c.startswith("sudo mkdir")), "")
            line += f". Next: `{next_one}`" if next_one else ". Done"
            back = rollback_commands(state, run_id) if state.reachable else []
            if back:
                line += ". Back: " + "; ".join(f"`{c}`" for c in back)
            elif not state.reachable and known.get(state.node):
                line += f". Back (when it answers): what is in `{aside_dir(run_id)}/`, the data dir first"
        lines.append(line)
    unreachable = [s.node for s in states if not s.reachable]
    first = f"restore SSH to {', '.join(f'`{n}`' for n in unreachable)}, then " if unreachable else ""
    lines.append(f"*To finish:* {first}press *Resume* (a destructive step asks a new approval), or run the next "
                 f"commands by hand and the rest of {runbook}.")
    if restore_done:
        lines.append(f"The restore script has run on `{recovery}`: the old data is replaced, there is no rolling back.")
    else:
        lines.append("*To roll back* (the restore script has not run): the *Back* commands on each master, then *Abort*.")
    return "\n".join(lines)
