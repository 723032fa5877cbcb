"""Cooperative stops: long work (a protection's steps, a photo's faces, a receipt's conditions) calls
:func:`checkpoint` between steps, and whoever runs it decides, through :func:`watch`, whether to stop there.

A worker's solo pool enforces no Celery time limit and a cancelled job's task would run to its end: the
worker watches each job with a check that says "canceled" or "time limit" and the work stops at the next
step, raising :class:`Interrupted`. Without a watcher :func:`checkpoint` costs a context-variable read.

    with watch(lambda: "canceled" if store.is_canceled(job_id) else None):
        protect_images(...)
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Check = Callable[[], str | None]  # None: go on; a reason: stop

_CHECK: contextvars.ContextVar[Check | None] = contextvars.ContextVar("veil_interrupt_check", default=None)


class Interrupted(Exception):
    """Work stopped at a checkpoint; ``reason`` is what the watcher's check said."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@contextmanager
def watch(check: Check) -> Iterator[None]:
    """Run the block with ``check`` consulted at every :func:`checkpoint` (nested watches: the innermost)."""
    token = _CHECK.set(check)
    try:
        yield
    finally:
        _CHECK.reset(token)


def checkpoint() -> None:
    """Raise :class:`Interrupted` if the current watcher says to stop."""
    check = _CHECK.get()
    if check is not None:
        reason = check()
        if reason is not None:
            raise Interrupted(reason)


def deadline_check(seconds: float, clock: Callable[[], float] = time.monotonic) -> Check:
    """A check that says ``"time limit"`` once ``seconds`` have passed since it was made."""
    end = clock() + seconds
    return lambda: "time limit" if clock() >= end else None


def throttled(check: Check, every: float, clock: Callable[[], float] = time.monotonic) -> Check:
    """``check`` consulted at most once per ``every`` seconds (a Redis read per PGD step would be too many)."""
    last = [float("-inf")]

    def run() -> str | None:
        now = clock()
        if now - last[0] < every:
            return None
        last[0] = now
        return check()

    return run


def first_of(*checks: Check) -> Check:
    """The first reason any of ``checks`` gives."""
    def run() -> str | None:
        for check in checks:
            reason = check()
            if reason is not None:
                return reason
        return None

    return run
