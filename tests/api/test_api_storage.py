"""The S3 wrapper against MiniStack, and what MiniStack (AUTH=true) enforces."""

from __future__ import annotations

import httpx
import pytest
from apitest import S3Server, image_bytes, zip_bytes
from botocore.exceptions import ClientError

from service.config import Settings
from service.storage import LIFECYCLE_RULE_ID, Storage, safe_filename
from service.validation import inspect


@pytest.fixture(scope="module")
def storage(settings: Settings, client: object) -> Storage:  # client: the app's lifespan made the bucket
    return Storage(settings)


def test_bucket_and_lifecycle(storage: Storage, s3_server: S3Server, settings: Settings) -> None:
    assert storage.ensure_bucket()  # idempotent
    rules = s3_server.client().get_bucket_lifecycle_configuration(Bucket=s3_server.bucket)["Rules"]
    [rule] = [r for r in rules if r["ID"] == LIFECYCLE_RULE_ID]
    assert rule["Expiration"]["Days"] == settings.retention_days and rule["Filter"]["Prefix"] == "tenants/"
    assert rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1


def test_new_bucket_is_created(settings: Settings, s3_server: S3Server) -> None:
    fresh = Storage(settings.model_copy(update={"s3_bucket": s3_server.bucket + "-fresh"}))
    with pytest.raises(Exception):  # noqa: B017 - the IAM user may only touch the test bucket
        fresh.ensure_bucket()


def test_wrong_credentials_are_rejected(s3_server: S3Server) -> None:
    with pytest.raises(ClientError) as exc:
        s3_server.client(secret_key="wrong").put_object(Bucket=s3_server.bucket, Key="x", Body=b"1")
    assert exc.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert httpx.get(f"{s3_server.endpoint}/{s3_server.bucket}/x").status_code == 403  # anonymous


def test_range_reader_inspects_remote_objects(storage: Storage) -> None:
    archive = zip_bytes({"a.png": image_bytes(), "b.png": image_bytes(64, 64)})
    storage.put_bytes("tenants/s/uploads/u/a.zip", archive, "application/zip")
    info = storage.head("tenants/s/uploads/u/a.zip")
    assert info is not None and info.size == len(archive) and info.content_type == "application/zip"
    with storage.open_range_reader(info.key, info.size) as reader:
        result = inspect(reader, info.size, storage.settings, inspect_entries=False)
    assert result.entries == 2
    assert storage.head("tenants/s/uploads/u/missing") is None


def test_presigned_get(storage: Storage) -> None:
    storage.put_bytes("tenants/s/outputs/j/x.png", b"data", "image/png")
    url = storage.presign_get("tenants/s/outputs/j/x.png", 60, filename="x.png")
    r = httpx.get(url)
    assert r.content == b"data" and r.headers["content-disposition"] == 'attachment; filename="x.png"'
    assert httpx.get(url.replace("x.png", "y.png")).status_code == 403  # the signature covers the key
    # Expiry: tests/api/routes/test_route_jobs.py::test_outputs_presigned_urls_work_then_expire


def test_safe_filename() -> None:
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\photos\\my face (1).JPG") == "my_face_1_.JPG"
    assert safe_filename("") == "input" and safe_filename("...") == "input"


def test_reads_pinned_to_an_etag_fail_once_the_object_is_replaced(storage: Storage) -> None:
    from service.storage import StorageError, is_changed

    storage.put_bytes("pinned/a.bin", b"checked", "application/octet-stream")
    info = storage.head("pinned/a.bin")
    assert info is not None and info.etag
    assert storage.get_bytes("pinned/a.bin", info.etag) == b"checked"
    assert storage.get_range("pinned/a.bin", 0, 2, info.etag) == b"che"
    storage.put_bytes("pinned/a.bin", b"swapped", "application/octet-stream")
    for read in (lambda: storage.get_bytes("pinned/a.bin", info.etag),
                 lambda: storage.get_range("pinned/a.bin", 0, 2, info.etag)):
        with pytest.raises(StorageError) as caught:
            read()
        assert is_changed(caught.value.__cause__)
    assert storage.get_bytes("pinned/a.bin") == b"swapped"  # unpinned reads are unaffected
