"""`veil keys` against the real Redis, with a private key prefix that is cleaned up."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from core.cli import app

redis = pytest.importorskip("redis")


@pytest.fixture
def prefix(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    value = f"veiltest-keys-{uuid.uuid4().hex[:8]}:"
    monkeypatch.setenv("VEIL_REDIS_PREFIX", value)
    yield value
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    for key in client.scan_iter(f"{value}*"):
        client.delete(key)


def test_create_secret_and_revoke(prefix: str) -> None:
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--tenant", "acme"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[0]
    assert key.startswith("veil_sk_")
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    assert key not in str([client.get(k) for k in client.scan_iter(f"{prefix}*") if client.type(k) == b"string"])
    secret = runner.invoke(app, ["keys", "secret", "--tenant", "acme"])
    assert secret.exit_code == 0 and secret.stdout.strip().startswith("whsec_")
    assert runner.invoke(app, ["keys", "revoke", key]).exit_code == 0
    assert runner.invoke(app, ["keys", "revoke", key]).exit_code == 1
    assert runner.invoke(app, ["keys", "secret", "--tenant", "nobody"]).exit_code == 1
