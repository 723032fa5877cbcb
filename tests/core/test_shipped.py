"""The shipped weights match their cards: numbers recomputed on the validation split (needs CelebA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.checkpoints import Manifest
from core.classifier import CLASSIFIER_NAME, JUDGE_NAME, accuracy, load_classifier
from core.data import FacePack, build_pack


def test_manifest_files_exist_and_match_sha256() -> None:
    manifest = Manifest()
    for entry in manifest.entries:
        path = manifest.directory / entry.file
        if path.suffix == ".safetensors":  # reference pickles a user drops in are theirs to keep
            assert manifest.resolve(entry, verify=True).is_file(), entry.name


def test_one_default_per_forger_and_role() -> None:
    """Every reader (the resolver, the stack script, the cards) must agree on which weights are a forger's
    default: a second default would be silently outranked by whichever is listed first."""
    from collections import Counter

    defaults = Counter((e.forger, e.role) for e in Manifest().entries if e.default)
    assert all(n == 1 for n in defaults.values()), defaults
    assert Manifest().find("stargan-compact64") is not None  # the fast option stays shipped


@pytest.mark.dataset
@pytest.mark.parametrize("name", [CLASSIFIER_NAME, JUDGE_NAME])
def test_classifier_card_accuracy(celeba_root: Path, tmp_path: Path, name: str) -> None:
    entry = Manifest().find(name)
    if entry is None:
        pytest.skip(f"no {name} shipped")
    model = load_classifier(name=name)
    pack = FacePack(build_pack(celeba_root, "val", model.image_size, tmp_path / "val.npz"))
    acc = accuracy(model, pack.images.float() / 127.5 - 1, pack.attrs)
    card = entry.info["metrics"]
    for name, value in zip(model.attributes, acc.tolist(), strict=True):
        assert value == pytest.approx(card[name], abs=0.002), name
    assert torch.isfinite(acc).all()


MEASURED_FORGERS = [e.name for e in Manifest().entries if e.role == "generator" and e.info.get("metrics")]


@pytest.mark.dataset
@pytest.mark.slow
@pytest.mark.timeout(900)  # a card's check faces: seconds at 64 px, a minute or two at 128 px on a busy CPU
@pytest.mark.parametrize("name", MEASURED_FORGERS)
def test_forger_cards_recomputed(celeba_root: Path, name: str) -> None:
    """A shipped forger's card check (its numbers on the first validation faces), recomputed from its weights.
    The whole card's faces (1,000-2,000) are `veil measure-forger`'s; the weights are pinned by sha256 above."""
    from core.forger_eval import measure_forger
    from core.forgers import create_forger
    from core.workflows import load_faces

    entry = Manifest().find(name)
    assert entry is not None
    check = entry.info.get("metrics_check")
    assert check is not None, f"{name}: no card check; run `veil measure-forger {name} --check-only`"
    assert check.get("judge", CLASSIFIER_NAME) == entry.info["metrics"].get("judge", CLASSIFIER_NAME)
    forger = create_forger(entry.forger, entry.name)
    faces, attrs, _ = load_faces(celeba_root, check["faces"], forger.image_size)
    assert attrs is not None and len(faces) == check["faces"]
    got = measure_forger(forger, faces, attrs, load_classifier(name=check.get("judge", CLASSIFIER_NAME)))
    for key in ("edit_strength", "reconstruction_mse", "identity_mse"):
        assert got[key] == pytest.approx(check[key], rel=1e-3), (entry.name, key)
    # one of the faces x edits the judge reads may flip with the CPU's float order
    assert got["target_accuracy"] == pytest.approx(check["target_accuracy"], abs=1.01 / (len(faces) * forger.c_dim))


RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.mark.dataset
@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("table_file", sorted(p.name for p in RESULTS.glob("eval-*.json")))
def test_generator_rows_of_the_eval_tables_reproduced(celeba_root: Path, table_file: str) -> None:
    """The check of each committed `veil eval` table (its one-pass rows, made by shipped generators, on its
    first faces), recomputed from the shipped weights with the settings the table records."""
    import json

    from core.workflows import one_pass_summaries, reproduce_table

    table = json.loads((RESULTS / table_file).read_text())
    if table.get("settings") is None:
        pytest.skip("an older table without its settings")
    if not one_pass_summaries(table):
        pytest.skip("the table has no one-pass method")
    check = table.get("check")
    assert check is not None, f"{table_file}: no check; run scripts/record_eval_checks.py"
    # the check was made with the generators of the table's own rows
    def made_by(summaries: list[dict]) -> list[tuple[str, str]]:
        return [(s["method"]["method"], Path(s["method"]["weights"]).name) for s in summaries]

    assert made_by(check["summaries"]) == made_by(one_pass_summaries(table))
    pairs = check["faces"]
    for got, want in zip(reproduce_table(table, celeba_root, check["faces"]), check["summaries"], strict=True):
        name = want["method"]["method"]
        assert got["method"]["weights"].endswith(Path(want["method"]["weights"]).name), name
        for key in ("psnr", "ssim"):
            assert got[key] == pytest.approx(want[key], rel=1e-3), (name, key)
        for g, w in zip(got["rows"], want["rows"], strict=True):
            assert (g["forger"], g["condition"]) == (w["forger"], w["condition"])
            # A pair whose distortion sits on the 0.05 threshold may flip with the CPU's float order.
            assert g["success_rate"] == pytest.approx(w["success_rate"], abs=2 / pairs), (name, g["forger"])
            assert g["distortion"] == pytest.approx(w["distortion"], rel=1e-2, abs=1e-4), (name, g["forger"])
