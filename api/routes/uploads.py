"""``/v1/uploads``: direct-to-S3 uploads (presigned POST, or multipart for large archives)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from api.deps import PrincipalDep, ServicesDep
from api.problems import Problem, validation_problem
from api.routes.jobs import ERRORS
from api.routing import BoundedJSONRoute
from api.schemas import (
    COMPLETE_MAX_BYTES,
    S3_MAX_PARTS,
    CompleteRequest,
    MultipartInfo,
    PartsRequest,
    PartsResponse,
    PartUrl,
    PresignedPost,
    Upload,
    UploadCreate,
)
from api.submit import Services, inspect_upload
from api.uploads import UploadRecord
from service.redisdb import new_id
from service.storage import safe_filename, upload_key
from service.views import ts

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], route_class=BoundedJSONRoute)
S3_MAX_POST_BYTES = 5 * 1024**3


def upload_out(upload: UploadRecord, post: dict[str, Any] | None = None) -> Upload:
    multipart = None
    if upload.mode == "multipart":
        assert upload.part_size is not None and upload.part_count is not None
        multipart = MultipartInfo(
            part_size=upload.part_size,
            part_count=upload.part_count,
            parts_url=f"/v1/uploads/{upload.id}/parts",
            complete_url=f"/v1/uploads/{upload.id}/complete",
        )
    return Upload(
        id=upload.id,
        mode=upload.mode,
        status=upload.status,
        filename=upload.filename,
        content_type=upload.content_type,
        size=upload.size,
        max_bytes=upload.max_bytes,
        created_at=ts(upload.created_at),  # type: ignore[arg-type]
        expires_at=ts(upload.expires_at),  # type: ignore[arg-type]
        kind=upload.kind,
        error=upload.error,
        post=PresignedPost(url=post["url"], fields=post["fields"]) if post else None,
        multipart=multipart,
    )


def _get(services: Services, principal: PrincipalDep, upload_id: str) -> UploadRecord:
    upload = services.uploads.get(upload_id, principal.tenant)
    if upload is None:
        raise Problem(404, "not-found", f"no upload {upload_id}", title="Not Found")
    return upload


@router.post("", status_code=201, response_model=Upload, responses=ERRORS, summary="Start an upload")
def create_upload(body: UploadCreate, principal: PrincipalDep, services: ServicesDep) -> Upload:
    """Returns a presigned POST (``post.url`` + ``post.fields``; the form must carry the fields, then the
    file, and is limited to the declared size and content type), or for large archives (over
    ``multipart_threshold_bytes``, or ``multipart: true``) an S3 multipart upload: ask part URLs from
    ``parts_url``, PUT each part, then POST the ETags to ``complete_url``."""
    settings = services.settings
    archive = body.content_type == "application/zip"
    limit = settings.max_archive_bytes if archive else settings.max_image_bytes
    if body.size > limit:
        raise Problem(
            413,
            "too-large",
            f"{body.size} bytes declared, limit {limit}",
            title="Content too large",
            limit=limit,
        )
    multipart = (
        body.multipart if body.multipart is not None else body.size > settings.multipart_threshold_bytes
    )
    if not multipart and body.size > S3_MAX_POST_BYTES:
        raise validation_problem(
            [{"loc": ["multipart"], "msg": "over 5 GiB needs a multipart upload", "type": "value_error"}]
        )
    upload_id = new_id("upl")
    filename = safe_filename(body.filename)
    key = upload_key(principal.tenant, upload_id, filename)
    now = time.time()
    record = UploadRecord(
        id=upload_id,
        tenant=principal.tenant,
        mode="multipart" if multipart else "post",
        key=key,
        filename=filename,
        content_type=body.content_type,
        size=body.size,
        max_bytes=body.size,
        created_at=now,
        expires_at=now + settings.upload_url_ttl_s,
    )
    post = None
    if multipart:
        part_size = settings.multipart_part_bytes
        part_count = max(1, math.ceil(body.size / part_size))
        if part_count > S3_MAX_PARTS:
            raise validation_problem(
                [
                    {
                        "loc": ["size"],
                        "msg": "too many parts for the configured part size",
                        "type": "value_error",
                    }
                ]
            )
        s3_id = services.storage.create_multipart(key, body.content_type)
        record = record.model_copy(
            update={"s3_upload_id": s3_id, "part_size": part_size, "part_count": part_count}
        )
    else:
        post = services.storage.presign_post(key, body.content_type, body.size, settings.upload_url_ttl_s)
    services.uploads.save(record)
    return upload_out(record, post)


@router.get("/{upload_id}", response_model=Upload, responses=ERRORS, summary="Get an upload")
def get_upload(upload_id: str, principal: PrincipalDep, services: ServicesDep) -> Upload:
    return upload_out(_get(services, principal, upload_id))


@router.post(
    "/{upload_id}/parts",
    response_model=PartsResponse,
    responses=ERRORS,
    summary="Presigned URLs for parts of a multipart upload",
)
def presign_parts(
    upload_id: str, body: PartsRequest, principal: PrincipalDep, services: ServicesDep
) -> PartsResponse:
    upload = _get(services, principal, upload_id)
    if upload.mode != "multipart" or upload.status != "pending":
        raise Problem(409, "conflict", "not a pending multipart upload", title="Conflict")
    assert upload.part_count is not None and upload.s3_upload_id is not None
    bad = [n for n in body.part_numbers if not 1 <= n <= upload.part_count]
    if bad:
        raise validation_problem(
            [
                {
                    "loc": ["part_numbers"],
                    "msg": f"parts must be in 1..{upload.part_count}: {bad[:5]}",
                    "type": "value_error",
                }
            ]
        )
    ttl = services.settings.upload_url_ttl_s
    parts = [
        PartUrl(part_number=n, url=services.storage.presign_part(upload.key, upload.s3_upload_id, n, ttl))
        for n in sorted(set(body.part_numbers))
    ]
    return PartsResponse(expires_at=datetime.fromtimestamp(time.time() + ttl, UTC), parts=parts)


@router.post(
    "/{upload_id}/complete",
    response_model=Upload,
    responses=ERRORS,
    summary="Finish an upload and check the object",
    description="Multipart: completes the S3 upload with the parts' ETags. Either mode: checks the object "
    "(size, type, pixels or zip directory); a bad object is deleted and answered with its problem.\n\n"
    f"The body lists up to {S3_MAX_PARTS:,} parts; its limit, {COMPLETE_MAX_BYTES:,} bytes, fits the largest "
    "body the schema allows, pretty-printed.",
)
def complete_upload(
    upload_id: str, body: CompleteRequest, principal: PrincipalDep, services: ServicesDep
) -> Upload:
    upload = _get(services, principal, upload_id)
    if upload.status == "ready":
        return upload_out(upload)
    if upload.status == "failed":
        raise Problem(
            422, "validation-error", f"the upload failed validation: {upload.error}", title="Validation error"
        )
    if upload.mode == "multipart":
        assert upload.s3_upload_id is not None and upload.part_count is not None
        if not body.parts:
            raise validation_problem(
                [{"loc": ["parts"], "msg": "list the uploaded parts", "type": "value_error"}]
            )
        if any(p.part_number > upload.part_count for p in body.parts):
            raise validation_problem(
                [{"loc": ["parts"], "msg": f"parts must be in 1..{upload.part_count}", "type": "value_error"}]
            )
        try:
            services.storage.complete_multipart(
                upload.key, upload.s3_upload_id, [(p.part_number, p.etag) for p in body.parts]
            )
        except ValueError as exc:
            raise validation_problem([{"loc": ["parts"], "msg": str(exc), "type": "value_error"}]) from None
    return upload_out(inspect_upload(services, upload))
