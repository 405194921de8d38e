"""Importers for public SlowFast AVA checkpoints (PySlowFast, Caffe2, pytorchvideo, MMAction2).

An import maps a public file's tensors onto one of our presets and returns the model and
the preset overrides that rebuild it; ``avaserve import-checkpoint`` then writes it in our
own checkpoint format (``models.checkpoints``).

**Import** (:func:`import_state_dict`, :func:`import_checkpoint`) maps every tensor of a
public checkpoint onto a preset *strictly*: each source tensor must map to a target key,
each target key must be filled, and every shape must agree; otherwise a
:class:`CheckpointImportError` carries an :class:`ImportReport` naming the keys. Where a
source architecture has parts our presets cannot express (fast-pathway non-local blocks,
extra head layers, ...) the error says which part. Layouts (``p`` pathway 0 slow / 1 fast,
``s`` our stage 0..3 = res2..res5, ``b`` block; see ``models/backbone.py`` for ours)::

  ours (ActionModel)             pyslowfast (.pyth model_state)     caffe2 (.pkl blobs)
  backbone.stem.{slow,fast}      s1.pathway{p}_stem.conv|bn         [t_]conv1_w, [t_]res_conv1_bn_*
  backbone.fusions.0             s1_fuse.conv_f2s|bn                t_pool1_subsample[_bn]_*
  backbone.fusions.{i>0}         s{i+1}_fuse.conv_f2s|bn            t_res{i+1}_{last}_branch2c_bn
                                                                      _subsample[_bn]_*
  ...stages.{s}.{pw}.blocks.{b}  s{s+2}.pathway{p}_res{b}           [t_]res{s+2}_{b}_
    .shortcut_conv|norm            .branch1|branch1_bn                branch1_w|branch1_bn_*
    .conv_x|norm_x (x=a,b,c)       .branch2.x|branch2.x_bn            branch2x_w|branch2x_bn_*
  ...stages.{s}.slow.nonlocals.{b} s{s+2}.pathway0_nonlocal{b}      nonlocal_conv{s+2}_{b}_
    .conv_{theta,phi,g,out}|norm   .conv_*|bn                         {theta,phi,g,out}_w|bn_*
  classifier                     head.projection                    pred_w, pred_b

  Caffe2 suffixes: _w weight, _b bias, _bn_s gamma, _bn_b beta, _bn_rm running mean,
  _bn_riv running variance; ``*_momentum``, ``lr`` and ``model_iter`` blobs are solver state.

  ours                           pytorchvideo slowfast_r50_detection  mmaction2 (state_dict)
  backbone.stem.{pw}             model.blocks.0.multipathway_blocks.{p} backbone.{pw}_path.conv1
    .conv|norm                     .conv|norm                           .conv|bn
  backbone.fusions.{i}           model.blocks.{i}.multipathway_fusion   backbone.slow_path.
    .conv|norm                     .conv_fast_to_slow|norm              {conv1|layer{i}}_lateral
                                                                          .conv (no norm)
  ...stages.{s}.{pw}.blocks.{b}  model.blocks.{s+1}.multipathway_blocks backbone.{pw}_path.
                                   .{p}.res_blocks.{b}                  layer{s+1}.{b}
    .shortcut_conv|norm            .branch1_conv|branch1_norm           .downsample.conv|bn
    .conv_x|norm_x                 .branch2.conv_x|norm_x               .conv{1,2,3}.conv|bn
  classifier                     detection_head.proj                  roi_head.bbox_head.fc_cls

**Heads.** PySlowFast and pytorchvideo AVA heads have 80 outputs, one per AVA action.
MMAction2's ``BBoxHeadAVA`` has ``num_classes = 81``: column 0 is reserved (box
positive/negative) and ignored by its loss and evaluation, so the importer drops row 0
and maps rows 1..80 to AVA ids 1..80. A model trained on a custom class subset needs
``class_ids`` set to its ids, in column order.

**What the weights do not say.** Strides, dilations, RoI settings and pixel statistics are
not in a state dict. Each format brings the preset overrides that match its published AVA
configs (:data:`FORMAT_OVERRIDES`); the fusion kernel, conv-only laterals, stem widths
(``stem_dim``, ``beta_inv``), every block's temporal kernel (PySlowFast's
``NUM_BLOCK_TEMP_KERNEL``: R101 res4 blocks 6-22 are 1x1x1) and the non-local placement are
read off the keys and shapes; a PySlowFast ``.pyth`` written by PySlowFast's trainer
carries its config (``cfg``), from which alpha, strides, dilations, clip length, test
scale, pixel statistics, the RoI resolution and alignment and the non-local pool and
instantiation (``softmax`` or ``dot_product``) are taken. A file without a config (every
Caffe2 ``.pkl``) gets the values of PySlowFast's published AVA configs, with a note giving
the ``--set`` that changes each guess; a ``--set`` that contradicts the weights fails with
the one that matches them.
The head settings the weights do not show are set from the source (:func:`_head_settings`):
RoIAlign sampling (all three sources sample adaptively, ``sampling_ratio=0``), alignment,
the temporal pool (MMAction2's ``temporal_pool_mode``) and the output activation (every
upstream AVA head scores with a sigmoid per class). They come from the config stored in
the checkpoint (PySlowFast's ``cfg``, MMAction2's ``meta.cfg``) where there is one, else
from that project's defaults, and ``ImportReport.notes`` says which. A setting the presets
cannot express yet is noted rather than applied.

Import only files you trust: the Caffe2 ``.pkl`` is read with an unpickler that accepts
numpy arrays and nothing else, and torch files load with ``weights_only=True`` unless
``trust_pickle=True``.
"""

from __future__ import annotations

import inspect
import json
import pickle
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.action_model import ActionModel

__all__ = [
    "FORMAT_OVERRIDES",
    "SOURCE_FORMATS",
    "CheckpointImportError",
    "ImportReport",
    "ImportResult",
    "SourceState",
    "caffe2_to_pyslowfast",
    "import_checkpoint",
    "import_state_dict",
    "map_source_key",
    "read_source_state",
]

StrPath = str | PathLike[str]
SOURCE_FORMATS: tuple[str, ...] = ("pyslowfast", "caffe2", "pytorchvideo", "mmaction2")

_PATHWAYS = ("slow", "fast")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # MMAction2's (123.675, 116.28, 103.53) / 255
_IMAGENET_STD = (0.229, 0.224, 0.225)  # (58.395, 57.12, 57.375) / 255

# Preset overrides that make our preset compute what each source's published AVA config
# computes, beyond what the keys and shapes reveal (see _infer_overrides for those).
FORMAT_OVERRIDES: dict[str, dict[str, Any]] = {
    # All: RoIAlign with adaptive sampling (sampling_ratio=0) and a sigmoid per class.
    # PySlowFast SLOWFAST_32x2_R50_SHORT / R101 AVA configs: res5 stride 1 dilation 2,
    # aligned 7x7 RoIAlign, Kinetics mean/std: our preset defaults.
    "pyslowfast": {"sampling_ratio": 0, "output_activation": "sigmoid"},
    # The model zoo's Caffe2 AVA models (configs/AVA/c2/*.yaml) set DETECTION.ALIGNED False.
    "caffe2": {"roi_aligned": False, "sampling_ratio": 0, "output_activation": "sigmoid"},
    # pytorchvideo builds torchvision's RoIAlign without `aligned`, i.e. aligned=False.
    "pytorchvideo": {"roi_aligned": False, "sampling_ratio": 0, "output_activation": "sigmoid"},
    # MMAction2 slowfast AVA configs: conv-only laterals, res5 stride 1 *without* dilation,
    # 8x8 aligned RoIAlign (SingleRoIExtractor3D output_size=8), ImageNet mean/std on RGB.
    "mmaction2": {
        "sampling_ratio": 0,
        "output_activation": "sigmoid",
        "fusion_norm": False,
        "spatial_dilations": (1, 1, 1, 1),
        "roi_output_size": (8, 8),
        "mean": _IMAGENET_MEAN,
        "std": _IMAGENET_STD,
    },
}

_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


class CheckpointImportError(ValueError):
    """A source checkpoint does not load strictly into the preset; ``report`` says why."""

    def __init__(self, message: str, report: ImportReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ImportReport:
    """What an import did, key by key.

    mapped: (source key, our key) for every tensor that found its place.
    unmapped: source keys that match no rule of the format (strict import fails).
    unrepresentable: (source key, reason) for parts our presets cannot express.
    missing: our keys that no source tensor filled (strict import fails).
    shape_mismatches: (source key, our key, source shape, our shape).
    ignored: source entries that are solver state, not model state (Caffe2 momentum...).
    synthesised: our keys filled without a source tensor, with a value that keeps the
        source's function (BatchNorm ``num_batches_tracked``; Caffe2 affine-only BN stats).
    notes: differences that remain after a successful import.
    overrides: the preset overrides the import used (format + inferred + caller's).
    """

    source_format: str
    preset: str
    mapped: list[tuple[str, str]] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    unrepresentable: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    shape_mismatches: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )
    ignored: list[str] = field(default_factory=list)
    synthesised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.unmapped or self.unrepresentable or self.missing or self.shape_mismatches)

    def summary(self, *, limit: int = 10, verbose: bool = False) -> str:
        """Human-readable report; ``verbose`` adds the full source -> target table."""
        lines = [
            f"import {self.source_format} -> preset {self.preset}: "
            f"{len(self.mapped)} tensors mapped, {len(self.unmapped)} unmapped source keys, "
            f"{len(self.missing)} missing target keys, {len(self.shape_mismatches)} shape "
            f"mismatches, {len(self.unrepresentable)} unrepresentable, "
            f"{len(self.synthesised)} synthesised, {len(self.ignored)} ignored"
        ]
        if self.overrides:
            lines.append(f"preset overrides: {self.overrides}")

        def section(title: str, items: Sequence[str]) -> None:
            if not items:
                return
            lines.append(f"{title} ({len(items)}):")
            shown = items if verbose else items[:limit]
            lines.extend(f"  {item}" for item in shown)
            if len(shown) < len(items):
                lines.append(f"  ... {len(items) - len(shown)} more (use --report)")

        section("unrepresentable", [f"{k}: {why}" for k, why in self.unrepresentable])
        section("unmapped source keys", self.unmapped)
        section("missing target keys", self.missing)
        section(
            "shape mismatches",
            [f"{s} {list(ss)} -> {t} {list(ts)}" for s, t, ss, ts in self.shape_mismatches],
        )
        section("synthesised", self.synthesised)
        section("ignored (solver state)", self.ignored)
        section("notes", self.notes)
        if verbose:
            section("mapped", [f"{s} -> {t}" for s, t in self.mapped])
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Key mapping: one function per layout, source key -> our key, None (no rule), or
# _Unrepresentable(reason).


@dataclass(frozen=True)
class _Unrepresentable:
    reason: str


_KeyMapper = Callable[[str], "str | _Unrepresentable | None"]


# A residual block's parameters: (source pattern, our name's template filled with its groups).
_BlockRules = tuple[tuple[str, str], ...]
_PYSLOWFAST_BLOCK: _BlockRules = (
    (r"branch1\.(\w+)", "shortcut_conv.{0}"),
    (r"branch1_bn\.(\w+)", "shortcut_norm.{0}"),
    (r"branch2\.([abc])\.(\w+)", "conv_{0}.{1}"),
    (r"branch2\.([abc])_bn\.(\w+)", "norm_{0}.{1}"),
)
_PYTORCHVIDEO_BLOCK: _BlockRules = (
    (r"branch1_(conv|norm)\.(\w+)", "shortcut_{0}.{1}"),
    (r"branch2\.(conv|norm)_([abc])\.(\w+)", "{0}_{1}.{2}"),
)


def _map_block(prefix: str, tail: str, rules: _BlockRules) -> str | None:
    """``prefix.<name>`` for the first rule matching the block-relative ``tail``, else None."""
    for pattern, template in rules:
        if t := re.fullmatch(pattern, tail):
            return f"{prefix}.{template.format(*t.groups())}"
    return None


def _map_pyslowfast(key: str) -> str | _Unrepresentable | None:
    if m := re.fullmatch(r"s1\.pathway([01])_stem\.(conv|bn)\.(\w+)", key):
        part = "conv" if m[2] == "conv" else "norm"
        return f"backbone.stem.{_PATHWAYS[int(m[1])]}.{part}.{m[3]}"
    if m := re.fullmatch(r"s([1-4])_fuse\.(conv_f2s|bn)\.(\w+)", key):
        part = "conv" if m[2] == "conv_f2s" else "norm"
        return f"backbone.fusions.{int(m[1]) - 1}.{part}.{m[3]}"
    if m := re.fullmatch(r"s([2-5])\.pathway([01])_res(\d+)\.(.+)", key):
        prefix = f"backbone.stages.{int(m[1]) - 2}.{_PATHWAYS[int(m[2])]}.blocks.{m[3]}"
        return _map_block(prefix, m[4], _PYSLOWFAST_BLOCK)
    if m := re.fullmatch(r"s([2-5])\.pathway([01])_nonlocal(\d+)\.(conv_\w+|bn)\.(\w+)", key):
        if m[2] == "1":
            return _Unrepresentable(
                "non-local block in the fast pathway; our backbone places non-local blocks "
                "in the slow pathway only"
            )
        part = "norm" if m[4] == "bn" else m[4]
        return f"backbone.stages.{int(m[1]) - 2}.slow.nonlocals.{m[3]}.{part}.{m[5]}"
    if m := re.fullmatch(r"head\.projection\.(weight|bias)", key):
        return f"classifier.{m[1]}"
    if key.startswith("head."):
        return _Unrepresentable(
            "head layer other than the final projection; our RoI head is RoIAlign -> max "
            "pool -> dropout -> one Linear"
        )
    return None


_C2_SUFFIX = {"w": "weight", "b": "bias"}
_C2_BN_SUFFIX = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
# (pattern over the whole blob name, PySlowFast name template). The template fields are
# the groups; `p` (pathway) is filled from the optional "t_" prefix, `x` from the suffix.
_C2_RULES: tuple[tuple[str, str], ...] = (
    (r"(t_)?conv1_(w|b)", "s1.pathway{p}_stem.conv.{x}"),
    (r"(t_)?res_conv1_bn_(s|b|rm|riv)", "s1.pathway{p}_stem.bn.{x}"),
    (r"(t_)?res(\d+)_(\d+)_branch1_(w|b)", "s{1}.pathway{p}_res{2}.branch1.{x}"),
    (r"(t_)?res(\d+)_(\d+)_branch1_bn_(s|b|rm|riv)", "s{1}.pathway{p}_res{2}.branch1_bn.{x}"),
    (r"(t_)?res(\d+)_(\d+)_branch2([abc])_(w|b)", "s{1}.pathway{p}_res{2}.branch2.{3}.{x}"),
    (
        r"(t_)?res(\d+)_(\d+)_branch2([abc])_bn_(s|b|rm|riv)",
        "s{1}.pathway{p}_res{2}.branch2.{3}_bn.{x}",
    ),
    # Laterals are named after the fast layer they read: the stem pool, then the last
    # block's branch2c BN of res2..res4 ("subsample" = the time-strided conv).
    (r"()t_pool1_subsample_(w|b)", "s1_fuse.conv_f2s.{x}"),
    (r"()t_pool1_subsample_bn_(s|b|rm|riv)", "s1_fuse.bn.{x}"),
    (r"()t_res(\d+)_\d+_branch2c_bn_subsample_(w|b)", "s{1}_fuse.conv_f2s.{x}"),
    (r"()t_res(\d+)_\d+_branch2c_bn_subsample_bn_(s|b|rm|riv)", "s{1}_fuse.bn.{x}"),
    (
        r"()nonlocal_conv(\d+)_(\d+)_(theta|phi|g|out)_(w|b)",
        "s{1}.pathway0_nonlocal{2}.conv_{3}.{x}",
    ),
    (r"()nonlocal_conv(\d+)_(\d+)_bn_(s|b|rm|riv)", "s{1}.pathway0_nonlocal{2}.bn.{x}"),
    (r"()pred_(w|b)", "head.projection.{x}"),
)


def caffe2_to_pyslowfast(name: str) -> str | None:
    """Caffe2 blob name -> PySlowFast parameter name, or None when no rule matches.

    Written from the naming that PySlowFast's ``c2_model_loading`` converts; fast-pathway
    blobs carry a ``t_`` prefix, ``_bn_riv`` is the running variance.
    """
    for pattern, template in _C2_RULES:
        if m := re.fullmatch(pattern, name):
            groups = m.groups()
            suffix = groups[-1]
            table = _C2_BN_SUFFIX if pattern.endswith("(s|b|rm|riv)") else _C2_SUFFIX
            fields = {"p": 1 if groups[0] else 0, "x": table[suffix]}
            return template.format("", *groups[1:-1], **fields)
    return None


def _is_caffe2_solver_state(name: str) -> bool:
    return name.endswith("_momentum") or name in {"lr", "model_iter"}


def _map_caffe2(key: str) -> str | _Unrepresentable | None:
    name = caffe2_to_pyslowfast(key)
    return None if name is None else _map_pyslowfast(name)


def _map_pytorchvideo(key: str) -> str | _Unrepresentable | None:
    key = key.removeprefix("model.")
    if m := re.fullmatch(r"blocks\.0\.multipathway_blocks\.([01])\.(conv|norm)\.(\w+)", key):
        return f"backbone.stem.{_PATHWAYS[int(m[1])]}.{m[2]}.{m[3]}"
    if m := re.fullmatch(
        r"blocks\.([0-3])\.multipathway_fusion\.(conv_fast_to_slow|norm)\.(\w+)", key
    ):
        part = "conv" if m[2] == "conv_fast_to_slow" else "norm"
        return f"backbone.fusions.{m[1]}.{part}.{m[3]}"
    if m := re.fullmatch(
        r"blocks\.([1-4])\.multipathway_blocks\.([01])\.res_blocks\.(\d+)\.(.+)", key
    ):
        prefix = f"backbone.stages.{int(m[1]) - 1}.{_PATHWAYS[int(m[2])]}.blocks.{m[3]}"
        return _map_block(prefix, m[4], _PYTORCHVIDEO_BLOCK)
    if m := re.fullmatch(r"detection_head\.proj\.(weight|bias)", key):
        return f"classifier.{m[1]}"
    if re.fullmatch(r"blocks\.\d+\.proj\.(weight|bias)", key):
        return _Unrepresentable(
            "clip classification head (ResNetBasicHead); our presets classify persons with "
            "a RoI head: import pytorchvideo's slowfast_r50_detection layout"
        )
    return None


def _map_mmaction2(key: str) -> str | _Unrepresentable | None:
    if m := re.fullmatch(r"backbone\.(slow|fast)_path\.conv1\.(conv|bn)\.(\w+)", key):
        part = "conv" if m[2] == "conv" else "norm"
        return f"backbone.stem.{m[1]}.{part}.{m[3]}"
    if m := re.fullmatch(r"backbone\.slow_path\.(conv1|layer[1-3])_lateral\.(conv|bn)\.(\w+)", key):
        index = 0 if m[1] == "conv1" else int(m[1][-1])
        part = "conv" if m[2] == "conv" else "norm"
        return f"backbone.fusions.{index}.{part}.{m[3]}"
    if m := re.fullmatch(r"backbone\.(slow|fast)_path\.layer([1-4])\.(\d+)\.(.+)", key):
        prefix = f"backbone.stages.{int(m[2]) - 1}.{m[1]}.blocks.{m[3]}"
        tail = m[4]
        if t := re.fullmatch(r"conv([123])\.(conv|bn)\.(\w+)", tail):
            part = "conv" if t[2] == "conv" else "norm"
            return f"{prefix}.{part}_{'abc'[int(t[1]) - 1]}.{t[3]}"
        if t := re.fullmatch(r"downsample\.(conv|bn)\.(\w+)", tail):
            part = "conv" if t[1] == "conv" else "norm"
            return f"{prefix}.shortcut_{part}.{t[2]}"
        if tail.startswith("non_local_block."):
            return _Unrepresentable(
                "MMAction2 non-local block (NonLocal3d); its layout and pooling differ from "
                "our NonLocalBlock"
            )
        return None
    if m := re.fullmatch(r"roi_head\.bbox_head\.fc_cls\.(weight|bias)", key):
        return f"classifier.{m[1]}"
    if key.startswith("roi_head.shared_head."):
        return _Unrepresentable(
            "MMAction2 shared RoI head (ACRN / LFB FBO); our presets have no counterpart"
        )
    return None


_MAPPERS: dict[str, _KeyMapper] = {
    "pyslowfast": _map_pyslowfast,
    "caffe2": _map_caffe2,
    "pytorchvideo": _map_pytorchvideo,
    "mmaction2": _map_mmaction2,
}


def map_source_key(source_format: str, key: str) -> str | None:
    """Our key for one source key, or None (no rule, or a part we cannot represent)."""
    mapped = _mapper(source_format)(key)
    return mapped if isinstance(mapped, str) else None


def _mapper(source_format: str) -> _KeyMapper:
    try:
        return _MAPPERS[source_format]
    except KeyError:
        raise ValueError(
            f"unknown checkpoint format {source_format!r}; choose one of {list(SOURCE_FORMATS)}"
        ) from None


# ----------------------------------------------------------------------------------------
# Reading source files.


@dataclass
class SourceState:
    """A source checkpoint's tensors and what else the file said.

    tensors: source key -> tensor (Caffe2 numpy blobs converted).
    source_format: the layout the keys use (``caffe2`` for a PySlowFast ``.pkl``).
    config: the training config text stored beside the weights (PySlowFast ``cfg``, YAML;
        MMAction2 ``meta.cfg``, Python), if any.
    """

    tensors: dict[str, Tensor]
    source_format: str
    config: str | None = None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a Caffe2 .pkl holds nothing else, and
    anything else in a downloaded pickle could run code."""

    _ALLOWED = {
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: a Caffe2 checkpoint holds only numpy "
                "arrays (pass trust_pickle=True / --trust-pickle for a file you trust)"
            )
        return super().find_class(module, name)


def _load_pickle(path: Path, *, trust_pickle: bool) -> Any:
    # latin1: Caffe2 checkpoints were written by Python 2.
    with path.open("rb") as f:
        try:
            if trust_pickle:
                return pickle.load(f, encoding="latin1")
            return _NumpyOnlyUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise CheckpointImportError(f"{path}: cannot read the pickle: {exc}") from None


# torch's legacy (pre-zip) format starts with this magic number, pickled with protocol 2.
_TORCH_LEGACY_HEAD = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]  # without STOP


def _is_torch_file(path: Path) -> bool:
    """A torch.save file: a zip archive, or the legacy format's magic number first (read
    from the first bytes; a Caffe2 pickle is not loaded twice)."""
    with path.open("rb") as f:
        head = f.read(len(_TORCH_LEGACY_HEAD))
    return head.startswith(b"PK") or head == _TORCH_LEGACY_HEAD


def _load_torch(path: Path, *, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        raise CheckpointImportError(
            f"{path}: holds Python objects besides tensors ({str(exc).splitlines()[0]}); "
            "re-run with --trust-pickle if you trust the file"
        ) from None


def _as_tensor_dict(raw: Mapping[Any, Any], path: Path) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in raw.items():
        if isinstance(value, Tensor):
            out[str(key)] = value
        elif isinstance(value, np.ndarray):
            out[str(key)] = torch.from_numpy(np.ascontiguousarray(value))
        elif isinstance(value, int | float | np.number):
            out[str(key)] = torch.tensor(value)
        else:
            raise CheckpointImportError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
    # DataParallel / DDP checkpoints prefix every key with "module.".
    if out and all(k.startswith("module.") for k in out):
        out = {k.removeprefix("module."): v for k, v in out.items()}
    return out


def read_source_state(
    path: StrPath, source_format: str, *, trust_pickle: bool = False
) -> SourceState:
    """Read a public checkpoint file into tensors.

    * ``pyslowfast``: ``.pyth`` (``torch.save`` dict with ``model_state`` and, from
      PySlowFast's own trainer, the config text ``cfg``), or a Caffe2 ``.pkl`` (a dict with
      ``blobs`` of numpy arrays), recognised by its content, reported as ``caffe2``;
    * ``pytorchvideo``: the hub ``.pyth`` (``model_state``) or a bare state dict;
    * ``mmaction2``: ``.pth`` with ``state_dict`` (``meta`` etc. are skipped).
    """
    _mapper(source_format)
    path = Path(path)
    if not path.is_file():
        raise CheckpointImportError(f"{path}: no such checkpoint file")
    if path.suffix == ".pkl" and not _is_torch_file(path):
        raw = _load_pickle(path, trust_pickle=trust_pickle)
    else:
        # PySlowFast's zoo also has torch.save files named .pkl (configs with
        # CHECKPOINT_TYPE: pytorch, e.g. SLOWFAST_32x2_R101_50_50.pkl).
        raw = _load_torch(path, trust_pickle=trust_pickle)
    if not isinstance(raw, Mapping):
        raise CheckpointImportError(f"{path}: expected a dict, found {type(raw).__name__}")

    config = raw.get("cfg") if isinstance(raw.get("cfg"), str) else None
    meta = raw.get("meta")
    if source_format == "mmaction2" and isinstance(meta, Mapping):
        # mmengine's runner stores the merged config as text under meta["cfg"] (mmcv 1.x
        # runners under meta["config"]).
        text = meta.get("cfg", meta.get("config"))
        config = text if isinstance(text, str) else None
    if "blobs" in raw:
        if source_format not in ("pyslowfast", "caffe2"):
            raise CheckpointImportError(
                f"{path}: a Caffe2 'blobs' checkpoint, which is the PySlowFast Caffe2 layout; "
                f"use --format pyslowfast, not {source_format}"
            )
        return SourceState(_as_tensor_dict(raw["blobs"], path), "caffe2", config)
    for container in ("model_state", "state_dict", "model"):
        if isinstance(raw.get(container), Mapping):
            return SourceState(_as_tensor_dict(raw[container], path), source_format, config)
    if all(isinstance(v, Tensor | np.ndarray) for v in raw.values()):
        return SourceState(_as_tensor_dict(raw, path), source_format, config)
    raise CheckpointImportError(
        f"{path}: found none of 'model_state' (PySlowFast, pytorchvideo), 'state_dict' "
        f"(MMAction2) or 'blobs' (Caffe2); top-level keys: {sorted(map(str, raw))[:10]}"
    )


# ----------------------------------------------------------------------------------------
# Import.


@dataclass
class ImportResult:
    """The imported model (eval mode), the report, and the overrides to rebuild it."""

    model: ActionModel
    report: ImportReport
    preset_overrides: dict[str, Any]


def _preset_accepts(name: str) -> bool:
    """Whether the presets know an override name (head option or PresetInfo field), so a
    format override the presets do not support yet degrades to a note, not a crash."""
    import dataclasses

    from core.preset_info import PresetInfo
    from models.presets import build_action_model

    if name in inspect.signature(build_action_model).parameters:
        return True
    if name in {f.name for f in dataclasses.fields(PresetInfo)}:
        return True
    from models.backbone import create_slowfast

    return name in inspect.signature(create_slowfast).parameters


def _infer_overrides(mapped: Mapping[str, Tensor], *, all_kernels: bool = False) -> dict[str, Any]:
    """Architecture facts visible in the mapped keys and shapes: the fusion kernel and norm,
    the stem widths (``stem_dim``, ``beta_inv``), each block's temporal kernel and the
    non-local placement."""
    inferred: dict[str, Any] = {}
    fusion = mapped.get("backbone.fusions.0.conv.weight")
    if fusion is not None and fusion.dim() == 5:
        inferred["fusion_kernel"] = int(fusion.shape[2])
    if fusion is not None:
        inferred["fusion_norm"] = "backbone.fusions.0.norm.weight" in mapped
    slow_stem = mapped.get("backbone.stem.slow.conv.weight")
    fast_stem = mapped.get("backbone.stem.fast.conv.weight")
    if slow_stem is not None and fast_stem is not None and slow_stem.dim() == 5:
        slow_c, fast_c = int(slow_stem.shape[0]), int(fast_stem.shape[0])
        inferred["stem_dim"] = slow_c
        if fast_c > 0 and slow_c % fast_c == 0:
            inferred["beta_inv"] = slow_c // fast_c
    inferred.update(_infer_temporal_kernels(mapped, keep_defaults=all_kernels))
    placement: dict[int, set[int]] = {}
    for key in mapped:
        if m := re.fullmatch(r"backbone\.stages\.(\d)\.slow\.nonlocals\.(\d+)\..+", key):
            placement.setdefault(int(m[1]), set()).add(int(m[2]))
    if placement:
        stages = sorted(placement)
        inferred["nonlocal_stages"] = tuple(stages)
        inferred["nonlocal_blocks"] = tuple(tuple(sorted(placement[s])) for s in stages)
    return inferred


def _infer_temporal_kernels(
    mapped: Mapping[str, Tensor], *, keep_defaults: bool = False
) -> dict[str, Any]:
    """``slow_temporal_kernels`` / ``fast_temporal_kernels`` read off each block's first
    conv (k x 1 x 1 or k x 3 x 3): one int per stage where every block agrees, else the
    per-block tuple (PySlowFast's R101 ``NUM_BLOCK_TEMP_KERNEL`` gives res4 kernel 3 in
    blocks 0-5 and 1 in blocks 6-22). Only set where they differ from the defaults, unless
    ``keep_defaults``."""
    from models.backbone import create_slowfast

    per_block: dict[tuple[str, int], dict[int, int]] = {}
    for key, tensor in mapped.items():
        m = re.fullmatch(r"backbone\.stages\.(\d)\.(slow|fast)\.blocks\.(\d+)\.conv_a\.weight", key)
        if m and tensor.dim() == 5:
            per_block.setdefault((m[2], int(m[1])), {})[int(m[3])] = int(tensor.shape[2])
    out: dict[str, Any] = {}
    defaults = inspect.signature(create_slowfast).parameters
    for pathway in _PATHWAYS:
        name = f"{pathway}_temporal_kernels"
        stages: list[int | tuple[int, ...]] = []
        for s in range(4):
            blocks = per_block.get((pathway, s))
            if not blocks or sorted(blocks) != list(range(len(blocks))):
                return {}  # not a four-stage layout we can read; leave it to the preset
            ks = tuple(blocks[b] for b in range(len(blocks)))
            stages.append(ks[0] if len(set(ks)) == 1 else ks)
        default = [
            spec if isinstance(spec, int) else (spec[0] if len(set(spec)) == 1 else tuple(spec))
            for spec in defaults[name].default
        ]
        if keep_defaults or stages != default:
            out[name] = tuple(stages)
    return out


def _stage_depths(keys: Iterable[str]) -> dict[tuple[int, str], int]:
    depths: dict[tuple[int, str], int] = {}
    for key in keys:
        if m := re.fullmatch(r"backbone\.stages\.(\d)\.(slow|fast)\.blocks\.(\d+)\..+", key):
            slot = (int(m[1]), m[2])
            depths[slot] = max(depths.get(slot, 0), int(m[3]) + 1)
    return depths


def _parse_config(config: str | None, report: ImportReport) -> dict[str, Any]:
    if config is None:
        return {}
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml ships with the dev tools
        report.notes.append("checkpoint has a PySlowFast config; pyyaml missing, not checked")
        return {}
    try:
        cfg = yaml.safe_load(config)
    except yaml.YAMLError:
        report.notes.append("checkpoint config is not valid YAML; not checked")
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _pyslowfast_checks(
    config: str | None, report: ImportReport, user: Mapping[str, Any] | None = None
) -> None:
    """Settings of a PySlowFast model that its weights do not show: read them from the
    config stored in a ``.pyth`` (``cfg``), else assume PySlowFast's defaults."""
    cfg = _parse_config(config, report)

    def get(*path: str) -> Any:
        node: Any = cfg
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def set_default(name: str, value: Any) -> None:
        report.overrides.setdefault(name, value)

    if "nonlocal_stages" in report.overrides:
        _pyslowfast_nonlocal(get, config is not None, report, user or {})
    group = get("NONLOCAL", "GROUP")
    if isinstance(group, list) and any(int(g) != 1 for st in group for g in _as_list(st)):
        report.unrepresentable.append(
            ("NONLOCAL.GROUP", f"{group}: grouped non-local (time split into groups) is not ours")
        )
    if get("RESNET", "STRIDE_1X1") is True:
        report.unrepresentable.append(
            ("RESNET.STRIDE_1X1", "True: the spatial stride sits in our 1x3x3 conv, not the 1x1")
        )
    groups = get("RESNET", "NUM_GROUPS")
    if isinstance(groups, int) and groups != 1:
        report.unrepresentable.append(("RESNET.NUM_GROUPS", f"{groups}: ResNeXt groups"))
    if get("AVA", "BGR") is True:
        report.unrepresentable.append(
            ("AVA.BGR", "True: the model was trained on BGR frames; our clips are RGB")
        )
    arch = get("MODEL", "ARCH")
    if isinstance(arch, str) and arch != "slowfast":
        report.unrepresentable.append(
            ("MODEL.ARCH", f"{arch!r}: our presets are two-pathway SlowFast models only")
        )
    # Clip sampling and preprocessing (DATA.*): in the config only.
    for key, name in (("NUM_FRAMES", "num_frames"), ("SAMPLING_RATE", "sampling_rate")):
        value = get("DATA", key)
        if isinstance(value, int):
            set_default(name, value)
    crop = get("DATA", "TEST_CROP_SIZE")
    if isinstance(crop, int):
        set_default("short_side", crop)
    for key, name in (("MEAN", "mean"), ("STD", "std")):
        value = get("DATA", key)
        if isinstance(value, list) and len(value) == 3:
            set_default(name, tuple(float(v) for v in value))
    if config is None and "num_frames" not in (user or {}):
        report.notes.append(
            "no PySlowFast config in the file: clip length and sampling (DATA.NUM_FRAMES, "
            "SAMPLING_RATE) are the preset's 32x2; for SLOWFAST_64x2_R101_50_50 import with "
            "--set num_frames=64"
        )
    alpha = get("SLOWFAST", "ALPHA")
    if alpha is not None:
        set_default("alpha", int(alpha))
    dilations = get("RESNET", "SPATIAL_DILATIONS")
    if isinstance(dilations, list):
        set_default("spatial_dilations", tuple(int(d[0]) for d in dilations))
    strides = get("RESNET", "SPATIAL_STRIDES")
    if isinstance(strides, list):
        set_default("spatial_strides", tuple(int(s[0]) for s in strides))
    resolution = get("DETECTION", "ROI_XFORM_RESOLUTION")
    if isinstance(resolution, int):
        set_default("roi_output_size", (resolution, resolution))
    aligned = get("DETECTION", "ALIGNED")
    if aligned is False:
        report.overrides["roi_aligned"] = False
    elif aligned is True:
        report.overrides.pop("roi_aligned", None)  # aligned is the presets' default


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _pyslowfast_nonlocal(
    get: Callable[..., Any], has_config: bool, report: ImportReport, user: Mapping[str, Any]
) -> None:
    """Non-local form and pool: not in the weights. From the stored config, else PySlowFast's
    published AVA R101 ``_50_50`` values (the only zoo models with non-local blocks), said
    in a note with the ``--set`` that changes them."""
    inst = get("NONLOCAL", "INSTANTIATION")
    pools = get("NONLOCAL", "POOL")
    if not has_config:
        report.overrides.setdefault("nonlocal_instantiation", "dot_product")
        report.overrides.setdefault("nonlocal_pool", (2, 2, 2))
        if "nonlocal_instantiation" in user and "nonlocal_pool" in user:
            return
        report.notes.append(
            "non-local form and pool are not in the weights and the file has no config: "
            "assumed PySlowFast's AVA R101 _50_50 values (NONLOCAL.INSTANTIATION "
            f"{report.overrides['nonlocal_instantiation']!r}, POOL "
            f"{report.overrides['nonlocal_pool']}); for a model trained otherwise import "
            "with e.g. --set nonlocal_instantiation=softmax --set nonlocal_pool=[1,2,2] "
            "(--set nonlocal_pool=null for none)"
        )
        return
    # A config without these keys runs PySlowFast's defaults (config/defaults.py).
    inst = "dot_product" if inst is None else str(inst)
    pools = pools if isinstance(pools, list) else [[1, 2, 2]] * 4
    if inst in ("softmax", "dot_product"):
        report.overrides.setdefault("nonlocal_instantiation", inst)
    else:
        report.unrepresentable.append(
            ("NONLOCAL.INSTANTIATION", f"{inst!r}: ours are 'softmax' and 'dot_product'")
        )
    # POOL[stage] is [t, h, w] or one [t, h, w] per pathway; ours are slow-only.
    chosen = set()
    for s in report.overrides["nonlocal_stages"]:
        entry = pools[s]
        chosen.add(tuple(int(v) for v in (entry[0] if isinstance(entry[0], list) else entry)))
    if len(chosen) == 1:
        pool = chosen.pop()
        report.overrides.setdefault("nonlocal_pool", None if pool == (1, 1, 1) else pool)
    else:
        report.unrepresentable.append(
            ("NONLOCAL.POOL", f"different pools per stage {sorted(chosen)}; ours is one")
        )


def _json(value: Any) -> str:
    """A preset override as ``--set`` takes it (JSON, tuples as lists, no spaces)."""
    return json.dumps(value, separators=(",", ":"))


_HEAD_SETTINGS = ("sampling_ratio", "roi_aligned", "roi_temporal_pool", "output_activation")
# What each project does where its checkpoint carries no config (named in the report).
_NO_CONFIG_DEFAULTS = {
    "pyslowfast": "PySlowFast's defaults (DETECTION.ALIGNED True, MODEL.HEAD_ACT of its AVA "
    "configs: sigmoid; its RoI head always samples adaptively and averages over time)",
    "caffe2": "the PySlowFast Caffe2 AVA configs' settings (DETECTION.ALIGNED False, sigmoid "
    "head; adaptive RoIAlign sampling, temporal average)",
    "pytorchvideo": "slowfast_r50_detection's defaults (torchvision RoIAlign aligned=False, "
    "sampling_ratio=0; AvgPool3d over time; Sigmoid)",
    "mmaction2": "MMAction2's SlowFast AVA config defaults (SingleRoIExtractor3D output_size 8, "
    "sampling_ratio=0, aligned=True, temporal_pool_mode='avg'; BBoxHeadAVA multilabel: "
    "sigmoid); a temporal-max model needs --set roi_temporal_pool=max",
}


def _head_settings(
    fmt: str, config: str | None, report: ImportReport, caller: Mapping[str, Any]
) -> None:
    """RoI head and activation settings the weights do not show: from the checkpoint's own
    config (PySlowFast ``cfg``, MMAction2 ``meta.cfg``) where there is one, else the
    project's defaults (``FORMAT_OVERRIDES``); the report says which."""
    if fmt in ("pyslowfast", "caffe2") and config is not None:
        _pyslowfast_head(_parse_config(config, report), report, caller)
        origin = "the checkpoint's PySlowFast config (cfg)"
    elif fmt == "mmaction2" and config is not None:
        _mmaction2_settings(_parse_python_config(config, report), report, caller)
        origin = "the checkpoint's MMAction2 config (meta.cfg)"
    else:
        origin = f"no config in the checkpoint: {_NO_CONFIG_DEFAULTS.get(fmt, fmt)}"
    chosen = {k: report.overrides[k] for k in _HEAD_SETTINGS if k in report.overrides}
    report.notes.append(f"head settings {chosen} from {origin}")


def _pyslowfast_head(
    cfg: Mapping[str, Any], report: ImportReport, caller: Mapping[str, Any]
) -> None:
    model = cfg.get("MODEL")
    act = model.get("HEAD_ACT") if isinstance(model, dict) else None
    if act == "sigmoid":
        report.overrides["output_activation"] = "sigmoid"
    elif act is not None and "output_activation" not in caller:
        # PySlowFast's "softmax" head is one softmax over all classes: neither of ours.
        report.unrepresentable.append(
            (
                "MODEL.HEAD_ACT",
                f"{act!r} over all classes; ours are 'sigmoid' or a softmax over the pose "
                "classes only (--set output_activation=sigmoid serves the logits' sigmoid)",
            )
        )


def _literal(node: Any) -> Any:
    """The value of a config expression built from literals and ``dict(...)`` calls; raises
    ValueError for anything else (a config is data here: nothing is executed)."""
    import ast

    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if node.args or any(k.arg is None for k in node.keywords):
            raise ValueError("dict() with positional or ** arguments")
        return {k.arg: _literal(k.value) for k in node.keywords}
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(e) for e in node.elts]
    return ast.literal_eval(node)


def _parse_python_config(text: str, report: ImportReport) -> dict[str, Any]:
    """Top-level ``name = <literal>`` assignments of an mmengine config text (its
    ``pretty_text``); names whose value is not plain data are skipped."""
    import ast

    try:
        tree = ast.parse(text)
    except SyntaxError:
        report.notes.append("meta.cfg is not valid Python; its settings were not read")
        return {}
    out: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
            if isinstance(target, ast.Name):
                try:
                    out[target.id] = _literal(stmt.value)
                except (ValueError, TypeError, SyntaxError):
                    continue
    return out


def _mmaction2_settings(
    cfg: Mapping[str, Any], report: ImportReport, caller: Mapping[str, Any]
) -> None:
    """MMAction2 ``model`` settings: backbone speed_ratio (alpha); SingleRoIExtractor3D
    (RoIAlign output size, sampling ratio, alignment, temporal pool); BBoxHeadAVA
    (multilabel = sigmoid, spatial max pool)."""

    def node(*path: str) -> dict[str, Any]:
        cur: Any = cfg
        for part in path:
            cur = cur.get(part) if isinstance(cur, dict) else None
        return cur if isinstance(cur, dict) else {}

    def refuse(key: str, why: str) -> None:
        report.unrepresentable.append((f"meta.cfg model.{key}", why))

    speed = node("model", "backbone").get("speed_ratio")
    if isinstance(speed, int) and "alpha" not in caller:
        report.overrides["alpha"] = speed
    extractor = node("model", "roi_head", "bbox_roi_extractor")
    head = node("model", "roi_head", "bbox_head")
    over = report.overrides
    if not extractor or not head:
        report.notes.append(
            "meta.cfg has no model.roi_head.bbox_roi_extractor / bbox_head: the RoI head "
            f"settings are {_NO_CONFIG_DEFAULTS['mmaction2']}"
        )
        return
    if extractor.get("roi_layer_type", "RoIAlign") != "RoIAlign":
        refuse("roi_head.bbox_roi_extractor.roi_layer_type", "RoIPool; ours is RoIAlign")
    size = extractor.get("output_size", 16)  # SingleRoIExtractor3D's own default
    if isinstance(size, int):
        over["roi_output_size"] = (size, size)
    elif isinstance(size, list) and len(size) == 2:
        over["roi_output_size"] = (int(size[0]), int(size[1]))
    over["sampling_ratio"] = int(extractor.get("sampling_ratio", 0))
    over["roi_aligned"] = bool(extractor.get("aligned", True))
    if extractor.get("pool_mode", "avg") != "avg":
        refuse("roi_head.bbox_roi_extractor.pool_mode", "max within RoIAlign bins; ours averages")
    if extractor.get("with_global", False):
        refuse("roi_head.bbox_roi_extractor.with_global", "global feature concatenated to RoIs")
    if extractor.get("with_temporal_pool", True):
        mode = extractor.get("temporal_pool_mode", "avg")
    else:
        # RoIAlign per frame, then BBoxHeadAVA pools time: the same as pooling first for
        # an average (RoIAlign is linear), not for a max.
        mode = head.get("temporal_pool_type", "avg")
        if mode == "max":
            refuse(
                "roi_head.bbox_head.temporal_pool_type",
                "max over time *after* RoIAlign (with_temporal_pool=False); ours pools first",
            )
    if mode in ("avg", "max"):
        over["roi_temporal_pool"] = mode
    if head.get("spatial_pool_type", "max") != "max":
        refuse("roi_head.bbox_head.spatial_pool_type", "average over bins; ours takes the max")
    if head.get("multilabel", True):
        over["output_activation"] = "sigmoid"
    elif "output_activation" not in caller:
        refuse("roi_head.bbox_head.multilabel", "False: one softmax over all classes")


def _head_rows(
    source_format: str, key: str, tensor: Tensor, num_classes: int, report: ImportReport
) -> Tensor:
    """Adapt the source classifier to our columns: MMAction2's 81st (first) row is its
    reserved background/box-score column."""
    rows = tensor.shape[0]
    if source_format == "mmaction2" and rows == num_classes + 1:
        if key.endswith("weight"):
            report.notes.append(
                f"{key}: dropped row 0 (MMAction2's reserved column); rows 1..{rows - 1} are "
                "the action classes in order"
            )
        return tensor[1:]
    return tensor


def _build_target(preset: str, overrides: Mapping[str, Any]) -> ActionModel:
    from models.presets import PRESETS

    if preset not in PRESETS:
        raise CheckpointImportError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    try:
        return PRESETS[preset](**overrides)
    except (TypeError, ValueError) as exc:
        raise CheckpointImportError(
            f"preset {preset!r} rejected the overrides {dict(overrides)}: {exc}"
        ) from None


# The preset of each depth a public SlowFast AVA checkpoint has.
_DEPTH_PRESETS = {18: "slowfast_tiny", 50: "slowfast_r50_ava", 101: "slowfast_r101_ava"}


def _representability_hints(
    report: ImportReport,
    source_keys: Iterable[str],
    target_keys: Iterable[str],
    inferred: Mapping[str, Any],
    user: Mapping[str, Any],
) -> list[str]:
    hints: list[str] = []
    for name, value in inferred.items():
        if name in user and user[name] != value:
            hints.append(
                f"{name}: the weights say {_json(value)}, --set gave {_json(user[name])}: "
                f"drop it or use --set {name}={_json(value)}"
            )
    src_depths = _stage_depths(source_keys)
    dst_depths = _stage_depths(target_keys)
    depth_differs = False
    for slot in sorted(set(src_depths) | set(dst_depths)):
        s, d = src_depths.get(slot, 0), dst_depths.get(slot, 0)
        if s != d:
            depth_differs = True
            hints.append(
                f"stage res{slot[0] + 2} {slot[1]} pathway: the checkpoint has {s} blocks, "
                f"preset {report.preset!r} has {d}: pick the preset of the checkpoint's depth"
            )
    if depth_differs:
        from models.backbone import STAGE_DEPTHS

        blocks = tuple(src_depths.get((s, "slow"), 0) for s in range(4))
        depth = next((k for k, v in STAGE_DEPTHS.items() if v == blocks), None)
        preset = _DEPTH_PRESETS.get(depth) if depth is not None else None
        if preset is not None:
            hints.append(f"the checkpoint is a depth-{depth} SlowFast: use --preset {preset}")
    cls = next((m for m in report.shape_mismatches if m[1] == "classifier.weight"), None)
    if cls is not None:
        hints.append(
            f"classifier: the checkpoint has {cls[2][0]} outputs, the preset {cls[3][0]}; set "
            "class_ids (--set class_ids=[...]) to the checkpoint's action ids in column order"
        )
    return hints


def import_state_dict(
    source: SourceState | Mapping[str, Tensor],
    source_format: str | None = None,
    *,
    preset: str,
    overrides: Mapping[str, Any] | None = None,
    strict: bool = True,
) -> ImportResult:
    """Map a source state dict onto ``preset`` and load it.

    Args:
        source: tensors from :func:`read_source_state`, or a plain state dict (then give
            ``source_format``).
        source_format: one of :data:`SOURCE_FORMATS`; taken from ``source`` if omitted.
        preset: a name in ``models.presets.PRESETS``.
        overrides: preset overrides that win over the format's and the inferred ones
            (e.g. ``{"alpha": 8}`` for a 4x16 model, ``{"class_ids": [...]}``).
        strict: raise :class:`CheckpointImportError` unless every source tensor maps, every
            target key is filled and all shapes agree. ``False`` loads what maps and returns
            the report (for inspection; never for serving).

    Returns:
        :class:`ImportResult` with the model in eval mode.
    """
    if isinstance(source, SourceState):
        state, fmt, config = source.tensors, source_format or source.source_format, source.config
        if source.source_format == "caffe2":
            fmt = "caffe2"
    else:
        if source_format is None:
            raise ValueError("import_state_dict: give source_format with a plain state dict")
        state, fmt, config = dict(source), source_format, None
    mapper = _mapper(fmt)
    report = ImportReport(source_format=fmt, preset=preset)

    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in state.items():
        if fmt == "caffe2" and _is_caffe2_solver_state(key):
            report.ignored.append(key)
            continue
        target = mapper(key)
        if target is None:
            report.unmapped.append(key)
        elif isinstance(target, _Unrepresentable):
            report.unrepresentable.append((key, target.reason))
        elif target in mapped:
            report.unmapped.append(f"{key} (duplicate of {origin[target]} -> {target})")
        else:
            mapped[target] = tensor
            origin[target] = key

    inferred = _infer_overrides(mapped)
    report.overrides = {**FORMAT_OVERRIDES.get(fmt, {}), **inferred}
    if fmt in ("pyslowfast", "caffe2"):
        _pyslowfast_checks(config, report, overrides)
    _head_settings(fmt, config, report, overrides or {})
    for name in list(report.overrides):
        # A setting the source needs but the presets cannot express yet: say so, go on.
        if name not in (overrides or {}) and not _preset_accepts(name):
            value = report.overrides.pop(name)
            report.notes.append(
                f"the source runs with {name}={value!r}, which the presets cannot set yet; "
                "outputs will differ slightly"
            )
    fusion_kernel = report.overrides.get("fusion_kernel")
    if fmt == "mmaction2" and fusion_kernel == 5 and "alpha" not in (overrides or {}):
        report.notes.append(
            "fusion kernel 5: MMAction2's 4x16x1 AVA configs pair it with speed_ratio 8; "
            "if this is one, import with alpha=8 (--set alpha=8)"
        )
    report.overrides.update(overrides or {})

    try:
        model = _build_target(preset, report.overrides)
    except CheckpointImportError as exc:
        report.unrepresentable.append(("preset overrides", str(exc)))
        nonlocal_keys = sorted({origin[k].rsplit(".", 2)[0] for k in mapped if ".nonlocals." in k})
        why = f"\nnon-local placement read from {nonlocal_keys}" if nonlocal_keys else ""
        raise CheckpointImportError(f"{exc}{why}\n{report.summary()}", report) from None
    target_state = model.state_dict()
    num_classes = model.num_classes

    loaded: dict[str, Tensor] = {}
    for key, tensor in mapped.items():
        src_key = origin[key]
        if key.startswith("classifier."):
            tensor = _head_rows(fmt, src_key, tensor, num_classes, report)
        if key not in target_state:
            report.unmapped.append(f"{src_key} (-> {key}, not in preset {preset!r})")
            continue
        want = target_state[key]
        if tuple(tensor.shape) != tuple(want.shape):
            report.shape_mismatches.append((src_key, key, tuple(tensor.shape), tuple(want.shape)))
            continue
        loaded[key] = tensor.to(want.dtype)
        report.mapped.append((src_key, key))

    for key, want in target_state.items():
        if key in loaded:
            continue
        synthetic = _synthesise(key, want, loaded, model, fmt)
        if synthetic is not None:
            loaded[key] = synthetic
            if not key.endswith("num_batches_tracked"):
                report.synthesised.append(key)
        elif not any(key == m[1] for m in report.shape_mismatches):
            report.missing.append(key)
    if any(k.endswith("num_batches_tracked") for k in target_state) and not any(
        k.endswith("num_batches_tracked") for k in state
    ):
        report.synthesised.append("*.num_batches_tracked (0; unused in eval)")

    if not report.ok and strict:
        seen = _infer_overrides(mapped, all_kernels=True)
        hints = _representability_hints(report, mapped, target_state, seen, overrides or {})
        what = (
            f"preset {preset!r} cannot represent this {fmt} checkpoint exactly"
            if report.unrepresentable
            else f"{fmt} checkpoint does not load strictly into preset {preset!r}"
        )
        message = "\n".join([what, *hints, report.summary()])
        raise CheckpointImportError(message, report)

    model.load_state_dict(loaded, strict=strict)
    model.eval()
    return ImportResult(model=model, report=report, preset_overrides=dict(report.overrides))


def _synthesise(
    key: str, want: Tensor, loaded: Mapping[str, Tensor], model: torch.nn.Module, fmt: str
) -> Tensor | None:
    """A value for a target key the source lacks, where one exists that keeps the source's
    function exactly; None otherwise."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros_like(want)
    # Caffe2 SlowFast checkpoints often hold only the affine part of frozen BN (_bn_s,
    # _bn_b). Mean 0 and variance 1 - eps make BatchNorm exactly y = gamma * x + beta.
    if fmt == "caffe2" and key.endswith(("running_mean", "running_var")):
        module_name = key.rsplit(".", 1)[0]
        if f"{module_name}.weight" not in loaded:
            return None
        if key.endswith("running_mean"):
            return torch.zeros_like(want)
        eps = float(getattr(model.get_submodule(module_name), "eps", 1e-5))
        return torch.full_like(want, 1.0 - eps)
    return None


def import_checkpoint(
    path: StrPath,
    source_format: str,
    *,
    preset: str,
    overrides: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    strict: bool = True,
) -> ImportResult:
    """:func:`read_source_state` then :func:`import_state_dict`."""
    source = read_source_state(path, source_format, trust_pickle=trust_pickle)
    return import_state_dict(source, preset=preset, overrides=overrides, strict=strict)
