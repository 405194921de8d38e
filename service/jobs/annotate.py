"""The service's job ``process``: one upload through the engine into its result files.

The records are exactly what ``avaserve annotate --out --csv`` writes for the same file and
bundle: same engine call, same writers, same top-k (tests/service/test_app_rest.py compares
them byte for byte).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from service.jobs.record import Job, read_meta
from service.records import AvaCsvWriter, JsonlWriter

__all__ = ["job_processor"]


def job_processor(
    engine: Any, *, top_k: int
) -> Callable[[Job, Callable[[float], None]], Awaitable[Mapping[str, str]]]:
    """The JobRunner's ``process``: annotate the upload into JSON Lines + AVA CSV (+ MP4),
    ``top_k`` actions per record and per box."""

    async def process(job: Job, progress: Callable[[float], None]) -> Mapping[str, str]:
        work = Path(job.work_dir)
        meta = read_meta(work)
        duration = float((meta["duration_s"] if meta else None) or 0.0)
        video_id = (meta["video_id"] if meta else "") or "upload"
        jsonl, csv_path = work / "results.jsonl", work / "results.csv"
        jw, cw = JsonlWriter(jsonl, top_k=top_k), AvaCsvWriter(csv_path, top_k=top_k)
        count = 0

        def on_progress(pts: float) -> None:
            if duration > 0:
                progress(min(0.99, pts / duration))

        try:
            async for prediction in engine.annotate_file(
                job.input_path, video_id=video_id, progress=on_progress
            ):
                jw.write([prediction])
                cw.write([prediction])
                count += 1
        finally:
            jw.close()
            cw.close()
        results = {"json": str(jsonl), "csv": str(csv_path)}
        if job.options.render:
            rate = float(engine.manifest.keyframe_rate)
            results["video"] = await _render(job, jsonl, work / "annotated.mp4", rate)
        (work / "summary.json").write_text(json.dumps({"predictions": count}))
        progress(1.0)
        return results

    return process


async def _render(job: Job, jsonl: Path, out: Path, keyframe_rate: float) -> str:
    """The annotated MP4 (service.render, the same drawing as `avaserve annotate --render`),
    in a worker thread; the records are read back from the job's own results file."""
    from service.records import read_jsonl
    from service.render import render_video

    predictions = read_jsonl(jsonl)
    await asyncio.to_thread(
        render_video, job.input_path, predictions, out, keyframe_rate=keyframe_rate
    )
    return str(out)
