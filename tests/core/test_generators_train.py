"""The generator trainer on a synthetic CelebA layout: it learns, resumes exactly, exports, and the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from core.checkpoints import CheckpointError, Manifest, load_weights
from core.forgers import create_forger
from core.methods import create_method, parse_options
from core.methods.initiative import Initiative
from core.train.generator import (
    GeneratorTrainConfig,
    GeneratorTrainer,
    export_generator,
)
from tests.core.test_generators import ship_forger
from tests.core.test_train import fake_celeba


def config(tmp_path: Path, root: Path, run: str, method: str = "retentive", **overrides) -> GeneratorTrainConfig:
    options = dict(run_dir=tmp_path / run, data_dir=root, iters=6, batch_size=3, lr=1e-2, forger_random=True,
                   ckpt_every=100, sample_every=3, log_every=2, val_faces=2, options={"lambda_feat": 0.0})
    options.update(overrides)
    return GeneratorTrainConfig.for_method(method, ["stargan"], "tiny", **options)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_celeba(tmp_path_factory.mktemp("data") / "celeba")


@pytest.mark.slow  # more than 5 s: not in `make test-fast`
@pytest.mark.parametrize("method", ["retentive", "dwt-chroma"])
def test_training_reduces_the_loss(tmp_path: Path, root: Path, method: str) -> None:
    trainer = GeneratorTrainer(config(tmp_path, root, "r", method, iters=12, targets_per_step=2))
    trainer.load_data()
    assert trainer.train_data is not None
    x, c = trainer.train_data[torch.arange(4)]
    targets = trainer.targets(x, c)

    def loss() -> float:
        with torch.no_grad():
            return trainer.method.training_loss(x, targets, torch.Generator().manual_seed(0))[0].item()

    before = loss()
    trainer.train(progress=False)
    assert loss() < before
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    val = [r["val"] for r in records if "val" in r]
    assert len(val) == 4 and 0 <= val[-1]["stargan/success_rate"] <= 1 and val[-1]["psnr"] > 20
    assert "stargan/noise_distortion" in val[-1]
    assert (tmp_path / "r" / "samples" / "0000012.png").is_file()


def test_resume_is_exact(tmp_path: Path, root: Path, one_thread: None) -> None:
    straight = GeneratorTrainer(config(tmp_path, root, "a", eot=["identity", "blur"], targets_per_step=2))
    straight.train(progress=False)
    first = GeneratorTrainer(config(tmp_path, root, "b", eot=["identity", "blur"], targets_per_step=2))
    first.train(max_iters=4, progress=False)  # stops (and saves) part-way
    second = GeneratorTrainer(config(tmp_path, root, "b", eot=["identity", "blur"], targets_per_step=2))
    assert second.resume() and second.iteration == 4
    second.train(progress=False)
    assert second.iteration == straight.iteration == 6
    for key, value in straight.net.state_dict().items():
        assert torch.equal(value, second.net.state_dict()[key]), key
    with pytest.raises(ValueError, match="trained with method"):
        GeneratorTrainer(config(tmp_path, root, "b", method="dwt-chroma")).resume()


def test_feature_term_is_skipped_with_a_warning_without_vgg(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("VEIL_WEIGHTS", str(tmp_path / "no-weights"))
    trainer = GeneratorTrainer(config(tmp_path, root, "f", iters=1, options={"lambda_feat": 1.0}))
    with caplog.at_level(logging.WARNING):
        trainer.train(progress=False)
    assert "VGG16 weights unavailable" in caplog.text
    assert trainer.iteration == 1


def test_export_and_load(tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from core.cli import app

    monkeypatch.setenv("VEIL_CHECKPOINTS", str(tmp_path / "ckpt"))
    ship_forger(tmp_path / "ckpt")  # a "shipped" tiny StarGAN to train against
    runner = CliRunner()
    run_dir = tmp_path / "run"
    args = ["train", "generator", "--method", "retentive", "--config", "tiny", "--data", str(root),
            "--run-dir", str(run_dir), "--iters", "3", "--batch-size", "3", "--targets-per-step", "2",
            "--option", "lambda_feat=0", "--threads", "1", "--export", "retentive-stargan-tiny"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    entry = Manifest().find("retentive-stargan-tiny")
    assert entry is not None and entry.role == "generator-method" and entry.forger == "retentive"
    assert entry.info["forgers"] == ["stargan"] and entry.info["iterations"] == 3
    card = (tmp_path / "ckpt" / "retentive-stargan-tiny.md").read_text()
    assert "Iterations: 3" in card and "non-commercial" in card

    forger = create_forger("stargan")
    method = create_method("retentive", forger)  # the exported weights, found through the manifest
    state = torch.load(run_dir / "state.pt", map_location="cpu", weights_only=True)
    for key, value in method.net.state_dict().items():
        assert torch.equal(value, state["net"][key]), key
    assert method.source.endswith("retentive-stargan-tiny.safetensors") and method.options["lambda_feat"] == 0
    # The file names the forger weights it was trained against, never a path on the trainer's machine.
    _, meta = load_weights(tmp_path / "ckpt" / "retentive-stargan-tiny.safetensors")
    assert meta["forger_weights"] == ["stargan-tiny.safetensors"]

    # A run can start from the exported weights (and say so on its card) instead of random ones.
    warm = runner.invoke(app, [*args[:9], str(tmp_path / "warm"), "--iters", "0", "--option", "chroma_weight=3",
                               "--init-from", "retentive-stargan-tiny", "--export", "retentive-warm"])
    assert warm.exit_code == 0, warm.output
    warmed = create_method("retentive", forger, checkpoint="retentive-warm")
    for key, value in warmed.net.state_dict().items():
        assert torch.equal(value, state["net"][key]), key
    assert warmed.options["chroma_weight"] == 3 and warmed.options["lambda_feat"] == 0
    assert "init_from retentive-stargan-tiny" in (tmp_path / "ckpt" / "retentive-warm.md").read_text()
    cold = runner.invoke(app, [*args[:9], str(tmp_path / "warm"), "--iters", "1"])  # resumed without its source
    assert cold.exit_code == 2 and "init_from" in cold.output

    # A smoke run against random forgers is refused at export; a bad option is a one-line error.
    smoke = tmp_path / "smoke"
    ok = runner.invoke(app, [*args[:9], str(smoke), "--iters", "1", "--batch-size", "2", "--forger-random",
                             "--option", "lambda_feat=0"])
    assert ok.exit_code == 0, ok.output
    with pytest.raises(CheckpointError, match="random forgers"):
        export_generator(smoke, "nope")
    bad = runner.invoke(app, [*args[:9], str(smoke), "--option", "lambda_feat"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output
    assert parse_options(["saliency=center", "mask_floor=0.3"]) == {"saliency": "center", "mask_floor": 0.3}


def test_initiative_imitates_the_black_box_and_never_differentiates_through_it(tmp_path: Path, root: Path) -> None:
    options = {"lambda_feat": 0.0, "surrogate_config": "tiny", "warmup": 4, "surrogate_lr": 1e-2}
    trainer = GeneratorTrainer(config(tmp_path, root, "i", "initiative", iters=16, targets_per_step=2,
                                      options=options))
    method = trainer.method
    assert isinstance(method, Initiative) and trainer.aux is method.auxiliary()
    calls: list[tuple[bool, bool, bool]] = []
    hook = trainer.forgers[0].register_forward_hook(
        lambda _m, inp, out: calls.append((torch.is_grad_enabled(), inp[0].requires_grad, out.requires_grad)))
    trainer.load_data()
    assert trainer.train_data is not None
    x, c = trainer.train_data[torch.arange(4)]
    targets = trainer.targets(x, c)
    start = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    before = method.imitation_error(x, x, targets)["surrogate_mse_clean"]
    try:
        trainer.train(max_iters=4, progress=False)  # the warm-up: the surrogate imitates, the generator waits
        assert all(torch.equal(v, trainer.net.state_dict()[k]) for k, v in start.items())
        trainer.train(progress=False)
    finally:
        hook.remove()
    assert not all(torch.equal(v, trainer.net.state_dict()[k]) for k, v in start.items())
    assert method.imitation_error(x, x, targets)["surrogate_mse_clean"] < before
    # The target was only ever queried: no autograd around it, no gradient into or out of it.
    assert calls and all(call == (False, False, False) for call in calls), set(calls)
    val = [json.loads(line)["val"] for line in (tmp_path / "i" / "log.jsonl").read_text().splitlines()
           if "val" in json.loads(line)]
    assert {"stargan/success_rate", "surrogate_mse_clean", "surrogate_mse_protected"} <= set(val[-1])


def test_initiative_resume_is_exact(tmp_path: Path, root: Path, one_thread: None) -> None:
    options = {"lambda_feat": 0.0, "surrogate_config": "tiny", "warmup": 2}
    straight = GeneratorTrainer(config(tmp_path, root, "a", "initiative", targets_per_step=2, options=options))
    straight.train(progress=False)
    first = GeneratorTrainer(config(tmp_path, root, "b", "initiative", targets_per_step=2, options=options))
    first.train(max_iters=3, progress=False)
    second = GeneratorTrainer(config(tmp_path, root, "b", "initiative", targets_per_step=2, options=options))
    assert second.resume() and second.iteration == 3
    second.train(progress=False)
    assert straight.aux is not None and second.aux is not None
    for a, b in ((straight.net, second.net), (straight.aux, second.aux)):
        for key, value in a.state_dict().items():
            assert torch.equal(value, b.state_dict()[key]), key


def test_chroma_weight_makes_colour_cost_more_than_grey() -> None:
    forger = create_forger("stargan", config="tiny", pretrained=False)
    plain = create_method("retentive", forger, pretrained=False, config="tiny", lambda_mag=1.0, lambda_feat=0.0)
    weighted = create_method("retentive", forger, pretrained=False, config="tiny", lambda_mag=1.0, lambda_feat=0.0,
                             chroma_weight=3.0)
    x = torch.zeros(1, 3, 8, 8)
    grey = x + 0.1  # Cb = Cr = 0: lightness only
    red = x + torch.tensor([0.1, 0.0, 0.0]).view(1, 3, 1, 1)
    assert weighted.magnitude_loss(grey, x)[0].item() == pytest.approx(0.01)  # as without the weight
    assert plain.magnitude_loss(red, x)[0].item() == pytest.approx(0.01 / 3)
    # red's Cb, Cr = -0.1687 * 0.1, 0.5 * 0.1 (BT.601): (9 - 1) times their mean square is added
    colour = ((0.1687 * 0.1) ** 2 + (0.05) ** 2) / 2
    assert weighted.magnitude_loss(red, x)[0].item() == pytest.approx(0.01 / 3 + 8 * colour, rel=1e-3)
    with pytest.raises(ValueError, match="chroma_weight"):  # refused when the method is made, not at a step
        create_method("retentive", forger, pretrained=False, config="tiny", chroma_weight=0.5)
