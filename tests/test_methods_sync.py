"""The gateway's static method list (api/methods.json, no torch) agrees with core's registries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.checkpoints import Manifest
from core.forgers import forger_names
from core.methods import method_class, method_names

METHODS_JSON = Path(__file__).resolve().parent.parent / "api" / "methods.json"


def served_methods() -> list[str]:
    """The methods the service can run: every iterative method, and a one-pass (generator) method only
    once its weights ship in checkpoints/ (a `generator-method` manifest entry)."""
    shipped = {e.forger for e in Manifest().entries if e.role == "generator-method"}
    return [n for n in method_names() if not getattr(method_class(n), "one_pass", False) or n in shipped]


def test_same_methods_and_forgers() -> None:
    data = json.loads(METHODS_JSON.read_text())
    assert sorted(m["name"] for m in data["methods"]) == served_methods()
    assert sorted(f["name"] for f in data["forgers"]) == forger_names()


@pytest.mark.parametrize("name", served_methods())
def test_default_budget_and_steps_match(name: str) -> None:
    entry = next(m for m in json.loads(METHODS_JSON.read_text())["methods"] if m["name"] == name)
    cls = method_class(name)
    core_eps = entry["eps"]["default"] * entry["core_eps_scale"]
    assert core_eps == pytest.approx(cls.defaults["eps"], rel=0.01)
    assert entry["defaults"]["steps"] == cls.defaults["steps"]
    assert entry["defaults"]["objective"] == cls.defaults["objective"]
    lo, hi = cls.eps_range
    assert entry["core_eps_range"] == [lo, hi]  # what the gateway checks eps * core_eps_scale against
    for level in ("low", "medium", "high"):
        assert lo < entry["eps"][level] * entry["core_eps_scale"] <= hi
