"""An interactive Slack stand-in for the terminal: type slash commands, press buttons by number.

For people rehearsing an incident with the bot in the lab. Each line is one act: a slash command,
a button number from the last thing shown, or a console command (`/as bob`, `/channel ops`,
`/look`, `/help`, `/quit`). After each act it waits until the workspace is quiet and shows what
the current person now sees. `handle()` is separate from `run()` so tests can drive it.
"""

from __future__ import annotations

from collections.abc import Callable

from lab.slack.client import LabClient, LabError, PressTarget, format_view

HELP = """\
/etcd-...        run a slash command as the current person in the current channel
1, 2, ...        press that button from the last screen
/as NAME         become alice, bob, carol or dave
/channel NAME    switch channel (incident, ops, random)
(empty line)     show what changed since the last screen (a run's progress, new messages)
/look            show what you see in this channel (latest 10 messages)
/help            this text
/quit            leave"""


class Console:
    def __init__(
        self, *, client: LabClient, user: str, channel: str, quiet: float = 1.0, wait: float = 30.0
    ) -> None:
        self.client = client
        self.user = user
        self.channel = channel.lstrip("#")
        self._quiet = quiet
        self._wait = wait
        self._targets: list[PressTarget] = []
        self._cursor: int | None = None  # the newest record the person has been shown

    @property
    def prompt(self) -> str:
        return f"{self.user}@#{self.channel}> "

    def handle(self, line: str) -> str | None:
        """Do what one line asks; the text to show, or None to leave."""
        line = line.strip()
        word, _, rest = line.partition(" ")
        try:
            if not line:
                return self._changes()
            if word in ("/quit", "/exit"):
                return None
            if word == "/help":
                return HELP
            if word == "/as":
                self.client.view(user=rest.strip(), since=2**62)  # asks only "is there such a person?"
                self.user = rest.strip()
                return f"you are now {self.user}"
            if word == "/channel":
                channel = rest.strip().lstrip("#")
                self.client.view(user=self.user, channel=channel, since=2**62)
                self.channel = channel
                return f"now in #{self.channel}"
            if word == "/look":
                return self._look()
            if line.isdigit():
                return self._press(int(line))
            if line.startswith("/"):
                sent = self.client.command(user=self.user, channel=self.channel, text=line)
                return self._after(sent["cursor"])
        except LabError as error:
            return f"! {error}"
        return "only slash commands and button numbers reach the bot here (/help)"

    def run(self, *, read: Callable[[str], str] = input, write: Callable[[str], None] = print) -> int:
        write("etcdbot lab Slack console; /help for help")
        while True:
            try:
                line = read(self.prompt)
            except (EOFError, KeyboardInterrupt):
                write("")
                return 0
            shown = self.handle(line)
            if shown is None:
                return 0
            if shown:
                write(shown)

    def _press(self, number: int) -> str:
        if not 1 <= number <= len(self._targets):
            return f"! no button [{number}] on the last screen"
        target = self._targets[number - 1]
        sent = self.client.press(user=self.user, action_id=target.action_id, message_ts=target.message_ts)
        return self._after(sent["cursor"])

    def _after(self, cursor: int) -> str:
        self.client.quiet(quiet=self._quiet, timeout=self._wait)
        return self._show(self.client.view(user=self.user, since=cursor))

    def _changes(self) -> str:
        """Runs go on after the console came back: an empty line shows what happened since."""
        if self._cursor is None:
            return ""
        view = self.client.view(user=self.user, since=self._cursor)
        if not view["messages"]:
            self._cursor = int(view.get("cursor", self._cursor))
            return "(nothing new)"
        return self._show(view)

    def _look(self) -> str:
        view = self.client.view(user=self.user, channel=self.channel)
        view["messages"] = view["messages"][-10:]
        view["acks"] = []
        return self._show(view)

    def _show(self, view: dict) -> str:
        if "cursor" in view:
            self._cursor = int(view["cursor"])
        text, self._targets = format_view(view)
        return text
