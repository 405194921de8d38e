"""A throwaway redis-server for tests: own port, no persistence (unless given a config file),
stoppable and restartable.

Never the system Redis on 6379: tests must not touch shared state.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on 127.0.0.1:port, run from ``workdir``. With ``config``, that
    file's settings apply (persistence included); port, bind and dir are still ours."""

    def __init__(self, workdir: Path, port: int | None = None, config: Path | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server not on PATH (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 5.0) -> None:
        persistence = ["--save", "", "--appendonly", "no"] if self.config is None else []
        self.proc = subprocess.Popen(
            [
                self.binary, *([str(self.config)] if self.config else []),
                "--port", str(self.port), "--bind", "127.0.0.1",
                *persistence, "--dir", str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ping(self.port):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.02)
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING")

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None, "server not started"
        os.kill(self.proc.pid, sig)

    def pause(self) -> None:
        """SIGSTOP: connections hang (the kernel still accepts them)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL and reap: connections are refused; all data is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def restart(self) -> None:
        """Kill (if running) and start again, empty, on the same port."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()  # a stopped process would ignore SIGTERM until continued
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
