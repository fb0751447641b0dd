"""Secrets never reach a log line: by key, by configured value, by token shape."""

from __future__ import annotations

import io
import json
import logging

from bot.log import Redactor, configure_logging, get_logger


def test_redactor_keys_values_and_shapes():
    r = Redactor(["s3cr3t-signing-value"])
    event = r(None, "info", {"event": "x", "token": "anything", "url": "https://h/?sig=s3cr3t-signing-value",
                             "nested": {"authorization": "Bearer abc", "ok": "xoxb-123-456 here"},
                             "items": ["sha256~" + "a" * 43]})
    assert event["token"] == "***" and "s3cr3t" not in event["url"]
    assert event["nested"] == {"authorization": "***", "ok": "*** here"}
    assert event["items"] == ["***"]


def test_configured_logging_is_json_and_redacted():
    stream = io.StringIO()
    configure_logging(level="INFO", secrets=["xapp-lab-0123456789"], stream=stream)
    get_logger("t").info("hello", detail="token is xapp-lab-0123456789", user="U1")
    logging.getLogger("slack_bolt").warning("bolt says xapp-lab-0123456789")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "hello" and lines[0]["detail"] == "token is ***"
    assert "xapp-lab" not in stream.getvalue()
