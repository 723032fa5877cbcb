"""The public view of a job: the body of ``GET /v1/jobs/{id}`` and the ``data`` of every webhook event.

Built from the :class:`service.jobs.JobRecord` by :func:`job_out`, by the gateway (responses) and the
workers (webhook snapshots) alike. The job's ``report`` is typed by the report contract,
:class:`core.report.JobReport` (pydantic only: the one core module the service layer imports).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.report import JobReport
from service.jobs import JobRecord
from service.states import JobStatus


def ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


class Progress(BaseModel):
    done: int
    total: int


class JobErrorOut(BaseModel):
    code: str
    message: str


class JobInputOut(BaseModel):
    kind: Literal["image", "archive"]
    filename: str
    content_type: str
    size: int
    upload_id: str | None = None


class WebhookAttemptOut(BaseModel):
    event: str
    msg_id: str
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None


class WebhookOut(BaseModel):
    url: str
    events: list[str]
    disabled: bool
    attempts: list[WebhookAttemptOut] | None = None


class Job(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: JobStatus
    method: str
    forgers: list[str]
    targets: list[str] | None
    eps: float
    strength: str | None
    output_format: str
    min_success: float | None = None
    previews: bool = False
    keep_metadata: bool = False
    input: JobInputOut
    progress: Progress
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime
    error: JobErrorOut | None
    report: JobReport | None = Field(
        default=None,
        description="set by the worker when the job ends: a photo's report (quality, the forgers' success rates, "
        "the receipt), an archive's summary (details in report.json/report.csv)",
    )
    metadata: dict[str, Any]
    webhook: WebhookOut | None
    links: dict[str, str]


def job_out(job: JobRecord, attempts: list[dict[str, Any]] | None = None) -> Job:
    webhook = None
    if job.webhook_url:
        webhook = WebhookOut(
            url=job.webhook_url,
            events=job.webhook_events,
            disabled=job.webhook_disabled,
            attempts=(
                [WebhookAttemptOut.model_validate({**a, "at": ts(a.get("at"))}) for a in attempts]
                if attempts is not None
                else None
            ),
        )
    base = f"/v1/jobs/{job.id}"
    return Job(
        id=job.id,
        status=job.status,
        method=job.method,
        forgers=job.forgers,
        targets=job.targets,
        eps=job.eps,
        strength=job.strength,
        output_format=job.output_format,
        min_success=job.min_success,
        previews=job.previews,
        keep_metadata=job.keep_metadata,
        input=JobInputOut(
            kind=job.kind,
            filename=job.input.filename,
            content_type=job.input.content_type,
            size=job.input.size,
            upload_id=job.input.upload_id,
        ),
        progress=Progress(done=job.progress_done, total=job.progress_total),
        created_at=ts(job.created_at),  # type: ignore[arg-type]
        started_at=ts(job.started_at),
        finished_at=ts(job.finished_at),
        expires_at=ts(job.expires_at),  # type: ignore[arg-type]
        error=JobErrorOut(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        report=JobReport.model_validate(job.report) if job.report is not None else None,
        metadata=job.metadata,
        webhook=webhook,
        links={"self": base, "outputs": f"{base}/outputs", "cancel": f"{base}/cancel"},
    )
