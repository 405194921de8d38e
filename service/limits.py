"""Caps on what one untrusted video may cost the service.

Every number here is a trade-off between accepting real footage and bounding what a hostile
file can make the server spend. The defaults fit 4K phone and camera video of up to an hour;
deployments with other needs pass their own `DecodeLimits` from their settings (config stops at
the edge: nothing below reads a global).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class DecodeLimits:
    """Resource caps for decoding one video (a file or a live stream).

    A violated cap ends decoding with `VideoInputError`: `too_large` for size caps,
    `timeout` for time caps.
    """

    max_pixels: int = 3840 * 2160
    """Largest coded frame, width * height. Checked from the container's codec parameters before
    any decoding, again by libavcodec itself (`max_pixels` on the codec context, which also catches
    a resolution change inside the bitstream) and on every decoded frame. 4K UHD by default:
    larger frames are rare in user video, while one 8192x8192 frame already costs ~100 MB as
    YUV and several times that in reference buffers. Raise it only with `max_memory_bytes`."""

    max_duration_s: float = 3600.0
    """Longest video accepted, in seconds of presentation time. Checked against the header
    before decoding and against every frame's timestamp while decoding (headers can lie). An
    hour covers recorded meetings and sports; longer files belong in a batch pipeline."""

    max_frames: int = 216_000
    """Most frames decoded from one file: an hour at 60 fps. This, not the duration, stops a
    file packing tens of thousands of tiny frames into a few seconds (a frame-rate bomb). Live
    streams are not capped by it: they end when the connection does."""

    max_wall_s: float = 900.0
    """Longest time the caller may wait on the decoder for one file, in seconds. Only time spent
    waiting for the next frame counts, not time the caller spends on a frame, so a slow
    consumer is never cut off. An hour of 1080p H.264 decodes in roughly 10-15 minutes on two
    cores. The decoder process also gets an RLIMIT_CPU of `max_wall_s * decoder_threads` as a
    backstop. For live input this is the longest a `feed()` may block."""

    max_probe_s: float = 20.0
    """Longest a probe (open, read headers, decode the first frame) may take. Kept short because
    the REST upload handler probes while the client waits; a real file probes in well under a
    second."""

    max_memory_bytes: int = 2 * GIB
    """Address-space cap (RLIMIT_AS) for the decoder process. It is virtual memory: Python,
    numpy and FFmpeg's libraries already map ~300 MB before any frame, and each decoder thread
    reserves stack and malloc arenas. 2 GiB fits 4K H.264 with frame threading; a file that
    needs more fails with `too_large` instead of pushing the server into swap."""

    max_file_bytes: int = 4 * GIB
    """Largest input file, checked with `stat` before it is opened. Upload size limits belong to
    the HTTP layer (413 while streaming the body); this is the decoder's own backstop."""

    decoder_threads: int = 2
    """Threads for one decoder. More threads decode one stream faster but multiply memory
    (frame threading keeps a frame in flight per thread) and compete with other streams and
    inference for the same cores; 2 suits the 2-core machines this project targets."""

    def __post_init__(self) -> None:
        for name in (
            "max_pixels",
            "max_duration_s",
            "max_frames",
            "max_wall_s",
            "max_probe_s",
            "max_memory_bytes",
            "max_file_bytes",
            "decoder_threads",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"DecodeLimits.{name} must be > 0, got {value!r}")
