"""Who may run commands: a user listed in ETCDBOT_ALLOWED_USERS, or a member of ETCDBOT_ALLOWED_USERGROUP.

Membership is asked of Slack (`usergroups.users.list`) at start (`refresh`) and kept; an answer
older than a minute is renewed in the background while the next checks use it, so an ack never
waits on Slack (a burst of commands in an incident would otherwise queue behind one call). Only
when no answer was ever had does a check ask Slack itself; a Slack error then refuses (fails
closed) with a reason the user can pass on.

Closed by default: with neither setting, NOBODY may run commands. A bot just deployed from the
chart's defaults must not hand the whole workspace a way to snapshot or change etcd; every
refusal, the start-up log and `/readyz` name the settings that open it (`CLOSED_REASON`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

GROUP_ID_RE = re.compile(r"^S[A-Z0-9]{2,}$")
OPEN_WITH = "ETCDBOT_ALLOWED_USERS (a JSON list of Slack user IDs) or ETCDBOT_ALLOWED_USERGROUP (a user group)"
CLOSED_REASON = f"the bot is closed to everyone until {OPEN_WITH} is set"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


class Authorizer:
    """Answers "may this user run commands?" from settings and Slack user groups."""

    def __init__(self, *, allowed_users: Iterable[str], allowed_usergroup: str | None,
                 cache_seconds: float = 60.0, timeout: float = 2.0) -> None:
        self._users = frozenset(allowed_users)
        self._group = allowed_usergroup
        self._cache_seconds = cache_seconds
        self._timeout = timeout
        self._members: frozenset[str] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self._renewal: asyncio.Task[frozenset[str]] | None = None

    @property
    def closed(self) -> bool:
        """Nobody is allowed: neither users nor a group are configured."""
        return not self._users and not self._group

    def who(self) -> str:
        """Who may run commands, for a refusal message."""
        parts = []
        if self._users:
            parts.append("the users listed in ETCDBOT_ALLOWED_USERS")
        if self._group:
            parts.append(f"members of @{self._group}" if not GROUP_ID_RE.match(self._group) else
                         f"members of user group {self._group}")
        return " and ".join(parts) or "nobody"

    async def check(self, *, client: AsyncWebClient, user_id: str) -> Decision:
        if self.closed:
            return Decision(False, CLOSED_REASON)
        if user_id in self._users:
            return Decision(True, "listed in ETCDBOT_ALLOWED_USERS")
        if not self._group:
            return Decision(False, f"only {self.who()} may run etcd commands")
        try:
            members = await asyncio.wait_for(self._group_members(client), timeout=self._timeout)
        except (TimeoutError, SlackApiError, OSError) as exc:
            detail = exc.response.get("error") if isinstance(exc, SlackApiError) else type(exc).__name__
            return Decision(False, f"could not check membership of @{self._group} ({detail}); try again")
        if user_id in members:
            return Decision(True, f"member of @{self._group}")
        return Decision(False, f"only {self.who()} may run etcd commands")

    async def refresh(self, client: AsyncWebClient) -> None:
        """Reads the group's members now (at start); a failure is left to the first check to report."""
        if self._group:
            try:
                await asyncio.wait_for(self._fetch(client), timeout=self._timeout * 5)
            except (TimeoutError, SlackApiError, OSError):
                pass

    async def _group_members(self, client: AsyncWebClient) -> frozenset[str]:
        if self._members is not None:
            if time.monotonic() - self._fetched_at >= self._cache_seconds and (
                    self._renewal is None or self._renewal.done()):
                self._renewal = asyncio.create_task(self._renew(client))
            return self._members
        return await self._fetch(client)

    async def _renew(self, client: AsyncWebClient) -> frozenset[str]:
        try:
            return await asyncio.wait_for(self._fetch(client), timeout=self._timeout * 5)
        except (TimeoutError, SlackApiError, OSError):
            return self._members or frozenset()  # kept; asked again at the next check

    async def _fetch(self, client: AsyncWebClient) -> frozenset[str]:
        async with self._lock:
            if self._members is not None and time.monotonic() - self._fetched_at < self._cache_seconds:
                return self._members  # another caller just fetched it
            group_id = await self._group_id(client)
            response = await client.usergroups_users_list(usergroup=group_id)
            self._members = frozenset(response.get("users") or ())
            self._fetched_at = time.monotonic()
            return self._members

    async def _group_id(self, client: AsyncWebClient) -> str:
        """A handle (etcd-operators) becomes its ID through usergroups.list; an ID is used as it is."""
        assert self._group is not None
        if GROUP_ID_RE.match(self._group):
            return self._group
        try:
            response = await client.usergroups_list()
        except SlackApiError:
            return self._group  # a workspace that accepts handles directly
        for group in response.get("usergroups") or ():
            if group.get("handle") == self._group or group.get("name") == self._group:
                return str(group["id"])
        return self._group
