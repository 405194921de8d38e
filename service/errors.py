"""The one error type for bad video input.

Everything the decoder refuses ends as `VideoInputError(reason, message)`. `reason` is a small
closed set, safe to use as a metrics label and to map onto HTTP status codes; `message` is
written for the person who sent the file: what is wrong and what to do about it. Neither
carries a stack trace or a server path.
"""

from __future__ import annotations

from typing import Literal, get_args

VideoInputReason = Literal[
    "unsupported_format",  # not a container we accept (or a playlist/concat/SDP file)
    "corrupt",  # an accepted container whose data cannot be read or decoded
    "too_large",  # over a cap: pixels, duration, frames, file size or decoder memory
    "no_video_stream",  # a valid container without any video (audio-only, subtitles)
    "empty",  # zero bytes, or a video stream without a single decodable frame
    "timeout",  # the decoder took longer than the wall-clock or CPU budget
]

VIDEO_INPUT_REASONS: tuple[VideoInputReason, ...] = get_args(VideoInputReason)

# 415 for "we do not take this kind of file"; 422 for "we take this kind, but not this file".
# 413 stays with the HTTP layer's upload-size check, where the request body is what is too large.
_HTTP_STATUS: dict[VideoInputReason, int] = {
    "unsupported_format": 415,
    "corrupt": 422,
    "too_large": 422,
    "no_video_stream": 422,
    "empty": 422,
    "timeout": 422,
}


class VideoInputError(Exception):
    """A video the service will not decode, with a reason from a closed set and a user message.

    Example: ``VideoInputError("too_large", "Video is 8192x8192 (67.1 MP); the limit is 8.3 MP.
    Downscale it, e.g. to 1920x1080, and upload again.")``
    """

    def __init__(self, reason: VideoInputReason, message: str) -> None:
        if reason not in VIDEO_INPUT_REASONS:
            raise ValueError(
                f"unknown VideoInputError reason {reason!r}; use one of {VIDEO_INPUT_REASONS}"
            )
        super().__init__(message)
        self.reason: VideoInputReason = reason
        self.message = message

    @property
    def http_status(self) -> int:
        """Status code for the REST API: 415 unsupported format, 422 otherwise."""
        return _HTTP_STATUS[self.reason]

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def __reduce__(self) -> tuple[type[VideoInputError], tuple[VideoInputReason, str]]:
        # Keep the two-argument constructor picklable (default Exception pickling passes one).
        return (VideoInputError, (self.reason, self.message))


# The stable ``error`` code of every JSON error body, by HTTP status (REST answers and refused
# WebSocket handshakes alike; docs/api.md lists them).
STATUS_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    409: "conflict",
    411: "length_required",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
    504: "timeout",
}


def error_code(status_code: int) -> str:
    return STATUS_ERROR_CODES.get(status_code, "error")
