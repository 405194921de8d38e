"""Preprocessing facts of the model presets, torch-free.

The export tool copies a :class:`PresetInfo` into the bundle manifest and the service
reads it from there (DESIGN.md: the manifest is the single source of numbers), so this
module must not import torch. ``models.presets`` builds the matching torch models.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.sampling import Alignment, ClipSpec

# Kinetics pixel statistics on [0, 1] RGB used by PySlowFast's and pytorchvideo's SlowFast
# configs (DATA.MEAN / DATA.STD); AVA fine-tuning keeps them.
KINETICS_MEAN: tuple[float, float, float] = (0.45, 0.45, 0.45)
KINETICS_STD: tuple[float, float, float] = (0.225, 0.225, 0.225)


@dataclass(frozen=True)
class PresetInfo:
    """What a runtime must do to a video before the model sees it.

    name: preset name, e.g. ``"slowfast_r50_ava"``.
    num_frames: fast-pathway frames T_f per clip.
    alpha: T_f / T_s; the slow pathway takes ``num_frames // alpha`` of them
        (``core.sampling.slow_indices``).
    sampling_rate: fast-pathway stride, in frames at ``target_fps``.
    short_side: resize the frame's short side to this many pixels (test scale).
    target_fps: the frame grid clip sampling works on (AVA videos are resampled to 30).
    mean, std: per-channel normalisation of [0, 1] RGB pixels.
    alignment: where the keyframe sits in the clip (see ``core.sampling``).
    """

    name: str
    num_frames: int
    alpha: int
    sampling_rate: int
    short_side: int
    target_fps: float = 30.0
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    alignment: Alignment = "center"

    def __post_init__(self) -> None:
        if self.alpha < 1 or self.num_frames % self.alpha != 0:
            raise ValueError(
                f"preset {self.name!r}: num_frames ({self.num_frames}) must be a multiple of "
                f"alpha ({self.alpha})"
            )
        if self.sampling_rate < 1 or self.short_side < 1 or self.target_fps <= 0:
            raise ValueError(
                f"preset {self.name!r}: sampling_rate, short_side and target_fps must be "
                f"positive; got {self.sampling_rate}, {self.short_side}, {self.target_fps}"
            )

    @property
    def clip(self) -> ClipSpec:
        """The preset's clip sampling (the record training, export and the service share)."""
        return ClipSpec.from_preset(self)

    @property
    def slow_frames(self) -> int:
        """T_s, the slow-pathway frames per clip."""
        return self.num_frames // self.alpha

    @property
    def clip_seconds(self) -> float:
        """Time span the fast pathway covers, num_frames * sampling_rate / target_fps."""
        return self.num_frames * self.sampling_rate / self.target_fps


# PySlowFast's AVA configs (SLOWFAST_32x2_R50_SHORT / SLOWFAST_32x2_R101_50_50): 32 fast
# frames every 2nd frame at 30 fps (about 2 s around the keyframe), alpha 4 -> 8 slow
# frames, test short side 256 (DESIGN.md, report A).
SLOWFAST_R50_AVA = PresetInfo(
    name="slowfast_r50_ava", num_frames=32, alpha=4, sampling_rate=2, short_side=256
)
SLOWFAST_R101_AVA = PresetInfo(
    name="slowfast_r101_ava", num_frames=32, alpha=4, sampling_rate=2, short_side=256
)
# Tiny CPU preset for tests and the demo: 16 fast / 4 slow frames every 2nd frame (~1 s),
# short side 128 (an 8x8 feature map at stride 16).
SLOWFAST_TINY = PresetInfo(
    name="slowfast_tiny", num_frames=16, alpha=4, sampling_rate=2, short_side=128
)

PRESET_INFOS: dict[str, PresetInfo] = {
    info.name: info for info in (SLOWFAST_R50_AVA, SLOWFAST_R101_AVA, SLOWFAST_TINY)
}


def preset_info(name: str) -> PresetInfo:
    """The :class:`PresetInfo` of a named preset; raises KeyError listing the known names."""
    try:
        return PRESET_INFOS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESET_INFOS)}") from None
