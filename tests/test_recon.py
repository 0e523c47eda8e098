"""reconstruct(): CG-SENSE accuracy, input forms, every diffusion method with a tiny trained model, bad input."""

import dataclasses
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import ambient_mri as am
from ambient_mri.baselines import SENSE_GRID
from ambient_mri.errors import AmbientMRIError, DataFileError
from ambient_mri.masks import kspace_mask
from ambient_mri.metrics import center_crop, evaluate_volume
from ambient_mri.operators import fft2c
from ambient_mri.recon import DIFFUSION, reconstruct, reconstruct_file
from ambient_mri.scan import MIN_MAP_UNEXPLAINED, MIN_OUTER_SNR, check_inputs, outer_line_snr, prepare_scan
from data_tools.simulate import make_fastmri_volume, rss_target, simulate_coil_data, write_fastmri
from helpers import blobs

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "demo_mni_r4.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A tiny demo set (32x32, 4 coils) and an ambient model trained on its R=4 data for 30 steps."""
    from ambient_mri.training.trainer import train
    from data_tools.demo import build_demo

    root = tmp_path_factory.mktemp("demo")
    paths = build_demo(root / "data", size=32, coils=4, slices=12)
    run = train(RECIPE, [f"data.path={paths['r4_train']}", f"output={root / 'runs'}", "steps=30", "batch_size=4",
                         "network.model_channels=8", "network.channel_mult=[1,2]", "device=cpu",
                         "checkpoint_every=30", "log_every=10"], progress=False)
    model = am.load_model(run / "model.pt")
    val = sorted(Path(paths["raw_val"]).glob("*.h5"))[0]
    with h5py.File(val, "r") as f:
        k = f["kspace"][()]                                  # (2, 4, 64, 32): 2x readout oversampling
    mask = kspace_mask("random", k.shape[-2:], 4, 0.25, seed=0)[0]
    return {"model": model, "run": run, "kspace": k, "mask": mask, "paths": paths}


def small_scan(S=2, size=32, coils=4, R=3, seed=0):
    sim = simulate_coil_data(blobs(S, size, seed), num_coils=coils, oversample=1, seed=seed)
    mask = kspace_mask("equispaced", (size, size), R, 0.25, seed=seed)[0]
    return sim, mask


# ----------------------------------------------------------------------------------------------------------
# Classical baselines
# ----------------------------------------------------------------------------------------------------------


def test_maps_zero_where_the_image_is_bright_are_warned():
    """ESPIRiT cut a hole into the support of a neck angiogram crop that fills its field of view, where CG-SENSE
    landed 5 dB below zero-filled with a misfit the refinement had brought to 4.7 (map_refinement.py's fresh2 set).
    Given maps zero inside the object are warned "maps_support" (the worst slice named); the true maps cropped to
    the objects (zero on their background) are not, nor is zero_filled."""
    images = blobs(2, 32, 0)
    sim = simulate_coil_data(images, num_coils=8, oversample=1, noise_std=0.005, seed=0)
    mask = kspace_mask("random", (32, 32), 3, 0.25, seed=0)[0]
    k = sim.kspace * mask
    obj = images > 0
    cropped = (sim.maps[None] * obj[:, None]).astype(np.complex64)      # zero where the objects are not
    holed = cropped.copy()
    hole = np.zeros((32, 32), bool)
    hole[10:22, 10:22] = True
    hole &= obj[1]                                                        # a hole in slice 1's objects
    holed[1][:, hole] = 0
    assert hole.sum() > 50
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        good = reconstruct(k, mask, maps=cropped, method="sense", lam=1e-3, progress=False)
        reconstruct(k, mask, maps=holed, method="zero_filled", progress=False)
    assert not [w for w in caught if getattr(w.message, "reason", "") == "maps_support"]
    assert max(good.extra["maps_support_bright"]) < 0.02, good.extra
    with pytest.warns(am.BelowZeroFilledWarning, match="slice 1") as caught:
        bad = reconstruct(k, mask, maps=holed, method="sense", lam=1e-3, progress=False)
    assert "maps_support" in [w.message.reason for w in caught]
    assert bad.extra["maps_support_bright"][1] > 0.3 > 0.02 > bad.extra["maps_support_bright"][0], bad.extra


def test_cg_sense_r2_above_40db():
    """Noise-free 8-coil MNI152 slices, fastMRI random mask at R=2 (ACS from the data, ESPIRiT maps): CG-SENSE
    reaches > 40 dB, fastMRI's PSNR against the RSS target (= the object magnitude: the simulated maps have
    RSS 1). λ is chosen from held-out acquired lines; on noise-free data it is the smallest of the grid."""
    from data_tools.sources import mni152_brain_range, mni152_slices

    lo, hi = mni152_brain_range("axial")
    imgs = mni152_slices(2, (128, 128), axis="axial", start=(lo + hi) // 2 - 10, stop=(lo + hi) // 2 + 10)
    sim = simulate_coil_data(imgs, num_coils=8, oversample=2, noise_std=0.0, seed=0)
    mask = kspace_mask("random", sim.kspace.shape[-2:], 2, 0.16, seed=0)[0]
    target = rss_target(sim.kspace, (128, 128))
    np.testing.assert_allclose(target, center_crop(np.abs(sim.image), (128, 128)), atol=1e-4)
    res = reconstruct(sim.kspace * mask, mask, method="sense")
    zf = reconstruct(sim.kspace, mask, method="zero_filled")
    assert res.magnitude.shape == (2, 128, 128) and res.image.shape == (2, 128, 128)
    psnr = evaluate_volume(target, res.magnitude)["PSNR"]
    assert psnr > 40, psnr
    assert psnr > evaluate_volume(target, zf.magnitude)["PSNR"] + 10
    assert res.extra["lambda"] == pytest.approx(SENSE_GRID[0]) and res.nfe == 0


def test_sense_lambda_follows_the_noise():
    """The held-out-line rule picks a small λ for clean data and a larger one for noisy data (true maps given)."""
    sim, mask = small_scan(S=2, size=48, coils=8, R=2)
    noisy = sim.kspace + 0.05 * (np.random.default_rng(0).standard_normal(sim.kspace.shape) * (1 + 1j)).astype(
        np.complex64)
    maps = np.broadcast_to(sim.maps, (2, *sim.maps.shape))
    clean = reconstruct(sim.kspace, mask, maps=maps, method="sense")
    noisy = reconstruct(noisy, mask, maps=maps, method="sense")
    assert clean.extra["lambda"] < noisy.extra["lambda"]
    fixed = reconstruct(sim.kspace, mask, maps=maps, method="sense", lam=1e-2, iters=7)
    assert fixed.extra == {**fixed.extra, "lambda": 1e-2, "iters": 7}


def test_l1_wavelet_without_holdout_lines_falls_back():
    """Every acquired line an ACS line (nothing to hold out): a default λ instead of a crash (demo at R=8)."""
    sim, _ = small_scan(S=1, size=32, coils=4)
    mask = np.zeros(32, np.float32)
    mask[12:20] = 1
    for method in ("l1_wavelet", "sense"):
        with pytest.warns(am.BelowZeroFilledWarning, match=f"{method}: every acquired line is an ACS line") as rec:
            res = reconstruct(sim.kspace, mask, maps=sim.maps[None], method=method)
        assert {w.message.reason for w in rec} == {"underdetermined", "unchecked_lambda"}
        assert res.extra["lambda"] > 0 and np.isfinite(res.magnitude).all()


def test_l1_solver_is_sigpys_l1_wavelet_recon_plus_an_l2_term():
    """With l2 = 0 our L1-wavelet solve is sigpy's L1WaveletRecon; l2 > 0 shrinks the image (it adds ½ l2 ‖x‖²)."""
    import sigpy.mri

    from ambient_mri.baselines import _cg_sense, _l1

    sim, mask = small_scan(S=1, size=32, coils=4)
    y = (sim.kspace[0] * mask).astype(np.complex64)
    ref = sigpy.mri.app.L1WaveletRecon(y, sim.maps, 1e-3, weights=mask[None, None, :] * np.ones_like(y.real),
                                       max_iter=30, show_pbar=False).run()
    ours = _l1(y, sim.maps, mask, 1e-3, 30)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()  # float32; sigpy's step size from a random start
    assert np.array_equal(ours, _l1(y, sim.maps, mask, 1e-3, 30))  # our step size is seeded: it repeats exactly
    # the ℓ2 term is ½ l2 ‖x‖², the one of CG-SENSE's (A^H A + λ I) x = A^H y: with no L1 weight both solve the same
    tik = _l1(y, sim.maps, mask, 0.0, 500, l2=0.05)
    cg = _cg_sense(torch.from_numpy(y[None]), torch.from_numpy(sim.maps[None]), torch.from_numpy(mask[None]), 0.05,
                   200)[0].numpy()
    assert np.linalg.norm(tik - cg) < 1e-3 * np.linalg.norm(cg)


def test_outer_line_snr_measures_signal_over_noise():
    """outer_line_snr is 1 on pure noise, large on a clean scan, None with nothing outside the ACS block."""
    rng = np.random.default_rng(0)
    noise = 0.1 * (rng.standard_normal((2, 4, 32, 32)) + 1j * rng.standard_normal((2, 4, 32, 32)))
    mask = np.stack([kspace_mask("random", (32, 32), 4, 0.25, seed=s)[0] for s in (1, 2)])
    mask[:, 3] = 1  # one line outside the ACS block
    sigma = np.full(2, np.sqrt(2) * 0.1)
    assert abs(outer_line_snr(noise * mask[:, None, None], mask, sigma) - 1) < 0.15
    sim, _ = small_scan(S=2, size=32, coils=4)
    assert outer_line_snr(sim.kspace[..., :32, :] * mask[:, None, None], mask, sigma / 100) > 10
    acs_only = np.zeros((2, 32), np.float32)
    acs_only[:, 12:20] = 1
    assert outer_line_snr(noise, acs_only, sigma) is None


def test_noise_dominated_scan_warns_for_linear_methods():
    """When the acquired lines outside the ACS block are mostly noise the held-out lines cannot choose λ (on such
    phantoms CG-SENSE and L1-wavelet fell below zero-filled unwarned): sense and l1_wavelet warn and record the
    ratio; the same scan with little noise does not warn; learned and zero-filled reconstructions are not warned."""
    images = blobs(2, 64, seed=1)
    mask = kspace_mask("random", (128, 64), 8, 0.1, seed=3)[0]
    for sigma, noisy in ((0.1, True), (0.001, False)):
        k = simulate_coil_data(images, num_coils=8, oversample=2, noise_std=sigma, seed=1).kspace * mask
        for method in ("sense", "l1_wavelet"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = reconstruct(k, mask, method=method, lam=1e-2, progress=False)
            fired = [w for w in caught if "mostly noise" in str(w.message)]
            assert all(w.category is am.BelowZeroFilledWarning and w.message.reason == "noise" for w in fired)
            assert bool(fired) == noisy, (sigma, method, res.extra["outer_line_snr"])
            assert (res.extra["outer_line_snr"] < MIN_OUTER_SNR) == noisy
            if noisy:  # the scan's own σ (readout oversampling) and the cropped k-space in one convention: ~1
                assert 0.9 < res.extra["outer_line_snr"] < 1.2, res.extra["outer_line_snr"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = reconstruct(k, mask, method="zero_filled", progress=False)
        assert "outer_line_snr" not in res.extra and not [w for w in caught if "mostly noise" in str(w.message)]


def test_map_misfit_flags_maps_that_do_not_explain_the_data():
    """With the true maps the near-unregularised SENSE fit leaves about the noise energy (map_misfit ~1, no maps
    warning); the maps of the wrong coils (their order reversed) leave far more, and sense and l1_wavelet warn
    (reason "maps"); zero-filled is not checked; noise-free data with ESPIRiT maps are not warned."""
    sim = simulate_coil_data(blobs(2, 32, seed=0), num_coils=8, oversample=2, noise_std=0.01, seed=0)
    mask = kspace_mask("random", sim.kspace.shape[-2:], 2, 0.25, seed=0)[0]
    true = np.ascontiguousarray(np.broadcast_to(sim.maps[:, 16:48], (2, *sim.maps[:, 16:48].shape)))  # rows kept
    for maps, bad in ((true, False), (np.ascontiguousarray(true[:, ::-1]), True)):
        for method in ("sense", "l1_wavelet"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = reconstruct(sim.kspace * mask, mask, maps=maps, method=method, lam=1e-3, progress=False)
            fired = [w.message for w in caught if isinstance(w.message, am.BelowZeroFilledWarning)
                     and w.message.reason == "maps"]
            assert bool(fired) == bad, (method, res.extra["map_misfit"])
            assert (res.extra["map_misfit"] > 10) == bad and res.extra["map_misfit"] > 0.7, res.extra["map_misfit"]
            assert (res.extra["map_unexplained"] > 1e-3) == bad, res.extra["map_unexplained"]
            if not bad:
                assert res.extra["map_misfit"] < 1.5, res.extra["map_misfit"]
    res = reconstruct(sim.kspace * mask, mask, maps=true, method="zero_filled", progress=False)
    assert "map_misfit" not in res.extra
    # without noise every map error is many times the noise: the share of the data decides (no warning)
    clean = simulate_coil_data(blobs(2, 32, seed=0), num_coils=8, oversample=2, seed=0).kspace * mask
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = reconstruct(clean, mask, method="sense", lam=1e-3, progress=False)
    assert res.extra["map_misfit"] > 1e6 and res.extra["map_unexplained"] < MIN_MAP_UNEXPLAINED
    from ambient_mri.baselines import map_misfit  # no noise level, or fewer samples than unknowns: no verdict

    y, m2 = clean[..., 16:48, :], np.stack([mask, mask])
    assert map_misfit(y, true, m2, np.zeros(2)) is None
    sparse = np.zeros_like(m2)
    sparse[:, 14:18] = 1  # 8 coils x 4 columns < 32 unknowns per row
    assert map_misfit(y * sparse[:, None, None], true, sparse, np.full(2, 0.01)) is None


def test_input_forms_agree():
    """numpy or torch; (C,H,W) or (S,C,H,W); mask (W,), (1,W), (H,W) or (S,W); maps (C,H,W) or (S,C,H,W)."""
    sim, mask = small_scan(S=2)
    k, maps = sim.kspace, sim.maps
    ref = reconstruct(k, mask, maps=maps, method="zero_filled")
    assert ref.image.dtype == np.complex64 and ref.magnitude.dtype == np.float32
    variants = [
        (torch.from_numpy(k), torch.from_numpy(mask), torch.from_numpy(maps)),
        (k, mask[None], np.broadcast_to(maps, (2, *maps.shape))),
        (k, np.broadcast_to(mask, (32, 32)), maps),
        (k, np.stack([mask, mask]), maps),
        (k, mask.astype(bool), maps),
    ]
    for kk, mm, mp in variants:
        np.testing.assert_allclose(reconstruct(kk, mm, maps=mp, method="zero_filled").image, ref.image, atol=1e-6)
    single = reconstruct(k[1], mask, maps=maps, method="zero_filled")
    assert single.image.shape == (1, 32, 32)
    np.testing.assert_allclose(single.image[0], ref.image[1], atol=1e-6)
    a = reconstruct(torch.from_numpy(k), torch.from_numpy(mask), method="sense", lam=1e-3)
    b = reconstruct(k, mask, method="sense", lam=1e-3)
    np.testing.assert_allclose(a.image, b.image, atol=1e-5)
    # values off the mask are ignored (zeros are enforced)
    garbage = k + (1 - mask) * np.ones_like(k)
    np.testing.assert_allclose(reconstruct(garbage, mask, maps=maps, method="zero_filled").image, ref.image,
                               atol=1e-6)


def test_per_slice_masks():
    sim, mask = small_scan(S=2)
    m2 = kspace_mask("equispaced", (32, 32), 2, 0.25, seed=0)[0]
    both = reconstruct(sim.kspace, np.stack([mask, m2]), maps=sim.maps, method="zero_filled")
    one = reconstruct(sim.kspace[1], m2, maps=sim.maps, method="zero_filled")
    np.testing.assert_allclose(both.image[1], one.image[0], atol=1e-6)
    H = sim.kspace.shape[-2]
    per_slice_2d = np.stack([np.broadcast_to(mask, (H, 32)), np.broadcast_to(m2, (H, 32))])   # (S, H, W)
    np.testing.assert_array_equal(reconstruct(sim.kspace, per_slice_2d, maps=sim.maps, method="zero_filled").image,
                                  both.image)
    per_slice_2d = per_slice_2d.copy()
    per_slice_2d[1, 0, :] = 1 - per_slice_2d[1, 0, :]
    with pytest.raises(am.AmbientMRIError, match="varies along the readout"):
        reconstruct(sim.kspace, per_slice_2d, maps=sim.maps, method="zero_filled")


def test_columns_marked_acquired_that_hold_no_data_are_not_solved_as_measured_zeros():
    """A mask wider than the acquisition (23 columns of 36 exactly zero in every coil) cost CG-SENSE 4 dB and
    L1-wavelet 6 dB, unwarned: the solver forced the image's k-space to zero there. Zero slices or coils gave a
    numpy error, or blamed the ACS lines."""
    sim, mask = small_scan(S=2)
    k = sim.kspace * mask
    wider = mask.copy()
    wider[1::2] = 1                                   # half of the columns, with no data in them
    dead = int(((wider != 0) & (mask == 0)).sum())
    ref = reconstruct(k, mask, maps=sim.maps, method="sense", lam=1e-3)
    with pytest.warns(UserWarning, match=rf"marks {2 * dead} column\(s\) as acquired whose k-space is exactly "
                                         r"zero in every coil and row \(2 of 2 slice"):
        got = reconstruct(k, wider, maps=sim.maps, method="sense", lam=1e-3)
    np.testing.assert_allclose(got.image, ref.image, atol=1e-6)
    assert got.extra["acquired_columns"] == [int(mask.sum())] * 2  # what reconstruct_file records as R
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reconstruct(k, mask, maps=sim.maps, method="sense", lam=1e-3)
    assert not [w for w in caught if "exactly zero" in str(w.message)]  # the true mask: no warning
    for empty in (k[:0], k[:, :0]):
        with pytest.raises(AmbientMRIError, match=r"kspace of shape .* is empty"):
            reconstruct(empty, mask, method="zero_filled")
    dark = k.copy()
    dark[1] = 0                                       # an all-zero slice is named as such, not emptied silently
    with pytest.raises(AmbientMRIError, match="slice 1: the calibration .ACS. columns are all zero"):
        reconstruct(dark, wider, method="sense")
    with pytest.warns(UserWarning, match="exactly zero"), \
            pytest.raises(AmbientMRIError, match="slice 0: the columns the mask marks as acquired hold no data"):
        reconstruct(k, (wider - mask)[None] * np.ones((2, 1)), maps=sim.maps, method="sense")  # no mask column has data


def test_masks_with_as_many_rows_as_slices_are_never_read_one_way_silently():
    """With S == H a non-Cartesian (H, W) mask used to become one column mask per slice, and (1, H, W) or
    (1, 1, H, W) masks likewise: now (1, [1,] H, W) is one mask for every slice and a plain (H, W) is refused."""
    sim, mask = small_scan(S=1)
    H, W = sim.kspace.shape[-2:]
    k = np.repeat(sim.kspace, H, axis=0)                              # S == H slices
    rows = np.stack([kspace_mask("equispaced", (H, W), 2, 0.25, seed=0)[0]] * (H // 2)
                    + [np.asarray(mask).reshape(W)] * (H - H // 2))   # rows differ
    with pytest.raises(am.AmbientMRIError, match=f"ambiguous.*give per-slice column masks as \\({H}, 1, W\\)"):
        reconstruct(k, rows, maps=sim.maps, method="zero_filled")
    per_slice = reconstruct(k, rows[:, None], maps=sim.maps, method="zero_filled").image
    assert not np.allclose(per_slice[0], per_slice[-1])
    for shared in (rows[None], rows[None, None]):                      # one (H, W) mask: varies along rows
        with pytest.raises(am.AmbientMRIError, match="varies along the readout"):
            reconstruct(k, shared, maps=sim.maps, method="zero_filled")
    column = np.broadcast_to(np.asarray(mask).reshape(1, W), (H, W))
    same = reconstruct(k, column[None, None], maps=sim.maps, method="zero_filled").image
    np.testing.assert_array_equal(same, reconstruct(k, np.asarray(mask).reshape(W), maps=sim.maps,
                                                    method="zero_filled").image)


# ----------------------------------------------------------------------------------------------------------
# Diffusion methods with a tiny trained model
# ----------------------------------------------------------------------------------------------------------


def test_a_diverged_reconstruction_is_an_error_not_a_result(demo):
    """Maps alike in every coil cannot unalias: one_step returned a finite image 1e9 times the data's peak, which
    reconstruct_file would have written as a result."""
    k, mask, model = demo["kspace"], demo["mask"], demo["model"]
    flat = np.ones((k.shape[1], 32, k.shape[-1]), np.complex64) / 2
    with pytest.raises(am.AmbientMRIError, match="one_step: the reconstruction diverged .*times the zero-filled"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reconstruct(k, mask, model=model, maps=flat, method="one_step", device="cpu", progress=False)
    # the check itself: a bounded image passes, a peak over the limit or a NaN does not
    from ambient_mri.recon import MAX_PEAK_OVER_ZERO_FILLED, check_bounded

    y = am.fft2c(np.ones((1, 2, 8, 8), np.complex64))
    maps = np.full((1, 2, 8, 8), np.sqrt(0.5), np.complex64)
    zf = np.sqrt(2.0)              # the maps' combination of two coil images of constant 1
    check_bounded(np.full((1, 8, 8), 0.9 * MAX_PEAK_OVER_ZERO_FILLED * zf, np.complex64), y, maps, "x")
    for bad in (1.1 * MAX_PEAK_OVER_ZERO_FILLED * zf, np.nan):
        with pytest.raises(am.AmbientMRIError, match="x: the reconstruction diverged"):
            check_bounded(np.full((1, 8, 8), bad, np.complex64), y, maps, "x")


def test_the_divergence_check_does_not_depend_on_the_scale_of_given_maps():
    """Checked against the zero-filled RSS, maps given in another scale (a prescan in raw units) made legitimate
    results look diverged, even zero_filled's; an empty slice gave NaN with a message about the maps."""
    sim, mask = small_scan(S=2)
    for a in (150.0, 0.005):
        for method, opts in (("zero_filled", {}), ("sense", {"lam": 1e-6}), ("l1_wavelet", {})):
            r = reconstruct(sim.kspace, mask, maps=sim.maps * a, method=method, **opts)
            assert np.isfinite(r.image).all()
    k = np.array(sim.kspace)
    k[1] = 0
    with pytest.raises(am.AmbientMRIError, match="slice 1: intensity scale from the ACS lines is 0"):
        reconstruct(k, mask, maps=sim.maps, method="sense")


def test_the_device_is_checked_for_every_method():
    sim, mask = small_scan(S=1)
    for device, msg in (("bogus", "device 'bogus' is not a device"), ("cuda:99", "device is 'cuda:99' but no CUDA|"
                                                                                  "'cuda:99': this machine has")):
        with pytest.raises(am.AmbientMRIError, match=msg):
            reconstruct(sim.kspace, mask, maps=sim.maps, method="zero_filled", device=device)


@pytest.mark.parametrize("method", DIFFUSION)
def test_diffusion_methods_shapes_nfe_determinism(demo, method):
    k, mask, model = demo["kspace"], demo["mask"], demo["model"]
    steps = None if method == "one_step" else 4
    a = reconstruct(k, mask, model=model, method=method, steps=steps, seed=3, device="cpu", progress=False)
    assert a.image.shape == (2, 32, 32) and a.image.dtype == np.complex64     # rows cropped 64 -> 32
    assert a.magnitude.shape == (2, 32, 32) and a.magnitude.dtype == np.float32
    assert a.std is None and a.nfe == (steps or 1) and a.seconds > 0 and a.method == method
    assert np.isfinite(a.image).all()
    b = reconstruct(torch.from_numpy(k), torch.from_numpy(mask), model=model, method=method, steps=steps, seed=3,
                    device="cpu", progress=False)
    np.testing.assert_array_equal(a.image, b.image)
    c = reconstruct(k, mask, model=model, method=method, steps=steps, seed=4, device="cpu", progress=False)
    assert np.array_equal(a.image, c.image) == (method == "one_step")
    if method == "one_step":  # one evaluation of D: several samples would be copies, so they are refused
        with pytest.raises(am.AmbientMRIError, match="'one_step' is deterministic"):
            reconstruct(k, mask, model=model, method=method, num_samples=2, device="cpu", progress=False)
        return
    s = reconstruct(k, mask, model=model, method=method, steps=steps, seed=3, num_samples=2, batch_size=2,
                    device="cpu", progress=False)
    assert s.std.shape == (2, 32, 32) and s.std.dtype == np.float32 and s.nfe == 2 * steps  # both samples count
    assert (s.std > 0).any()


def test_fast_defaults_depend_on_the_kind_of_prior(demo, monkeypatch):
    """FAST_DEFAULTS: 20 CG steps between denoiser calls and deterministic DDIM steps for an ambient model, 10
    and η 0.5 for a clean one, the data weight ρ 10 for both (chosen on the demo calibration volume,
    benchmarks/tune_fast.py); explicit options win."""
    import ambient_mri.sampling.posterior as sampling  # where the policy looks samplers up
    from ambient_mri.model import Denoiser
    from ambient_mri.training.recipe import load_recipe
    from ambient_mri.training.trainer import network_config
    from helpers import TINY_NET

    seen = []
    real = sampling.fast_dc
    monkeypatch.setattr(sampling, "fast_dc", lambda *a, **kw: seen.append((kw["cg_iters"], kw["rho"], kw["eta"]))
                        or real(*a, **kw))
    clean = Denoiser(network_config(load_recipe({"network": TINY_NET}), 2, 1),
                     {"operator": "multicoil", "ambient": False, "cond": ["ones"], "image_shape": [32, 32]}).eval()
    k, mask = demo["kspace"][:1], demo["mask"]
    for model, kw in ((demo["model"], {}), (clean, {}), (clean, {"cg_iters": 7, "rho": 0.0})):
        res = reconstruct(k, mask, model=model, method="fast", steps=2, progress=False, **kw)
        assert np.isfinite(res.image).all() and res.nfe == 2
    assert seen == [(20, 10.0, 0.0), (10, 10.0, 0.5), (7, 0.0, 0.5)]


def test_fast_weighs_the_data_by_the_scans_own_noise_level(demo, monkeypatch):
    """The fast sampler's σ_n comes from the scan (the demo data carry complex noise of std 0.005 per k-space
    sample), is recorded in ``extra`` and reaches the sampler per slice in the normalised scale; a given
    ``noise_std`` (input scale) replaces the estimate."""
    import ambient_mri.sampling.posterior as sampling  # where the policy looks samplers up

    seen = []
    real = sampling.fast_dc
    monkeypatch.setattr(sampling, "fast_dc", lambda *a, **kw: seen.append(kw["noise_std"]) or real(*a, **kw))
    k = demo["kspace"]
    res = reconstruct(k, demo["mask"], model=demo["model"], method="fast", steps=2, num_samples=2, progress=False)
    est = np.asarray(res.extra["noise_std"])
    assert est.shape == (2,) and np.allclose(est, 0.005, rtol=0.1), est
    scale = np.asarray(res.extra["scale"])
    np.testing.assert_allclose(seen[0].numpy(), np.repeat(est / scale, 2), rtol=1e-5)  # slice-major, 2 samples each
    res = reconstruct(k, demo["mask"], model=demo["model"], method="fast", steps=2, noise_std=0.02, progress=False)
    assert res.extra["noise_std"] == [0.02, 0.02]
    np.testing.assert_allclose(seen[1].numpy(), 0.02 / scale, rtol=1e-5)
    for bad in ({"noise_std": -0.1}, {"noise_std": float("nan")}, {"rho": -1.0}, {"rho": "high"}):
        with pytest.raises(AmbientMRIError, match=f"{next(iter(bad))} must be (a finite number|>= 0)"):
            reconstruct(k, demo["mask"], model=demo["model"], method="fast", steps=2, progress=False, **bad)


def test_fast_regularises_its_cg_steps_like_cg_sense(demo, monkeypatch):
    """fast's λ floor is the Tikhonov weight the scan's own held-out non-ACS lines choose (on the 12-coil EPI
    subject with 6 ACS lines, fast with λ = 0 fell below zero-filled at R = 6 and 8, docs/reconstruction.md); it is
    recorded in ``extra`` and reaches the sampler; a given ``lam`` wins."""
    import ambient_mri.sampling.posterior as sampling  # where the policy looks samplers up

    seen = []
    real = sampling.fast_dc
    monkeypatch.setattr(sampling, "fast_dc", lambda *a, **kw: seen.append(kw["lam"]) or real(*a, **kw))
    from ambient_mri.baselines import SENSE_GRID, tolerance_pick

    k = demo["kspace"]
    mask = kspace_mask("random", k.shape[-2:], 2, 0.25, seed=0)[0]  # lines outside the ACS block to hold out
    sense = reconstruct(k * mask, mask, method="sense", progress=False).extra
    floor = SENSE_GRID[tolerance_pick(sense["validation_error"])]  # the non-ACS lines' rule, on CG-SENSE's folds
    res = reconstruct(k * mask, mask, model=demo["model"], method="fast", steps=2, progress=False)
    assert res.extra["lam"] == floor > 0 and seen == [floor]
    res = reconstruct(k, mask, model=demo["model"], method="fast", steps=2, lam=0.0, progress=False)
    assert res.extra["lam"] == 0.0 and seen[-1] == 0.0


def test_model_file_path_and_defaults(demo):
    res = reconstruct(demo["kspace"][:1], demo["mask"], model=demo["run"] / "model.pt", method="one_step",
                      progress=False)
    assert res.nfe == 1 and res.image.shape == (1, 32, 32)


def test_fast_sampler_is_data_consistent(demo):
    """The fast sampler ends with CG on the normal equations: on the acquired lines its k-space matches the data
    about as well as CG-SENSE's, far better than a DPS trajectory of a few steps does."""
    k, mask, model = demo["kspace"], demo["mask"], demo["model"]
    kk, mm = check_inputs(k, mask)
    ks, maps, _ = prepare_scan(kk, mm, 32)          # the same (deterministic) crop and maps reconstruct uses

    def residual(img):
        pred = fft2c(maps * img[:, None]) * mm[:, None, None, :]
        return np.linalg.norm(pred - ks) / np.linalg.norm(ks)

    fast = residual(reconstruct(k, mask, model=model, method="fast", steps=8, progress=False).image)
    sense = residual(reconstruct(k, mask, method="sense").image)
    dps = residual(reconstruct(k, mask, model=model, method="dps", steps=8, progress=False).image)
    assert fast < 2 * sense and fast < 0.05 and dps > 5 * fast, (fast, sense, dps)


def test_fast_sampler_a_tilde_is_inside_the_scan_mask(demo, monkeypatch):
    """fast and A-DPS: Ã = every acquired line by default; with a_tilde="scan" the model's further corruption of
    the scan's mask (only measured lines, ACS kept); with a_tilde="training" (the anchor's A-DPS) a fresh
    training-type Ã that does not depend on the scan."""
    import ambient_mri.sampling.posterior as sampling  # where the policy looks samplers up
    from ambient_mri.masks import acs_columns as _acs_columns

    seen = []
    real = sampling.Prior.__init__

    def spy(self, model, A_tilde=None, mask_tilde=None):
        seen.append(mask_tilde.reshape(mask_tilde.shape[0], -1).clone())
        real(self, model, A_tilde, mask_tilde)

    monkeypatch.setattr(sampling.Prior, "__init__", spy)
    k, model = demo["kspace"], demo["model"]
    assert model.info["further"]["delta"] > 0
    masks = [kspace_mask("equispaced", k.shape[-2:], 2, 0.25, seed=0)[0],  # 12 non-ACS lines for δ to drop
             kspace_mask("equispaced", k.shape[-2:], 3, 0.25, seed=0)[0]]
    dropped = []
    for mask in masks:
        seen.clear()
        reconstruct(k, mask, model=model, method="fast", steps=2, seed=1, progress=False)
        reconstruct(k, mask, model=model, method="fast", steps=2, seed=1, a_tilde="scan", progress=False)
        default, mt = seen
        scan = torch.from_numpy(mask.reshape(-1))
        assert torch.equal(default, scan.expand_as(default))                # every acquired line, nothing else
        assert mt.shape == (2, scan.shape[0]) and (mt <= scan).all()
        acs = torch.from_numpy(_acs_columns(mask))
        assert (mt[:, acs] == 1).all()                                    # ACS lines are never dropped
        dropped.append((int((scan.sum() - mt.sum(1)).sum()), int(mt[:, ~acs].sum())))
    assert dropped[0][0] > 0 and dropped[0][1] > 0     # other scan lines: some dropped, some kept (δ = 0.2)
    adps, anchor, scan_type = [], [], []
    for mask in masks:  # A-DPS: Ã = the scan's own lines by default; the anchor's fresh training-type Ã on request
        seen.clear()
        reconstruct(k, mask, model=model, method="adps", steps=2, seed=1, progress=False)
        reconstruct(k, mask, model=model, method="adps", steps=2, seed=1, a_tilde="training", progress=False)
        reconstruct(k, mask, model=model, method="adps", steps=2, seed=1, a_tilde="scan", progress=False)
        adps.append(seen[0])
        anchor.append(seen[1])
        scan = torch.from_numpy(mask.reshape(-1))
        assert torch.equal(seen[0], scan.expand_as(seen[0]))                 # every acquired line, nothing else
        assert (seen[2] <= scan).all()                                       # "scan": the further corruption
        scan_type.append(int(seen[0].sum() - seen[2].sum()))
    assert scan_type[0] > 0                                   # drops some of the first mask's lines (as fast)
    assert not torch.equal(adps[0], adps[1]) and torch.equal(anchor[0], anchor[1])
    R = model.record.acquisition.acceleration                       # of the training kind: about W / R lines
    W = anchor[0].shape[-1]                                         # before the further corruption drops some
    assert 0.5 * W / R < float(anchor[0].sum(1).mean()) <= W / R + 2
    with pytest.raises(AmbientMRIError, match="a_tilde"):
        reconstruct(k, masks[0], model=model, method="fast", steps=2, a_tilde="bogus", progress=False)


def test_ambient_mri_samplers_stop_at_the_ambient_sigma_floor(demo, monkeypatch):
    import ambient_mri.sampling.posterior as sampling  # where the policy looks samplers up
    from ambient_mri.sampling import ambient_sigma_floor
    from ambient_mri.sampling.policy import ADPS_AMBIENT_SIGMA_MIN

    got = []
    for name in ("fast_dc", "adps"):
        orig = getattr(sampling, name)
        monkeypatch.setattr(sampling, name, lambda *a, _o=orig, **kw: (got.append(kw["sigma_min"]), _o(*a, **kw))[1])
    k, mask, model = demo["kspace"], demo["mask"], demo["model"]
    floor = ambient_sigma_floor(model.info)
    assert floor == pytest.approx(np.exp(model.info["recipe"]["training"]["P_mean"]))
    reconstruct(k, mask, model=model, method="fast", steps=2, progress=False)
    reconstruct(k, mask, model=model, method="adps", steps=2, progress=False)
    reconstruct(k, mask, model=model, method="fast", steps=2, sigma_min=0.01, progress=False)
    # A-DPS with an ambient model: its own calibrated σ_min (the anchor's 0.004 lets D return its input)
    assert got == [pytest.approx(floor), ADPS_AMBIENT_SIGMA_MIN, 0.01]
    assert 0.004 < ADPS_AMBIENT_SIGMA_MIN < floor


def test_clean_prior_sees_what_it_was_trained_on_and_output_lies_in_the_maps_range(demo, monkeypatch):
    """A clean (oracle) multi-coil model is trained on A^H A (x0 + σ n) with a full mask, so samplers must feed
    it S^H S x, not x; and no sampler may leave content where the coil maps are zero (nothing constrains it)."""
    import ambient_mri.sampling.posterior as sampling  # where the policy looks samplers up
    from ambient_mri.training.trainer import train

    paths = demo["paths"]
    run = train(RECIPE, [f"data.path={paths['full_train']}", f"output={demo['run'].parent}", "name=oracle",
                         "corruption.ambient=false", "corruption.cond=[ones]", "steps=5", "batch_size=4",
                         "network.model_channels=8", "network.channel_mult=[1,2]", "device=cpu",
                         "checkpoint_every=5", "log_every=5"], progress=False)
    oracle = am.load_model(run / "model.pt")
    assert not oracle.info["ambient"]
    k, mask = demo["kspace"], demo["mask"]
    kk, mm = check_inputs(k, mask)
    _, maps, _ = prepare_scan(kk, mm, 32)
    maps[..., :6] = 0                                      # a band the coils do not see
    seen = []
    real = sampling.Prior.__init__

    def spy(self, model, A_tilde=None, mask_tilde=None):
        seen.append((A_tilde, mask_tilde))
        real(self, model, A_tilde, mask_tilde)

    monkeypatch.setattr(sampling.Prior, "__init__", spy)
    for model, method in ((oracle, "fast"), (oracle, "dps"), (demo["model"], "adps"), (demo["model"], "one_step")):
        seen.clear()
        res = reconstruct(k, mask, model=model, maps=maps, method=method, steps=None if method == "one_step" else 2,
                          seed=0, progress=False)
        assert np.abs(res.image[..., :6]).max() == 0 and np.abs(res.image[..., 6:]).max() > 0, method
        if model is oracle:
            (A_t, m_t), = seen
            assert A_t is not None and bool((m_t == 1).all())  # the full-mask normal operator


def test_reconstruct_file_uses_the_files_own_mask(tmp_path, demo):
    """A test file (it has a mask): its own mask is used; asking for retrospective undersampling is an error."""
    k = demo["kspace"]
    mask = demo["mask"]
    src = write_fastmri(tmp_path / "test.h5", k, mask=mask, recon_size=(32, 32))
    out = reconstruct_file(src, tmp_path / "out" / "test.h5", method="zero_filled")
    with h5py.File(out, "r") as f:
        rec = f["reconstruction"][()]
        assert rec.shape == (2, 32, 32) and f.attrs["method"] == "zero_filled"
        assert f.attrs["acceleration"] == pytest.approx(32 / mask.sum())
    np.testing.assert_allclose(rec, reconstruct(k, mask, method="zero_filled").magnitude, rtol=1e-5, atol=1e-7)
    with pytest.raises(DataFileError, match="already undersampled"):
        reconstruct_file(src, tmp_path / "out2.h5", method="zero_filled", acceleration=4)


# ----------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------


def test_bad_input_errors(demo, tmp_path):
    sim, mask = small_scan(S=1)
    k, maps = sim.kspace, sim.maps
    model = demo["model"]
    cases = [
        (lambda: reconstruct(k, mask[:-1], maps=maps, method="zero_filled"), "width"),
        (lambda: reconstruct(k, np.ones((3, 32)), maps=maps, method="zero_filled"), "not \\(W,\\)"),
        (lambda: reconstruct(k.real, mask, maps=maps, method="zero_filled"), "complex"),
        (lambda: reconstruct(k[0, 0], mask, maps=maps, method="zero_filled"), "shape"),
        (lambda: reconstruct(np.where(np.arange(32) == 5, np.nan, k).astype(np.complex64), mask,
                             method="sense"), "NaN"),
        (lambda: reconstruct(k, np.zeros(32), maps=maps, method="zero_filled"), "nothing was acquired"),
        (lambda: reconstruct(k, np.r_[np.ones(8), np.zeros(24)].astype(np.float32), method="sense"),
         "ACS|calibration"),
        (lambda: reconstruct(k, kspace_mask("random", (32, 32), 4, 0.1, seed=1)[0], method="sense"), "ACS"),
        (lambda: reconstruct(k, np.tril(np.ones((32, 32))), maps=maps, method="zero_filled"), "readout"),
        (lambda: reconstruct(k, mask, maps=maps[:, :16], method="zero_filled"), "maps"),
        (lambda: reconstruct(k, mask, maps=maps, method="magic"), "unknown method"),
        (lambda: reconstruct(k, mask, maps=maps, method="fast"), "needs a model"),
        (lambda: reconstruct(k, mask, model=tmp_path / "none.pt", method="fast"), "no such file"),
        (lambda: reconstruct(k, mask, model=torch.nn.Identity(), method="fast"), "loaded ambient_mri model"),
        (lambda: reconstruct(np.zeros((1, 4, 16, 32), np.complex64) + 1, np.ones(32), model=model,
                             method="fast"), "trained on images of 32 rows"),
        (lambda: reconstruct(k, mask, model=model, method="fast", steps=0), "steps"),
        (lambda: reconstruct(k, mask, model=model, method="fast", num_samples=0), "num_samples"),
        (lambda: reconstruct(k, mask, maps=maps, method="sense", zeta=1.0), "zeta do not apply to method 'sense'"),
        (lambda: reconstruct(k, mask, model=model, method="adps", cg_iters=3), "cg_iters .*'adps'.*zeta"),
        (lambda: reconstruct(k, mask, maps=maps, method="zero_filled", lam=1), "options: none"),
    ]
    for fn, pattern in cases:
        with pytest.raises(AmbientMRIError, match=pattern):
            fn()


def test_model_for_another_operator_is_refused(demo):
    model = am.load_model(demo["run"] / "model.pt")
    model.record = dataclasses.replace(model.record, operator="singlecoil")
    with pytest.raises(AmbientMRIError, match="singlecoil"):
        reconstruct(demo["kspace"], demo["mask"], model=model, method="one_step")


def test_reconstruct_file_errors(tmp_path):
    make_fastmri_volume(tmp_path / "full.h5", blobs(1, 32), num_coils=4, oversample=1)
    with pytest.raises(DataFileError, match="acceleration"):
        reconstruct_file(tmp_path / "full.h5", tmp_path / "o.h5", method="zero_filled")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataFileError, match="cannot be written"):
        reconstruct_file(tmp_path / "full.h5", tmp_path / "file" / "o.h5", method="zero_filled", acceleration=2,
                         center_fraction=0.25)
    make_fastmri_volume(tmp_path / "single.h5", blobs(1, 32), num_coils=None, oversample=1)
    with pytest.raises(DataFileError, match="single-coil"):
        reconstruct_file(tmp_path / "single.h5", tmp_path / "o.h5", method="zero_filled", acceleration=2)


def test_model_with_input_cg_runs_every_sampler(tmp_path):
    """A model trained with network.input_cg gets its operator from every sampler path (Ã for A-DPS / fast / ALD,
    the scan's A for one-step), also through the DPS gradient, and gives finite images of the right shape."""
    from ambient_mri.training.trainer import train
    from data_tools.demo import build_demo

    paths = build_demo(tmp_path / "data", size=32, coils=4, slices=12)
    run = train(RECIPE, [f"data.path={paths['r4_train']}", f"output={tmp_path / 'runs'}", "steps=4", "batch_size=4",
                         "network.model_channels=8", "network.channel_mult=[1,2]", "network.input_cg=3",
                         "device=cpu", "checkpoint_every=4", "log_every=2"], progress=False)
    model = am.load_model(run / "model.pt")
    assert model.input_cg == 3
    with h5py.File(sorted(Path(paths["raw_val"]).glob("*.h5"))[0], "r") as f:
        k = f["kspace"][:1]
    mask = kspace_mask("random", k.shape[-2:], 4, 0.25, seed=0)[0]
    for method in DIFFUSION:
        res = reconstruct(k, mask, model=model, method=method, steps=None if method == "one_step" else 3,
                          progress=False)
        assert res.image.shape == (1, 32, 32) and np.isfinite(res.image).all(), method


def test_coil_compression_at_reconstruction():
    """coils=K compresses each slice to K virtual coils from its ACS columns (prepare's SVD): on 12 simulated coils
    CG-SENSE loses little at K = 4 and stays far above zero-filled; bad K and maps with K are refused."""
    sim = simulate_coil_data(blobs(2, 32, seed=4), num_coils=12, oversample=2, noise_std=0.002, seed=4)
    mask = kspace_mask("random", sim.kspace.shape[-2:], 4, 0.25, seed=7)[0]
    k = sim.kspace * mask
    target = rss_target(sim.kspace, (32, 32))
    full = evaluate_volume(target, reconstruct(k, mask, method="sense", progress=False).magnitude)["PSNR"]
    four = reconstruct(k, mask, method="sense", coils=4, progress=False)
    zf = evaluate_volume(target, reconstruct(k, mask, method="zero_filled", progress=False).magnitude)["PSNR"]
    assert four.image.shape == (2, 32, 32) and four.extra["coils"] == 4
    psnr4 = evaluate_volume(target, four.magnitude)["PSNR"]
    assert psnr4 > full - 0.5 and psnr4 > zf + 1, (full, psnr4, zf)
    for bad in (0, 13, 2.5):
        with pytest.raises(AmbientMRIError, match="coils must be an integer in \\[1, 12\\]"):
            reconstruct(k, mask, method="zero_filled", coils=bad, progress=False)
    with pytest.raises(AmbientMRIError, match="give maps or coils, not both"):
        reconstruct(k, mask, method="sense", maps=sim.maps, coils=4, progress=False)


def test_a_model_reconstructs_other_widths_with_a_warning(demo):
    """The network is convolutional: a model trained on 32 columns reconstructs a 40-column scan (same readout
    rows), with a warning that this width was not in its training data; the magnitude has the scan's width."""
    img = np.pad(blobs(1, 32, seed=5), ((0, 0), (0, 0), (4, 4)))
    sim = simulate_coil_data(img, num_coils=4, oversample=2, noise_std=0.005, seed=5)
    mask = kspace_mask("random", sim.kspace.shape[-2:], 4, 0.25, seed=3)[0]
    assert demo["model"].record.widths == (32,)
    with pytest.warns(UserWarning, match=r"trained on k-space widths \[32\], this scan has 40 columns"):
        res = reconstruct(sim.kspace * mask, mask, model=demo["model"], method="fast", steps=2, progress=False)
    target = rss_target(sim.kspace, (32, 40))
    zf = reconstruct(sim.kspace * mask, mask, method="zero_filled", progress=False)
    assert res.magnitude.shape == (1, 32, 40) and np.isfinite(res.magnitude).all()
    assert evaluate_volume(target, res.magnitude)["PSNR"] > evaluate_volume(target, zf.magnitude)["PSNR"] - 3


def test_lambda_search_row_subset_is_the_same_problem_on_fewer_rows():
    """With a column mask every image row is its own 1-D problem, so CG-SENSE on a subset of rows gives exactly
    those rows of the full solution (the λ search solves 128 rows instead of all)."""
    from ambient_mri.baselines import _solve_batch, row_subset

    sim = simulate_coil_data(blobs(1, 96), num_coils=6, oversample=1, seed=0)
    m = kspace_mask("random", (96, 96), 4, 0.08, seed=1)[0][None]
    y, maps = (sim.kspace * m[0]).astype(np.complex64), sim.maps[None].astype(np.complex64)
    full = _solve_batch("sense", y, maps, m, 1e-3, 300)
    ys, ms = row_subset(y, maps, 24)
    assert ys.shape == (1, 6, 24, 96) and ms.shape == ys.shape
    sub = _solve_batch("sense", ys, ms, m, 1e-3, 300)
    covered = np.flatnonzero((np.abs(maps) ** 2).sum((0, 1, 3)) > 0)
    rows = covered[np.linspace(0, covered.size - 1, 24).round().astype(int)]
    assert np.abs(full[:, rows] - sub).max() < 2e-3 * np.abs(full).max()
    assert np.abs(full[:, rows[:-1] + 1] - sub[:, :-1]).max() > 0.05 * np.abs(full).max()  # other rows differ
    same_y, same_maps = row_subset(y, maps, 96)
    assert same_y is y and same_maps is maps


def test_heldout_errors_score_only_lines_the_solver_did_not_see():
    """baselines.heldout_errors hides acquired non-ACS lines from each solver in turn and scores its prediction of
    them: a solver that returns the true image predicts them up to rounding, one that returns zeros scores exactly
    their energy ("zero"), and no solver is ever shown a held-out line or an ACS line held out."""
    from ambient_mri.baselines import heldout_errors
    from ambient_mri.masks import acs_columns

    sim = simulate_coil_data(blobs(2, 32), num_coils=4, oversample=1, seed=0)
    m = np.stack([kspace_mask("random", (32, 32), 2, 0.25, seed=s)[0] for s in (0, 1)])
    y = (sim.kspace * m[:, None, None, :]).astype(np.complex64)
    maps = np.repeat(sim.maps[None], 2, axis=0).astype(np.complex64)
    truth = sim.image.astype(np.complex64)
    seen = []

    def oracle(yk, mp, keep):
        seen.append(keep.copy())
        assert not (np.abs(yk) * (1 - keep)[:, None, None, :]).any()   # held-out lines zeroed
        return truth, mp

    err = heldout_errors({"truth": oracle, "nothing": lambda yk, mp, keep: (np.zeros_like(truth), mp)}, y, maps, m,
                         np.arange(2))
    seen_first = [k.copy() for k in seen]
    assert set(err) == {"truth", "nothing", "zero"} and err["zero"].shape == (2,) and (err["zero"] > 0).all()
    np.testing.assert_allclose(err["nothing"], err["zero"], rtol=1e-6)
    assert (err["truth"] < 1e-8 * err["zero"]).all(), err
    assert len(seen) == 2                                                  # REFINE_FOLDS folds
    for j in range(2):
        hidden = [np.flatnonzero((m[j] > 0) & (keep[j] == 0)) for keep in seen]
        assert all(h.size > 0 for h in hidden) and not np.intersect1d(hidden[0], hidden[1]).size
        assert not acs_columns(m[j])[np.concatenate(hidden)].any()
        # "zero" is the energy of exactly the hidden lines, not of the kept or of all acquired ones
        energy = sum(float((np.abs(y[j][..., h]) ** 2).sum()) for h in hidden)
        np.testing.assert_allclose(err["zero"][j], energy, rtol=1e-5)
    seen.clear()
    heldout_errors({"truth": oracle}, y, maps, m, np.arange(2), seed=1)
    assert any((a != b).any() for a, b in zip(seen, seen_first)), "the seed does not change the folds"


def test_reconstruct_file_never_counts_zero_padded_columns_as_acquired(tmp_path, monkeypatch):
    """Official files can carry zero-padded k-space columns (the header's padding_left/right): a retrospective
    mask must not claim them, exactly as prepare's masks do not."""
    import ambient_mri.recon as recon

    make_fastmri_volume(tmp_path / "pad.h5", blobs(1, 32), num_coils=4, oversample=1, pad_columns=4)
    vol = am.data.read_fastmri(tmp_path / "pad.h5")
    keep = vol.padding_mask()
    assert keep.tolist() == [0.0] * 4 + [1.0] * 24 + [0.0] * 4
    seen = []
    real = recon.reconstruct
    monkeypatch.setattr(recon, "reconstruct", lambda k, m, **kw: seen.append(np.asarray(m)) or real(k, m, **kw))
    reconstruct_file(tmp_path / "pad.h5", tmp_path / "out" / "pad.h5", acceleration=2, center_fraction=0.25,
                     method="zero_filled")
    (m,) = seen
    assert not m[:4].any() and not m[-4:].any() and m[4:-4].sum() >= 10
    import h5py  # a file's own mask on the padding alone was refused as "nothing was acquired" (an audit)

    with h5py.File(tmp_path / "pad.h5", "r+") as f:
        f["mask"] = 1 - keep
    with pytest.raises(am.DataFileError, match=r"every acquired column \(8\) lies in the k-space padding"):
        reconstruct_file(tmp_path / "pad.h5", tmp_path / "out2" / "pad.h5", method="zero_filled")
    from data_tools.prepare import prepare_fastmri  # the same words from prepare (it said "no acquired columns")

    (refused,) = prepare_fastmri(tmp_path / "pad.h5", tmp_path / "prep", progress=False).refused
    assert "every acquired column (8) lies in the k-space padding" in refused.reason, refused.reason


def test_learned_methods_use_the_refined_maps_and_warn_on_maps_that_do_not_fit(demo):
    """Diffusion methods get the same maps check as the linear ones: where ESPIRiT's maps leave the data unexplained
    (anatomy filling the field of view) the sampler runs with the refined maps (the same image as with those maps
    given), and maps given that do not explain the data are warned (fast fell 1-6 dB below zero-filled with
    ESPIRiT's maps on such scans, benchmarks/map_refinement.py)."""
    from test_coils import fov_filling

    from ambient_mri.coils import refine_maps

    sim, mask = fov_filling(32, 4, 2)
    k = sim.kspace * mask
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = reconstruct(k, mask, model=demo["model"], method="fast", steps=4, progress=False)
    assert auto.extra["maps_refined"] and auto.extra["map_misfit_espirit"] > 16 > auto.extra["map_misfit"]
    assert not [w for w in caught if getattr(w.message, "reason", None) == "maps"]
    kk, msk = check_inputs(k, mask)
    ks, esp, scales = prepare_scan(kk, msk, 32)
    y = ks / scales[:, None, None, None]
    refined = refine_maps(torch.from_numpy(y), torch.from_numpy(esp), torch.from_numpy(msk)).numpy()
    given = reconstruct(k, mask, model=demo["model"], maps=refined, method="fast", steps=4, progress=False)
    # the intensity scale comes from ESPIRiT's maps in one run and from the given ones in the other (5e-5 apart)
    np.testing.assert_allclose(given.image, auto.image, rtol=1e-3, atol=1e-4 * np.abs(auto.image).max())
    with pytest.warns(am.BelowZeroFilledWarning, match="maps do not explain"):
        reconstruct(k, mask, model=demo["model"], maps=esp, method="fast", steps=4, progress=False)


def test_learned_method_warns_when_no_row_can_check_the_maps(demo):
    """4 coils at R = 4 on anatomy filling the field of view: 4 x 8 acquired columns = the 32 unknowns of every
    row, so the maps have no misfit verdict; fast warns (reason "maps_unchecked"), the linear methods keep their ρ
    warning instead, and a scan whose rows can check the maps (R = 2) gets neither."""
    from test_coils import fov_filling

    for R, unchecked in ((4, True), (2, False)):
        sim, mask = fov_filling(32, 4, R)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = reconstruct(sim.kspace * mask, mask, model=demo["model"], method="fast", steps=4, progress=False)
        reasons = {getattr(w.message, "reason", None) for w in caught}
        assert ("maps_unchecked" in reasons) == unchecked, (R, reasons, res.extra.get("map_misfit"))
        assert (res.extra["map_misfit"] is None) == unchecked
        if unchecked:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                reconstruct(sim.kspace * mask, mask, method="sense", lam=1e-3, progress=False)
            reasons = {getattr(w.message, "reason", None) for w in caught}
            assert "underdetermined" in reasons and "maps_unchecked" not in reasons, reasons


def test_missing_energy_ratio_measures_what_a_prior_adds_to_the_missing_columns():
    """1 for an image whose missing columns follow the acquired ones' spectrum, 0 for zero-filled, large where the
    missing columns carry extra energy (noise a prior made up); None without columns to fit or to judge."""
    from ambient_mri.scan import MAX_MISSING_ENERGY, missing_energy_ratio, warn_if_prior_overfills

    W, H = 64, 32
    d = np.maximum(np.abs(np.arange(W) - W // 2), 0.5)
    rng = np.random.default_rng(0)
    phase = np.exp(2j * np.pi * rng.random((2, H, W)))
    spectrum = (d ** -1.5)[None, None, :] * phase                      # an exact power law in |k|
    mask = kspace_mask("random", (H, W), 4, 8 / W, seed=0)[0] != 0
    masks = np.broadcast_to(mask, (2, W))
    img = am.ifft2c(spectrum.astype(np.complex64))
    assert missing_energy_ratio(img, masks) == pytest.approx(1.0, rel=1e-3)
    assert missing_energy_ratio(am.ifft2c((spectrum * mask).astype(np.complex64)), masks) < 1e-9
    made_up = spectrum * (1 + 3 * ~mask)                                # 4x the amplitude where the mask lacks lines
    ratio = missing_energy_ratio(am.ifft2c(made_up.astype(np.complex64)), masks)
    assert ratio == pytest.approx(16.0, rel=1e-3) and ratio > MAX_MISSING_ENERGY
    with pytest.warns(am.BelowZeroFilledWarning, match="16.0x the energy the acquired lines predict") as w:
        warn_if_prior_overfills(round(ratio), "fast")
    assert w[0].message.reason == "prior_energy"
    assert missing_energy_ratio(img, np.ones((2, W), bool)) is None      # fully sampled: nothing to judge
    acs_only = np.zeros(W, bool)
    acs_only[W // 2 - 4: W // 2 + 4] = True
    assert missing_energy_ratio(img, np.broadcast_to(acs_only, (2, W))) is None  # nothing outside the ACS to fit
    one_distance = acs_only.copy()
    one_distance[[W // 2 - 10, W // 2 + 10]] = True                  # a fit through one distance is degenerate
    assert missing_energy_ratio(img, np.broadcast_to(one_distance, (2, W))) is None
    assert missing_energy_ratio(img[0], mask) == pytest.approx(1.0, rel=1e-3)   # one slice, one (W,) mask


def test_learned_methods_report_and_warn_on_the_energy_they_add(demo, monkeypatch):
    k = demo["kspace"]
    mask = kspace_mask("random", k.shape[-2:], 3, 0.1875, seed=0)[0]   # 6 ACS lines and 4 outside them
    res = reconstruct(k, mask, model=demo["model"], method="fast", steps=2, progress=False)
    assert res.extra["missing_energy"] > 0
    assert "missing_energy" not in reconstruct(k, mask, method="sense", progress=False).extra
    monkeypatch.setattr("ambient_mri.scan.MAX_MISSING_ENERGY", res.extra["missing_energy"] / 2)
    with pytest.warns(am.BelowZeroFilledWarning, match="fast: the image puts") as w:
        reconstruct(k, mask, model=demo["model"], method="fast", steps=2, progress=False)
    assert any(x.message.reason == "prior_energy" for x in w)
