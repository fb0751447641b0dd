"""What the runner's modules share about a run this instance drives: bot/runner.py and its parts
(bot/run_gate.py, bot/run_step.py, bot/run_recovery.py) take these from here, so no part imports
bot/runner.py (which is built from them) nor another part.
- `_Live`: this instance's handle on a run it drives or holds (its lock, its task, its output posts).
- `_Stop`: how a drive ends (the run's state, the error, what to do next, who ended it).
- `_Grant`: the approval destructive steps run under, from the gate (bot/run_gate.py) to the step.
- `_Stale`: another instance adopted the run; this one stops and writes nothing.

Private to the runner's modules: nothing else imports them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from bot.locks import ClusterLock
from bot.procedure import StepId
from bot.store import RunState


@dataclass
class _Stop:
    state: RunState
    error: str = ""
    next_action: str = ""
    ended_by: str = ""


@dataclass(frozen=True)
class _Grant:
    """The approval this instance is running destructive steps under (never kept past a restart)."""

    request_id: str
    step_ids: frozenset[StepId]
    nothing_to_approve: bool = False  # the plan sent nothing: no request, checked again before the step


@dataclass
class _Live:
    """This instance's handle on a run it drives or holds."""

    lock: ClusterLock | None
    takes_lock: bool = True
    task: asyncio.Task[None] | None = None
    outputs: list[asyncio.Task[Any]] = field(default_factory=list)


class _Stale(Exception):
    """Another instance drives this run now (this one was paused past its lock): stop, write nothing."""
