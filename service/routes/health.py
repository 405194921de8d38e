"""Liveness and readiness probes.

``/healthz`` answers 200 while the process can serve HTTP at all (Kubernetes restarts it
otherwise). ``/readyz`` answers 200 only when traffic should be sent here: the bundle is loaded,
the runtimes are warmed, every job worker is alive and coming round its loop, Redis answers
when one is configured, and the process is not draining.
On SIGTERM readiness flips to 503 before anything else, so load balancers stop sending work
while in-flight jobs finish.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.routes.deps import ServiceDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    ready: bool = Field(examples=[True])
    checks: dict[str, bool] = Field(
        examples=[
            {
                "bundle_loaded": True,
                "warmed": True,
                "not_draining": True,
                "job_workers": True,
                "redis": True,
            }
        ]
    )


@router.get("/healthz", response_model=Health, summary="Liveness: the process is up")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: bundle loaded, runtimes warmed, Redis reachable, not draining",
    responses={503: {"model": Readiness, "description": "Not ready (starting or draining)"}},
)
async def readyz(service: ServiceDep) -> JSONResponse:
    checks = await service.readiness_checks()
    ready = all(checks.values())
    body = Readiness(ready=ready, checks=checks).model_dump()
    return JSONResponse(body, status_code=200 if ready else 503)
