"""Settings from the environment (VEIL_ prefix)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.config import Settings


def test_env_prefix_and_list_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_WEBHOOK_ALLOW_HOSTS", "127.0.0.1, Hooks.Test ,[::1]")
    monkeypatch.setenv("VEIL_WEBHOOK_RETRY_SCHEDULE_S", "[0.1, 0.2]")
    monkeypatch.setenv("VEIL_MAX_IMAGE_PIXELS", "1234")
    monkeypatch.setenv("VEIL_S3_SECRET_ACCESS_KEY", "hush")
    s = Settings()
    assert s.webhook_allow_hosts == ["127.0.0.1", "hooks.test", "::1"]
    assert s.webhook_retry_schedule_s == [0.1, 0.2]
    assert s.max_image_pixels == 1234
    assert "hush" not in repr(s)
    assert s.broker_url == s.redis_url


def test_invalid_settings_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_MULTIPART_PART_BYTES", "1024")  # under S3's 5 MiB minimum
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.delenv("VEIL_MULTIPART_PART_BYTES")
    with pytest.raises(ValidationError):
        Settings(download_url_ttl_s=100, download_url_ttl_max_s=10)
    with pytest.raises(ValidationError):
        Settings(webhook_retry_schedule_s="1,-2")
