"""The slash command of every registered procedure that names one (`/etcd-backup [cluster]
[--dry-run]`, and any procedure module loaded with ETCDBOT_PROCEDURE_MODULES), and the override
button of an admission warning.

A handler here knows no procedure: it parses the command's arguments (declared by the
registration), acks, and asks the runner to start or to plan. What may start is the procedure's
admission, which the runner asks; the handler only renders its answer: a refusal (with when it
stops applying), or a warning with the procedure's override button, whose press starts the same
procedure with that one warning overridden. A busy cluster is answered with the run holding it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.models.blocks import ActionsBlock, Block, ButtonElement, MarkdownTextObject, SectionBlock

from bot.auth import Authorizer
from bot.config import CLUSTER_NAME_RE, Settings
from bot.log import get_logger
from bot.procedure import Admission, Registration, Verdict, registered
from bot.progress import slack_time
from bot.run_types import Busy, ProcedureFactory
from bot.runner import Runner
from handlers.common import (
    CLUSTER_ARG,
    Arg,
    CommandSpec,
    Respond,
    command_context,
    counted,
    escape,
    mark_outcome,
    parse_for_cluster,
)

log = get_logger("etcdbot.procedures")

OVERRIDE_ACTION = "admission_override"
DRY_RUN = "--dry-run"


def spec_of(registration: Registration) -> CommandSpec:
    """The command's usage: the procedure's own arguments, then the optional cluster, `--dry-run`."""
    args = tuple(Arg(p.name, p.pattern, p.example, optional=p.optional) for p in registration.params if not p.flag)
    options = tuple((p.flag, Arg(p.name, p.pattern, p.example, optional=True)) for p in registration.params if p.flag)
    return CommandSpec(registration.command, (*args, CLUSTER_ARG), flags=frozenset({DRY_RUN}), options=options)


def _utc(epoch: float) -> str:
    return f"{datetime.fromtimestamp(epoch, UTC):%Y-%m-%d %H:%M} UTC"


def refusal_text(admission: Admission) -> str:
    """A refusal as the person reads it: why, from when it becomes possible, what to do then."""
    text = f":no_entry: {admission.message}"
    if admission.until is not None:
        text += f" It becomes possible from {slack_time(admission.until)} ({_utc(admission.until)})."
    if admission.next_action:
        text += f" {admission.next_action}"
    return text


def warning_text(admission: Admission) -> str:
    return f":warning: {admission.message} {admission.override_label}?"


def warning_blocks(*, admission: Admission, procedure: str, cluster: str,
                   parameters: Mapping[str, Any]) -> list[Block]:
    """The warning and its override button; the button carries what to start again."""
    value = json.dumps({"procedure": procedure, "cluster": cluster, "override": admission.override,
                        "parameters": dict(parameters)}, separators=(",", ":"))
    return [
        SectionBlock(text=MarkdownTextObject(text=warning_text(admission))),
        ActionsBlock(block_id=f"admission:{procedure}:{cluster}", elements=[
            ButtonElement(text=admission.override_label, action_id=OVERRIDE_ACTION, value=value, style="primary"),
        ]),
    ]


def dry_run_note(admission: Admission) -> str:
    """What a dry run adds below its plan when a real start would not simply start."""
    if admission.verdict is Verdict.REFUSE:
        return refusal_text(admission)
    if admission.verdict is Verdict.WARN:
        return f":warning: {admission.message} A run would ask first: *{admission.override_label}*."
    return ""


@dataclass
class ProcedureCommands:
    """The listeners' shared dependencies."""

    settings: Settings
    runner: Runner
    procedure: ProcedureFactory  # name, parameters -> Procedure (the registry, through services)
    authorizer: Authorizer

    async def start(self, *, registration: Registration, cluster: str, parameters: Mapping[str, Any], user: str,
                    channel: str, respond: Respond, overrides: frozenset[str] = frozenset()) -> None:
        result = await self.runner.start(self.procedure(registration.name, parameters), cluster=cluster,
                                         parameters=parameters, requester=user, channel=channel, overrides=overrides)
        if isinstance(result, Busy):
            log.info("procedure.busy", procedure=registration.name, cluster=cluster, holder=result.run_id, user=user)
            mark_outcome("busy")
            await respond(text=f":hourglass: {result.message()}", response_type="ephemeral", replace_original=False)
        elif isinstance(result, Admission) and result.verdict is Verdict.WARN:
            log.info("procedure.warned", procedure=registration.name, cluster=cluster, override=result.override,
                     user=user)
            await respond(text=warning_text(result), response_type="ephemeral", replace_original=False,
                          blocks=warning_blocks(admission=result, procedure=registration.name, cluster=cluster,
                                                parameters=parameters))
        elif isinstance(result, Admission):
            log.warning("procedure.refused", procedure=registration.name, cluster=cluster, reason=result.message,
                        user=user)
            mark_outcome("refused_admission")
            await respond(text=refusal_text(result), response_type="ephemeral", replace_original=False)
        else:
            log.info("procedure.started", procedure=registration.name, cluster=cluster, run_id=result.id, user=user)

    def command_handler(self, registration: Registration) -> Callable[..., Awaitable[None]]:
        spec = spec_of(registration)

        async def handle(ack: Respond, command: dict[str, Any], respond: Respond) -> None:
            found = await parse_for_cluster(ack=ack, command=command, spec=spec, settings=self.settings)
            if found is None:
                return
            parsed, cluster = found
            dry_run = DRY_RUN in parsed.flags
            parameters = {p.name: parsed.values[p.name] for p in registration.params if p.name in parsed.values}
            verb = "Planning" if dry_run else "Checking"
            await ack(text=f"{verb} `{registration.name}` on {cluster}…", response_type="ephemeral")
            log.info("procedure.asked", procedure=registration.name, cluster=cluster, dry_run=dry_run,
                     **command_context(command))
            user, channel = str(command["user_id"]), str(command["channel_id"])
            if dry_run:
                plan = await self.runner.dry_run(self.procedure(registration.name, parameters), cluster=cluster,
                                                 parameters=parameters, requester=user, channel=channel)
                note = dry_run_note(plan.admission)
                if note:
                    await respond(text=note, response_type="ephemeral")
                return
            await self.start(registration=registration, cluster=cluster, parameters=parameters, user=user,
                             channel=channel, respond=respond)

        return handle

    async def handle_override(self, ack: Respond, body: dict[str, Any], client: Any, respond: Respond) -> None:
        """The warning's button: the same procedure, started with that warning overridden by the
        person who pressed (who must be allowed to run commands)."""
        await ack()
        user = str(body["user"]["id"])
        decision = await self.authorizer.check(client=client, user_id=user)
        if not decision.allowed:
            await respond(text=f":no_entry: You may not start that: {decision.reason}.", replace_original=False,
                          response_type="ephemeral")
            return
        try:
            value = json.loads(body["actions"][0]["value"])
            name, cluster, override = str(value["procedure"]), str(value["cluster"]), str(value["override"])
            parameters = {str(k): str(v) for k, v in dict(value.get("parameters") or {}).items()}
            registration = registered(name)
        except (ValueError, KeyError, TypeError, IndexError):
            await respond(text="This button names nothing I can start.", replace_original=False)
            return
        if not CLUSTER_NAME_RE.fullmatch(cluster) or self.settings.cluster(cluster) is None:
            await respond(text=f"I know no cluster `{escape(cluster)}`.", replace_original=False)
            return
        unknown = set(parameters) - {p.name for p in registration.params}
        bad = [p.name for p in registration.params if p.name in parameters and not p.pattern.fullmatch(parameters[p.name])]
        if unknown or bad or not override:
            await respond(text="This button's values are not valid any more; type the command again.",
                          replace_original=False)
            return
        channel = str((body.get("channel") or {}).get("id") or body.get("container", {}).get("channel_id", ""))
        log.info("procedure.override", procedure=name, cluster=cluster, override=override, user=user)
        await respond(text=f"Starting `{name}` on {cluster} ({escape(override)} overridden), as asked by <@{user}>.",
                      replace_original=True, response_type="ephemeral")
        await self.start(registration=registration, cluster=cluster, parameters=parameters, user=user,
                         channel=channel, respond=respond, overrides=frozenset({override}))


def register(app: AsyncApp, *, commands: ProcedureCommands, registrations: Sequence[Registration],
             middleware: Sequence[Any]) -> set[str]:
    """One slash command per registration that names one; returns the commands registered."""
    names = set()
    for registration in registrations:
        if not registration.command:
            continue
        app.command(registration.command, middleware=list(middleware))(
            counted(registration.command, commands.command_handler(registration)))
        names.add(registration.command)
    app.action(OVERRIDE_ACTION)(commands.handle_override)
    return names
