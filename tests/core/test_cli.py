"""The `veil` command line, end to end on tiny random forgers in a temporary checkpoints folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from core.cli import app
from core.image import to_uint8
from core.receipt import verdict
from tests.conftest import synthetic_faces

runner = CliRunner()


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, face in enumerate(synthetic_faces(2, 32, seed=5)):
        Image.fromarray(to_uint8(face)).save(folder / f"face{i}.png")
    return folder


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.mark.slow  # more than 5 s: not in `make test-fast`
def test_protect_writes_pngs_and_report(tiny_checkpoints: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # synthetic blobs hold no face a detector finds: --whole-image protects them whole
    result = run("protect", str(photos), "-o", str(out), "--steps", "3", "--eps", "0.05", "--eot", "identity,blur",
                 "--whole-image")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert len(report["photos"]) == 2
    for entry in report["photos"]:
        assert entry["within_budget"] is True
        assert entry["linf"] <= 0.05 + 1e-6
        rate = entry["forgers"]["stargan"]["success_rate"]  # a share of the 5 edits of one whole photo
        assert rate * 5 == pytest.approx(round(rate * 5))
        assert entry["receipt"]["conditions"]["clean"]["forgers"]["stargan"]["success_rate"] == rate
        assert entry["receipt"]["verdict"] == verdict(entry["receipt"])  # written with the receipt it reads
        protected = np.asarray(Image.open(entry["output"]))
        original = np.asarray(Image.open(entry["input"]))
        assert protected.shape == original.shape
        assert np.abs(protected.astype(int) - original.astype(int)).max() <= 7  # 0.05 * 127.5 = 6.4 levels


def test_bad_photo_is_reported_and_others_continue(tiny_checkpoints: Path, photos: Path, tmp_path: Path) -> None:
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = tmp_path / "out"
    result = run("protect", str(photos), "-o", str(out), "--steps", "1")
    assert result.exit_code == 0
    report = json.loads((out / "report.json").read_text())
    errors = [p for p in report["photos"] if "error" in p]
    assert len(errors) == 1 and "broken.png" in errors[0]["input"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nope"], "unknown method"),
        (["--eps", "7"], "eps"),
        (["--forger", "nope"], "unknown forger"),
        (["--forger", "attgan"], "no shipped"),
        (["--format", "gif"], "unsupported format"),
        (["--eot", "jpeg,warp"], "unknown EoT transform"),
        (["--weights", "stargan-tiny", "--weights", "stargan-tiny"], "one per --forger"),
        (["--weights", "stargan-nope"], "stargan-nope"),
    ],
)
def test_bad_options_exit_cleanly(tiny_checkpoints: Path, photos: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["protect", str(photos), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_not_an_image_alone_fails(tiny_checkpoints: Path, tmp_path: Path) -> None:
    bad = tmp_path / "x.jpg"
    bad.write_text("hello")
    result = runner.invoke(app, ["protect", str(bad), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    # the console wraps long lines at its width (a long temporary path moves the break): compare words
    assert "not a recognised image" in " ".join(result.output.split())
    result = runner.invoke(app, ["protect", str(tmp_path / "missing.png")])
    assert result.exit_code == 2 and "no such file" in " ".join(result.output.split())


def test_methods_and_forgers_listing(tiny_checkpoints: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core import cli

    monkeypatch.setattr(cli.console, "width", 250)  # no wrapping inside table cells
    methods = run("methods")
    assert methods.exit_code == 0
    for name in ("pgd", "anti-forgery", "dwt-pgd", "arXiv 2003.01279"):
        assert name in methods.output
    forgers = run("forgers")
    assert forgers.exit_code == 0
    assert "tiny.safetensors" in forgers.output and "attgan" in forgers.output


def test_eval_folder_writes_tables_and_grids(tiny_checkpoints: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = run("eval", str(photos), "-m", "pgd", "--steps", "2", "--size", "32", "-c", "clean", "-c", "jpeg75",
                 "-o", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    rows = data["summaries"][0]["rows"]
    assert {r["condition"] for r in rows} == {"clean", "jpeg75"}
    assert "| pgd | stargan | clean |" in (out / "results.md").read_text()
    assert len(list((out / "pgd").glob("*.png"))) == 2


def list_tiny_forger(folder: Path, forger: str, name: str, file: str, seed: int, default: bool) -> None:
    """A random tiny ``forger`` (weights seeded by ``seed``) listed in the manifest of ``folder`` as ``name``."""
    from core.checkpoints import Manifest, ManifestEntry, save_weights
    from core.forgers import create_forger

    torch.manual_seed(seed)
    model = create_forger(forger, config="tiny", pretrained=False)
    sha = save_weights(model.generator.state_dict(), folder / file, {"config": "tiny"})
    manifest = Manifest(folder)
    manifest.upsert(ManifestEntry(name=name, forger=forger, file=file, config="tiny", sha256=sha, default=default))
    manifest.save()


def test_eval_with_chosen_weights_records_them(tiny_checkpoints: Path, photos: Path, tmp_path: Path) -> None:
    """--weights picks a forger's weights other than its default; the table says which weights it measured."""
    list_tiny_forger(tiny_checkpoints, "stargan", "stargan-other", "other.safetensors", seed=4, default=False)
    out = tmp_path / "eval"
    result = run("eval", str(photos), "-m", "pgd", "--steps", "1", "--size", "32", "--weights", "stargan-other",
                 "-o", str(out), "--no-grids")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["weights"] == ["stargan-other"]
    assert [r["weights"] for r in data["summaries"][0]["rows"]] == ["other"]
    result = run("eval", str(photos), "-m", "pgd", "--steps", "1", "--size", "32", "-o", str(out), "--no-grids")
    assert [r["weights"] for r in json.loads((out / "results.json").read_text())["summaries"][0]["rows"]] == ["tiny"]


def test_eval_measures_transfer_to_forgers_it_does_not_target(
    tiny_checkpoints: Path, photos: Path, tmp_path: Path
) -> None:
    # another tiny editor, listed as the shipped fpgan
    list_tiny_forger(tiny_checkpoints, "fpgan", "fpgan-tiny", "fpgan-tiny.safetensors", seed=3, default=True)
    out = tmp_path / "eval"
    result = run("eval", str(photos), "-m", "pgd", "--steps", "2", "--size", "32", "--transfer", "fpgan",
                 "--transfer", "stargan", "-o", str(out), "--no-grids")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())["summaries"][0]
    assert summary["method"]["forgers"] == ["stargan"]  # the protection targets only the stargan
    assert [r["forger"] for r in summary["rows"]] == ["stargan", "fpgan"]
    table = (out / "results.md").read_text()
    assert "| pgd | stargan | clean |" in table and "| pgd | fpgan (transfer) | clean |" in table


def test_a_transfer_forger_is_measured_with_the_weights_asked_for(tiny_checkpoints: Path) -> None:
    """A committed table is re-made with the weights its rows name, the transfer forgers' too: the default
    weights of a forger change when a better model ships."""
    from core.workflows import evaluate_faces

    list_tiny_forger(tiny_checkpoints, "fpgan", "fpgan-new", "fpgan-new.safetensors", seed=3, default=True)
    list_tiny_forger(tiny_checkpoints, "fpgan", "fpgan-old", "fpgan-old.safetensors", seed=5, default=False)
    faces = synthetic_faces(1, 32, seed=2)

    def transfer_weights(checkpoints: dict[str, str] | None) -> list[str]:
        summary = evaluate_faces("pgd", ["stargan"], faces, None, ["a.png"], ["clean"], 1, None, "cpu",
                                 {"steps": 1}, transfer=["fpgan"], checkpoints=checkpoints)
        return [r["weights"] for r in summary["rows"] if r["forger"] == "fpgan"]

    assert transfer_weights(None) == ["fpgan-new"]
    assert transfer_weights({"fpgan": "fpgan-old"}) == ["fpgan-old"]


@pytest.mark.slow  # more than 5 s: not in `make test-fast`
def test_same_stems_do_not_overwrite(tiny_checkpoints: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    faces = synthetic_faces(2, 32, seed=7)
    Image.fromarray(to_uint8(faces[0])).save(folder / "a" / "face.png")
    Image.fromarray(to_uint8(faces[1])).save(folder / "b" / "face.png")
    out = tmp_path / "out"
    assert run("protect", str(folder), "-o", str(out), "--steps", "1", "--whole-image").exit_code == 0
    outputs = sorted(p.name for p in out.glob("*.png"))
    assert outputs == ["face-1.png", "face.png"]


def test_bad_device_is_a_clear_error(tiny_checkpoints: Path, photos: Path) -> None:
    result = runner.invoke(app, ["protect", str(photos), "--device", "cuda:7"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "CUDA" in result.output or "cuda" in result.output


@pytest.mark.slow  # more than 5 s: not in `make test-fast`
def test_protect_method_options(tiny_checkpoints: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ok = run("protect", str(photos), "-o", str(out), "--method", "dwt-pgd", "--steps", "1", "--whole-image",
             "--option", "luma_eps=0.02", "--threads", "1")
    assert ok.exit_code == 0, ok.output
    report = json.loads((out / "report.json").read_text())
    assert report["method"]["luma_eps"] == 0.02 and report["photos"][0]["within_budget"] is True
    assert report["cpu_threads"] == 1
    bad = run("protect", str(photos), "-o", str(out), "--method", "pgd", "--option", "luma_eps=0.02")
    assert bad.exit_code == 2 and "pgd does not take that option" in bad.output
    malformed = run("protect", str(photos), "-o", str(out), "--option", "luma_eps")
    assert malformed.exit_code == 2 and "KEY=VALUE" in malformed.output


@pytest.mark.slow  # a face detector and a forger on a real portrait
def test_edits_renders_one_row_per_face_with_every_edit(tiny_checkpoints: Path, tmp_path: Path) -> None:
    from skimage import data

    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    out = tmp_path / "edits.png"
    result = run("edits", str(photo), "-o", str(out))
    assert result.exit_code == 0, result.output
    grid = np.asarray(Image.open(out))
    # one face: a row of the 128 px face and its five single-attribute edits (make_grid pads between cells)
    assert grid.shape[0] < 2 * 128 and grid.shape[1] >= 6 * 128
    assert "edit Male" in result.output
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 127, np.uint8)).save(blank)
    assert run("edits", str(blank)).exit_code == 2  # no face: a clear error


@pytest.mark.slow  # two protect runs
def test_min_success_retries_at_twice_the_budget_then_leaves_the_photo_out(
    tiny_checkpoints: Path, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    # a 1-level budget and a requirement of 100 % under every condition: no photo meets it
    result = run("protect", str(photos / "face0.png"), "-o", str(out), "--steps", "1", "--eps", str(1 / 127.5),
                 "--whole-image", "--min-success", "1")
    assert result.exit_code == 2, result.output  # the only photo failed
    [entry] = json.loads((out / "report.json").read_text())["photos"]
    assert entry["output"] is None and not (out / "face0.png").exists()
    assert "min_success 1 not met" in entry["error"] and "2 attempt(s)" in entry["error"]
    assert entry["min_success"]["attempts"] == 2
    assert entry["min_success"]["core_eps"] == pytest.approx(2 / 127.5)
    # a requirement every photo meets: one attempt, written
    result = run("protect", str(photos / "face0.png"), "-o", str(out), "--steps", "1", "--whole-image",
                 "--min-success", "0")
    assert result.exit_code == 0, result.output
    [entry] = json.loads((out / "report.json").read_text())["photos"]
    assert {k: entry["min_success"][k] for k in ("required", "met", "attempts")} == {
        "required": 0.0, "met": True, "attempts": 1}
    assert Path(entry["output"]).is_file()
