"""The bot's settings: clusters, Slack, Redis, SSH, storage and who may do what.

Everything comes from `ETCDBOT_*` environment variables (or an env file of `export KEY=VALUE`
lines, which is what the lab writes), so the bot under test is the production bot with its URLs
pointed at the lab. A wrong value stops the bot at start with a message that names the variable
and says what to put there; nothing here connects to anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import tempfile
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "ETCDBOT_"

# A cluster name is typed in Slack and used in Redis keys: keep it to DNS-label characters.
CLUSTER_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A node name goes into shell commands (quoted anyway) and Slack text: DNS subdomain characters only.
NODE_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
SLACK_USER_ID_RE = re.compile(r"^[UW][A-Z0-9]{2,}$")
SLACK_CHANNEL_ID_RE = re.compile(r"^[CGD][A-Z0-9]{2,}$")

# What to write instead, per variable: shown beside a validation error.
HINTS: dict[str, str] = {
    "slack_bot_token": "the bot token of the Slack app, starting with xoxb-",
    "slack_app_token": "an app-level token with connections:write, starting with xapp- (Socket Mode)",
    "slack_signing_secret": "the signing secret from the Slack app's Basic Information page",
    "slack_api_url": "the Slack Web API base URL ending in /api/, e.g. https://slack.com/api/",
    "slack_mode": "socket or http",
    "http_port": "a TCP port number, e.g. 3000",
    "health_port": "a TCP port number for /healthz, /readyz and /metrics, e.g. 8080",
    "redis_url": "a Redis URL, e.g. redis://127.0.0.1:6379/0",
    "redis_password": "the Redis password (the Helm chart's Secret key redis-password); empty: the URL's, if any",
    "backup_dir": "a directory for backups, e.g. /var/lib/etcdbot/backups",
    "backup_keys_dir": "a directory apart from the backups for encryption keys, e.g. /var/lib/etcdbot/keys",
    "backup_copy_rate": "bytes per second a backup copy may take from a master (0: no limit)",
    "backup_schedule": ('a 5-field cron expression in each cluster\'s timezone, e.g. "0 3 * * *" (03:00 daily), '
                        'or "" for no scheduled backups'),
    "restore_wait": "seconds each wait of /etcd-restore may take before the run stops and says why (1 to 3600)",
    "log_level": "one of DEBUG, INFO, WARNING, ERROR",
    "allowed_users": 'a JSON list of Slack user IDs, e.g. ["U012ABCDEF"], or []',
    "procedure_modules": "comma-separated Python modules that register procedures, e.g. mycompany.procedures.drill",
    "allowed_usergroup": "a Slack user group handle (etcd-operators) or ID (S0123ABC)",
    "approver_usergroup": "a Slack user group handle or ID, e.g. etcd-approvers",
    "drill_dir": "a scratch directory for restore drills with room for 3x a snapshot, e.g. /var/lib/etcdbot/drill",
    "drill_timeout": "seconds a restore drill may take, e.g. 300",
    "backup_retention": 'a JSON object, e.g. {"last": 7, "daily": 7, "weekly": 4, "monthly": 6} (all 0: keep everything)',
    "max_backup_age": 'a duration like "26h", "90m", "2d" or seconds; "" = derived from the schedule; "0" = no warning',
    "oncall_usergroup": "the Slack user group mentioned on a failure, by handle (etcd-oncall) or ID (S0123ABC)",
    "watch_interval": "seconds between the bot's backup checks (upgrades, backup age), e.g. 60",
    "replace_backup_max_age": "seconds: how young a verified backup must be for /etcd-replace-member, e.g. 3600",
    "replace_machine_timeout": "seconds a new master machine may take from Provisioning to Running, e.g. 1800",
    "replace_rollout_timeout": "seconds an etcd redeployment may take until every member is healthy, e.g. 1800",
    "replace_pods_grace": "seconds to wait for the new master's etcd pod before forcing a redeployment, e.g. 600",
    # -- approvals (engine) --
    "approver_users": 'a JSON list of Slack user IDs who may approve, e.g. ["U012ABCDEF"], or []',
    "approvals_required": 'a JSON object: procedure name -> approvers needed (1-10), e.g. {"restore": 2}',
    "approval_expiry": "seconds an approval request (and an approval) stays valid, e.g. 900",
    "lock_timeout": "seconds a cluster's lock outlives a bot that died holding it (renewed every third of it), e.g. 45",
    "approval_secret": "a long random string (e.g. `openssl rand -hex 32`), the same on every replica",
    "clusters": (
        'a JSON list, e.g. [{"name": "lab", "kubeconfig": "/path/kubeconfig", "channels": ["C0INCIDENT"], '
        '"ssh": {"user": "core", "private_key": "/path/id_ed25519", "known_hosts": "/path/known_hosts", '
        '"hosts": {"ip-10-0-131-183.ec2.internal": "127.0.0.1:40022"}, '
        '"workers": {"ip-10-0-179-95.ec2.internal": "127.0.0.1:40030"}}, "peak_hours": "09:00-17:00", '
        '"timezone": "UTC"}]'
    ),
    # /etcd-shutdown, /etcd-restart-check, /etcd-approve-csrs (chapters 3, 4, 5.4)
    "shutdown_backup_max_age": "seconds: how young a backup of the running version must be for /etcd-shutdown, e.g. 3600",
    "shutdown_off_timeout": "seconds /etcd-shutdown waits for every node to power off after `shutdown -h 1`, e.g. 600",
    "restart_timeout": "seconds each wait of /etcd-restart-check and /etcd-approve-csrs may take (API, nodes Ready, "
                       "operators), e.g. 1800",
    "csr_settle": "seconds the CSR review waits for each NotReady node to file its CSR, e.g. 120",
    "serviceaccount_dir": "the pod's service account directory (token, ca.crt), e.g. "
                          "/var/run/secrets/kubernetes.io/serviceaccount",
}


class ConfigError(Exception):
    """Settings that cannot start the bot; `str()` is the text to show a person, one line per problem."""


class SshSettings(BaseModel):
    """How to reach the nodes of one cluster over SSH: `hosts` are the masters (where etcd runs,
    the fallback when the API is gone); `workers` are the other nodes, which only the graceful
    shutdown (chapter 3: `sudo shutdown -h 1` on every node) needs. Kept apart so that everything
    that means "the masters" (status, backup, restore, member replacement) never reaches a worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = "core"
    private_key: FilePath
    known_hosts: FilePath
    hosts: dict[str, str] = Field(description="master node name -> host:port")
    workers: dict[str, str] = Field(default_factory=dict, description="worker node name -> host:port")
    connect_timeout: float = Field(default=10.0, gt=0, le=120)

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
            raise ValueError(f"{value!r} is not a Unix user name")
        return value

    @field_validator("hosts", "workers")
    @classmethod
    def _hosts(cls, value: dict[str, str]) -> dict[str, str]:
        for node, address in value.items():
            if not NODE_NAME_RE.fullmatch(node):
                raise ValueError(f"{node!r} is not a node name (lowercase letters, digits, '-' and '.')")
            split_address(address)
        return value

    @model_validator(mode="after")
    def _apart(self) -> SshSettings:
        both = sorted(set(self.hosts) & set(self.workers))
        if both:
            raise ValueError(f"{', '.join(both)} listed both as a master (hosts) and as a worker (workers)")
        return self

    def address(self, node: str) -> tuple[str, int]:
        return split_address(self.hosts[node] if node in self.hosts else self.workers[node])


def split_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:40022' -> ('127.0.0.1', 40022); a bare host means port 22."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        host, port_text = address, "22"
    host = host.strip("[]")
    if not host or not re.fullmatch(r"[A-Za-z0-9.:-]+", host):
        raise ValueError(f"{address!r} is not host:port")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{address!r} has no valid port")
    return host, int(port_text)


class RetentionSettings(BaseModel):
    """How many backups the retention rules keep (bot/retention.py): the newest `last`, plus the
    newest of each of the `daily` / `weekly` / `monthly` most recent periods. All 0: retention
    is off and nothing is ever deleted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    last: int = Field(default=0, ge=0, le=10_000)
    daily: int = Field(default=0, ge=0, le=10_000)
    weekly: int = Field(default=0, ge=0, le=10_000)
    monthly: int = Field(default=0, ge=0, le=10_000)


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str) -> float:
    """'26h' / '90m' / '2d' / '45s' / '3600' -> seconds."""
    match = _DURATION_RE.fullmatch(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration (like 26h, 90m, 2d or a number of seconds)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def check_usergroup(value: str) -> str:
    if not re.fullmatch(r"@?[A-Za-z0-9._-]{1,80}", value):
        raise ValueError(f"{value!r} is not a user group handle or ID")
    return value.lstrip("@")


def check_optional_usergroup(value: str | None) -> str | None:
    return None if value is None else check_usergroup(value)


def check_user_ids(values: tuple[str, ...]) -> tuple[str, ...]:
    for user in values:
        if not SLACK_USER_ID_RE.fullmatch(user):
            raise ValueError(f"{user!r} is not a Slack user ID (like U012ABCDEF)")
    return values


# -- approvals (engine): who may approve a cluster's destructive steps -------------------------------


class ApproverSettings(BaseModel):
    """The approvers of one cluster: members of a Slack user group, and/or listed user IDs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    usergroup: str | None = None
    users: tuple[str, ...] = ()

    @field_validator("usergroup")
    @classmethod
    def _usergroup(cls, value: str | None) -> str | None:
        return check_optional_usergroup(value)

    @field_validator("users")
    @classmethod
    def _users(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_user_ids(value)


APPROVAL_KEY_CONTEXT = b"etcdbot approval decisions v1"

# -- end of approvals (engine) ----------------------------------------------------------------------


class ClusterSettings(BaseModel):
    """One OpenShift cluster the bot may act on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kubeconfig: FilePath
    channels: tuple[str, ...] = ()
    ssh: SshSettings | None = None
    peak_hours: str = "09:00-17:00"
    timezone: str = "UTC"
    # None: ETCDBOT_BACKUP_SCHEDULE applies; "" turns scheduled backups off for this cluster only.
    backup_schedule: str | None = None
    # Backups you can trust (each None: the ETCDBOT_* setting of the same name applies).
    retention: RetentionSettings | None = None
    max_backup_age: str | None = None
    oncall_usergroup: str | None = None
    # None: ETCDBOT_APPROVER_USERGROUP / ETCDBOT_APPROVER_USERS apply to this cluster.
    approvers: ApproverSettings | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not CLUSTER_NAME_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a cluster name (lowercase letters, digits and '-', up to 63)")
        return value

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for channel in value:
            if not SLACK_CHANNEL_ID_RE.fullmatch(channel):
                raise ValueError(f"{channel!r} is not a Slack channel ID (like C0123ABCD)")
        return value

    @field_validator("peak_hours")
    @classmethod
    def _peak_hours(cls, value: str) -> str:
        parse_peak_hours(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone (like UTC or Europe/Berlin)") from exc
        return value

    @field_validator("backup_schedule")
    @classmethod
    def _backup_schedule(cls, value: str | None) -> str | None:
        return None if value is None else check_schedule(value)

    @field_validator("max_backup_age")
    @classmethod
    def _max_backup_age(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("oncall_usergroup")
    @classmethod
    def _oncall(cls, value: str | None) -> str | None:
        return check_usergroup(value) if value else value

    @property
    def peak_window(self) -> tuple[time, time]:
        return parse_peak_hours(self.peak_hours)


def check_schedule(value: str) -> str:
    """A 5-field cron expression (minute hour day month weekday), or "" for none; returns it trimmed.

    Parsed with APScheduler's own `CronTrigger.from_crontab`, the parser the scheduler uses, so a
    value that passes here cannot fail later, in the middle of the night, when the job is added.
    """
    from apscheduler.triggers.cron import CronTrigger

    text = " ".join(value.split())
    if not text:
        return ""
    if len(text.split(" ")) != 5:
        raise ValueError(f"{value!r} is not a 5-field cron expression (minute hour day month weekday)")
    try:
        CronTrigger.from_crontab(text, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid cron expression ({exc})") from None
    return text


def schedule_gap(expression: str, *, timezone: str) -> float:
    """The longest time, in seconds, between two consecutive fires of a cron expression over the
    next 8 days (a weekly schedule's gap is a week)."""
    from datetime import UTC, datetime, timedelta

    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(expression, timezone=timezone)
    now = datetime.now(UTC)
    end = now + timedelta(days=8)
    previous = trigger.get_next_fire_time(None, now)
    gap = 0.0
    for _ in range(20_000):  # every minute for 8 days is 11520 fires
        if previous is None or previous > end:
            break
        following = trigger.get_next_fire_time(previous, previous + timedelta(seconds=1))
        if following is None:
            break
        gap = max(gap, (following - previous).total_seconds())
        previous = following
    return gap or 8 * 86400.0


def parse_peak_hours(value: str) -> tuple[time, time]:
    """'09:00-17:00' -> (09:00, 17:00)."""
    match = re.fullmatch(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})", value.strip())
    if not match:
        raise ValueError(f"{value!r} is not HH:MM-HH:MM")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    try:
        return time(h1, m1), time(h2, m2)
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}") from exc


def _json_list(value: Any) -> Any:
    """Environment values are text: decode a JSON list here so a syntax error names its variable."""
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    return value


class Settings(BaseSettings):
    """All of the bot's settings; see HINTS for what each variable holds."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    slack_bot_token: SecretStr
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None  # needed in HTTP mode (Socket Mode is not signed)
    slack_api_url: str = "https://slack.com/api/"
    slack_mode: Literal["socket", "http"] = "socket"
    http_port: int = Field(default=3000, gt=0, lt=65536)
    health_port: int = Field(default=8080, gt=0, lt=65536)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretStr | None = None  # overrides a password in the URL (kept out of ConfigMaps)
    backup_dir: Path = Path("/var/lib/etcdbot/backups")
    # With etcd encryption on, the static resources tarball holds the keys: it goes here, apart
    # from the snapshots (default: BACKUP_DIR/../<name>-keys, a sibling, never inside BACKUP_DIR).
    backup_keys_dir: Path | None = None
    backup_copy_rate: int = Field(default=0, ge=0)  # bytes/s off a master; 0 means no limit
    # Cron (5 fields) in each cluster's timezone; "" = no scheduled backups. A cluster may override it.
    backup_schedule: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Who may run commands. Neither set: nobody (closed by default; the refusal names these).
    allowed_users: Annotated[tuple[str, ...], NoDecode] = ()
    allowed_usergroup: str | None = None
    # Extra procedure modules imported at start so they register (beside the built-in ones).
    procedure_modules: Annotated[tuple[str, ...], NoDecode] = ()
    approver_usergroup: str = "etcd-approvers"
    # /etcd-restore (5.3): the deadline of each of its waits (static pods stopping, the single
    # member starting, each operator's redeployment, the members joining), in seconds.
    restore_wait: float = Field(default=1800.0, gt=0, le=3600)
    # /etcd-replace-member (procedures/replace_member.py): how young the backup taken first must be
    # (document 2.1), and how long each wait may take before the run stops and says what to check.
    replace_backup_max_age: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    replace_machine_timeout: float = Field(default=1800.0, gt=0, le=3 * 3600)
    replace_rollout_timeout: float = Field(default=1800.0, gt=0, le=3 * 3600)
    replace_pods_grace: float = Field(default=600.0, gt=0, le=3 * 3600)
    # ---- /etcd-shutdown, /etcd-restart-check, /etcd-approve-csrs (chapters 3, 4, 5.4) ----------
    # "Take an etcd backup prior to shutting down": a backup of the running version younger than this.
    shutdown_backup_max_age: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    # After `shutdown -h 1` on every node: how long until every node must have stopped answering.
    shutdown_off_timeout: float = Field(default=600.0, gt=0, le=3600)
    # Each wait after power-on (the API, the masters Ready, the workers Ready, no operator
    # Degraded); past it the check says to restore. The document waits "approximately 10 minutes".
    restart_timeout: float = Field(default=1800.0, gt=0, le=4 * 3600)
    # How long the CSR review waits for each NotReady node to file its CSR before listing them.
    csr_settle: float = Field(default=120.0, gt=0, le=3600)
    # Where a pod's service account token is mounted: how the bot tells that it runs INSIDE a
    # cluster, and which one (it must never shut down or restore the cluster it runs on).
    serviceaccount_dir: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount")
    clusters: Annotated[tuple[ClusterSettings, ...], NoDecode]
    # ---- backups you can trust (drills, retention, notifications; docs/runbooks/etcd-backup.md)
    # Scratch space of the restore drill (a snapshot restored, an etcd started on it): 3x a snapshot.
    drill_dir: Path = Path(tempfile.gettempdir()) / "etcdbot-drill"
    drill_timeout: float = Field(default=300.0, gt=0, le=6 * 3600)
    backup_retention: RetentionSettings = RetentionSettings()  # a cluster's `retention` overrides it
    # No drilled backup younger than this: a warning (at most daily). "" = derived from the
    # cluster's schedule (its longest gap between fires, plus an hour); "0" = never warn.
    max_backup_age: str = ""
    oncall_usergroup: str | None = None  # mentioned in failure notifications (a cluster may override it)
    watch_interval: float = Field(default=60.0, gt=0, le=3600)  # seconds between upgrade / age checks
    # -- approvals (engine) --
    approver_users: Annotated[tuple[str, ...], NoDecode] = ()
    approvals_required: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)
    approval_expiry: float = Field(default=900.0, gt=0, le=86400)
    approval_secret: SecretStr | None = None  # else derived from the bot token
    # A run's cluster lock is renewed every third of this; when the bot holding it dies, another
    # replica (or the bot, restarted) takes the run over only after it expired. Shorter: a dead
    # bot's run is back sooner; longer: a stalled bot (GC, a paused VM) keeps its lock longer.
    lock_timeout: float = Field(default=45.0, ge=3, le=600)

    @field_validator("allowed_users", "clusters", "approver_users", mode="before")
    @classmethod
    def _decode_json(cls, value: Any) -> Any:
        return _json_list(value)

    @field_validator("backup_retention", "approvals_required", mode="before")
    @classmethod
    def _decode_json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
        return value

    @field_validator("max_backup_age")
    @classmethod
    def _max_age(cls, value: str) -> str:
        if value.strip():
            parse_duration(value)
        return value.strip()

    @field_validator("oncall_usergroup", mode="before")
    @classmethod
    def _oncall(cls, value: Any) -> Any:
        if isinstance(value, str):
            return check_usergroup(value) if value.strip() else None
        return value

    @field_validator("approvals_required")
    @classmethod
    def _required(cls, value: dict[str, int]) -> dict[str, int]:
        for name, count in value.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
                raise ValueError(f"{name!r} is not a procedure name")
            if not 1 <= count <= 10:
                raise ValueError(f"{name}: {count} approvers; use 1 to 10")
        return value

    @field_validator("approver_users")
    @classmethod
    def _approver_users(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_user_ids(value)

    def approvers_of(self, cluster: str) -> ApproverSettings:
        """Who may approve `cluster`'s destructive steps: its own `approvers`, else the global ones."""
        own = self.cluster(cluster)
        if own is not None and own.approvers is not None:
            return own.approvers
        return ApproverSettings(usergroup=self.approver_usergroup or None, users=self.approver_users)

    def approval_key(self) -> bytes:
        """The HMAC key of approval records: from ETCDBOT_APPROVAL_SECRET, else derived from the bot
        token (both live in the bot's secret, the same on every replica; neither is in Redis)."""
        if self.approval_secret is not None and self.approval_secret.get_secret_value():
            return hashlib.sha256(APPROVAL_KEY_CONTEXT + self.approval_secret.get_secret_value().encode()).digest()
        token = self.slack_bot_token.get_secret_value().encode()
        return hmac.new(token, APPROVAL_KEY_CONTEXT, hashlib.sha256).digest()
    # -- end of approvals (engine) --

    @field_validator("backup_schedule")
    @classmethod
    def _backup_schedule(cls, value: str) -> str:
        return check_schedule(value)

    @field_validator("procedure_modules", mode="before")
    @classmethod
    def _modules(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [m.strip() for m in value.split(",") if m.strip()]
        for module in value or ():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", str(module)):
                raise ValueError(f"{module!r} is not a Python module name")
        return tuple(value or ())

    @property
    def closed(self) -> bool:
        """No allowed users and no allowed group: the bot refuses every command."""
        return not self.allowed_users and not self.allowed_usergroup

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("slack_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value if value.endswith("/") else value + "/"

    @field_validator("allowed_users")
    @classmethod
    def _users(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_user_ids(value)

    @field_validator("allowed_usergroup", mode="before")
    @classmethod
    def _empty_group(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("allowed_usergroup", "approver_usergroup")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        return check_optional_usergroup(value)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not self.clusters:
            raise ValueError("ETCDBOT_CLUSTERS is empty: configure at least one cluster")
        names = [c.name for c in self.clusters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"ETCDBOT_CLUSTERS names a cluster twice: {', '.join(duplicates)}")
        seen: dict[str, str] = {}
        for cluster in self.clusters:
            for channel in cluster.channels:
                if channel in seen:
                    raise ValueError(
                        f"ETCDBOT_CLUSTERS maps channel {channel} to both {seen[channel]} and {cluster.name}: "
                        "a channel belongs to one cluster"
                    )
                seen[channel] = cluster.name
        if self.slack_mode == "socket" and self.slack_app_token is None:
            raise ValueError("ETCDBOT_SLACK_MODE=socket needs ETCDBOT_SLACK_APP_TOKEN (an xapp- token)")
        if self.slack_mode == "http" and not (self.slack_signing_secret and self.slack_signing_secret.get_secret_value()):
            raise ValueError("ETCDBOT_SLACK_MODE=http needs ETCDBOT_SLACK_SIGNING_SECRET (from the app's Basic "
                             "Information page): requests are verified with it")
        if self.slack_mode == "http" and self.http_port == self.health_port:
            raise ValueError("ETCDBOT_HTTP_PORT and ETCDBOT_HEALTH_PORT must differ")
        return self

    def redis_options(self) -> dict[str, Any]:
        """Extra arguments for `redis.asyncio.Redis.from_url(self.redis_url, ...)`: the password."""
        password = self.redis_password.get_secret_value() if self.redis_password else ""
        return {"password": password} if password else {}

    def cluster(self, name: str) -> ClusterSettings | None:
        return next((c for c in self.clusters if c.name == name), None)

    def backup_schedule_of(self, cluster: ClusterSettings) -> str:
        """The cron expression that applies to `cluster` ("" = none): its own, else ETCDBOT_BACKUP_SCHEDULE."""
        return self.backup_schedule if cluster.backup_schedule is None else cluster.backup_schedule

    def retention_of(self, cluster: ClusterSettings) -> RetentionSettings:
        return cluster.retention if cluster.retention is not None else self.backup_retention

    def oncall_of(self, cluster: ClusterSettings) -> str | None:
        return cluster.oncall_usergroup or self.oncall_usergroup

    def max_backup_age_of(self, cluster: ClusterSettings) -> float | None:
        """Seconds, or None: no age warning. The cluster's own, else ETCDBOT_MAX_BACKUP_AGE, else
        (neither set) derived from the cluster's schedule: its longest gap between two fires over
        a week, plus an hour; no schedule: no warning (nobody said how often to back up)."""
        text = cluster.max_backup_age if cluster.max_backup_age is not None else self.max_backup_age
        if text:
            seconds = parse_duration(text)
            return seconds if seconds > 0 else None
        schedule = self.backup_schedule_of(cluster)
        return schedule_gap(schedule, timezone=cluster.timezone) + 3600 if schedule else None

    def cluster_for_channel(self, channel_id: str) -> ClusterSettings | None:
        return next((c for c in self.clusters if channel_id in c.channels), None)

    @property
    def cluster_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.clusters)

    def secret_values(self) -> tuple[str, ...]:
        """Every secret's clear text, for the log redactor."""
        secrets = [self.slack_bot_token, self.slack_app_token, self.slack_signing_secret, self.redis_password,
                   self.approval_secret]
        return tuple(s.get_secret_value() for s in secrets if s is not None and s.get_secret_value())


def read_env_file(path: Path) -> dict[str, str]:
    """Reads `export KEY=VALUE` / `KEY=VALUE` lines (shell quoting allowed), as the lab writes them.

    Only ETCDBOT_ keys are returned; the lab's file also holds KUBECONFIG and friends for people.
    """
    import shlex

    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--env-file {path}: cannot read it ({exc.strerror})") from exc
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise ConfigError(f"--env-file {path} line {number}: {exc}") from exc
        if words and words[0] == "export":
            words = words[1:]
        if len(words) != 1 or "=" not in words[0]:
            raise ConfigError(f"--env-file {path} line {number}: expected KEY=VALUE")
        key, _, value = words[0].partition("=")
        if key.startswith(ENV_PREFIX):
            values[key] = value
    return values


def _variable(loc: tuple[int | str, ...]) -> str:
    """('clusters', 0, 'ssh', 'hosts') -> 'ETCDBOT_CLUSTERS[0].ssh.hosts'."""
    if not loc:
        return "settings"
    text = ENV_PREFIX + str(loc[0]).upper()
    for part in loc[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def describe_errors(error: ValidationError) -> str:
    """One line per problem: which variable, what is wrong, what to put there."""
    lines = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "is not set"
        elif item["type"] == "path_not_file":
            # Paths are not secrets: naming the one that is missing is what makes it fixable.
            message = f"no such file: {item['input']}"
        hint = HINTS.get(str(loc[0])) if loc and len(loc) == 1 else None
        line = f"{_variable(loc)}: {message}" if loc else message
        lines.append(line + (f". Set it to {hint}." if hint else ""))
    return "\n".join(lines)


def load_settings(*, env_file: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Builds Settings from the environment (and an env file, whose values the real environment overrides).

    Raises ConfigError with a person-readable text; secrets never appear in it.
    """
    import os

    values = read_env_file(env_file) if env_file else {}
    values.update({k: v for k, v in (os.environ if environ is None else environ).items() if k.startswith(ENV_PREFIX)})
    init = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in values.items()}
    try:
        # Passing values as init arguments (not re-reading os.environ) keeps one source of truth.
        return Settings.model_validate(init)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None
