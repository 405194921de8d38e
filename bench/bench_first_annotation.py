"""Cold start: seconds from running `avaserve serve` to the first annotation a user sees.

    python bench/bench_first_annotation.py [--bundle DIR] [--video PATH]
    python bench/bench_first_annotation.py --command "make run" --cwd FRESH_CLONE

The second form times the README's run command itself on a fresh clone: virtual environment,
install and start-up included (only the live figure: the venv is built once, by that run).

Launches ``avaserve serve`` as a new user would (a fresh process, embedded defaults, no Redis,
no API key -> loopback), then, as soon as the port answers:

* live: streams the video over the WebSocket (``avaserve watch``'s client) and stops the clock
  at the first ``annotation`` message;
* REST: uploads it (``avaserve submit``'s request) and stops the clock when the job is done.

Prints the figures and writes them to bench/results/first_annotation.json. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import free_port  # noqa: E402
from service.serve_cli import stream_video  # noqa: E402

DEFAULT_VIDEO = REPO.parent / "shared" / "assets" / "video" / "basketball_2people.mp4"


def _launch(
    bundle: Path | None, port: int, log: Path, command: str | None = None, cwd: Path = REPO
) -> tuple[subprocess.Popen[bytes], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVASERVE_")}
    env["AVASERVE_PORT"] = str(port)
    if command is not None:  # a shell command line, e.g. the README's `make run`
        cmd: str | list[str] = command
    else:
        cmd = [sys.executable, "-m", "avaserve.cli", "serve"]
        if bundle is not None:
            cmd += ["--bundle", str(bundle)]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        shell=command is not None,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so the whole group (make and its server) can be stopped
    )
    return proc, t0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    proc.wait(timeout=60)


def _wait_up(url: str, proc: subprocess.Popen[bytes], path: str) -> None:
    while proc.poll() is None:
        try:
            if httpx.get(url + path, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server exited with {proc.returncode}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None, help="default: the serve default")
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument(
        "--command",
        default=None,
        help="shell command that starts the server instead of `avaserve serve` (it gets\n"
        'AVASERVE_PORT), e.g. "make run"; only the live figure is then measured',
    )
    ap.add_argument("--cwd", type=Path, default=REPO, help="where --command runs")
    ap.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "first_annotation.json"
    )
    args = ap.parse_args()
    log = Path("/tmp") / f"avaserve-first-annotation-{os.getpid()}.log"
    result: dict[str, Any] = {
        "video": str(args.video),
        "bundle": str(args.bundle or "default"),
        "command": args.command or "avaserve serve",
        "cwd": str(args.cwd),
    }

    # Live: command -> first annotation over the WebSocket.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc, t0 = _launch(args.bundle, port, log, args.command, args.cwd)
    try:
        _wait_up(url, proc, "/healthz")
        result["serve_to_listening_s"] = round(time.monotonic() - t0, 3)
        first: list[float] = []

        def on_message(msg: dict[str, Any]) -> None:
            if msg.get("type") == "annotation" and not first:
                first.append(time.monotonic())

        asyncio.run(
            stream_video(
                args.video, server=url, headers={}, stream_id="cold", fps=10.0,
                on_message=on_message,
            )
        )  # fmt: skip
        result["serve_to_first_live_annotation_s"] = round(first[0] - t0, 3)
        result["serve_to_ready_s"] = None
    finally:
        _stop(proc)
    if args.command is not None:
        _write(result, args.out)
        return

    # REST: command -> job done (all records available).
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc, t0 = _launch(args.bundle, port, log)
    try:
        _wait_up(url, proc, "/readyz")
        result["serve_to_ready_s"] = round(time.monotonic() - t0, 3)
        job = httpx.post(
            url + "/v1/jobs", params={"name": args.video.name}, content=args.video.read_bytes(),
            timeout=60,
        ).json()  # fmt: skip
        while True:
            state = httpx.get(f"{url}/v1/jobs/{job['id']}").json()["state"]
            if state in ("done", "failed"):
                break
            time.sleep(0.05)
        result["serve_to_rest_results_s"] = round(time.monotonic() - t0, 3)
        result["rest_state"] = state
    finally:
        _stop(proc)
    _write(result, args.out)


def _write(result: dict[str, Any], out: Path) -> None:
    print(json.dumps(result, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
