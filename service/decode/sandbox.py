"""The separate decoder process (defence 5 of ``service.decode``): the child's hardening and
its side of the pipe protocol, the server's side (``_ChildLink``: bounded messages, a waiting
budget, a kill), the spare interpreter, and the public file API ``probe`` / ``decode_frames``."""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing.connection
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import av.container
import av.video.stream
import numpy as np

from service.decode.session import (
    ClosesOnExit,
    DecodedFrame,
    VideoInfo,
    _iter_in_process,
    _out_of_memory,
    _probe_in_process,
    _Session,
)
from service.decode.sniff import (
    _fail,
)
from service.errors import VIDEO_INPUT_REASONS, VideoInputError
from service.limits import DecodeLimits

_PIPE_BYTES = 1 << 20  # decoder -> server pipe capacity: the prefetch bound


# Decoder -> server messages on a raw pipe: a fixed header, then `length` payload bytes
# (RGB pixels for a frame, UTF-8 JSON otherwise). Raw framing lets the server read pixels
# straight into the frame's numpy array, one copy out of the kernel, and never unpickle.
_HEADER = struct.Struct("<BIQdII")  # kind, length, index, pts_seconds, height, width
_MSG_FRAME, _MSG_INFO, _MSG_ERROR, _MSG_DONE = 1, 2, 3, 4
_MAX_TEXT = 64 * 1024


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[os.write(fd, view) :]


def _send(
    fd: int,
    kind: int,
    payload: bytes | memoryview = b"",
    *,
    index: int = 0,
    pts: float = 0.0,
    height: int = 0,
    width: int = 0,
) -> None:
    length = memoryview(payload).nbytes
    _write_all(fd, _HEADER.pack(kind, length, index, pts, height, width))
    _write_all(fd, payload)


def _send_error(fd: int, reason: str, message: str) -> None:
    payload = json.dumps({"reason": reason, "message": message[:1000]}).encode()
    with contextlib.suppress(OSError):
        _send(fd, _MSG_ERROR, payload)


def _harden_child(limits: DecodeLimits, *, cap_cpu: bool, idle: bool = False) -> None:
    """Runs first in the decoder process: lower its limits for the rest of its life.
    ``idle``: Linux's SCHED_IDLE class too (service/threads.py, `ThreadPolicy.decode_idle`)."""
    # FFmpeg logs to stderr; with RLIMIT_FSIZE=0 a write to a regular-file stderr (pytest's
    # capture, a log file) would kill us with SIGXFSZ. Point stdio at /dev/null instead.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    av.logging.set_level(None)
    with contextlib.suppress(OSError):
        os.nice(5)  # decoding yields to the server's event loop and inference
    if idle:
        from service.threads import idle_priority

        idle_priority(whole_process=True)  # FFmpeg's threads, started later, inherit it
    mem = int(limits.max_memory_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    if cap_cpu:
        cpu = math.ceil(limits.max_wall_s * limits.decoder_threads) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _lock_files() -> None:
    """After the input is open: no new file descriptors (no other files, no sockets)."""
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, highest + 1))


def _child_file(
    mode: str,
    path: str,
    limits: DecodeLimits,
    short_side: int | None,
    conn: int,
    *,
    idle: bool = False,
) -> None:
    """Decoder process entry point for a file: probe, or probe and stream frames."""
    try:
        _harden_child(limits, cap_cpu=True, idle=idle)
        session = _Session(Path(path), limits)
        _lock_files()
        _send(conn, _MSG_INFO, json.dumps(asdict(session.info)).encode())
        if mode == "decode":
            shaper = session.shaper(short_side)
            for frame in session.raw_frames():
                _send_frame(conn, shaper(frame))
        _send(conn, _MSG_DONE)
    except VideoInputError as e:
        _send_error(conn, e.reason, e.message)
    except MemoryError:
        _send_error(conn, "too_large", _out_of_memory(limits).message)
    except Exception as e:  # anything else a hostile file provokes is reported, not raised
        _send_error(conn, "corrupt", f"The video could not be decoded ({type(e).__name__}).")
    finally:
        with contextlib.suppress(OSError):
            os.close(conn)


def _send_frame(fd: int, frame: DecodedFrame) -> None:
    image = np.ascontiguousarray(frame.image)  # (H, W, 3); no copy when already contiguous
    h, w, _ = image.shape
    _send(fd, _MSG_FRAME, image.data, index=frame.index, pts=frame.pts_seconds, height=h, width=w)


_REPO_ROOT = Path(__file__).resolve().parents[2]
_CHILD_ENV = frozenset(
    {"PATH", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "PYTHONHOME", "VIRTUAL_ENV", "SYSTEMROOT"}
)


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(Exception):
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)


@dataclass
class _Interpreter:
    """A started decoder interpreter that has not been sent its request yet.

    Starting one (interpreter start, importing PyAV and numpy) is most of the time to the
    first frame of a short upload. `prestart` pays it ahead of need; the child
    touches no file and lowers no limit until its request arrives, so a spare is the same as a
    freshly started child."""

    process: subprocess.Popen[bytes]
    out_r: int  # decoder -> server
    in_w: int  # server -> decoder

    @classmethod
    def start(cls) -> _Interpreter:
        out_r, out_w = os.pipe()  # decoder -> server
        in_r, in_w = os.pipe()  # server -> decoder
        _grow_pipe(out_r)
        # Only what an interpreter needs to start: the server's environment may hold API keys
        # and database URLs, which a decoder exploited by a crafted file should never see.
        env = {k: v for k, v in os.environ.items() if k in _CHILD_ENV}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        try:
            process = subprocess.Popen(
                [sys.executable, "-B", "-m", "service.decode", str(out_w), str(in_r)],
                pass_fds=(out_w, in_r),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd="/",  # a relative name inside a hostile file resolves to nothing useful
            )
        except BaseException:
            os.close(out_r)
            os.close(in_w)
            raise
        finally:
            os.close(out_w)
            os.close(in_r)
        return cls(process, out_r, in_w)

    def discard(self, *, close_input: bool = True) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5.0)
        os.close(self.out_r)
        if close_input:
            os.close(self.in_w)


_spare_lock = threading.Lock()
_spare: _Interpreter | None = None


def prestart() -> None:
    """Start a decoder interpreter now for the next `decode_frames` / `probe` / `LiveDecoder`.

    One spare at most; the next decode takes it (and runs exactly as with a fresh child), later
    ones start their own. Call it where the wait does not matter (while models load, after a
    file is done); `discard_spare` ends it.
    """
    global _spare
    with _spare_lock:
        if _spare is not None and _spare.process.poll() is None:
            return
        stale, _spare = _spare, None
    if stale is not None:
        stale.discard()
    fresh = _Interpreter.start()
    with _spare_lock:
        keep = _spare is None  # another thread may have started one meanwhile
        if keep:
            _spare = fresh
    if not keep:
        fresh.discard()


def discard_spare() -> None:
    """End the spare decoder interpreter, if there is one."""
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None:
        spare.discard()


def _take_spare() -> _Interpreter | None:
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None and spare.process.poll() is not None:
        spare.discard()  # it died while waiting (killed from outside): start a fresh one
        return None
    return spare


class _ChildLink:
    """The server's end of one decoder process: bounded messages, a waiting budget, a kill.

    The child is a fresh interpreter (`python -m service.decode OUT_FD IN_FD`), not a fork of
    the server: forking a threaded server is unsafe, and multiprocessing's spawn/forkserver
    re-import the server's `__main__` in every child. The request travels as JSON on IN_FD.
    """

    def __init__(
        self, request: dict[str, Any], limits: DecodeLimits, max_output_pixels: int
    ) -> None:
        self.limits = limits
        self.max_message = _HEADER.size + 3 * max_output_pixels + _MAX_TEXT
        request = {**request, "limits": asdict(limits)}
        spare = _take_spare()
        try:
            interpreter = spare or _Interpreter.start()
            self.input = multiprocessing.connection.Connection(interpreter.in_w, readable=False)
            self.input.send_bytes(json.dumps(request).encode())
        except BrokenPipeError:
            if spare is None:
                raise
            # The spare died between the check and the send: start afresh. The Connection owns
            # in_w now, so it closes that fd; discard() closes the rest.
            self.input.close()
            spare.discard(close_input=False)
            interpreter = _Interpreter.start()
            self.input = multiprocessing.connection.Connection(interpreter.in_w, readable=False)
            self.input.send_bytes(json.dumps(request).encode())
        self.process = interpreter.process
        out_r = interpreter.out_r
        self.fd = out_r
        self._poller = select.poll()
        self._poller.register(out_r, select.POLLIN)
        self.max_pixels = max_output_pixels
        self.waited_s = 0.0
        self.closed = False
        self._close_lock = threading.Lock()

    def receive(self, budget_s: float, what: str) -> _Message:
        """Next message. Time spent waiting is charged to `waited_s`, which may not exceed
        `budget_s`; every read waits only for the budget left, so a child that stalls even in
        the middle of a message cannot hang the server."""
        header = bytearray(_HEADER.size)
        if not self._read_exact(memoryview(header), budget_s, what):
            raise self._died()
        kind, length, index, pts, height, width = _HEADER.unpack(header)
        if kind == _MSG_FRAME:
            if height * width > self.max_pixels or length != height * width * 3:
                raise self._protocol_error()
            image = np.empty((height, width, 3), dtype=np.uint8)  # (H, W, 3) RGB
            if not self._read_exact(image.data.cast("B"), budget_s, what):
                raise self._died()
            if not math.isfinite(pts):
                raise self._protocol_error()
            return _Message(kind, DecodedFrame(pts_seconds=pts, image=image, index=index), b"")
        if kind not in (_MSG_INFO, _MSG_ERROR, _MSG_DONE) or length > _MAX_TEXT:
            raise self._protocol_error()
        payload = bytearray(length)
        if not self._read_exact(memoryview(payload), budget_s, what):
            raise self._died()
        return _Message(kind, None, bytes(payload))

    def _read_exact(self, view: memoryview, budget_s: float, what: str) -> bool:
        """Fill `view` from the pipe; False at end of file (the child exited)."""
        while view.nbytes:
            remaining = budget_s - self.waited_s
            start = time.monotonic()
            if math.isinf(remaining):
                events = self._poller.poll()
            else:
                events = self._poller.poll(max(0, math.ceil(remaining * 1000)))
            self.waited_s += time.monotonic() - start
            if not events:
                self.kill()
                raise _fail(
                    "timeout",
                    f"Decoding took longer than the {budget_s:g} s limit while {what}. The file "
                    "may be damaged or crafted to be slow; re-encode it and upload again.",
                )
            try:
                n = os.readv(self.fd, [view])
            except OSError:
                return False
            if n == 0:
                return False
            view = view[n:]
        return True

    def _protocol_error(self) -> VideoInputError:
        self.kill()
        return _fail("corrupt", "The decoder sent a malformed message; the file is not usable.")

    def _died(self) -> VideoInputError:
        try:
            code: int | None = self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            code = None
        self.kill()
        if code in (-signal.SIGXCPU, -signal.SIGKILL):
            # SIGXCPU: our RLIMIT_CPU; SIGKILL: the hard CPU limit or the kernel's OOM killer.
            return _fail("timeout", "The decoder ran out of its CPU or memory budget on this file.")
        return _fail(
            "corrupt",
            f"The decoder stopped on this file (exit status {code}). It is damaged or crafted; "
            "re-encode it and upload again.",
        )

    def stop(self) -> None:
        """Kill the child; its pipe then reads as end of file (fds stay open for a reader)."""
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5.0)

    def kill(self) -> None:
        """Kill the child and close both pipes. Safe to call more than once, from any thread."""
        self.stop()
        with self._close_lock:
            if not self.closed:
                self.closed = True
                os.close(self.fd)
                self.input.close()


@dataclass(frozen=True)
class _Message:
    kind: int
    frame: DecodedFrame | None
    payload: bytes


def _error_from(payload: bytes) -> VideoInputError:
    """Rebuild an error the child reported, trusting nothing in it but a known reason."""
    try:
        data = json.loads(payload.decode("utf-8", errors="replace"))
        reason, message = str(data["reason"]), str(data["message"])[:1000]
    except (ValueError, KeyError, TypeError):
        return _fail("corrupt", "The decoder reported an unreadable error for this file.")
    return _fail(reason if reason in VIDEO_INPUT_REASONS else "corrupt", message)


def _info_from(payload: bytes) -> VideoInfo:
    try:
        data = json.loads(payload)
        info = VideoInfo(**data)
        for name in ("width", "height", "coded_width", "coded_height", "rotation"):
            if not isinstance(getattr(info, name), int):
                raise TypeError(name)
        return info
    except (ValueError, TypeError):
        raise _fail("corrupt", "The decoder reported unreadable stream information.") from None


def _existing(path: str | os.PathLike[str]) -> str:
    """Absolute path of a regular file. A missing file is the caller's bug, not bad input."""
    absolute = os.path.abspath(os.fspath(path))
    if not os.path.isfile(absolute):
        raise FileNotFoundError(f"no video file at {absolute}")
    return absolute


def _expect_info(link: _ChildLink, limits: DecodeLimits) -> VideoInfo:
    message = link.receive(limits.max_probe_s, "reading the file header")
    if message.kind == _MSG_ERROR:
        raise _error_from(message.payload)
    if message.kind != _MSG_INFO:
        raise _fail("corrupt", "The decoder sent an unexpected message.")
    return _info_from(message.payload)


def probe(
    path: str | os.PathLike[str], limits: DecodeLimits | None = None, *, isolated: bool = True
) -> VideoInfo:
    """Validate a video file and describe it, without decoding more than its first frame.

    Raises VideoInputError for anything the service will not decode. `isolated=False` runs in
    this process: only for trusted files and for measuring the isolation's cost.
    """
    limits = limits or DecodeLimits()
    if not isolated:
        return _probe_in_process(Path(path), limits)
    request = {"mode": "probe", "path": _existing(path), "short_side": None}
    link = _ChildLink(request, limits, 0)
    try:
        return _expect_info(link, limits)
    finally:
        link.kill()


class VideoDecoder(ClosesOnExit):
    """Frames of one video file, in presentation order. Iterate it; close it (or use `with`).

    Construction probes the file (raising VideoInputError early); iteration may still raise
    VideoInputError when a cap is hit or the data turns out damaged part-way through.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        limits: DecodeLimits,
        *,
        short_side: int | None,
        isolated: bool,
        idle: bool = False,
    ) -> None:
        if short_side is not None and short_side <= 0:
            raise ValueError(f"short_side must be a positive number of pixels, got {short_side}")
        self.limits = limits
        self.info: VideoInfo
        self._link: _ChildLink | None = None
        self._local: Iterator[DecodedFrame] | None = None
        self._done = False
        self._first: DecodedFrame | None = None
        if isolated:
            request = {
                "mode": "decode",
                "path": _existing(path),
                "short_side": short_side,
                "idle": bool(idle),
            }
            self._link = _ChildLink(request, limits, limits.max_pixels)
            try:
                self.info = _expect_info(self._link, limits)
            except BaseException:
                self.close()
                raise
            self._link.waited_s = 0.0  # the decode budget starts after the probe
        else:
            infos: list[VideoInfo] = []
            self._local = _iter_in_process(Path(path), limits, short_side, infos.append)
            try:
                first = next(self._local)
            except StopIteration:
                first = None
            except BaseException:
                self.close()
                raise
            self.info = infos[0]
            self._first = first

    @property
    def decode_wait_s(self) -> float:
        """Seconds the caller has spent waiting for the decoder process (isolated mode)."""
        return self._link.waited_s if self._link is not None else 0.0

    def __iter__(self) -> Iterator[DecodedFrame]:
        return self

    def __next__(self) -> DecodedFrame:
        if self._done:
            raise StopIteration
        try:
            if self._local is not None:
                if self._first is not None:
                    first, self._first = self._first, None
                    return first
                return next(self._local)
            assert self._link is not None
            message = self._link.receive(self.limits.max_wall_s, "decoding frames")
            if message.frame is not None:
                return message.frame
            if message.kind == _MSG_ERROR:
                raise _error_from(message.payload)
            self.close()
            raise StopIteration
        except (VideoInputError, StopIteration):
            self.close()
            raise

    def close(self) -> None:
        """Stop decoding and free the decoder process. Safe to call more than once."""
        self._done = True
        if self._link is not None:
            self._link.kill()
        if self._local is not None:
            closer = getattr(self._local, "close", None)
            if closer is not None:
                closer()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def decode_frames(
    path: str | os.PathLike[str],
    limits: DecodeLimits | None = None,
    *,
    short_side: int | None = None,
    isolated: bool = True,
    idle: bool = False,
) -> VideoDecoder:
    """Decode a video file into frames resized once so their short side is `short_side` pixels
    (None keeps the size), stamped with presentation time in seconds, rotation applied.
    ``idle``: the decoder process runs in Linux's SCHED_IDLE class (`ThreadPolicy.decode_idle`;
    in-process decoding runs in the caller's thread, whose priority is the caller's to set).

    The returned VideoDecoder has `.info` (a VideoInfo) and iterates DecodedFrames. Frames reach
    the caller through a 1 MiB pipe: decoding runs at most that far ahead of consumption.
    """
    return VideoDecoder(
        path, limits or DecodeLimits(), short_side=short_side, isolated=isolated, idle=idle
    )


def _lowest_fd(fd: int) -> int:
    low = os.dup(fd)  # the lowest free number
    if low < fd:
        os.close(fd)
        return low
    os.close(low)
    return fd
