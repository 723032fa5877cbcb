"""Upload records (presigned POST or S3 multipart upload) in Redis."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import redis
from pydantic import BaseModel

from service.config import Settings
from service.redisdb import ID_RE, RedisKeys

UploadStatus = Literal["pending", "ready", "failed"]


class UploadRecord(BaseModel):
    id: str
    tenant: str
    mode: Literal["post", "multipart"]
    status: UploadStatus = "pending"
    key: str
    filename: str
    content_type: str
    size: int  # declared
    max_bytes: int
    s3_upload_id: str | None = None
    part_size: int | None = None
    part_count: int | None = None
    created_at: float
    expires_at: float  # of the presigned URLs
    kind: Literal["image", "archive"] | None = None  # once inspected
    actual_size: int | None = None
    sha256: str | None = None
    etag: str | None = None  # of the object as checked: a job reads that version only
    error: str | None = None


class UploadStore:
    def __init__(self, r: redis.Redis, settings: Settings) -> None:
        self.r = r
        self.settings = settings
        self.keys = RedisKeys(settings.redis_prefix)

    def ttl(self) -> int:
        return self.settings.upload_url_ttl_s + self.settings.retention_days * 86400

    def save(self, upload: UploadRecord) -> None:
        self.r.set(self.keys.upload(upload.id), upload.model_dump_json(), ex=self.ttl())

    def get(self, upload_id: str, tenant: str) -> UploadRecord | None:
        if not ID_RE.match(upload_id):
            return None
        raw = self.r.get(self.keys.upload(upload_id))
        if raw is None:
            return None
        upload = UploadRecord.model_validate(json.loads(str(raw)))
        return upload if upload.tenant == tenant else None

    def update(self, upload: UploadRecord, **fields: Any) -> UploadRecord:
        updated = upload.model_copy(update=fields)
        self.save(updated)
        return updated

    @staticmethod
    def now() -> float:
        return time.time()
