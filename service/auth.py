"""API-key authentication for REST and WebSocket, Origin checks, and log redaction.

Who is calling
--------------
A client sends ``Authorization: Bearer <key>``. The key is compared with every configured key
in constant time (``hmac.compare_digest``, no early exit), and the caller becomes a
``Principal`` whose ``key_id`` is a short sha256 fingerprint of the key (``k_`` + 16 hex). The
key id, never the key, is what the rest of the service stores (job ownership) and logs.

With no key configured the service runs unauthenticated as the principal ``anonymous``; the
server then binds to loopback only (``Settings.bind_host_effective``), and requests must carry a
loopback ``Host`` header, which stops DNS-rebinding pages from driving a local server.

WebSockets
----------
Browsers cannot set headers on ``new WebSocket(...)``, so a WebSocket may authenticate either
with the ``Authorization`` header (non-browser clients) or through the subprotocol list::

    new WebSocket(url, ["avaserve.v1", "bearer." + apiKey])

The server selects ``avaserve.v1`` on accept (``WsPrincipal.subprotocol``), never echoing the
token back. A credential in the query string is refused outright, whatever the parameter is
called (`query_credential`): URLs end up in access logs and browser history. Authentication
and the Origin check happen *before* ``accept``; a refused handshake raises ``WsRefusal``, which
the app answers with the REST status and error body as an ASGI denial response (a bare close,
HTTP 403, only behind a server without denial responses).

Origins
-------
A browser's ``Origin`` is allowed when it equals the page's own origin (scheme + the request's
``Host``) or is listed in ``Settings.allowed_origins``. A missing ``Origin`` (non-browser client)
is allowed: such clients cannot be driven by a hostile page, and they still need a key.

No secret in logs
-----------------
``install_log_redaction(keyring)`` wraps the logging record factory so that every record, from
any logger (uvicorn's access log included), has configured keys and anything shaped like a bearer
token replaced by ``[REDACTED]`` before any handler sees it.

App contract: ``create_app`` sets ``app.state.keyring = KeyRing.from_settings(settings)`` and
``app.state.settings = settings``; the dependencies below read them from there.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, WebSocket, WebSocketException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from service.settings import ApiKey, Settings

log = logging.getLogger(__name__)

ANONYMOUS_KEY_ID = "anonymous"
WS_SUBPROTOCOL = "avaserve.v1"
WS_BEARER_PREFIX = "bearer."
# RFC 6455 close code 1008 "policy violation": the generic refusal for auth/origin failures.
WS_POLICY_VIOLATION = 1008
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
# Query parameters refused as credentials, by name: compared lower-case with '-', '_' and '.'
# removed, as a whole name or as its ending (so api_key, X-Api-Key, access_token, authToken,
# client_secret all match). No parameter of this API ends so.
_CREDENTIAL_NAMES = frozenset(
    {"auth", "authorization", "bearer", "credential", "credentials", "jwt", "passwd", "pwd"}
)
_CREDENTIAL_SUFFIXES = ("key", "token", "secret", "password", "auth")
_CREDENTIAL_NAME_RE = (
    r"[\w.\-]*(?:key|token|secret|password|auth|authorization|bearer|credentials?|jwt|passwd|pwd)"
)


def key_fingerprint(secret: str) -> str:
    """Short, non-reversible id of a key: ``k_`` + the first 16 hex digits of its sha256.

    Keys are high-entropy random strings, so an unsalted hash cannot be brute-forced back;
    64 bits keep collisions out of reach for any realistic number of keys.
    """
    return "k_" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Principal:
    """The authenticated caller. ``key_id`` owns jobs and appears in logs; ``name`` is the
    optional label from the keys file (for humans; not a metrics label)."""

    key_id: str
    name: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.key_id == ANONYMOUS_KEY_ID


@dataclass(frozen=True)
class WsPrincipal:
    """A WebSocket caller plus the subprotocol to pass to ``websocket.accept(subprotocol=...)``
    (``avaserve.v1`` when the client offered it, else None)."""

    principal: Principal
    subprotocol: str | None


class KeyRing:
    """The configured API keys, held as bytes, matched in constant time."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys: list[tuple[bytes, Principal]] = [
            (k.secret.encode("utf-8"), Principal(key_fingerprint(k.secret), k.name)) for k in keys
        ]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(settings.api_key_entries)

    @property
    def enabled(self) -> bool:
        """False when no key is configured: the service is then open (on loopback only)."""
        return bool(self._keys)

    def verify(self, token: str) -> Principal | None:
        """The principal for ``token``, or None. Compares against every key, always, so the
        time taken does not tell which key (or how much of it) matched."""
        candidate = token.encode("utf-8")
        found: Principal | None = None
        for secret, principal in self._keys:
            if hmac.compare_digest(secret, candidate):
                found = principal
        return found

    def secrets(self) -> list[str]:
        """The raw keys, for the log redaction filter only."""
        return [s.decode("utf-8") for s, _ in self._keys]

    def __repr__(self) -> str:
        return f"KeyRing({len(self._keys)} keys)"


# ---------------------------------------------------------------------- helpers


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Is a browser ``Origin`` acceptable for a request that arrived with ``Host: host``?

    Same origin is judged on host and port only, not on the scheme: behind a TLS-terminating
    proxy or ingress the server sees ``ws://`` while the browser's page was ``https://``. A
    cross-site page always differs in host; the scheme adds nothing against it.
    ``allowed`` holds normalised ``scheme://host[:port]`` strings and must match exactly.
    """
    if origin is None:
        return True  # not a browser
    origin = origin.strip().lower()
    if origin == "null":
        return False  # sandboxed iframes, file:// pages: never a trusted origin
    if origin in allowed:
        return True
    if not host:
        return False
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    return _strip_default_port(parts.netloc, parts.scheme) == _strip_default_port(
        host.strip().lower(), None
    )


def _strip_default_port(netloc: str, scheme: str | None) -> str:
    # "example.com:443" (Host behind a proxy) and "https://example.com" are the same origin.
    for default in (
        (":80", ":443") if scheme is None else ({"http": ":80", "https": ":443"}[scheme],)
    ):
        if netloc.endswith(default):
            return netloc[: -len(default)]
    return netloc


def _host_is_loopback(host_header: str | None) -> bool:
    if not host_header:
        return False
    host = urlsplit(f"//{host_header.strip().lower()}").hostname or ""
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def bearer_from_header(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def split_ws_subprotocols(header: str | None) -> tuple[list[str], str | None]:
    """Split ``Sec-WebSocket-Protocol`` into (offered protocols without the token, token)."""
    offered: list[str] = []
    token: str | None = None
    for item in (header or "").split(","):
        item = item.strip()
        if not item:
            continue
        if item.lower().startswith(WS_BEARER_PREFIX):
            token = item[len(WS_BEARER_PREFIX) :]
        else:
            offered.append(item)
    return offered, token


def _keyring(conn: HTTPConnection) -> KeyRing:
    keyring = getattr(conn.app.state, "keyring", None)
    if not isinstance(keyring, KeyRing):
        raise RuntimeError("app.state.keyring is not set: create_app must set it (service.auth)")
    return keyring


def _allowed_origins(conn: HTTPConnection) -> list[str]:
    settings = getattr(conn.app.state, "settings", None)
    return list(settings.allowed_origins) if isinstance(settings, Settings) else []


def credential_like(name: str) -> bool:
    """Does a query parameter's name say it carries a credential (see _CREDENTIAL_NAMES)?"""
    norm = re.sub(r"[-_.]", "", name.lower())
    return norm in _CREDENTIAL_NAMES or norm.endswith(_CREDENTIAL_SUFFIXES)


def query_credential(conn: HTTPConnection, keyring: KeyRing) -> str | None:
    """The name of the first query parameter that carries a credential, or None.

    Refused: a credential-like name (`credential_like`, whatever its value), and any parameter
    whose value (or name) is a configured key, whatever it is called. Every parameter is
    checked against every key (`KeyRing.verify`), so timing does not tell which matched.
    """
    found: str | None = None
    for name, value in conn.query_params.multi_items():
        hit = credential_like(name)
        for text in (value, name):
            if text and keyring.verify(text) is not None:
                hit = True
        if hit and found is None:
            found = name
    return found


def _query_refusal(name: str) -> str:
    # Names the parameter, never its value (the message may be logged or shown).
    return (
        f"query parameter {name[:40]!r} is refused: API keys and other credentials are not "
        "accepted in the query string (it lands in access logs); send "
        "'Authorization: Bearer <key>'"
    )


# ---------------------------------------------------------------------- REST dependency

# auto_error=False: we answer 401 with our own message; the scheme still appears in OpenAPI.
_bearer = HTTPBearer(
    auto_error=False,
    description="API key: `Authorization: Bearer <key>`. Keys come from AVASERVE_API_KEYS.",
)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


async def current_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """FastAPI dependency: the caller of a REST request, or 401.

    Use through the alias: ``async def get_job(job_id: str, key: CurrentKey) -> ...``.
    """
    keyring = _keyring(request)
    refused = query_credential(request, keyring)
    if refused is not None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, _query_refusal(refused))
    if not keyring.enabled:
        if not _host_is_loopback(request.headers.get("host")):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "This server runs without API keys and answers loopback requests only",
            )
        return Principal(ANONYMOUS_KEY_ID)
    if credentials is None:
        raise _unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
    principal = keyring.verify(credentials.credentials)
    if principal is None:
        raise _unauthorized("Invalid API key")
    return principal


CurrentKey = Annotated[Principal, Depends(current_key)]
"""The authenticated REST caller (401 otherwise)."""


# ---------------------------------------------------------------------- WebSocket dependency


class WsRefusal(WebSocketException):
    """A WebSocket handshake refused before ``accept``, with the HTTP answer it deserves.

    The app's handler (service.app) sends ``status_code`` with the same JSON error body as REST
    (``{"error": <code for the status>, "message": reason}``) and ``headers`` where the ASGI
    server supports denial responses (uvicorn does); elsewhere it closes the handshake with
    ``code``, which the server answers with HTTP 403. Either way no connection is ever
    accepted.
    """

    def __init__(
        self,
        status_code: int,
        reason: str,
        *,
        code: int = WS_POLICY_VIOLATION,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code, reason)
        self.status_code, self.headers = status_code, dict(headers or {})


def _ws_unauthorized(reason: str) -> WsRefusal:
    return WsRefusal(401, reason, headers={"WWW-Authenticate": "Bearer"})


def authenticate_websocket(
    websocket: WebSocket, keyring: KeyRing, allowed_origins: list[str]
) -> WsPrincipal:
    """Check Origin and API key of a WebSocket handshake *before* ``accept``.

    Raises ``WsRefusal``, answered with an HTTP status: 401 without a valid
    key, 403 for a foreign Origin or a non-loopback caller when no key is configured, 400 for
    a credential in the query string (`query_credential`).
    """
    headers = websocket.headers
    refused = query_credential(websocket, keyring)
    if refused is not None:
        raise WsRefusal(400, _query_refusal(refused))
    origin = headers.get("origin")
    if not origin_allowed(origin, headers.get("host"), allowed_origins):
        log.warning("websocket refused: origin not allowed (%s)", origin)
        raise WsRefusal(403, "Origin not allowed")
    offered, proto_token = split_ws_subprotocols(headers.get("sec-websocket-protocol"))
    subprotocol = WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else None
    if not keyring.enabled:
        if not _host_is_loopback(headers.get("host")):
            raise WsRefusal(403, "Loopback requests only")
        return WsPrincipal(Principal(ANONYMOUS_KEY_ID), subprotocol)
    token = bearer_from_header(headers.get("authorization")) or proto_token
    if token is None:
        raise _ws_unauthorized("Missing API key")
    principal = keyring.verify(token)
    if principal is None:
        raise _ws_unauthorized("Invalid API key")
    return WsPrincipal(principal, subprotocol)


async def current_ws_key(websocket: WebSocket) -> WsPrincipal:
    """FastAPI dependency for WebSocket routes (see ``authenticate_websocket``)."""
    return authenticate_websocket(websocket, _keyring(websocket), _allowed_origins(websocket))


CurrentWsKey = Annotated[WsPrincipal, Depends(current_ws_key)]
"""The authenticated WebSocket caller; accept with ``subprotocol=key.subprotocol``."""


# ---------------------------------------------------------------------- log redaction

REDACTED = "[REDACTED]"
# Bearer tokens in headers, `bearer.<token>` subprotocols, and key-looking query parameters.
_TOKEN_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[^\s'\",;]+"),
    re.compile(r"(?i)(bearer\.)[^\s'\",;]+"),
    re.compile(r"(?i)([?&]" + _CREDENTIAL_NAME_RE + r"=)[^&\s'\"]+"),
    re.compile(r"(?i)((?:authorization|x-api-key)['\"]?\s*[:=,]\s*\(?['\"]?)[^\s'\",)&]+"),
]


class Redactor:
    """Replaces configured keys and token-shaped substrings with ``[REDACTED]``."""

    def __init__(self, secrets: Callable[[], Iterable[str]]) -> None:
        self._secrets = secrets

    def __call__(self, text: str) -> str:
        # Longest first, so a key that contains another key is removed whole.
        for secret in sorted(self._secrets(), key=len, reverse=True):
            if secret and secret in text:
                text = text.replace(secret, REDACTED)
        for pattern in _TOKEN_PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        return text


def redact_record(record: logging.LogRecord, redact: Callable[[str], str]) -> None:
    """Redact the record's message template and each argument in place, likewise the
    exception text, which a formatter would otherwise render later from ``exc_info``.

    The args stay a tuple/mapping of the same shape: formatters such as uvicorn's access-log
    formatter unpack them positionally, so consuming them into the message breaks logging.
    Numbers pass through (``%d`` still works); any other object is redacted as its ``str``.
    """

    def clean(value: object) -> object:
        if value is None or isinstance(value, bool | int | float):
            return value
        return redact(value if isinstance(value, str) else str(value))

    record.msg = clean(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(clean(a) for a in record.args)
    elif isinstance(record.args, dict):
        record.args = {k: clean(v) for k, v in record.args.items()}
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """A logging filter version, for handlers configured elsewhere (e.g. a dictConfig)."""

    def __init__(self, keyring: KeyRing) -> None:
        super().__init__()
        self._redact = Redactor(keyring.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record, self._redact)
        return True


_installed: dict[str, Callable[..., logging.LogRecord]] = {}


def install_log_redaction(keyring: KeyRing) -> Callable[[], None]:
    """Redact every log record created from now on, in this process; returns an uninstaller.

    A record factory rather than a filter: filters on the root logger do not see records that
    propagate from child loggers, and uvicorn installs its own handlers after we start, so only
    the factory is guaranteed to see every record. Calling it again replaces the keyring.
    """
    redact = Redactor(keyring.secrets)
    previous = _installed.get("previous") or logging.getLogRecordFactory()
    _installed["previous"] = previous

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record, redact)
        return record

    logging.setLogRecordFactory(factory)

    def uninstall() -> None:
        if _installed.get("previous") is previous:
            logging.setLogRecordFactory(previous)
            _installed.clear()

    return uninstall
