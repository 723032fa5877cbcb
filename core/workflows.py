"""The steps behind the CLI commands, kept out of cli.py so they can be called and tested directly."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.checkpoints import CheckpointError, Manifest, ManifestEntry, checkpoints_dir, save_weights
from core.classifier import default_judge
from core.data import celeba_available, preprocess_face, read_index
from core.device import resolve_device
from core.evaluate import Tally, measure_batch, summarize
from core.image import INPUT_SUFFIXES, load_image, make_grid, save_image
from core.protect import build_protection, load_forger
from core.targets import targets_for

DEMO_NAME = "astronaut.png"


def demo_image(out: Path) -> Path:
    """scikit-image's astronaut (Eileen Collins, NASA, public domain), the whole 512x512 portrait, as a PNG
    (the protection finds her face itself)."""
    from skimage import data

    src = out / "input" / DEMO_NAME
    src.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).save(src)
    return src


def _square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop to a square and resize to size x size (antialiased)."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[..., top : top + s, left : left + s]
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False).clamp(-1, 1)


def write_tiny_checkpoints(folder: Path) -> Path:
    """A checkpoints folder whose default ``stargan`` is a random tiny network: for demos of the service
    without trained weights (``make run RUN_ARGS=--tiny-forger``) and for tests. It edits nothing useful."""
    from core.forgers import create_forger

    forger = create_forger("stargan", config="tiny", pretrained=False)
    sha = save_weights(forger.generator.state_dict(), folder / "tiny.safetensors", {"config": "tiny"})
    manifest = Manifest(folder)
    manifest.upsert(ManifestEntry(name="stargan-tiny", forger="stargan", file="tiny.safetensors", config="tiny",
                                  sha256=sha, default=True, info={"iterations": 0, "hardware": "none"}))
    manifest.save()
    return folder


def load_faces(data: Path, limit: int, size: int) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """Faces to evaluate on: a CelebA root (validation split, attributes known) or a folder of images."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if celeba_available(data):
        index = read_index(data, "val")
        files = index.files[:limit]
        arrays = []
        for name in files:
            with Image.open(data / "img_align_celeba" / name) as img:
                arrays.append(preprocess_face(img, size))
        x = torch.from_numpy(np.stack(arrays)).float() / 127.5 - 1
        return x, torch.from_numpy(index.attrs[: len(files)]), files
    if not data.is_dir():
        raise FileNotFoundError(f"no such folder: {data}")
    paths = sorted(p for p in data.iterdir() if p.suffix.lower() in INPUT_SUFFIXES)[:limit]
    if not paths:
        raise ValueError(f"no images in {data}")
    x = torch.cat([_square(load_image(p).tensor, size) for p in paths])
    # Faces of an arbitrary folder are stored at 8 bits by anyone who keeps them: measure them that way.
    from core.image import quantize

    return quantize(x), None, [p.name for p in paths]


def face_grid(protection: Any, x: torch.Tensor, x_adv: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rows: [x, x_adv, 10x amplified perturbation]; G(x, c) per target; G(x_adv, c) per target."""
    forger = protection.forgers[0]
    with torch.no_grad():
        clean = forger(x.expand(targets.shape[0], -1, -1, -1), targets)
        adv = forger(x_adv.expand(targets.shape[0], -1, -1, -1), targets)
    amplified = ((x_adv - x) * 10).clamp(-1, 1)
    return make_grid([[x[0], x_adv[0], amplified[0]], list(clean), list(adv)])


def evaluate_faces(
    method: str,
    forgers: Sequence[str],
    faces: torch.Tensor,
    attrs: torch.Tensor | None,
    names: Sequence[str],
    conditions: Sequence[str],
    batch: int,
    grid_dir: Path | None,
    device: str,
    options: dict[str, Any],
    advance: Callable[[int], Any] = lambda n: None,
    transfer: Sequence[str] = (),
    checkpoints: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Protect ``faces`` with ``method`` against ``forgers`` (their weights from ``checkpoints``, by forger, else
    the defaults) and measure it on them, and on the ``transfer`` forgers (which the protection does not
    target: how it transfers to other editors; their weights from ``checkpoints`` too)."""
    protection = build_protection(method, forgers, checkpoints, device=device, **options)
    measured = list(protection.forgers) + [load_forger(f, (checkpoints or {}).get(f), resolve_device(device))
                                             for f in transfer if f not in forgers]
    tally = Tally()
    for start in range(0, len(faces), batch):
        x = faces[start : start + batch].to(device)
        c = attrs[start : start + batch].to(device) if attrs is not None else None
        x_adv, tally = measure_batch(protection, x, c, measured, conditions=conditions, tally=tally,
                                       judge=default_judge())
        if grid_dir is not None:
            targets = targets_for(x, protection.attributes, c)
            for i in range(x.shape[0]):
                grid = face_grid(protection, x[i : i + 1], x_adv[i : i + 1], targets[i])
                save_image(grid, grid_dir / f"{Path(names[start + i]).stem}.png")
        advance(x.shape[0])
    return summarize(tally, protection, measured, conditions)


# A `veil eval` table's check: its one-pass rows on the first faces only, which the tests recompute from the
# shipped generators (a whole table's 100 faces x conditions x forgers take a quarter of an hour on a busy CPU).
TABLE_CHECK_FACES = 20


def one_pass_summaries(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a `veil eval` table (its JSON) made by one-pass methods: shipped generators."""
    from core.methods import method_class

    return [s for s in table["summaries"] if getattr(method_class(s["method"]["method"]), "one_pass", False)]


def reproduce_table(table: dict[str, Any], data: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The one-pass summaries of a `veil eval` table recomputed with the settings it records, each with the
    generator and forger weights its rows name (even where newer weights are the default now), on the
    table's first ``limit`` faces (all of them by default)."""
    settings = table["settings"]
    faces, attrs, names = load_faces(data, limit or settings["limit"], settings["size"])
    options = {k: settings[k] for k in ("eps", "steps", "objective", "seed", "eot", "eot_samples")}
    options.update(settings.get("options", {}))
    forger_weights = dict(zip(settings["forgers"], settings.get("weights") or [], strict=False))
    # Each row names the weights it was measured with, the transfer forgers' too: a forger's default changes.
    # (A table older than that names them only in its check's rows, measured with the same weights.)
    rows = [row for t in (table, table.get("check") or {"summaries": []}) for s in one_pass_summaries(t)
            for row in s["rows"]]
    forger_weights.update({row["forger"]: row["weights"] for row in rows if row.get("weights")})
    return [evaluate_faces(want["method"]["method"], settings["forgers"], faces, attrs, names,
                           settings["conditions"], settings["batch"], None, "cpu",
                           {"checkpoint": Path(want["method"]["weights"]).stem, **options},
                           transfer=settings["transfer"], checkpoints=forger_weights)
            for want in one_pass_summaries(table)]


def record_table_check(path: Path, data: Path, faces: int = TABLE_CHECK_FACES) -> dict[str, Any] | None:
    """Store in a `veil eval` table (JSON at ``path``) its check: its one-pass rows on its first ``faces``
    faces (:func:`reproduce_table`). None, and the file untouched, for a table without settings or one-pass
    rows."""
    import json

    table = json.loads(path.read_text())
    if table.get("settings") is None or not one_pass_summaries(table):
        return None
    n = min(faces, table["settings"]["limit"])
    table["check"] = {"faces": n, "summaries": reproduce_table(table, data, n)}
    path.write_text(json.dumps(table, indent=2) + "\n")
    return table["check"]


def train_forger(
    forger: str, config: str, data: Path | None, run_dir: Path | None, iters: int | None,
    max_minutes: float | None, batch_size: int | None, threads: int | None, device: str, init_from: str | None,
    recipe: str = "published",
) -> int:
    from core.train.forger import ForgerTrainer, TrainConfig

    root = data
    if root is not None and not celeba_available(root):
        raise FileNotFoundError(f"no CelebA layout (list_attr_celeba.txt, img_align_celeba/) in {root}")
    if root is None and not celeba_available():
        raise FileNotFoundError("the CelebA dataset was not found; pass --data or set VEIL_CELEBA")
    cfg = TrainConfig.for_forger(forger, config, recipe, run_dir=run_dir, data_dir=root, iters=iters,
                                 batch_size=batch_size, threads=threads, device=device)
    trainer = ForgerTrainer(cfg)
    if not trainer.resume() and init_from:
        manifest = Manifest()
        g = manifest.find(init_from)
        d = manifest.find(init_from + "-D")
        if g is None:
            raise CheckpointError(f"no manifest entry {init_from!r} to warm start from")
        # A generator warm-starts across resolutions (fully convolutional); the critic only at its own.
        same_critic = d is not None and d.config == config
        trainer.warm_start(manifest.resolve(g), manifest.resolve(d) if d and same_critic else None)
    return trainer.train(max_seconds=max_minutes * 60 if max_minutes else None)


def export_run(run_dir: Path, name: str, default: bool, half: bool, hardware: str,
               warm_start: dict[str, Any] | None = None) -> list[ManifestEntry]:
    """Write a run's G and D as safetensors into checkpoints/ and list them in the manifest (``warm_start``:
    where its first iterations came from, in place of the run's own record of it)."""
    state_path = run_dir / "state.pt"
    if not state_path.is_file():
        raise CheckpointError(f"no training state in {run_dir}")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    cfg = state["config"]
    iterations = int(state["iteration"])
    manifest = Manifest()
    entries = []
    # The moving average of the generator is what a run ships, when it keeps one.
    g_key = "G_ema" if "G_ema" in state else "G"
    for role, key, suffix in (("generator", g_key, ""), ("discriminator", "D", "-D")):
        file = f"{name}{suffix}.safetensors"
        meta = {"forger": cfg["forger"], "config": cfg["model_config"], "role": role, "iterations": iterations}
        sha = save_weights(state[key], checkpoints_dir() / file, meta, half=half)
        entry = ManifestEntry(
            name=name + suffix, forger=cfg["forger"], file=file, config=cfg["model_config"], sha256=sha,
            role=role, default=default,
            info={
                "architecture": f"{cfg['forger']} {role}",
                "data": "CelebA train split (24,000 aligned faces), attributes Black_Hair, Blond_Hair, "
                        "Brown_Hair, Male, Young",
                "iterations": iterations,
                "batch_size": cfg["batch_size"],
                "hardware": hardware,
                "dtype": "float16" if half else "float32",
                "exported": dt.date.today().isoformat(),
                "licence": "CelebA: non-commercial research use only",
                "recipe": {k: cfg[k] for k in RECIPE_KEYS if k in cfg},
                **({"warm_start": warm} if (warm := warm_start or cfg.get("extra", {}).get("warm_start")) else {}),
            },
        )
        manifest.upsert(entry)
        entries.append(entry)
    manifest.save()
    write_model_card(entries[0])
    return entries


def _a(word: str) -> str:
    """``word`` with its indefinite article: "a stargan", "an attgan"."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _warm_note(info: dict[str, Any]) -> str:
    warm = info.get("warm_start")
    if not warm:
        return ""
    run = f", {_a(warm['forger'])} run" if warm.get("forger") else ""
    if warm.get("restarted"):  # a new recipe that counted its iterations from 0
        return f" of its own recipe, after {warm['iterations']} of `{warm['from']}`{run}"
    return f" (the first {warm['iterations']} warm-started from `{warm['from']}`{run})"


RECIPE_KEYS = ("forger", "batch_size", "lr", "n_critic", "lambda_cls", "lambda_rec", "lambda_gp", "lambda_id",
               "recipe", "adv_loss", "r1_gamma", "ema_beta")


def write_model_card(entry: ManifestEntry) -> Path:
    """``checkpoints/<name>.md``: what the weights are, how they were made, what they may be used for."""
    info = entry.info
    metrics = info.get("metrics", {})
    numbers = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                        for k, v in metrics.items()) or "| (not measured yet) | |"
    recipe = ", ".join(f"{k} {v}" for k, v in info.get("recipe", {}).items())
    card = f"""# {entry.name}

{_a(entry.forger).capitalize()} face-attribute editor (generator `{entry.file}`,
discriminator `{entry.name}-D.safetensors`), config `{entry.config}`, trained by Veil as an adversary
to protect against. It is not a product feature:
it exists so that Veil's protections are measured against a real editor.

## Training
- Data: {info.get("data")}; preprocessing CenterCrop 178, resize to the config's size, [-1, 1].
- Recipe: {recipe}.
- Iterations: {info.get("iterations")} on {info.get("hardware")}{_warm_note(info)}; stored as {info.get("dtype")};
  sha256 `{entry.sha256}`.

## Measured
| number | value |
|---|---|
{numbers}

## Intended use and limits
- Intended use: research on and evaluation of protections against face editing (Veil's own tests,
  benchmarks and evaluations). Not for editing people's faces.
- Licence: trained on CelebA, which is available for non-commercial research purposes only; these
  weights carry that restriction.
- Limits: trained on aligned, centred celebrity faces (CelebA's demographics and framing); edits of
  other faces, poses or resolutions are weaker. Read edit_strength against identity_mse (what the editor
  changes when asked for no edit, i.e. its artefacts): the reference StarGAN edits a face by about 0.0435
  with far smaller artefacts, and a compact config trained for few iterations mostly adds artefacts.
"""
    path = checkpoints_dir() / f"{entry.name}.md"
    path.write_text(card)
    return path


# A card's check: its numbers on the first validation faces only, which the tests recompute from the weights
# (a whole card's 1,000-2,000 faces take a quarter of an hour at 128 px on a 2-core CPU).
CHECK_FACES = 100
CHECK_KEYS = ("edit_strength", "reconstruction_mse", "identity_mse", "target_accuracy")


def measure_and_record(name: str, data: Path, limit: int, advance: Callable[[int], Any] = lambda n: None,
                       check_only: bool = False) -> dict[str, Any]:
    """Measure a manifest forger on the validation faces; store the numbers in its entry and card, and the
    numbers of the first :data:`CHECK_FACES` of them as its check (``metrics_check``). ``check_only``: only
    the check, by the judge the card names, leaving the card as it is."""
    from core.classifier import CLASSIFIER_NAME, JUDGE_NAME, load_classifier
    from core.forger_eval import measure_forger
    from core.forgers import create_forger

    manifest = Manifest()
    entry = manifest.find(name)
    if entry is None or entry.role != "generator":
        raise CheckpointError(f"no generator named {name!r} in the manifest")
    if not celeba_available(data):
        raise FileNotFoundError(f"no CelebA layout in {data}")
    if check_only and "metrics" not in entry.info:
        raise CheckpointError(f"{name!r} has no card numbers to check yet: measure it whole first")
    forger = create_forger(entry.forger, name)
    faces, attrs, _ = load_faces(data, CHECK_FACES if check_only else limit, forger.image_size)
    assert attrs is not None
    # The judge: the card's own when checking it; else the 128 px classifier where it is shipped, else the
    # 64 px one. The card names it.
    names = (entry.info["metrics"].get("judge", CLASSIFIER_NAME),) if check_only else (JUDGE_NAME, CLASSIFIER_NAME)
    classifier, judge = None, None
    for judge_name in names:
        try:
            classifier, judge = load_classifier(name=judge_name), judge_name
            break
        except CheckpointError:
            continue
    numbers: dict[str, Any] = {}
    if not check_only:
        numbers = measure_forger(forger, faces, attrs, classifier, advance=advance)
        if judge is not None:
            numbers["judge"] = judge
        entry.info["metrics"] = {k: v for k, v in numbers.items() if not isinstance(v, dict)}
        entry.info["metrics_detail"] = {k: v for k, v in numbers.items() if isinstance(v, dict)}
    check = measure_forger(forger, faces[:CHECK_FACES], attrs[:CHECK_FACES], classifier,
                           advance=advance if check_only else lambda n: None)
    entry.info["metrics_check"] = {"faces": min(CHECK_FACES, len(faces)),
                                   **{k: check[k] for k in CHECK_KEYS if k in check},
                                   **({"judge": judge} if judge is not None else {})}
    manifest.upsert(entry)
    manifest.save()
    if not check_only:
        write_model_card(entry)
    return numbers or entry.info["metrics_check"]
