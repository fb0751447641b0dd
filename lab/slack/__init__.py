"""The lab's local Slack workspace.

The bot is tested against the real `slack_sdk` / `slack_bolt` clients; no Slack can be reached
from the lab, so this package stands in for Slack: its Web API over HTTP, Socket Mode over a real
WebSocket, HTTP-mode delivery with signed requests, and a record of every message and version a
person in the workspace would see. It does not emulate the Events API, modals or OAuth: the bot
uses slash commands and buttons only.

Modules: `directory` (users, group, channels), `records` (the event log and message versions),
`webapi` (the Web API methods), `socket_mode` (the WebSocket), `delivery` (commands and presses
sent to the app, acks, deadlines), `control` (the `/_lab/` endpoints), `workspace` (all of it on
one port), `render` (Block Kit as text), `client` / `console` (the `etcdbot-lab slack` CLI).
"""

from lab.slack.render import render_blocks
from lab.slack.workspace import SlackWorkspace

__all__ = ["SlackWorkspace", "render_blocks"]
