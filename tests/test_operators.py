"""Operators: fastMRI FFT parity, adjointness, shapes, autograd, composition, bad input."""

import fastmri
import numpy as np
import pytest
import torch

import ambient_mri as am
from ambient_mri.operators import ComposedOperator

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.complex64: 1e-5, torch.complex128: 1e-12}


def smooth_maps(B, C, H, W, dtype, seed=0):
    """Non-flat random coil maps: smooth magnitude and phase that differ per coil and per example."""
    g = torch.Generator().manual_seed(seed)
    lin = lambda n: torch.linspace(-1, 1, n, dtype=torch.float64)  # noqa: E731
    yy, xx = torch.meshgrid(lin(H), lin(W), indexing="ij")
    c = torch.randn(B, C, 6, generator=g, dtype=torch.float64)
    mag = 1 + 0.5 * torch.tanh(c[..., 0, None, None] * xx + c[..., 1, None, None] * yy)
    phase = c[..., 2, None, None] * xx + c[..., 3, None, None] * yy + c[..., 4, None, None] * xx * yy
    return (mag * torch.exp(1j * phase)).to(dtype)


def rand(shape, dtype, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).to(device)


@pytest.mark.parametrize("shape", [(4, 6), (7, 5), (3, 2, 16, 12), (2, 15, 9)])
def test_fft2c_bit_identical_to_fastmri(shape):
    x = torch.randn(*shape, dtype=torch.complex64)
    assert torch.equal(am.fft2c(x), torch.view_as_complex(fastmri.fft2c(torch.view_as_real(x))))
    assert torch.equal(am.ifft2c(x), torch.view_as_complex(fastmri.ifft2c(torch.view_as_real(x))))


def test_fft2c_unitary_and_numpy_roundtrip():
    x = np.random.default_rng(0).standard_normal((3, 10, 7)) + 1j
    k = am.fft2c(x)
    assert isinstance(k, np.ndarray)
    np.testing.assert_allclose(np.linalg.norm(k), np.linalg.norm(x), rtol=1e-12)
    np.testing.assert_allclose(am.ifft2c(k), x, atol=1e-12)
    with pytest.raises(TypeError, match="complex"):
        am.fft2c(torch.zeros(4, 4))


def operators(B, C, H, W, dtype, device):
    maps = smooth_maps(B, C, H, W, dtype).to(device)
    col_mask = torch.from_numpy(am.masks.kspace_mask("random", (H, W), 2, 0.2, seed=3))
    per_example = (torch.rand(B, H, W, generator=torch.Generator().manual_seed(5)) > 0.4).float()
    pix = (torch.rand(B, 1, H, W, generator=torch.Generator().manual_seed(6)) > 0.3).float()
    mc = am.MultiCoilMRI(maps, col_mask.to(device))
    mc_b = am.MultiCoilMRI(maps, per_example.to(device))
    sc = am.SingleCoilMRI(per_example.to(device))
    return {
        "multicoil_column_mask": (mc, (B, H, W), (B, C, H, W)),
        "multicoil_per_example_mask": (mc_b, (B, H, W), (B, C, H, W)),
        "singlecoil": (sc, (B, H, W), (B, H, W)),
        "pixel": (am.PixelMask(pix.to(device)), (B, 3, H, W), (B, 3, H, W)),
        "identity": (am.Identity(), (B, H, W), (B, H, W)),
        "adjoint_of_multicoil": (mc.H, (B, C, H, W), (B, H, W)),
        "composed_pixel_after_singlecoil": (am.PixelMask(pix[:, 0].to(device)) @ sc, (B, H, W), (B, H, W)),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("size", [(3, 4, 16, 12), (2, 5, 15, 9)])
def test_adjointness_every_operator(size, dtype, device):
    B, C, H, W = size
    for name, (A, xs, ys) in operators(B, C, H, W, dtype, device).items():
        err = am.adjointness_error(A, rand(xs, dtype, device), rand(ys, dtype, device, seed=2))
        assert err < TOL[dtype], f"{name}: adjointness error {err:.2e}"


def test_adjointness_catches_a_wrong_adjoint():
    class Broken(am.MultiCoilMRI):
        def adjoint(self, k):  # forgets the conjugate of the maps
            return torch.sum(self.maps * am.ifft2c(self.mask * k), dim=1)

    B, C, H, W = 2, 3, 8, 8
    A = Broken(smooth_maps(B, C, H, W, torch.complex128), torch.ones(W))
    assert am.adjointness_error(A, rand((B, H, W), torch.complex128, "cpu"),
                                rand((B, C, H, W), torch.complex128, "cpu", 2)) > 1e-3


def test_multicoil_matches_explicit_per_coil_loop():
    B, C, H, W = 2, 4, 10, 8
    maps = smooth_maps(B, C, H, W, torch.complex128)
    mask = torch.from_numpy(am.masks.kspace_mask("equispaced", (H, W), 2, 0.25, seed=0))
    x = rand((B, H, W), torch.complex128, "cpu")
    y = am.MultiCoilMRI(maps, mask)(x)
    for b in range(B):
        for c in range(C):
            ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(maps[b, c].numpy() * x[b].numpy()), norm="ortho"))
            np.testing.assert_allclose(y[b, c].numpy(), ref * mask.numpy(), atol=1e-12)
    A = am.MultiCoilMRI(maps, mask)
    torch.testing.assert_close(A.normal(x), A.adjoint(A(x)))
    assert (y[..., mask[0] == 0] == 0).all()


def test_operator_autograd_and_composition():
    B, C, H, W = 2, 3, 8, 6
    A = am.MultiCoilMRI(smooth_maps(B, C, H, W, torch.complex64), torch.ones(W))
    x = rand((B, H, W), torch.complex64, "cpu").requires_grad_()
    (A(x).abs() ** 2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    composed = am.Identity() @ A
    assert isinstance(composed, ComposedOperator)
    torch.testing.assert_close(composed(x.detach()), A(x.detach()))
    assert A.H.H is A


def test_operator_bad_input():
    maps = smooth_maps(2, 3, 8, 6, torch.complex64)
    with pytest.raises(am.AmbientMRIError, match="maps"):
        am.MultiCoilMRI(maps.real, torch.ones(6))
    with pytest.raises(am.AmbientMRIError, match="does not match"):
        am.MultiCoilMRI(maps, torch.ones(7))
    A = am.MultiCoilMRI(maps, torch.ones(6))
    with pytest.raises(am.AmbientMRIError, match="does not match"):
        A(torch.zeros(2, 8, 5, dtype=torch.complex64))
    with pytest.raises(am.AmbientMRIError, match="does not match"):
        A.adjoint(torch.zeros(2, 4, 8, 6, dtype=torch.complex64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_multicoil_cuda_matches_cpu():
    B, C, H, W = 2, 4, 32, 24
    maps = smooth_maps(B, C, H, W, torch.complex64)
    x = rand((B, H, W), torch.complex64, "cpu")
    A = am.MultiCoilMRI(maps, torch.ones(W))
    torch.testing.assert_close(A.to("cuda")(x.cuda()).cpu(), A.to("cpu")(x), atol=1e-5, rtol=1e-5)
