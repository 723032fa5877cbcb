"""The service's settings (gateway and workers) in one pydantic-settings class, env prefix ``VEIL_``.

List settings accept either a JSON array (``'["a","b"]'``) or a comma-separated string (``a,b``).
Nothing here imports torch or ``core``: the gateway and every worker import this module.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


def split_list(value: Any) -> Any:
    """``"a, b"`` or ``'["a", "b"]'`` -> ``["a", "b"]``; anything else is left to pydantic."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Service settings. Every field can be set by the environment variable ``VEIL_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="VEIL_", extra="ignore", validate_default=True)

    # --- Redis (job records, API keys, rate limits, idempotency, worker heartbeats) ---
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = Field(default="veil:", description="prefix of every key the service writes")
    redis_socket_timeout_s: float = Field(default=5.0, gt=0)

    # --- Celery (tasks are sent by name, see service.queue; no task code is imported) ---
    celery_broker_url: str | None = Field(default=None, description="defaults to redis_url")
    celery_key_prefix: str = Field(
        default="", description="kombu global_keyprefix of the broker's Redis keys"
    )
    queue_gpu: str = "gpu"
    queue_io: str = "io"
    celery_visibility_timeout_s: int = Field(
        default=7200,
        ge=60,
        description="Redis broker: an unacknowledged task is redelivered after this long; keep it above the "
        "longest task (the workers' time limit) and the longest webhook retry wait",
    )

    # --- S3-compatible storage ---
    s3_endpoint_url: str | None = Field(default=None, description="None = AWS; e.g. http://127.0.0.1:9000")
    s3_public_endpoint_url: str | None = Field(default=None, description="endpoint put in presigned URLs")
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_bucket: str = "veil"
    s3_addressing_style: str = "path"
    s3_create_bucket: bool = True
    s3_timeout_s: float = Field(default=10.0, gt=0)
    retention_days: int = Field(
        default=7, ge=1, le=3650, description="inputs/outputs expire after this many days"
    )

    # --- presigned URLs ---
    download_url_ttl_s: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    download_url_ttl_max_s: int = Field(default=24 * 3600, ge=1, le=7 * 24 * 3600)
    upload_url_ttl_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)

    # --- upload limits (enforced before anything is stored) ---
    max_request_bytes: int = Field(default=64 * MiB, ge=1024, description="body of a direct POST /v1/jobs")
    max_json_bytes: int = Field(default=1 * MiB, ge=1024, description="body of any other request")
    max_image_bytes: int = Field(default=25 * MiB, ge=1)
    max_archive_bytes: int = Field(default=2048 * MiB, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_archive_entries: int = Field(default=1000, ge=1)
    max_archive_uncompressed_bytes: int = Field(default=8192 * MiB, ge=1)
    multipart_threshold_bytes: int = Field(default=100 * MiB, ge=5 * MiB)
    multipart_part_bytes: int = Field(default=16 * MiB, ge=5 * MiB, le=5 * 1024 * MiB)
    max_metadata_bytes: int = Field(default=4096, ge=2)
    max_json_depth: int = Field(
        default=32, ge=2, le=500, description="nesting of client JSON (bodies, metadata/targets fields)"
    )

    # --- API keys and rate limiting ---
    rate_limit_requests: int = Field(default=120, ge=0, description="per key and window; 0 disables")
    rate_limit_window_s: float = Field(default=60.0, gt=0)

    # --- jobs ---
    prefer_wait_max_s: float = Field(default=30.0, ge=0, le=300)
    wait_poll_interval_s: float = Field(default=0.05, gt=0, description="Prefer: wait polls the job this often")
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=1)
    list_max_limit: int = Field(default=100, ge=1)
    methods_file: Path | None = Field(
        default=None, description="the gateway's method catalogue; None: the shipped api/methods.json"
    )

    # --- webhooks ---
    webhook_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="URL hosts exempt from the SSRF guard (host, or host:port for that port only), e.g. a "
        "test receiver; matched against the URL's host, never against an address it resolves to",
    )
    webhook_require_https: bool = Field(default=True, description="allow-listed hosts may still use http")
    webhook_retry_schedule_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0],
        description="waits before each retry; attempts = len + 1",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_attempt_log_max: int = Field(default=100, ge=1)

    # --- readiness ---
    worker_heartbeat_ttl_s: int = Field(
        default=60, ge=1, description="workers refresh veil:workers:<host> this often"
    )
    # --- leftovers of dead processes (service.leases) ---
    job_lease_ttl_s: float = Field(
        default=30.0, gt=0, description="a running job whose worker stopped refreshing its lease this long is failed "
        "as worker_lost"
    )
    input_grace_s: float = Field(
        default=900.0, gt=0, description="an input object still without a job record this long after its upload "
        "began is deleted (longer than any S3 request may hang)"
    )

    @field_validator("webhook_allow_hosts", "webhook_retry_schedule_s", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("webhook_allow_hosts")
    @classmethod
    def _lower_hosts(cls, value: list[str]) -> list[str]:
        hosts = [h.strip().lower() for h in value if h.strip()]
        # "[::1]" -> "::1"; "host:port" and "[v6]:port" stay as written (service.webhooks.allow_entry)
        return [h[1:-1] if h.startswith("[") and h.endswith("]") else h for h in hosts]

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(v < 0 for v in value):
            raise ValueError("retry waits must be >= 0")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.download_url_ttl_s > self.download_url_ttl_max_s:
            raise ValueError("download_url_ttl_s exceeds download_url_ttl_max_s")
        return self

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings read from the environment (cached)."""
    return Settings()
