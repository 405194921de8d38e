"""core/bank_layout.py: the slot-aligned bank window shared by training and the service."""

from __future__ import annotations

import numpy as np
import pytest

from core.bank_layout import (
    DEFAULT_WINDOW_SECONDS,
    TIME_ENCODING_DIM,
    TIME_ENCODING_PERIODS_S,
    check_window_seconds,
    file_window,
    head_shares_window,
    layout_window,
    live_window,
    slot_indices,
    slot_offsets,
    window_seconds_of_config,
    window_seconds_of_half_width,
)


def _reference(times, feats, t, origin, seconds, persons):
    """Plain loops: rows of each second in the given order, first `persons` kept."""
    out = np.zeros((seconds * persons, feats.shape[1]), np.float32)
    mask = np.zeros(seconds * persons, bool)
    seen: dict[int, int] = {}
    for time, f in zip(times, feats, strict=True):
        s = int(time) - t - origin
        if not 0 <= s < seconds:
            continue
        j = seen.get(s, 0)
        seen[s] = j + 1
        if j < persons:
            out[s * persons + j] = f
            mask[s * persons + j] = True
    return out, mask


def test_slot_offsets_name_each_slots_second() -> None:
    offs = slot_offsets(-2, 3, 2)
    assert offs == [-2.0, -2.0, -1.0, -1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="seconds >= 1"):
        slot_offsets(0, 0, 5)


@pytest.mark.parametrize("origin,seconds", [(-30, 61), (-60, 61), (-5, 6)])
def test_layout_matches_a_loop_reference_on_unsorted_crowded_rows(
    origin: int, seconds: int
) -> None:
    rng = np.random.default_rng(0)
    t = 100
    times = rng.integers(t - 70, t + 40, size=400)  # some outside, many > persons per second
    feats = rng.normal(size=(400, 6)).astype(np.float32)
    got, got_mask = layout_window(times, feats, t, origin, seconds, 5)
    want, want_mask = _reference(times, feats, t, origin, seconds, 5)
    np.testing.assert_array_equal(got_mask, want_mask)
    np.testing.assert_array_equal(got, want)
    assert got_mask.sum() < 400  # the cap and the window both dropped rows


def test_slot_of_a_row_encodes_its_time_offset() -> None:
    # Three rows at t-30, t, t+30 in a [t-30, t+30] x 2 layout: slots 0, 60, 120.
    slot, keep = slot_indices([70, 100, 130, 131], 100, -30, 61, 2)
    assert keep.tolist() == [True, True, True, False]
    assert slot[keep].tolist() == [0, 60, 120]
    offsets = slot_offsets(-30, 61, 2)
    assert [offsets[i] for i in slot[keep]] == [-30.0, 0.0, 30.0]


def test_time_encoding_tells_every_second_of_a_long_window_apart() -> None:
    import torch

    from models.lfb import time_encoding

    offsets = torch.arange(-60.0, 31.0)
    enc = time_encoding(offsets)
    assert enc.shape == (91, TIME_ENCODING_DIM) == (91, 2 * len(TIME_ENCODING_PERIODS_S))
    dist = torch.cdist(enc, enc) + torch.eye(91) * 1e9
    assert float(dist.min()) > 0.5  # no two seconds share (or nearly share) a code


def test_one_window_length_and_its_two_windows() -> None:
    """An old config's half-width becomes seconds once; both windows follow from the seconds."""
    assert window_seconds_of_half_width(30) == 61 and window_seconds_of_half_width(0) == 1
    assert file_window(61) == (-30, 30) and live_window(61) == (-60, 0)
    assert file_window(9) == (-4, 4) and live_window(9) == (-8, 0)
    assert file_window(1) == live_window(1) == (0, 0)
    for bad in (lambda: window_seconds_of_half_width(-1), lambda: file_window(0)):
        with pytest.raises(ValueError, match="bank window"):
            bad()


def test_a_stored_config_gives_its_window_in_seconds() -> None:
    """New configs state the seconds, old ones the half-width; both read as seconds."""
    assert window_seconds_of_config({}) == DEFAULT_WINDOW_SECONDS == 61
    assert window_seconds_of_config({"bank_window_seconds": 9}) == 9
    assert window_seconds_of_config({"bank_window": 4}) == 9
    assert window_seconds_of_config({"bank_window": np.int64(4), "bank_window_seconds": 9}) == 9
    for bad, match in (
        ({"bank_window": 4, "bank_window_seconds": 61}, "disagree"),
        ({"bank_window_seconds": 8}, "must be odd"),
        ({"bank_window_seconds": "61"}, "integer"),
        ({"bank_window": 1.5}, "integer"),
    ):
        with pytest.raises(ValueError, match=match):
            window_seconds_of_config(bad)
    assert check_window_seconds(np.int64(7)) == 7 and type(check_window_seconds(np.int64(7))) is int


def test_head_shares_window_only_when_one_copy_gives_the_same_output() -> None:
    """A head that broadcasts the window over persons shares it; one that mixes persons with
    the window (or fails on a (1, W, D) window) gets per-person copies."""
    inputs = {
        "person": ("K", 4),
        "global_per_person": ("K", 3),
        "bank": ("K", "W", 2),
        "mask": ("K", "W"),
    }

    def broadcasting(feed):
        bank = (feed["bank"] * feed["mask"][..., None]).sum(axis=1)  # (1 or K, 2)
        return {"action": feed["person"][:, :2] + bank}

    def per_person(feed):
        if feed["bank"].shape[0] != feed["person"].shape[0]:
            raise ValueError("bank batch must equal persons")
        return broadcasting(feed)

    def mixes_persons(feed):  # output depends on the bank's batch size
        return {"action": feed["person"][:, :2] * feed["bank"].shape[0]}

    assert head_shares_window(broadcasting, inputs, 2, np.float32)
    assert not head_shares_window(per_person, inputs, 2, np.float32)
    assert not head_shares_window(mixes_persons, inputs, 2, np.float32)
    no_bank = {k: v for k, v in inputs.items() if k != "bank"}
    assert not head_shares_window(broadcasting, no_bank, 2, np.float32)
