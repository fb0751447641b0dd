"""Text that goes into Slack mrkdwn. Slack reads `<...>` as a link or mention and `&` as an
entity, so a command like `cluster-restore.sh <dir>` would lose its argument unless escaped."""

from __future__ import annotations


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
