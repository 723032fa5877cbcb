"""``/app``: the web page (plain HTML, CSS and JS from ``api/static/``) that drives this API; ``/`` redirects.

The page runs on the API's own origin, so it needs no CORS; it only loads images from the object store,
whose origin (the presigned URLs') the Content-Security-Policy allows next to ``'self'``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from api.deps import SettingsDep
from api.problems import Problem
from service.config import Settings

router = APIRouter(tags=["app"], include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
# A fixed list, not a directory mount: nothing else in api/static/ is ever served by accident.
ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def storage_origin(settings: Settings) -> str:
    """The origin of presigned URLs (scheme://host:port), or ``https:`` when it is AWS's default endpoint."""
    endpoint = settings.s3_public_endpoint_url or settings.s3_endpoint_url
    if not endpoint:
        return "https:"
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "https:"


def content_security_policy(settings: Settings) -> str:
    """Scripts and styles from this origin only (no inline code); images also from the object store."""
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' blob: {storage_origin(settings)}",
            "connect-src 'self'",
            "form-action 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        )
    )


def page_headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # presigned URLs open from here must not leak the page's URL
        "Cache-Control": "no-cache",  # revalidate: a new release must not run against a stale script
    }


@router.get("/", response_class=RedirectResponse)
def root() -> RedirectResponse:
    return RedirectResponse("/app", status_code=307)


@router.get("/app", response_class=FileResponse)
def app_page(settings: SettingsDep) -> FileResponse:
    return FileResponse(STATIC / "app.html", media_type="text/html; charset=utf-8", headers=page_headers(settings))


@router.get("/app/{name}", response_class=FileResponse)
def app_asset(name: str, settings: SettingsDep) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise Problem(404, "not-found", f"no asset {name}", title="Not Found")
    return FileResponse(STATIC / name, media_type=media_type, headers=page_headers(settings))
