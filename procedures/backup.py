"""Chapter 1, "Backing up etcd data", as steps the runner drives.

The document's procedure is: on ONE master with a running etcd (never one per master), with the
cluster-wide proxy exported, run `/usr/local/bin/cluster-backup.sh /home/core/assets/backup`;
it writes `snapshot_<ts>.db` and `static_kuberesources_<ts>.tar.gz`. Around that the bot adds
what a careful person adds: it refuses during the first 24 h (the backup would hold certificates
about to expire), picks a master whose member is healthy and moves on to the next one when a
master does not answer, verifies the snapshot (`etcdctl snapshot status`), copies both files off
the host checksummed, records the cluster version (a restore needs the same z-stream) and cleans
the host's copy.

One choice differs from the page: each run writes into its own directory,
`/home/core/assets/backup/<run id>`. The document's directory would mix runs, and
`cluster-restore.sh` takes the newest file of each kind in a directory: two runs' files side by
side are how a snapshot gets restored with another run's static resources. A run directory also
makes "clean the host's copy" one `rm -rf` of a path the bot built itself.

Built on the procedure kit (bot/procedure.py): the module registers `backup` (and its command
`/etcd-backup`) at import; `admission` holds the one copy of the 24 h rule (refuse) and of peak
hours (warn, "Back up anyway"), asked by the runner for a person's start, a dry run and a
scheduled start alike; each step returns a typed result (`Prerequisites`, `PickedMasters`,
`ScriptOutput`, `VerifiedSnapshot`, `CopiedFiles`, `RecordedBackup`) that later steps read with
`ctx.result(...)`. The SSH user is the unprivileged `core` of RHCOS: the script, the chown, the
listing, `etcdctl snapshot status`, `sha256sum` and removing the run directory go through sudo;
commands that change the host go through `ctx.hosts.change` (fenced).

After the document's steps, two of the bot's own: a restore drill of the new backup on the
bot's machine (bot/drill.py through `BackupStore.prove`: the snapshot restored into a scratch
etcd on loopback, its revision, key count and ClusterVersion read back and checked against the
metadata; a backup is "drilled" only after this passed, and a failed drill fails the run, so
nobody counts on that backup), then the retention rules (bot/retention.py, applied by
bot/pruning.py; never the newest drilled backup, the newest of the current version, or one a
run uses), only after a passed drill.

Steps are safe to repeat (Resume after a crash): the script step clears its run directory first,
the copy step starts from an empty temporary directory, recording is idempotent, a drill can be
run again, retention decides again.

Pure helpers (install time, peak hours, proxy env, encryption, candidates, etcdctl/sha256sum
parsing, commands) are module functions, unit-tested without a cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as daytime
from typing import Any
from zoneinfo import ZoneInfo

from bot.backups import (
    CHUNK,
    BackupRecord,
    BackupStore,
    Catalogue,
    Received,
    StoredFile,
    StoreError,
    new_backup_id,
)
from bot.cluster.etcdctl import human_size
from bot.cluster.hosts import CommandResult, HostCopyError, shell_command
from bot.cluster.kube import KubeClient, KubeError, kube_time
from bot.cluster.nodes import NodeSession
from bot.config import ClusterSettings
from bot.procedure import (
    Admission,
    PlannedCommand,
    Procedure,
    Step,
    StepContext,
    StepFailed,
    StepId,
    StepKind,
    StepResult,
    register,
)
from bot.pruning import apply_prune, plan_prune, rules_text
from bot.retention import RetentionRules
from procedures.facts import ClusterFacts
from procedures.status import gather_facts

NAME = "backup"
TITLE = "Backing up etcd data"
HOST_BACKUP_ROOT = "/home/core/assets/backup"
BACKUP_SCRIPT = "/usr/local/bin/cluster-backup.sh"
MIN_AGE = timedelta(hours=24)
RUN_ID_RE = re.compile(r"^[a-z0-9-]{1,64}$")
NODE_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
SNAPSHOT_RE = re.compile(r"^snapshot_[0-9]{4}-[0-9]{2}-[0-9]{2}_[0-9]{6}\.db$")
RESOURCES_RE = re.compile(r"^static_kuberesources_[0-9]{4}-[0-9]{2}-[0-9]{2}_[0-9]{6}\.tar\.gz$")
PROXY_VALUE_RE = re.compile(r"^[A-Za-z0-9:/._,@%*=+~\[\]-]{1,4096}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
COMMAND_TIMEOUT = 60.0
SCRIPT_TIMEOUT = 600.0
DRILL_STEP_TIMEOUT = 6 * 3600 + 600.0  # above any ETCDBOT_DRILL_TIMEOUT, plus the checksum; the driller enforces its own

S_PREREQS = StepId("ch1.check-prerequisites")
S_PICK = StepId("ch1.pick-master")
S_SCRIPT = StepId("ch1.run-backup-script")
S_VERIFY = StepId("ch1.verify-snapshot")
S_COPY = StepId("ch1.copy-off-host")
S_RECORD = StepId("ch1.record-metadata")
S_CLEAN = StepId("ch1.clean-host")
S_DRILL = StepId("ch1.drill")
S_RETENTION = StepId("ch1.retention")
PEAK_OVERRIDE = "peak-hours"  # the admission warning a person (or the schedule) may override


# ---- pure helpers ---------------------------------------------------------------------------


def _parse_time(value: Any) -> datetime | None:
    seconds = kube_time(value)
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def installed_at(cluster_version: Mapping[str, Any]) -> datetime | None:
    """When installation completed: the OLDEST history entry (OpenShift lists newest first), its
    completionTime, else its startedTime, else the object's creation time."""
    history = (cluster_version.get("status") or {}).get("history") or []
    if history:
        first = history[-1]
        found = _parse_time(first.get("completionTime")) or _parse_time(first.get("startedTime"))
        if found:
            return found
    return _parse_time((cluster_version.get("metadata") or {}).get("creationTimestamp"))


def full_version(cluster_version: Mapping[str, Any]) -> str | None:
    """The version a restore must match: the newest Completed history entry, else desired."""
    status = cluster_version.get("status") or {}
    for entry in status.get("history") or []:
        if entry.get("state") == "Completed" and entry.get("version"):
            return str(entry["version"])
    desired = (status.get("desired") or {}).get("version")
    return str(desired) if desired else None


def possible_at(installed: datetime) -> datetime:
    return installed + MIN_AGE


def too_young(*, installed: datetime | None, now: datetime) -> bool:
    return installed is not None and now < possible_at(installed)


def in_peak_hours(*, now: datetime, window: tuple[daytime, daytime], timezone: str) -> bool:
    """Is `now` inside [start, end) in the cluster's time zone? A window may cross midnight."""
    local = now.astimezone(ZoneInfo(timezone)).time().replace(tzinfo=None)
    start, end = window
    if start == end:
        return False
    if start < end:
        return start <= local < end
    return local >= start or local < end


def proxy_env(proxy: Mapping[str, Any]) -> dict[str, str]:
    """HTTP_PROXY / HTTPS_PROXY / NO_PROXY from `proxy/cluster` spec, for the backup script.
    Values go into a command line: anything but URL and host-list characters is refused."""
    spec = proxy.get("spec") or {}
    env = {}
    for field, name in (("httpProxy", "HTTP_PROXY"), ("httpsProxy", "HTTPS_PROXY"), ("noProxy", "NO_PROXY")):
        value = spec.get(field)
        if not value:
            continue
        value = str(value)
        if not PROXY_VALUE_RE.fullmatch(value):
            raise StepFailed(
                f"proxy/cluster spec.{field} holds characters a proxy setting does not need; the bot will not pass it to a shell",
                next_action="Check `oc get proxy cluster -o yaml`, or take the backup by hand as the document shows.",
            )
        env[name] = value
    return env


def encryption_on(apiserver: Mapping[str, Any] | None) -> bool:
    """etcd encryption is on when `apiserver/cluster` spec.encryption.type is set to anything but identity."""
    if not apiserver:
        return False
    kind = str(((apiserver.get("spec") or {}).get("encryption") or {}).get("type") or "")
    return kind not in ("", "identity")


def candidates(facts: ClusterFacts, *, ssh_nodes: Sequence[str]) -> list[str]:
    """Masters whose etcd member is started and healthy, on a Ready node we can SSH to; followers
    first (a snapshot loads the member that serves it), then by name for a stable choice."""
    not_ready = {n.name for n in facts.nodes if n.not_ready}
    healthy = [m for m in facts.members if m.healthy and m.started and not m.learner]
    usable = [m for m in healthy if m.name in ssh_nodes and m.name not in not_ready and NODE_RE.fullmatch(m.name)]
    return [m.name for m in sorted(usable, key=lambda m: (bool(m.leader), m.name))]


@dataclass(frozen=True)
class SnapshotStatus:
    hash: int
    revision: int
    total_keys: int
    total_size: int


def parse_snapshot_status(stdout: str) -> SnapshotStatus:
    """`etcdctl snapshot status FILE -w json`: {"hash":..,"revision":..,"totalKey":..,"totalSize":..}."""
    try:
        raw = json.loads(stdout.strip().splitlines()[-1])
        return SnapshotStatus(hash=int(raw["hash"]), revision=int(raw["revision"]),
                              total_keys=int(raw["totalKey"]), total_size=int(raw["totalSize"]))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"not etcdctl snapshot status JSON: {stdout.strip()[:200]!r}") from exc


def parse_sha256sum(stdout: str) -> dict[str, str]:
    """`sha256sum A B` -> {basename: hex}."""
    found = {}
    for line in stdout.splitlines():
        digest, _, path = line.strip().partition("  ")
        if SHA256_RE.fullmatch(digest) and path:
            found[path.rsplit("/", 1)[-1]] = digest
    return found


@dataclass(frozen=True)
class HostFiles:
    snapshot: str
    snapshot_size: int
    resources: str
    resources_size: int


def parse_listing(stdout: str) -> HostFiles:
    """`find DIR -maxdepth 1 -type f -printf '%s\\t%f\\n'`: exactly one snapshot and one tarball."""
    snapshots, tarballs = [], []
    for line in stdout.splitlines():
        size, _, name = line.partition("\t")
        if not size.isdigit():
            continue
        if SNAPSHOT_RE.fullmatch(name):
            snapshots.append((name, int(size)))
        elif RESOURCES_RE.fullmatch(name):
            tarballs.append((name, int(size)))
    if len(snapshots) != 1 or len(tarballs) != 1:
        raise ValueError(f"expected one snapshot_TS.db and one static_kuberesources_TS.tar.gz, found {stdout.strip()[:300]!r}")
    return HostFiles(snapshot=snapshots[0][0], snapshot_size=snapshots[0][1],
                     resources=tarballs[0][0], resources_size=tarballs[0][1])


# ---- commands (each a list of validated values; the host shell gets them shlex-quoted) ------


def host_dir(run_id: str) -> str:
    if not RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"{run_id!r} is not a run id")
    return f"{HOST_BACKUP_ROOT}/{run_id}"


def clear_dir_command(directory: str) -> list[str]:
    if not directory.startswith(HOST_BACKUP_ROOT + "/") or ".." in directory:
        raise ValueError(f"refusing to remove {directory!r}")
    return ["sudo", "rm", "-rf", "--", directory]


def backup_script_command(*, directory: str, env: Mapping[str, str]) -> list[str]:
    """`sudo [env HTTP_PROXY=...] /usr/local/bin/cluster-backup.sh DIR` (sudo resets the environment,
    so the proxy goes through `env`)."""
    exports = [f"{k}={v}" for k, v in sorted(env.items()) if k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")]
    return ["sudo", *(["env", *exports] if exports else []), BACKUP_SCRIPT, directory]


def own_command(*, directory: str, uid: str, gid: str) -> list[str]:
    """The script writes root's 0600 files; SFTP runs as the SSH user, who must be able to read them."""
    if not (uid.isdigit() and gid.isdigit()):
        raise ValueError(f"not a uid:gid: {uid!r}:{gid!r}")
    return ["sudo", "chown", "-R", f"{uid}:{gid}", directory]


def listing_command(directory: str) -> list[str]:
    return ["sudo", "find", directory, "-maxdepth", "1", "-type", "f", "-printf", "%s\\t%f\\n"]


def snapshot_status_command(path: str) -> list[str]:
    return ["sudo", "etcdctl", "snapshot", "status", path, "-w", "json"]


def sha256_command(*paths: str) -> list[str]:
    return ["sudo", "sha256sum", *paths]


# ---- the rules before a run: admission (one place for the 24 h rule and peak hours) ----------


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def age_refusal(*, cluster: str, installed: datetime | None, now: datetime) -> Admission | None:
    """THE 24 h rule (the only place it is written): a backup taken before the first certificate
    rotation holds certificates about to expire. Used by the admission (before any start) and by
    the first step (a run resumed or started through another path checks it again)."""
    if installed is None or not too_young(installed=installed, now=now):
        return None
    possible = possible_at(installed)
    return Admission.refuse(
        f"No backup of `{cluster}` now: it was installed at {_utc(installed)}, and until the first certificate "
        "rotation (24 h after installation) a backup would hold expired certificates.",
        next_action=f"Run `/etcd-backup {cluster}` then.",
        until=possible.timestamp(),
    )


def peak_warning(*, cluster: ClusterSettings, now: datetime) -> Admission | None:
    """A backup blocks etcd while the snapshot is taken: in the cluster's peak hours, a person
    decides (the "Back up anyway" override); a schedule the operator chose counts as decided."""
    if not in_peak_hours(now=now, window=cluster.peak_window, timezone=cluster.timezone):
        return None
    return Admission.warn(
        f"It is peak time on `{cluster.name}` ({cluster.peak_hours} {cluster.timezone}). A backup blocks etcd while "
        "the snapshot is taken; the document advises non-peak hours.",
        override=PEAK_OVERRIDE, label="Back up anyway",
    )


async def admission(ctx: StepContext, *, now: datetime | None = None) -> Admission:
    """May a backup of this cluster start now? Refuse in the first 24 h, warn in peak hours.
    An API that does not answer is not a refusal: the first step reads it again and says what
    is wrong, with the run's message to show it."""
    now = now or datetime.now(UTC)
    if ctx.kube is not None:
        try:
            cv = await ctx.kube.get_cluster_version()
        except KubeError:
            cv = {}
        refusal = age_refusal(cluster=ctx.cluster_name, installed=installed_at(cv), now=now)
        if refusal is not None:
            return refusal
    return peak_warning(cluster=ctx.cluster, now=now) or Admission.ok()


# ---- what a dry run shows ------------------------------------------------------------------


@dataclass(frozen=True)
class Preflight:
    version: str | None
    installed_at: datetime | None
    encrypted: bool
    proxy_on: bool
    master: str | None = None  # the master a run would pick now (dry run only)
    error: str = ""  # the API did not answer: nothing could be checked

    def possible_at(self) -> datetime | None:
        return possible_at(self.installed_at) if self.installed_at else None


async def preflight(*, kube: KubeClient | None, hosts: Any, pick: bool = False) -> Preflight:
    """API reads only (clusterversion, proxy, apiserver; with `pick`, the member health too)."""
    if kube is None:
        return Preflight(version=None, installed_at=None, encrypted=False, proxy_on=False, error="no kubeconfig")
    try:
        cv, proxy, apiserver = await asyncio.gather(kube.get_cluster_version(), kube.get_proxy(), _apiserver(kube))
    except KubeError as exc:
        return Preflight(version=None, installed_at=None, encrypted=False, proxy_on=False, error=str(exc))
    master = None
    if pick:
        facts = await gather_facts(cluster="", kube=kube, hosts=hosts)
        found = candidates(facts, ssh_nodes=hosts.nodes if hosts else ())
        master = found[0] if found else None
    return Preflight(version=full_version(cv), installed_at=installed_at(cv), encrypted=encryption_on(apiserver),
                     proxy_on=bool((proxy.get("spec") or {}).get("httpProxy") or (proxy.get("spec") or {}).get("httpsProxy")),
                     master=master)


async def preview(ctx: StepContext) -> dict[str, str]:
    """A dry run's parameters: the master a run would pick now, whether the proxy and etcd
    encryption are on (the plans below name them). An API that does not answer leaves them open."""
    pre = await preflight(kube=ctx.kube, hosts=ctx.hosts, pick=True)
    found = {"master": pre.master or "NONE-HEALTHY-NOW", "proxy": "on" if pre.proxy_on else "off",
             "encrypted": "yes" if pre.encrypted else "no"}
    if pre.error:
        found["api"] = f"did not answer ({pre.error[:120]}): the plan could not name the master"
    return found


async def _apiserver(kube: KubeClient) -> dict[str, Any] | None:
    try:
        return await kube.get_apiserver()
    except KubeError as exc:
        if exc.status == 404:  # no apiserver/cluster object (or resource): no encryption configured
            return None
        raise


# ---- what each step leaves for the next (typed, stored as JSON) ------------------------------


@dataclass(frozen=True)
class Prerequisites:
    version: str
    installed_at: float | None
    encrypted: bool


@dataclass(frozen=True)
class PickedMasters:
    candidates: tuple[str, ...]  # healthy masters, in the order to try them


@dataclass(frozen=True)
class ScriptOutput:
    host: str
    dir: str
    snapshot: str
    snapshot_size: int
    resources: str
    resources_size: int
    started_at: float
    moved_from: tuple[str, ...] = ()

    @property
    def snapshot_path(self) -> str:
        return f"{self.dir}/{self.snapshot}"

    @property
    def resources_path(self) -> str:
        return f"{self.dir}/{self.resources}"


@dataclass(frozen=True)
class VerifiedSnapshot:
    hash: int
    revision: int
    total_keys: int
    total_size: int
    sha256: dict[str, str]  # file name -> hex, as the master's sha256sum printed it


@dataclass(frozen=True)
class CopiedFile:
    role: str  # "snapshot" or "resources"
    size: int
    sha256: str


@dataclass(frozen=True)
class CopiedFiles:
    files: dict[str, CopiedFile]  # file name -> what arrived
    encrypted: bool
    verified: VerifiedSnapshot | None = None  # what the master's checks said (None: a run of an older bot)


@dataclass(frozen=True)
class RecordedBackup:
    backup_id: str
    path: str


@dataclass(frozen=True)
class DrilledBackup:
    backup_id: str
    ok: bool
    seconds: float
    revision: int
    keys: int


@dataclass(frozen=True)
class Pruned:
    deleted: tuple[str, ...]
    kept: int


# ---- the steps ------------------------------------------------------------------------------


def _fail_text(result: CommandResult) -> str:
    if result.rc is None:
        return result.error or "no answer"
    return (result.stderr.strip() or result.stdout.strip())[-300:] or f"exit code {result.rc}"


def backup_store(ctx: StepContext) -> tuple[BackupStore, Catalogue]:
    """The run's backup store and catalogue (also for procedures/verify.py and procedures/prune.py)."""
    if ctx.store is None or ctx.catalogue is None:
        raise StepFailed("internal: this run has no backup store", next_action="Check ETCDBOT_BACKUP_DIR and restart the bot.")
    return ctx.store, ctx.catalogue


_store = backup_store


async def check_prerequisites(ctx: StepContext) -> StepResult:
    kube = ctx.need_kube()
    try:
        cv, apiserver = await asyncio.gather(kube.get_cluster_version(), _apiserver(kube))
    except KubeError as exc:
        raise StepFailed(f"could not read the cluster version: {exc}", retryable=True,
                         next_action=f"Check the API with `/etcd-status {ctx.cluster_name}`.") from exc
    version = full_version(cv)
    if not version:
        raise StepFailed("clusterversion/version names no version; a backup without one cannot be matched to a restore",
                         next_action="Check `oc get clusterversion`.")
    installed = installed_at(cv)
    refusal = age_refusal(cluster=ctx.cluster_name, installed=installed, now=datetime.now(UTC))
    if refusal is not None:
        assert refusal.until is not None
        raise StepFailed(refusal.message,
                         next_action=f"Take the backup after {_utc(datetime.fromtimestamp(refusal.until, UTC))}.")
    encrypted = encryption_on(apiserver)
    summary = f"OpenShift {version}; installed {installed:%Y-%m-%d %H:%M} UTC" if installed else f"OpenShift {version}"
    summary += "; etcd encryption ON: the static resources go apart from the snapshot" if encrypted else ""
    return StepResult.of(summary, Prerequisites(version=version, installed_at=installed.timestamp() if installed else None,
                                                encrypted=encrypted))


async def pick_master(ctx: StepContext) -> StepResult:
    hosts = ctx.need_hosts()
    facts = await gather_facts(cluster=ctx.cluster_name, kube=ctx.kube, hosts=hosts)  # type: ignore[arg-type]
    found = candidates(facts, ssh_nodes=hosts.nodes)
    if not found:
        unhealthy = ", ".join(m.name for m in facts.members if not m.healthy) or "unknown"
        raise StepFailed(
            f"no master has a healthy etcd member reachable over SSH (unhealthy: {unhealthy})",
            next_action=f"See `/etcd-status {ctx.cluster_name}`; a backup needs one master with a running etcd.",
            retryable=True,
        )
    skipped = sorted({m.name for m in facts.members} - set(found))
    summary = f"{found[0]} (healthy members: {', '.join(found)})"
    if skipped:
        summary += f"; not used: {', '.join(skipped)}"
    return StepResult.of(summary, PickedMasters(candidates=tuple(found)))


def _pick_plan(ctx: StepContext) -> list[PlannedCommand]:
    return [
        PlannedCommand("api", "oc get etcd cluster; oc get clusterversion; oc get nodes; oc get pods -n openshift-etcd"),
        PlannedCommand("exec etcd-NODE -c etcdctl", "etcdctl member list / endpoint status / endpoint health -w json"),
    ]


ID_RE = re.compile(r"uid=(\d+)\S* gid=(\d+)")


async def _ssh_ids(host: NodeSession) -> tuple[str, str] | CommandResult:
    """The SSH user's uid and gid, from one `id` (`uid=1000(core) gid=1000(core) groups=...`)."""
    result = await host.run(argv=["id"], timeout=COMMAND_TIMEOUT)
    if not result.ok:
        return result
    found = ID_RE.search(result.stdout)
    if found is None:
        return dataclasses.replace(result, rc=1, stderr=f"`id` printed no uid/gid: {result.stdout[:120]!r}")
    return found.group(1), found.group(2)


async def _backup_on(host: NodeSession, *, directory: str, env: Mapping[str, str]) -> tuple[HostFiles, str] | str:
    """The script on one master; the files it made, or why not (after removing what it left).
    The SSH user is `core`: the script, the chown and the listing of root's files go through sudo."""
    ids = await _ssh_ids(host)
    if isinstance(ids, CommandResult):
        return _fail_text(ids)
    cleared = await host.change(argv=clear_dir_command(directory), timeout=COMMAND_TIMEOUT)
    if not cleared.ok:
        return _fail_text(cleared)
    last = script = await host.change(argv=backup_script_command(directory=directory, env=env), timeout=SCRIPT_TIMEOUT)
    if script.ok:  # the chown and the listing (through sudo: it reads root's names) at once
        owned, listed = await asyncio.gather(
            host.change(argv=own_command(directory=directory, uid=ids[0], gid=ids[1]), timeout=COMMAND_TIMEOUT),
            host.run(argv=listing_command(directory), timeout=COMMAND_TIMEOUT))
        last = listed if owned.ok else owned
        if last.ok:
            try:
                return parse_listing(last.stdout), script.stdout
            except ValueError as exc:
                failure = str(exc)
        else:
            failure = _fail_text(last)
    else:
        failure = _fail_text(script)
    if last.rc is not None:  # the master answers: leave nothing half made behind
        await host.change(argv=clear_dir_command(directory), timeout=COMMAND_TIMEOUT)
    return failure


async def run_backup_script(ctx: StepContext) -> StepResult:
    """On the first candidate that works: clear the run directory, run the script, own and list
    the files. A master that does not answer, or whose script fails, hands over to the next one."""
    hosts = ctx.need_hosts()
    kube = ctx.need_kube()
    try:
        env = proxy_env(await kube.get_proxy())
    except KubeError as exc:
        raise StepFailed(f"could not read proxy/cluster: {exc}", retryable=True) from exc
    directory = host_dir(ctx.run_id)
    errors: list[str] = []
    for node in ctx.result(S_PICK, PickedMasters).candidates:
        await ctx.heartbeat(f"running cluster-backup.sh on {node}" + (f" (after: {'; '.join(errors)})" if errors else ""))
        started = time.time()
        async with hosts.session(node) as host:
            outcome = await _backup_on(host, directory=directory, env=env)
        if isinstance(outcome, str):
            errors.append(f"{node}: {outcome}")
            continue
        files, output = outcome
        moved = f" (moved on from {'; '.join(errors)})" if errors else ""
        return StepResult.of(
            f"on {node}: {files.snapshot} ({human_size(files.snapshot_size)}), {files.resources}{moved}",
            ScriptOutput(host=node, dir=directory, snapshot=files.snapshot, snapshot_size=files.snapshot_size,
                         resources=files.resources, resources_size=files.resources_size, started_at=started,
                         moved_from=tuple(errors)),
            output=output[-3000:],
        )
    raise StepFailed(
        "the backup script did not succeed on any healthy master: " + "; ".join(errors),
        next_action=f"Check the masters with `/etcd-status {ctx.cluster_name}`, then start `/etcd-backup` again.",
    )


def _script_plan(ctx: StepContext) -> list[PlannedCommand]:
    node = str(ctx.parameters.get("master") or "FIRST-HEALTHY-MASTER")
    directory = _plan_dir(ctx)
    env = {"HTTP_PROXY": "FROM-PROXY-CLUSTER", "HTTPS_PROXY": "FROM-PROXY-CLUSTER", "NO_PROXY": "FROM-PROXY-CLUSTER"} \
        if ctx.parameters.get("proxy") == "on" else {}
    target = f"ssh core@{node}"
    return [
        PlannedCommand("api", "oc get proxy cluster -o json"),
        PlannedCommand(target, "id"),
        PlannedCommand(target, shell_command(["sudo", "rm", "-rf", "--", directory])),
        PlannedCommand(target, " ".join(backup_script_command(directory=directory, env=env))),
        PlannedCommand(target, shell_command(["sudo", "chown", "-R", "UID:GID", directory])),
        PlannedCommand(target, shell_command(listing_command(directory))),
        PlannedCommand("(other healthy masters)", "the same, in order, if this master does not answer or the script fails"),
    ]


def _plan_dir(ctx: StepContext) -> str:
    """The run directory a plan names (a dry run has no run id yet)."""
    if ctx.run_id == "dry-run" or not RUN_ID_RE.fullmatch(ctx.run_id):
        return f"{HOST_BACKUP_ROOT}/RUN-ID"
    return host_dir(ctx.run_id)


@dataclass(frozen=True)
class HostChecks:
    """What the master said of its copy: `etcdctl snapshot status` and `sha256sum` of both files."""

    status: SnapshotStatus
    sha256: dict[str, str]


async def _check_on_host(hosts: Any, made: ScriptOutput) -> HostChecks:
    """`snapshot status` and `sha256sum` on the master, both at once on one connection. Raises
    StepFailed (retryable) when the master does not answer, ValueError when a check fails."""
    async with hosts.session(made.host) as host:
        status_run = await host.run(argv=["true"], timeout=COMMAND_TIMEOUT)  # connect once, then both at once
        if status_run.ok:
            status_run, sums_run = await asyncio.gather(
                host.run(argv=snapshot_status_command(made.snapshot_path), timeout=SCRIPT_TIMEOUT),
                host.run(argv=sha256_command(made.snapshot_path, made.resources_path), timeout=SCRIPT_TIMEOUT),
            )
        else:
            sums_run = status_run
    if status_run.rc is None or sums_run.rc is None:
        raise StepFailed(f"{made.host} did not answer: {_fail_text(status_run if status_run.rc is None else sums_run)}",
                         retryable=True, next_action="Check the master, then start `/etcd-backup` again.")
    if not status_run.ok:
        raise ValueError(_fail_text(status_run))
    status = parse_snapshot_status(status_run.stdout)
    if status.total_keys <= 0 or status.revision <= 0:
        raise ValueError(f"the snapshot holds {status.total_keys} keys at revision {status.revision}")
    sums = parse_sha256sum(sums_run.stdout)
    if not sums_run.ok or any(n not in sums for n in (made.snapshot, made.resources)):
        raise ValueError(f"sha256sum failed: {_fail_text(sums_run)}")
    return HostChecks(status=status, sha256=sums)


async def _download(ctx: StepContext, made: ScriptOutput, target: Any) -> dict[str, tuple[str, Received]]:
    """Both files off the master over SFTP into the store's incoming directory, hashed as they
    arrive: file name -> (role, what arrived). Raises HostCopyError."""
    hosts, store = ctx.need_hosts(), _store(ctx)[0]
    arrived: dict[str, tuple[str, Received]] = {}
    for path, size, dest_dir, role in ((made.snapshot_path, made.snapshot_size, target.snapshot_dir, "snapshot"),
                                       (made.resources_path, made.resources_size, target.resources_dir, "resources")):
        name = path.rsplit("/", 1)[-1]
        await ctx.heartbeat(f"copying {name} ({human_size(size)}) from {made.host}; the master checks it meanwhile")
        chunks = hosts.download(node=made.host, path=path, chunk_size=CHUNK, read_ahead=store.read_ahead)
        arrived[name] = (role, await store.receive(chunks=chunks, dest=dest_dir / name))
    return arrived


async def copy_off_host(ctx: StepContext) -> StepResult:
    """The copy and the master's checks at once: `snapshot status` and `sha256sum` run on the
    master while the files stream off it (each is a full read of the snapshot; one after the other
    they cost as much as the copy again). Nothing counts until all three are done: the snapshot
    must be valid, and each file must arrive with the size and sha256 the master computed. Any
    failure discards what arrived; a snapshot that fails its check is removed from the master too."""
    hosts = ctx.need_hosts()
    store, _catalogue = _store(ctx)
    made = ctx.result(S_SCRIPT, ScriptOutput)
    encrypted = ctx.result(S_PREREQS, Prerequisites).encrypted
    node = made.host
    sizes = {made.snapshot: made.snapshot_size, made.resources: made.resources_size}
    try:
        store.check_space(needed=sum(sizes.values()))
    except StoreError as exc:
        raise StepFailed(f"{exc}. Nothing was copied.",
                         next_action="Free space in the backup store (or enlarge it), then start `/etcd-backup` again.") from exc
    target = store.prepare(run_id=ctx.run_id, encrypted=encrypted)
    checks_task = asyncio.ensure_future(_check_on_host(hosts, made))
    try:
        try:
            arrived = await _download(ctx, made, target)
        except HostCopyError as exc:
            raise StepFailed(
                f"{exc}. The partial copy was deleted; nothing was stored",
                retryable=True,
                next_action=(f"The files are still on {node} in {made.dir}. Check SSH to {node} with "
                             f"`/etcd-status {ctx.cluster_name}` and start `/etcd-backup` again."),
            ) from exc
        try:
            checks = await checks_task
        except ValueError as exc:
            await hosts.change(node=node, argv=clear_dir_command(made.dir), timeout=COMMAND_TIMEOUT)
            raise StepFailed(
                f"the snapshot on {node} failed verification: {exc}",
                next_action=(f"The copy on {node} ({made.dir}) was removed and nothing was stored. Check etcd with "
                             f"`/etcd-status {ctx.cluster_name}` and start `/etcd-backup` again; it will pick a "
                             "healthy master."),
            ) from exc
        copied: dict[str, CopiedFile] = {}
        for name, (role, got) in arrived.items():
            if got.size != sizes[name] or got.sha256 != checks.sha256[name]:
                raise StepFailed(
                    f"{name} arrived with sha256 {got.sha256[:16]}… ({got.size} bytes); the master's sha256sum "
                    f"says {checks.sha256[name][:16]}… ({sizes[name]} bytes)",
                    retryable=True, next_action="Nothing was stored. Start `/etcd-backup` again.",
                )
            copied[name] = CopiedFile(role=role, size=got.size, sha256=got.sha256)
    except BaseException:
        checks_task.cancel()
        await asyncio.gather(checks_task, return_exceptions=True)
        store.discard(run_id=ctx.run_id)
        raise
    status = checks.status
    verified = VerifiedSnapshot(hash=status.hash, revision=status.revision, total_keys=status.total_keys,
                                total_size=status.total_size, sha256={n: checks.sha256[n] for n in sizes})
    total = sum(c.size for c in copied.values())
    return StepResult.of(
        f"{len(copied)} files, {human_size(total)}, sha256 match the master's; snapshot hash {status.hash}, "
        f"revision {status.revision}, {status.total_keys} keys",
        CopiedFiles(files=copied, encrypted=encrypted, verified=verified),
    )


def _copy_plan(ctx: StepContext) -> list[PlannedCommand]:
    node = str(ctx.parameters.get("master") or "THE-MASTER")
    root = ctx.store.root if ctx.store is not None else "BACKUP-DIR"
    return [
        PlannedCommand("bot", f"check free space in {root} (needs the files' size + 20%)"),
        PlannedCommand(f"ssh core@{node}", "sudo etcdctl snapshot status DIR/snapshot_TS.db -w json  # during the copy"),
        PlannedCommand(f"ssh core@{node}", "sudo sha256sum DIR/snapshot_TS.db DIR/static_kuberesources_TS.tar.gz  "
                                           "# during the copy"),
        PlannedCommand(f"sftp core@{node}", "read DIR/snapshot_TS.db and DIR/static_kuberesources_TS.tar.gz "
                                            f"in 1 MiB chunks into {root}/.incoming/RUN-ID, sha256 while streaming"),
    ]


async def record_metadata(ctx: StepContext) -> StepResult:
    store, catalogue = _store(ctx)
    made = ctx.result(S_SCRIPT, ScriptOutput)
    copied = ctx.result(S_COPY, CopiedFiles)
    verified = copied.verified or ctx.result(S_VERIFY, VerifiedSnapshot)
    backup_id = new_backup_id(run_id=ctx.run_id, at=made.started_at)
    final = store.placement(cluster=ctx.cluster_name, backup_id=backup_id, encrypted=copied.encrypted)
    files = []
    for name, info in sorted(copied.files.items()):
        where = final.snapshot_dir if info.role == "snapshot" else final.resources_dir
        files.append(StoredFile(name=name, role=info.role, size=info.size, sha256=info.sha256, path=str(where / name)))
    record = BackupRecord(
        id=backup_id, cluster=ctx.cluster_name, version=ctx.result(S_PREREQS, Prerequisites).version,
        revision=verified.revision, total_keys=verified.total_keys, snapshot_hash=verified.hash,
        snapshot_size=verified.total_size, files=tuple(files), host=made.host, started_at=made.started_at,
        finished_at=time.time(), run_id=ctx.run_id, requester=ctx.requester,
        verified=all(info.sha256 == verified.sha256.get(name) for name, info in copied.files.items()),
        encrypted=copied.encrypted, host_dir=made.dir,
    )
    try:
        placed = store.commit(record=record, encrypted=copied.encrypted)
    except OSError as exc:
        store.discard(run_id=ctx.run_id)
        raise StepFailed(f"could not move the verified files into place: {exc}",
                         next_action="Check the backup store, then start `/etcd-backup` again.") from exc
    await catalogue.add(record)
    where = f"{placed.snapshot_dir}" + (f" (static resources apart, in {placed.resources_dir})" if placed.apart else "")
    return StepResult.of(f"backup `{backup_id}` of OpenShift {record.version}, revision {record.revision}: {where}",
                         RecordedBackup(backup_id=backup_id, path=str(placed.snapshot_dir)))


def _record_plan(ctx: StepContext) -> list[PlannedCommand]:
    root = ctx.store.root if ctx.store is not None else "BACKUP-DIR"
    keys_dir = ctx.store.keys if ctx.store is not None else "KEYS-DIR"
    keys = f"; the tarball into {keys_dir} (etcd encryption is on)" if ctx.parameters.get("encrypted") == "yes" else ""
    return [PlannedCommand("bot", f"metadata.json, rename into {root}/{ctx.cluster_name}/BACKUP-ID{keys}; "
                                  "catalogue entry in Redis")]


async def clean_host(ctx: StepContext) -> StepResult:
    hosts = ctx.need_hosts()
    made = ctx.result(S_SCRIPT, ScriptOutput)
    result = await hosts.change(node=made.host, argv=clear_dir_command(made.dir), timeout=COMMAND_TIMEOUT)
    if not result.ok:
        raise StepFailed(f"could not remove {made.dir} on {made.host}: {_fail_text(result)}", retryable=True,
                         next_action=f"The backup is stored and verified; remove {made.dir} on {made.host} by hand.")
    return StepResult(summary=f"removed {made.dir} on {made.host}")


def _clean_plan(ctx: StepContext) -> list[PlannedCommand]:
    node = str(ctx.parameters.get("master") or "THE-MASTER")
    return [PlannedCommand(f"ssh core@{node}", shell_command(clear_dir_command(_plan_dir(ctx))))]


async def stored_record(ctx: StepContext, backup_id: str) -> BackupRecord:
    """A backup of this cluster, from the catalogue, else from the store on disk (the truth)."""
    store, catalogue = _store(ctx)
    record = await catalogue.get(backup_id)
    if record is None or record.cluster != ctx.cluster_name:
        record = next((r for r in await asyncio.to_thread(store.records, cluster=ctx.cluster_name) if r.id == backup_id),
                      None)
    if record is None:
        raise StepFailed(f"there is no backup `{backup_id}` of `{ctx.cluster_name}` in the store",
                         next_action=f"`/etcd-backups {ctx.cluster_name}` lists the stored backups.")
    return record


async def prove_backup(ctx: StepContext, record: BackupRecord) -> StepResult:
    """The restore drill of one stored backup, recorded beside it; a failed drill fails the step."""
    store, catalogue = _store(ctx)
    await ctx.heartbeat(f"restore drill of `{record.id}`: snapshot restored into a scratch etcd on the bot")
    try:
        outcome = await store.prove(record, by=ctx.run_id)
    except StoreError as exc:
        raise StepFailed(str(exc), next_action="Set ETCDBOT_DRILL_DIR and restart the bot.") from exc
    await catalogue.record_drill(store=store, record=record, outcome=outcome, asked_by=ctx.requester)
    if not outcome.ok:
        raise StepFailed(
            f"backup `{record.id}` FAILED its restore drill: {outcome.error}. It is stored, but not drilled: "
            "do not count on it for a restore",
            next_action=(f"Take a new backup with `/etcd-backup {ctx.cluster_name}`; check it with "
                         f"`/etcd-backup-verify <id>`. If drills keep failing, see docs/runbooks/etcd-backup.md."),
        )
    return StepResult.of(
        f"backup `{record.id}` restores: {outcome.summary()}",
        DrilledBackup(backup_id=record.id, ok=True, seconds=outcome.seconds, revision=outcome.revision,
                      keys=outcome.keys),
    )


async def drill_backup(ctx: StepContext) -> StepResult:
    record = await stored_record(ctx, ctx.result(S_RECORD, RecordedBackup).backup_id)
    return await prove_backup(ctx, record)


def drill_plan(ctx: StepContext, *, backup: str = "BACKUP-ID") -> list[PlannedCommand]:
    work = ctx.settings.drill_dir
    return [
        PlannedCommand("bot", f"sha256 of {backup}'s files in the store against its metadata"),
        PlannedCommand("bot", f"etcdctl snapshot restore snapshot_TS.db --data-dir {work}/drill-XXXX/etcd"),
        PlannedCommand("bot", "etcd on 127.0.0.1 (free ports) over that directory; etcdctl get: revision, "
                              "key count, the ClusterVersion object; etcd stopped, the directory removed"),
        PlannedCommand("bot", f"the drill's time, result and duration written to {backup}'s metadata.json "
                              "and the catalogue"),
    ]


def _drill_plan(ctx: StepContext) -> list[PlannedCommand]:
    return drill_plan(ctx)


def retention_rules(ctx: StepContext) -> RetentionRules:
    kept = ctx.settings.retention_of(ctx.cluster)
    return RetentionRules(last=kept.last, daily=kept.daily, weekly=kept.weekly, monthly=kept.monthly)


async def apply_retention(ctx: StepContext) -> StepResult:
    store, catalogue = _store(ctx)
    rules = retention_rules(ctx)
    if not rules.enabled:
        return StepResult.of("retention is off (ETCDBOT_BACKUP_RETENTION): nothing deleted", Pruned(deleted=(), kept=0))
    version = ctx.result(S_PREREQS, Prerequisites).version
    plan = await plan_prune(store=store, catalogue=catalogue, cluster=ctx.cluster_name, rules=rules,
                            current_version=version, timezone=ctx.cluster.timezone)
    deleted = await apply_prune(plan, store=store, catalogue=catalogue, actor=ctx.requester or "retention",
                                run_id=ctx.run_id)
    names = ", ".join(f"`{r.id}`" for r in deleted)
    summary = f"deleted {len(deleted)} ({names})" if deleted else "nothing to delete"
    return StepResult.of(f"{summary}; {len(plan.kept)} kept ({rules_text(rules)})",
                         Pruned(deleted=tuple(r.id for r in deleted), kept=len(plan.kept)))


def _retention_plan(ctx: StepContext) -> list[PlannedCommand]:
    root = ctx.store.root if ctx.store is not None else "BACKUP-DIR"
    rules = retention_rules(ctx)
    if not rules.enabled:
        return [PlannedCommand("bot", "retention is off (ETCDBOT_BACKUP_RETENTION): nothing is deleted")]
    return [PlannedCommand("bot", f"keep {rules_text(rules)}, the newest drilled backup, the newest of this "
                                  f"version and any a run uses; delete the rest from {root}/{ctx.cluster_name} "
                                  "(each deletion in the audit stream); `/etcd-backups prune --dry-run` lists them")]


def _prereq_plan(_ctx: StepContext) -> list[PlannedCommand]:
    return [PlannedCommand("api", "oc get clusterversion version -o json; oc get apiserver cluster -o json")]


# Every step is safe to repeat (Resume after a crash mid-step): the script step clears its run
# directory first, the copy step starts from an empty temporary directory, recording is
# idempotent, and removing a removed directory is a no-op.
STEPS: tuple[Step, ...] = (
    Step(S_PREREQS, "Check the prerequisites: 24 h after installation, the cluster version, etcd encryption",
         StepKind.READ, check_prerequisites, _prereq_plan, timeout=60, retries=2, safe_to_repeat=True),
    Step(S_PICK, "Pick one master with a running, healthy etcd member", StepKind.READ, pick_master, _pick_plan,
         timeout=90, retries=1, safe_to_repeat=True),
    Step(S_SCRIPT, "Run cluster-backup.sh /home/core/assets/backup on that master", StepKind.CHANGE,
         run_backup_script, _script_plan, timeout=SCRIPT_TIMEOUT * 3 + 60, safe_to_repeat=True),
    Step(S_COPY, "Copy both files off the host into the backup store, checksummed, while the master verifies "
         "the snapshot (etcdctl snapshot status, sha256sum)", StepKind.CHANGE,
         copy_off_host, _copy_plan, timeout=3600, retries=2, safe_to_repeat=True),
    Step(S_RECORD, "Record the backup: version, revision, keys, size, sha256", StepKind.CHANGE, record_metadata,
         _record_plan, timeout=60, safe_to_repeat=True),
    Step(S_CLEAN, "Remove the backup files from the master", StepKind.CHANGE, clean_host, _clean_plan,
         timeout=COMMAND_TIMEOUT + 10, retries=2, safe_to_repeat=True),
    # The bot's own: prove the backup restores (on the bot, no cluster touched), then retention.
    Step(S_DRILL, "Prove the backup restores: a restore drill into a scratch etcd on the bot", StepKind.READ,
         drill_backup, _drill_plan, timeout=DRILL_STEP_TIMEOUT, safe_to_repeat=True),
    Step(S_RETENTION, "Apply the retention rules to the backup store", StepKind.CHANGE, apply_retention,
         _retention_plan, timeout=300, safe_to_repeat=True),
)


def build(_parameters: Mapping[str, Any] | None = None) -> Procedure:
    """The chapter 1 procedure. It takes no parameters: the store and catalogue come with the
    step context, the master is picked by a step."""
    return Procedure(name=NAME, title=TITLE, chapter="1", steps=STEPS, admission=admission, preview=preview)


register(NAME, build, title=TITLE, command="/etcd-backup",
         summary="take an etcd backup from one healthy master (Ch.1)")
