"""The per-process model cache of the gpu workers (torch lives here and in ``core`` only).

Fork safety: nothing here runs in a prefork parent. torch (and libgomp's thread pool, and CUDA) is first
touched in the process that protects photos: :func:`init_process` runs from Celery's
``worker_process_init`` in each prefork child, or in the worker process itself with ``--pool=solo``
(see :mod:`worker.lifecycle`); a parent that had run a torch op before forking would leave its children
deadlocked in libgomp, and CUDA cannot be used across a fork at all. Run the gpu worker with
``--pool=solo`` (one process, one task at a time: the usual choice for one GPU) or with
``--pool=prefork --concurrency=N``, which gives each child ``worker_torch_threads`` (1) torch threads.

Forgers are loaded once per process (:func:`core.protect.load_forger` caches them) and stay resident; a
protection (cheap: the method object over the cached forgers) is built per task with the job's options.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worker.config import WorkerSettings

if TYPE_CHECKING:
    from core.image import LoadedImage
    from core.methods import Protection

log = logging.getLogger(__name__)

OUTPUT_FORMATS: dict[str, tuple[str, str, str]] = {
    # payload output_format -> (core format, extension, content type)
    "png": ("PNG", ".png", "image/png"),
    "jpeg": ("JPEG", ".jpg", "image/jpeg"),
    "jpg": ("JPEG", ".jpg", "image/jpeg"),
    "webp": ("WEBP", ".webp", "image/webp"),
}


class ModelUnavailable(RuntimeError):
    """A forger's weights cannot be loaded (missing or corrupt checkpoint, unknown forger)."""


class BadPhoto(ValueError):
    """A photo cannot be protected (not an image, truncated, animated, too many pixels, ...)."""


class BadOptions(ValueError):
    """The job's method options are not valid for the core method."""


@dataclass
class PhotoResult:
    data: bytes  # the encoded protected photo
    report: dict[str, Any]
    width: int
    height: int
    previews: dict[str, bytes] = field(default_factory=dict)  # "perturbation" / "edits" -> PNG
    error: str | None = None  # min_success not met even with the strongest budget: the photo fails so


@dataclass
class ModelState:
    device: str = "cpu"
    threads: int = 1
    initialized: bool = False
    preloaded: tuple[str, ...] = ()
    preload_errors: dict[str, str] | None = None
    init_seconds: float = 0.0
    compile_seconds: float = 0.0  # compiling forgers (worker_compile_forgers), at start-up and in later builds


_state = ModelState()
_lock = threading.Lock()
_compile_lock = threading.Lock()  # a threads pool's tasks may build on the same forger at once


def resolve_device(requested: str) -> str:
    from core.device import resolve_device as resolve

    try:
        return resolve(requested)
    except ValueError as exc:
        raise ModelUnavailable(str(exc)) from exc


def init_process(settings: WorkerSettings, preload: bool = True) -> ModelState:
    """Set torch's threads and device and load the preloaded forgers (once per process)."""
    with _lock:
        if _state.initialized:
            return _state
        start = time.perf_counter()
        import torch

        torch.set_num_threads(settings.worker_torch_threads)
        with contextlib.suppress(RuntimeError):  # already set, or parallel work already started
            torch.set_num_interop_threads(1)
        _state.threads = settings.worker_torch_threads
        _state.device = resolve_device(settings.worker_device)
        errors: dict[str, str] = {}
        loaded: list[str] = []
        if preload:
            forgers = []
            for name in settings.worker_preload_forgers:
                try:
                    forgers.append(_load(name, settings))
                    loaded.append(name)
                except ModelUnavailable as exc:
                    errors[name] = str(exc)
                    log.error("forger %s not loaded: %s", name, exc)
            if settings.worker_compile_forgers:  # before the first job, not in it
                _compile(forgers)
        _state.preloaded = tuple(loaded)
        _state.preload_errors = errors or None
        _state.initialized = True
        _state.init_seconds = time.perf_counter() - start
        log.info(
            "models ready on %s (%d torch threads, forgers %s) in %.1f s (%.1f s compiling)",
            _state.device, _state.threads, ", ".join(loaded) or "none", _state.init_seconds, _state.compile_seconds,
        )
        return _state


def state() -> ModelState:
    return _state


def _load(name: str, settings: WorkerSettings) -> Any:
    from core.checkpoints import CheckpointError
    from core.protect import load_forger

    try:
        return load_forger(name, settings.worker_forger_checkpoints.get(name), _state.device)
    except (CheckpointError, KeyError, ValueError, FileNotFoundError) as exc:
        raise ModelUnavailable(f"forger {name!r} unavailable: {exc}") from exc


def _compile(forgers: Sequence[Any]) -> None:
    """Compile forgers not compiled yet (worker_compile_forgers); the cache keeps them, compiled, for later jobs."""
    import torch._inductor.config as inductor

    from core.forgers import compile_forger

    inductor.compile_threads = 1  # not a pool of compiler processes in each worker process
    with _compile_lock:
        for forger in forgers:
            seconds = compile_forger(forger)
            if seconds:
                _state.compile_seconds += seconds
                log.info("forger %s compiled in %.1f s%s", forger.name, seconds,
                         "" if forger.compiled else " (failed: it runs uncompiled)")


def job_seed(job_id: str) -> int:
    """A seed per job, so that a redelivered task computes the same output."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big")


def build(
    settings: WorkerSettings,
    method: str,
    forgers: Sequence[str],
    core_eps: float,
    params: dict[str, Any],
    seed: int,
) -> Protection:
    """The job's protection over this process's resident forgers."""
    init_process(settings)
    from core.checkpoints import CheckpointError
    from core.protect import build_protection

    for name in forgers:  # load (or find cached) first, for a clear error
        _load(name, settings)
    options = {k: v for k, v in params.items() if k not in {"eps", "seed"}}
    try:
        protection = build_protection(
            method,
            forgers=tuple(forgers),
            checkpoints=dict(settings.worker_forger_checkpoints),
            device=_state.device,
            eps=core_eps,
            seed=seed,
            **options,
        )
    except CheckpointError as exc:  # a one-pass method whose generator weights are missing or broken
        raise ModelUnavailable(f"method {method!r} unavailable: {exc}") from exc
    except (KeyError, ValueError, TypeError) as exc:
        raise BadOptions(f"invalid options for method {method!r}: {exc}") from exc
    if settings.worker_compile_forgers:  # a one-pass method's forgers are the weights it was trained against
        _compile(protection.forgers)
    return protection


def decode(data: bytes, max_pixels: int) -> LoadedImage:
    from core.image import ImageError, load_image

    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise BadPhoto(str(exc)) from exc


def check_targets(protection: Protection, targets: Sequence[str] | None) -> None:
    """BadOptions unless every target names an attribute the protection's forgers edit."""
    from core.targets import fixed_targets, select_edits

    try:
        select_edits(fixed_targets(protection.attributes)[None], protection.attributes, targets)
    except ValueError as exc:
        raise BadOptions(str(exc)) from exc


def protect(
    protection: Protection,
    images: Sequence[LoadedImage],
    output_format: str,
    targets: Sequence[str] | None = None,
    *,
    min_success: float | None = None,
    stronger: Sequence[Callable[[], Protection]] = (),
    previews: bool = False,
    keep_metadata: bool = False,
) -> list[PhotoResult]:
    """Protect decoded photos in one batch (covering only the ``targets`` attribute edits when given) and
    encode each (PNG unless JPEG/WebP was asked for; the receipt measures the encoded photo).

    ``min_success``: photos whose receipt falls below it are protected again with each of ``stronger``
    (builders of stronger protections, weakest first) until it is met; a photo that never meets it gets
    ``error`` set. ``previews``: also render the amplified perturbation and the first forger's edits.
    ``keep_metadata``: write the photo's EXIF (without orientation) into the output; none by default.
    """
    from core.image import encode_image
    from core.protect import protect_images, protect_until, record_min_success, refine_rounds

    fmt, _ext, _ctype = OUTPUT_FORMATS[output_format.lower()]
    check_targets(protection, targets)

    def run(prot: Protection, photos: Sequence[LoadedImage], attempt: int) -> list[Any]:
        # Faces when the detector finds them; a photo without one is protected whole, not returned as is.
        # A min_success retry also re-protects the framing a detector finds on the protected photo.
        return protect_images(prot, photos, only=targets, whole_image=True, output_format=fmt,
                              keep_metadata=keep_metadata, refine=refine_rounds(0, attempt))

    out = []
    for attempted in protect_until(run, protection, images, min_success, stronger):
        result, prot = attempted.result, attempted.protection
        width, height = result.image.size
        data = result.encoded or encode_image(result.x_adv, fmt, alpha=result.image.alpha,
                                              icc_profile=result.image.icc_profile,
                                              exif=result.image.exif if keep_metadata else None)
        rendered = render_previews(prot, result) if previews and result.targets is not None else {}
        photo = PhotoResult(data, _plain(result.report), width, height, rendered)
        if min_success is not None:
            photo.error = record_min_success(photo.report, min_success, attempted)
        out.append(photo)
    return out


def render_previews(protection: Protection, result: Any) -> dict[str, bytes]:
    """PNGs of the amplified perturbation and the first forger's edits of the first face, before and after."""
    from core.image import encode_image
    from core.previews import AMPLIFICATION, edits_preview, perturbation_preview
    from core.protect import work_size

    grid, columns = edits_preview(protection.forgers[0], result, work_size(protection))
    amplified = perturbation_preview(result.image.tensor, result.x_adv)
    result.report["previews"] = {"columns": columns, "amplification": AMPLIFICATION,
                                 "forger": protection.forgers[0].name}
    return {"perturbation": encode_image(amplified, "PNG"), "edits": encode_image(grid, "PNG")}


def _plain(value: Any) -> Any:
    """A report with only JSON types (floats rounded; NaN/inf become None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return round(number, 6)
