"""The app's exception handlers: every error leaves as JSON ``{"error": <code>, "message":
<what to do>}`` (plus ``detail`` for validation errors); no stack trace reaches a client."""

from __future__ import annotations

import json
import logging

import redis.exceptions as redis_errors
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketState

from service.auth import WsRefusal
from service.errors import VideoInputError, error_code

__all__ = ["install_error_handlers"]

log = logging.getLogger("service.app")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VideoInputError)
    async def video_input(_: Request, exc: VideoInputError) -> JSONResponse:
        return JSONResponse({"error": exc.reason, "message": exc.message}, exc.http_status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        body = {"error": error_code(exc.status_code), "message": detail}
        return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(WsRefusal)
    async def ws_refused(websocket: WebSocket, exc: WsRefusal) -> None:
        # Before accept: an HTTP answer (401/403/409/429/503 and the REST error body) where
        # the ASGI server supports it; else the close Starlette would send (HTTP 403).
        extensions = websocket.scope.get("extensions") or {}
        if (
            websocket.client_state == WebSocketState.CONNECTING
            and "websocket.http.response" in extensions
        ):
            body = {"error": error_code(exc.status_code), "message": exc.reason}
            await websocket.send_denial_response(
                JSONResponse(body, exc.status_code, headers=exc.headers)
            )
        else:
            await websocket.close(code=exc.code, reason=exc.reason)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()
        ]
        where = ", ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:3])
        return JSONResponse(
            {"error": "invalid_request", "message": f"Invalid request ({where})", "detail": errors},
            422,
        )

    @app.exception_handler(redis_errors.ConnectionError)
    @app.exception_handler(redis_errors.TimeoutError)
    async def store_down(request: Request, exc: Exception) -> JSONResponse:
        # The job store (Redis) is down or stalled: a quick 503 the client can retry, never a
        # 500 after a long wait (the API's Redis client has short timeouts).
        retry = request.app.state.settings.retry_after_s
        log.warning("job store unavailable for %s %s: %r", request.method, request.url.path, exc)
        return JSONResponse(
            {
                "error": "unavailable",
                "message": f"The job store (Redis) is not reachable right now; retry in {retry} s.",
            },
            503,
            headers={"Retry-After": str(retry)},
        )

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            {"error": "internal", "message": "Internal server error; it has been logged."}, 500
        )
