"""Slack's request signing (v0), for HTTP-mode delivery to an app that verifies it.

`X-Slack-Signature: v0=HMAC-SHA256(signing_secret, "v0:{timestamp}:{body}")` with
`X-Slack-Request-Timestamp`. Bolt rejects a request whose signature or timestamp (older than
five minutes) is wrong, so signing exactly as Slack does is what makes HTTP mode testable.
"""

from __future__ import annotations

import hashlib
import hmac


def sign(*, signing_secret: str, timestamp: str | int, body: str) -> str:
    """The `X-Slack-Signature` value for one request."""
    base = f"v0:{timestamp}:{body}".encode()
    digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return f"v0={digest}"


def signed_headers(*, signing_secret: str, timestamp: int, body: str, content_type: str) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": str(timestamp),
        "X-Slack-Signature": sign(signing_secret=signing_secret, timestamp=timestamp, body=body),
    }
