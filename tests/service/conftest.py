"""Fixtures for service tests: a private redis-server per test (see redis_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis_server as redis_server_mod


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Any]:
    """A fresh, empty redis-server on a free port; stopped after the test."""
    try:
        server = redis_server_mod.RedisServer(tmp_path)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.stop()
