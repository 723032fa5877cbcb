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
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass
class ModelState:
    device: str = "cpu"
    threads: int = 1
    initialized: bool = False
    preloaded: tuple[str, ...] = ()
    preload_errors: dict[str, str] | None = None
    init_seconds: float = 0.0


_state = ModelState()
_lock = threading.Lock()


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
            for name in settings.worker_preload_forgers:
                try:
                    _load(name, settings)
                    loaded.append(name)
                except ModelUnavailable as exc:
                    errors[name] = str(exc)
                    log.error("forger %s not loaded: %s", name, exc)
        _state.preloaded = tuple(loaded)
        _state.preload_errors = errors or None
        _state.initialized = True
        _state.init_seconds = time.perf_counter() - start
        log.info(
            "models ready on %s (%d torch threads, forgers %s) in %.1f s",
            _state.device, _state.threads, ", ".join(loaded) or "none", _state.init_seconds,
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
    from core.protect import build_protection

    for name in forgers:  # load (or find cached) first, for a clear error
        _load(name, settings)
    options = {k: v for k, v in params.items() if k not in {"eps", "seed"}}
    try:
        return build_protection(
            method,
            forgers=tuple(forgers),
            checkpoints=dict(settings.worker_forger_checkpoints),
            device=_state.device,
            eps=core_eps,
            seed=seed,
            **options,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise BadOptions(f"invalid options for method {method!r}: {exc}") from exc


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
) -> list[PhotoResult]:
    """Protect decoded photos in one batch (covering only the ``targets`` attribute edits when given) and
    encode each (PNG unless JPEG/WebP was asked for)."""
    from core.image import encode_image
    from core.protect import protect_images

    fmt, _ext, _ctype = OUTPUT_FORMATS[output_format.lower()]
    check_targets(protection, targets)
    # Faces when the detector finds them; a photo without one is protected whole rather than returned as is.
    done = protect_images(protection, images, only=targets, whole_image=True)
    out = []
    for result in done:
        width, height = result.image.size
        data = encode_image(result.x_adv, fmt, alpha=result.image.alpha, icc_profile=result.image.icc_profile)
        out.append(PhotoResult(data, _plain(result.report), width, height))
    return out


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
