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
    from models.bank_layout import slot_offsets

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
