"""service.decode: hostile input ends in one clear VideoInputError; real input decodes right.

Every hostile case runs with short probe/decode budgets (`FAST`), so a hang would surface as a
`timeout` error from the decoder's own watchdog rather than a stuck test run.
"""

from __future__ import annotations

import os
import pickle
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import hostile
import numpy as np
import pytest

import service.decode.sandbox as decode_module
from service.decode import DecodedFrame, LiveDecoder, decode_frames, probe, sniff_format
from service.decode.session import _FrameShaper
from service.decode.sniff import _FORMAT_WHITELIST
from service.errors import VideoInputError
from service.limits import DecodeLimits

FAST = DecodeLimits(max_probe_s=15.0, max_wall_s=30.0)
MB = 1 << 20


def _levels(frames: list[DecodedFrame]) -> list[int]:
    """Frame index encoded by hostile.frame_image (8 * index + small ramp), read back."""
    return [round((float(f.image.mean()) - 15.0) / 8.0) for f in frames]


def _decode_all(
    path: Path,
    limits: DecodeLimits = FAST,
    *,
    short_side: int | None = None,
    isolated: bool = True,
) -> list[DecodedFrame]:
    with decode_frames(path, limits, short_side=short_side, isolated=isolated) as decoder:
        return list(decoder)


# ------------------------------------------------------------------ hostile input


@pytest.fixture(scope="module")
def huge_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile.huge_h264(tmp_path_factory.mktemp("huge") / "huge.mp4")


def _make(name: str, tmp: Path, huge: Path, listener: Any) -> Path:
    listener_url = listener.url
    other = hostile.write_video(tmp / "other.mp4", container="mp4", frames=3)
    makers: dict[str, Callable[[], Path]] = {
        "hls_m3u8": lambda: hostile.hls_playlist(tmp / "live.m3u8", listener_url),
        "hls_renamed_mp4": lambda: hostile.hls_playlist(tmp / "video.mp4", listener_url),
        "ffconcat_renamed_mp4": lambda: hostile.ffconcat(tmp / "video.mp4", other),
        "sdp": lambda: hostile.sdp(tmp / "stream.sdp", listener.port),
        "huge_8192": lambda: huge,
        "truncated_mp4": lambda: hostile.truncated_mp4(tmp / "cut.mp4"),
        "random_bytes": lambda: hostile.random_bytes(tmp / "noise.mp4"),
        "zero_bytes": lambda: hostile.zero_bytes(tmp / "empty.mp4"),
        "audio_only": lambda: hostile.audio_only(tmp / "audio.mp4"),
    }
    return makers[name]()


HOSTILE = [
    # (case, expected reason)
    ("hls_m3u8", "unsupported_format"),
    ("hls_renamed_mp4", "unsupported_format"),
    ("ffconcat_renamed_mp4", "unsupported_format"),
    ("sdp", "unsupported_format"),
    ("huge_8192", "too_large"),
    ("truncated_mp4", "corrupt"),
    ("random_bytes", "unsupported_format"),
    ("zero_bytes", "empty"),
    ("audio_only", "no_video_stream"),
]


@pytest.mark.parametrize(("case", "reason"), HOSTILE)
@pytest.mark.parametrize("entry", ["probe", "decode"])
def test_hostile_file_ends_in_clear_error(
    case: str, reason: str, entry: str, tmp_path: Path, huge_file: Path
) -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with hostile.LoopbackListener() as listener:
        path = _make(case, tmp_path, huge_file, listener)
        with pytest.raises(VideoInputError) as info:
            if entry == "probe":
                probe(path, FAST)
            else:
                _decode_all(path, short_side=64)
    assert listener.connections == 0, "a hostile file made the decoder connect out"
    assert info.value.reason == reason, str(info.value)
    assert len(info.value.message) > 20 and "Traceback" not in info.value.message
    # Bounded memory: the server process did not grow, the decoder stayed under its cap.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before < 64 * MB
    assert _decoder_peak_rss(entry, path) < FAST.max_memory_bytes


_PEAK_RSS_SCRIPT = """
import resource, sys
from service.decode import decode_frames, probe
from service.errors import VideoInputError
from service.limits import DecodeLimits
limits = DecodeLimits(max_probe_s=15.0, max_wall_s=30.0)
try:
    if sys.argv[1] == "probe":
        probe(sys.argv[2], limits)
    else:
        for _ in decode_frames(sys.argv[2], limits, short_side=64):
            pass
except VideoInputError:
    pass
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def _decoder_peak_rss(entry: str, path: Path) -> int:
    """Peak RSS of the decoder child for one file, in bytes.

    RUSAGE_CHILDREN is a maximum over every child the process ever reaped, so inside the
    test process it would also count earlier tests' subprocesses; a fresh interpreter
    whose only child is the decoder measures just that child.
    """
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_SCRIPT, entry, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_ffmpeg_whitelists_refuse_hls_even_if_sniffing_were_bypassed(tmp_path: Path) -> None:
    """Defence in depth: with FFmpeg probing (no format=) or an explicit format="hls", the
    format and protocol whitelists we pass still refuse, and nothing connects out."""
    with hostile.LoopbackListener() as listener:
        playlist = hostile.hls_playlist(tmp_path / "x.m3u8", listener.url)
        options = {"protocol_whitelist": "file", "format_whitelist": _FORMAT_WHITELIST}
        for fmt in (None, "hls"):
            with pytest.raises(av.FFmpegError):
                av.open(str(playlist), format=fmt, container_options=options)
    assert listener.connections == 0


def test_control_the_fixtures_really_are_hostile(tmp_path: Path) -> None:
    """Without our defences the same files do what we guard against: the playlist connects to
    the listener once the network is allowed (FFmpeg's default for a local playlist is only
    `file,crypto,data`, which still lets HLS and concat read local files), and the ffconcat list
    reads another local file. So the listener can see attempts, and the refusals matter."""
    other = hostile.write_video(tmp_path / "secret.mp4", container="mp4", frames=3)
    with hostile.LoopbackListener() as listener:
        playlist = hostile.hls_playlist(tmp_path / "x.m3u8", listener.url)
        with pytest.raises(av.FFmpegError):
            av.open(str(playlist), container_options={"protocol_whitelist": "file,http,tcp"})
        deadline = time.monotonic() + 5.0
        while listener.connections == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert listener.connections >= 1
    with av.open(str(hostile.ffconcat(tmp_path / "list.mp4", other)), format="concat") as c:
        assert sum(1 for _ in c.decode(video=0)) == 3


def test_frame_count_bomb_is_refused_from_header(tmp_path: Path) -> None:
    path = hostile.many_frames(tmp_path / "many.mp4")
    limits = DecodeLimits(max_frames=10_000, max_probe_s=15.0, max_wall_s=30.0)
    with pytest.raises(VideoInputError) as info:
        probe(path, limits)
    assert info.value.reason == "too_large" and "20000 frames" in info.value.message


def test_frame_count_bomb_without_header_count_is_cut_while_decoding(tmp_path: Path) -> None:
    """MPEG-TS has no frame count in its header: the cap trips on the 10,001st decoded frame."""
    path = hostile.many_frames(tmp_path / "many.ts", container="mpegts")
    limits = DecodeLimits(max_frames=10_000, max_duration_s=3600, max_probe_s=15.0, max_wall_s=30)
    seen = 0
    with pytest.raises(VideoInputError) as info, decode_frames(path, limits) as decoder:
        for _ in decoder:
            seen += 1
    assert info.value.reason == "too_large"
    assert seen == 10_000


def test_duration_cap(tmp_path: Path) -> None:
    path = hostile.write_video(tmp_path / "v.mp4", container="mp4", frames=50, fps=1)
    with pytest.raises(VideoInputError) as info:
        probe(path, DecodeLimits(max_duration_s=10, max_probe_s=15))
    assert info.value.reason == "too_large" and "50 s" in info.value.message


def test_memory_cap_holds_when_the_pixel_cap_is_lifted(huge_file: Path) -> None:
    """With the pixel cap raised past 8192x8192, the decoder process's RLIMIT_AS still stops
    the file: one such frame needs > 600 MB (YUV, reference buffers, RGB), the interpreter
    alone ~250-300 MB, so a 500 MB cap fails cleanly instead of growing."""
    limits = DecodeLimits(
        max_pixels=8192 * 8192, max_memory_bytes=500 * MB, max_probe_s=15, max_wall_s=30
    )
    with pytest.raises(VideoInputError) as info:
        _decode_all(huge_file, limits)
    assert info.value.reason == "too_large" and "memory" in info.value.message


def test_uncommon_codec_is_refused(tmp_path: Path) -> None:
    path = hostile.write_video(
        tmp_path / "raw.mkv", container="matroska", codec="rawvideo", frames=2, options={}
    )
    with pytest.raises(VideoInputError) as info:
        probe(path, FAST)
    assert info.value.reason == "unsupported_format" and "rawvideo" in info.value.message


def test_wall_clock_budget_kills_the_decoder(assets: Path) -> None:
    with pytest.raises(VideoInputError) as info:
        probe(assets / "video" / "pedestrians_vtest.avi", DecodeLimits(max_probe_s=0.001))
    assert info.value.reason == "timeout"
    limits = DecodeLimits(max_wall_s=0.05, max_probe_s=15)
    with pytest.raises(VideoInputError) as info:
        _decode_all(assets / "video" / "pedestrians_vtest.avi", limits)
    assert info.value.reason == "timeout"


def test_extreme_aspect_ratio_cannot_be_upscaled_past_the_pixel_cap(tmp_path: Path) -> None:
    path = hostile.write_video(
        tmp_path / "strip.mkv", container="matroska", codec="mpeg4", width=2048, height=16, frames=2
    )
    limits = DecodeLimits(max_pixels=1_000_000, max_probe_s=15, max_wall_s=30)
    with pytest.raises(VideoInputError) as info:
        _decode_all(path, limits, short_side=256)  # would be 32768x256 = 8.4 MP
    assert info.value.reason == "too_large"


# ------------------------------------------------------------------ sniffing, records


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x00\x00\x00\x20ftypisom" + bytes(20), "mov"),
        (b"\x00\x00\x00\x08free" + bytes(20), "mov"),
        (b"\x1a\x45\xdf\xa3" + bytes(20), "matroska"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "avi"),
        (bytes([0x47] + [0] * 187) * 3, "mpegts"),
        (bytes([0, 0, 0, 0, 0x47] + [0] * 187) * 3, "mpegts"),  # M2TS: 192-byte packets
        (b"#EXTM3U\n", None),
        (b"ffconcat version 1.0\n", None),
        (b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n", None),
        (b"\x00\x00\x00\x01\x67\x42", None),  # raw H.264: live only
        (bytes([0x47] + [0] * 187), None),  # one TS packet is not enough evidence
        (b"", None),
    ],
)
def test_sniff_format(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


def test_error_type() -> None:
    err = VideoInputError("unsupported_format", "Upload MP4.")
    assert err.http_status == 415 and VideoInputError("corrupt", "x").http_status == 422
    again = pickle.loads(pickle.dumps(err))
    assert (again.reason, again.message) == ("unsupported_format", "Upload MP4.")
    with pytest.raises(ValueError, match="unknown VideoInputError reason"):
        VideoInputError("nope", "x")  # type: ignore[arg-type]


def test_limits_validate() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        DecodeLimits(max_pixels=0)


# ------------------------------------------------------------------ real decoding


@pytest.mark.parametrize(
    ("container", "codec", "suffix"),
    [
        ("mp4", "libx264", "mp4"),
        ("matroska", "libx264", "mkv"),
        ("webm", "libvpx", "webm"),
        ("mpegts", "libx264", "ts"),
        ("avi", "mpeg4", "avi"),
    ],
)
def test_containers_decode_in_order_with_times(
    container: str, codec: str, suffix: str, tmp_path: Path
) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} encoder not in this FFmpeg build")
    path = hostile.write_video(
        tmp_path / f"v.{suffix}",
        container=container,
        codec=codec,
        frames=12,
        options={} if codec != "libx264" else None,
    )
    frames = _decode_all(path, short_side=32)
    assert [f.index for f in frames] == list(range(12))
    assert _levels(frames) == list(range(12))
    np.testing.assert_allclose([f.pts_seconds for f in frames], np.arange(12) / 25, atol=2e-3)
    assert all(f.image.shape == (32, 43, 3) and f.image.dtype == np.uint8 for f in frames)


def test_isolated_and_in_process_agree(tmp_path: Path) -> None:
    path = hostile.write_video(tmp_path / "v.mp4", container="mp4", frames=8)
    a, b = _decode_all(path, short_side=40), _decode_all(path, short_side=40, isolated=False)
    assert [f.pts_seconds for f in a] == [f.pts_seconds for f in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert probe(path, FAST) == probe(path, FAST, isolated=False)


def test_odd_size_keeps_aspect(tmp_path: Path) -> None:
    # libx264 refuses odd sizes in 4:2:0, MPEG-4 Part 2 takes them.
    path = hostile.write_video(
        tmp_path / "odd.mkv",
        container="matroska",
        codec="mpeg4",
        width=321,
        height=177,
        frames=3,
        options={},
    )
    info = probe(path, FAST)
    assert (info.width, info.height) == (321, 177)
    assert [f.image.shape for f in _decode_all(path)] == [(177, 321, 3)] * 3
    assert [f.image.shape for f in _decode_all(path, short_side=100)] == [(100, 181, 3)] * 3


@pytest.mark.parametrize("rotation", [90, 270])
def test_rotation_metadata_is_applied(rotation: int, tmp_path: Path) -> None:
    path = hostile.write_video(
        tmp_path / "rot.mp4", container="mp4", width=64, height=32, frames=3, rotation=rotation
    )
    info = probe(path, FAST)
    assert (info.rotation, info.width, info.height) == (rotation, 32, 64)
    frames = _decode_all(path, short_side=16)
    assert frames[0].image.shape == (32, 16, 3)  # portrait after rotation
    # The ramp grows left -> right in the coded picture; 90 deg counter-clockwise puts the
    # bright right edge on top, 270 puts it at the bottom.
    top, bottom = frames[0].image[0].mean(), frames[0].image[-1].mean()
    assert (top > bottom) == (rotation == 90)


def test_variable_frame_rate_keeps_presentation_times(tmp_path: Path) -> None:
    pts_ms = [0, 40, 80, 200, 210, 220, 500, 540, 900, 1000]
    for suffix, container in (("mp4", "mp4"), ("mkv", "matroska")):
        path = hostile.write_video(
            tmp_path / f"vfr.{suffix}", container=container, frames=len(pts_ms), pts_ms=pts_ms
        )
        assert probe(path, FAST).vfr
        times = [f.pts_seconds for f in _decode_all(path)]
        np.testing.assert_allclose(times, np.asarray(pts_ms) / 1000, atol=1e-6)


def _shaper(fps: float = 10.0) -> _FrameShaper:
    return _FrameShaper(
        limits=DecodeLimits(),
        short_side=None,
        fps=fps,
        time_base=Fraction(1, 1000),
        origin_pts=None,
        sar=None,
        fallback_rotation=0,
        cap_length=True,
    )


def _bare_frame(pts: int | None) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(np.zeros((4, 6, 3), np.uint8), format="rgb24")
    frame.pts = pts
    return frame


def test_missing_and_non_increasing_timestamps_are_fixed() -> None:
    """Muxers always fill timestamps, so no file made here lacks them; the fallback is tested
    on frames directly (and end to end by the raw H.264 live test, which has none at all)."""
    shaper = _shaper(fps=10.0)
    times = [shaper(_bare_frame(p)).pts_seconds for p in (None, None, 1000, 1000, 900, None, 2000)]
    # no pts -> index / fps, then previous + 1/fps; origin is the first real pts (1000 ms)
    # mapped to 0 but kept after earlier frames; repeats/decreases nudge by 1 ms.
    assert times[:2] == [0.0, 0.1]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    assert times[3] == pytest.approx(times[2] + 1e-3) and times[4] == pytest.approx(times[3] + 1e-3)
    assert times[5] == pytest.approx(times[4] + 0.1) and times[6] == pytest.approx(1.0)


def test_decoder_process_runs_with_limits_and_without_secrets(
    assets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads the live decoder process's /proc entries once it has sent the stream info (by then
    every limit is in place): memory, CPU, file-size and file-descriptor caps, and an
    environment without the server's secrets."""
    monkeypatch.setenv("AVASERVE_API_KEYS", "do-not-leak")
    with decode_frames(assets / "video" / "pedestrians_vtest.avi", FAST, short_side=64) as dec:
        assert dec._link is not None
        pid = dec._link.process.pid
        limits = {
            line[:26].strip(): line[26:].split()[:2]
            for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
        }
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert limits["Max address space"] == [str(FAST.max_memory_bytes)] * 2
    assert limits["Max file size"] == ["0", "0"]
    assert limits["Max core file size"] == ["0", "0"]
    assert int(limits["Max open files"][0]) <= 16
    assert int(limits["Max cpu time"][0]) == FAST.max_wall_s * FAST.decoder_threads + 1
    assert b"do-not-leak" not in environ


def test_early_close_stops_the_decoder(assets: Path) -> None:
    decoder = decode_frames(assets / "video" / "pedestrians_vtest.avi", FAST, short_side=64)
    first = next(iter(decoder))
    assert first.index == 0
    link = decoder._link
    decoder.close()
    assert link is not None and link.process.poll() is not None
    assert list(decoder) == []


@pytest.mark.parametrize(
    ("name", "frames", "fps", "size"),
    [
        ("pedestrians_vtest.avi", 795, 10.0, (768, 576)),
        ("basketball_2people.mp4", 300, 30000 / 1001, (426, 240)),
    ],
)
def test_real_assets(
    assets: Path, name: str, frames: int, fps: float, size: tuple[int, int]
) -> None:
    path = assets / "video" / name
    info = probe(path, FAST)
    assert (info.width, info.height) == size and info.fps == pytest.approx(fps)
    assert info.frame_count == frames and not info.vfr
    decoded = _decode_all(path, short_side=96)
    assert len(decoded) == frames
    assert decoded[0].image.shape[0] == 96
    times = np.array([f.pts_seconds for f in decoded])
    assert times[0] == 0.0 and np.all(np.diff(times) > 0)
    assert times[-1] == pytest.approx((frames - 1) / fps, abs=0.05)


# ------------------------------------------------------------------ live input


@pytest.mark.parametrize("kind", ["h264", "mpegts"])
def test_live_stream_fed_in_chunks(kind: str) -> None:
    data = hostile.encode_bytes(kind, frames=12)
    frames: list[DecodedFrame] = []
    with LiveDecoder(kind, FAST, short_side=24, fps_hint=25.0) as live:  # type: ignore[arg-type]
        for start in range(0, len(data), 1000):
            live.feed(data[start : start + 1000])
            frames += live.frames()
        live.end()
        while not live.finished:
            frames += live.frames(timeout=5.0)
        frames += live.frames()
    assert [f.index for f in frames] == list(range(12))
    assert _levels(frames) == list(range(12))
    np.testing.assert_allclose([f.pts_seconds for f in frames], np.arange(12) / 25, atol=2e-3)
    assert frames[0].image.shape == (24, 32, 3)


def test_live_garbage_ends_without_frames_or_crash() -> None:
    noise = np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    with LiveDecoder("h264", FAST) as live:
        live.feed(noise)
        live.end()
        got: list[DecodedFrame] = []
        try:
            while not live.finished:
                got += live.frames(timeout=5.0)
        except VideoInputError as e:
            assert e.reason == "corrupt"
    assert got == []


def test_live_slow_consumer_drops_oldest_frames() -> None:
    data = hostile.encode_bytes("h264", frames=30)
    with LiveDecoder("h264", FAST, max_buffered_frames=5) as live:
        live.feed(data)
        live.end()
        while not live.finished and live.dropped_frames + 5 < 30:
            time.sleep(0.05)
        frames = live.frames()
    assert len(frames) <= 5 and live.dropped_frames == 30 - len(frames)
    assert frames[-1].index == 29


@pytest.mark.parametrize("spare_dies", [False, True])
def test_prestarted_decoder_is_taken_once(tmp_path: Path, spare_dies: bool) -> None:
    """A spare interpreter decodes like a fresh one; a dead spare falls back to a fresh one."""
    path = hostile.write_video(tmp_path / "v.mp4", container="mp4", frames=8)
    decode_module.prestart()
    spare = decode_module._spare
    assert spare is not None and spare.process.poll() is None
    if spare_dies:
        spare.process.kill()
        spare.process.wait()
    with decode_frames(path) as dec:
        assert decode_module._spare is None  # taken (or found dead and dropped)
        assert _levels(list(dec)) == list(range(8))
    decode_module.prestart()
    decode_module.discard_spare()
    assert decode_module._spare is None


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
@pytest.mark.parametrize("idle", [True, False])
def test_idle_decoder_process_runs_in_the_idle_class(tmp_path: Path, idle: bool) -> None:
    """`decode_frames(idle=True)`: the decoder process (and FFmpeg's threads, started after)
    is in SCHED_IDLE while it decodes; without it, the normal class."""
    path = hostile.write_video(tmp_path / "v.mp4", container="mp4", frames=8)
    decode_module.discard_spare()  # a spare started by another test keeps its own class
    with decode_frames(path, FAST, short_side=32, idle=idle) as dec:
        next(dec)
        assert dec._link is not None
        pid = dec._link.process.pid
        policies = {os.sched_getscheduler(int(t)) for t in os.listdir(f"/proc/{pid}/task")}
    assert policies == ({os.SCHED_IDLE} if idle else {os.SCHED_OTHER})
