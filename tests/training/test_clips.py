"""core.clips: PyAV clip decoding (seek vs sequential vs frame folders) and preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.ava import AvaFormatError
from core.clips import (
    ClipSpec,
    FrameFolder,
    VideoDecodeError,
    boxes_to_pixels,
    decode_clip,
    find_video,
    iter_keyframe_clips,
    pack_pathways,
    preprocess_clip,
    resize_short_side,
)

FPS = 10
SECONDS = 6
W, H = 64, 48
# Frame k is a flat grey level, so a decoded frame tells which frame it was.
LEVEL0, STEP = 16, 3


def frame_index(frame: np.ndarray) -> int:
    return int(round((float(frame.mean()) - LEVEL0) / STEP))


def make_video(path: Path, *, codec: str = "libx264", gop: int = 12) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": "0", "bf": "0"}
        for k in range(FPS * SECONDS):
            rgb = np.full((H, W, 3), LEVEL0 + STEP * k, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("clips") / "v.mp4")


SPEC = ClipSpec(num_frames=4, sampling_rate=2, target_fps=FPS, alignment="center")


@pytest.mark.parametrize(
    ("keyframe", "spec", "expected"),
    [
        (0.0, SPEC, [0, 0, 0, 2]),  # start: edge frame repeats
        (3.0, SPEC, [26, 28, 30, 32]),  # middle
        (5.9, SPEC, [55, 57, 59, 59]),  # end: last frame (59) repeats
        (3.0, ClipSpec(4, 2, FPS, "causal"), [24, 26, 28, 30]),
        (3.0, ClipSpec(4, 1, 2 * FPS, "center"), [29, 29, 30, 30]),  # 20 fps grid on 10 fps
    ],
)
def test_decode_clip_frame_indices(
    video: Path, keyframe: float, spec: ClipSpec, expected: list
) -> None:
    clip = decode_clip(video, keyframe, spec)
    assert clip.shape == (4, H, W, 3) and clip.dtype == np.uint8
    assert [frame_index(f) for f in clip] == expected


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_seek_and_sequential_paths_give_identical_frames(tmp_path: Path, codec: str) -> None:
    path = make_video(tmp_path / f"v_{codec}.mp4", codec=codec, gop=7)
    spec = ClipSpec(num_frames=8, sampling_rate=2, target_fps=FPS)
    keyframes = [0.0, 0.3, 1.0, 2.0, 2.5, 4.0, 5.0, 5.9, 7.0]
    sequential = dict(iter_keyframe_clips(path, reversed(keyframes), spec))
    assert list(sequential) == sorted(keyframes)
    for t in keyframes:
        np.testing.assert_array_equal(decode_clip(path, t, spec), sequential[t], err_msg=str(t))


def test_frame_folder_matches_the_video(tmp_path: Path, video: Path) -> None:
    from PIL import Image

    everything = ClipSpec(
        num_frames=FPS * SECONDS, sampling_rate=1, target_fps=FPS, alignment="causal"
    )
    ((_, all_frames),) = iter_keyframe_clips(video, [SECONDS - 0.1], everything)
    folder = tmp_path / "frames" / "v"
    folder.mkdir(parents=True)
    for k, frame in enumerate(all_frames, start=1):
        Image.fromarray(frame).save(folder / f"{k:06d}.png")
    frames = FrameFolder(folder, fps=FPS, pattern="{:06d}.png")
    assert frames.num_frames == FPS * SECONDS
    for t in (0.0, 2.2, 5.9):
        np.testing.assert_array_equal(frames.clip(t, SPEC), decode_clip(video, t, SPEC))


def test_missing_inputs_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(VideoDecodeError, match="not found") as info:
        decode_clip(missing, 1.0, SPEC)
    assert info.value.file == str(missing) and isinstance(info.value, AvaFormatError)
    with pytest.raises(VideoDecodeError, match="not found"):
        list(iter_keyframe_clips(missing, [1.0], SPEC))
    with pytest.raises(VideoDecodeError, match="no video for 'abc'"):
        find_video(tmp_path, "abc")
    with pytest.raises(VideoDecodeError, match="frame folder not found"):
        FrameFolder(tmp_path / "frames" / "abc", fps=30)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoDecodeError, match="cannot open"):
        decode_clip(garbage, 1.0, SPEC)


def test_find_video(tmp_path: Path, video: Path) -> None:
    (tmp_path / "abc.mkv").write_bytes(b"")
    assert find_video(tmp_path, "abc") == tmp_path / "abc.mkv"


def test_clip_spec_from_preset() -> None:
    info = pytest.importorskip("core.preset_info")
    spec = ClipSpec.from_preset(info.SLOWFAST_R50_AVA)
    assert spec == ClipSpec(num_frames=32, sampling_rate=2, target_fps=30.0, alignment="center")


def test_resize_matches_torch_bilinear() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 37, 53, 3), dtype=np.uint8)
    for short in (16, 37, 90):
        ours = resize_short_side(frames, short)
        x = torch.from_numpy(frames.astype(np.float32)).permute(0, 3, 1, 2)
        ref = torch.nn.functional.interpolate(
            x, size=ours.shape[1:3], mode="bilinear", align_corners=False
        ).permute(0, 2, 3, 1)
        # uint8 out (core.preprocess): torch's numbers rounded to the nearest level
        np.testing.assert_allclose(ours, ref.numpy(), atol=0.5 + 1e-3)
    assert resize_short_side(frames, 16).shape == (3, 16, 23, 3)  # round(53 * 16 / 37) = 23


def test_preprocess_and_pack() -> None:
    frames = np.full((32, 48, 64, 3), 255, dtype=np.uint8)
    x = preprocess_clip(frames, short_side=24, mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))
    assert x.shape == (3, 32, 24, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x, (1 - 0.45) / 0.225, rtol=1e-5)
    slow, fast = pack_pathways(x, alpha=4)
    assert slow.shape == (3, 8, 24, 32) and fast.shape == (3, 32, 24, 32)
    with pytest.raises(ValueError, match="RGB"):
        preprocess_clip(frames[..., :1], short_side=24, mean=(0,), std=(1,))


def test_boxes_to_pixels() -> None:
    out = boxes_to_pixels(np.array([[0.0, 0.5, 1.0, 1.0]]), width=320, height=240)
    assert out.tolist() == [[0.0, 120.0, 320.0, 240.0]] and out.dtype == np.float32


@pytest.mark.parametrize("name", ["basketball_2people.mp4", "pedestrians_vtest.avi"])
def test_real_videos_seek_equals_sequential(assets: Path, name: str) -> None:
    path = assets / "video" / name
    spec = ClipSpec(num_frames=8, sampling_rate=4, target_fps=30)
    keyframes = [0.0, 4.0, 9.5]
    sequential = dict(iter_keyframe_clips(path, keyframes, spec))
    for t in keyframes:
        np.testing.assert_array_equal(decode_clip(path, t, spec), sequential[t], err_msg=str(t))
