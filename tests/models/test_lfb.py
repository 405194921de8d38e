"""LFB operator: empty / partial / full bank windows and masking."""

from __future__ import annotations

import pytest
import torch

from models.lfb import LFB

D, DB, DI, W = 12, 10, 8, 6


@pytest.fixture()
def lfb() -> LFB:
    torch.manual_seed(0)
    return LFB(dim_in=D, dim_bank=DB, dim_inner=DI, num_blocks=2, dropout=0.3).eval()


def _inputs(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(k)
    return torch.randn(k, D, generator=gen), torch.randn(k, W, DB, generator=gen)


@pytest.mark.parametrize(
    "valid_counts",
    [(0, 0, 0), (1, 3, 0), (W, W, W), (0, W, 2)],
    ids=["empty", "partial", "full", "mixed"],
)
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bool])
def test_windows_finite_and_masked_entries_ignored(
    lfb: LFB, valid_counts: tuple[int, ...], mask_dtype: torch.dtype
) -> None:
    person, bank = _inputs(len(valid_counts))
    mask = torch.zeros(len(valid_counts), W)
    for row, n in enumerate(valid_counts):
        mask[row, :n] = 1
    mask = mask.to(mask_dtype)
    out = lfb(person, bank, mask)
    assert out.shape == (len(valid_counts), DI)
    assert torch.isfinite(out).all()

    # Rewrite every masked slot with garbage (huge values, NaN): output must not move.
    invalid = ~(mask.bool())
    garbage = bank.clone()
    garbage[invalid] = torch.randn_like(garbage[invalid]) * 1e6
    assert torch.equal(lfb(person, garbage, mask), out)
    garbage[invalid] = float("nan")
    assert torch.equal(lfb(person, garbage, mask), out)

    # A masked slot is the same as a slot that is not there at all.
    for row, n in enumerate(valid_counts):
        if n:
            alone = lfb(person[row : row + 1], bank[row : row + 1, :n], mask[row : row + 1, :n])
            assert torch.allclose(alone, out[row : row + 1], atol=1e-6)


def test_empty_window_gives_residual_only(lfb: LFB) -> None:
    """A fully masked row gets zero attention: each block adds out(relu(LN(0)))."""
    person, bank = _inputs(2)
    out = lfb(person, bank, torch.zeros(2, W))
    s = lfb.reduce_person(person)
    for block in lfb.blocks:
        zero = torch.zeros_like(s)
        s = s + block.out(torch.relu(block.norm(zero)))
    assert torch.allclose(out, s, atol=1e-6)


def test_valid_entries_do_change_output(lfb: LFB) -> None:
    person, bank = _inputs(3)
    mask = torch.ones(3, W)
    changed = bank.clone()
    changed[:, 0] += 5.0
    assert not torch.allclose(lfb(person, bank, mask), lfb(person, changed, mask))


def test_zero_boxes_and_bad_shapes(lfb: LFB) -> None:
    assert lfb(torch.zeros(0, D), torch.zeros(0, W, DB), torch.zeros(0, W)).shape == (0, DI)
    with pytest.raises(ValueError, match="mask"):
        lfb(torch.zeros(2, D), torch.zeros(2, W, DB), torch.zeros(2, W, 1))


def test_dropout_active_in_train_mode(lfb: LFB) -> None:
    person, bank = _inputs(4)
    mask = torch.ones(4, W)
    lfb.train()
    torch.manual_seed(1)
    a = lfb(person, bank, mask)
    b = lfb(person, bank, mask)
    assert not torch.equal(a, b)
    assert len(lfb.blocks) == 2


def test_wu_lfb_sees_a_set_but_the_time_aware_one_sees_when() -> None:
    """Reordering the window's slots leaves Wu et al.'s operator unchanged; with slot times
    the same features at other seconds give another output."""
    from core.bank_layout import slot_offsets

    torch.manual_seed(0)
    offsets = slot_offsets(-3, 7, 2)  # W = 14
    plain = LFB(dim_in=8, dim_bank=6, dim_inner=4).eval()
    timed = LFB(dim_in=8, dim_bank=6, dim_inner=4, slot_offsets=offsets).eval()
    person = torch.randn(3, 8)
    bank = torch.randn(3, 14, 6)
    mask = torch.zeros(3, 14)
    mask[:, :4] = 1  # rows at t-3 and t-2
    perm = torch.flip(torch.arange(14), [0])  # the same rows now at t+2 and t+3
    with torch.no_grad():
        torch.testing.assert_close(
            plain(person, bank, mask), plain(person, bank[:, perm], mask[:, perm])
        )
        diff = (timed(person, bank, mask) - timed(person, bank[:, perm], mask[:, perm])).abs()
    assert diff.max() > 1e-3
    assert timed.num_slots == 14 and plain.num_slots is None
    assert "slot_offsets" in dict(timed.named_buffers())
    with pytest.raises(ValueError, match="14 slots"):
        timed(person, bank[:, :5], mask[:, :5])


def test_same_person_affinity_attends_to_the_matching_row() -> None:
    """With the appearance cue the attention goes to the bank row that looks like the
    query: with the content logits zeroed and a large affinity weight, the output equals
    that of a window holding only the matching row -- whichever slot it sits in."""
    torch.manual_seed(0)
    a = 6
    lfb = LFB(dim_in=8, dim_bank=10 + a, dim_inner=4, num_blocks=1, appearance_dim=a).eval()
    block = lfb.blocks[0]
    with torch.no_grad():
        block.theta.weight.zero_()
        block.theta.bias.zero_()  # content logits all 0: only the affinity decides
        assert block.aff_logit is not None
        block.aff_logit.fill_(60.0)
        assert lfb.app_weight is not None
        lfb.app_weight.fill_(3.0)
    gen = torch.Generator().manual_seed(1)
    look = torch.randn(1, a, generator=gen)
    person = torch.cat([torch.randn(1, 8, generator=gen), look], 1)  # (1, D + A)
    bank = torch.randn(1, 5, 10 + a, generator=gen)
    bank[:, :, -a:] = torch.randn(1, 5, a, generator=gen) + 3.0  # nobody looks like it ...
    for slot in (0, 3):
        b = bank.clone()
        b[0, slot, -a:] = look[0]  # ... except this row
        full = lfb(person, b, torch.ones(1, 5))
        only = torch.zeros(1, 5)
        only[0, slot] = 1
        alone = lfb(person, b, only)
        torch.testing.assert_close(full, alone, atol=1e-4, rtol=1e-4)
    # Without a match, the output differs from attending to any single row.
    none = lfb(person, bank, torch.ones(1, 5))
    alone0 = lfb(person, bank, torch.tensor([[1.0, 0, 0, 0, 0]]))
    assert not torch.allclose(none, alone0, atol=1e-3)


def test_appearance_dim_is_checked() -> None:
    with pytest.raises(ValueError, match="appearance_dim"):
        LFB(dim_in=8, dim_bank=6, appearance_dim=6)


def _recall_lfb(offsets: list[float] | None) -> LFB:
    """A recall LFB whose row classifier says class 1 exactly where a row's feature 0 is
    large (and class 0 nowhere), with a sharp affinity."""
    torch.manual_seed(0)
    lfb = LFB(
        dim_in=8, dim_bank=8 + 6, dim_inner=4, slot_offsets=offsets, appearance_dim=6,
        recall_classes=2,
    ).eval()  # fmt: skip
    assert lfb.recall is not None and lfb.recall_weight is not None
    with torch.no_grad():
        lfb.recall.weight.zero_()
        lfb.recall.bias.fill_(-20.0)
        lfb.recall.weight[1, 0] = 40.0  # class 1 on iff feature 0 > 0.5
        lfb.recall_weight.fill_(5.0)
    return lfb


def test_recall_finds_this_persons_evidence_in_its_time_bin() -> None:
    """Recall answers "did this person do class c long ago / recently / now / ahead": the
    evidence row counts only when it looks like the query, and lands in the bin of its slot."""
    from core.bank_layout import slot_offsets
    from models.lfb import RECALL_BIN_EDGES_S

    offsets = slot_offsets(-30, 61, 1)  # W = 61, one person a second
    lfb = _recall_lfb(offsets)
    gen = torch.Generator().manual_seed(2)
    look = torch.randn(1, 6, generator=gen)
    person = torch.cat([torch.zeros(1, 8), look], 1)
    bank = torch.zeros(1, 61, 14)
    bank[:, :, 8:] = torch.randn(1, 61, 6, generator=gen) + 4.0  # strangers everywhere
    mask = torch.ones(1, 61)
    assert len(RECALL_BIN_EDGES_S) + 1 == 4
    # Nothing anywhere: every bin and class near 0.
    assert lfb._recall(person, bank, mask).abs().max() < 1e-3
    for offset, bin_index in ((-20, 0), (-5, 1), (0, 2), (12, 3)):
        slot = offsets.index(offset)
        own = bank.clone()
        own[0, slot, 0] = 1.0  # the evidence ...
        own[0, slot, 8:] = look[0]  # ... on this person's row
        got = lfb._recall(person, own, mask).view(4, 2)
        expected = torch.zeros(4, 2)
        expected[bin_index, 1] = 1.0
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)
        # The same evidence on a stranger's row, or on a masked slot, recalls nothing.
        stranger = own.clone()
        stranger[0, slot, 8:] = look[0] + 3.0
        assert lfb._recall(person, stranger, mask).max() < 1e-3
        masked = mask.clone()
        masked[0, slot] = 0
        assert lfb._recall(person, own, masked).max() < 1e-3


def test_recall_reaches_the_output_and_broadcasts_a_shared_window() -> None:
    """The recall changes the LFB's output (so the classifier can read it), and a window
    shared by all K persons (bank batch 1, as the service feeds it) gives what K copies give."""
    lfb = _recall_lfb(None)  # unordered window: one bin
    gen = torch.Generator().manual_seed(3)
    look = torch.randn(3, 6, generator=gen)
    person = torch.cat([torch.randn(3, 8, generator=gen), look], 1)
    bank = torch.randn(1, 5, 14, generator=gen)
    bank[0, :, 0] = 0.0
    mask = torch.ones(3, 5)
    before = lfb(person, bank, mask)
    bank[0, 2, 0] = 1.0
    bank[0, 2, 8:] = look[1]  # person 1's evidence
    after = lfb(person, bank, mask)
    recall = lfb._recall(person, bank, mask).view(3, 1, 2)
    assert recall[1, 0, 1] > 0.99 and recall[0, 0, 1] < 1e-3 and recall[2, 0, 1] < 1e-3
    assert (after[1] - before[1]).abs().max() > 1e-4
    torch.testing.assert_close(lfb(person, bank.expand(3, -1, -1), mask), after)
    # The row classifier reads the person features without their colour cells.
    assert lfb.recall_logits(person).shape == (3, 2)
    torch.testing.assert_close(lfb.recall_logits(person), lfb.recall_logits(person[:, :8]))


def test_recall_needs_the_appearance_cue() -> None:
    with pytest.raises(ValueError, match="recall_classes"):
        LFB(dim_in=8, dim_bank=10, recall_classes=3)
    with pytest.raises(ValueError, match="recall_classes"):
        LFB(dim_in=8, dim_bank=14, appearance_dim=6, recall_classes=-1)
    with pytest.raises(ValueError, match="without recall_classes"):
        LFB(dim_in=8, dim_bank=14, appearance_dim=6).recall_logits(torch.zeros(1, 8))


def test_recall_affinity_starts_on_the_flagged_cells() -> None:
    """``recall_cells`` (the torso cells, from the action model) start with most of the
    recall affinity's weight; the attention's own affinity weights are untouched."""
    from models.lfb import APPEARANCE_WEIGHT_INIT, RECALL_CELL_INIT

    cells = [False, True, True, False, False, False]
    lfb = LFB(dim_in=8, dim_bank=14, appearance_dim=6, recall_classes=2, recall_cells=cells)
    assert lfb.recall_weight is not None and lfb.app_weight is not None
    want = torch.tensor([RECALL_CELL_INIT[c is False] for c in cells])
    torch.testing.assert_close(lfb.recall_weight.detach(), want)
    assert torch.all(lfb.app_weight == APPEARANCE_WEIGHT_INIT)
    with pytest.raises(ValueError, match="recall_cells"):
        LFB(dim_in=8, dim_bank=14, appearance_dim=6, recall_classes=2, recall_cells=[True] * 5)
    with pytest.raises(ValueError, match="recall_cells"):
        LFB(dim_in=8, dim_bank=14, appearance_dim=6, recall_classes=2, recall_cells=[False] * 6)
