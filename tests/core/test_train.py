"""The forger trainer on a synthetic CelebA layout: it learns, saves, and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import FacePack, build_pack, celeba_available, read_index
from core.train.forger import ForgerTrainer, TrainConfig

ATTRS = ["5_o_Clock_Shadow", "Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Smiling", "Young"]


def fake_celeba(root: Path, n: int = 12) -> Path:
    """A CelebA-layout folder of synthetic 178x218 faces: 9 train, 3 validation."""
    (root / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, parts = [], []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        arr = np.clip(rng.normal(128, 40, (218, 178, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / "img_align_celeba" / name, quality=95)
        flags = rng.integers(0, 2, len(ATTRS)) * 2 - 1
        rows.append(name + " " + " ".join(f"{v:2d}" for v in flags))
        parts.append(f"{name} {0 if i < 9 else 1}")
    (root / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(ATTRS) + "\n" + "\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    return root


def test_index_and_pack(tmp_path: Path) -> None:
    root = fake_celeba(tmp_path / "celeba")
    assert celeba_available(root)
    train, val = read_index(root, "train"), read_index(root, "val")
    assert len(train.files) == 9 and len(val.files) == 3
    assert train.attrs.shape == (9, 5) and set(np.unique(train.attrs)) <= {0.0, 1.0}
    pack = FacePack(build_pack(root, "val", 16, tmp_path / "p.npz"))
    x, c = pack[torch.arange(3)]
    assert x.shape == (3, 3, 16, 16) and x.min() >= -1 and x.max() <= 1 and c.shape == (3, 5)
    with pytest.raises(ValueError, match="split"):
        read_index(root, "nope")


@pytest.mark.parametrize("forger", ["stargan", "attgan"])
def test_resume_is_exact(tmp_path: Path, forger: str, one_thread: None) -> None:
    root = fake_celeba(tmp_path / "celeba")

    def config(run: str) -> TrainConfig:
        return TrainConfig.for_forger(forger, "tiny", run_dir=tmp_path / run, data_dir=root, iters=8,
                                      batch_size=4, n_critic=2, ckpt_every=100, sample_every=4, log_every=2)

    straight = ForgerTrainer(config("a"))
    straight.train(progress=False)
    first = ForgerTrainer(config("b"))
    first.train(max_iters=5, progress=False)  # stops (and saves) part-way
    second = ForgerTrainer(config("b"))
    assert second.resume() and second.iteration == 5
    second.train(progress=False)
    assert second.iteration == straight.iteration == 8
    for key, value in straight.G.state_dict().items():
        assert torch.equal(value, second.G.state_dict()[key]), key
    assert (tmp_path / "a" / "samples" / "0000008.png").is_file()
    assert (tmp_path / "a" / "log.jsonl").read_text().count("\n") == 4


@pytest.mark.dataset
def test_shared_celeba_split_sizes(celeba_root: Path) -> None:
    assert len(read_index(celeba_root, "train").files) == 24_000
    assert len(read_index(celeba_root, "val").files) == 2_000


def test_cli_train_export_and_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from core.cli import app
    from core.forgers import create_forger

    monkeypatch.setenv("VEIL_CHECKPOINTS", str(tmp_path / "ckpt"))
    root = fake_celeba(tmp_path / "celeba")
    run_dir = tmp_path / "run"
    runner = CliRunner()
    args = ["train", "forger", "--forger", "fpgan", "--config", "tiny", "--data", str(root), "--run-dir",
            str(run_dir), "--iters", "3", "--batch-size", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    exported = runner.invoke(app, ["train", "export", str(run_dir), "--name", "fpgan-tiny"])
    assert exported.exit_code == 0, exported.output
    forger = create_forger("fpgan")
    assert forger.image_size == 32 and forger.source.endswith("fpgan-tiny.safetensors")
    card = (tmp_path / "ckpt" / "fpgan-tiny.md").read_text()
    assert "Iterations: 3" in card and "non-commercial" in card
    missing = runner.invoke(app, ["train", "forger", "--data", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no CelebA layout" in missing.output


def test_measure_forger_records_a_check_the_check_only_run_reproduces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    import json

    from typer.testing import CliRunner

    from core.checkpoints import Manifest
    from core.cli import app

    monkeypatch.setenv("VEIL_CHECKPOINTS", str(tmp_path / "ckpt"))
    root = fake_celeba(tmp_path / "celeba")
    runner = CliRunner()
    run_dir = tmp_path / "run"
    trained = runner.invoke(app, ["train", "forger", "--forger", "stargan", "--config", "tiny", "--data", str(root),
                                  "--run-dir", str(run_dir), "--iters", "2", "--batch-size", "4"])
    assert trained.exit_code == 0, trained.output
    assert runner.invoke(app, ["train", "export", str(run_dir), "--name", "stargan-tiny"]).exit_code == 0
    early = runner.invoke(app, ["measure-forger", "stargan-tiny", "--data", str(root), "--check-only"])
    assert early.exit_code == 2 and "measure it whole first" in early.output
    whole = runner.invoke(app, ["measure-forger", "stargan-tiny", "--data", str(root), "--limit", "3"])
    assert whole.exit_code == 0, whole.output
    entry = Manifest().find("stargan-tiny")
    assert entry is not None
    card = (tmp_path / "ckpt" / "stargan-tiny.md").read_text()
    check = entry.info["metrics_check"]
    assert check["faces"] == 3  # the 3 validation faces, all of them within the check's 100
    assert check["edit_strength"] == pytest.approx(entry.info["metrics"]["edit_strength"], rel=1e-6)
    (tmp_path / "ckpt" / "stargan-tiny.md").write_text(card + "edited by hand\n")
    again = runner.invoke(app, ["measure-forger", "stargan-tiny", "--data", str(root), "--check-only"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output[again.output.index("{"):]) == pytest.approx(check)
    assert (tmp_path / "ckpt" / "stargan-tiny.md").read_text().endswith("edited by hand\n")  # card untouched


def test_signal_handlers_are_restored(tmp_path: Path) -> None:
    import signal

    root = fake_celeba(tmp_path / "celeba")
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    cfg = TrainConfig.for_forger("stargan", "tiny", run_dir=tmp_path / "r", data_dir=root, iters=1, batch_size=2)
    ForgerTrainer(cfg).train(progress=False)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with pytest.raises(ValueError, match="unknown forger"):
        TrainConfig.for_forger("nope", "tiny")


def test_linear_decay_schedule_both_trainers_use() -> None:
    from core.train.loop import linear_decay

    assert [linear_decay(1.0, it, 100, 0.5) for it in (0, 49, 50, 75, 99)] == [1.0, 1.0, 1.0, 0.5, 0.02]
    assert linear_decay(2e-4, 99, 100, 1.0) == 2e-4  # decay_from 1: constant
