"""``/v1/jobs``: submit, read, list, cancel, download outputs."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import FormData, UploadFile

from api.deps import PrincipalDep, ServicesDep
from api.problems import PROBLEM_JSON, Problem, validation_problem
from api.routing import BoundedJSONRoute
from api.schemas import JobCreate, JobList, JobOptions, JobOutputs, OutputItem
from api.submit import Submitted, parse_prefer_wait, submit_file, submit_upload
from service.config import Settings
from service.errors import InvalidJSON
from service.jobs import JobRecord
from service.jsonlimits import loads_bounded
from service.states import InvalidTransition, JobStatus
from service.views import Job, job_out

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=BoundedJSONRoute)

LIST_FIELDS = {"forgers", "targets", "webhook_events"}
JSON_FIELDS = {"metadata"}
# Strict in JSON (true/false only); a form's text ("true", "false", "on", "1", ...) is read here.
BOOL_FIELDS = {name for name, field in JobCreate.model_fields.items() if field.annotation is bool}
_FORM_BOOL: TypeAdapter[bool] = TypeAdapter(bool)
_PROBLEM = {"content": {PROBLEM_JSON: {}}, "description": "problem details (RFC 9457)"}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: _PROBLEM for code in (401, 404, 409, 413, 415, 422, 429, 503)
}


def _options_schema() -> dict[str, Any]:
    schema = JobOptions.model_json_schema()
    schema["properties"] = {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "a PNG/JPEG/WebP photo or a zip archive",
        },
        "upload_id": {"type": "string", "description": "instead of file: an upload from POST /v1/uploads"},
        **schema["properties"],
    }
    return schema


CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _options_schema()},
            "application/json": {"schema": JobCreate.model_json_schema()},
            "application/x-www-form-urlencoded": {"schema": JobCreate.model_json_schema()},
        },
    }
}


def _form_values(form: FormData, settings: Settings) -> tuple[dict[str, Any], UploadFile | None]:
    """Form fields -> option dict (lists from repeated fields, commas or a JSON array; metadata JSON, its
    size and nesting bounded before it is parsed)."""
    data: dict[str, Any] = {}
    upload: UploadFile | None = None
    errors: list[dict[str, Any]] = []
    for name in dict.fromkeys(form.keys()):
        values = form.getlist(name)
        if name == "file":
            if len(values) != 1 or not isinstance(values[0], UploadFile):
                errors.append({"loc": ["file"], "msg": "send exactly one file part", "type": "value_error"})
                continue
            upload = values[0]
            continue
        if any(not isinstance(v, str) for v in values):
            errors.append({"loc": [name], "msg": "expected a text field", "type": "value_error"})
            continue
        texts = [str(v) for v in values]

        def loads(text: str, name: str = name) -> Any:
            return loads_bounded(
                text, max_depth=settings.max_json_depth, max_bytes=settings.max_json_bytes, loc=name
            )

        try:
            if name in LIST_FIELDS:
                items: list[Any] = []
                for text in texts:
                    text = text.strip()
                    if text.startswith("["):
                        parsed = loads(text)
                        items += parsed if isinstance(parsed, list) else [parsed]
                    elif text:
                        items += [t.strip() for t in text.split(",") if t.strip()]
                data[name] = items
            elif name in BOOL_FIELDS:
                if len(texts) != 1:
                    raise ValueError("repeated field")
                try:
                    data[name] = _FORM_BOOL.validate_python(texts[0].strip())
                except ValidationError:
                    raise ValueError("expected true or false") from None
            elif name in JSON_FIELDS:
                if len(texts) != 1:
                    raise ValueError("repeated field")
                data[name] = loads(texts[0]) if texts[0].strip() else None
            else:
                if len(texts) != 1:
                    raise ValueError("repeated field")
                data[name] = texts[0]
        except InvalidJSON as exc:
            errors += exc.extensions["errors"]
        except ValueError as exc:
            errors.append({"loc": [name], "msg": f"invalid value: {exc}", "type": "value_error"})
    if errors:
        raise validation_problem(errors)
    return data, upload


def _validate(model: type[JobOptions], data: dict[str, Any]) -> JobOptions:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc.errors()) from None


def _job_response(job: JobRecord, status_code: int, headers: dict[str, str]) -> JSONResponse:
    headers = {"Location": f"/v1/jobs/{job.id}", **headers}
    return JSONResponse(job_out(job).model_dump(mode="json"), status_code=status_code, headers=headers)


@router.post(
    "",
    status_code=202,
    response_model=Job,
    openapi_extra=CREATE_BODY,
    responses={
        200: {"model": Job, "description": "Idempotency-Key replay of a finished job"},
        201: {"model": Job, "description": "finished within Prefer: wait"},
        **ERRORS,
    },
    summary="Submit a photo or an archive for protection",
)
async def create_job(
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
    prefer: Annotated[
        str | None, Header(description="wait=N: wait up to N s (capped) for the result")
    ] = None,
) -> JSONResponse:
    """Multipart ``file`` (photo or zip) with option fields, or JSON/form with ``upload_id``.

    Answers 202 with the queued job; with ``Prefer: wait=N`` waits (at most ``prefer_wait_max_s``) and
    answers 201 if the job finished meanwhile. ``Idempotency-Key``: the same key and body give the same job
    (200 when finished, else 202, with ``Idempotent-Replayed: true``); the same key with another body, 422.
    """
    settings = services.settings
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if idempotency_key is not None and not idempotency_key.strip():
        raise validation_problem(
            [{"loc": ["header", "Idempotency-Key"], "msg": "empty", "type": "value_error"}]
        )
    submitted: Submitted
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=64, max_part_size=64 * 1024)
        try:
            data, upload = _form_values(form, settings)
            upload_id = data.pop("upload_id", None)
            if (upload is None) == (upload_id is None):
                raise validation_problem(
                    [{"loc": ["file"], "msg": "send either file or upload_id", "type": "value_error"}]
                )
            if upload is not None:
                opts = _validate(JobOptions, data)
                size = upload.size if upload.size is not None else 0
                submitted = await run_in_threadpool(
                    submit_file,
                    services,
                    principal,
                    opts,
                    upload.file,
                    size,
                    upload.filename,
                    idempotency_key,
                )
            else:
                created = _validate(JobCreate, {**data, "upload_id": upload_id})
                opts = JobOptions.model_validate(created.model_dump(exclude={"upload_id"}))
                submitted = await run_in_threadpool(
                    submit_upload, services, principal, opts, str(upload_id), idempotency_key
                )
        finally:
            await form.close()
    elif ctype == "application/json" or ctype.endswith("+json"):
        body = await request.body()
        payload = loads_bounded(body, max_depth=settings.max_json_depth, max_bytes=settings.max_json_bytes)
        if not isinstance(payload, dict):
            raise validation_problem(
                [{"loc": ["body"], "msg": "expected a JSON object", "type": "dict_type"}]
            )
        job_create = _validate(JobCreate, payload)
        assert isinstance(job_create, JobCreate)
        opts = JobOptions.model_validate(job_create.model_dump(exclude={"upload_id"}))
        submitted = await run_in_threadpool(
            submit_upload, services, principal, opts, job_create.upload_id, idempotency_key
        )
    else:
        raise Problem(
            415,
            "unsupported-media-type",
            "send multipart/form-data (file or upload_id) or application/json (upload_id)",
            title="Unsupported media type",
        )

    job = submitted.job
    headers: dict[str, str] = {}
    if not submitted.created:
        headers["Idempotent-Replayed"] = "true"
        return _job_response(job, 200 if job.terminal else 202, headers)
    wait = parse_prefer_wait(prefer, settings.prefer_wait_max_s)
    if wait is not None:
        headers["Preference-Applied"] = f"wait={wait:g}"
        job = await _wait_for(services, job, wait)
        if job.terminal:
            return _job_response(job, 201, headers)
    return _job_response(job, 202, headers)


async def _wait_for(services: ServicesDep, job: JobRecord, wait: float) -> JobRecord:
    """Poll the job record until it is terminal or ``wait`` seconds passed (bounded in count and time)."""
    interval = services.settings.wait_poll_interval_s
    deadline = time.monotonic() + wait
    for _ in range(math.ceil(wait / interval) + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        await asyncio.sleep(min(interval, remaining))
        latest = await run_in_threadpool(services.jobs.get, job.id)
        if latest is None:
            break
        job = latest
        if job.terminal:
            break
    return job


def _get_job(services: ServicesDep, principal: PrincipalDep, job_id: str) -> JobRecord:
    job = services.jobs.get(job_id, principal.tenant)
    if job is None:
        raise Problem(404, "not-found", f"no job {job_id}", title="Not Found")
    return job


@router.get("", response_model=JobList, responses=ERRORS, summary="List jobs, newest first")
def list_jobs(
    principal: PrincipalDep,
    services: ServicesDep,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page")
    ] = None,
) -> JobList:
    limit = min(limit, services.settings.list_max_limit)
    try:
        jobs, next_cursor = services.jobs.list_jobs(principal.tenant, status, limit, cursor)
    except ValueError:
        raise validation_problem(
            [{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}]
        ) from None
    return JobList(data=[job_out(j) for j in jobs], has_more=next_cursor is not None, next_cursor=next_cursor)


@router.get("/{job_id}", response_model=Job, responses=ERRORS, summary="Get a job")
async def get_job(
    job_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    response: Response,
    prefer: Annotated[
        str | None, Header(description="wait=N: long-poll up to N s (capped) until the job finishes")
    ] = None,
) -> Job:
    """The job; with ``Prefer: wait=N`` the answer waits until the job is terminal or N s passed."""
    job = await run_in_threadpool(_get_job, services, principal, job_id)
    wait = parse_prefer_wait(prefer, services.settings.prefer_wait_max_s)
    if wait is not None:
        response.headers["Preference-Applied"] = f"wait={wait:g}"
        if not job.terminal:
            job = await _wait_for(services, job, wait)
    attempts = await run_in_threadpool(services.jobs.webhook_attempts, job.id) if job.webhook_url else None
    return job_out(job, attempts)


@router.post(
    "/{job_id}/cancel", response_model=Job, responses=ERRORS, summary="Cancel a queued or running job"
)
def cancel_job(job_id: str, principal: PrincipalDep, services: ServicesDep) -> Job:
    job = _get_job(services, principal, job_id)
    try:
        services.jobs.cancel(job.id)
    except InvalidTransition as exc:
        if exc.current != JobStatus.CANCELED.value:
            raise Problem(
                409,
                "conflict",
                f"the job already {exc.current}",
                title="Conflict",
                job_status=str(exc.current),
            ) from None
    return job_out(_get_job(services, principal, job_id))


@router.get("/{job_id}/outputs", response_model=JobOutputs, responses=ERRORS, summary="Presigned output URLs")
def job_outputs(
    job_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    ttl: Annotated[int | None, Query(ge=1, description="URL lifetime in seconds (capped)")] = None,
) -> JobOutputs:
    job = _get_job(services, principal, job_id)
    settings = services.settings
    expires_in = min(ttl or settings.download_url_ttl_s, settings.download_url_ttl_max_s)
    expires_at = datetime.now(UTC) + timedelta(seconds=expires_in)
    items = []
    for obj in services.storage.list_objects(job.output_prefix):
        name = obj.key[len(job.output_prefix) :]
        url = services.storage.presign_get(obj.key, expires_in, filename=name.rsplit("/", 1)[-1])
        items.append(OutputItem(name=name, size=obj.size, url=url, expires_at=expires_at))
    return JobOutputs(job_id=job.id, status=job.status, expires_in=expires_in, data=items)
