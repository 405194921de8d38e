"""REST results against `avaserve annotate`, record for record (issue 7 acceptance).

    python bench/rest_vs_annotate.py VIDEO [VIDEO ...] [--bundle DIR]

Starts ``avaserve serve`` on a free loopback port (embedded defaults, no key), uploads each
video with ``avaserve submit --wait``, runs ``avaserve annotate`` on the same file and bundle,
both as a user would type them, and compares the two result lists exactly (every field, every
digit). Prints one line per video; exits 1 if any differ. Not a test (CI has the same check on
the tiny test bundle in tests/service/test_app_rest.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import free_port  # noqa: E402

CLI = [sys.executable, "-m", "avaserve.cli"]


def _first_difference(a: list[dict], b: list[dict]) -> str:
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} records"
    for x, y in zip(a, b, strict=True):
        if x != y:
            keys = [k for k in x if x[k] != y.get(k)]
            return f"first at t={x.get('time')} track {x.get('track_id')}: fields {keys}"
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("videos", nargs="+", type=Path)
    ap.add_argument("--bundle", type=Path, default=REPO / "bundles" / "demo")
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVASERVE_")}
    env["AVASERVE_PORT"] = str(port)
    work = Path(tempfile.mkdtemp(prefix="rest-vs-annotate-"))
    log = (work / "serve.log").open("wb")
    server = subprocess.Popen(
        [*CLI, "serve", "--bundle", str(args.bundle)], env=env, stdout=log, stderr=log
    )
    failed = 0
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print(f"server did not come up; see {work / 'serve.log'}")
                return 1
            time.sleep(0.1)
        for video in args.videos:
            rest_out, cli_out = work / f"{video.stem}.rest.json", work / f"{video.stem}.jsonl"
            subprocess.run(
                [*CLI, "submit", str(video), "--server", url, "--wait", "--out", str(rest_out)],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
            subprocess.run(
                [*CLI, "annotate", str(video), "--bundle", str(args.bundle), "--out",
                 str(cli_out), "--quiet"],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
            rest = json.loads(rest_out.read_text())
            cli = [json.loads(line) for line in cli_out.read_text().splitlines()]
            diff = _first_difference(rest, cli)
            failed += bool(diff)
            print(
                f"{video.name}: REST {len(rest)} records, annotate {len(cli)} -> "
                + (f"DIFFERENT ({diff})" if diff else "identical")
            )
    finally:
        server.terminate()
        server.wait(timeout=60)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
