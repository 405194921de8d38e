"""Long-term feature bank operator (FBO), non-local variant.

Wu, Feichtenhofer, Fan, He, Krähenbühl, Girshick, "Long-Term Feature Banks for Detailed
Video Understanding", CVPR 2019 (arXiv:1812.05038), sec. 3.3 "FBO_NL" and sec. 4.1.

Each person's short-term RoI feature S (K, D) is the query; the long-term bank window
L (K, W, D_bank) — person features from the neighbouring seconds of the same video — gives
keys and values. Both inputs get dropout and a linear reduction to ``dim_inner`` (512 in
the paper), then ``num_blocks`` (2 in the paper) modified non-local blocks run::

    NL'(S, L) = S + Dropout(Linear(ReLU(LN(softmax(theta(S) phi(L)^T / sqrt(d)) g(L)))))

LN + ReLU before the output linear ("pre-activation") and dropout are the paper's
modifications for training stability on the small AVA set; the residual keeps S. The
output (K, dim_inner) is **concatenated** with the RoI feature by the action model
(concatenation beat summation in the ActivityNet 2019 report this project follows).

Data flow::

    person (K, D) -> dropout -> Linear -> s (K, d)
    bank (K, W, Db), mask (K, W) -> zero invalid -> dropout -> Linear -> l (K, W, d)
    s = NL'_1(s, l, mask); s = NL'_2(s, l, mask)      -> (K, d)

The mask says which window slots hold a real feature (1 = valid). Masked slots get no
attention weight and their values are replaced by 0 before any arithmetic, so they cannot
influence the output, whatever they contain (even NaN). A row whose window is entirely
masked gets a zero attention term, so the block reduces to its residual.

Slot times (an addition to Wu et al.). Attention is permutation-invariant: the paper's
operator sees the window as an unordered set, so it cannot tell an event 20 s ago from one
20 s ahead. Classes whose meaning is "this happened 10-30 s ago" need that order. With
``slot_offsets`` (seconds relative to the keyframe of each of the W slots, fixed by the
slot-aligned layout of `core.bank_layout`), the reduced bank gets a learned projection of
a sin/cos encoding of its slot's time::

    l = Linear(dropout(bank)) + Linear_t(enc(slot_offsets))        (1, W, d) broadcast

and the window must then arrive slot-aligned with exactly W slots (training's bank reader
and the service both lay it out with `core.bank_layout`).

Same-person cue (another addition, ``appearance_dim`` A > 0). Attention over features
trained to recognise actions cannot tell *whose* event a bank row was. The action model can
append a parameter-free colour descriptor of each box to the person features
(`models.action_model`, ``appearance_grid``): then the query is (K, D + A), each bank row
ends in its own A columns, and every block gets a learned same-person affinity::

    aff = exp(-sum_i s_i (a_q,i - a_w,i)^2)     (K, W), s = softplus(rho) > 0 learned per cell
    logits += alpha * aff;  v = g(l) + aff u     alpha (scalar), u (d) learned per block

so attention can pick the rows of the person being classified (alpha) and its output can
say how well the attended rows matched (u) -- "nobody matched" then differs from "this
person, 20 s ago, picking something up".

Recall (a third addition, ``recall_classes`` M > 0, needs the appearance cue). Softmax
attention averages: one evidence row among a person's dozen recent rows is diluted, and in
practice the blocks settle on the recent rows. Recall asks the question directly -- "did
*this person* do class c in time bin b?" -- as a max, not an average::

    r = sigmoid(R(bank_row))                 (., W, M)  what each row was doing (row classifier)
    m = exp(-sum_i s'_i (a_q,i - a_w,i)^2)   (K, W)     its own same-person affinity (s' learned)
    recall[k, b, c] = max_w valid * m[k, w] * bin_b(w) * r[w, c]            (K, B, M)
    output += Linear(recall.flatten(1))

Bins split the window by slot time (`RECALL_BIN_EDGES_S`: long ago / recently / now / ahead;
one bin for an unordered window). R reads the same D features the person query has, so
training supervises it on the query's own labels (`recall_logits`, an auxiliary loss in
`training.train`): it learns what a row *shows* without needing labels for bank rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from core.bank_layout import TIME_ENCODING_DIM, TIME_ENCODING_PERIODS_S

# Logit given to masked slots before the softmax. Finite on purpose: with -inf a fully
# masked row would be softmax(-inf, ..., -inf) = NaN. exp(-1e4 - max) underflows to exactly
# 0 in float32 for any realistic logit, and the weights are multiplied by the mask after
# the softmax as well, so masked slots get weight 0 exactly in both cases.
_MASKED_LOGIT = -1.0e4
# softplus(-0.4328) = 0.5: initial weight of each appearance cell in the affinity.
APPEARANCE_WEIGHT_INIT = -0.4328
# softplus(-1.2587) = 0.25: the recall's affinity starts softer -- a person's colour cells
# at an event (bent over, arms up) differ more from their walking rows than a partner's do.
RECALL_WEIGHT_INIT = -1.2587
# Recall affinity with ``recall_cells``: softplus(0.3573) = 0.9 on the flagged (torso)
# cells, softplus(-3.89) = 0.02 elsewhere. The torso is what survives a change of pose: on the
# world's train videos, the best colour match of a person to the event rows of the past 30 s
# ranks "their own evidence is there" with AP 0.88 on the two torso cells of the 6 x 1 strip,
# 0.75 on all six (`python bench/appearance_match.py --data WORLD`).
RECALL_CELL_INIT = (0.3573, -3.89)
# Recall's time bins (seconds relative to the keyframe; slots are whole seconds): before
# -9.5 (long ago), -9.5..-1.5 (recently), -1.5..1.5 (now), after 1.5 (ahead).
RECALL_BIN_EDGES_S: tuple[float, ...] = (-9.5, -1.5, 1.5)


def time_encoding(offsets: Tensor) -> Tensor:
    """(W,) seconds relative to the keyframe -> (W, TIME_ENCODING_DIM) sin/cos features."""
    periods = torch.tensor(TIME_ENCODING_PERIODS_S, dtype=offsets.dtype, device=offsets.device)
    phase = offsets[:, None] * (2.0 * math.pi / periods)[None, :]  # (W, P)
    return torch.cat([torch.sin(phase), torch.cos(phase)], dim=1)


class LFBBlock(nn.Module):
    """One modified non-local block NL'(S, L) of Wu et al. (see the module docstring).

    ``forward(s (K, d), lt (K, W, d), valid (K, W) float 0/1[, aff (K, W)]) -> (K, d)``;
    ``aff`` (same-person affinity in [0, 1]) needs ``affinity=True``.
    """

    def __init__(
        self, dim: int, *, dropout: float = 0.2, scale: bool = True, affinity: bool = False
    ) -> None:
        super().__init__()
        self.theta = nn.Linear(dim, dim)
        self.phi = nn.Linear(dim, dim)
        self.g = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(dim) if scale else 1.0
        self.aff_logit: nn.Parameter | None = None
        self.aff_value: nn.Parameter | None = None
        if affinity:
            # Start by favouring well-matched rows a little (exp(4) ~ 55x the weight).
            self.aff_logit = nn.Parameter(torch.tensor(4.0))
            self.aff_value = nn.Parameter(torch.zeros(dim))

    def forward(self, s: Tensor, lt: Tensor, valid: Tensor, aff: Tensor | None = None) -> Tensor:
        q = self.theta(s)  # (K, d)
        k = self.phi(lt)  # (K, W, d)
        v = self.g(lt)  # (K, W, d)
        logits = torch.matmul(k, q[:, :, None])[:, :, 0] * self.scale  # (K, W)
        aff_logit, aff_value = self.aff_logit, self.aff_value
        if aff is not None:  # same-person affinity (K, W), see the module docstring
            if aff_logit is None or aff_value is None:
                raise ValueError("this block was built without affinity=True")
            logits = logits + aff_logit * aff
        logits = torch.where(valid > 0, logits, torch.full_like(logits, _MASKED_LOGIT))
        attn = torch.softmax(logits, dim=1) * valid  # (K, W); fully masked row -> all 0
        y = torch.matmul(attn[:, None, :], v)[:, 0, :]  # (K, d)
        if aff is not None and aff_value is not None:
            # sum_w attn_w (v_w + aff_w u) = attn v + (attn . aff) u: no (K, W, d) tensor, so a
            # window shared by the K persons (bank batch 1) broadcasts as in the matmuls.
            y = y + (attn * aff).sum(dim=1, keepdim=True) * aff_value
        y = self.out(torch.relu(self.norm(y)))
        return s + self.dropout(y)


class LFB(nn.Module):
    """Feature bank operator: short-term person features attend to a long-term window.

    Args:
        dim_in: D, the person (RoI) feature size (2304 for SlowFast R50).
        dim_bank: D_bank, the bank feature size (= dim_in when the bank holds this model's
            own person features).
        dim_inner: d, the reduced size and the output size (512 in Wu et al.).
        num_blocks: stacked NL' blocks (2 in Wu et al.; more did not help there).
        dropout: rate on both inputs and inside each block (0.2 in Wu et al.'s AVA setup).
        slot_offsets: seconds of each of the W slots (time-aware variant), or None.
        appearance_dim: A > 0: the person input is (K, dim_in + A) and every bank row ends
            in its A appearance columns (same-person cue, module docstring); 0 = off.
        recall_classes: M > 0 adds the recall path (module docstring, "Recall"; needs
            A > 0); usually the model's class count. 0 = off.
        recall_cells: which of the A appearance columns the recall's affinity starts
            weighting (`RECALL_CELL_INIT`; the others start near 0); None = all alike
            (`RECALL_WEIGHT_INIT`). The action model passes the torso cells.

    ``forward(person (K, D + A), bank (K, W, D_bank), mask (K, W) bool or float, 1 = valid)
    -> (K, dim_inner)``. K and W may be 0-sized / fully masked; the output stays finite.
    """

    def __init__(
        self,
        *,
        dim_in: int,
        dim_bank: int,
        dim_inner: int = 512,
        num_blocks: int = 2,
        dropout: float = 0.2,
        slot_offsets: Sequence[float] | None = None,
        appearance_dim: int = 0,
        recall_classes: int = 0,
        recall_cells: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if appearance_dim < 0 or appearance_dim >= dim_bank:
            raise ValueError(f"appearance_dim must be in [0, dim_bank), got {appearance_dim}")
        self.appearance_dim = int(appearance_dim)
        self.dim_in = dim_in
        self.dim_bank = dim_bank
        self.dim_inner = dim_inner
        self.input_dropout = nn.Dropout(dropout)
        self.reduce_person = nn.Linear(dim_in, dim_inner)
        self.reduce_bank = nn.Linear(dim_bank, dim_inner)
        aff = appearance_dim > 0
        self.blocks = nn.ModuleList(
            LFBBlock(dim_inner, dropout=dropout, affinity=aff) for _ in range(num_blocks)
        )
        # Per-cell weights of the appearance distance (softplus keeps them positive); start at
        # 0.5 each: a cell of the same person differs by ~0.2 in normalised pixel units, of
        # someone else by ~1-2, so the affinity starts near 1 vs near 0.
        self.app_weight = (
            nn.Parameter(torch.full((appearance_dim,), APPEARANCE_WEIGHT_INIT)) if aff else None
        )
        # Time-aware variant (see "Slot times" in the module docstring): a persistent buffer
        # so that a checkpoint says which layout its head was trained on.
        self.time_proj: nn.Linear | None = None
        self.slot_offsets: Tensor  # a buffer, registered only when time-aware
        offsets = None
        if slot_offsets is not None:
            offsets = torch.as_tensor(list(slot_offsets), dtype=torch.float32)
            if offsets.dim() != 1 or offsets.numel() == 0:
                raise ValueError("slot_offsets must be a non-empty sequence of seconds")
            self.register_buffer("slot_offsets", offsets)
            self.time_proj = nn.Linear(TIME_ENCODING_DIM, dim_inner)
        # Recall (module docstring): row classifier, its own affinity weights, time bins.
        if recall_classes < 0 or (recall_classes > 0 and not aff):
            raise ValueError(
                f"recall_classes must be >= 0 and needs appearance_dim > 0, got "
                f"{recall_classes} with appearance_dim {appearance_dim}"
            )
        self.recall_classes = int(recall_classes)
        self.recall: nn.Linear | None = None
        self.recall_weight: nn.Parameter | None = None
        self.recall_proj: nn.Linear | None = None
        self.recall_bins: Tensor  # (W, B) or (1, 1) non-persistent buffer, with recall only
        if recall_classes > 0:
            self.recall = nn.Linear(dim_bank - appearance_dim, recall_classes)
            init = torch.full((appearance_dim,), RECALL_WEIGHT_INIT)
            if recall_cells is not None:
                on = torch.as_tensor(list(recall_cells), dtype=torch.bool)
                if on.shape != (appearance_dim,) or not bool(on.any()):
                    raise ValueError(
                        f"recall_cells must flag some of the {appearance_dim} appearance columns"
                    )
                init = torch.where(on, RECALL_CELL_INIT[0], RECALL_CELL_INIT[1])
            self.recall_weight = nn.Parameter(init)
            if offsets is None:
                bins = torch.ones(1, 1)
            else:
                edges = torch.tensor((-math.inf, *RECALL_BIN_EDGES_S, math.inf))
                bins = (
                    (offsets[:, None] >= edges[None, :-1]) & (offsets[:, None] < edges[None, 1:])
                ).float()
            self.register_buffer("recall_bins", bins, persistent=False)
            self.recall_proj = nn.Linear(bins.shape[1] * recall_classes, dim_inner)

    @property
    def num_slots(self) -> int | None:
        """W the time-aware head needs (None: any W, slots are an unordered set)."""
        return int(self.slot_offsets.numel()) if self.time_proj is not None else None

    def forward(self, person: Tensor, bank: Tensor, mask: Tensor) -> Tensor:
        if bank.dim() != 3 or mask.dim() != 2:
            raise ValueError(
                f"bank must be (K, W, D_bank) and mask (K, W); got {tuple(bank.shape)} "
                f"and {tuple(mask.shape)}"
            )
        valid = (mask > 0.5) if mask.dtype != torch.bool else mask  # (K, W) bool
        # where() rather than a multiply: 0 * NaN would still be NaN.
        bank = torch.where(valid[:, :, None], bank, torch.zeros_like(bank))
        valid_f = valid.to(person.dtype)

        aff = None
        if self.app_weight is not None:
            aff = self._affinity(person, bank, self.app_weight)
        recall = None
        if self.recall is not None and self.recall_weight is not None:
            recall = self._recall(person, bank, valid_f)  # (K, B * M)
        person = person[:, : self.dim_in]
        s = self.reduce_person(self.input_dropout(person))  # (K, d)
        lt = self.reduce_bank(self.input_dropout(bank))  # (K, W, d)
        if self.time_proj is not None:
            if bank.shape[1] != self.slot_offsets.numel():
                raise ValueError(
                    f"this time-aware LFB reads slot-aligned windows of "
                    f"{self.slot_offsets.numel()} slots; got W = {bank.shape[1]}"
                )
            lt = lt + self.time_proj(time_encoding(self.slot_offsets))[None]  # + (1, W, d)
        for block in self.blocks:
            s = block(s, lt, valid_f, aff)
        if recall is not None and self.recall_proj is not None:
            s = s + self.recall_proj(recall)
        return s

    def _affinity(self, person: Tensor, bank: Tensor, weight: Tensor) -> Tensor:
        """exp(-sum_i softplus(weight_i) (a_q,i - a_w,i)^2): (K, W) in (0, 1]."""
        a = self.appearance_dim
        scale = torch.sqrt(nn.functional.softplus(weight))  # (A,)
        mq = person[:, -a:] * scale  # (K, A)
        mw = bank[:, :, -a:] * scale  # (K, W, A)
        # |q - w|^2 = |q|^2 + |w|^2 - 2 q.w, with the dot product as a batched matmul like
        # the attention logits: the bank's batch axis may be 1 (a window shared by the K
        # persons of a keyframe) and must broadcast the same way here.
        dot = torch.matmul(mw, mq[:, :, None])[:, :, 0]  # (K, W)
        d2 = (mq * mq).sum(dim=1, keepdim=True) + (mw * mw).sum(dim=2) - 2.0 * dot
        return torch.exp(-torch.clamp(d2, min=0.0))

    def recall_logits(self, features: Tensor) -> Tensor:
        """(N, D) person features (query or bank row, appearance columns dropped) -> (N, M)
        logits of the recall's row classifier; training supervises them on the query's
        labels (module docstring, "Recall")."""
        if self.recall is None:
            raise ValueError("this LFB was built without recall_classes")
        return self.recall(features[..., : self.dim_bank - self.appearance_dim])

    def _recall(self, person: Tensor, bank: Tensor, valid: Tensor) -> Tensor:
        """(K, B * M): per time bin and class, the best same-person row's class score."""
        assert self.recall_weight is not None
        rows = torch.sigmoid(self.recall_logits(bank))  # (Kb, W, M), Kb = K or 1
        match = self._affinity(person, bank, self.recall_weight) * valid  # (K, W)
        bins = self.recall_bins  # (W, B) 0/1, or (1, 1) for an unordered window
        # (K, W, 1, 1) * (1 | W, B, 1) * (Kb, W, 1, M) -> max over W -> (K, B, M)
        score = match[:, :, None, None] * bins[None, :, :, None] * rows[:, :, None, :]
        return score.amax(dim=1).flatten(1)
