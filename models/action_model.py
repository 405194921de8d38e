"""The action model: SlowFast backbone + RoI head + optional LFB + optional global branch.

It follows the three-branch design of the ActivityNet 2019 AVA report this project builds
on (DESIGN.md, report A): short-term person features from RoIAlign, long-term context
from a feature bank (Wu et al., "Long-Term Feature Banks", CVPR 2019) and a clip-level
"global" scene branch, each switchable::

    slow (B,3,T_s,H,W), fast (B,3,T_f,H,W), boxes (K,5)
      -> backbone -> [(B,C_s,T_s,h,w), (B,C_f,T_f,h,w)]
           -> RoIHead(boxes)            person (K, D)
           -> pool T (avg|max), mean h,w, concat  global (B, D)             = features()
    person (K,D), global_per_person (K,D), bank (K,W,Db), mask (K,W)
      -> concat[person, LFB(person, bank, mask) (K,d) if lfb, global_per_person if global]
      -> Linear                         action_logits (K, C)
      -> scene Linear(global_per_person) scene_logits (K, C) if global         = head()

``features`` and ``head`` are the two halves the export tool writes as backbone.onnx and
head.onnx; the service keeps the feature bank between them.

Boxes are (K, 5) = (batch_index, x1, y1, x2, y2) in input-pixel coordinates of the clip.

Appearance (an addition for the time-aware LFB, ``appearance_grid``): the bank cannot say
*whose* event a row was, and a class such as "this person picked something up 10-30 s ago"
needs exactly that; the tracker cannot supply it (the person has usually left the frame in
between). With ``appearance_grid`` set, ``features`` appends to each person feature a
parameter-free colour descriptor of its box on the clip's middle fast frame
(`models.roi.appearance_descriptor`), so person features -- and therefore the bank rows the
service writes from backbone.onnx -- are (K, D + A); the classifier and the global branch
read the first D columns, the LFB compares the last A of the query and of each bank row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from core.ava import POSE_IDS
from core.preset_info import PresetInfo
from core.probs import (
    DEFAULT_OUTPUT_ACTIVATION,
    POSE_SOFTMAX_SIGMOID,
    check_output_activation,
    pose_columns,
)
from models.lfb import LFB
from models.roi import RoIHead, appearance_descriptor, appearance_size, temporal_pool

AVA_CLASS_IDS: tuple[int, ...] = tuple(range(1, 81))


@dataclass(frozen=True)
class ActionOutput:
    """What :meth:`ActionModel.forward` returns.

    action_logits: (K, C) per-person logits; with the "pose_softmax_sigmoid" activation the
        pose columns are softmax logits and the rest sigmoid logits, with "sigmoid" all are
        sigmoid logits (use :meth:`ActionModel.probabilities`).
    scene_logits: (B, C) clip-level sigmoid logits, or None without the global branch.
    person_features: (K, D) RoI features (what the feature bank stores).
    global_features: (B, D) clip-level pooled features.
    """

    action_logits: Tensor
    scene_logits: Tensor | None
    person_features: Tensor
    global_features: Tensor


class ActionModel(nn.Module):
    """Per-person AVA action classifier (see the module docstring for the data flow).

    Args:
        backbone: module with ``forward(slow, fast) -> [slow_feat, fast_feat]``.
        roi_head: turns those features and boxes into person features (K, D).
        lfb: long-term feature bank operator, or None for the RoI-only / +global model.
        use_global: add the global branch: the clip feature is concatenated into every
            person's classifier input and a scene classifier predicts the clip's actions.
        class_ids: the action ids of the output columns, in order (default AVA 1..80).
        pose_ids: which ids are mutually exclusive pose classes (AVA 1..14).
        preset_info: preprocessing facts of the preset that built the model, if any.
        appearance_grid: append the box colour descriptor on this (rows, cols) grid to the
            person features (see the module docstring); None = plain RoI features.
        output_activation: how logits become probabilities (``core.probs``):
            "pose_softmax_sigmoid" (one softmax over the pose columns, sigmoid elsewhere;
            heads trained here) or "sigmoid" (every column; imported upstream heads). The
            training loss, evaluation, the exported head graph and the manifest follow it.
    """

    pose_mask: Tensor  # (C,) bool buffer: True at the pose columns
    softmax_mask: Tensor  # (C,) bool buffer: True at the columns of the softmax group
    appearance_grid: Tensor  # (2,) int64 buffer, registered only with appearance

    def __init__(
        self,
        *,
        backbone: nn.Module,
        roi_head: RoIHead,
        lfb: LFB | None = None,
        use_global: bool = False,
        class_ids: Sequence[int] = AVA_CLASS_IDS,
        pose_ids: Sequence[int] = POSE_IDS,
        preset_info: PresetInfo | None = None,
        appearance_grid: tuple[int, int] | None = None,
        output_activation: str = DEFAULT_OUTPUT_ACTIVATION,
    ) -> None:
        super().__init__()
        if len(set(class_ids)) != len(class_ids) or not class_ids:
            raise ValueError(f"class_ids must be non-empty and unique, got {list(class_ids)}")
        self.backbone = backbone
        self.roi_head = roi_head
        self.lfb = lfb
        self.use_global = use_global
        self.class_ids = tuple(int(c) for c in class_ids)
        self.pose_columns = pose_columns(self.class_ids, pose_ids)
        self.output_activation = check_output_activation(output_activation)
        # The columns scored by one softmax: the pose columns, or none with "sigmoid".
        self.softmax_columns = (
            self.pose_columns if self.output_activation == POSE_SOFTMAX_SIGMOID else ()
        )
        self.preset_info = preset_info

        dim = roi_head.out_dim
        if lfb is not None and lfb.dim_in != dim:
            raise ValueError(f"LFB dim_in {lfb.dim_in} != RoI feature size {dim}")
        self._grid: tuple[int, int] | None = None
        if appearance_grid is not None:
            self.enable_appearance(appearance_grid)
        if lfb is not None and lfb.appearance_dim not in (0, self.appearance_dim):
            raise ValueError(
                f"LFB compares {lfb.appearance_dim}-d appearance but the model writes "
                f"{self.appearance_dim}-d (appearance_grid {appearance_grid})"
            )
        cls_in = dim + (lfb.dim_inner if lfb is not None else 0) + (dim if use_global else 0)
        self.classifier = nn.Linear(cls_in, self.num_classes)
        self.scene_classifier = nn.Linear(dim, self.num_classes) if use_global else None
        pose_mask = torch.zeros(self.num_classes, dtype=torch.bool)
        pose_mask[list(self.pose_columns)] = True
        self.register_buffer("pose_mask", pose_mask, persistent=False)
        softmax_mask = torch.zeros(self.num_classes, dtype=torch.bool)
        softmax_mask[list(self.softmax_columns)] = True
        self.register_buffer("softmax_mask", softmax_mask, persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def feature_dim(self) -> int:
        """D, the RoI (and global) feature size."""
        return self.roi_head.out_dim

    @property
    def appearance(self) -> tuple[int, int] | None:
        """The appearance grid (rows, cols) appended to person features, or None."""
        return self._grid

    @property
    def appearance_dim(self) -> int:
        """A, the appearance columns appended to person features (0 without)."""
        return 0 if self._grid is None else appearance_size(self._grid)

    @property
    def person_dim(self) -> int:
        """D + A, the width of ``features``' person output (what a bank made from it holds)."""
        return self.feature_dim + self.appearance_dim

    def enable_appearance(self, grid: tuple[int, int]) -> None:
        """Append the box colour descriptor on ``grid`` to person features from now on (a
        stage-1 model writing the bank for an appearance-aware LFB). Saved as a buffer, so
        a checkpoint says it."""
        rows, cols = (int(v) for v in grid)
        if rows < 1 or cols < 1:
            raise ValueError(f"appearance_grid must be two positive ints, got {grid}")
        self._grid = (rows, cols)
        self.register_buffer("appearance_grid", torch.tensor([rows, cols], dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # A checkpoint's appearance grid must match the model's (the buffer is data, but the
        # descriptor's size is structure).
        key = prefix + "appearance_grid"
        if key in state_dict and self._grid is not None:
            saved = tuple(int(v) for v in state_dict[key].tolist())
            if saved != self._grid:
                raise ValueError(f"checkpoint appearance_grid {saved} != model's {self._grid}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def features(self, slow: Tensor, fast: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """(slow, fast, boxes (K,5)) -> (person (K, D + A), global (B, D)). backbone.onnx.

        A = `appearance_dim` (0 without an appearance grid)."""
        feats = self.backbone(slow, fast)  # [(B, C_s, T_s, h, w), (B, C_f, T_f, h, w)]
        person = self.roi_head(feats, boxes)  # (K, D)
        if self.roi_head.temporal_pool == "avg":
            glob = torch.cat([f.mean(dim=(2, 3, 4)) for f in feats], dim=1)  # (B, D)
        else:  # the RoI head's temporal pool, then the spatial mean
            pooled = [temporal_pool(f, self.roi_head.temporal_pool) for f in feats]
            glob = torch.cat([p.mean(dim=(2, 3)) for p in pooled], dim=1)  # (B, D)
        if self._grid is not None:
            # Fast frame T_f // 2 is the keyframe of a centred clip (training, files); a causal
            # live clip's keyframe is its last frame, half a clip later (same person, the box
            # drawn at the keyframe: a small shift for a walking person).
            frame = fast[:, :, fast.shape[2] // 2]  # (B, 3, H, W)
            app = appearance_descriptor(frame, boxes, self._grid)  # (K, A)
            person = torch.cat([person, app], dim=1)  # (K, D + A)
        return person, glob

    def head(
        self, person: Tensor, global_per_person: Tensor, bank: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Classify persons. head.onnx.

        Args:
            person: (K, D + A) person features (A = `appearance_dim`, 0 without).
            global_per_person: (K, D) each person's clip feature (``global[boxes[:, 0]]``);
                ignored without the global branch.
            bank: (K, W, D_bank) long-term window; ignored without an LFB.
            mask: (K, W) 1 = valid bank slot; ignored without an LFB.

        Returns:
            action_logits (K, C), scene_logits (K, C) or None without the global branch.
        """
        parts = [person[:, : self.feature_dim]]
        if self.lfb is not None:
            parts.append(self.lfb(person, bank, mask))  # (K, d)
        if self.use_global:
            parts.append(global_per_person)  # (K, D)
        action_logits = self.classifier(torch.cat(parts, dim=1))  # (K, C)
        scene_logits = (
            self.scene_classifier(global_per_person) if self.scene_classifier is not None else None
        )
        return action_logits, scene_logits

    def forward(
        self,
        slow: Tensor,
        fast: Tensor,
        boxes: Tensor,
        bank: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> ActionOutput:
        """Whole model. ``bank``/``mask`` None means an empty bank window for every person."""
        person, glob = self.features(slow, fast, boxes)
        global_per_person = glob.index_select(0, boxes[:, 0].to(torch.int64))  # (K, D)
        if bank is None:
            dim_bank = self.lfb.dim_bank if self.lfb is not None else 1
            w = (self.lfb.num_slots if self.lfb is not None else None) or 1
            bank = person.new_zeros(person.shape[0], w, dim_bank)  # (K, W, D_bank)
            mask = person.new_zeros(person.shape[0], w)  # (K, W): nothing valid
        elif mask is None:
            mask = bank.new_ones(bank.shape[:2])
        action_logits, _ = self.head(person, global_per_person, bank, mask)
        scene_logits = self.scene_classifier(glob) if self.scene_classifier is not None else None
        return ActionOutput(action_logits, scene_logits, person, glob)

    def probabilities(self, action_logits: Tensor) -> Tensor:
        """(K, C) logits -> probabilities under ``output_activation``: softmax over the
        pose columns and sigmoid elsewhere, or sigmoid everywhere.

        Same math as the torch-free ``core.probs.action_probabilities``.
        """
        probs = torch.sigmoid(action_logits)
        if not self.softmax_columns:
            return probs
        # Columns outside the softmax group get -inf so they take no share of it.
        pose_logits = action_logits.masked_fill(~self.softmax_mask, float("-inf"))
        return torch.where(self.softmax_mask, torch.softmax(pose_logits, dim=1), probs)
