"""Real people: the pedestrian video through the engine with the YOLOX-nano detector.

Asserts persons are found on most keyframes and keep their ids across consecutive seconds.
There is no ground truth for this video, so ID switches are estimated (see `continuity`):
an unambiguous pair of boxes at t and t + 1 with different ids counts as a switch. The
estimate over-counts where two people cross (the tracker follows their motion, the
heuristic does not), so the bound below is loose on purpose.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import tiny_bundle as tb

from service.engine import Engine, EngineSettings
from service.records import Prediction
from service.runtime import RuntimeSettings


def continuity(
    preds: list[Prediction], *, gate: float = 1.0, margin: float = 3.0
) -> tuple[int, int]:
    """(kept, switched) over unambiguous pairs of boxes at consecutive keyframes.

    A box at t and a box at t + 1 are "the same person" when each is the other's nearest
    (centre distance / box height <= ``gate``, heights within -30 %..+40 %) and every other
    candidate of either is ``margin`` times farther. Crowded or crossing people are left out:
    without a motion model the heuristic cannot tell who is who there.
    """
    by_t: dict[float, list[Prediction]] = {}
    for p in preds:
        by_t.setdefault(p.time, []).append(p)
    kept = switched = 0
    for t in sorted(by_t):
        a, b = by_t[t], by_t.get(t + 1.0)
        if not b:
            continue
        ba, bb = np.array([p.box for p in a]), np.array([p.box for p in b])
        ca, cb = (ba[:, :2] + ba[:, 2:]) / 2, (bb[:, :2] + bb[:, 2:]) / 2
        ha, hb = ba[:, 3] - ba[:, 1], bb[:, 3] - bb[:, 1]
        cost = np.linalg.norm(ca[:, None] - cb[None], axis=2) / ha[:, None]
        ratio = hb[None] / ha[:, None]
        cost[(ratio < 0.7) | (ratio > 1.4)] = np.inf
        for i in range(len(a)):
            j = int(np.argmin(cost[i]))
            c = cost[i, j]
            if c > gate or int(np.argmin(cost[:, j])) != i:
                continue
            rivals = np.concatenate([np.delete(cost[i], j), np.delete(cost[:, j], i)])
            if rivals.size and rivals.min() < margin * c:
                continue
            if a[i].track_id == b[j].track_id:
                kept += 1
            else:
                switched += 1
    return kept, switched


@pytest.mark.slow
def test_pedestrians_found_and_tracked(assets: Path, tmp_path: Path) -> None:
    video = assets / "video" / "pedestrians_vtest.avi"
    bundle = tb.make_bundle(tmp_path / "bundle")  # trivial action model: the test is about people

    async def main() -> list[Prediction]:
        engine = Engine(
            bundle,
            settings=EngineSettings(runtime=RuntimeSettings(intra_op_threads=2)),
            detector_path=assets / "detector" / "yolox_nano.onnx",
        )
        try:
            return [p async for p in engine.annotate_file(video)]
        finally:
            await engine.close()

    preds = asyncio.run(main())
    keyframes = 80  # 0 .. 79 s
    with_people = {p.time for p in preds}
    assert len(with_people) >= 0.8 * keyframes
    kept, switched = continuity(preds)
    print(
        f"\npedestrians: {len(preds)} records, persons on {len(with_people)}/{keyframes} "
        f"keyframes, {len({p.track_id for p in preds})} track ids, consecutive-second matches "
        f"{kept + switched}: {kept} kept their id, {switched} ID switches"
    )
    assert kept + switched >= 50
    assert switched <= 0.15 * (kept + switched)
