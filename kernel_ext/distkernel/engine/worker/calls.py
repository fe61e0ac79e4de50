"""What every call in a worker shares: which call runs here, and how a call ended.

Kept apart from ``worker_concurrency`` so that a worker imports asyncio only when it
hosts an async actor (importing it costs a process ~12 ms at start-up).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from distkernel.core.protocol import Value

#: The task id of the call running in this thread or coroutine ("" outside one).
CURRENT_CALL: contextvars.ContextVar[str] = contextvars.ContextVar("distkernel_call",
                                                                   default="")


@dataclass(slots=True)
class Outcome:
    """How a call ended: what TaskDone reports, and its value (refs inside must outlive it)."""

    results: tuple[Value, ...] = ()
    failed: bool = False
    cancelled: bool = False
    exited: bool = False  # exit_actor() ended the actor
    value: Any = None
