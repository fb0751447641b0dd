"""etcdctl commands and their JSON, as typed values.

The bot reads etcd the way the document does (`etcdctl member list`, `endpoint status`,
`endpoint health`), but with `-w json` so nothing depends on table layout. This module only
builds argument lists and parses output: running them (exec in a pod, or SSH on a host) is the
caller's business, which is why both paths share one parser.

etcd's JSON prints member IDs as decimal uint64; people and the document use hex
(`6fc1e7c9db35841d`, as `-w table` prints), so IDs are converted here once.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Short client-side limits: a dead member must cost seconds, not etcdctl's defaults.
TIMEOUT_FLAGS = ("--dial-timeout=2s", "--command-timeout=4s")


MEMBER_ID_RE = re.compile(r"[0-9a-f]{1,16}")
ENDPOINT_RE = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(?::[0-9]{1,5})?/?")


class EtcdctlParseError(ValueError):
    """etcdctl printed something that is not the JSON it prints on success."""


def timeout_flags(*, dial: float, command: float) -> list[str]:
    """etcdctl's client-side limits, in milliseconds (etcdctl reads Go durations)."""
    return [f"--dial-timeout={max(1, round(dial * 1000))}ms", f"--command-timeout={max(1, round(command * 1000))}ms"]


def member_list_command(*, flags: Sequence[str] = TIMEOUT_FLAGS) -> list[str]:
    return ["etcdctl", "member", "list", "-w", "json", *flags]


def member_remove_command(member_id: str, *, flags: Sequence[str] = TIMEOUT_FLAGS) -> list[str]:
    """`etcdctl member remove <hex id>`; the ID is checked here, it is the one value a person chose."""
    if not MEMBER_ID_RE.fullmatch(member_id):
        raise ValueError(f"{member_id!r} is not an etcd member ID (1 to 16 hex digits, as `member list` prints)")
    return ["etcdctl", "member", "remove", member_id, "-w", "json", *flags]


def endpoint_status_one_command(*, flags: Sequence[str] = TIMEOUT_FLAGS) -> list[str]:
    """`endpoint status` of the endpoint(s) in ETCDCTL_ENDPOINTS: the caller sets it to ONE member, since
    etcdctl 3.4 asks endpoints one after another and a dead one would hold up the rest."""
    return ["etcdctl", "endpoint", "status", "-w", "json", *flags]


def endpoint_health_one_command(*, flags: Sequence[str] = TIMEOUT_FLAGS) -> list[str]:
    return ["etcdctl", "endpoint", "health", "-w", "json", *flags]


def endpoint_status_command() -> list[str]:
    return ["etcdctl", "endpoint", "status", "--cluster", "-w", "json", *TIMEOUT_FLAGS]


def endpoint_health_command() -> list[str]:
    return ["etcdctl", "endpoint", "health", "--cluster", "-w", "json", *TIMEOUT_FLAGS]


def member_id_hex(member_id: int) -> str:
    """13668033151171901709 -> 'bdae9bbc11dd390d' (the form `member list -w table` and `member remove` use)."""
    return format(member_id, "x")


@dataclass(frozen=True)
class Member:
    """One line of `member list`. An added-but-unstarted member has no name and no client URLs."""

    id: str
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool = False

    @property
    def started(self) -> bool:
        return bool(self.name)

    @property
    def endpoint(self) -> str | None:
        return self.client_urls[0] if self.client_urls else None


@dataclass(frozen=True)
class MemberList:
    cluster_id: str
    members: tuple[Member, ...]


@dataclass(frozen=True)
class EndpointStatus:
    """One entry of `endpoint status --cluster`: what that member says about itself."""

    endpoint: str
    member_id: str
    leader_id: str
    version: str
    db_size: int
    db_size_in_use: int | None
    revision: int
    raft_term: int
    raft_index: int

    @property
    def is_leader(self) -> bool:
        return self.member_id == self.leader_id


@dataclass(frozen=True)
class EndpointHealth:
    endpoint: str
    healthy: bool
    took: str
    error: str | None = None


def _load(stdout: str, *, what: str) -> Any:
    text = stdout.strip()
    if not text:
        raise EtcdctlParseError(f"{what}: etcdctl printed nothing")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EtcdctlParseError(f"{what}: not JSON ({exc.msg} at character {exc.pos}): {text[:120]!r}") from None


def _mapping(value: Any, *, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise EtcdctlParseError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _list(value: Any, *, what: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise EtcdctlParseError(f"{what}: expected a JSON list, got {type(value).__name__}")
    return value


def parse_member_list(stdout: str) -> MemberList:
    raw = _mapping(_load(stdout, what="member list"), what="member list")
    header = _mapping(raw.get("header", {}), what="member list header")
    members = []
    for item in _list(raw.get("members", []), what="member list members"):
        item = _mapping(item, what="member")
        if "ID" not in item:
            raise EtcdctlParseError("member list: a member without ID")
        members.append(
            Member(
                id=member_id_hex(int(item["ID"])),
                name=str(item.get("name", "")),
                peer_urls=tuple(item.get("peerURLs", ())),
                client_urls=tuple(item.get("clientURLs", ())),
                is_learner=bool(item.get("isLearner", False)),
            )
        )
    return MemberList(cluster_id=member_id_hex(int(header.get("cluster_id", 0))), members=tuple(members))


def parse_endpoint_status(stdout: str) -> tuple[EndpointStatus, ...]:
    """Parses what was printed; etcdctl exits 1 yet prints the reachable endpoints when one is down."""
    result = []
    for item in _list(_load(stdout, what="endpoint status"), what="endpoint status"):
        item = _mapping(item, what="endpoint status entry")
        status = _mapping(item.get("Status", {}), what="endpoint status Status")
        header = _mapping(status.get("header", {}), what="endpoint status header")
        result.append(
            EndpointStatus(
                endpoint=str(item.get("Endpoint", "")),
                member_id=member_id_hex(int(header.get("member_id", 0))),
                leader_id=member_id_hex(int(status.get("leader", 0))),
                version=str(status.get("version", "")),
                db_size=int(status.get("dbSize", 0)),
                db_size_in_use=int(status["dbSizeInUse"]) if "dbSizeInUse" in status else None,
                revision=int(header.get("revision", 0)),
                raft_term=int(status.get("raftTerm", header.get("raft_term", 0))),
                raft_index=int(status.get("raftIndex", 0)),
            )
        )
    return tuple(result)


def parse_endpoint_health(stdout: str) -> tuple[EndpointHealth, ...]:
    result = []
    for item in _list(_load(stdout, what="endpoint health"), what="endpoint health"):
        item = _mapping(item, what="endpoint health entry")
        result.append(
            EndpointHealth(
                endpoint=str(item.get("endpoint", "")),
                healthy=bool(item.get("health", False)),
                took=str(item.get("took", "")),
                error=str(item["error"]) if item.get("error") else None,
            )
        )
    return tuple(result)


def unreachable_endpoints(stderr: str) -> tuple[str, ...]:
    """Endpoints etcdctl names in 'Failed to get the status of endpoint URL (reason)' lines."""
    marker = "Failed to get the status of endpoint "
    found = []
    for line in stderr.splitlines():
        if marker in line:
            found.append(line.split(marker, 1)[1].split(" ", 1)[0])
    return tuple(found)


def human_size(size: int) -> str:
    """Bytes in etcdctl's table units (decimal kB/MB, as `endpoint status -w table` prints `20 kB`)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 10 else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


# ---- one round trip for a whole survey ---------------------------------------------------


def survey_command(*, endpoints: Sequence[str], flags: Sequence[str] = TIMEOUT_FLAGS,
                   member_list: bool = True) -> list[str]:
    """`sh -c` running, side by side: `member list`, `endpoint status` of each endpoint alone and
    `endpoint health` of all of them, each printing one JSON line.

    Why one shell: every command sent into a pod is an exec (API server, kubelet, runtime) and
    every command over SSH a session; five of them per status cost more than the etcdctl calls
    themselves. The endpoints are checked URLs and every value is quoted, so the script holds
    nothing a person typed. The outputs are told apart by their shape (`parse_survey`)."""
    checked = [e for e in endpoints if ENDPOINT_RE.fullmatch(e)]
    if len(checked) != len(endpoints):
        raise ValueError(f"not an endpoint URL: {sorted(set(endpoints) - set(checked))}")
    tail = " ".join(shlex.quote(f) for f in (*flags,))
    parts = [f"etcdctl member list -w json {tail}"] if member_list else []
    parts += [f"ETCDCTL_ENDPOINTS={shlex.quote(e)} etcdctl endpoint status -w json {tail}" for e in checked]
    if checked:
        parts.append(f"ETCDCTL_ENDPOINTS={shlex.quote(','.join(checked))} etcdctl endpoint health -w json {tail}")
    if not parts:
        raise ValueError("nothing to ask")
    return ["sh", "-c", " & ".join(parts) + " & wait"]


@dataclass(frozen=True)
class SurveyOutput:
    """What a `survey_command` printed. `garbled`: a line that is none of the three shapes (two
    outputs mixed, a truncated line): the caller asks again one command at a time."""

    members: MemberList | None
    statuses: tuple[EndpointStatus, ...]
    health: tuple[EndpointHealth, ...]
    garbled: bool = False


def parse_survey(stdout: str) -> SurveyOutput:
    members: MemberList | None = None
    statuses: list[EndpointStatus] = []
    health: list[EndpointHealth] = []
    garbled = False
    for line in stdout.splitlines():
        text = line.strip()
        if not text:
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            garbled = True
            continue
        try:
            if isinstance(value, Mapping) and "members" in value:
                members = parse_member_list(text)
            elif isinstance(value, list) and value and all(isinstance(v, Mapping) and "Status" in v for v in value):
                statuses.extend(parse_endpoint_status(text))
            elif isinstance(value, list) and value and all(isinstance(v, Mapping) and "health" in v for v in value):
                health.extend(parse_endpoint_health(text))
            elif value != []:  # a status of a dead endpoint prints [] (and its reason on stderr)
                garbled = True
        except EtcdctlParseError:
            garbled = True
    return SurveyOutput(members=members, statuses=tuple(statuses), health=tuple(health), garbled=garbled)


def status_failures(stderr: str) -> dict[str, str]:
    """endpoint -> reason, from etcdctl's 'Failed to get the status of endpoint URL (reason)' lines."""
    marker = "Failed to get the status of endpoint "
    found = {}
    for line in stderr.splitlines():
        if marker in line:
            endpoint, _, reason = line.split(marker, 1)[1].partition(" ")
            found[endpoint] = reason.strip().removeprefix("(").removesuffix(")") or "no answer"
    return found
