"""The web page at /app: served with the right types and headers (fast), and driven end to end in a real
headless Chromium against the whole stack (slow): a photo with its receipt and download, then an archive.

The browser is Debian's Chromium (``VEIL_CHROMIUM``, default /usr/bin/chromium) driven by Playwright's
Python wheel; no browser is ever downloaded. Screenshots go to ``$VEIL_TEST_ARTIFACTS`` (default
``test-artifacts/`` at the repository root).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from photos import PHONE_SIZE, check_phone_result, phone_photo  # tests/photos.py
from PIL import Image
from stacktest import RunningStack, running_stack  # tests/stacktest.py (tests/ is on sys.path)

from api.main import create_app
from api.routes.app import ASSETS, STATIC, page_headers, storage_origin
from service.config import Settings

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request, Route

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# What the closed network needs: no sandbox (root in a container), and no background connections.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
JOB_TIMEOUT_S = 240


# ---- fast: the FastAPI app serves the page -------------------------------------------------------------


@pytest.fixture(scope="module")
def page_client() -> Iterator[TestClient]:
    """An app whose routes are called without its lifespan: the page needs neither Redis nor S3."""
    settings = Settings(s3_endpoint_url="http://127.0.0.1:4566", s3_public_endpoint_url="https://files.example.org")
    yield TestClient(create_app(settings))


def test_app_page_is_html_with_a_strict_policy(page_client: TestClient) -> None:
    r = page_client.get("/app")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["x-content-type-options"] == "nosniff"
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "img-src 'self' blob: https://files.example.org" in csp  # the presigned URLs' origin
    html = r.text
    assert '<script src="/app/app.js" defer></script>' in html and 'href="/app/app.css"' in html
    # The policy allows no inline code: no event handler attributes, inline scripts or style attributes.
    assert not re.search(r"\son[a-z]+\s*=", html) and " style=" not in html
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)


@pytest.mark.parametrize(("name", "ctype"), [("app.js", "text/javascript"), ("app.css", "text/css"),
                                             ("favicon.svg", "image/svg+xml")])
def test_assets_are_served_with_their_types(page_client: TestClient, name: str, ctype: str) -> None:
    r = page_client.get(f"/app/{name}")
    assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
    assert r.content == (STATIC / name).read_bytes()
    assert r.headers["x-content-type-options"] == "nosniff"


def test_every_asset_the_page_links_is_served(page_client: TestClient) -> None:
    html = page_client.get("/app").text
    linked = set(re.findall(r'(?:src|href)="(/app/[^"]+)"', html))
    assert linked == {f"/app/{name}" for name in ASSETS}
    for path in linked:
        assert page_client.get(path).status_code == 200, path


@pytest.mark.parametrize("path", ["/app/app.html", "/app/nothing.js", "/app/..%2Fmethods.json", "/app/%2e%2e"])
def test_only_listed_assets_are_served(page_client: TestClient, path: str) -> None:
    r = page_client.get(path)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")


def test_root_redirects_to_the_page(page_client: TestClient) -> None:
    r = page_client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/app"


def test_storage_origin() -> None:
    assert storage_origin(Settings(s3_endpoint_url="http://127.0.0.1:9000/")) == "http://127.0.0.1:9000"
    assert storage_origin(Settings(s3_endpoint_url=None)) == "https:"  # AWS: a regional https host


def test_static_files_are_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "static/*" in pyproject["tool"]["setuptools"]["package-data"]["api"]
    assert {p.name for p in STATIC.iterdir()} >= {"app.html", *ASSETS}


# ---- slow: the page in Chromium against the whole stack ------------------------------------------------


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("VEIL_TEST_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture()
def page() -> Iterator[Page]:
    """A Chromium page (downloads accepted) whose uncaught errors and policy violations fail the test."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="install the dev extra (playwright)")
    exe = Path(os.environ.get("VEIL_CHROMIUM", "/usr/bin/chromium"))
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        pytest.skip(f"no Chromium at {exe} (apt-get install chromium, or set VEIL_CHROMIUM)")
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(exe), args=CHROMIUM_ARGS, timeout=60_000)
        context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 900})
        tab = context.new_page()
        tab.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
        # Any console error but a failed fetch's (the 401 below): Content-Security-Policy violations among them.
        tab.on("console", lambda m: problems.append(m.text)
               if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
        yield tab
        context.close()
        browser.close()
    assert not problems, problems


def wait_until_finished(page: Page) -> str:
    """The job's final status once the page has shown it (or '' when the page shows an error first)."""
    page.wait_for_function("() => ['done', 'error'].includes(document.body.dataset.phase)",
                           timeout=JOB_TIMEOUT_S * 1000)
    return str(page.evaluate("() => document.body.dataset.jobStatus || ''"))


def drop_file(page: Page, path: Path, mime: str) -> None:
    """Drop ``path`` on the drop zone, as a file dragged from the desktop arrives."""
    data = base64.b64encode(path.read_bytes()).decode()
    page.evaluate("""([name, type, b64]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, { type }));
        const zone = document.getElementById('drop-zone');
        zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    }""", [path.name, mime, data])


def submit(page: Page, previews: bool = False) -> str:
    """Submit the chosen file; the id of the job once the page shows it succeeded."""
    page.set_checked("#previews", previews)
    page.click("#submit")
    status = wait_until_finished(page)
    assert status == "succeeded", f"{status}: {page.inner_text('#status-panel')}"
    assert page.is_hidden("#cancel") and page.is_enabled("#submit")
    return str(page.evaluate("() => document.body.dataset.jobId"))


def get_json(stack: RunningStack, path: str) -> Any:
    r = httpx.get(f"{stack.api_url}{path}", headers={"Authorization": f"Bearer {stack.key}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def image_loaded(page: Page, selector: str) -> None:
    page.wait_for_function("(s) => { const i = document.querySelector(s); return i.complete && i.naturalWidth > 0; }",
                           arg=selector, timeout=30_000)


def term_values(page: Page, selector: str) -> dict[str, str]:
    """A <dl>'s terms and their values as shown."""
    return dict(page.evaluate("(s) => [...document.querySelectorAll(s + ' dt')].map("
                              "(dt) => [dt.textContent, dt.nextElementSibling.textContent])", selector))


def table_rows(page: Page, selector: str) -> dict[str, list[str]]:
    """A table's body rows: row header -> cells as shown."""
    rows = page.evaluate("(s) => [...document.querySelectorAll(s + ' tbody tr')].map("
                         "(tr) => [...tr.children].map((c) => c.textContent))", selector)
    return {row[0]: row[1:] for row in rows}


def shown_number(text: str) -> float:
    return float(text.replace("%", "").replace("dB", "").strip())


def check_receipt(page: Page, photo: dict[str, Any]) -> None:
    """The numbers of report.photos[0] as the page shows them (rounded for display)."""
    metrics = term_values(page, "#metrics")
    for label, field, tolerance in (("PSNR", "psnr", 0.006), ("SSIM", "ssim", 6e-5), ("LPIPS", "lpips", 6e-5)):
        value = photo.get(field)
        if isinstance(value, int | float):
            assert abs(shown_number(metrics[label]) - value) <= tolerance, (label, metrics[label], value)
        else:
            assert metrics[label] == "—"
    if "faces_found" in photo:
        assert metrics["Faces found"] == str(photo["faces_found"])
    if isinstance(photo.get("max_change_levels"), int):  # the change in a user's units
        levels, share = metrics["Largest change"].split(" of 255 levels, on ")
        assert int(levels) == photo["max_change_levels"] and share.endswith(" % of the pixels")
        # toFixed(1) rounds halves its own way: compare the number, not Python's formatting of it
        assert abs(float(share.split(" %")[0]) - 100 * photo["changed_share"]) <= 0.051
    forgers = photo.get("forgers") or {}
    shown = table_rows(page, "#forgers")
    assert set(shown) == set(forgers)
    for name, numbers in forgers.items():
        if isinstance(numbers.get("success_rate"), int | float):
            assert abs(shown_number(shown[name][0]) - 100 * numbers["success_rate"]) <= 0.06
    receipt = photo.get("receipt") or {}
    conditions = receipt.get("conditions") or {}
    rows = table_rows(page, "#conditions")
    assert len(rows) == len(conditions)
    # whether the edits still work, beside the success rate: per condition, and the worst of them
    blocked = sorted(round(100 * c["edit_blocked"], 1) for c in conditions.values()
                     if isinstance(c.get("edit_blocked"), int | float))
    assert sorted(shown_number(r[1]) for r in rows.values() if r[1] != "—") == pytest.approx(blocked, abs=0.06)
    if receipt.get("verdict"):  # what the receipt means, in words, above its numbers
        assert page.inner_text("#verdict") == receipt["verdict"]["text"]
        assert page.is_visible("#verdict")
    if isinstance(receipt.get("min_edit_blocked"), int | float):
        assert shown_number(metrics["Edits blocked (worst case)"]) == pytest.approx(
            100 * receipt["min_edit_blocked"], abs=0.06)


def check_previews(page: Page, photo: dict[str, Any]) -> None:
    previews = photo["previews"]  # asked for: the worker renders them
    image_loaded(page, "#perturbation-img")
    image_loaded(page, "#edits-img")
    caption = page.inner_text("#edits-caption")
    assert all(column in caption for column in previews.get("columns") or [])


def check_download(page: Page, tmp_path: Path, expected_size: int | None) -> bytes:
    """Click the download button; the PNG that arrives (of ``expected_size`` bytes when given)."""
    with page.expect_download(timeout=60_000) as info:
        page.click("#download")
    download = info.value
    target = tmp_path / "downloaded.png"
    download.save_as(target)
    data = target.read_bytes()
    assert data.startswith(PNG_MAGIC) and (expected_size is None or len(data) == expected_size)
    assert download.suggested_filename.endswith(".png")
    return data


# ---- the page in Chromium against a scripted API: what the stack cannot show on demand ------------------

FAKE_API = "http://veil.test"
FAKE_FILES = "http://files.test"  # presigned URLs live on another origin
FAKE_SETTINGS = Settings(s3_endpoint_url=FAKE_FILES)
PREVIEWS = {"perturbation": "previews/face-perturbation.png", "edits": "previews/face-edits.png",
            "columns": ["input", "Black_Hair", "Blond_Hair"], "amplification": 10}
# Fields null or missing, as a report may have them: the page shows what exists.
SPARSE_PHOTO = {"index": 0, "name": "face.png", "status": "ok", "output": "face.png", "psnr": None, "ssim": 0.98765,
                "faces_found": 1, "protection": "faces", "forgers": {"stargan": {"success_rate": 0.75}},
                "receipt": {"conditions": {"clean": {"success_rate": 0.75, "edit_blocked": 0.5},
                                           "jpeg75": {"success_rate": None}},
                            "min_success_rate": 0.5, "weakest": "jpeg75", "min_edit_blocked": 0.25,
                            "verdict": {"level": "partly", "text": "Partly protected: in words."}},
                "previews": PREVIEWS}


def fake_job(status: str, done: int = 0, **fields: Any) -> dict[str, Any]:
    return {"id": "job_1", "object": "job", "status": status, "method": "pgd", "forgers": ["stargan"],
            "eps": 0.05, "strength": "high", "input": {"kind": "image", "filename": "face.png"},
            "progress": {"done": done, "total": 1}, "error": None, "report": None, **fields}


def png(width: int = 40, height: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buf, "PNG")
    return buf.getvalue()


class FakeApi:
    """Serves the page from api/static/ (with the real headers) and answers the API from a script of job
    snapshots: POST /v1/jobs gets the first, each GET the next (the last one repeats)."""

    def __init__(self, snapshots: list[dict[str, Any]], outputs: list[str] | None = None) -> None:
        self.snapshots = snapshots
        self.outputs = outputs or []
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.canceled = False
        self.served = 0  # index of the snapshot last answered
        self.post_status = 202  # 401: POST /v1/jobs answers a problem (a revoked key)

    def install(self, page: Page) -> None:
        page.route(f"{FAKE_API}/**", self.api)
        page.route(f"{FAKE_FILES}/**", lambda route: route.fulfill(body=png(), content_type="image/png"))

    def api(self, route: Route, request: Request) -> None:
        path = urlsplit(request.url).path
        self.requests.append((request.method, path, request.all_headers(), request.post_data_buffer or b""))
        if path == "/app" or path.startswith("/app/"):
            name = path.removeprefix("/app").strip("/") or "app.html"
            ctype = ASSETS.get(name, "text/html; charset=utf-8")
            route.fulfill(body=(STATIC / name).read_bytes(), headers={**page_headers(FAKE_SETTINGS),
                                                                      "Content-Type": ctype})
        elif path == "/v1/methods":
            route.fulfill(json=json.loads((REPO / "api" / "methods.json").read_text()))
        elif path == "/v1/jobs" and request.method == "POST" and self.post_status == 401:
            problem = {"type": "/problems/unauthorized", "title": "Unauthorized", "status": 401,
                       "detail": "unknown or revoked API key", "instance": "/v1/jobs"}
            route.fulfill(status=401, json=problem, headers={"Content-Type": "application/problem+json"})
        elif path == "/v1/jobs" and request.method == "POST":
            self.served = 0
            route.fulfill(status=202, json=self.snapshots[0])
        elif path.endswith("/cancel"):
            self.canceled = True
            route.fulfill(json=fake_job("canceled"))
        elif path.endswith("/outputs"):
            data = [{"name": n, "size": 100, "url": f"{FAKE_FILES}/out/{n}?X-Amz-Signature=abc"} for n in self.outputs]
            route.fulfill(json={"job_id": "job_1", "status": "succeeded", "expires_in": 3600, "data": data})
        else:
            route.fulfill(json=self.next_snapshot())

    def next_snapshot(self) -> dict[str, Any]:
        if self.canceled:
            return fake_job("canceled")
        self.served = min(self.served + 1, len(self.snapshots) - 1)
        job = self.snapshots[self.served]
        if self.served == len(self.snapshots) - 1 and job["status"] not in ("succeeded", "failed", "canceled"):
            time.sleep(0.1)  # a job that stays running: pace the page's polls as a long-poll would
        return job

    def sent(self, method: str, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, body) for m, p, h, body in self.requests if m == method and p == path]


def open_fake(page: Page, api: FakeApi) -> None:
    api.install(page)
    page.goto(f"{FAKE_API}/app")
    page.wait_for_function("() => document.querySelectorAll('#method option').length > 0", timeout=10_000)
    page.fill("#api-key", "veil_sk_fake")
    page.set_input_files("#file", files=[{"name": "face.png", "mimeType": "image/png", "buffer": png(64, 48)}])


@pytest.mark.slow
def test_page_shows_previews_and_sparse_receipts(page: Page) -> None:
    done = fake_job("succeeded", 1, report={"summary": {"entries": 1}, "photos": [SPARSE_PHOTO]})
    api = FakeApi([fake_job("queued"), fake_job("running"), done],
                  outputs=["face.png", PREVIEWS["perturbation"], PREVIEWS["edits"]])
    open_fake(page, api)
    page.select_option("#strength", "high")
    page.check("#previews")
    page.click("#submit")
    assert wait_until_finished(page) == "succeeded"

    [(headers, body)] = api.sent("POST", "/v1/jobs")
    assert headers["authorization"] == "Bearer veil_sk_fake"
    for field, value in (("method", "pgd"), ("strength", "high"), ("previews", "true")):
        assert f'name="{field}"\r\n\r\n{value}\r\n'.encode() in body
    polls = api.sent("GET", "/v1/jobs/job_1")
    assert len(polls) >= 2 and all(h.get("prefer") == "wait=10" for h, _ in polls)

    for selector in ("#original-img", "#protected-img", "#perturbation-img", "#edits-img"):
        image_loaded(page, selector)
    assert page.get_attribute("#download", "href") == f"{FAKE_FILES}/out/face.png?X-Amz-Signature=abc"
    metrics = term_values(page, "#metrics")
    assert metrics["PSNR"] == "—" and metrics["LPIPS"] == "—" and metrics["SSIM"] == "0.9877"
    assert metrics["Worst-case protection"] == "50.0 % (JPEG quality 75)"
    assert table_rows(page, "#forgers") == {"stargan": ["75.0 %", "—", "—"]}
    assert metrics["Edits blocked (worst case)"] == "25.0 %"
    assert page.inner_text("#verdict") == "Partly protected: in words."
    assert page.get_attribute("#verdict", "data-level") == "partly"
    assert table_rows(page, "#conditions") == {"as delivered": ["75.0 %", "50.0 %"], "JPEG quality 75": ["—", "—"]}
    assert "×10" in page.inner_text("#perturbation-caption")
    assert "input, Black_Hair, Blond_Hair" in page.inner_text("#edits-caption")
    page.screenshot(path=str(artifacts_dir() / "app-page-previews-scripted.png"), full_page=True)


@pytest.mark.slow
def test_page_shows_why_a_job_failed(page: Page) -> None:
    failed = fake_job("failed", error={"code": "invalid_image", "message": "face.png: not a photo"})
    open_fake(page, FakeApi([fake_job("queued"), failed]))
    page.click("#submit")
    assert wait_until_finished(page) == "failed"
    assert "face.png: not a photo" in page.inner_text("#error")
    assert page.is_hidden("#photo-result") and page.is_hidden("#cancel")


def status_shown(page: Page) -> dict[str, Any]:
    return dict(page.evaluate("""() => {
        const s = document.getElementById('status'), p = document.getElementById('progress');
        return { text: s.textContent, status: s.dataset.status || '', color: getComputedStyle(s).color,
                 value: p.value, max: p.max }; }"""))


@pytest.mark.slow
def test_page_shows_a_refused_submission_as_an_error(page: Page) -> None:
    """A 401 on submit after a finished job: the status line shows the error (not a green 'Uploading
    face.png…') and the progress bar is reset (not left full)."""
    api = FakeApi([fake_job("queued"), fake_job("succeeded", 1, report={"photos": [SPARSE_PHOTO]})],
                  outputs=["face.png"])
    open_fake(page, api)
    page.click("#submit")
    assert wait_until_finished(page) == "succeeded"
    green = status_shown(page)
    assert green["status"] == "succeeded" and green["value"] == green["max"] == 1

    api.post_status = 401
    page.click("#submit")
    page.wait_for_function("() => document.body.dataset.phase === 'error'", timeout=10_000)
    shown = status_shown(page)
    assert "unknown or revoked API key" in page.inner_text("#error")
    assert "Uploading" not in shown["text"] and "face.png" in shown["text"], shown
    assert shown["status"] == "error" and shown["color"] != green["color"], shown
    assert shown["value"] == 0, shown
    assert page.is_hidden("#photo-result") and page.is_enabled("#submit") and page.is_hidden("#cancel")


@pytest.mark.slow
def test_cancel_button_cancels_the_job(page: Page) -> None:
    api = FakeApi([fake_job("queued"), fake_job("running")])
    open_fake(page, api)
    page.click("#submit")
    page.wait_for_function("() => document.body.dataset.jobStatus === 'running'", timeout=10_000)
    page.click("#cancel")
    assert wait_until_finished(page) == "canceled"
    assert len(api.sent("POST", "/v1/jobs/job_1/cancel")) == 1
    assert "canceled" in page.inner_text("#status")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_page_protects_a_photo_and_an_archive_in_chromium(page: Page, tmp_path: Path) -> None:
    with running_stack(tmp_path / "stack") as stack:
        page.goto(f"{stack.api_url}/app")
        page.wait_for_function("() => document.querySelectorAll('#method option').length > 0", timeout=30_000)
        page.select_option("#method", "pgd")

        # A wrong key: the problem+json detail of the 401 is shown.
        page.fill("#api-key", "veil_sk_not-a-key")
        page.set_input_files("#file", str(stack.face))
        page.click("#submit")
        assert wait_until_finished(page) == ""
        assert "HTTP 401" in page.inner_text("#error")

        page.fill("#api-key", stack.key)
        assert page.evaluate("() => sessionStorage.getItem('veil.apiKey')") == stack.key
        page.set_input_files("#file", str(stack.face))
        job_id = submit(page, previews=True)
        job = get_json(stack, f"/v1/jobs/{job_id}")
        photo = job["report"]["photos"][0]
        outputs = {o["name"]: o for o in get_json(stack, f"/v1/jobs/{job_id}/outputs")["data"]}
        image_loaded(page, "#original-img")
        image_loaded(page, "#protected-img")
        check_receipt(page, photo)
        check_previews(page, photo)
        check_download(page, tmp_path, outputs[photo["output"]]["size"])
        page.screenshot(path=str(artifacts_dir() / "app-page.png"), full_page=True)

        drop_file(page, stack.archive, "application/zip")
        assert stack.archive.name in page.inner_text("#file-name")
        job_id = submit(page)
        summary = get_json(stack, f"/v1/jobs/{job_id}")["report"]["summary"]
        shown = term_values(page, "#archive-summary")
        assert shown == {"Entries": str(summary["entries"]), "Protected": str(summary["protected"]),
                         "Errors": str(summary["errors"])}
        links = page.eval_on_selector_all("#archive-files a", "(as) => as.map((a) => [a.textContent, a.href])")
        names = {name for name, _ in links}
        assert {"report.json", "report.csv"} <= names and any(n.endswith(".zip") for n in names)
        assert all(href.startswith("http") for _, href in links)
        assert page.is_hidden("#photo-result")
        page.screenshot(path=str(artifacts_dir() / "app-page-archive.png"), full_page=True)

        # A 12 MP phone photo with two faces, stored rotated (EXIF 6): shown, measured and downloaded whole.
        data, upright = phone_photo()
        phone = tmp_path / "IMG_0001.jpg"
        phone.write_bytes(data)
        page.set_input_files("#file", str(phone))
        job_id = submit(page)
        photo = get_json(stack, f"/v1/jobs/{job_id}")["report"]["photos"][0]
        image_loaded(page, "#protected-img")
        assert page.evaluate("() => document.querySelector('#protected-img').naturalWidth") == PHONE_SIZE[0]
        check_receipt(page, photo)
        assert term_values(page, "#metrics")["Faces found"] == "2"
        delivered = check_download(page, tmp_path, None)
        check_phone_result(upright, delivered, photo)
        page.screenshot(path=str(artifacts_dir() / "app-page-phone.png"), full_page=True)
    assert stack.returncode == 0
