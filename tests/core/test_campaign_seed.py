"""The forger campaign's committed seed: a stage whose state directory is gone resumes from it."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

from core.train.forger import ForgerTrainer, TrainConfig
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def campaign() -> ModuleType:
    return load_script("forger_campaign", ROOT / "scripts" / "forger_campaign.py")


def trainer(run_dir: Path) -> ForgerTrainer:
    return ForgerTrainer(TrainConfig.for_forger("stargan", "tiny", "cpu", run_dir=run_dir, threads=1))


def test_a_stage_resumes_from_its_seed(campaign: ModuleType, tmp_path: Path) -> None:
    state, seed = tmp_path / "state", tmp_path / "seed"
    torch.manual_seed(1)
    first = trainer(state / "runs" / "stargan-tiny-cpu")
    with torch.no_grad():  # weights unlike a fresh trainer's, in every part
        for module in (first.G, first.D, first.G_ema):
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    first.iteration, first.cpu_seconds = 1234, 567.8
    first.save()
    (state / "status.json").write_text(json.dumps({"stages": {"stargan-tiny-cpu": {"iteration": 1234}},
                                                   "winners": {"stargan": "stargan-tiny-cpu"}}))
    [path] = campaign.export_seed(state, seed)
    assert path == seed / "stargan-tiny-cpu.safetensors"
    assert json.loads((seed / "status.json").read_text())["winners"] == {"stargan": "stargan-tiny-cpu"}

    fresh = trainer(tmp_path / "elsewhere")
    assert not fresh.resume()
    assert campaign.load_seed(fresh, path)
    assert (fresh.iteration, fresh.cpu_seconds) == (1234, 567.8)
    for a, b in ((first.G, fresh.G), (first.D, fresh.D), (first.G_ema, fresh.G_ema)):
        for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.allclose(pa.float(), pb.float(), atol=2e-3, rtol=1e-3), name  # fp16 in git
    assert not campaign.load_seed(fresh, seed / "absent.safetensors")


def test_architectures_take_turns_then_the_furthest_from_the_goals_trains(campaign: ModuleType,
                                                                          tmp_path: Path) -> None:
    decided = {"stargan": "stargan-compact128-cpu-warm"}

    def status(**hours_and_scores: tuple[float, float]) -> dict:
        stages = {name.replace("_", "-"): {"cpu_seconds": 3600 * h, "score": sc}
                  for name, (h, sc) in hours_and_scores.items()}
        return {"stages": stages, "winners": dict(decided)}

    def chosen(st: dict) -> str:
        return campaign.choose(tmp_path, st)["stage"]

    turns = campaign.TURN_HOURS
    assert chosen(status(stargan_compact128_cpu_warm=(turns["stargan"] - 1, 0.6))) == "stargan-compact128-cpu-warm"
    # the StarGAN's turn is over: the FPGAN starts (it warm-starts from the StarGAN's snapshot)
    assert chosen(status(stargan_compact128_cpu_warm=(turns["stargan"], 0.6))) == "fpgan-compact128-cpu"
    assert chosen(status(stargan_compact128_cpu_warm=(turns["stargan"], 0.6),
                         fpgan_compact128_cpu=(turns["fpgan"], 0.5))) == "attgan-compact128-cpu"
    # the AttGAN's pilots: the one with less CPU time trains until each has had its pilot hours
    both = {"stargan_compact128_cpu_warm": (turns["stargan"], 0.6), "fpgan_compact128_cpu": (turns["fpgan"], 0.5)}
    assert chosen(status(**both, attgan_compact128_cpu=(1.2, -0.09))) == "attgan-compact128l4-cpu-warm"
    # then the better-scored pilot is the AttGAN's, and its turn goes on
    st = status(**both, attgan_compact128_cpu=(1.2, -0.09), attgan_compact128l4_cpu_warm=(0.4, 0.3))
    assert chosen(st) == "attgan-compact128l4-cpu-warm" and st["winners"]["attgan"] == "attgan-compact128l4-cpu-warm"
    every_turn_over = {**both, "attgan_compact128_cpu": (1.2, -0.09),
                       "attgan_compact128l4_cpu_warm": (turns["attgan"], 0.7)}
    # the AttGAN's second recipe has its own turn, from the first recipe's seed
    assert chosen(status(**every_turn_over)) == "attgan-compact128l4-cpu-rec20"
    every_turn_over["attgan_compact128l4_cpu_rec20"] = (turns["attgan-rec20"], 0.2)
    # each architecture is represented by its best stage (the AttGAN by 0.7, not 0.2); the lowest of them trains
    assert chosen(status(**every_turn_over)) == "fpgan-compact128-cpu"
    every_turn_over["attgan_compact128l4_cpu_warm"] = (turns["attgan"], 0.1)
    assert chosen(status(**every_turn_over)) == "attgan-compact128l4-cpu-rec20"


def test_a_new_recipe_starts_from_another_stages_seed_with_its_own_counters(campaign: ModuleType,
                                                                           tmp_path: Path) -> None:
    state, seed = tmp_path / "state", tmp_path / "seed"
    first = trainer(state / "runs" / "stargan-tiny-cpu")
    with torch.no_grad():
        for p in first.G.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    first.iteration, first.cpu_seconds = 1234, 567.8
    first.save()
    (state / "status.json").write_text(json.dumps({"stages": {}, "winners": {}}))
    [path] = campaign.export_seed(state, seed)
    other = ForgerTrainer(TrainConfig.for_forger("stargan", "tiny", "cpu", run_dir=tmp_path / "other", threads=1,
                                                 lambda_rec=2.0))
    assert campaign.load_seed(other, path, counters=False)
    assert (other.iteration, other.cpu_seconds, other.cfg.lambda_rec) == (0, 0.0, 2.0)
    assert other.cfg.extra["warm_start"]["from"] == "stargan-tiny-cpu"
    for (name, pa), pb in zip(first.G.state_dict().items(), other.G.state_dict().values(), strict=True):
        assert torch.allclose(pa.float(), pb.float(), atol=2e-3, rtol=1e-3), name
