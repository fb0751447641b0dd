"""HTTP mode's request check (bot/slack_http.py): what is refused, and why, before Bolt sees it.

Slack's documented signing example runs through the same check in tests/lab/test_slack_render.py.
"""

from __future__ import annotations

import time

import pytest

from bot.slack_http import MAX_AGE_SECONDS, Refusal, check_request, make_verifier
from lab.slack.signing import signed_headers

SECRET = "unit-test-signing-secret-0123456789"
BODY = "command=%2Fetcd-status&text=&user_id=U0ALICE01&channel_id=C0INCIDENT"


def headers(*, secret: str = SECRET, age: float = 0, body: str = BODY) -> dict[str, str]:
    return signed_headers(signing_secret=secret, timestamp=int(time.time() - age), body=body,
                          content_type="application/x-www-form-urlencoded")


def test_a_fresh_request_signed_with_the_secret_passes() -> None:
    assert check_request(verifier=make_verifier(SECRET), headers=headers(), body=BODY) is None
    assert check_request(verifier=make_verifier(SECRET), headers=headers(), body=BODY.encode()) is None


@pytest.mark.parametrize(("sent", "body", "refusal"), [
    (lambda: headers(secret="another-secret"), BODY, Refusal.BAD_SIGNATURE),
    (headers, BODY + "&text=rm", Refusal.BAD_SIGNATURE),
    (lambda: {**headers(), "X-Slack-Signature": "v0=" + "0" * 64}, BODY, Refusal.BAD_SIGNATURE),
    (lambda: headers(age=MAX_AGE_SECONDS + 5), BODY, Refusal.STALE_TIMESTAMP),
    (lambda: headers(age=-(MAX_AGE_SECONDS + 5)), BODY, Refusal.STALE_TIMESTAMP),
    (lambda: {**headers(), "X-Slack-Request-Timestamp": "yesterday"}, BODY, Refusal.STALE_TIMESTAMP),
    (lambda: {"Content-Type": "application/x-www-form-urlencoded"}, BODY, Refusal.MISSING_HEADERS),
    (lambda: {k: v for k, v in headers().items() if k != "X-Slack-Signature"}, BODY, Refusal.MISSING_HEADERS),
    (lambda: {k: v for k, v in headers().items() if k != "X-Slack-Request-Timestamp"}, BODY, Refusal.MISSING_HEADERS),
])
def test_refusals(sent, body: str, refusal: Refusal) -> None:  # type: ignore[no-untyped-def]
    assert check_request(verifier=make_verifier(SECRET), headers=sent(), body=body) is refusal


def test_a_request_just_inside_five_minutes_passes() -> None:
    assert check_request(verifier=make_verifier(SECRET), headers=headers(age=MAX_AGE_SECONDS - 5), body=BODY) is None
