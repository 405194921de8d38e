"""The numbers export and the service share when neither a manifest nor the user names one.

Each default lives here once and every other place refers to it (issue 17: "grep finds each
default in one place"). Plain constants, no imports: the CLIs read them at definition time and
stay light.
"""

from __future__ import annotations

__all__ = ["BANK_RETENTION_S", "DEFAULT_SCORE_THRESHOLD", "TOP_K"]

# Person score a box needs to reach the action model (report A's 0.8): DetectorSpec's default,
# the detector exporters', `avaserve export --score-threshold` and the service's.
DEFAULT_SCORE_THRESHOLD = 0.8

# Actions per record in the JSON output and per box in the AVA CSV (the ActivityNet challenge's
# convention), for jobs, `avaserve annotate` and the live socket.
TOP_K = 5

# Seconds of bank rows a stream keeps behind its newest second (in process and in Redis). It
# must cover the widest bank window read: the live window of a 61 s bundle reaches 60 s back;
# 120 leaves room for a bundle exported with twice that.
BANK_RETENTION_S = 120
