"""A tiny Bolt app that exercises the workspace the way the bot does, without the bot.

The workspace's own tests use it against the real slack_bolt / slack_sdk (Socket Mode and HTTP
mode), and it is a quick way to tell "the lab's Slack is broken" from "the bot is broken".
It is not the bot: no procedures, no locks, no approvals.
"""

from __future__ import annotations

import asyncio

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient


def build_echo_app(
    *, client: AsyncWebClient, release_slow: asyncio.Event, signing_secret: str = ""
) -> AsyncApp:
    """`/etcd-echo TEXT` acks ephemerally and posts Approve/Reject; Approve edits the message
    (chat.update), Reject replaces it through `respond()`; `/etcd-slow` acks only after `release_slow`
    is set, to miss the deadline on purpose. `signing_secret` set means HTTP mode with verification.
    """
    app = AsyncApp(
        client=client, signing_secret=signing_secret, request_verification_enabled=bool(signing_secret)
    )

    @app.command("/etcd-echo")
    async def echo(ack, command, client) -> None:  # type: ignore[no-untyped-def]
        await ack(f"Echoing `{command['text']}` for <@{command['user_id']}>")
        await client.chat_postMessage(
            channel=command["channel_id"],
            text=f"echo: {command['text']}",
            blocks=[
                {"type": "header", "text": {"type": "plain_text", "text": "Echo"}},
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{command['text']}*"}},
                {
                    "type": "actions",
                    "block_id": "decide",
                    "elements": [
                        {
                            "type": "button",
                            "action_id": "approve",
                            "value": "yes",
                            "style": "primary",
                            "text": {"type": "plain_text", "text": "Approve"},
                        },
                        {
                            "type": "button",
                            "action_id": "reject",
                            "value": "no",
                            "style": "danger",
                            "text": {"type": "plain_text", "text": "Reject"},
                        },
                    ],
                },
            ],
        )

    @app.action("approve")
    async def approve(ack, body, client) -> None:  # type: ignore[no-untyped-def]
        await ack()
        await client.chat_update(
            channel=body["channel"]["id"],
            ts=body["message"]["ts"],
            text=f"approved by {body['user']['name']}",
            blocks=[
                {
                    "type": "context",
                    "elements": [{"type": "mrkdwn", "text": f"Approved by <@{body['user']['id']}>"}],
                }
            ],
        )

    @app.action("reject")
    async def reject(ack, respond) -> None:  # type: ignore[no-untyped-def]
        await ack()
        await respond(replace_original=True, text="Rejected")

    @app.command("/etcd-slow")
    async def slow(ack) -> None:  # type: ignore[no-untyped-def]
        await release_slow.wait()
        await ack("too late")

    return app
