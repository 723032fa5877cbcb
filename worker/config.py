"""Worker settings: every shared setting (:class:`service.config.Settings`) plus the workers' own, env prefix ``VEIL_``.

The workers read the same ``VEIL_*`` environment as the gateway (Redis, broker, S3, limits, webhooks) and
these additional variables (all optional):

=====================================  ==========================================================================
``VEIL_WORKER_DEVICE``                 ``auto`` (``cuda`` when available, else ``cpu``), ``cpu``, ``cuda``, ``cuda:1``
``VEIL_WORKER_TORCH_THREADS``          torch CPU threads per worker process (default 1)
``VEIL_WORKER_PRELOAD_FORGERS``        forgers loaded when a gpu worker process starts (default ``stargan``)
``VEIL_WORKER_COMPILE_FORGERS``        ``true``: compile each forger's pass with TorchInductor when it loads (a
                                       C/C++ compiler on CPU, Triton on CUDA); about 1.5x as fast a pass on a CPU
                                       after seconds to a minute of compiling per forger (default ``false``)
``VEIL_WORKER_FORGER_CHECKPOINTS``     JSON ``{"stargan": "path-or-manifest-entry"}``; default: the shipped
                                       weights of ``$VEIL_CHECKPOINTS`` (or ``checkpoints/``)
``VEIL_TASK_MAX_DELIVERIES``           a task delivered this many times without finishing (its worker died each
                                       time) fails its job (or its photos) instead of looping (default 3)
``VEIL_TASK_TIME_LIMIT_S``             hard limit per task (prefork pools; default 1800)
``VEIL_TASK_SOFT_TIME_LIMIT_S``        soft limit: the job fails with ``timeout`` (default 1740)
``VEIL_TASK_TRANSIENT_RETRIES``        retries of a task whose S3/Redis call failed (default 5)
``VEIL_TASK_RETRY_BACKOFF_S``          first retry wait, doubled each time (default 2)
``VEIL_WORKER_SOFT_SHUTDOWN_TIMEOUT_S`` seconds a stopping worker lets its running task finish (default 60)
``VEIL_ARCHIVE_GROUP_SIZE``            photos per ``veil.protect_group`` task (default 16)
``VEIL_PROTECT_BATCH_SIZE``            photos per protection batch (default 4; cancel is checked between batches)
``VEIL_PROTECT_BATCH_PIXELS``          and at most this many pixels per batch (default 16 M)
``VEIL_PROGRESS_WEBHOOK_INTERVAL_S``   at most one ``job.progress`` webhook per job per interval (default 5)
``VEIL_WORKER_TMP_DIR``                where archives are unpacked and packed (default: the system's)
=====================================  ==========================================================================

``VEIL_CELERY_VISIBILITY_TIMEOUT_S`` (a gateway setting, 7200 s by default) must stay above the task time limit
and the longest webhook retry wait: an unacknowledged task is redelivered after it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from service.config import Settings, split_list


class WorkerSettings(Settings):
    worker_device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    worker_torch_threads: int = Field(default=1, ge=1, le=256)
    worker_preload_forgers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["stargan"])
    worker_forger_checkpoints: dict[str, str] = Field(default_factory=dict)
    worker_compile_forgers: bool = False

    task_max_deliveries: int = Field(default=3, ge=1, le=100)
    task_time_limit_s: int = Field(default=1800, ge=1)
    task_soft_time_limit_s: int = Field(default=1740, ge=1)
    task_transient_retries: int = Field(default=5, ge=0, le=50)
    task_retry_backoff_s: float = Field(default=2.0, ge=0)
    worker_soft_shutdown_timeout_s: float = Field(default=60.0, ge=0)

    archive_group_size: int = Field(default=16, ge=1, le=1000)
    protect_batch_size: int = Field(default=4, ge=1, le=256)
    protect_batch_pixels: int = Field(default=16_000_000, ge=1)
    progress_webhook_interval_s: float = Field(default=5.0, ge=0)
    worker_tmp_dir: Path | None = None

    @field_validator("worker_preload_forgers", mode="before")
    @classmethod
    def _forger_list(cls, value: Any) -> Any:
        return split_list(value)

    @model_validator(mode="after")
    def _worker_coherent(self) -> WorkerSettings:
        if self.task_soft_time_limit_s > self.task_time_limit_s:
            raise ValueError("task_soft_time_limit_s exceeds task_time_limit_s")
        longest_wait = max(self.webhook_retry_schedule_s, default=0.0)
        if self.celery_visibility_timeout_s <= max(self.task_time_limit_s, longest_wait):
            raise ValueError(
                f"celery_visibility_timeout_s ({self.celery_visibility_timeout_s}) must exceed the task time limit "
                f"({self.task_time_limit_s}) and the longest webhook retry wait ({longest_wait:g}): "
                "the broker would redeliver tasks that are still running or waiting"
            )
        return self


@functools.lru_cache(maxsize=1)
def get_worker_settings() -> WorkerSettings:
    """The process-wide worker settings read from the environment (cached)."""
    return WorkerSettings()


def to_env(settings: Settings) -> dict[str, str]:
    """``VEIL_*`` environment variables that reproduce ``settings`` in another process (None fields are left out)."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        raw = getattr(settings, name)
        if raw is None:
            continue
        if hasattr(raw, "get_secret_value"):
            value = raw.get_secret_value()
        env[f"VEIL_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env
