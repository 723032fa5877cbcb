"""Standard Webhooks signing, delivery with retries, 410, the attempt log and the SSRF guard."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from typing import Any

import pytest
from apitest import Receiver
from standardwebhooks import Webhook

from service.config import Settings
from service.contract import InputRef
from service.jobs import JobRecord, JobStore
from service.keys import new_webhook_secret
from service.redisdb import new_id
from service.webhooks import WebhookRefused, check_url, deliver, ip_refusal, resolve, send_job_event, sign

SCHEDULE = [0.05, 0.05]


def make_job(
    store: JobStore, tenant: str, webhook_url: str | None, events: list[str] | None = None
) -> JobRecord:
    now = time.time()
    job_id = new_id("job")
    job = JobRecord(
        id=job_id,
        tenant=tenant,
        kind="image",
        method="pgd",
        forgers=["stargan"],
        eps=0.02,
        core_eps=0.04,
        input=InputRef(bucket="b", key="k", filename="a.png", content_type="image/png", size=1),
        output_prefix=f"tenants/{tenant}/outputs/{job_id}/",
        created_at=now,
        expires_at=now + 60,
        webhook_url=webhook_url,
        webhook_events=events or ["job.started", "job.completed", "job.failed"],
    )
    store.create(job)
    return job


def test_signature_verifies_with_standardwebhooks(receiver: Receiver) -> None:
    secret = new_webhook_secret()
    result = deliver(
        receiver.url,
        "job.completed",
        {"id": "job_1", "status": "succeeded"},
        secret,
        SCHEDULE,
        allow_hosts=["127.0.0.1"],
        require_https=True,
    )
    assert result.delivered and result.attempts == 1 and result.status_code == 200
    [req] = receiver.requests
    headers = req["headers"]
    assert headers["webhook-signature"].startswith("v1,") and headers["webhook-id"].startswith("msg_")
    payload = Webhook(secret).verify(req["body"], headers)
    assert payload["type"] == "job.completed" and payload["data"] == {"id": "job_1", "status": "succeeded"}
    assert payload["timestamp"].endswith("Z")
    with pytest.raises(Exception, match="signature"):
        Webhook(new_webhook_secret()).verify(req["body"], headers)
    tampered = req["body"].replace(b"succeeded", b"failed!!!")
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(tampered, headers)


def test_sign_matches_library_format() -> None:
    secret = new_webhook_secret()
    from datetime import UTC, datetime

    headers = sign(secret, "msg_x", datetime.now(UTC), '{"a":1}')
    assert Webhook(secret).verify('{"a":1}', headers) == {"a": 1}


def test_retry_then_success_logged_on_job(receiver: Receiver, store: JobStore, settings: Settings) -> None:
    job = make_job(store, "hooks", receiver.url)
    receiver.responses = [500, 503]
    sleeps: list[float] = []
    result = deliver(
        receiver.url,
        "job.started",
        {"id": job.id},
        new_webhook_secret(),
        [0.01, 0.02],
        allow_hosts=["127.0.0.1"],
        store=store,
        job_id=job.id,
        sleep=sleeps.append,
    )
    assert result.delivered and result.attempts == 3 and sleeps == [0.01, 0.02]
    ids = {r["headers"]["webhook-id"] for r in receiver.requests}
    assert len(receiver.requests) == 3 and len(ids) == 1  # the same message id on every retry
    log = store.webhook_attempts(job.id)
    assert [a["status_code"] for a in log] == [500, 503, 200] and [a["attempt"] for a in log] == [1, 2, 3]
    assert log[0]["error"] == "HTTP 500" and log[2]["error"] is None


def test_gives_up_after_schedule(receiver: Receiver) -> None:
    receiver.responses = [500, 500, 500, 500]
    result = deliver(
        receiver.url, "job.failed", {}, new_webhook_secret(), SCHEDULE, allow_hosts=["127.0.0.1"]
    )
    assert not result.delivered and result.attempts == 3 and result.error == "HTTP 500"


def test_410_disables_webhook_for_job(receiver: Receiver, store: JobStore, settings: Settings) -> None:
    job = make_job(store, "hooks", receiver.url)
    receiver.responses = [410]
    result = deliver(
        receiver.url,
        "job.started",
        {},
        new_webhook_secret(),
        SCHEDULE,
        allow_hosts=["127.0.0.1"],
        store=store,
        job_id=job.id,
    )
    assert result.disabled and not result.delivered and result.attempts == 1
    assert store.webhook_disabled(job.id) and store.get(job.id).webhook_disabled  # type: ignore[union-attr]
    again = deliver(
        receiver.url,
        "job.completed",
        {},
        new_webhook_secret(),
        SCHEDULE,
        allow_hosts=["127.0.0.1"],
        store=store,
        job_id=job.id,
    )
    assert again.disabled and again.attempts == 0 and len(receiver.requests) == 1


def test_send_job_event_respects_subscription(
    receiver: Receiver, store: JobStore, settings: Settings
) -> None:
    cfg = settings.model_copy(update={"webhook_allow_hosts": ["127.0.0.1"], "webhook_require_https": False})
    secret = new_webhook_secret()
    job = make_job(store, "hooks", receiver.url, events=["job.completed"])
    assert send_job_event(store, cfg, job, "job.started", secret) is None  # not subscribed
    result = send_job_event(store, cfg, job, "job.completed", secret)
    assert result is not None and result.delivered
    payload = Webhook(secret).verify(receiver.requests[0]["body"], receiver.requests[0]["headers"])
    assert payload["data"]["id"] == job.id and payload["data"]["status"] == "queued"


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    receiver.responses = [302]
    receiver.redirect_to = receiver.url + "/elsewhere"
    result = deliver(
        receiver.url, "job.completed", {}, new_webhook_secret(), SCHEDULE, allow_hosts=["127.0.0.1"]
    )
    assert not result.delivered and result.status_code == 302 and result.error == "redirect refused"
    assert len(receiver.requests) == 1  # neither retried nor followed


def test_connects_to_resolved_ip_keeping_host_header(receiver: Receiver) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    url = f"http://localhost:{port}/hook?x=1"
    dest = resolve(url, allow_hosts=["localhost"], require_https=True)
    assert dest.ip.is_loopback and dest.url.startswith(
        f"http://{dest.ip}:{port}/hook?x=1".replace("::1", "[::1]")
    )
    result = deliver(url, "job.progress", {}, new_webhook_secret(), [], allow_hosts=["localhost"])
    if dest.ip.version == 4:
        assert result.delivered
        assert receiver.requests[0]["headers"]["host"] == f"localhost:{port}"
        assert receiver.requests[0]["path"] == "/hook?x=1"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "https://127.0.0.1:8443/hook",
        "https://10.0.0.7/hook",
        "https://172.16.3.4/hook",
        "https://192.168.1.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[::ffff:10.0.0.1]/hook",
        "https://[fe80::1]/hook",
        "https://224.0.0.1/hook",
        "https://0.0.0.0/hook",
        "https://100.64.0.1/hook",
        "https://localhost/hook",
    ],
)
def test_ssrf_guard_refuses_internal_addresses(url: str) -> None:
    with pytest.raises(WebhookRefused):
        resolve(url)  # refused before any connection is made
    result = deliver(url, "job.completed", {}, new_webhook_secret(), SCHEDULE)
    assert not result.delivered and result.attempts == 1 and result.error.startswith("refused")  # type: ignore[union-attr]


def test_ssrf_guard_checks_every_resolved_address() -> None:
    def fake(host: str, port: int, type: int = 0) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port)),
        ]

    with pytest.raises(WebhookRefused, match=r"10\.0\.0\.1"):
        resolve("https://rebind.example/hook", resolver=fake)

    def public(host: str, port: int, type: int = 0) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    dest = resolve("https://hooks.example.com/x", resolver=public)
    assert dest.url == "https://93.184.216.34:443/x" and dest.host_header == "hooks.example.com"


def test_url_rules() -> None:
    for bad in [
        "ftp://example.com/x",
        "https://user:pw@example.com/x",
        "https:///x",
        "http://example.com/x",
        "https://10.0.0.1/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://printer.local/x",
    ]:
        with pytest.raises(WebhookRefused):
            check_url(bad)
    check_url("https://example.com/hook")
    check_url("http://127.0.0.1:9/x", allow_hosts=["127.0.0.1"])
    assert ip_refusal(ipaddress.ip_address("8.8.8.8")) is None
    assert ip_refusal(ipaddress.ip_address("::ffff:8.8.8.8")) == "IPv4-mapped IPv6 address"


def test_attempt_log_is_json(store: JobStore, receiver: Receiver) -> None:
    job = make_job(store, "hooks", receiver.url)
    deliver(
        receiver.url,
        "job.completed",
        {},
        new_webhook_secret(),
        [],
        allow_hosts=["127.0.0.1"],
        store=store,
        job_id=job.id,
    )
    raw = store.r.lrange(store.keys.job_webhooks(job.id), 0, -1)
    assert json.loads(raw[0])["event"] == "job.completed"  # type: ignore[index]


def _loopback(host: str, port: int, type: int = 0) -> list[Any]:
    """A resolver for which every name is 127.0.0.1 (a rebinding attacker's, or 127.1's)."""
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]


def test_allow_list_entry_with_a_port_allows_that_address_and_port_only() -> None:
    """The dev stack allows its receiver's exact host:port; other loopback spellings and ports stay refused
    (the allow-list used to match resolved addresses: 127.1 or any name resolving to 127.0.0.1 reached
    every loopback port)."""
    allow = ["127.0.0.1:9000"]
    check_url("http://127.0.0.1:9000/veil", allow_hosts=allow)
    assert resolve("http://127.0.0.1:9000/veil", allow_hosts=allow, resolver=_loopback).port == 9000
    # the same address, written otherwise, normalised before the comparison
    assert str(resolve("http://127.1:9000/veil", allow_hosts=allow, resolver=_loopback).ip) == "127.0.0.1"
    for url in ("http://127.0.0.1:6379/", "http://127.1:6379/", "http://0x7f000001:6379/",
                "http://2130706433:8000/", "http://0177.0.0.1:22/", "http://127.0.0.1/",
                "https://127.1/x", "https://0x7f000001:9001/x"):
        with pytest.raises(WebhookRefused):
            check_url(url, allow_hosts=allow)
        with pytest.raises(WebhookRefused):
            resolve(url, allow_hosts=allow, resolver=_loopback)
    for url in ("https://evil.test:9000/veil", "https://localhost:9000/veil"):  # names resolving to loopback
        with pytest.raises(WebhookRefused):
            resolve(url, allow_hosts=allow, resolver=_loopback)


def test_allow_list_matches_the_url_host_never_a_resolved_address() -> None:
    with pytest.raises(WebhookRefused, match=r"127\.0\.0\.1"):
        resolve("https://rebind.example/hook", allow_hosts=["127.0.0.1"], resolver=_loopback)
    assert resolve("https://127.0.0.1:8443/hook", allow_hosts=["127.0.0.1"], resolver=_loopback).port == 8443
    assert Settings(webhook_allow_hosts="127.0.0.1:9000, [::1]:9000, [::1], Hooks.Test").webhook_allow_hosts == [
        "127.0.0.1:9000", "[::1]:9000", "::1", "hooks.test"]
