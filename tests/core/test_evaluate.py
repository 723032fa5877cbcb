"""Evaluation conventions: the reference under a condition, tallies, summaries."""

from __future__ import annotations

import pytest
import torch

from core.evaluate import PSNR_CAP, Tally, forger_effect, measure, summarize
from core.forgers import create_forger
from core.methods import create_method
from core.targets import fixed_targets
from tests.conftest import synthetic_faces


@pytest.fixture(scope="module")
def forger():
    return create_forger("stargan", config="tiny", pretrained=False)


@pytest.mark.parametrize("condition", ["clean", "jpeg75", "resize0.5", "blur1"])
def test_condition_alone_is_never_a_success(forger, condition: str) -> None:
    x = synthetic_faces(2, 32)
    targets = fixed_targets(forger.attributes).expand(2, -1, -1)
    eff = forger_effect(forger, x, x.clone(), targets, condition)
    assert eff["distortion"].abs().max() == 0
    assert not eff["defended"].any()
    assert eff["edit_strength"].shape == (10,)


def test_unchanged_images_count_with_capped_psnr(forger) -> None:
    x = synthetic_faces(2, 32)
    targets = fixed_targets(forger.attributes).expand(2, -1, -1)
    tally = measure(x, x.clone(), targets, [forger], ("clean",))
    summary = summarize(tally, create_method("pgd", forger), [forger], ("clean",))
    assert summary["faces"] == 2
    assert summary["psnr"] == PSNR_CAP
    assert summary["rows"][0]["success_rate"] == 0.0


def test_nan_is_loud() -> None:
    with pytest.raises(FloatingPointError, match="distortion"):
        Tally().add("distortion", torch.tensor([0.1, float("nan")]))


def test_tally_means_and_max() -> None:
    t = Tally()
    t.add("a", torch.tensor([1.0, 3.0]))
    t.add("a", 5.0)
    t.track_max("m", torch.tensor([0.2, 0.7]))
    assert t.mean("a") == 3.0 and t.maxes["m"] == pytest.approx(0.7) and t.mean("missing") is None
