"""The second evaluation set (data_tools.other_sets): nibabel's real EPI subject in the official fastMRI layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("nibabel")

from ambient_mri.data import read_fastmri  # noqa: E402
from data_tools.other_sets import build_epi_set, nibabel_epi_slices  # noqa: E402
from data_tools.simulate import birdcage_maps, rss_target, simulate_coil_data  # noqa: E402


def test_epi_slices_are_distinct_normalised_brain_sections():
    img, ids = nibabel_epi_slices(3, (32, 32))
    assert img.shape == (3, 32, 32) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() == pytest.approx(1.0)
    assert len(set(ids)) == 3
    assert img[:, 0].max() < 0.05 * img.max()  # background at the top row: a whole head, not a crop


def test_epi_set_is_an_official_fastmri_file_whose_target_is_its_rss(tmp_path, one_thread):
    paths = build_epi_set(tmp_path, size=32, coils=4, slices=2, noise_std=0.005)
    files = sorted(paths["raw_val"].glob("*.h5"))
    assert [f.name for f in files] == ["epi_val_00.h5"]
    assert paths["raw_val"] == tmp_path / "raw" / "val"  # where build_demo keeps its held-out volume
    vol = read_fastmri(files[0])
    assert vol.multicoil and vol.num_slices == 2 and vol.num_coils == 4
    assert vol.target_key == "reconstruction_rss"
    k = np.asarray(vol.kspace)
    assert k.shape == (2, 4, 64, 32)  # 2x readout oversampling
    target = vol.target.read()
    assert target.shape == (2, 32, 32)
    np.testing.assert_allclose(target, rss_target(k, (32, 32)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(vol.attrs["max"], target.max(), rtol=1e-6)
    assert vol.attrs["source"].endswith("example4d.nii.gz")
    record = json.loads((tmp_path / "epi_set.json").read_text())
    assert record["coils"] == 4 and len(record["val_slices"]) == 2
    # the file holds the simulator's k-space of those slices (same seed, coils, noise)
    sim = simulate_coil_data(nibabel_epi_slices(2, (32, 32))[0], num_coils=4, oversample=2, noise_std=0.005,
                             seed=record["seed"], coil_radius=record["coil_radius"])
    np.testing.assert_array_equal(sim.kspace, k)
    # other coils than the demo's: the birdcage radius differs from the simulator's default
    assert not np.allclose(birdcage_maps(4, (64, 32), record["coil_radius"]), birdcage_maps(4, (64, 32)))
    # deterministic and kept: a second build leaves the file as it is
    build_epi_set(tmp_path, size=32, coils=4, slices=2, noise_std=0.005)
    np.testing.assert_array_equal(np.asarray(read_fastmri(files[0]).kspace), k)


def _lambda_rules_epi() -> tuple[np.ndarray, np.ndarray]:
    """benchmarks/lambda_rules.py's EPI volume: 4 central slices of nibabel's example4d, 64 x 64, 12 coils."""
    from data_tools.other_sets import epi_central_planes

    sim = simulate_coil_data(epi_central_planes(4, 64), num_coils=12, oversample=2, noise_std=0.005, seed=3)
    return sim.kspace, rss_target(sim.kspace, (64, 64))


def test_sense_lambda_between_the_two_cross_validations_beats_either(one_thread):
    """On the EPI subject at R = 4 (8 ACS lines) the held-out non-ACS lines alone are best predicted by the largest
    λ (their error barely sees the shrinkage), held-out lines of every kind by a small one (ACS lines are easy to
    predict from their neighbours). CG-SENSE's λ, the geometric mean of the two, beats both against the reference;
    the folds of the second curve deal out the ACS columns too, those of the first only the non-ACS ones."""
    import ambient_mri as am
    from ambient_mri.baselines import SENSE_GRID, _folds
    from ambient_mri.masks import kspace_mask, outer_columns
    from ambient_mri.metrics import evaluate_volume

    k, target = _lambda_rules_epi()
    m = kspace_mask("random", k.shape[-2:], 4, 8 / 64, seed=(4, 11))[0]
    res = am.reconstruct(k * m, m, method="sense", progress=False)
    lo = SENSE_GRID[int(np.argmin(res.extra["validation_error_all_lines"]))]
    hi = SENSE_GRID[int(np.argmin(res.extra["validation_error"]))]
    assert lo < hi and res.extra["lambda"] == pytest.approx(np.sqrt(lo * hi))

    def psnr(r):
        return evaluate_volume(target, r.magnitude)["PSNR"]

    got = psnr(res)
    for lam in (lo, hi):
        assert got > psnr(am.reconstruct(k * m, m, method="sense", lam=lam, progress=False)) + 0.3, lam
    np.testing.assert_array_equal(np.sort(np.concatenate(_folds(m, 4, 0))), outer_columns(m))
    np.testing.assert_array_equal(np.sort(np.concatenate(_folds(m, 4, 0, every=True))), np.flatnonzero(m))


def test_l1_wavelet_tikhonov_floor_lifts_it_above_zero_filled(one_thread):
    """On the EPI subject with 6 ACS lines at R = 8, plain L1-wavelet (l2=0) lands below zero-filled at every λ of
    its grid, and the strong λ its held-out lines choose must raise a warning; with the default ℓ2 floor (the
    Tikhonov λ of the non-ACS lines) it is above zero-filled without one. At R = 4 with 8 ACS lines both are well
    above and do not warn."""
    import warnings

    import ambient_mri as am
    from ambient_mri.baselines import L1_WARN_LAMBDA, SENSE_GRID, tolerance_pick
    from ambient_mri.masks import kspace_mask
    from ambient_mri.metrics import evaluate_volume

    k, target = _lambda_rules_epi()
    for R, acs, bad in ((8, 6, True), (4, 8, False)):
        m = kspace_mask("random", k.shape[-2:], R, acs / 64, seed=(R, 11))[0]
        zf = evaluate_volume(target, am.reconstruct(k * m, m, method="zero_filled", progress=False).magnitude)
        sense = am.reconstruct(k * m, m, method="sense", progress=False)
        for l2, fails in ((0.0, bad), (None, False)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = am.reconstruct(k * m, m, method="l1_wavelet", progress=False,
                                     **({} if l2 is None else {"l2": l2}))
            got = evaluate_volume(target, res.magnitude)
            warned = any("strong regularisation" in str(w.message) for w in caught)
            assert warned == fails == (res.extra["lambda"] >= L1_WARN_LAMBDA), (R, l2, res.extra["lambda"])
            assert (got["PSNR"] < zf["PSNR"]) == fails, (R, l2, got["PSNR"], zf["PSNR"])
            floor = SENSE_GRID[tolerance_pick(sense.extra["validation_error"])]  # the non-ACS lines' rule
            assert res.extra["l2"] == (floor if l2 is None else 0.0)


def test_optional_sources_say_which_extra_to_install():
    """The new-source loaders need packages outside the test extra; without them the error names the extra."""
    from data_tools.other_sets import optional_module

    with pytest.raises(ImportError, match=r'this set needs no_such_module_xyz: pip install -e "\.\[bench\]"'):
        optional_module("no_such_module_xyz")
