"""`etcdbot run [--env-file FILE]`: load settings, set up logs, run the bot until a signal.

A bad setting ends the process at once with exit code 2 and one line per problem naming the
variable, before anything connects.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from bot.config import ConfigError, load_settings
from bot.log import configure_logging, get_logger


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etcdbot", description="Slack bot for etcd incidents on OpenShift 4.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the bot (Socket Mode or HTTP, per ETCDBOT_SLACK_MODE)")
    check = sub.add_parser("check-config", help="validate the settings and exit")
    for command in (run, check):
        command.add_argument("--env-file", type=Path,
                             help="a file of `export ETCDBOT_KEY=VALUE` lines (the lab's DIR/env)")
    return parser


async def _serve(settings: object) -> None:
    from bot.app import run

    task = asyncio.ensure_future(run(settings))  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(env_file=args.env_file)
    except ConfigError as exc:
        print(f"etcdbot: the settings need fixing:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(level=settings.log_level, secrets=settings.secret_values())
    if args.command == "check-config":
        print(f"settings ok: clusters {', '.join(settings.cluster_names)}; Slack mode {settings.slack_mode}")
        return 0
    get_logger("etcdbot").info("etcdbot.starting")
    asyncio.run(_serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
