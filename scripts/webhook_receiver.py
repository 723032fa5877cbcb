#!/usr/bin/env python3
"""A webhook receiver for trying Veil locally: verifies every delivery with ``standardwebhooks``.

    WEBHOOK_SECRET=whsec_... python scripts/webhook_receiver.py --port 9000

* The tenant's secret comes from ``WEBHOOK_SECRET`` or ``--secret-file`` (``--secret`` too, but a command
  line is visible to every user of the machine, in ``ps``).
* ``POST`` (any path): the body is verified against the ``webhook-id``, ``webhook-timestamp`` and
  ``webhook-signature`` headers with the tenant's secret (``veil keys secret --tenant T``). A valid delivery
  answers 204 and is kept; a bad signature answers 401 and is kept too, marked ``verified: false``.
* ``GET /events``: every delivery so far as JSON (``[{"verified": true, "type": "job.completed", ...}]``),
  so a curl session can show that the signed webhook arrived.

It listens on loopback only and keeps at most ``--max-events`` deliveries. ``make run`` starts one for the
``demo`` tenant and prints its URL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

MAX_BODY = 1 << 20


class Receiver(ThreadingHTTPServer):
    """Loopback HTTP server holding the deliveries it verified (or refused)."""

    daemon_threads = True

    def __init__(self, port: int, secret: str, max_events: int = 1000) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.webhook = Webhook(secret)
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self.lock = threading.Lock()

    def record(self, headers: dict[str, str], body: bytes) -> bool:
        entry: dict[str, Any] = {"webhook-id": headers.get("webhook-id")}
        try:
            payload = self.webhook.verify(body, headers)
            entry.update(verified=True, type=payload.get("type"), data=payload.get("data"))
        except (WebhookVerificationError, ValueError) as exc:
            entry.update(verified=False, error=str(exc) or type(exc).__name__)
        with self.lock:
            self.events.append(entry)
        status = "verified" if entry["verified"] else f"REFUSED ({entry['error']})"
        print(f"webhook {status}: {entry.get('type')} {entry.get('data', {}).get('id', '')}", flush=True)
        return bool(entry["verified"])


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            self.send_error(413, "body too large")
            return
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.send_response(204 if self.server.record(headers, body) else 401)
        self.end_headers()

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/events":
            self.send_error(404, "GET /events lists the deliveries")
            return
        with self.server.lock:
            body = json.dumps(list(self.server.events), indent=1).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # record() prints one line per delivery


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--secret", help="the tenant's whsec_... secret (visible in ps: prefer WEBHOOK_SECRET)")
    p.add_argument("--secret-file", type=Path, help="a file holding the secret")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--max-events", type=int, default=1000)
    args = p.parse_args(argv)
    secret = args.secret or os.environ.get("WEBHOOK_SECRET", "")
    if args.secret_file:
        secret = args.secret_file.read_text().strip()
    if not secret:
        print("error: give the secret in WEBHOOK_SECRET (or --secret-file)", file=sys.stderr)
        return 2
    try:
        server = Receiver(args.port, secret, args.max_events)
    except OSError as exc:
        print(f"error: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 2
    print(f"webhook receiver on http://127.0.0.1:{args.port}/ (deliveries: GET /events)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
