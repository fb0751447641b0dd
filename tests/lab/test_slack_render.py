"""Pure parts of the lab workspace: request signing, Block Kit rendering, the rate-limit window."""

from __future__ import annotations

from slack_sdk.signature import SignatureVerifier

from bot.slack_http import Refusal, check_request, make_verifier
from lab.slack import render_blocks
from lab.slack.directory import names
from lab.slack.ratelimit import ChannelRateLimiter
from lab.slack.render import buttons
from lab.slack.signing import sign

# Slack's documented example ("Verifying requests from Slack").
DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
DOC_TIMESTAMP = "1531420618"
DOC_BODY = (
    "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    "&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    "&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    "&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def test_signature_matches_slacks_documented_example() -> None:
    assert sign(signing_secret=DOC_SECRET, timestamp=DOC_TIMESTAMP, body=DOC_BODY) == DOC_SIGNATURE
    verifier = SignatureVerifier(signing_secret=DOC_SECRET, clock=_FrozenClock(int(DOC_TIMESTAMP)))
    assert verifier.is_valid(body=DOC_BODY, timestamp=DOC_TIMESTAMP, signature=DOC_SIGNATURE)
    # The bot's own check in front of Bolt (HTTP mode) accepts it too, and only it.
    bots = make_verifier(DOC_SECRET, clock=_FrozenClock(int(DOC_TIMESTAMP) + 299))
    headers = {"X-Slack-Request-Timestamp": DOC_TIMESTAMP, "X-Slack-Signature": DOC_SIGNATURE}
    assert check_request(verifier=bots, headers=headers, body=DOC_BODY) is None
    assert check_request(verifier=bots, headers=headers, body=DOC_BODY.replace("foobar", "foobaz")) is Refusal.BAD_SIGNATURE
    stale = make_verifier(DOC_SECRET, clock=_FrozenClock(int(DOC_TIMESTAMP) + 301))
    assert check_request(verifier=stale, headers=headers, body=DOC_BODY) is Refusal.STALE_TIMESTAMP


class _FrozenClock:
    def __init__(self, now: int) -> None:
        self._now = now

    def now(self) -> float:
        return float(self._now)


BLOCKS = [
    {"type": "header", "text": {"type": "plain_text", "text": "etcd restore"}},
    {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "<@U0ALICE01> asks <!subteam^S0APPROVERS> in <#C0INCIDENT>"},
    },
    {
        "type": "section",
        "fields": [
            {"type": "mrkdwn", "text": "*Node*\nmaster-0"},
            {"type": "mrkdwn", "text": "*Backup*\nsnapshot_2020.db"},
            {"type": "mrkdwn", "text": "*Step*\n3 of 9"},
        ],
        "accessory": {
            "type": "button",
            "text": {"type": "plain_text", "text": "Details"},
            "action_id": "details",
        },
    },
    {"type": "divider"},
    {"type": "context", "elements": [{"type": "mrkdwn", "text": "run `r-42` &amp; <https://docs|docs>"}]},
    {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "text": {"type": "plain_text", "text": "Approve"},
                "action_id": "approve",
                "value": "r-42",
            },
            {"type": "button", "text": {"type": "plain_text", "text": "Reject"}},
        ],
    },
]


def test_render_blocks_reads_like_slack() -> None:
    text = render_blocks(BLOCKS, text="fallback", names=names())
    assert text.splitlines() == [
        "== etcd restore ==",
        "@alice asks @etcd-approvers in #incident",
        "  *Node* master-0  |  *Backup* snapshot_2020.db",
        "  *Step* 3 of 9",
        "  [1] Details",
        "----",
        "  run `r-42` & docs (https://docs)",
        "[2] Approve  [3] Reject",
    ]
    assert render_blocks([], text="plain <@U0BOB0001>") == "plain @bob"
    assert "[6] Approve  [7] Reject" in render_blocks(BLOCKS, first_button=5)


def test_buttons_in_render_order_with_default_ids() -> None:
    found = buttons(BLOCKS)
    assert [b.text for b in found] == ["Details", "Approve", "Reject"]
    assert found[1].action_id == "approve" and found[1].value == "r-42"
    assert found[2].action_id and found[2].block_id  # Slack fills missing ids in


def test_rate_limit_window_per_channel() -> None:
    now = [100.0]
    limiter = ChannelRateLimiter(limit=(2, 5.0), clock=lambda: now[0])
    assert limiter.check(channel="C1") is None
    assert limiter.check(channel="C1") is None
    assert limiter.check(channel="C1") == 5
    assert limiter.check(channel="C2") is None
    now[0] += 3.2
    assert limiter.check(channel="C1") == 2
    now[0] += 1.8
    assert limiter.check(channel="C1") is None


def test_reply_rules_ephemeral_in_channel_replace_delete() -> None:
    from lab.slack.records import MessageVersion, Recorder
    from lab.slack.replies import ReplyContext, apply_reply

    recorder = Recorder()
    command = ReplyContext(user="U0ALICE01", channel="C0INCIDENT")
    assert apply_reply(recorder=recorder, context=command, payload={}, via="ack") is None
    private = apply_reply(recorder=recorder, context=command, payload={"text": "only alice"}, via="ack")
    assert private is not None and private.ephemeral_for == "U0ALICE01"
    public = apply_reply(
        recorder=recorder,
        context=command,
        payload={"text": "all", "response_type": "in_channel"},
        via="response_url",
    )
    assert public is not None and public.ephemeral_for is None

    card = recorder.put_message(
        MessageVersion(
            channel="C0INCIDENT",
            ts=recorder.next_ts(),
            user="U0ETCDBOT",
            text="card",
            blocks=[{"type": "divider"}],
        )
    )
    press = ReplyContext(user="U0BOB0001", channel="C0INCIDENT", original=card.key)
    replaced = apply_reply(
        recorder=recorder, context=press, payload={"replace_original": "true", "text": "done"}, via="r"
    )
    assert replaced is not None and (replaced.ts, replaced.version, replaced.blocks) == (card.ts, 2, [])
    deleted = apply_reply(recorder=recorder, context=press, payload={"delete_original": True}, via="r")
    assert deleted is not None and deleted.deleted and deleted.version == 3
    assert float(card.ts) > float(public.ts) > float(private.ts)
