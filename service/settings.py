"""Service configuration: read once from the environment (prefix ``AVASERVE_``) at the edge.

``Settings()`` is built by the CLI (``avaserve serve``) or a test and handed to
``create_app(settings)``; nothing below the app reads it (STYLE.md "config stops at the edge").
Every field maps to one environment variable, ``AVASERVE_<FIELD>`` (case-insensitive), e.g.
``AVASERVE_REDIS_URL=redis://redis:6379/0``. A ``.env`` file is *not* read: secrets belong in the
environment or in ``AVASERVE_API_KEYS_FILE`` (a mounted Kubernetes/Docker secret).

Secrets (API keys, a Redis URL that may carry a password) are ``SecretStr``: their ``repr`` and
``str`` print ``**********``, so logging the settings object never leaks them.
"""

from __future__ import annotations

import ipaddress
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.scheduler import DEFAULT_MAX_GAP_S

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO_ROOT / "bundles" / "demo"
LOOPBACK_HOST = "127.0.0.1"

# API keys travel in `Authorization: Bearer <key>` and, for browsers, inside a
# `Sec-WebSocket-Protocol` value (`bearer.<key>`), which must be an RFC 7230 token. Restricting
# keys to URL-safe characters keeps both working; `secrets.token_urlsafe(32)` produces such keys.
_KEY_RE = re.compile(r"^[A-Za-z0-9._~+\-]{16,256}$")
_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_KEY_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


@dataclass(frozen=True)
class ApiKey:
    """One configured API key. ``name`` is an optional human label from the keys file."""

    secret: str
    name: str | None = None

    def __repr__(self) -> str:  # never print the secret, even in a traceback's locals
        return f"ApiKey(name={self.name!r}, secret='**********')"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def parse_api_keys_file(text: str, *, source: str) -> list[ApiKey]:
    """Parse a keys file: one key per line, optionally ``name:key``; ``#`` starts a comment.

    Raises ValueError naming the file and line (never the key) for a malformed line.
    """
    keys: list[ApiKey] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name: str | None = None
        secret = line
        if ":" in line:
            name, secret = (part.strip() for part in line.split(":", 1))
            if not _KEY_NAME_RE.match(name):
                raise ValueError(
                    f"api_keys_file {source} line {lineno}: key name must be 1-64 characters "
                    "of letters, digits, '.', '_' or '-'"
                )
        if not _KEY_RE.match(secret):
            raise ValueError(
                f"api_keys_file {source} line {lineno}: a key must be 16-256 characters of "
                f"letters, digits and . _ ~ + - ; {_KEY_HINT}"
            )
        keys.append(ApiKey(secret=secret, name=name))
    return keys


def redact_url(url: str) -> str:
    """``redis://user:pass@host:6379/0`` -> ``redis://user:***@host:6379/0`` for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class Settings(BaseSettings):
    """All service settings. See each field's description; env var = ``AVASERVE_`` + name."""

    model_config = SettingsConfigDict(
        env_prefix="AVASERVE_",
        case_sensitive=False,
        extra="ignore",  # unrelated AVASERVE_* variables (e.g. from a future version) are harmless
        validate_default=True,
    )

    # ------------------------------------------------------------------ network
    host: str = Field(
        LOOPBACK_HOST,
        description="Interface to bind. Use 0.0.0.0 in a container. Without any API key the "
        "server binds to loopback regardless (see bind_host_effective).",
    )
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated browser origins (scheme://host[:port]) allowed to open "
        "WebSockets and make CORS requests, besides the page's own origin.",
    )

    # ------------------------------------------------------------------ model + state
    bundle: Path = Field(DEFAULT_BUNDLE, description="Model bundle directory (export's output).")
    redis_url: SecretStr | None = Field(
        None,
        description="redis://[:password@]host:port/db. When set, the feature bank AND the job "
        "queue/state live in Redis (shared by replicas, survive restarts); unset = in-process.",
    )

    # ------------------------------------------------------------------ auth
    api_keys: SecretStr | None = Field(
        None, description="Comma-separated API keys (prefer api_keys_file for production)."
    )
    api_keys_file: Path | None = Field(
        None,
        description="File with one key per line, optionally 'name:key'; '#' comments. Read "
        "once at start-up: rotate keys by updating the secret and restarting (rolling).",
    )

    # ------------------------------------------------------------------ uploads + jobs
    upload_dir: Path = Field(
        Path(tempfile.gettempdir()) / "avaserve-uploads",
        description="Where uploads and job results are written (one sub-directory per job). "
        "With several replicas sharing Redis this must be shared storage (ReadWriteMany).",
    )
    max_upload_bytes: int = Field(
        1024**3, gt=0, description="Largest accepted upload; larger bodies get 413 mid-stream."
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Concurrent jobs this process runs. Each job keeps the batchers busy; more "
        "than 2 on a 2-core machine only adds latency.",
    )
    job_retention_s: int = Field(
        24 * 3600, gt=0, description="Finished jobs (and their files) are deleted after this."
    )
    job_max_attempts: int = Field(
        2,
        ge=1,
        le=10,
        description="Starts a job gets when its worker crashes mid-run; then it is marked failed.",
    )
    job_heartbeat_ttl_s: float = Field(
        30.0,
        ge=1,
        description="A replica that stops heartbeating for this long is declared dead and its "
        "running jobs are re-queued on another (Redis only). Shorter: faster recovery; but a "
        "replica stalled for longer (swapping, a Redis stall) has its jobs run twice.",
    )
    job_finish_retry_s: float = Field(
        120.0,
        ge=0,
        description="How long a worker retries recording a finished job while the job store "
        "(Redis) is unreachable before moving on (housekeeping keeps retrying it).",
    )
    job_stuck_after_s: float = Field(
        120.0,
        gt=0,
        description="A job worker that has not come round its loop for this long is reported "
        "stuck: readiness answers 503 and its job is stopped and failed with a reason.",
    )
    orphan_upload_grace_s: float = Field(
        900.0,
        ge=0,
        description="An upload folder that no job record owns (e.g. after Redis restarted "
        "empty) is removed once nothing in it changed for this long. Keep it above the longest "
        "upload you accept, since a folder still being uploaded has no record yet.",
    )
    redis_api_timeout_s: float = Field(
        0.5,
        gt=0,
        le=10,
        description="Connect and read timeout of the job API's Redis calls: while Redis is "
        "down or stalled, job requests answer 503 with Retry-After within about this long.",
    )
    max_jobs_per_key: int = Field(4, ge=1, description="Unfinished jobs one API key may have.")
    max_jobs_global: int = Field(64, ge=1, description="Unfinished jobs across all keys.")
    max_uploads_per_key: int = Field(
        2,
        ge=1,
        description="Uploads one API key may stream at once (429 + Retry-After beyond). The "
        "job caps apply only once an upload is complete, so without this one key could hold "
        "any number of half-sent uploads, each with its own folder.",
    )
    max_uploads_global: int = Field(
        8, ge=1, description="Uploads this process receives at once (503 + Retry-After beyond)."
    )
    upload_idle_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="An upload that delivers less than upload_min_progress_bytes in this long "
        "is aborted (408), its folder removed: a stalled upload, and one trickling a few bytes "
        "a second, is held no longer than this. Longer tolerates stalled mobile links; shorter "
        "frees slots held by clients that trickle or vanish sooner.",
    )
    upload_min_progress_bytes: int = Field(
        64 * 1024,
        ge=1,
        description="Bytes an upload must deliver within each upload_idle_timeout_s (64 KiB "
        "per 30 s is 2.2 KB/s, far below any real link). 1 = a plain idle timeout.",
    )
    header_timeout_s: float = Field(
        15.0,
        gt=0,
        le=600,
        description="Longest a connection may take to send a request's headers (from the "
        "connection, or the previous response, to the end of the headers); then 408 and "
        "close. Stops clients that hold connections by trickling header lines, before any "
        "authentication can run.",
    )

    # ------------------------------------------------------------------ live streams
    max_streams_per_key: int = Field(2, ge=1, description="Open WebSocket streams per key.")
    max_streams_global: int = Field(16, ge=1, description="Open WebSocket streams per process.")
    max_ws_message_bytes: int = Field(
        4 * 1024**2, gt=0, description="Largest WebSocket message (one JPEG frame or TS chunk)."
    )
    live_queue_frames: int = Field(
        64,
        ge=1,
        description="Frames buffered per live connection before old ones are dropped. More "
        "absorbs network jitter but lets a stream fall further behind.",
    )
    live_send_queue: int = Field(
        16, ge=1, description="Annotation messages buffered per connection for a slow reader."
    )
    live_max_lag_s: float = Field(
        10.0,
        gt=0,
        description="A live client whose annotations stay unread (its send queue full) for "
        "longer than this is closed with 1013 (try again later). A server slower than the "
        "stream never closes it: it annotates every k-th keyframe instead (service/stride.py).",
    )
    max_pts_gap_s: float = Field(
        DEFAULT_MAX_GAP_S,
        gt=0,
        le=3600,
        description="A frame more than this many seconds after the previous one (live or in "
        "an upload) starts a new segment: the keyframes in between are skipped, not filled "
        "in, and tracks restart. Bounds what one frame can cost: up to this many keyframes.",
    )

    # ------------------------------------------------------------------ timeouts + shutdown
    request_timeout_s: float = Field(
        60.0, gt=0, description="Longest a non-upload REST request may take (504 after)."
    )
    grace_period_s: float = Field(
        25.0,
        gt=0,
        description="On SIGTERM: readiness goes 503, in-flight jobs get this long to finish, "
        "then are re-queued. Keep below k8s terminationGracePeriodSeconds minus preStop.",
    )
    retry_after_s: int = Field(
        5, ge=1, description="Retry-After seconds sent with 429/503 when a limit is reached."
    )

    # ------------------------------------------------------------------ runtime
    ort_intra_op_threads: int | None = Field(
        None,
        ge=0,
        description="ONNX Runtime intra-op threads for every graph; 0 = ONNX Runtime's default "
        "(one per core). Unset (the default): chosen per graph from the model's cost "
        "(service/threads.py): a light backbone (the demo bundle) runs every graph on one "
        "thread beside the decoder; a heavy one (R50/R101) gets every core for the backbone. "
        "`avaserve annotate` uses the same policy, so its results equal a REST job's.",
    )
    ort_providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="Comma-separated ONNX Runtime execution providers, in preference order, "
        "e.g. TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Root log level."
    )

    _api_keys: tuple[ApiKey, ...] = PrivateAttr(default=())

    # ------------------------------------------------------------------ validators
    @field_validator("allowed_origins", "ort_providers", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        value = value.strip()
        if not value or any(c in value for c in "/ :") and not _is_ip(value):
            raise ValueError(
                f"host {value!r} is not an IP address or host name; "
                "set AVASERVE_HOST to e.g. 127.0.0.1 or 0.0.0.0"
            )
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        out = []
        for origin in value:
            parts = urlsplit(origin)
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.path not in ("", "/")
                or parts.query
                or parts.fragment
            ):
                raise ValueError(
                    f"allowed_origins entry {origin!r} is not an origin; write "
                    "scheme://host[:port] with no path, e.g. https://app.example.com"
                )
            out.append(f"{parts.scheme}://{parts.netloc}".lower())
        return out

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        parts = urlsplit(value.get_secret_value().strip())
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"redis_url must start with redis://, rediss:// or unix:// (got scheme "
                f"{parts.scheme!r}); e.g. AVASERVE_REDIS_URL=redis://redis:6379/0"
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("redis_url has no host; e.g. AVASERVE_REDIS_URL=redis://redis:6379/0")
        return value

    @field_validator("ort_providers")
    @classmethod
    def _check_providers(cls, value: list[str]) -> list[str]:
        for p in value:
            if not p.endswith("ExecutionProvider"):
                raise ValueError(
                    f"ort_providers entry {p!r} is not an ONNX Runtime provider name; use e.g. "
                    "CPUExecutionProvider or CUDAExecutionProvider"
                )
        if not value:
            raise ValueError("ort_providers is empty; set it to CPUExecutionProvider at least")
        return value

    @model_validator(mode="after")
    def _load_keys(self) -> Settings:
        keys: list[ApiKey] = []
        if self.api_keys is not None:
            for i, secret in enumerate(self.api_keys.get_secret_value().split(",")):
                secret = secret.strip()
                if not secret:
                    continue
                if not _KEY_RE.match(str(secret)):
                    # Name the position, never the value: the message may be logged.
                    raise ValueError(
                        f"api_keys entry #{i + 1} must be 16-256 characters of letters, digits "
                        f"and . _ ~ + - ; {_KEY_HINT}"
                    )
                keys.append(ApiKey(secret=str(secret)))
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(
                    f"api_keys_file {self.api_keys_file} cannot be read ({exc.strerror}); "
                    "mount the secret there or unset AVASERVE_API_KEYS_FILE"
                ) from None
            keys.extend(parse_api_keys_file(text, source=str(self.api_keys_file)))
        secrets = [k.secret for k in keys]
        if len(set(secrets)) != len(secrets):
            raise ValueError("api_keys / api_keys_file list the same key twice; remove the copy")
        if self.max_jobs_per_key > self.max_jobs_global:
            raise ValueError(
                f"max_jobs_per_key ({self.max_jobs_per_key}) exceeds max_jobs_global "
                f"({self.max_jobs_global}); raise AVASERVE_MAX_JOBS_GLOBAL or lower the per-key cap"
            )
        if self.max_uploads_per_key > self.max_uploads_global:
            raise ValueError(
                f"max_uploads_per_key ({self.max_uploads_per_key}) exceeds max_uploads_global "
                f"({self.max_uploads_global}); raise AVASERVE_MAX_UPLOADS_GLOBAL or lower the "
                "per-key cap"
            )
        if self.max_streams_per_key > self.max_streams_global:
            raise ValueError(
                f"max_streams_per_key ({self.max_streams_per_key}) exceeds max_streams_global "
                f"({self.max_streams_global}); raise AVASERVE_MAX_STREAMS_GLOBAL or lower the "
                "per-key cap"
            )
        self._api_keys = tuple(keys)
        return self

    # ------------------------------------------------------------------ derived
    @property
    def api_key_entries(self) -> tuple[ApiKey, ...]:
        """Every configured key (env list first, then the file), validated."""
        return self._api_keys

    @property
    def auth_enabled(self) -> bool:
        return bool(self._api_keys)

    @property
    def redis_url_value(self) -> str | None:
        """The Redis URL in clear, for creating clients only (log ``redis_url_redacted``)."""
        return None if self.redis_url is None else self.redis_url.get_secret_value().strip()

    @property
    def redis_url_redacted(self) -> str | None:
        url = self.redis_url_value
        return None if url is None else redact_url(url)

    def bind_host_effective(self) -> tuple[str, str | None]:
        """The host to bind, and a warning to print at start-up (None when all is well).

        With no API key configured, anyone who can reach the port can use the service, so the
        server binds to loopback only, whatever ``host`` says, and says so.
        """
        if self.auth_enabled:
            return self.host, None
        if _is_loopback(self.host):
            return self.host, (
                f"No API key configured: authentication is OFF and the server listens on "
                f"{self.host} (this machine only). Set AVASERVE_API_KEYS or "
                "AVASERVE_API_KEYS_FILE to serve other machines."
            )
        return LOOPBACK_HOST, (
            f"No API key configured: binding to {LOOPBACK_HOST} instead of {self.host} so the "
            "unauthenticated service is reachable from this machine only. Set AVASERVE_API_KEYS "
            "or AVASERVE_API_KEYS_FILE to listen on other interfaces."
        )


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
