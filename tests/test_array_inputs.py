"""Arrays as users hand them to the public API (an audit of the lower-level functions): big-endian arrays as h5py
returns them, object arrays, meta tensors, masks that are not 0/1, maps in another scale, k-space in any scale."""

import warnings

import numpy as np
import pytest
import torch

import ambient_mri as am
from ambient_mri.errors import AmbientMRIError
from data_tools.simulate import simulate_coil_data
from helpers import blobs


@pytest.fixture(scope="module")
def scan():
    sim = simulate_coil_data(blobs(2, 32, 0), num_coils=4, oversample=2, noise_std=0.005, seed=0)
    m = am.masks.kspace_mask("equispaced", sim.kspace.shape[-2:], 2, 0.25, seed=0)[0].astype(np.float32)  # (W,)
    return (sim.kspace * m).astype(np.complex64), m, sim


def test_big_endian_arrays_give_the_same_numbers_as_native_ones(scan):
    k, m, sim = scan
    maps = sim.maps.astype(np.complex64)
    A = am.MultiCoilMRI(maps[None], m)
    x = sim.image[0].astype(np.complex64)[None]
    ref = A(x)
    for op_in in (x.astype(">c8"), x[..., ::-1].copy()[..., ::-1]):
        np.testing.assert_array_equal(A(op_in), ref)
    np.testing.assert_array_equal(am.MultiCoilMRI(maps[None].astype(">c8"), m.astype(">f4"))(x), ref)
    np.testing.assert_array_equal(A.adjoint(ref.astype(">c8")), A.adjoint(ref))
    np.testing.assert_array_equal(am.operators.Identity()(x.astype(">c8")), x)
    k0 = k[0]
    np.testing.assert_allclose(am.coils.espirit(k0.astype(">c8")), am.coils.espirit(k0), atol=1e-6)
    imgs = np.abs(sim.image).astype(np.float32)
    s_big, i_big = am.metrics.nearest_neighbours(imgs.astype(">f4"), imgs.astype(">f4"))
    s_nat, i_nat = am.metrics.nearest_neighbours(imgs, imgs)
    assert np.array_equal(i_big, i_nat) and np.allclose(s_big, s_nat)


def test_adjointness_error_takes_numpy_and_names_a_wrong_shape(scan):
    _, m, sim = scan
    A = am.MultiCoilMRI(sim.maps.astype(np.complex64)[None], m)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 64, 32)) + 1j * rng.standard_normal((1, 64, 32))).astype(np.complex64)
    y = (rng.standard_normal((1, 4, 64, 32)) + 1j * rng.standard_normal((1, 4, 64, 32))).astype(np.complex64)
    assert am.adjointness_error(A, x, y) < 1e-5
    assert am.adjointness_error(A, x, y) == am.adjointness_error(A, torch.from_numpy(x), torch.from_numpy(y))
    with pytest.raises(AmbientMRIError, match=r"y of shape \(1, 3, 64, 32\) is not the shape of A x"):
        am.adjointness_error(A, x, y[:, :3])


def test_masks_that_are_not_zero_one_are_refused_where_they_mean_acquired_lines():
    m = am.masks.kspace_mask("equispaced", (64, 32), 2, 0.25, seed=0)
    for bad in (m * 0.5, m * 2, np.full_like(m, np.nan)):
        with pytest.raises(AmbientMRIError, match="only 0 .* and 1"):
            am.masks.further_mask(bad, extra_lines=2, seed=0)
        with pytest.raises(AmbientMRIError, match="only 0 .* and 1"):
            am.masks.achieved_acceleration(bad)
    with pytest.raises(AmbientMRIError, match="acquires nothing"):
        am.masks.achieved_acceleration(np.zeros_like(m))
    assert am.masks.achieved_acceleration(m.astype(">f4")) == am.masks.achieved_acceleration(m) == 2


def test_a_complex_mask_is_not_read_as_its_real_part(scan):
    k, m, _ = scan
    with pytest.raises(AmbientMRIError, match="only 0 .* and 1"):
        am.reconstruct(k, m * (1 + 1j), method="zero_filled")


def test_the_noise_diagnostic_does_not_depend_on_the_kspace_scale(scan):
    """outer_line_snr squared float32 values: 0 at k * 1e-30 (a false 'mostly noise' warning), inf at k * 1e30."""
    from ambient_mri.scan import outer_line_snr, scan_noise_std

    k, m, _ = scan
    masks = np.broadcast_to(m, (k.shape[0], m.size))
    snrs = []
    for scale in (1e-30, 1.0, 1e30):
        ks = (k.astype(np.complex128) * scale).astype(np.complex64)
        snrs.append(outer_line_snr(ks, masks, scan_noise_std(ks, masks)))
    assert np.isfinite(snrs).all() and snrs[1] > 1.5
    np.testing.assert_allclose(snrs, snrs[1], rtol=1e-3)


def test_kspace_beyond_complex64_is_named_not_called_nan(scan):
    k, m, _ = scan
    with pytest.raises(AmbientMRIError, match="beyond the complex64 range"):
        am.reconstruct(k.astype(np.complex128) * 1e300, m, method="zero_filled")


def test_maps_in_another_scale_are_warned(scan):
    k, m, sim = scan
    maps = sim.maps.astype(np.complex64)[:, 16:48]  # the readout crop zero_filled makes (64 rows -> 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unit maps: no warning
        am.reconstruct(k, m, maps=maps, method="zero_filled")
    with pytest.warns(UserWarning, match="root-sum-of-squares over the coils is 2"):
        am.reconstruct(k, m, maps=2 * maps, method="zero_filled")


def test_inputs_without_numbers_are_refused_by_name(scan):
    k, m, sim = scan
    with pytest.raises(AmbientMRIError, match="kspace: a tensor on the 'meta' device"):
        am.reconstruct(torch.empty(k.shape, dtype=torch.complex64, device="meta"), m, method="zero_filled")
    with pytest.raises(AmbientMRIError, match="maps: expected numbers, got an array of dtype object"):
        am.reconstruct(k, m, maps=sim.maps.astype(object), method="zero_filled")
    with pytest.raises(AmbientMRIError, match="expected numbers"):
        am.fft2c(np.zeros((4, 4), object))
    with pytest.raises(AmbientMRIError, match="expected numbers"):
        am.metrics.evaluate_volume(np.ones((1, 8, 8), object), np.ones((1, 8, 8)))
    with pytest.raises(AmbientMRIError, match="no dimension -3"):
        am.coils.rss(np.ones(5))
    with pytest.raises(AmbientMRIError, match="k must be an integer"):
        am.metrics.nearest_neighbours(np.ones((2, 4)), np.ones((3, 4)), k=1.5)
    for seed in ("", ()):
        with pytest.raises(AmbientMRIError, match="seed"):
            am.masks.kspace_mask("random", (64, 32), 4, seed=seed)


def test_steps_beyond_any_sampler_are_refused_before_allocating():
    from ambient_mri.sampling import policy

    with pytest.raises(AmbientMRIError, match=r"steps must be an integer in \[1, 100000\]"):
        policy.check_run(policy.method("fast", "mri"), 10**12, 1)


def test_tensors_numpy_has_no_type_for_are_read_and_bad_mask_values_are_shown():
    """bfloat16 and sparse tensors raised TypeErrors from .numpy(); the 0/1 refusal did not say what it found."""
    from ambient_mri.arrays import as_array

    img = torch.rand(1, 8, 8)
    np.testing.assert_array_equal(as_array(img.to(torch.bfloat16), "x"), img.to(torch.bfloat16).float().numpy())
    np.testing.assert_array_equal(as_array(torch.eye(3).to_sparse(), "x"), np.eye(3, dtype=np.float32))
    ref = am.metrics.evaluate_volume(img.numpy() + 1, img.numpy() + 1)
    assert am.metrics.evaluate_volume((img + 1).to(torch.bfloat16), (img + 1).to(torch.bfloat16))["SSIM"] == ref["SSIM"]
    m = am.masks.kspace_mask("equispaced", (64, 32), 2, 0.25, seed=0)
    with pytest.raises(AmbientMRIError, match=r"it holds 255.0 \(16 value\(s\) that are neither\)"):
        am.masks.further_mask(m * 255, extra_lines=2)
    with pytest.raises(AmbientMRIError, match="it holds nan"):
        am.masks.acquired_columns(np.full(4, np.nan))
