"""The forger campaign's committed seed: a stage whose state directory is gone resumes from it."""

from __future__ import annotations

import json
import math
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
    assert chosen(status(**every_turn_over)) == "fpgan-compact128-cpu-id2"  # the FPGAN's second recipe, alike
    every_turn_over["fpgan_compact128_cpu_id2"] = (turns["fpgan-id2"], 0.4)
    assert chosen(status(**every_turn_over)) == "fpgan-compact128-cpu-id1"  # from the StarGAN's seed
    every_turn_over["fpgan_compact128_cpu_id1"] = (turns["fpgan-id1"], 0.3)
    assert chosen(status(**every_turn_over)) == "attgan-compact128l4-cpu-rec10"  # from the second recipe's seed
    every_turn_over["attgan_compact128l4_cpu_rec10"] = (turns["attgan-rec10"], 0.15)
    assert chosen(status(**every_turn_over)) == "attgan-compact128l4s2-cpu-rec10"  # wider, from rec10's seed
    every_turn_over["attgan_compact128l4s2_cpu_rec10"] = (turns["attgan-s2"], 0.12)
    # a stage whose turn was ended before it was kept (no hours) is passed over
    assert turns["stargan-lr"] == 0.0
    assert chosen(status(**every_turn_over)) == "stargan-compact128-cpu-cls3"  # from the StarGAN's seed
    # a stage another process trains (--only) is left to it
    busy = frozenset({"stargan-compact128-cpu-cls3"})
    assert campaign.choose(tmp_path, status(**every_turn_over), busy)["stage"] == "fpgan-compact128-cpu-id2-cls3"
    every_turn_over["stargan_compact128_cpu_cls3"] = (turns["stargan-cls"], 0.5)
    assert chosen(status(**every_turn_over)) == "fpgan-compact128-cpu-id2-cls3"  # from the FPGAN-id1's seed
    every_turn_over["fpgan_compact128_cpu_id2_cls3"] = (turns["fpgan-cls"], 0.3)
    # each architecture is represented by its best stage (the AttGAN by 0.7, not 0.2); the lowest of them trains
    assert chosen(status(**every_turn_over)) == "fpgan-compact128-cpu"
    every_turn_over["attgan_compact128l4_cpu_warm"] = (turns["attgan"], 0.1)
    assert chosen(status(**every_turn_over)) == "attgan-compact128l4-cpu-rec20"


def test_a_new_recipe_starts_from_another_stages_seed_with_its_own_counters(campaign: ModuleType,
                                                                           tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
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
    assert other.cfg.extra["warm_start"] == {"from": "stargan-tiny-cpu", "forger": "stargan", "iterations": 1234,
                                            "restarted": True, "cpu_hours": round(567.8 / 3600, 3)}
    # its card counts its own iterations after the other stage's, not within them
    from core.workflows import _warm_note

    assert _warm_note({"warm_start": other.cfg.extra["warm_start"]}) == (
        " of its own recipe, after 1234 of `stargan-tiny-cpu`, a stargan run")
    assert _warm_note({"warm_start": {"from": "stargan-compact64", "forger": "stargan", "iterations": 7580}}) == (
        " (the first 7580 warm-started from `stargan-compact64`, a stargan run)")
    for (name, pa), pb in zip(first.G.state_dict().items(), other.G.state_dict().values(), strict=True):
        assert torch.allclose(pa.float(), pb.float(), atol=2e-3, rtol=1e-3), name
    # an FPGAN starts from a StarGAN's seed (the same networks); its card names the StarGAN as the source
    monkeypatch.setattr(campaign, "PLAN", [*campaign.PLAN, {"stage": "stargan-tiny-cpu", "forger": "stargan"}])
    fpgan = ForgerTrainer(TrainConfig.for_forger("fpgan", "tiny", "cpu", run_dir=tmp_path / "fpgan", threads=1))
    assert campaign.load_seed(fpgan, path, counters=False)
    assert fpgan.cfg.extra["warm_start"]["forger"] == "stargan" and fpgan.iteration == 0


def test_only_trains_the_stage_asked_for_and_keeps_the_others_records(campaign: ModuleType, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     one_thread: None) -> None:
    """``--only STAGE`` beside the scheduled process: its stage trains whatever the schedule would pick, and
    the status it writes back keeps what the other process recorded meanwhile."""
    import signal
    from types import SimpleNamespace

    class Trainer:
        iteration, cpu_seconds, stop_requested = 0, 0.0, False
        cfg = SimpleNamespace(iters=100, extra={})

        def train(self, max_seconds: float, progress: bool) -> None:
            self.iteration += 5
            self.cpu_seconds += 60.0
            # the other process records its own stage while this one trains
            st = json.loads((tmp_path / "status.json").read_text())
            st["stages"]["attgan-compact128l4-cpu-rec20"] = {"iteration": 77}
            (tmp_path / "status.json").write_text(json.dumps(st))
            self.stop_requested = True  # one chunk

    made: list[str] = []

    def make(stage: dict, state: Path, status: dict, data: Path | None) -> Trainer:
        made.append(stage["stage"])
        return Trainer()

    monkeypatch.setattr(campaign, "make_trainer", make)
    monkeypatch.setattr(campaign, "snapshot", lambda trainer, stage: tmp_path / "0000005.safetensors")
    measured = {"edit_strength": 0.1, "identity_mse": 0.02, "reconstruction_mse": 0.03, "target_accuracy": 0.8}
    monkeypatch.setattr(campaign, "measure", lambda trainer, data: measured)
    (tmp_path / "status.json").write_text(json.dumps({"stages": {}, "winners": {}}))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        campaign.run(tmp_path, None, 1.0, 10.0, None, only="stargan-compact128-cpu-warm")
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert made == ["stargan-compact128-cpu-warm"]  # not the stage the schedule picks (the first pilot)
    stages = json.loads((tmp_path / "status.json").read_text())["stages"]
    assert stages["stargan-compact128-cpu-warm"]["iteration"] == 5
    assert stages["stargan-compact128-cpu-warm"]["measured"] == measured
    assert stages["attgan-compact128l4-cpu-rec20"] == {"iteration": 77}
    with pytest.raises(SystemExit, match="no stage 'nope'"):
        campaign.planned("nope")


def test_a_stage_started_from_a_seed_keeps_where_that_seed_stood(campaign: ModuleType) -> None:
    """The source's seed moves on after the stage begins: the status's record of the start wins over it."""
    stage = campaign.planned("fpgan-compact128-cpu-id1")
    began = {"stage": "stargan-compact128-cpu-warm", "iterations": 11084, "cpu_hours": 6.076}
    status = {"stages": {stage["stage"]: {"started_from": began}}}
    assert campaign.seed_start(stage, status) == began
    assert campaign.origin(stage, status) == {"from": "stargan-compact128-cpu-warm", "forger": "stargan",
                                              "iterations": 11084, "restarted": True}
    assert campaign.seed_start(campaign.planned("stargan-compact128-cpu-warm"), status) is None  # no seed source


def test_the_recipe_curve_draws_a_chain_of_stages_after_each_other() -> None:
    recipes = load_script("forger_recipes", ROOT / "benchmarks" / "forger_recipes.py")
    status = {"stages": {
        "attgan-compact128l4-cpu-rec20": {"started_from": {"stage": "attgan-compact128l4-cpu-warm",
                                                           "iterations": 16410, "cpu_hours": 3.14}},
        "attgan-compact128l4-cpu-rec10": {"started_from": {"stage": "attgan-compact128l4-cpu-rec20",
                                                           "iterations": 5358, "cpu_hours": 1.87}}}}
    curves = {name: [] for name in ("attgan-compact128l4-cpu-warm", "attgan-compact128l4-cpu-rec20",
                                    "attgan-compact128l4-cpu-rec10")}
    origins = recipes.started_at(curves, status)
    assert origins["attgan-compact128l4-cpu-rec20"] == ("attgan-compact128l4-cpu-warm", 3.14)
    source, hours = origins["attgan-compact128l4-cpu-rec10"]
    assert source == "attgan-compact128l4-cpu-rec20" and hours == pytest.approx(3.14 + 1.87)
    assert "attgan-compact128l4-cpu-warm" not in origins  # a stage of its own recipe starts at 0


def test_a_wider_network_starts_from_a_narrower_seed_as_the_same_function(campaign: ModuleType) -> None:
    # the AttGAN with a second shortcut takes the one-shortcut weights: new input channels start at zero
    from core.forgers.attgan import ATTGAN_CONFIGS, AttGANGenerator

    torch.manual_seed(0)
    narrow = AttGANGenerator(c_dim=5, **ATTGAN_CONFIGS["tiny"]).eval()
    wide = AttGANGenerator(c_dim=5, **{**ATTGAN_CONFIGS["tiny"], "shortcut_layers": 2}).eval()
    changed = [k for k, v in wide.state_dict().items() if v.shape != narrow.state_dict()[k].shape]
    assert changed == ["dec.2.0.weight"]  # the layer the new shortcut feeds
    wide.load_state_dict(campaign.grown(wide.state_dict(), narrow.state_dict()))
    x, c = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 1]])
    with torch.no_grad():  # the same sums, over more (zero) terms in another order: float32 rounding apart
        assert torch.allclose(wide(x, c), narrow(x, c), atol=1e-5)
    with pytest.raises(ValueError, match="cannot grow"):
        campaign.grown(narrow.state_dict(), wide.state_dict())
    # a seed of another network is refused, not zero-padded into it
    other = AttGANGenerator(c_dim=5, **{**ATTGAN_CONFIGS["tiny"], "dim": 16, "max_dim": 64}).state_dict()
    with pytest.raises(ValueError, match="cannot grow"):
        campaign.grown(other, narrow.state_dict())
    with pytest.raises(ValueError, match="keys differ"):
        campaign.grown(wide.state_dict(), {k: v for k, v in narrow.state_dict().items() if "dec.0" not in k})


def test_a_stage_claimed_by_another_process_is_busy_until_it_ends(campaign: ModuleType, tmp_path: Path) -> None:
    """``--only`` claims its stage for its lifetime; the scheduled process sees the claim, a second ``--only``
    of the same stage is refused, and the claim ends with the process that held it (here: the with block)."""
    name = "fpgan-compact128-cpu-id2-cls3"
    assert campaign.claimed(tmp_path) == frozenset()
    with campaign.claim(tmp_path, name):
        assert campaign.claimed(tmp_path) == frozenset({name})
        with pytest.raises(SystemExit, match="already trains"), campaign.claim(tmp_path, name):
            pass
    assert campaign.claimed(tmp_path) == frozenset()


def _points(*rows: tuple[float, float, float]) -> list[dict[str, float]]:
    """(CPU-hours, target accuracy, identity share) -> curve points with an edit strength of 0.06."""
    return [{"iteration": i, "cpu_hours": h, "target_accuracy": a, "edit_strength": 0.06, "identity_mse": 0.06 * s,
             "reconstruction_mse": 0.02} for i, (h, a, s) in enumerate(rows)]


def test_the_outlook_reads_each_architectures_trend_and_the_hours_to_its_goals() -> None:
    recipes = load_script("forger_recipes", ROOT / "benchmarks" / "forger_recipes.py")
    curves = {
        # the best StarGAN stage: +10 points and -0.2 share an hour over its last hour (its first point is older)
        "stargan-compact128-cpu-cls3": _points((0.0, 0.1, 0.9), (1.0, 0.70, 0.6), (1.5, 0.75, 0.5), (2.0, 0.80, 0.4)),
        "stargan-compact128-cpu-lr3e-5": _points((0.0, 0.5, 0.9), (0.5, 0.5, 0.9), (1.0, 0.5, 0.9)),
        "fpgan-compact128-cpu-id2-cls3": _points((0.0, 0.7, 0.7), (0.1, 0.7, 0.7)),  # too few points for a trend
        "attgan-compact128l4s2-cpu-rec10": _points((0.0, 0.6, 0.3), (0.5, 0.6, 0.3), (1.0, 0.6, 0.3)),  # flat
    }
    view = recipes.outlook(curves)
    star = view["stargan"]
    assert star["stage"] == "stargan-compact128-cpu-cls3" and star["cpu_hours_spent"] == pytest.approx(3.0)
    assert star["accuracy_per_cpu_hour"] == pytest.approx(0.1) and star["share_per_cpu_hour"] == pytest.approx(-0.2)
    assert star["cpu_hours_to_accuracy_goal"] == pytest.approx(0.5)  # 80 -> 85 % at 10 points an hour
    assert star["cpu_hours_to_share_goal"] == pytest.approx((0.4 - 1 / 3) / 0.2)
    assert view["fpgan"]["cpu_hours_to_accuracy_goal"] is None  # no trend to read
    att = view["attgan"]
    assert att["cpu_hours_to_accuracy_goal"] == math.inf and att["cpu_hours_to_share_goal"] == 0.0  # share met
    written = json.loads(json.dumps(recipes._json_hours(view)))
    assert written["attgan"]["cpu_hours_to_accuracy_goal"] == "never"
