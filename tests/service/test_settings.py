"""Settings: environment parsing, validation messages, secrets never printed, loopback rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import DEFAULT_BUNDLE, Settings, parse_api_keys_file, redact_url

KEY_A = "a" * 20 + "-A1"
KEY_B = "B_" + "b" * 30


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("AVASERVE_"):
            monkeypatch.delenv(name)


def test_defaults_are_safe_and_embedded() -> None:
    s = Settings()
    assert s.bundle == DEFAULT_BUNDLE and s.bundle.parts[-2:] == ("bundles", "demo")
    assert s.redis_url is None and not s.auth_enabled
    assert s.host == "127.0.0.1"
    assert s.ort_providers == ["CPUExecutionProvider"]


def test_env_prefix_and_csv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVASERVE_PORT", "9001")
    monkeypatch.setenv("AVASERVE_API_KEYS", f"{KEY_A}, {KEY_B}")
    monkeypatch.setenv("AVASERVE_ALLOWED_ORIGINS", "https://App.example.com, http://localhost:3000")
    monkeypatch.setenv("AVASERVE_REDIS_URL", "redis://:hunter2@redis:6379/0")
    monkeypatch.setenv("AVASERVE_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("AVASERVE_ORT_PROVIDERS", "CUDAExecutionProvider,CPUExecutionProvider")
    s = Settings()
    assert s.port == 9001
    assert [k.secret for k in s.api_key_entries] == [KEY_A, KEY_B]
    assert s.allowed_origins == ["https://app.example.com", "http://localhost:3000"]
    assert s.redis_url_value == "redis://:hunter2@redis:6379/0"
    assert s.redis_url_redacted == "redis://:***@redis:6379/0"
    assert s.log_level == "warning"
    assert s.ort_providers[0] == "CUDAExecutionProvider"


def test_secrets_never_in_repr_or_dump(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"ci:{KEY_B}\n")
    monkeypatch.setenv("AVASERVE_API_KEYS", KEY_A)
    monkeypatch.setenv("AVASERVE_API_KEYS_FILE", str(keys))
    monkeypatch.setenv("AVASERVE_REDIS_URL", "redis://:hunter2@redis:6379/0")
    s = Settings()
    text = " ".join([repr(s), str(s), str(s.model_dump()), repr(s.api_key_entries)])
    for secret in (KEY_A, KEY_B, "hunter2"):
        assert secret not in text
    assert [k.name for k in s.api_key_entries] == [None, "ci"]


def test_keys_file_format(tmp_path: Path) -> None:
    text = f"# comment\n\n{KEY_A}\nci-bot: {KEY_B}  # trailing comment\n"
    keys = parse_api_keys_file(text, source="f")
    assert [(k.name, k.secret) for k in keys] == [(None, KEY_A), ("ci-bot", KEY_B)]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AVASERVE_API_KEYS": "short"}, "api_keys entry #1 must be 16-256"),
        ({"AVASERVE_API_KEYS": f"{KEY_A},{KEY_A}"}, "same key twice"),
        ({"AVASERVE_API_KEYS_FILE": "/nonexistent/keys"}, "api_keys_file /nonexistent/keys"),
        ({"AVASERVE_REDIS_URL": "http://redis:6379"}, "redis_url must start with redis://"),
        ({"AVASERVE_ALLOWED_ORIGINS": "https://a.com/path"}, "is not an origin"),
        ({"AVASERVE_ALLOWED_ORIGINS": "a.com"}, "scheme://host"),
        ({"AVASERVE_PORT": "0"}, "port"),
        ({"AVASERVE_HOST": "http://0.0.0.0"}, "AVASERVE_HOST"),
        ({"AVASERVE_ORT_PROVIDERS": "CUDA"}, "not an ONNX Runtime provider"),
        ({"AVASERVE_MAX_STREAMS_PER_KEY": "50"}, "AVASERVE_MAX_STREAMS_GLOBAL"),
        ({"AVASERVE_MAX_JOBS_PER_KEY": "500"}, "AVASERVE_MAX_JOBS_GLOBAL"),
        ({"AVASERVE_LOG_LEVEL": "loud"}, "log_level"),
    ],
)
def test_invalid_settings_name_field_and_fix(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert message in str(info.value)


def test_bad_key_in_file_names_line_not_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY_A}\nname:has space in it\n")
    with pytest.raises(ValidationError) as info:
        Settings(api_keys_file=keys)
    assert "line 2" in str(info.value) and "has space" not in str(info.value)


@pytest.mark.parametrize(
    ("host", "keys", "bind", "warns"),
    [
        ("0.0.0.0", None, "127.0.0.1", "binding to 127.0.0.1 instead of 0.0.0.0"),
        ("127.0.0.1", None, "127.0.0.1", "authentication is OFF"),
        ("::1", None, "::1", "authentication is OFF"),
        ("0.0.0.0", KEY_A, "0.0.0.0", None),
    ],
)
def test_bind_host_effective(host: str, keys: str | None, bind: str, warns: str | None) -> None:
    s = Settings(host=host, api_keys=keys)
    got, warning = s.bind_host_effective()
    assert got == bind
    if warns is None:
        assert warning is None
    else:
        assert warning is not None and warns in warning


def test_redact_url() -> None:
    assert redact_url("redis://redis:6379/0") == "redis://redis:6379/0"
    assert redact_url("rediss://u:p@h:1/2") == "rediss://u:***@h:1/2"


def test_uvicorn_config_follows_settings_and_skips_deflate() -> None:
    """`avaserve serve` and the lag bench share one uvicorn config: the WebSocket message
    cap follows the settings (a frame plus its header), no permessage-deflate (JPEG and
    H.264 do not compress), and no Server header."""
    from service.serve_cli import uvicorn_config

    settings = Settings(port=8123, max_ws_message_bytes=1000)
    config = uvicorn_config(object(), settings, "127.0.0.1")
    assert (config.host, config.port) == ("127.0.0.1", 8123)
    assert config.ws_max_size == 1064
    assert config.ws_per_message_deflate is False
    assert config.server_header is False and config.proxy_headers is False
    assert uvicorn_config(object(), settings, "::1", log_level="warning").log_level == "warning"
