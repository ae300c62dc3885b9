"""The demo page: ``GET /`` and its files under ``/static/``.

Plain HTML, CSS and JavaScript from ``service/static/``, no build step: the page calls the public API
(``GET /v1/models``, ``POST /v1/models/{name}/predict``) and draws its charts as inline SVG. Its Content
Security Policy allows this origin only, so the page loads nothing from anywhere else. Only the files
named in ``ASSETS`` are served; the routes stay out of the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from clipwise.service.errors import ApiError

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
PAGE = "index.html"
ASSETS = {"demo.css": "text/css", "demo.js": "text/javascript"}
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
COMMON_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(tags=["demo"], include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    headers = COMMON_HEADERS | {"Content-Security-Policy": CONTENT_SECURITY_POLICY}
    return FileResponse(STATIC_DIR / PAGE, media_type="text/html", headers=headers)


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise ApiError(404, "not_found", f"no static file {name!r}")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=COMMON_HEADERS)
