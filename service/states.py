"""The job state machine shared by the gateway and the workers.

::

    queued ──► running ──► succeeded
      │  ▲        │ ├────► failed
      │  └────────┘ └────► canceled
      ├──► canceled
      └──► failed

``running -> queued`` is a requeue (a worker lost the job and Celery redelivers it). Terminal states
never change. :class:`service.jobs.JobStore` applies transitions atomically in Redis (compare-and-set on the
current status), so a worker finishing a job that was canceled meanwhile simply loses the race.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.QUEUED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}

TERMINAL: frozenset[JobStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


class InvalidTransition(ValueError):
    """A transition the state machine does not allow (or a lost compare-and-set race)."""

    def __init__(self, current: JobStatus | str | None, target: JobStatus | str) -> None:
        self.current = current
        self.target = target
        super().__init__(f"job cannot go from {current} to {target}")


def can_transition(current: JobStatus | str, target: JobStatus | str) -> bool:
    return JobStatus(target) in TRANSITIONS[JobStatus(current)]


def check_transition(current: JobStatus | str, target: JobStatus | str) -> None:
    if not can_transition(current, target):
        raise InvalidTransition(current, target)


def sources(target: JobStatus | str) -> frozenset[JobStatus]:
    """The states from which ``target`` can be reached."""
    t = JobStatus(target)
    return frozenset(s for s, nxt in TRANSITIONS.items() if t in nxt)


def is_terminal(status: JobStatus | str) -> bool:
    return JobStatus(status) in TERMINAL
