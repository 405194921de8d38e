"""The web page at ``/``: static HTML + plain JavaScript, no build step (service/static/)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    # no-store: the page is tiny and a stale app.js after an upgrade is worse than a refetch.
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})
