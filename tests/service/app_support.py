"""Helpers for the app tests: a tiny bundle built once per session, and a real server process.

Loaded by path from the test modules (pytest runs with --import-mode=importlib).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
KEY_A = "test-key-alpha-0123456789abcdef"
KEY_B = "test-key-bravo-0123456789abcdef"


def tiny_bundle(root: Path, assets: Path) -> Path:
    """A random-init tiny-preset bundle with the real YOLOX-nano detector, built once into
    ``root`` (the session's base temp dir, so every test module shares it)."""
    out = root / "app_tiny_bundle"
    if (out / "manifest.json").is_file():
        return out
    from export.bundle import DetectorSource, build_bundle, random_init_model

    loaded = random_init_model("slowfast_tiny", seed=0)
    build_bundle(
        loaded,
        out,
        detector=DetectorSource("yolox", assets / "detector" / "yolox_nano.onnx"),
        parity_video=assets / "video" / "basketball_2people.mp4",
        parity_keyframes=1,
        slim=False,
        force=True,
    )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Server:
    """``avaserve serve`` in a subprocess on a free loopback port; output goes to ``log``."""

    def __init__(self, bundle: Path, tmp: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"server-{self.port}.log"
        self.env = {
            **os.environ,
            "AVASERVE_UPLOAD_DIR": str(tmp / f"uploads-{self.port}"),
            "AVASERVE_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.bundle = bundle
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> Server:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "avaserve.cli", "serve", "--bundle", str(self.bundle),
             "--port", str(self.port), "--host", "127.0.0.1"],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def running_server(bundle: Path, tmp: Path, **env: str) -> Iterator[Server]:
    server = Server(bundle, tmp, **env).start()
    try:
        yield server
    finally:
        server.stop()
