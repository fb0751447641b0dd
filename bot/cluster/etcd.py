"""etcd of one cluster, through etcdctl, where the document runs it: in an etcd pod, else on a master.

The document runs `etcdctl` in the `etcdctl` container of a healthy etcd pod (`oc rsh -n
openshift-etcd etcd-<node>`), and, when the API is gone, on a master with the certificates of
the etcd static pod. `Etcd` does the same: it finds a place where `etcdctl member list` answers
(a Running etcd pod, those on Ready nodes first, none on `avoid_nodes`; then each master over SSH
with the `ETCDCTL_*` environment of its `etcd-pod.yaml`), keeps that place for the calls that
follow (so a `member remove` runs where the `member list` before it ran), and returns typed values
parsed from `-w json`.

Why per endpoint: `etcdctl endpoint status --cluster` asks the members one after another, each
with the full command timeout, so one dead member held up the whole answer for seconds. Here
each member gets its own short etcdctl call (`ETCDCTL_ENDPOINTS` set to that one member: etcdctl
3.4 refuses an `--endpoints` flag beside the variable), all at once, each bounded by short dial
and command timeouts: a dead or frozen member is marked ("no answer within 2.0s"), not waited on.

What it does not do: decide anything (procedures do), or retry a `member remove` (a destructive
call is the runner's to gate and repeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bot.cluster import etcdctl
from bot.cluster.etcdctl import EndpointHealth, EndpointStatus, EtcdctlParseError, MemberList
from bot.cluster.hosts import (
    Hosts,
    etcdctl_env_from_manifest,
    host_etcdctl_command,
    read_manifest_command,
)
from bot.cluster.kube import KubeClient

Fence = Callable[[], Awaitable[None]]
ETCDCTL_CONTAINER = "etcdctl"


class EtcdUnavailable(Exception):
    """No place could run etcdctl (no usable pod, no master answering), or the chosen place stopped."""


class EtcdctlFailed(Exception):
    """etcdctl ran and refused, or did not finish: `rc` None means no answer within the limit."""

    def __init__(self, message: str, *, rc: int | None) -> None:
        super().__init__(message)
        self.rc = rc


@dataclass(frozen=True)
class EtcdTimeouts:
    """Seconds. etcdctl's own limits (`dial`, `command`) plus `margin` for the exec or SSH round
    trip and etcdctl's start make one call's limit; `remove` is the command limit of `member
    remove` (a raft commit, not a read)."""

    # A live member answers a status or a health check in tens of milliseconds even on a loaded
    # machine (measured: under 50 ms at load 14 on 2 cores); a dead or frozen one costs about
    # these limits, so they are what a fault adds to a status.
    dial: float = 0.7
    command: float = 0.7
    margin: float = 1.0
    remove: float = 5.0
    manifest: float = 3.0

    @property
    def call(self) -> float:
        return self.dial + self.command + self.margin

    @property
    def flags(self) -> list[str]:
        return etcdctl.timeout_flags(dial=self.dial, command=self.command)


DEFAULT_ETCD_TIMEOUTS = EtcdTimeouts()


@dataclass(frozen=True)
class Ran:
    """What one etcdctl run did; rc None when it never finished (no connection, no answer in time)."""

    rc: int | None
    stdout: str
    stderr: str
    elapsed: float = 0.0


@dataclass(frozen=True)
class EndpointFailure:
    """A member whose endpoint gave no status: why, and how long we gave it."""

    endpoint: str
    error: str
    elapsed: float = 0.0


@dataclass(frozen=True)
class EndpointStatuses:
    answered: tuple[EndpointStatus, ...]
    failed: tuple[EndpointFailure, ...] = ()


@dataclass(frozen=True)
class EtcdSurvey:
    """Member list, then the status and health of every started member: what `/etcd-status` shows."""

    members: MemberList
    statuses: EndpointStatuses
    health: tuple[EndpointHealth, ...]
    via: str


class Place(Protocol):
    """Somewhere etcdctl runs: `where` reads "exec in etcd-<node>" or "SSH on <node>"."""

    node: str

    @property
    def where(self) -> str: ...

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The members' client URLs this place was configured with (ETCDCTL_ENDPOINTS): a hint
        that lets a survey ask them while `member list` is still on its way."""
        ...

    async def etcdctl(self, argv: Sequence[str], *, endpoints: str | None, timeout: float) -> Ran: ...


@dataclass
class PodPlace:
    """The `etcdctl` container of an etcd pod (its env holds the certificates and all endpoints)."""

    kube: KubeClient
    pod: str
    node: str
    hint: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"exec in {self.pod}"

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self.hint

    async def etcdctl(self, argv: Sequence[str], *, endpoints: str | None, timeout: float) -> Ran:
        command = ["env", f"ETCDCTL_ENDPOINTS={endpoints}", *argv] if endpoints else list(argv)
        started = time.monotonic()
        try:
            result = await self.kube.exec(pod=self.pod, container=ETCDCTL_CONTAINER, argv=command, timeout=timeout)
        except Exception as exc:  # KubeError, a timeout: this place gave no answer, a fact to report
            return Ran(None, "", str(exc) or type(exc).__name__, time.monotonic() - started)
        stderr = result.stderr if result.returncode is not None else (result.stderr or f"no answer within {timeout:.1f}s")
        return Ran(result.returncode, result.stdout, stderr, result.elapsed)


@dataclass
class HostPlace:
    """A master over SSH, with the etcdctl container's `ETCDCTL_*` env read from its etcd-pod.yaml."""

    hosts: Hosts
    node: str
    env: Mapping[str, str]

    @property
    def where(self) -> str:
        return f"SSH on {self.node}"

    @property
    def endpoints(self) -> tuple[str, ...]:
        return split_endpoints(self.env.get("ETCDCTL_ENDPOINTS", ""))

    async def etcdctl(self, argv: Sequence[str], *, endpoints: str | None, timeout: float) -> Ran:
        env = {**self.env, **({"ETCDCTL_ENDPOINTS": endpoints} if endpoints else {})}
        result = await self.hosts.run(node=self.node, argv=host_etcdctl_command(env=env, etcdctl_argv=argv),
                                      timeout=timeout)
        return Ran(result.rc, result.stdout, result.stderr or (result.error or ""), result.elapsed)


def usable_pods(pods: Iterable[Mapping[str, Any]], *, not_ready: Iterable[str] = (),
                avoid: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(pod, node) of the etcd pods where `oc rsh` would work: phase Running, the etcdctl container
    running, not crashlooping, not on `avoid`; those on Ready nodes first. Pure (unit-tested)."""
    late, skip = set(not_ready), set(avoid)
    found = []
    for pod in pods:
        name = str(pod.get("metadata", {}).get("name", ""))
        node = str(pod.get("spec", {}).get("nodeName") or name.removeprefix("etcd-"))
        status = pod.get("status") or {}
        if not name or node in skip or status.get("phase") != "Running":
            continue
        containers = {c.get("name"): c for c in status.get("containerStatuses") or []}
        waiting = [c for c in containers.values() if "waiting" in (c.get("state") or {})]
        if any((c.get("state", {}).get("waiting") or {}).get("reason") == "CrashLoopBackOff" for c in waiting):
            continue
        tool = containers.get(ETCDCTL_CONTAINER)
        if tool is not None and "running" not in (tool.get("state") or {}):
            continue
        etcd_running = "running" in ((containers.get("etcd") or {}).get("state") or {})
        found.append(((node in late, not etcd_running, node), (name, node)))
    return [pod for _, pod in sorted(found)]


def split_endpoints(value: str) -> tuple[str, ...]:
    """'https://a:2379,https://b:2379' -> the well-formed URLs (they go into an environment variable)."""
    return tuple(e.strip() for e in value.split(",") if etcdctl.ENDPOINT_RE.fullmatch(e.strip()))


def pod_endpoints(pod: Mapping[str, Any]) -> tuple[str, ...]:
    """ETCDCTL_ENDPOINTS of an etcd pod's etcdctl container, as the pod spec holds it."""
    for container in pod.get("spec", {}).get("containers") or []:
        if container.get("name") == ETCDCTL_CONTAINER:
            for env in container.get("env") or []:
                if env.get("name") == "ETCDCTL_ENDPOINTS":
                    return split_endpoints(str(env.get("value") or ""))
    return ()


def not_ready_nodes(nodes: Iterable[Mapping[str, Any]]) -> set[str]:
    """Master nodes with the unreachable taint or a Ready condition other than True."""
    result = set()
    for node in nodes:
        taints = {t.get("key") for t in node.get("spec", {}).get("taints") or []}
        conditions = node.get("status", {}).get("conditions") or []
        ready = next((c.get("status") for c in conditions if c.get("type") == "Ready"), "Unknown")
        if "node.kubernetes.io/unreachable" in taints or ready != "True":
            result.add(str(node.get("metadata", {}).get("name", "")))
    return result


def _reason(ran: Ran, *, timeout: float) -> str:
    """The line a person needs from etcdctl's noise (its zap warnings come as JSON lines)."""
    if ran.rc is None:
        return ran.stderr.strip().splitlines()[-1][:200] if ran.stderr.strip() else f"no answer within {timeout:.1f}s"
    lines = [line for line in ran.stderr.strip().splitlines() if line and not line.startswith("{")]
    for line in reversed(lines):
        if "Failed to get the status" in line or line.startswith("Error:"):
            return line.strip()[:200]
    return (lines[-1] if lines else ran.stdout.strip() or f"etcdctl exited {ran.rc}")[:200]


class Etcd:
    """etcd of one cluster. Construct per use (a status, a procedure's step); it keeps the place
    that answered first. `pods` (pod, node) in the order to try skips listing them (the status
    has them already), with `endpoints_hint` their ETCDCTL_ENDPOINTS; `ssh_nodes` is the order of
    masters to try over SSH (default: all)."""

    def __init__(self, *, kube: KubeClient | None, hosts: Hosts | None, avoid_nodes: Iterable[str] = (),
                 pods: Sequence[tuple[str, str]] | None = None, endpoints_hint: Sequence[str] = (),
                 ssh_nodes: Sequence[str] | None = None, timeouts: EtcdTimeouts = DEFAULT_ETCD_TIMEOUTS) -> None:
        self._kube = kube
        self._hosts = hosts
        self._avoid = frozenset(avoid_nodes)
        self._pods = list(pods) if pods is not None else None
        self._hint = tuple(e for e in endpoints_hint if etcdctl.ENDPOINT_RE.fullmatch(e))
        self._ssh_nodes = list(ssh_nodes) if ssh_nodes is not None else None
        self.timeouts = timeouts
        self._place: Place | None = None
        self._lock = asyncio.Lock()

    @property
    def via(self) -> str:
        """Where etcdctl runs ("exec in etcd-<node>", "SSH on <node>"); empty until one answered."""
        return self._place.where if self._place else ""

    # ---- the verbs ---------------------------------------------------------------------------

    async def member_list(self) -> MemberList:
        """`etcdctl member list`: in the place already chosen, else the first place that answers."""
        async with self._lock:
            errors: list[str] = []
            async with contextlib.aclosing(self._places(errors)) as places:
                async for place in places:
                    found = await self._list_at(place, errors)
                    if found is not None:
                        self._place = place
                        return found
            raise EtcdUnavailable("; ".join(errors) or "no Running etcd pod and no master over SSH to run etcdctl")

    async def member_remove(self, member_id: str, *, fence: Fence) -> MemberList:
        """`etcdctl member remove <id>` (hex, as `member list` prints it), in the place the last
        member list ran (never on `avoid_nodes`); `fence()` is awaited just before, and raises
        when the run no longer holds its cluster. Returns the members left. Not retried: with
        rc None the removal may or may not have happened, and the message says to list again."""
        argv = etcdctl.member_remove_command(
            member_id, flags=etcdctl.timeout_flags(dial=self.timeouts.dial, command=self.timeouts.remove))
        if self._place is None:
            await self.member_list()
        place = self._require_place()
        await fence()
        limit = self.timeouts.dial + self.timeouts.remove + self.timeouts.margin
        ran = await place.etcdctl(argv, endpoints=None, timeout=limit)
        if ran.rc is None:
            raise EtcdctlFailed(f"member remove {member_id} gave no answer ({place.where}): {_reason(ran, timeout=limit)};"
                                " list the members to see whether it is gone", rc=None)
        if ran.rc != 0:
            raise EtcdctlFailed(f"member remove {member_id} failed ({place.where}): {_reason(ran, timeout=limit)}",
                                rc=ran.rc)
        return etcdctl.parse_member_list(ran.stdout)

    async def endpoint_status(self, members: MemberList | None = None) -> EndpointStatuses:
        """`endpoint status` of every started member, one call each, all at once."""
        if members is None or self._place is None:
            listed = await self.member_list()
            members = members or listed
        found = await self._statuses(self._require_place(), _endpoints(members))
        return _statuses_in_order(found, _endpoints(members))

    async def endpoint_health(self, members: MemberList | None = None) -> tuple[EndpointHealth, ...]:
        """`endpoint health` of every started member: one etcdctl call that checks them all at once
        (etcdctl 3.4 checks endpoints side by side, each bounded by the dial and command timeouts);
        one entry per member, a member that gave no answer is unhealthy with the reason."""
        if members is None or self._place is None:
            listed = await self.member_list()
            members = members or listed
        endpoints = _endpoints(members)
        found = await self._health(self._require_place(), endpoints)
        return tuple(found[ep] for ep in endpoints)

    async def survey(self) -> EtcdSurvey:
        """Member list, status and health of every member. The members the place's
        ETCDCTL_ENDPOINTS names are asked while `member list` runs; a member it does not name
        (added since) is asked after; a named one that is no member is left out."""
        async with self._lock:
            errors: list[str] = []
            async with contextlib.aclosing(self._places(errors)) as places:
                async for place in places:
                    found = await self._survey_at(place, errors)
                    if found is not None:
                        return found
            raise EtcdUnavailable("; ".join(errors) or "no Running etcd pod and no master over SSH to run etcdctl")

    async def _survey_at(self, place: Place, errors: list[str]) -> EtcdSurvey | None:
        """One round trip when the place names the members (its ETCDCTL_ENDPOINTS): member list,
        and status and health of each named member, in one shell; a second one for members it
        did not name (added since)."""
        hint = list(place.endpoints)
        limit = self.timeouts.call
        command = etcdctl.survey_command(endpoints=hint, flags=self.timeouts.flags)
        ran = await _bounded(place.etcdctl(command, endpoints=None, timeout=limit), limit)
        out = etcdctl.parse_survey(ran.stdout)
        if out.members is None:
            errors.append(f"{place.where}: member list: {_reason(ran, timeout=limit)}")
            return None
        self._place = place
        members = out.members
        endpoints = _endpoints(members)
        if out.garbled:
            statuses, health = await self._check(place, endpoints)
        else:
            statuses, health = _answers(out, ran, hint, limit=limit)
            missing = [e for e in endpoints if e not in statuses]
            if missing:
                more_statuses, more_health = await self._check(place, missing)
                statuses, health = {**statuses, **more_statuses}, {**health, **more_health}
        return EtcdSurvey(members=members, statuses=_statuses_in_order(statuses, endpoints),
                          health=tuple(health[e] for e in endpoints), via=place.where)

    # ---- per endpoint ------------------------------------------------------------------------

    async def _check(self, place: Place, endpoints: Sequence[str]
                     ) -> tuple[dict[str, EndpointStatus | EndpointFailure], dict[str, EndpointHealth]]:
        """Status and health of `endpoints`: one shell, or one call each when its output was garbled."""
        if not endpoints:
            return {}, {}
        limit = self.timeouts.call
        command = etcdctl.survey_command(endpoints=endpoints, flags=self.timeouts.flags, member_list=False)
        ran = await _bounded(place.etcdctl(command, endpoints=None, timeout=limit), limit)
        out = etcdctl.parse_survey(ran.stdout)
        if ran.rc is not None and not out.garbled:
            return _answers(out, ran, endpoints, limit=limit)
        return await asyncio.gather(self._statuses(place, endpoints), self._health(place, endpoints))

    async def _statuses(self, place: Place, endpoints: Sequence[str]) -> dict[str, EndpointStatus | EndpointFailure]:
        results = await asyncio.gather(*(self._one_status(place, ep) for ep in endpoints))
        return dict(zip(endpoints, results, strict=True))

    async def _one_status(self, place: Place, endpoint: str) -> EndpointStatus | EndpointFailure:
        limit = self.timeouts.call
        ran = await _bounded(place.etcdctl(etcdctl.endpoint_status_one_command(flags=self.timeouts.flags),
                                           endpoints=endpoint, timeout=limit), limit)
        if ran.rc == 0:
            try:
                found = etcdctl.parse_endpoint_status(ran.stdout)
            except EtcdctlParseError as exc:
                return EndpointFailure(endpoint, str(exc), ran.elapsed)
            if found:
                return found[0]
        return EndpointFailure(endpoint, _reason(ran, timeout=limit), ran.elapsed)

    async def _health(self, place: Place, endpoints: Sequence[str]) -> dict[str, EndpointHealth]:
        if not endpoints:
            return {}
        limit = self.timeouts.call
        ran = await _bounded(place.etcdctl(etcdctl.endpoint_health_one_command(flags=self.timeouts.flags),
                                           endpoints=",".join(endpoints), timeout=limit), limit)
        found: dict[str, EndpointHealth] = {}
        if ran.rc is not None and ran.stdout.strip():
            try:
                found = {h.endpoint: h for h in etcdctl.parse_endpoint_health(ran.stdout)}
            except EtcdctlParseError:
                found = {}
        reason = _reason(ran, timeout=limit) if ran.rc != 0 else "no answer"
        return {ep: found.get(ep) or EndpointHealth(endpoint=ep, healthy=False, took=f"{ran.elapsed:.3f}s", error=reason)
                for ep in endpoints}

    # ---- finding a place --------------------------------------------------------------------

    def _require_place(self) -> Place:
        if self._place is None:
            raise EtcdUnavailable("no place to run etcdctl")
        return self._place

    async def _list_at(self, place: Place, errors: list[str]) -> MemberList | None:
        limit = self.timeouts.call
        ran = await _bounded(place.etcdctl(etcdctl.member_list_command(flags=self.timeouts.flags), endpoints=None,
                                           timeout=limit), limit)
        if ran.rc != 0:
            errors.append(f"{place.where}: member list: {_reason(ran, timeout=limit)}")
            return None
        try:
            return etcdctl.parse_member_list(ran.stdout)
        except EtcdctlParseError as exc:
            errors.append(f"{place.where}: {exc}")
            return None

    async def _places(self, errors: list[str]) -> AsyncIterator[Place]:
        """The place already chosen, then etcd pods, then masters over SSH, lazily (a master's
        manifest is read only when the places before it failed)."""
        tried: set[str] = set()
        if self._place is not None:
            tried.add(self._place.where)
            yield self._place
        for place in await self._pod_places(errors):
            if place.where not in tried:
                yield place
        for node in self._host_nodes():
            if f"SSH on {node}" in tried:
                continue
            known = _MANIFEST_ENVS.get(self._hosts, node)
            if known is not None:
                place = HostPlace(hosts=self._hosts, node=node, env=known)  # type: ignore[arg-type]
                yield place
                if self._place is place:
                    return
                _MANIFEST_ENVS.forget(self._hosts, node)  # it failed: perhaps the manifest changed
            host = await self._host_place(node, errors)
            if host is not None:
                yield host

    async def _pod_places(self, errors: list[str]) -> list[PodPlace]:
        if self._kube is None:
            return []
        kube = self._kube
        if self._pods is None:
            try:
                pods, nodes = await asyncio.gather(kube.list_etcd_pods(), kube.list_master_nodes())
            except Exception as exc:  # no API: the masters over SSH are the way left
                errors.append(f"etcd pods: {exc}")
                return []
            self._pods = usable_pods(pods, not_ready=not_ready_nodes(nodes), avoid=self._avoid)
            self._hint = self._hint or next((h for h in map(pod_endpoints, pods) if h), ())
        return [PodPlace(kube=kube, pod=pod, node=node, hint=self._hint) for pod, node in self._pods
                if node not in self._avoid]

    def _host_nodes(self) -> list[str]:
        if self._hosts is None:
            return []
        order = self._ssh_nodes if self._ssh_nodes is not None else list(self._hosts.nodes)
        return [n for n in order if n not in self._avoid]

    async def _host_place(self, node: str, errors: list[str]) -> HostPlace | None:
        assert self._hosts is not None
        manifest = await self._hosts.run(node=node, argv=read_manifest_command(), timeout=self.timeouts.manifest)
        if not manifest.ok:
            errors.append(f"{node}: {manifest.error or manifest.stderr.strip()[:200] or 'no etcd-pod.yaml'}")
            return None
        try:
            env = etcdctl_env_from_manifest(manifest.stdout)
        except ValueError as exc:
            errors.append(f"{node}: {exc}")
            return None
        _MANIFEST_ENVS.keep(self._hosts, node, env)
        return HostPlace(hosts=self._hosts, node=node, env=env)


class ManifestEnvs:
    """The etcdctl environment read from each master's etcd-pod.yaml, kept for `ttl` seconds per
    `Hosts` (per cluster): without it every status over SSH would spend a round trip reading the
    manifest before etcdctl can start. Safe to keep: the certificates' paths do not change, the
    endpoints are only a hint (member list is the truth), and a place built from a kept
    environment that fails is forgotten and the manifest read again."""

    def __init__(self, *, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self._by_hosts: weakref.WeakKeyDictionary[Any, dict[str, tuple[float, Mapping[str, str]]]] = (
            weakref.WeakKeyDictionary())

    def get(self, hosts: Any, node: str) -> Mapping[str, str] | None:
        found = self._by_hosts.get(hosts, {}).get(node)
        if found is None or time.monotonic() - found[0] > self.ttl:
            return None
        return found[1]

    def keep(self, hosts: Any, node: str, env: Mapping[str, str]) -> None:
        try:
            self._by_hosts.setdefault(hosts, {})[node] = (time.monotonic(), dict(env))
        except TypeError:  # an object that cannot be weakly referenced: not kept
            pass

    def forget(self, hosts: Any, node: str) -> None:
        self._by_hosts.get(hosts, {}).pop(node, None)


_MANIFEST_ENVS = ManifestEnvs()


def _answers(out: etcdctl.SurveyOutput, ran: Ran, endpoints: Sequence[str], *, limit: float
             ) -> tuple[dict[str, EndpointStatus | EndpointFailure], dict[str, EndpointHealth]]:
    """Per endpoint, what a survey shell printed; an endpoint with no line gets the reason etcdctl
    gave on stderr, or 'no answer'."""
    reasons = etcdctl.status_failures(ran.stderr)
    fallback = _reason(ran, timeout=limit) if ran.rc is None else "no answer"
    by_status = {s.endpoint: s for s in out.statuses}
    by_health = {h.endpoint: h for h in out.health}
    statuses: dict[str, EndpointStatus | EndpointFailure] = {
        e: by_status.get(e) or EndpointFailure(e, reasons.get(e, fallback), ran.elapsed) for e in endpoints}
    health = {e: by_health.get(e) or EndpointHealth(endpoint=e, healthy=False, took=f"{ran.elapsed:.3f}s",
                                                    error=reasons.get(e, fallback)) for e in endpoints}
    return statuses, health



def _statuses_in_order(found: Mapping[str, EndpointStatus | EndpointFailure], endpoints: Sequence[str]
                       ) -> EndpointStatuses:
    chosen = [found[e] for e in endpoints if e in found]
    return EndpointStatuses(answered=tuple(r for r in chosen if isinstance(r, EndpointStatus)),
                            failed=tuple(r for r in chosen if isinstance(r, EndpointFailure)))


async def _bounded(call: Awaitable[Ran], limit: float) -> Ran:
    """Our own deadline over the place's: a hung exec or channel is cut, and says so."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit + 0.5):
            return await call
    except TimeoutError:
        return Ran(None, "", f"no answer within {limit:.1f}s", time.monotonic() - started)


def _endpoints(members: MemberList) -> list[str]:
    """Client URLs of the started members, checked: they go into an environment variable."""
    found = []
    for member in members.members:
        endpoint = member.endpoint
        if endpoint and etcdctl.ENDPOINT_RE.fullmatch(endpoint):
            found.append(endpoint)
    return found
