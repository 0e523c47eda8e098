"""Masks: fastMRI parity, acceleration, further corruption Ã ⊂ A, pixel masks."""

import numpy as np
import pytest
import torch
from fastmri.data.subsample import EquispacedMaskFractionFunc, RandomMaskFunc

import ambient_mri as am
from ambient_mri.masks import achieved_acceleration, acs_width, calibration_width, further_mask, kspace_mask


@pytest.mark.parametrize("width", [320, 368, 372, 396])
@pytest.mark.parametrize("R,cf", [(4, 0.08), (8, 0.04)])
def test_random_and_equispaced_equal_fastmri(width, R, cf):
    for seed in list(range(12)) + ["file1000001.h5", "file_brain_AXT2_200_2000019.h5"]:
        fm_seed = tuple(map(ord, seed)) if isinstance(seed, str) else seed
        for kind, cls in (("random", RandomMaskFunc), ("equispaced", EquispacedMaskFractionFunc)):
            ref, _ = cls([cf], [R])((640, width, 2), seed=fm_seed)
            ours = kspace_mask(kind, (640, width), R, cf, seed=seed)
            assert ours.shape == (1, width) and ours.dtype == np.float32
            np.testing.assert_array_equal(ours[0], ref.numpy().reshape(width), err_msg=f"{kind} seed={seed}")


def test_mask_same_seed_same_mask_and_centre_block():
    a = kspace_mask("random", (640, 320), 4, 0.08, seed="vol.h5")
    b = kspace_mask("random", (640, 320), 4, 0.08, seed="vol.h5")
    c = kspace_mask("random", (640, 320), 4, 0.08, seed="vol2.h5")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    start = (320 - 26 + 1) // 2
    assert a[0, start: start + 26].all()


@pytest.mark.parametrize("kind", ["gaussian1d", "uniform1d"])
@pytest.mark.parametrize("R", [2, 4, 6, 8])
def test_fixed_count_masks(kind, R):
    m = kspace_mask(kind, (384, 320), R, 20 / 320, seed=7)
    assert m.sum() == round(320 / R)
    assert acs_width(m) >= 20
    assert achieved_acceleration(m) == pytest.approx(320 / round(320 / R))


def test_gaussian1d_is_denser_in_the_centre():
    m = np.mean([kspace_mask("gaussian1d", (1, 320), 4, 0.04, seed=s)[0] for s in range(50)], axis=0)
    assert m[120:200].mean() > 2 * np.concatenate([m[:60], m[-60:]]).mean()


def test_poisson2d():
    m = kspace_mask("poisson2d", (64, 64), 4, 0.125, seed=1)
    assert m.shape == (64, 64)
    assert 2.5 < achieved_acceleration(m) < 6
    assert m[28:36, 28:36].all()
    np.testing.assert_array_equal(m, kspace_mask("poisson2d", (64, 64), 4, 0.125, seed=1))


def test_achieved_acceleration_reports_real_count():
    m = kspace_mask("random", (640, 320), 4, 0.08, seed=0)
    assert achieved_acceleration(m) == pytest.approx(320 / m.sum())


@pytest.mark.parametrize("R,before,after", [(2, 160, 106), (4, 80, 64), (6, 53, 45), (8, 40, 35)])
def test_further_mask_adps_line_counts(R, before, after):
    a = kspace_mask("uniform1d", (384, 320), 320 / before, 20 / 320, seed=R)
    assert a.sum() == before
    b = further_mask(a, extra_lines=before - after, acs_lines=20, seed=11)
    assert b.sum() == after
    assert np.all(b <= a)  # never adds a line
    start = (320 - 20 + 1) // 2
    assert b[0, start: start + 20].all()  # never drops ACS


def test_further_mask_delta_pixels_and_columns():
    p = am.masks.pixel_mask((2, 1, 64, 64), 0.5, seed=0)
    q = further_mask(p, delta=0.1, seed=1)
    assert np.all(q <= p)
    dropped = (p.sum() - q.sum()) / p.sum()
    assert 0.07 < dropped < 0.13
    col = kspace_mask("random", (64, 128), 2, 0.1, seed=0)
    full2d = np.repeat(col, 64, axis=0)
    out = further_mask(full2d, delta=0.3, seed=2)
    assert np.all(out == out[:1]) and np.all(out <= full2d)  # stays a column mask
    assert calibration_width(out) >= round(128 * 0.1)


def test_further_mask_torch_in_torch_out_and_batches():
    a = torch.from_numpy(np.stack([kspace_mask("uniform1d", (1, 64), 2, 0.125, seed=s) for s in range(3)]))
    b = further_mask(a, extra_lines=5, seed=0)
    assert isinstance(b, torch.Tensor) and b.shape == a.shape
    assert torch.all(a.sum(-1) - b.sum(-1) == 5)
    assert not torch.equal(b[0], b[1])


def test_mask_bad_input():
    with pytest.raises(am.AmbientMRIError, match="unknown mask kind"):
        kspace_mask("radial", (64, 64), 4, 0.08)
    with pytest.raises(am.AmbientMRIError, match="center_fraction"):
        kspace_mask("random", (64, 64), 4, 1.5)
    with pytest.raises(am.AmbientMRIError, match=r"\[0, 1\)"):
        am.masks.pixel_mask((8, 8), 1.0)
    with pytest.raises(am.AmbientMRIError, match="outside the ACS"):
        further_mask(kspace_mask("uniform1d", (1, 64), 4, 0.125, seed=0), extra_lines=20)
    with pytest.raises(am.AmbientMRIError, match="exactly one"):
        further_mask(np.ones((1, 8)))


def test_masks_without_acs_lines_follow_fastmri_instead_of_dividing_by_zero():
    # round(32 * 0.01) = 0 ACS lines: fastMRI still draws a mask; the "too many ACS lines" text divided by zero
    expected, _ = RandomMaskFunc([0.01], [4])((1, 32, 1), seed=0)
    assert np.array_equal(kspace_mask("random", (32, 32), 4, 0.01, seed=0)[0], expected.numpy().reshape(32))
    for kind in ("equispaced", "uniform1d", "gaussian1d"):
        assert kspace_mask(kind, (32, 32), 4, 0.01, seed=0).sum() == 8


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": 1.5}, "seed must be an integer"),
    ({"center_fraction": "0.08"}, "center_fraction must be in"),
    ({"shape": 32}, "mask shape must be a tuple"),
    ({"shape": (0, 32)}, "mask shape must be a tuple"),
    ({"acceleration": True}, "acceleration must be a finite number"),
    ({"kind": "poisson2d", "acceleration": 1e12}, "poisson2d at acceleration 1e\\+12 on 32 x 32"),
])
def test_kspace_mask_arguments_are_checked_before_numpy_or_sigpy_sees_them(kwargs, message):
    args = {"kind": "random", "shape": (32, 32), "acceleration": 4, "center_fraction": 0.08, "seed": 0, **kwargs}
    with pytest.raises(am.AmbientMRIError, match=message):
        kspace_mask(**args)


def test_further_mask_never_drops_acs_lines_whatever_the_arguments():
    m = kspace_mask("uniform1d", (32, 32), 2, 0.25, seed=0)   # an 8-line ACS block
    acs = np.arange(12, 20)   # fastMRI's centre block of 8 of 32 columns
    assert m[0, acs].all()
    for acs_lines in (40, -4, 4.5, True):   # a block wider than W, or negative, protected the wrong columns
        with pytest.raises(am.AmbientMRIError, match="acs_lines must be an integer in \\[0, 32\\]"):
            further_mask(m, delta=0.99, acs_lines=acs_lines, seed=0)
    assert further_mask(m, delta=0.99, acs_lines=32, seed=0).sum() == m.sum()
    assert further_mask(m, delta=0.99, seed=0)[0, acs].all()
    for extra in (2.7, -1):
        with pytest.raises(am.AmbientMRIError, match="extra_lines must be an integer >= 0"):
            further_mask(m, extra_lines=extra, seed=0)
    for bad in (np.float32(1), np.zeros(0)):
        with pytest.raises(am.AmbientMRIError, match="further_mask needs a mask of shape"):
            further_mask(bad, delta=0.5)
    with pytest.raises(am.AmbientMRIError, match="p must be a number"):
        am.masks.pixel_mask((4, 4), "0.5")


def test_further_mask_warns_when_per_slice_column_masks_come_as_one_pixel_mask():
    """An (S, W) stack of different per-slice column masks was taken, in silence, as one pixel mask, and Ã dropped
    ACS samples (a docs audit); a real pixel mask, or the same masks as (S, 1, W), get no warning."""
    import warnings

    from ambient_mri.masks import acs_columns, further_mask, kspace_mask

    masks = np.stack([kspace_mask("random", (64, 64), 4, 8 / 64, seed=(s, 1))[0] for s in range(6)])
    assert len({m.tobytes() for m in masks}) > 1  # per-slice masks that differ
    with pytest.warns(UserWarning, match=r"looks like per-slice column masks.*kind='lines'"):
        pixels = further_mask(masks, delta=0.5, seed=0)
    assert (pixels * acs_columns(masks[0]) != acs_columns(masks[0])).any()  # why it warns: ACS samples dropped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lines = further_mask(masks[:, None], delta=0.5, seed=0)[:, 0]
        assert (lines * acs_columns(masks[0]) == acs_columns(masks[0])).all()
        further_mask(masks, delta=0.5, seed=0, kind="lines")
        further_mask((np.random.default_rng(0).uniform(size=(64, 64)) < 0.5).astype(np.float32), delta=0.2, seed=0)
