"""Whether an edit still works on a protected face: the judge's reading and the visible-ruin rule."""

from __future__ import annotations

import pytest
import torch

from core import evaluate
from core.evaluate import Tally, edit_blocked, edited_attributes, measure
from core.forgers import create_forger
from core.receipt import forger_numbers, photo_receipt
from core.targets import fixed_targets


class RedJudge:
    """Reads attribute 0 as "red on average"; attribute 1 as a fixed value (``second``)."""

    attributes = ("A", "B")

    def __init__(self, second: float = -1.0) -> None:
        self.second = second

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0].mean(dim=(1, 2)), torch.full((x.shape[0],), self.second)], dim=1)


def faces(*reds: float) -> torch.Tensor:
    x = torch.zeros(len(reds), 3, 8, 8)
    x[:, 0] = torch.tensor(reds)[:, None, None]
    return x


def no_lpips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate, "_lpips_or_none", lambda a, b: None)


def test_edited_attributes_prefers_the_one_set() -> None:
    judge = RedJudge(second=-1.0)  # reads (A by red, B = 0)
    xs = faces(0.5, 0.5, -0.5)  # A read as 1, 1, 0 (which attributes an edit sets needs no margin)
    cs = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    edited = edited_attributes(judge, xs, cs)
    # set B (and clear A): checked on B; only clear A: checked on A; nothing differs: nothing edited
    assert edited.tolist() == [[False, True], [True, False], [False, False]]


def test_blocked_when_the_protected_edit_misses_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    no_lpips(monkeypatch)
    judge = RedJudge()
    xs = faces(-1.5, -1.5, -1.5, -1.5)  # A read as 0 on every face
    cs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # edit to A, three times; no edit
    out_clean = faces(1.5, 1.5, -1.5, -1.5)  # the third clean edit fails by itself
    out_adv = faces(1.5, -1.5, -1.5, -1.5)
    counted, blocked = edit_blocked(judge, xs, cs, out_clean, out_adv)
    assert counted.tolist() == [True, True, False, False]
    assert blocked.tolist() == [False, True, True, False]


@pytest.mark.parametrize(("clean", "adv", "counted", "blocked"), [
    (0.5, -1.5, False, True),  # an edit the judge barely reads on the clean face does not count
    (1.5, -0.5, True, False),  # nudged across the boundary: the judge no longer reads it clearly either way
    (1.5, -0.99, True, False),
    (1.5, -1.0, True, True),  # clearly read away from the target (the margin, JUDGE_MARGIN)
])
def test_the_judge_must_read_an_edit_clearly(monkeypatch: pytest.MonkeyPatch, clean: float, adv: float,
                                            counted: bool, blocked: bool) -> None:
    no_lpips(monkeypatch)
    assert evaluate.JUDGE_MARGIN == 1.0
    xs, cs = faces(-1.5), torch.tensor([[1.0, 0.0]])
    got = edit_blocked(RedJudge(), xs, cs, faces(clean), faces(adv))
    assert (bool(got[0]), bool(got[1])) == (counted, blocked)


def test_a_visibly_ruined_edit_is_blocked_even_when_it_reaches_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    judge = RedJudge()
    xs, cs = faces(-1.5, -1.5), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    out_clean, out_adv = faces(1.5, 1.5), faces(1.6, 1.6)  # both reach A
    # LPIPS stand-in: the edits' own distance is 0.2 (measured first, with the clean edits); the protected
    # edits' distance from the clean edits is 0.3 and 0.1
    distances = iter([torch.tensor([0.2, 0.2]), torch.tensor([0.3, 0.1])])
    monkeypatch.setattr(evaluate, "_lpips_or_none", lambda a, b: next(distances))
    counted, blocked = edit_blocked(judge, xs, cs, out_clean, out_adv)
    assert counted.tolist() == [True, True]
    assert blocked.tolist() == [True, False]


def test_measure_and_receipt_report_edit_blocked_only_for_a_matching_judge() -> None:
    torch.manual_seed(0)
    forger = create_forger("stargan", config="tiny", pretrained=False)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    targets = fixed_targets(forger.attributes)[None].expand(2, -1, -1)

    class Judge:
        attributes = tuple(forger.attributes)

        def __call__(self, im: torch.Tensor) -> torch.Tensor:
            # every attribute read as the sign of the image's mean: each edit's target is 0 or 1 somewhere
            return im.mean(dim=(1, 2, 3))[:, None].expand(-1, len(self.attributes)) * 100

    tally = measure(x, x.clone(), targets, [forger], quality=False, judge=Judge())
    numbers = forger_numbers(tally, [forger])["stargan"]
    # the same photo: nothing is blocked where anything is counted
    assert numbers["edit_blocked"] in (None, 0.0)
    assert "stargan/clean/edit_blocked" in tally.counts

    class Other(Judge):
        attributes = ("Smiling",)

    tally = measure(x, x.clone(), targets, [forger], quality=False, judge=Other())
    assert "stargan/clean/edit_blocked" not in tally.counts
    r = photo_receipt([forger], x[:1], x[:1].clone(), None, targets[:1], size=32, conditions=("clean",), judge=Judge())
    assert set(r["conditions"]["clean"]) == {"success_rate", "edit_blocked", "forgers"}
    assert "min_edit_blocked" in r


def test_tally_of_no_counted_pairs_is_none() -> None:
    tally = Tally()
    tally.add("k", torch.zeros(0))
    assert tally.mean("k") is None
