"""`python -m service.decode OUT_FD IN_FD`: the decoder process (started by
``service.decode.sandbox._Interpreter``). One request (JSON) on IN_FD, replies on OUT_FD."""

from __future__ import annotations

import json
import multiprocessing.connection
import sys

from service.decode.live import _child_live
from service.decode.sandbox import _MAX_TEXT, _child_file, _lowest_fd
from service.limits import DecodeLimits


def _worker_main(argv: list[str]) -> None:
    """`python -m service.decode OUT_FD IN_FD`: one request (JSON) on IN_FD, replies on OUT_FD."""
    # The pipe descriptors keep the numbers they had in the server (high in a busy server, or
    # when this interpreter was pre-started): move them to the lowest free numbers, so the
    # descriptor table, and the RLIMIT_NOFILE that `_lock_files` derives from it, stay small.
    out, inp_fd = (_lowest_fd(int(a)) for a in argv[:2])
    inp = multiprocessing.connection.Connection(inp_fd, writable=False)
    request = json.loads(inp.recv_bytes(_MAX_TEXT))
    limits = DecodeLimits(**request["limits"])
    short_side = request["short_side"]
    if request["mode"] == "live":
        _child_live(request["kind"], limits, short_side, float(request["fps_hint"]), inp, out)
    else:
        inp.close()
        _child_file(
            request["mode"],
            request["path"],
            limits,
            short_side,
            out,
            idle=bool(request.get("idle")),
        )


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
