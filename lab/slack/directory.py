"""Who and where: the lab workspace's team, users, user group and channels.

Fixed, stable ids so tests, the demo and a person rehearsing an incident can name the same
people (`alice` runs the command, `bob` and `carol` approve as `@etcd-approvers`). Membership is
not modelled: everyone is in every channel, which is what the bot's procedures assume.
"""

from __future__ import annotations

from dataclasses import dataclass

TEAM_ID = "T0ETCDLAB"
TEAM_DOMAIN = "etcd-lab"
TEAM_NAME = "etcd lab"
APP_ID = "A0ETCDBOT"
BOT_ID = "B0ETCDBOT"
BOT_USER_ID = "U0ETCDBOT"
BOT_NAME = "etcdbot"
SLACKBOT_ID = "USLACKBOT"


@dataclass(frozen=True)
class User:
    id: str
    name: str
    real_name: str
    is_bot: bool = False

    def as_slack(self) -> dict:
        """The `user` object of users.info / users.list."""
        return {
            "id": self.id,
            "team_id": TEAM_ID,
            "name": self.name,
            "real_name": self.real_name,
            "deleted": False,
            "is_bot": self.is_bot,
            "is_admin": False,
            "tz": "UTC",
            "tz_offset": 0,
            "profile": {
                "real_name": self.real_name,
                "display_name": self.name,
                "email": f"{self.name}@{TEAM_DOMAIN}.example",
                "team": TEAM_ID,
            },
        }


@dataclass(frozen=True)
class Channel:
    id: str
    name: str
    is_im: bool = False
    im_user: str | None = None

    def as_slack(self) -> dict:
        """The `channel` object of conversations.info / conversations.list."""
        if self.is_im:
            return {
                "id": self.id,
                "is_im": True,
                "user": self.im_user,
                "is_open": True,
                "created": 1600000000,
            }
        return {
            "id": self.id,
            "name": self.name,
            "name_normalized": self.name,
            "is_channel": True,
            "is_group": False,
            "is_im": False,
            "is_private": False,
            "is_archived": False,
            "is_general": self.name == "random",
            "is_member": True,
            "created": 1600000000,
            "creator": "U0ALICE01",
            "num_members": len(USERS),
        }


@dataclass(frozen=True)
class UserGroup:
    id: str
    handle: str
    name: str
    users: tuple[str, ...]

    def as_slack(self, *, include_users: bool) -> dict:
        """The `usergroup` object of usergroups.list."""
        group = {
            "id": self.id,
            "team_id": TEAM_ID,
            "is_usergroup": True,
            "name": self.name,
            "handle": self.handle,
            "description": "May approve destructive etcd steps",
            "user_count": len(self.users),
        }
        if include_users:
            group["users"] = list(self.users)
        return group


USERS: tuple[User, ...] = (
    User(id="U0ALICE01", name="alice", real_name="Alice Operator"),
    User(id="U0BOB0001", name="bob", real_name="Bob Approver"),
    User(id="U0CAROL01", name="carol", real_name="Carol Approver"),
    User(id="U0DAVE001", name="dave", real_name="Dave Bystander"),
    User(id=BOT_USER_ID, name=BOT_NAME, real_name="etcd bot", is_bot=True),
)
CHANNELS: tuple[Channel, ...] = (
    Channel(id="C0INCIDENT", name="incident"),
    Channel(id="C0OPS1", name="ops"),
    Channel(id="C0RANDOM1", name="random"),
)
USERGROUPS: tuple[UserGroup, ...] = (
    UserGroup(
        id="S0APPROVERS", handle="etcd-approvers", name="etcd approvers", users=("U0BOB0001", "U0CAROL01")
    ),
)


def find_user(ref: str) -> User | None:
    """A user by id or name (`alice`, `@alice`, `U0ALICE01`)."""
    ref = ref.strip().lstrip("@")
    for user in USERS:
        if ref in (user.id, user.name):
            return user
    return None


def dm_channel(user: User) -> Channel:
    """Each person has a direct-message channel with the bot: D + the user id's tail."""
    return Channel(id="D" + user.id[1:], name=f"dm-{user.name}", is_im=True, im_user=user.id)


def find_channel(ref: str) -> Channel | None:
    """A channel by id or name (`incident`, `#incident`, `C0INCIDENT`); a user id means their DM."""
    ref = ref.strip().lstrip("#")
    for channel in CHANNELS:
        if ref in (channel.id, channel.name):
            return channel
    for user in USERS:
        dm = dm_channel(user)
        if ref in (dm.id, user.id) and not user.is_bot:
            return dm
    return None


def find_usergroup(ref: str) -> UserGroup | None:
    ref = ref.strip().lstrip("@")
    for group in USERGROUPS:
        if ref in (group.id, group.handle):
            return group
    return None


def names() -> dict[str, str]:
    """Id -> readable name, for rendering `<@U..>`, `<#C..>` and `<!subteam^S..>` mentions."""
    table = {user.id: user.name for user in USERS}
    table.update({channel.id: channel.name for channel in CHANNELS})
    table.update({group.id: group.handle for group in USERGROUPS})
    table[SLACKBOT_ID] = "Slackbot"
    return table
