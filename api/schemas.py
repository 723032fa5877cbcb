"""Request and response bodies of the public API."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from service.contract import DEFAULT_WEBHOOK_EVENTS, EPS_MAX, WebhookEvent
from service.states import JobStatus
from service.views import Job

OutputFormat = Literal["png", "jpeg", "webp"]
Strength = Literal["low", "medium", "high"]
UploadContentType = Literal["image/png", "image/jpeg", "image/webp", "application/zip"]


class JobOptions(BaseModel):
    """Protection options (JSON body, or form fields next to ``file``)."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(default="pgd", max_length=64, description="see GET /v1/methods")
    forgers: list[str] = Field(default_factory=lambda: ["stargan"], min_length=1, max_length=8)
    targets: list[str] | None = Field(
        default=None,
        max_length=32,
        description="attribute edits to cover (default: every single-attribute edit)",
    )
    eps: float | None = Field(
        default=None,
        gt=0,
        le=EPS_MAX,
        description="budget, fraction of the channel range (method default if unset)",
    )
    strength: Strength | None = Field(default=None, description="preset budget; exclusive with eps")
    output_format: OutputFormat = "png"
    min_success: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="success rate the receipt must show under every condition (as delivered, JPEG q90/q75, WebP "
        "q80, 0.5x resize, blur, noise); below it the worker retries with the method's stronger presets, then "
        "fails the photo",
    )
    keep_metadata: StrictBool = Field(
        default=False, description="write the photo's EXIF (camera, date, GPS) into the output; none by default"
    )
    previews: StrictBool = Field(
        default=False,
        description="also write previews/<stem>-perturbation.png (amplified) and previews/<stem>-edits.png "
        "(the forger's edits of the original and of the protected face) for photo jobs",
    )
    webhook_url: str | None = Field(default=None, max_length=2048)
    webhook_events: list[WebhookEvent] | None = Field(
        default=None, description=f"default {list(DEFAULT_WEBHOOK_EVENTS)}"
    )
    metadata: dict[str, Any] | None = Field(
        default=None, description="small JSON object echoed back (max 4 KiB)"
    )

    @field_validator("forgers", "targets")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("duplicate names")
        return value


class JobCreate(JobOptions):
    """JSON (or urlencoded form) body of POST /v1/jobs referencing an upload."""

    upload_id: str = Field(max_length=64, description="from POST /v1/uploads")


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job]
    has_more: bool
    next_cursor: str | None


class OutputItem(BaseModel):
    name: str = Field(description="path below the job's output prefix")
    size: int
    url: str
    expires_at: datetime


class JobOutputs(BaseModel):
    job_id: str
    status: JobStatus
    expires_in: int
    data: list[OutputItem]


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255)
    content_type: UploadContentType
    size: int = Field(gt=0, description="bytes the client will upload")
    multipart: StrictBool | None = Field(
        default=None, description="force (true) or forbid (false) a multipart upload"
    )


class PresignedPost(BaseModel):
    url: str
    fields: dict[str, str]


class MultipartInfo(BaseModel):
    part_size: int
    part_count: int
    parts_url: str
    complete_url: str


class Upload(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    mode: Literal["post", "multipart"]
    status: Literal["pending", "ready", "failed"]
    filename: str
    content_type: str
    size: int
    max_bytes: int
    created_at: datetime
    expires_at: datetime
    kind: Literal["image", "archive"] | None = None
    error: str | None = None
    post: PresignedPost | None = None
    multipart: MultipartInfo | None = None


class PartsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    part_numbers: list[int] = Field(min_length=1, max_length=1000)


class PartUrl(BaseModel):
    part_number: int
    url: str


class PartsResponse(BaseModel):
    expires_at: datetime
    parts: list[PartUrl]


S3_MAX_PARTS = 10_000
ETAG_MAX_CHARS = 128  # an S3 part's ETag is a quoted MD5 in hex: 34 characters


class CompletedPart(BaseModel):
    part_number: int = Field(ge=1, le=S3_MAX_PARTS)
    etag: str = Field(min_length=1, max_length=ETAG_MAX_CHARS, pattern=r"^[\x20-\x7e]+$")


class CompleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parts: list[CompletedPart] = Field(default_factory=list, max_length=S3_MAX_PARTS)


# The body limit of POST /v1/uploads/{id}/complete: the largest body the schema allows, S3_MAX_PARTS parts
# with the longest ETags, pretty-printed (a part takes under 100 bytes besides its ETag, which takes at most
# twice its length escaped), and a KiB to spare.
COMPLETE_MAX_BYTES = 1024 + S3_MAX_PARTS * (100 + 2 * ETAG_MAX_CHARS)


def metadata_size(metadata: dict[str, Any] | None) -> int:
    return len(json.dumps(metadata or {}, separators=(",", ":")).encode())
