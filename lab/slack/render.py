"""Block Kit as readable text, and the buttons a message offers.

People rehearsing an incident in a terminal, and test failures, need to read what Slack would
show: headers, sections with their fields, context lines, and buttons numbered `[1] Approve
[2] Reject` so they can be pressed by number. Mentions (`<@U..>`, `<#C..>`, `<!subteam^S..>`)
become names (the lab directory's by default). Pure functions: no I/O, no workspace state.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from lab.slack import directory


@dataclass(frozen=True)
class Button:
    """A button as the press payload names it; ids default as Slack fills them in when missing."""

    text: str
    action_id: str
    block_id: str
    value: str | None = None
    style: str | None = None
    url: str | None = None

    def as_action(self) -> dict:
        action: dict = {
            "action_id": self.action_id,
            "block_id": self.block_id,
            "text": {"type": "plain_text", "text": self.text, "emoji": True},
            "type": "button",
        }
        if self.value is not None:
            action["value"] = self.value
        if self.style:
            action["style"] = self.style
        return action


def buttons(blocks: list[dict]) -> list[Button]:
    """Every button in the blocks, in the order `render_blocks` numbers them."""
    found: list[Button] = []
    for index, block in enumerate(blocks):
        block_id = str(block.get("block_id") or f"lab-block-{index}")
        elements = [block.get("accessory")] if block.get("type") == "section" else block.get("elements", [])
        if block.get("type") not in ("section", "actions"):
            continue
        for position, element in enumerate(elements or []):
            if isinstance(element, dict) and element.get("type") == "button":
                found.append(
                    Button(
                        text=_plain(element.get("text")),
                        action_id=str(element.get("action_id") or f"lab-action-{index}-{position}"),
                        block_id=block_id,
                        value=element.get("value"),
                        style=element.get("style"),
                        url=element.get("url"),
                    )
                )
    return found


def render_blocks(
    blocks: list[dict], *, text: str = "", names: Mapping[str, str] | None = None, first_button: int = 1
) -> str:
    """The message as lines of text; the fallback `text` when there are no blocks.

    `names` resolves mention ids (default: the lab directory's users, channels and group);
    `first_button` continues the numbering when several messages are rendered together.
    """
    table = directory.names() if names is None else names
    if not blocks:
        return mrkdwn_to_text(text, names=table)
    number = first_button
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            lines.append(f"== {_plain(block.get('text'))} ==")
        elif kind == "section":
            if block.get("text"):
                lines.append(_text(block["text"], table))
            fields = [" ".join(_text(field, table).splitlines()) for field in block.get("fields", [])]
            for left, right in zip(fields[::2], [*fields[1::2], ""], strict=False):
                lines.append(f"  {left}  |  {right}" if right else f"  {left}")
            accessory = block.get("accessory")
            if isinstance(accessory, dict):
                rendered, number = _element(accessory, number)
                lines.append(f"  {rendered}")
        elif kind == "divider":
            lines.append("----")
        elif kind == "context":
            parts = [
                _element(element, 0)[0] if element.get("type") == "image" else _text(element, table)
                for element in block.get("elements", [])
            ]
            lines.append("  " + "  ·  ".join(parts))
        elif kind == "actions":
            parts = []
            for element in block.get("elements", []):
                rendered, number = _element(element, number)
                parts.append(rendered)
            lines.append("  ".join(parts))
        elif kind == "image":
            lines.append(f"[image: {block.get('alt_text', '')}]")
        elif kind == "rich_text":
            lines.append(mrkdwn_to_text(_rich_text(block), names=table))
        elif kind == "input":
            lines.append(f"{_plain(block.get('label'))}: [input]")
        else:
            lines.append(f"[{kind}]")
    return "\n".join(lines)


_MENTION = re.compile(r"<([^<>|]+)(?:\|([^<>]*))?>")


def mrkdwn_to_text(text: str, *, names: Mapping[str, str]) -> str:
    """Slack's escaped mrkdwn with mentions resolved: `<@U0BOB0001>` -> `@bob`."""

    def mention(match: re.Match[str]) -> str:
        target, label = match.group(1), match.group(2)
        if target.startswith("@"):
            return "@" + (names.get(target[1:]) or label or target[1:])
        if target.startswith("#"):
            return "#" + (names.get(target[1:]) or label or target[1:])
        if target.startswith("!subteam^"):
            group = target[len("!subteam^") :]
            return "@" + (names.get(group) or (label or group).lstrip("@"))
        if target.startswith("!"):
            return "@" + (label or target[1:].split("^")[0])
        return f"{label} ({target})" if label else target

    resolved = _MENTION.sub(mention, text)
    return resolved.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _element(element: dict, number: int) -> tuple[str, int]:
    """One interactive or image element; buttons take the next number."""
    kind = element.get("type")
    if kind == "button":
        return f"[{number}] {_plain(element.get('text'))}", number + 1
    if kind == "image":
        return f"[image: {element.get('alt_text', '')}]", number
    placeholder = _plain(element.get("placeholder")) if element.get("placeholder") else ""
    return f"[{kind}{': ' + placeholder if placeholder else ''}]", number


def _text(obj: dict | None, names: Mapping[str, str]) -> str:
    if not obj:
        return ""
    return mrkdwn_to_text(str(obj.get("text", "")), names=names)


def _plain(obj: dict | str | None) -> str:
    if isinstance(obj, dict):
        return str(obj.get("text", ""))
    return obj or ""


def _rich_text(block: dict) -> str:
    """Flatten rich_text sections, lists and quotes to their text."""
    out: list[str] = []

    def walk(node: dict) -> None:
        if node.get("type") in ("text", "link"):
            out.append(str(node.get("text") or node.get("url") or ""))
        elif node.get("type") == "user":
            out.append(f"<@{node.get('user_id')}>")
        elif node.get("type") == "channel":
            out.append(f"<#{node.get('channel_id')}>")
        for child in node.get("elements", []):
            walk(child)
        if node.get("type") in ("rich_text_section", "rich_text_preformatted", "rich_text_quote"):
            out.append("\n")

    walk(block)
    return "".join(out).rstrip("\n")
