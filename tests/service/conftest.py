"""Fixtures for service tests: a private redis-server per test (see redis_server.py)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# pytest runs with --import-mode=importlib, so sibling modules are not importable by name;
# load the helper by path once and share it.
_spec = importlib.util.spec_from_file_location(
    "avaserve_tests_redis_server", Path(__file__).with_name("redis_server.py")
)
assert _spec is not None and _spec.loader is not None
redis_server_mod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = redis_server_mod
_spec.loader.exec_module(redis_server_mod)


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
