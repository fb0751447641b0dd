"""What every slash command does before its own work: read the arguments, pick the cluster, check the user.

Each refusal is an ephemeral message that says what is wrong and what to type instead; nothing
runs, and the attempt is logged (user, command, channel, reason: never the token). Parsing and
cluster resolution are pure functions so their wording is unit-tested.
"""

from __future__ import annotations

import contextvars
import functools
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot import metrics
from bot.auth import Authorizer
from bot.config import CLUSTER_NAME_RE, Settings
from bot.log import get_logger
from bot.slacktext import escape

log = get_logger("etcdbot.handlers")

MAX_TEXT = 500
Respond = Callable[..., Awaitable[Any]]  # Bolt's ack / respond / say, as the handlers call them


class UsageError(ValueError):
    """Input we refuse; `str()` is the ephemeral text (what is wrong, what to type instead)."""


@dataclass(frozen=True)
class Arg:
    """A positional argument: its name in usage text, the pattern it must match, an example value."""

    name: str
    pattern: re.Pattern[str]
    example: str
    optional: bool = False


@dataclass(frozen=True)
class CommandSpec:
    command: str
    args: tuple[Arg, ...] = ()
    flags: frozenset[str] = field(default_factory=frozenset)
    # Options that take a value (`--recovery-host NODE` or `--recovery-host=NODE`): flag -> its Arg.
    options: tuple[tuple[str, Arg], ...] = ()

    @property
    def usage(self) -> str:
        parts = [self.command, *(f"[{a.name}]" if a.optional else f"<{a.name}>" for a in self.args)]
        parts += [f"[{flag} {arg.name.upper()}]" for flag, arg in self.options]
        parts += [f"[{f}]" for f in sorted(self.flags)]
        return " ".join(parts)

    @property
    def example(self) -> str:
        return " ".join([self.command, *(a.example for a in self.args)])


CLUSTER_ARG = Arg("cluster", CLUSTER_NAME_RE, "lab", optional=True)


@dataclass(frozen=True)
class ParsedCommand:
    values: dict[str, str]
    flags: frozenset[str]


def parse_args(text: str | None, *, spec: CommandSpec) -> ParsedCommand:
    """Splits on whitespace (no quoting: no argument of ours holds a space) and checks each value."""
    text = (text or "").strip()
    if len(text) > MAX_TEXT:
        raise UsageError(f"That is too long for `{spec.command}`. Usage: `{spec.usage}`")
    words, values = _take_options(text.split(), spec=spec)
    flags = frozenset(w for w in words if w.startswith("--"))
    unknown = sorted(flags - spec.flags)
    if unknown:
        raise UsageError(f"`{spec.command}` has no option `{unknown[0]}`. Usage: `{spec.usage}`, e.g. `{spec.example}`")
    words = [w for w in words if not w.startswith("--")]
    if len(words) > len(spec.args):
        extra = " ".join(words[len(spec.args):])
        raise UsageError(
            f"`{spec.command}` takes {_count(spec)}; I do not know what to do with `{_clip(extra)}`. "
            f"Usage: `{spec.usage}`, e.g. `{spec.example}`"
        )
    required = [a for a in spec.args if not a.optional]
    if len(words) < len(required):
        missing = required[len(words)]
        raise UsageError(f"`{spec.command}` needs a {missing.name}. Usage: `{spec.usage}`, e.g. `{spec.example}`")
    for arg, word in zip(spec.args, words, strict=False):
        if not arg.pattern.fullmatch(word):
            raise UsageError(
                f"`{_clip(word)}` is not a valid {arg.name}. Usage: `{spec.usage}`, e.g. "
                f"`{spec.command} {arg.example}`"
            )
        values[arg.name] = word
    return ParsedCommand(values=values, flags=flags)


def _take_options(words: list[str], *, spec: CommandSpec) -> tuple[list[str], dict[str, str]]:
    """The words left once each option and its value are taken out, and the values (by the
    option's Arg name), each checked against its pattern."""
    options = dict(spec.options)
    left: list[str] = []
    values: dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        flag, eq, inline = word.partition("=")
        arg = options.get(flag)
        if arg is None:
            left.append(word)
            index += 1
            continue
        if eq:
            value, index = inline, index + 1
        elif index + 1 < len(words) and not words[index + 1].startswith("--"):
            value, index = words[index + 1], index + 2
        else:
            raise UsageError(f"`{flag}` needs a {arg.name}, e.g. `{flag} {arg.example}`. Usage: `{spec.usage}`")
        if not arg.pattern.fullmatch(value):
            raise UsageError(f"`{_clip(value)}` is not a valid {arg.name}. Usage: `{spec.usage}`, e.g. "
                             f"`{spec.command} {flag} {arg.example}`")
        if arg.name in values:
            raise UsageError(f"`{flag}` is given twice. Usage: `{spec.usage}`")
        values[arg.name] = value
    return left, values


def _count(spec: CommandSpec) -> str:
    if not spec.args:
        return "no arguments"
    names = ", ".join(("an optional " if a.optional else "a ") + a.name for a in spec.args)
    return f"at most {len(spec.args)} argument{'s' if len(spec.args) > 1 else ''} ({names})"


def _clip(text: str, limit: int = 40) -> str:
    text = text.replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def resolve_cluster(*, settings: Settings, explicit: str | None, channel_id: str, command: str) -> str:
    """The explicit argument, else the cluster mapped to the channel, else the only cluster."""
    names = settings.cluster_names
    listed = ", ".join(f"`{n}`" for n in names)
    if explicit:
        if settings.cluster(explicit) is None:
            raise UsageError(f"I know no cluster `{explicit}`. Known clusters: {listed}. Try `{command} {names[0]}`.")
        return explicit
    mapped = settings.cluster_for_channel(channel_id)
    if mapped is not None:
        return mapped.name
    if len(names) == 1:
        return names[0]
    raise UsageError(
        f"This channel is mapped to no cluster and {len(names)} are configured: {listed}. "
        f"Name one: `{command} {names[0]}`."
    )


def command_context(command: dict[str, Any]) -> dict[str, str]:
    """The fields worth logging about a slash command (never its token or response_url)."""
    return {
        "command": str(command.get("command", "")),
        "user": str(command.get("user_id", "")),
        "channel": str(command.get("channel_id", "")),
        "text": _clip(str(command.get("text", "")), 100),
    }


# The outcome of the slash command being handled in this task, for `counted()`; None outside one.
_OUTCOME: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("etcdbot_command_outcome", default=None)


def mark_outcome(outcome: str) -> None:
    """Says how the current command ended (`busy`, `refused_usage`...) when it is not plain "ok"."""
    box = _OUTCOME.get()
    if box is not None:
        box[0] = outcome


def counted(command: str, handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Wraps a command listener to count it in `etcdbot_commands{command,outcome}`.

    functools.wraps keeps the listener's signature visible to Bolt, which injects arguments by name.
    """

    @functools.wraps(handler)
    async def wrapper(**kwargs: Any) -> None:
        box = ["ok"]
        token = _OUTCOME.set(box)
        try:
            await handler(**kwargs)
        except Exception:
            box[0] = "error"
            raise
        finally:
            _OUTCOME.reset(token)
            metrics.command_handled(command, box[0])

    return wrapper


async def refuse(*, ack: Callable[..., Awaitable[Any]], command: dict[str, Any], reason: str, kind: str) -> None:
    """Answers with an ephemeral refusal (the ack itself) and logs the attempt."""
    await ack(text=f":no_entry: {escape(reason)}", response_type="ephemeral")
    log.warning("command.refused", kind=kind, reason=reason, **command_context(command))
    outcome = "refused_usage" if kind == "usage" else "refused_auth"
    if _OUTCOME.get() is not None:
        mark_outcome(outcome)
    else:  # refused by a middleware, before any counted listener ran
        metrics.command_handled(command.get("command"), outcome)


async def parse_for_cluster(*, ack: Callable[..., Awaitable[Any]], command: dict[str, Any], spec: CommandSpec,
                            settings: Settings) -> tuple[ParsedCommand, str] | None:
    """A command's arguments and the cluster it is about; on bad input the refusal is the ack
    (private, says what to type instead) and the answer is None: the caller runs nothing."""
    try:
        parsed = parse_args(command.get("text"), spec=spec)
        cluster = resolve_cluster(settings=settings, explicit=parsed.values.get("cluster"),
                                  channel_id=str(command.get("channel_id", "")), command=spec.command)
    except UsageError as exc:
        await refuse(ack=ack, command=command, reason=str(exc), kind="usage")
        return None
    return parsed, cluster


def authorization_middleware(authorizer: Authorizer) -> Callable[..., Awaitable[Any]]:
    """A Bolt listener middleware: calls next() only for users who may run commands."""

    async def authorize(ack: Any, command: dict[str, Any], client: Any,
                        next: Callable[[], Awaitable[Any]]) -> Any:  # noqa: A002 (Bolt injects by name)
        decision = await authorizer.check(client=client, user_id=str(command.get("user_id", "")))
        if not decision.allowed:
            await refuse(ack=ack, command=command, kind="not-allowed",
                         reason=f"You may not run `{command.get('command')}`: {decision.reason}. "
                                "Ask an etcd operator to run it, or to add you.")
            # A listener middleware that stops the chain must return the ack's response: Bolt
            # otherwise treats the request as unhandled and Slack shows a time-out, not the refusal.
            return getattr(ack, "response", None)
        await next()
        return None

    return authorize


def action_authorization_middleware(authorizer: Authorizer) -> Callable[..., Awaitable[Any]]:
    """The same rule for buttons that act on a run (Abort, Resume, Re-run): a person who may not
    run commands may not press them either. The refusal is private to the presser."""

    async def authorize(ack: Any, body: dict[str, Any], client: Any, respond: Any,
                        next: Callable[[], Awaitable[Any]]) -> Any:  # noqa: A002 (Bolt injects by name)
        user_id = str(body.get("user", {}).get("id", ""))
        decision = await authorizer.check(client=client, user_id=user_id)
        if not decision.allowed:
            await ack()
            log.info("action.refused", user=user_id, reason=decision.reason)
            await respond(text=f"You may not do that: {decision.reason}. Ask an etcd operator.",
                          replace_original=False, response_type="ephemeral")
            return getattr(ack, "response", None)
        await next()
        return None

    return authorize


def specs_usage(specs: Sequence[CommandSpec]) -> list[str]:
    return [spec.usage for spec in specs]
