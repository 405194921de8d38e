"""Slow clients against a real `avaserve serve` with its default timeouts (issue 16 acceptance).

    python bench/bench_slow_clients.py [--uploads 20] [--headers 20]

Starts `avaserve serve` on a free loopback port with one API key and default settings, then at
once opens (threads, raw sockets):

* ``--uploads`` uploads with that key, each sending 10 bytes a second after its headers (the
  issue's trickle), and
* ``--headers`` unauthenticated connections sending one header line a second.

For each it records the answer (status) and how long the server held it, and counts the upload
folders on disk while they run and after. The bars: no upload held longer than
``upload_idle_timeout_s`` (30 s) and no header trickle longer than ``header_timeout_s`` (15 s),
plus timer slack; uploads beyond the per-key cap refused at once with 429.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from tempfile import TemporaryDirectory

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import free_port, stop_server, trickle  # noqa: E402

KEY = "bench-key-0123456789abcdef"
SLACK_S = 2.0


def _status(sock: socket.socket) -> int | None:
    try:
        data = sock.recv(64, socket.MSG_PEEK)
    except OSError:
        return None
    return int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else None


def _trickle(
    port: int, head: bytes, piece: bytes, every_s: float, out: list, limit_s: float
) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head)
    held = trickle(sock, piece, every_s, limit_s)
    out.append((held, _status(sock)))
    sock.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "bundles" / "demo")
    ap.add_argument("--uploads", type=int, default=20)
    ap.add_argument("--headers", type=int, default=20)
    args = ap.parse_args()

    port = free_port()
    with TemporaryDirectory() as tmp:
        upload_dir = Path(tmp) / "uploads"
        env = {**os.environ, "AVASERVE_API_KEYS": KEY, "AVASERVE_UPLOAD_DIR": str(upload_dir),
               "AVASERVE_LOG_LEVEL": "warning", "PYTHONPATH": str(REPO)}  # fmt: skip
        cmd = [sys.executable, "-m", "avaserve.cli", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--bundle", str(args.bundle)]
        server = subprocess.Popen(cmd, env=env, cwd=REPO)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        print("server did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.2)
            upload_head = (
                f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer "
                f"{KEY}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000"
                "\r\n\r\n"
            ).encode()
            uploads: list[tuple[float, int | None]] = []
            headers: list[tuple[float, int | None]] = []
            threads = [
                threading.Thread(
                    target=_trickle, args=(port, upload_head, b"x" * 10, 1.0, uploads, 120)
                )
                for _ in range(args.uploads)
            ] + [
                threading.Thread(
                    target=_trickle,
                    args=(port, b"GET /v1/jobs HTTP/1.1\r\n", b"X-Slow: 1\r\n", 1.0, headers, 120),
                )
                for _ in range(args.headers)
            ]
            for t in threads:
                t.start()
            time.sleep(5)
            folders_during = len(list(upload_dir.glob("*"))) if upload_dir.exists() else 0
            for t in threads:
                t.join()
            time.sleep(0.5)
            folders_after = len(list(upload_dir.glob("*"))) if upload_dir.exists() else 0
        finally:
            stop_server(server)

    def summary(rows: list[tuple[float, int | None]]) -> str:
        by: dict[int | None, list[float]] = {}
        for held, status in rows:
            by.setdefault(status, []).append(held)
        return ", ".join(
            f"{len(v)} x {k}: held {min(v):.2f}-{max(v):.2f} s"
            for k, v in sorted(by.items(), key=str)
        )

    print(f"{args.uploads} uploads trickling 10 B/s (one key): {summary(uploads)}")
    print(f"{args.headers} header tricklers, 1 line/s (no key): {summary(headers)}")
    print(f"upload folders on disk: {folders_during} after 5 s, {folders_after} at the end")
    worst_upload = max((h for h, s in uploads if s != 429), default=0.0)
    worst_header = max((h for h, _ in headers), default=0.0)
    ok = worst_upload <= 30 + SLACK_S and worst_header <= 15 + SLACK_S and folders_after == 0
    print(f"verdict: {'PASS' if ok else 'FAIL'} (longest upload held {worst_upload:.2f} s, "
          f"bar 30 s; longest header trickle {worst_header:.2f} s, bar 15 s)")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
