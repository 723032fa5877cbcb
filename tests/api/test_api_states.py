"""The job state machine."""

from __future__ import annotations

import pytest

from service.states import (
    TERMINAL,
    InvalidTransition,
    JobStatus,
    can_transition,
    check_transition,
    is_terminal,
    sources,
)


def test_transitions() -> None:
    assert can_transition("queued", "running") and can_transition("queued", "canceled")
    assert can_transition("running", "succeeded") and can_transition("running", "queued")
    assert not can_transition("queued", "succeeded")
    for terminal in TERMINAL:
        assert is_terminal(terminal)
        for target in JobStatus:
            assert not can_transition(terminal, target)
    assert {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED} == TERMINAL
    assert sources("running") == {JobStatus.QUEUED}
    assert sources("canceled") == {JobStatus.QUEUED, JobStatus.RUNNING}
    with pytest.raises(InvalidTransition, match="succeeded to running"):
        check_transition("succeeded", "running")
    with pytest.raises(ValueError):
        can_transition("queued", "lost")
