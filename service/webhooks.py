"""Outgoing webhooks: Standard Webhooks signatures, an SSRF guard and delivery with retries.

Used by the workers (and tested here). Each message is ``{"type": <event>, "timestamp": <ISO 8601>,
"data": <job>}`` signed with the tenant's ``whsec_`` secret (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64>``); receivers verify it with ``standardwebhooks.Webhook.verify``.

SSRF guard: the host is resolved once; every address must be global (no loopback, private, link-local,
multicast, reserved, unspecified, shared or IPv4-mapped IPv6 address) unless the URL's own host (or
host:port), normalised, is in ``VEIL_WEBHOOK_ALLOW_HOSTS`` (an address it resolves to never is); the
request then goes to the resolved address itself (``Host`` header and TLS SNI/certificate check keep the
original name), and redirects are never followed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from service.config import Settings
from service.contract import WEBHOOK_EVENTS
from service.jobs import JobRecord, JobStore
from service.redisdb import new_id
from service.views import job_out

log = logging.getLogger(__name__)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
USER_AGENT = "Veil-Webhooks/1"


class WebhookRefused(ValueError):
    """The URL is not an acceptable webhook destination."""


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str  # as written in the URL (lower case, no brackets)
    port: int
    ip: IPAddress
    target: str  # path + query

    @property
    def url(self) -> str:
        ip = f"[{self.ip}]" if self.ip.version == 6 else str(self.ip)
        return f"{self.scheme}://{ip}:{self.port}{self.target}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class DeliveryResult:
    delivered: bool
    attempts: int
    status_code: int | None
    error: str | None
    disabled: bool = False


def ip_refusal(ip: IPAddress) -> str | None:
    """Why an address is not a valid webhook destination, or None when it is a global address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return "IPv4-mapped IPv6 address"
        if ip.sixtofour is not None or ip.teredo is not None:
            return "IPv6 transition address"
    checks = (
        ("loopback", ip.is_loopback),
        ("private", ip.is_private),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("unspecified", ip.is_unspecified),
    )
    for name, hit in checks:
        if hit:
            return f"{name} address"
    if not ip.is_global:
        return "non-global address"
    return None


_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$")


def normalise_host(host: str) -> str:
    """A URL host in one spelling: an IP address canonical (``127.1``, ``0x7f000001``, ``2130706433`` and
    ``0177.0.0.1`` are all ``127.0.0.1``, as the resolver reads them), a name lower case without a final dot."""
    host = host.strip().lower().strip("[]")
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            return str(ipaddress.IPv4Address(socket.inet_aton(host)))
        except OSError:
            pass
    return host.rstrip(".")


def allow_entry(entry: str) -> tuple[str, int | None]:
    """An allow-list entry: ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> (host, port)."""
    entry = entry.strip().lower()
    host, port = entry, None
    if entry.startswith("[") and "]:" in entry:
        host, _, rest = entry[1:].partition("]:")
        port = int(rest)
    elif entry.count(":") == 1:
        host, _, rest = entry.partition(":")
        port = int(rest)
    return normalise_host(host), port


def is_allowed(host: str, port: int, allow_hosts: Sequence[str]) -> bool:
    """Whether the URL's own host and port (never an address it resolves to) match an allow-list entry:
    ``host`` allows any port, ``host:port`` that port only; both sides normalised first."""
    host = normalise_host(host)
    for entry in allow_hosts:
        try:
            allowed_host, allowed_port = allow_entry(entry)
        except ValueError:
            continue
        if allowed_host == host and allowed_port in (None, port):
            return True
    return False


def _split(url: str, settings_allow: Sequence[str], require_https: bool) -> tuple[str, str, int, str, bool]:
    if len(url) > 2048:
        raise WebhookRefused("URL longer than 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"invalid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookRefused("the URL scheme must be https (or http)")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("credentials in the URL are not allowed")
    host = (parts.hostname or "").lower()
    if not host:
        raise WebhookRefused("the URL has no host")
    port = port or (443 if scheme == "https" else 80)
    allowed = is_allowed(host, port, settings_allow)
    if require_https and scheme != "https" and not allowed:
        raise WebhookRefused("the URL scheme must be https")
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    return scheme, host, port, target, allowed


def check_url(url: str, allow_hosts: Sequence[str] = (), require_https: bool = True) -> None:
    """Static checks at job creation (no DNS): scheme, credentials, and IP-literal hosts."""
    _scheme, host, _port, _target, allowed = _split(url, allow_hosts, require_https)
    if allowed:
        return
    try:
        ip = ipaddress.ip_address(normalise_host(host))
    except ValueError:
        if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
            raise WebhookRefused(f"host {host!r} is not a public host") from None
        return
    reason = ip_refusal(ip)
    if reason:
        raise WebhookRefused(f"{host} is a {reason}")


def resolve(
    url: str,
    allow_hosts: Sequence[str] = (),
    require_https: bool = True,
    resolver: Callable[..., list[Any]] = socket.getaddrinfo,
) -> Destination:
    """Resolve the URL's host once and check every address; the returned destination pins the IP."""
    scheme, host, port, target, allowed = _split(url, allow_hosts, require_https)
    try:
        infos = resolver(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookRefused(f"cannot resolve {host!r}: {exc}") from exc
    ips: list[IPAddress] = []
    for info in infos:
        addr = str(info[4][0]).split("%", 1)[0]
        ip = ipaddress.ip_address(addr)
        if ip not in ips:
            ips.append(ip)
    if not ips:
        raise WebhookRefused(f"{host!r} has no address")
    for ip in ips:
        if allowed:  # the URL's host:port is allow-listed; its resolved addresses never are
            continue
        reason = ip_refusal(ip)
        if reason:
            raise WebhookRefused(f"{host} resolves to {ip}, a {reason}")
    return Destination(scheme, host, port, ips[0], target)


def sign(secret: str, msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, timestamp, body),
    }


def message(event: str, data: dict[str, Any], now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    payload = {"type": event, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": data}
    return json.dumps(payload, separators=(",", ":"), default=str)


def deliver(
    url: str,
    event: str,
    payload: dict[str, Any],
    secret: str,
    schedule: Sequence[float],
    *,
    allow_hosts: Sequence[str] = (),
    require_https: bool = True,
    timeout_s: float = 10.0,
    store: JobStore | None = None,
    job_id: str | None = None,
    msg_id: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    transport: httpx.BaseTransport | None = None,
) -> DeliveryResult:
    """POST one signed event, retrying after each wait of ``schedule`` (attempts = len(schedule) + 1).

    Success is any 2xx. 410 Gone disables the webhook for the job and stops; a redirect or a refused
    destination stops at once (nothing to retry); anything else is retried. With ``store`` and
    ``job_id`` every attempt is appended to the job's webhook log, and a disabled webhook is skipped.
    """
    if event not in WEBHOOK_EVENTS:
        raise ValueError(f"unknown event {event!r}")
    msg_id = msg_id or new_id("msg")
    body = message(event, payload)
    attempts = 0
    status: int | None = None
    error: str | None = None
    with httpx.Client(
        timeout=timeout_s, follow_redirects=False, transport=transport, trust_env=False
    ) as client:
        for attempt in range(len(schedule) + 1):
            if attempt:
                sleep(float(schedule[attempt - 1]))
            if store is not None and job_id is not None and store.webhook_disabled(job_id):
                return DeliveryResult(False, attempts, status, "webhook disabled", disabled=True)
            attempts += 1
            started = time.monotonic()
            status, error, retry = _attempt(client, url, body, msg_id, secret, allow_hosts, require_https)
            record = {
                "event": event,
                "msg_id": msg_id,
                "attempt": attempts,
                "at": time.time(),
                "status_code": status,
                "error": error,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            }
            log.info("webhook %s %s attempt %d: %s %s", event, msg_id, attempts, status, error or "")
            if store is not None and job_id is not None:
                store.log_webhook_attempt(job_id, record)
            if status is not None and 200 <= status < 300:
                return DeliveryResult(True, attempts, status, None)
            if status == 410:
                if store is not None and job_id is not None:
                    store.disable_webhook(job_id)
                return DeliveryResult(False, attempts, status, "410 Gone: webhook disabled", disabled=True)
            if not retry:
                break
    return DeliveryResult(False, attempts, status, error)


def _attempt(
    client: httpx.Client,
    url: str,
    body: str,
    msg_id: str,
    secret: str,
    allow_hosts: Sequence[str],
    require_https: bool,
) -> tuple[int | None, str | None, bool]:
    """One POST: (status, error, retry?)."""
    try:
        dest = resolve(url, allow_hosts, require_https)
    except WebhookRefused as exc:
        return None, f"refused: {exc}", False
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "host": dest.host_header,
        **sign(secret, msg_id, datetime.now(UTC), body),
    }
    extensions = {"sni_hostname": dest.host} if dest.scheme == "https" else {}
    try:
        with client.stream(
            "POST", dest.url, content=body.encode(), headers=headers, extensions=extensions
        ) as response:
            status = response.status_code  # the body is never read
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}", True
    if 300 <= status < 400:
        return status, "redirect refused", False
    return status, None if 200 <= status < 300 else f"HTTP {status}", True


def send_job_event(
    store: JobStore,
    settings: Settings,
    job: JobRecord,
    event: str,
    secret: str | None,
    data: dict[str, Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryResult | None:
    """For workers: deliver ``event`` for ``job`` if it subscribed, its webhook is enabled and the
    tenant has a secret (:func:`service.keys.get_webhook_secret`). ``data`` defaults to the public job."""
    if not job.webhook_url or event not in job.webhook_events or secret is None:
        return None
    if store.webhook_disabled(job.id):
        return None
    if data is None:
        data = job_out(job).model_dump(mode="json")
    return deliver(
        job.webhook_url,
        event,
        data,
        secret,
        settings.webhook_retry_schedule_s,
        allow_hosts=settings.webhook_allow_hosts,
        require_https=settings.webhook_require_https,
        timeout_s=settings.webhook_timeout_s,
        store=store,
        job_id=job.id,
        sleep=sleep,
    )
