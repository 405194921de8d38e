"""API keys over REST and WebSocket, Origin checks, and no secret in any log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.auth import (
    ANONYMOUS_KEY_ID,
    REDACTED,
    WS_SUBPROTOCOL,
    CurrentKey,
    CurrentWsKey,
    KeyRing,
    RedactingFilter,
    Redactor,
    install_log_redaction,
    key_fingerprint,
    origin_allowed,
    split_ws_subprotocols,
)
from service.settings import ApiKey, Settings

KEY_A = "kA_" + "x" * 29
KEY_B = "kB_" + "y" * 29


def make_app(keys: list[str], origins: list[str] | None = None) -> FastAPI:
    settings = Settings(api_keys=",".join(keys) or None, allowed_origins=origins or [])
    app = FastAPI()
    app.state.settings = settings
    app.state.keyring = KeyRing.from_settings(settings)

    @app.get("/whoami")
    async def whoami(key: CurrentKey) -> dict[str, str]:
        return {"key_id": key.key_id}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, key: CurrentWsKey) -> None:
        await websocket.accept(subprotocol=key.subprotocol)
        await websocket.send_json({"key_id": key.principal.key_id})
        await websocket.close()

    return app


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app([KEY_A, KEY_B], ["https://ok.example"])) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_fingerprint_is_short_stable_and_not_the_key() -> None:
    fp = key_fingerprint(KEY_A)
    assert fp == key_fingerprint(KEY_A) and fp != key_fingerprint(KEY_B)
    assert fp.startswith("k_") and len(fp) == 18 and KEY_A not in fp


@pytest.mark.parametrize(
    ("headers", "status", "key_id"),
    [
        (bearer(KEY_A), 200, key_fingerprint(KEY_A)),
        (bearer(KEY_B), 200, key_fingerprint(KEY_B)),
        ({"Authorization": f"bearer {KEY_A}"}, 200, key_fingerprint(KEY_A)),
        ({}, 401, None),
        (bearer(KEY_A[:-1]), 401, None),
        (bearer(KEY_A + "x"), 401, None),
        ({"Authorization": f"Basic {KEY_A}"}, 401, None),
    ],
)
def test_rest_bearer(
    client: TestClient, headers: dict[str, str], status: int, key_id: str | None
) -> None:
    r = client.get("/whoami", headers=headers)
    assert r.status_code == status
    if status == 200:
        assert r.json() == {"key_id": key_id}
    else:
        assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "query",
    [
        f"token={KEY_A}",
        f"key={KEY_A}",  # accepted before the fix: the refusal list was fixed
        f"auth={KEY_A}",  # likewise
        "auth=anything",  # a credential-like name is refused whatever its value
        "X-Api-Key=v",
        "client_secret=v",
        "password=v",
        "authToken=v",
        f"render=1&video={KEY_A}",  # any name, when the value is a configured key
        f"{KEY_A}=",  # the key as a bare parameter
    ],
)
def test_query_string_credential_is_refused(client: TestClient, query: str) -> None:
    r = client.get(f"/whoami?{query}", headers=bearer(KEY_A))
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert "query string" in detail and "query parameter '" in detail
    assert KEY_A not in detail or query.startswith(KEY_A)  # the value is never echoed


def test_query_string_credential_message_names_the_parameter(client: TestClient) -> None:
    r = client.get(f"/whoami?limit=5&video={KEY_A}", headers=bearer(KEY_A))
    assert r.status_code == 400 and "query parameter 'video'" in r.json()["detail"]


def test_ordinary_query_parameters_pass(client: TestClient) -> None:
    r = client.get("/whoami?render=true&name=street.mp4&limit=5&format=csv", headers=bearer(KEY_A))
    assert r.status_code == 200


def test_openapi_declares_bearer_scheme(client: TestClient) -> None:
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"


def test_no_keys_means_anonymous_on_loopback_only() -> None:
    app = make_app([])
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/whoami").json() == {"key_id": ANONYMOUS_KEY_ID}
    # a DNS-rebinding page reaches 127.0.0.1 under a foreign Host name
    with TestClient(app, base_url="http://evil.example") as c:
        assert c.get("/whoami").status_code == 403


# ------------------------------------------------------------------ WebSocket


@pytest.mark.parametrize(
    ("headers", "subprotocols", "accepted", "selected"),
    [
        (bearer(KEY_A), None, True, None),
        ({}, [WS_SUBPROTOCOL, f"bearer.{KEY_A}"], True, WS_SUBPROTOCOL),
        ({}, [f"bearer.{KEY_A}"], True, None),
        ({}, [WS_SUBPROTOCOL], False, None),
        ({}, [WS_SUBPROTOCOL, "bearer.wrong-key-123456789"], False, None),
        ({"Origin": "https://evil.example"} | bearer(KEY_A), None, False, None),
        ({"Origin": "https://ok.example"} | bearer(KEY_A), None, True, None),
        ({"Origin": "http://testserver"} | bearer(KEY_A), None, True, None),  # same origin
        ({"Origin": "null"} | bearer(KEY_A), None, False, None),
    ],
)
def test_websocket_auth_before_accept(
    client: TestClient,
    headers: dict[str, str],
    subprotocols: list[str] | None,
    accepted: bool,
    selected: str | None,
) -> None:
    if not accepted:
        with (
            pytest.raises(WebSocketDisconnect) as info,
            client.websocket_connect("/ws", headers=headers, subprotocols=subprotocols),
        ):
            pass
        assert info.value.code == 1008
        return
    with client.websocket_connect("/ws", headers=headers, subprotocols=subprotocols) as ws:
        assert ws.accepted_subprotocol == selected  # never the bearer token
        assert ws.receive_json() == {"key_id": key_fingerprint(KEY_A)}


@pytest.mark.parametrize("query", [f"access_token={KEY_A}", f"key={KEY_A}", f"auth={KEY_A}"])
def test_websocket_query_token_refused(client: TestClient, query: str) -> None:
    with (
        pytest.raises(WebSocketDisconnect) as info,
        client.websocket_connect(f"/ws?{query}", headers=bearer(KEY_A)),
    ):
        pass
    assert info.value.code == 1008


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, "h", [], True),  # not a browser
        ("https://h.example", "h.example", [], True),
        ("https://h.example", "h.example:443", [], True),
        ("http://h.example:8000", "h.example:8000", [], True),
        ("https://h.example", "h.example", [], True),  # TLS ended at the ingress
        ("https://h.example:8443", "h.example", [], False),
        ("https://h.example.evil.com", "h.example", [], False),
        ("https://other.example", "h.example", ["https://other.example"], True),
        ("https://other.example", "h.example", [], False),
        ("null", "h", ["null"], False),
        ("file://", "h", [], False),
    ],
)
def test_origin_allowed(origin: str | None, host: str, allowed: list[str], ok: bool) -> None:
    assert origin_allowed(origin, host, allowed) is ok


def test_split_subprotocols() -> None:
    assert split_ws_subprotocols(f"avaserve.v1, bearer.{KEY_A}") == (["avaserve.v1"], KEY_A)
    assert split_ws_subprotocols(None) == ([], None)


def test_verify_checks_every_key() -> None:
    ring = KeyRing([ApiKey(KEY_A, "a"), ApiKey(KEY_B, "b")])
    got = ring.verify(KEY_B)
    assert got is not None and got.name == "b"
    assert ring.verify("") is None
    assert KEY_A not in repr(ring)


# ------------------------------------------------------------------ logs


def test_no_secret_in_any_log_line(caplog: pytest.LogCaptureFixture, client: TestClient) -> None:
    ring = KeyRing([ApiKey(KEY_A), ApiKey(KEY_B)])
    uninstall = install_log_redaction(ring)
    caplog.set_level(logging.DEBUG)
    try:
        access = logging.getLogger("uvicorn.access")
        access.info('%s - "%s %s HTTP/%s" %d', "1.2.3.4", "GET", f"/ws?token={KEY_A}", "1.1", 403)
        logging.getLogger("service.x").warning("headers: %r", {"authorization": f"Bearer {KEY_B}"})
        logging.getLogger("service.y").info("subprotocols %s", f"avaserve.v1, bearer.{KEY_A}")
        logging.getLogger("other").error("raw key in message %s", KEY_B)
        logging.getLogger("tok").info("Authorization: Bearer some-unconfigured-token-12345")
        try:
            raise ValueError(f"bad header Bearer {KEY_A} and {KEY_B}")
        except ValueError:
            logging.getLogger("service.z").exception("request failed")
        # real traffic through the app, with httpx/starlette debug logging on
        client.get("/whoami", headers=bearer(KEY_A))
        client.get("/whoami", headers=bearer("wrong-key-but-still-secret"))
    finally:
        uninstall()
    assert caplog.records, "nothing was captured"
    formatter = logging.Formatter("%(message)s %(exc_text)s")
    lines = [caplog.text] + [formatter.format(r) for r in caplog.records]
    for line in lines:
        for secret in (KEY_A, KEY_B, "some-unconfigured-token-12345"):
            assert secret not in line
    assert REDACTED in caplog.text
    assert "request failed" in caplog.text and "ValueError" in caplog.text  # still useful


@pytest.mark.parametrize("name", ["key", "auth", "client_secret", "X-Api-Key", "password"])
def test_redaction_covers_every_credential_like_query_parameter(name: str) -> None:
    redact = Redactor(lambda: [])  # an unconfigured token: only the pattern can catch it
    line = redact(f"GET /v1/jobs?limit=5&{name}=unconfigured-token-98765&format=csv")
    assert "unconfigured-token-98765" not in line and "limit=5" in line and "format=csv" in line


def test_redacting_filter_for_foreign_handlers() -> None:
    record = logging.LogRecord("n", logging.INFO, __file__, 1, "key=%s", (KEY_A,), None)
    RedactingFilter(KeyRing([ApiKey(KEY_A)])).filter(record)
    assert record.getMessage() == f"key={REDACTED}"


def test_redaction_keeps_uvicorn_access_log_working() -> None:
    """uvicorn's access formatter unpacks the record's args positionally: redaction must keep
    them a tuple (consuming them into the message crashed every access-log line)."""
    from uvicorn.logging import AccessFormatter

    uninstall = install_log_redaction(KeyRing([ApiKey(KEY_A)]))
    try:
        record = logging.getLogger("uvicorn.access").makeRecord(
            "uvicorn.access",
            logging.INFO,
            __file__,
            1,
            '%s - "%s %s HTTP/%s" %d',
            ("127.0.0.1:5", "GET", f"/v1/jobs?token={KEY_A}", "1.1", 200),
            None,
        )
    finally:
        uninstall()
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(record)
    assert KEY_A not in line
    assert line.startswith('127.0.0.1:5 - "GET /v1/jobs?token=') and line.endswith("200 OK")
