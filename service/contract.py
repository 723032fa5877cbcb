"""The job-options contract, declared once: the gateway resolves a request into :class:`ResolvedOptions`,
the job record (:class:`service.jobs.JobRecord`) is those options plus its state, and the task payload a
worker receives (:class:`TaskPayload`) is the protection part of them plus where the input and outputs are.

The gateway publishes these models in its OpenAPI document (``components.schemas``). JSON keys are the
field names; the payload is versioned by ``v`` (:data:`PAYLOAD_VERSION`).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, Field

WebhookEvent = Literal["job.started", "job.completed", "job.failed", "job.progress"]
WEBHOOK_EVENTS: tuple[str, ...] = get_args(WebhookEvent)
DEFAULT_WEBHOOK_EVENTS: tuple[str, ...] = ("job.started", "job.completed", "job.failed")
EPS_MAX = 0.1  # the largest budget any request or catalogue may ask for (fraction of the channels' range)
JobKind = Literal["image", "archive"]
PAYLOAD_VERSION = 1


class InputRef(BaseModel):
    """Where a job's input lies in S3."""

    bucket: str
    key: str
    filename: str
    content_type: str
    size: int
    sha256: str | None = None
    upload_id: str | None = None
    # The version the gateway checked (an upload's presigned POST stays valid after the check): the worker
    # reads that version only, and a replaced object fails the job instead of bypassing the checks.
    etag: str | None = None


class OutputRef(BaseModel):
    """One output object (written by the worker under ``output_prefix``)."""

    key: str
    size: int | None = None
    content_type: str | None = None
    source: str | None = Field(default=None, description="input file (archive entry) it was made from")


class ProtectOptions(BaseModel):
    """What a worker needs to protect a photo: the request's options after the catalogue's defaults."""

    method: str
    forgers: list[str]
    targets: list[str] | None = Field(default=None, description="attribute edits to cover (None: all)")
    eps: float = Field(description="budget as a fraction of the perturbed channels' full range")
    core_eps: float = Field(description="eps in the core method's own units (eps * core_eps_scale)")
    params: dict[str, Any] = Field(default_factory=dict, description="method defaults (steps, ...)")
    output_format: str = "png"
    min_success: float | None = Field(
        default=None, description="success rate the receipt must show under every condition"
    )
    escalation: list[float] = Field(
        default_factory=list, description="stronger core eps to retry with, in order, while min_success is unmet"
    )
    previews: bool = False
    keep_metadata: bool = False

    def protect_options(self) -> dict[str, Any]:
        """Just the :class:`ProtectOptions` fields of this (sub)model."""
        return {name: getattr(self, name) for name in ProtectOptions.model_fields}


class ResolvedOptions(ProtectOptions):
    """Everything the gateway resolved from a request: the protection options plus the job's extras."""

    strength: str | None = None
    webhook_url: str | None = None
    webhook_events: list[str] = Field(default_factory=list, description="empty without webhook_url")
    metadata: dict[str, Any] = Field(default_factory=dict)


class WebhookTarget(BaseModel):
    url: str
    events: list[str]


class TaskPayload(ProtectOptions):
    """The only (keyword) argument ``payload`` of ``veil.protect`` and ``veil.protect_archive``.

    A worker still re-reads the job record (cancels, webhook state); the payload says what to do."""

    v: int = PAYLOAD_VERSION
    job_id: str
    tenant: str
    kind: JobKind
    input: InputRef
    output_bucket: str | None = None
    output_prefix: str
    webhook: WebhookTarget | None = None
    created_at: float | None = None
    expires_at: float | None = None


CONTRACT_MODELS: tuple[type[BaseModel], ...] = (ResolvedOptions, TaskPayload)
