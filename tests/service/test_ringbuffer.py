"""Ring buffer clip assembly vs training's clips: the train/serve skew guard.

Training (core/clips.py) and the service must give the model the same frames and the same
tensors. Both call core.preprocess, the service frame by frame as frames arrive and training
on whole decoded clips, so the tensors must be bit-identical: these tests run the two real
code paths end to end (service decoder + ring buffer vs training's decoder + preprocess_clip).
Only this test imports ``training``; the service itself never does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiny_bundle as tb

from core.clips import ClipSpec, iter_keyframe_clips, pack_pathways, preprocess_clip
from core.manifest import Preprocessing
from service.decode import decode_frames
from service.ringbuffer import ClipGeometry, FrameRing
from service.scheduler import KeyframeScheduler


def _prep(**kw: object) -> Preprocessing:
    base: dict[str, object] = dict(
        short_side=32,
        mean=(0.45, 0.45, 0.45),
        std=(0.225, 0.225, 0.225),
        num_frames=8,
        alpha=4,
        sampling_rate=2,
        target_fps=30.0,
    )
    base.update(kw)
    return Preprocessing(**base)  # type: ignore[arg-type]


def _service_clips(
    path: Path, prep: Preprocessing, alignment: str
) -> dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Frames through the ring buffer exactly as the engine drives it (release included)."""
    ring = FrameRing(prep, alignment=alignment)  # type: ignore[arg-type]
    sched = KeyframeScheduler(keyframe_rate=1.0, after_s=ring.geometry.after_s)
    out = {}

    def take(times: list[float]) -> None:
        for t in times:
            c = ring.clip(t)
            out[t] = (c.slow, c.fast, c.frame_pts)
        nxt = sched.next_clip_time
        if nxt is not None:
            ring.release_before(float(ring.geometry.times(nxt)[0]))

    with decode_frames(path, isolated=False) as dec:
        for f in dec:
            ring.update(f.pts_seconds, f.image)
            _, due = sched.update(f.pts_seconds)
            take(due)
    ring.finish()
    take(sched.finish()[1])
    return out


@pytest.mark.parametrize(
    ("fps", "size", "prep_kw", "alignment"),
    [
        (25, (96, 72), {}, "center"),
        (25, (96, 72), {}, "causal"),
        (30, (72, 96), {"num_frames": 16, "short_side": 40}, "center"),  # portrait, 30 fps
        (12, (80, 60), {"sampling_rate": 1}, "center"),  # low frame rate: frames repeat
        (60, (64, 48), {}, "center"),  # high frame rate: most frames never sampled
    ],
)
def test_clips_equal_training(
    tmp_path: Path, fps: int, size: tuple[int, int], prep_kw: dict[str, object], alignment: str
) -> None:
    video = tb.make_video(tmp_path / "v.mp4", seconds=3.2, fps=fps, size=size)
    prep = _prep(**prep_kw)
    served = _service_clips(video, prep, alignment)
    assert sorted(served) == [0.0, 1.0, 2.0, 3.0]
    spec = prep.clip(alignment)  # type: ignore[arg-type]
    trained = dict(iter_keyframe_clips(video, sorted(served), spec))
    for t, frames in trained.items():
        x = preprocess_clip(frames, short_side=prep.short_side, mean=prep.mean, std=prep.std)
        slow, fast = pack_pathways(x, prep.alpha)
        s_slow, s_fast, _ = served[t]
        assert s_fast.shape == fast.shape and s_slow.shape == slow.shape
        np.testing.assert_array_equal(s_fast, fast)
        np.testing.assert_array_equal(s_slow, slow)


def test_clips_equal_training_real_video(assets: Path) -> None:
    """The dev/demo preset's numbers (short side 128, 16 x 2) on the real pedestrian video."""
    video = assets / "video" / "pedestrians_vtest.avi"
    prep = _prep(short_side=128, num_frames=16)
    ring = FrameRing(prep, alignment="center")
    spec = ClipSpec(16, 2, 30.0, "center")
    keyframes = [0.0, 1.0, 2.0]
    with decode_frames(video, isolated=False) as dec:
        for f in dec:
            ring.update(f.pts_seconds, f.image)
            if f.pts_seconds > 3.0:
                break
    trained = dict(iter_keyframe_clips(video, keyframes, spec))
    for t in keyframes:
        x = preprocess_clip(trained[t], short_side=128, mean=prep.mean, std=prep.std)
        np.testing.assert_array_equal(ring.clip(t).fast, x)


def _synthetic_ring(prep: Preprocessing, alignment: str, fps: float, seconds: float) -> FrameRing:
    ring = FrameRing(prep, alignment=alignment)  # type: ignore[arg-type]
    for i in range(int(seconds * fps)):
        ring.update(i / fps, np.full((8, 8, 3), i % 256, np.uint8))
    ring.finish()
    return ring


@pytest.mark.parametrize(
    ("alignment", "t", "first_pts", "last_pts"),
    [
        # center, 8 frames x 2 at 30 fps: samples t-8/30 .. t+6/30
        ("center", 0.0, 0.0, 0.2),  # start: the negative sample times repeat frame 0
        ("center", 1.0, 0.73333, 1.2),
        ("center", 2.0, 1.73333, 1.96667),  # end: samples past the last frame repeat it
        ("causal", 1.0, 0.53333, 1.0),  # causal: the clip ends at the keyframe
        ("causal", 0.0, 0.0, 0.0),
    ],
)
def test_center_causal_and_padding(
    alignment: str, t: float, first_pts: float, last_pts: float
) -> None:
    prep = _prep()
    ring = _synthetic_ring(prep, alignment, fps=30.0, seconds=2.0)  # frames 0 .. 59/30
    clip = ring.clip(t)
    assert clip.fast.shape == (3, 8, 32, 32) and clip.slow.shape == (3, 2, 32, 32)
    assert clip.frame_pts[0] == pytest.approx(first_pts, abs=1e-4)
    assert clip.frame_pts[-1] == pytest.approx(last_pts, abs=1e-4)
    assert np.all(np.diff(clip.frame_pts) >= 0)


def test_start_padding_repeats_first_frame() -> None:
    ring = _synthetic_ring(_prep(), "center", fps=30.0, seconds=1.0)
    clip = ring.clip(0.0)
    # samples -8/30 .. -2/30 all take frame 0, then 0/30 is frame 0 itself: 5 copies
    assert (clip.frame_pts == 0.0).sum() == 5
    np.testing.assert_array_equal(clip.fast[:, 0], clip.fast[:, 4])


def test_memory_is_bounded_and_unused_frames_skipped() -> None:
    prep = _prep()
    ring = FrameRing(prep, alignment="center")
    sched = KeyframeScheduler(after_s=ring.geometry.after_s)
    peak = 0
    for i in range(60 * 20):  # 20 s at 60 fps
        ring.update(i / 60, np.zeros((8, 8, 3), np.uint8))
        _, due = sched.update(i / 60)
        for t in due:
            ring.clip(t)
        ring.release_before(float(ring.geometry.times(sched.next_clip_time)[0]))  # type: ignore[arg-type]
        peak = max(peak, ring.num_frames)
    # 60 fps, samples every 2/30 s: at most every 4th frame is ever stored
    assert ring.kept <= ring.seen // 4 + 2
    assert peak <= 12  # one clip span (~0.47 s) of sampled frames, plus the keyframe gap
    assert ring.evicted == 0


def test_geometry_any_sample_in() -> None:
    g = ClipGeometry.from_manifest(_prep(), "center")
    assert g.any_sample_in(0.99, 1.01)  # the keyframe itself
    assert not g.any_sample_in(0.01, 0.06)  # between samples 0 and 2/30
    assert g.before_s == pytest.approx(8 / 30) and g.after_s == pytest.approx(6 / 30)


def test_rejects_bad_input() -> None:
    ring = FrameRing(_prep(), alignment="center")
    ring.update(0.0, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="increase"):
        ring.update(0.0, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="size changed"):
        ring.update(0.1, np.zeros((9, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="crop"):
        FrameRing(_prep(crop=16), alignment="center")


def test_one_clip_sampling_record_from_preset_to_ring() -> None:
    """The preset, the manifest's preprocessing and the ring hand out the same `ClipSpec`;
    the ring's offsets are the record's, and its times are what training's clip_times gives."""
    import dataclasses

    from core.preset_info import preset_info
    from core.sampling import ClipSpec as SamplingClipSpec
    from core.sampling import clip_times

    assert ClipSpec is SamplingClipSpec  # core.clips re-exports the one record
    info = preset_info("slowfast_tiny")
    prep = _prep(short_side=info.short_side, num_frames=info.num_frames)
    assert prep.clip() == info.clip
    causal = ClipGeometry.from_manifest(prep, "causal")
    assert causal.clip == prep.clip("causal") == dataclasses.replace(info.clip, alignment="causal")
    assert (causal.num_frames, causal.alignment) == (info.num_frames, "causal")
    np.testing.assert_array_equal(causal.offsets_s, causal.clip.offsets_s())
    np.testing.assert_array_equal(
        causal.times(7.0),
        clip_times(7.0, num_frames=16, sampling_rate=2, target_fps=30.0, alignment="causal"),
    )
