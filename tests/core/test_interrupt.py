"""Cooperative stops: a watcher's check stops a protection between steps, and only inside its block."""

from __future__ import annotations

import pytest
import torch

from core.forgers import create_forger
from core.image import LoadedImage, quantize
from core.interrupt import Interrupted, checkpoint, deadline_check, first_of, throttled, watch
from core.methods import create_method
from core.protect import protect_images
from core.targets import fixed_targets


class Counter:
    """A check that says ``reason`` from its ``after``-th call on."""

    def __init__(self, after: int, reason: str = "canceled") -> None:
        self.calls = 0
        self.after = after
        self.reason = reason

    def __call__(self) -> str | None:
        self.calls += 1
        return self.reason if self.calls >= self.after else None


def test_checkpoint_outside_a_watch_never_stops() -> None:
    checkpoint()
    with watch(lambda: None):
        checkpoint()
    with pytest.raises(Interrupted, match="canceled") as info, watch(lambda: "canceled"):
        checkpoint()
    assert info.value.reason == "canceled"
    checkpoint()  # the watch ended with its block


def test_a_protection_stops_at_the_step_the_check_says() -> None:
    torch.manual_seed(0)
    forger = create_forger("stargan", config="tiny", pretrained=False)
    pgd = create_method("pgd", [forger], eps=0.05, steps=50, seed=0)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    check = Counter(after=3)
    with pytest.raises(Interrupted), watch(check):
        pgd(x, targets=fixed_targets(forger.attributes)[None])
    assert check.calls == 3  # one check per step: stopped at the third, 47 steps never ran


def test_protect_images_stops_before_the_receipt() -> None:
    torch.manual_seed(0)
    forger = create_forger("stargan", config="tiny", pretrained=False)
    pgd = create_method("pgd", [forger], eps=0.05, steps=2, seed=0)
    photo = LoadedImage(tensor=quantize(torch.rand(1, 3, 40, 40) * 2 - 1), alpha=None, format=None)
    check = Counter(after=5, reason="time limit")
    # detection (1), two steps (2, 3), then the report's start (4) and the receipt's first condition (5)
    with pytest.raises(Interrupted, match="time limit"), watch(check):
        protect_images(pgd, [photo], whole_image=True)
    assert check.calls == 5


def test_deadline_throttle_and_first_of() -> None:
    now = [100.0]
    clock = lambda: now[0]  # noqa: E731
    deadline = deadline_check(10, clock)
    assert deadline() is None
    now[0] = 110.0
    assert deadline() == "time limit"
    inner = Counter(after=1)
    slow = throttled(inner, every=1.0, clock=clock)
    assert slow() == "canceled" and inner.calls == 1
    slow()
    assert inner.calls == 1  # within the second: not consulted again
    now[0] = 111.5
    slow()
    assert inner.calls == 2
    assert first_of(lambda: None, lambda: "b", lambda: "c")() == "b"
    assert first_of(lambda: None)() is None
