"""S3-compatible object storage (boto3, path-style addressing), shared with the workers.

Layout inside the bucket, one prefix per tenant::

    tenants/<tenant>/inputs/<job_id>/<filename>       a photo or archive posted to POST /v1/jobs
    tenants/<tenant>/uploads/<upload_id>/<filename>   an object uploaded with POST /v1/uploads
    tenants/<tenant>/outputs/<job_id>/...             what the worker writes

Retention: :meth:`Storage.ensure_bucket` puts a lifecycle rule expiring everything under ``tenants/``
after ``retention_days`` (and aborting multipart uploads left incomplete for a day) when the server
supports lifecycle configuration; servers that do not are tolerated (jobs carry ``expires_at``).
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from service.config import Settings

log = logging.getLogger(__name__)
LIFECYCLE_RULE_ID = "veil-retention"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class StorageError(RuntimeError):
    """The object store failed (unreachable, refused, ...)."""


def safe_filename(name: str | None, default: str = "input") -> str:
    """A storage-safe base name: no directories, no odd characters, at most 100 characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _SAFE_NAME.sub("_", base).strip("._") or default
    return base[-100:]


def input_key(tenant: str, job_id: str, filename: str) -> str:
    return f"tenants/{tenant}/inputs/{job_id}/{filename}"


def upload_key(tenant: str, upload_id: str, filename: str) -> str:
    return f"tenants/{tenant}/uploads/{upload_id}/{filename}"


def output_prefix(tenant: str, job_id: str) -> str:
    return f"tenants/{tenant}/outputs/{job_id}/"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str | None = None
    etag: str | None = None


def _code_and_status(exc: ClientError) -> tuple[str, Any]:
    """The S3 error code and the HTTP status of a client error."""
    error, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
    return str(error.get("Code", "")), meta.get("HTTPStatusCode")


def is_changed(exc: BaseException | None) -> bool:
    """Whether a read pinned to an ETag (``IfMatch``) failed because the object was replaced since."""
    if not isinstance(exc, ClientError):
        return False
    code, status = _code_and_status(exc)
    return code == "PreconditionFailed" or status == 412


def _pinned(etag: str | None) -> dict[str, str]:
    return {"IfMatch": etag} if etag else {}


def is_missing(exc: ClientError) -> bool:
    code, status = _code_and_status(exc)
    return code in {"404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchUpload"} or status == 404


class Storage:
    """A bucket on an S3-compatible server. Blocking; safe to share between threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.client = self._make_client(settings.s3_endpoint_url)
        public = settings.s3_public_endpoint_url
        self.presign_client = self._make_client(public) if public else self.client

    def _make_client(self, endpoint_url: str | None) -> Any:
        s = self.settings
        secret = s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else None
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=s.s3_region,
            aws_access_key_id=s.s3_access_key_id,
            aws_secret_access_key=secret,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": s.s3_addressing_style},
                connect_timeout=s.s3_timeout_s,
                read_timeout=s.s3_timeout_s,
                retries={"max_attempts": 3, "mode": "standard"},
                # Checksums only when required: several S3-compatible servers reject the new defaults.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    # ---- bucket -------------------------------------------------------------------------------
    def ensure_bucket(self) -> bool:
        """Create the bucket if missing and set the retention rule. Returns whether the rule is set."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except BotoCoreError as exc:  # unreachable, no credentials, ...
            raise StorageError(f"bucket {self.bucket!r}: {exc}") from exc
        except ClientError as exc:
            if not is_missing(exc) or not self.settings.s3_create_bucket:
                raise StorageError(f"bucket {self.bucket!r}: {exc}") from exc
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.settings.s3_region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.s3_region}
            try:
                self.client.create_bucket(**kwargs)
            except BotoCoreError as create_exc:
                raise StorageError(f"cannot create bucket {self.bucket!r}: {create_exc}") from create_exc
            except ClientError as create_exc:
                code = create_exc.response.get("Error", {}).get("Code")
                if code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise StorageError(f"cannot create bucket {self.bucket!r}: {create_exc}") from create_exc
        return self.ensure_lifecycle()

    def ensure_lifecycle(self) -> bool:
        """Put (or update) the retention rule, keeping other rules; tolerate servers without lifecycle."""
        rule = {
            "ID": LIFECYCLE_RULE_ID,
            "Status": "Enabled",
            "Filter": {"Prefix": "tenants/"},
            "Expiration": {"Days": self.settings.retention_days},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
        try:
            try:
                rules = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", [])
            except ClientError:
                rules = []
            rules = [r for r in rules if r.get("ID") != LIFECYCLE_RULE_ID] + [rule]
            self.client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": rules}
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning(
                "lifecycle rule not set on bucket %s (server may not support it): %s", self.bucket, exc
            )
            return False
        return True

    def check(self) -> None:
        """Raise StorageError unless the bucket is reachable (readiness probe)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(str(exc)) from exc

    # ---- objects ------------------------------------------------------------------------------
    def put_fileobj(self, key: str, fileobj: IO[bytes], content_type: str) -> None:
        try:
            fileobj.seek(0)
            self.client.upload_fileobj(fileobj, self.bucket, key, ExtraArgs={"ContentType": content_type})
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot store {key}: {exc}") from exc

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self.put_fileobj(key, io.BytesIO(data), content_type)

    def get_bytes(self, key: str, etag: str | None = None) -> bytes:
        """The object's bytes; with ``etag``, only that version of it (else :func:`is_changed` of the cause)."""
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key, **_pinned(etag))["Body"].read())
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc

    def head(self, key: str) -> ObjectInfo | None:
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise StorageError(f"cannot stat {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot stat {key}: {exc}") from exc
        return ObjectInfo(key, int(r["ContentLength"]), r.get("ContentType"), r.get("ETag"))

    def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes ``start..end`` inclusive (of the version ``etag``, when given)."""
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end}", **_pinned(etag))
            return bytes(r["Body"].read())
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            log.warning("cannot delete %s: %s", key, exc)

    def list_objects(self, prefix: str, max_keys: int = 10_000) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        try:
            for _ in range(max(1, max_keys // 1000) + 1):  # bounded paging
                r = self.client.list_objects_v2(**kwargs)
                out += [
                    ObjectInfo(o["Key"], int(o["Size"]), None, o.get("ETag")) for o in r.get("Contents", [])
                ]
                if not r.get("IsTruncated") or len(out) >= max_keys:
                    break
                kwargs["ContinuationToken"] = r["NextContinuationToken"]
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot list {prefix}: {exc}") from exc
        return out[:max_keys]

    def open_range_reader(self, key: str, size: int, etag: str | None = None) -> IO[bytes]:
        """A seekable, buffered reader of an object by ranged GETs (header sniffing, zip directories), of the
        version ``etag`` only when given."""
        return io.BufferedReader(S3RangeReader(self, key, size, etag), buffer_size=256 * 1024)

    # ---- presigned URLs -----------------------------------------------------------------------
    def presign_get(self, key: str, ttl_s: int, filename: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{safe_filename(filename)}"'
        return str(self.presign_client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_s))

    def presign_post(self, key: str, content_type: str, max_bytes: int, ttl_s: int) -> dict[str, Any]:
        """A presigned POST that only accepts this key, this content type and 1..max_bytes bytes."""
        return dict(
            self.presign_client.generate_presigned_post(
                self.bucket,
                key,
                Fields={"Content-Type": content_type},
                Conditions=[{"Content-Type": content_type}, ["content-length-range", 1, max_bytes]],
                ExpiresIn=ttl_s,
            )
        )

    def create_multipart(self, key: str, content_type: str) -> str:
        try:
            r = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot start multipart upload of {key}: {exc}") from exc
        return str(r["UploadId"])

    def presign_part(self, key: str, upload_id: str, part_number: int, ttl_s: int) -> str:
        return str(
            self.presign_client.generate_presigned_url(
                "upload_part",
                Params={"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": part_number},
                ExpiresIn=ttl_s,
            )
        )

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in sorted(parts)]},
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "NoSuchUpload", "MalformedXML"}:
                raise ValueError(f"{code}: {exc.response.get('Error', {}).get('Message', '')}") from exc
            raise StorageError(f"cannot complete multipart upload of {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot complete multipart upload of {key}: {exc}") from exc

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            log.warning("cannot abort multipart upload %s of %s: %s", upload_id, key, exc)


class S3RangeReader(io.RawIOBase):
    """A raw, seekable reader of one object; every read is one ranged GET (bounded in number)."""

    MAX_REQUESTS = 256

    def __init__(self, storage: Storage, key: str, size: int, etag: str | None = None) -> None:
        super().__init__()
        self.storage = storage
        self.key = key
        self.etag = etag
        self.size = size
        self.pos = 0
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.pos >= self.size or len(view) == 0:
            return 0
        self.requests += 1
        if self.requests > self.MAX_REQUESTS:
            raise OSError(f"too many range reads of {self.key}")
        end = min(self.size, self.pos + len(view)) - 1
        data = self.storage.get_range(self.key, self.pos, end, self.etag)
        n = len(data)
        view[:n] = data
        self.pos += n
        return n
