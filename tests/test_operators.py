"""Operators: fastMRI FFT parity, adjointness, shapes, autograd, composition, bad input."""

import warnings

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


def test_every_operator_takes_numpy_and_returns_numpy():
    """API: numpy in -> numpy out with the same numbers as the torch path (forward, adjoint, normal)."""
    B, C, H, W = 2, 3, 8, 6
    for name, (A, xs, ys) in operators(B, C, H, W, torch.complex64, "cpu").items():
        x, y = rand(xs, torch.complex64, "cpu"), rand(ys, torch.complex64, "cpu", seed=2)
        for fn, v in ((A.forward, x), (A, x), (A.adjoint, y), (A.normal, x)):
            out = fn(v.numpy())
            assert isinstance(out, np.ndarray), f"{name}.{getattr(fn, '__name__', 'call')} returned {type(out)}"
            np.testing.assert_allclose(out, fn(v).numpy(), rtol=1e-6, atol=1e-6, err_msg=name)


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


# ---------------------------------------------------------------------------------------------------------------
# The multi-coil operator folds fftshift/ifftshift into checkerboards (even H, W); it must equal the fft2c formula.
def fft2c_formula(maps, mask, x=None, k=None):
    """The definition: forward M ⊙ fft2c(S x), adjoint Σ_c conj(S) ⊙ ifft2c(M ⊙ k)."""
    m = am.operators.mask_4d(mask).to(maps.real.dtype)
    if x is not None:
        return m * am.fft2c(maps * x[:, None])
    return torch.sum(maps.conj() * am.ifft2c(m * k), dim=1)


def rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
# even sizes with (-1)^(H/2+W/2) = +1 and -1, odd, and one odd side (the fft2c path)
@pytest.mark.parametrize("HW", [(16, 12), (14, 12), (6, 4), (640, 320), (15, 9), (16, 9), (9, 10)])
@pytest.mark.parametrize("mask_kind", ["column", "per_example_2d", "shared_2d"])
def test_multicoil_equals_fft2c_formula(HW, dtype, mask_kind, device):
    H, W = HW
    B, C = (2, 2) if H * W > 10000 else (3, 4)
    maps = smooth_maps(B, C, H, W, dtype).to(device)
    g = torch.Generator().manual_seed(7)
    if mask_kind == "column":
        mask = torch.from_numpy(am.masks.kspace_mask("random", (H, W), 2, 0.2, seed=3)).reshape(W)
    elif mask_kind == "per_example_2d":
        mask = (torch.rand(B, H, W, generator=g) > 0.4).float()
    else:
        mask = (torch.rand(H, W, generator=g) > 0.4).float()
    mask = mask.to(device)
    A = am.MultiCoilMRI(maps, mask)
    x, k = rand((B, H, W), dtype, device), rand((B, C, H, W), dtype, device, seed=2)
    tol = {torch.complex64: 1e-6, torch.complex128: 1e-12}[dtype]
    fwd, adj = A(x), A.adjoint(k)
    assert fwd.dtype == dtype and adj.dtype == dtype
    assert fwd.shape == (B, C, H, W) and adj.shape == (B, H, W)
    assert rel(fwd, fft2c_formula(maps, mask, x=x)) < tol
    assert rel(adj, fft2c_formula(maps, mask, k=k)) < tol
    # zero where not acquired, exactly
    assert (fwd[(am.operators.mask_4d(mask) == 0).expand(B, C, H, W)] == 0).all()
    # the cached conj(maps) made by the first adjoint is reused: same result again
    assert torch.equal(A.adjoint(k), adj)


def test_multicoil_batch_broadcasting_and_mismatch():
    B, C, H, W = 2, 3, 8, 6
    maps = smooth_maps(B, C, H, W, torch.complex128)
    A = am.MultiCoilMRI(maps, torch.ones(W))
    k1 = rand((1, C, H, W), torch.complex128, "cpu")
    # a k-space (or image) batch of 1 broadcasts against maps of batch B
    torch.testing.assert_close(A.adjoint(k1), fft2c_formula(maps, torch.ones(W), k=k1), rtol=1e-12, atol=1e-12)
    assert A(rand((1, H, W), torch.complex128, "cpu")).shape == (B, C, H, W)
    for bad in (3, 4):
        with pytest.raises(am.AmbientMRIError, match="does not match"):
            A.adjoint(torch.zeros(bad, C, H, W, dtype=torch.complex128))
        with pytest.raises(am.AmbientMRIError, match="does not match"):
            A(torch.zeros(bad, H, W, dtype=torch.complex128))
    # maps of batch 1 serve any batch
    A1 = am.MultiCoilMRI(maps[:1], torch.ones(W))
    k3 = rand((3, C, H, W), torch.complex128, "cpu")
    torch.testing.assert_close(A1.adjoint(k3), fft2c_formula(maps[:1], torch.ones(W), k=k3), rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Complex modules:UserWarning")
def test_multicoil_derived_constants_follow_maps_mask_dtype_and_device():
    B, C, H, W = 2, 3, 8, 6
    maps = smooth_maps(B, C, H, W, torch.complex64)
    mask = (torch.rand(B, H, W, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    x, k = rand((B, H, W), torch.complex128, "cpu"), rand((B, C, H, W), torch.complex128, "cpu", 2)
    A = am.MultiCoilMRI(maps, mask)
    # complex64 maps, complex128 input: promoted like the formula
    assert A(x).dtype == torch.complex128
    torch.testing.assert_close(A(x), fft2c_formula(maps, mask, x=x), rtol=1e-6, atol=1e-6)
    A.adjoint(k)  # makes the cached conj(maps)
    A64 = A.to(torch.complex128)  # converts maps and the derived buffers alike; masks stay real
    assert A64.maps.dtype == torch.complex128 and A64._maps_c.dtype == torch.complex128
    assert A64.mask.dtype == A64._mask_c.dtype == torch.float64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(A64(x), fft2c_formula(maps.to(torch.complex128), mask, x=x),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(A64.adjoint(k), fft2c_formula(maps.to(torch.complex128), mask, k=k),
                                   rtol=1e-12, atol=1e-12)
    # maps or mask changed in place, or replaced: the derived constants are recomputed
    A = am.MultiCoilMRI(maps.clone(), mask.clone())
    A.adjoint(k)
    A.mask[:, :, :, : W // 2] = 0
    A.maps.mul_(2)
    torch.testing.assert_close(A.adjoint(k), fft2c_formula(A.maps, A.mask, k=k), rtol=1e-6, atol=1e-6)
    new_maps = smooth_maps(B, C, H, W, torch.complex64, seed=9)
    A.maps = new_maps
    torch.testing.assert_close(A(x), fft2c_formula(new_maps, A.mask, x=x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(A.adjoint(k), fft2c_formula(new_maps, A.mask, k=k), rtol=1e-6, atol=1e-6)


# (H, W) and gradcheck's smaller (h, w): (-1)^(H/2+W/2) = +1 and -1, and odd
@pytest.mark.parametrize("HW, hw", [((8, 6), (4, 4)), ((6, 4), (2, 4)), ((7, 5), (3, 3))])
def test_multicoil_autograd_matches_formula(HW, hw):
    """Gradients w.r.t. the image (in-place path), the maps and the mask (per-call path) equal the formula's."""
    H, W = HW
    B, C = 2, 3
    dt = torch.complex128
    maps = smooth_maps(B, C, H, W, dt)
    mask = (torch.rand(B, H, W, generator=torch.Generator().manual_seed(1)) > 0.3).double()
    x, k = rand((B, H, W), dt, "cpu"), rand((B, C, H, W), dt, "cpu", 2)
    w = rand((B, C, H, W), dt, "cpu", 3)

    def grads(op_fwd, op_adj, leaves):
        loss = (torch.abs(op_fwd() * w) ** 2).sum() + (torch.abs(op_adj()) ** 2).sum()
        return torch.autograd.grad(loss, leaves)

    for which in ("x", "maps", "mask"):
        leaves = {n: t.clone().requires_grad_(n == which) for n, t in (("x", x), ("maps", maps), ("mask", mask))}
        kk = k.clone().requires_grad_(which == "x")
        A = am.MultiCoilMRI(leaves["maps"], leaves["mask"])
        targets = [leaves[which]] + ([kk] if which == "x" else [])
        got = grads(lambda A=A, L=leaves: A(L["x"]), lambda A=A, kk=kk: A.adjoint(kk), targets)
        ref = grads(lambda L=leaves: fft2c_formula(L["maps"], L["mask"], x=L["x"]),
                    lambda L=leaves, kk=kk: fft2c_formula(L["maps"], L["mask"], k=kk), targets)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    h, w = hw  # gradcheck's numerical Jacobian on a small problem
    A = am.MultiCoilMRI(maps[:1, :2, :h, :w].contiguous(), mask[:1, :h, :w])
    assert torch.autograd.gradcheck(A, (x[:1, :h, :w].clone().requires_grad_(),))
    assert torch.autograd.gradcheck(A.adjoint, (k[:1, :2, :h, :w].clone().requires_grad_(),))


def test_singlecoil_checks_shapes():
    H, W = 8, 6
    col = am.SingleCoilMRI(torch.ones(W))
    full = am.SingleCoilMRI((torch.rand(2, H, W, generator=torch.Generator().manual_seed(0)) > 0.5).float())
    x = rand((2, H, W), torch.complex64, "cpu")
    assert col(x).shape == full(x).shape == (2, H, W)
    assert full(x[:1]).shape == (2, H, W)  # a batch of 1 broadcasts
    torch.testing.assert_close(full.adjoint(x), am.ifft2c(full.mask * x))
    for A in (col, full):
        for bad in ((2, H, W + 1), (2, W, H) if A is full else (2, H, W - 1)):
            with pytest.raises(am.AmbientMRIError, match="does not match mask"):
                A(torch.zeros(bad, dtype=torch.complex64))
            with pytest.raises(am.AmbientMRIError, match="does not match mask"):
                A.adjoint(torch.zeros(bad, dtype=torch.complex64))
    with pytest.raises(am.AmbientMRIError, match="does not match mask"):
        full(torch.zeros(3, H, W, dtype=torch.complex64))
    with pytest.raises(am.AmbientMRIError, match="does not match mask"):
        full(torch.zeros(W, dtype=torch.complex64))


def test_operator_inputs_that_used_to_give_wrong_numbers_or_deep_tracebacks():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(1, 3, 8, 8, dtype=torch.complex64, generator=g)
    x = torch.randn(1, 8, 8, dtype=torch.complex64, generator=g)
    # numpy maps are copied: a later numpy write no longer leaves the cached checkerboard copies stale
    mn = maps.numpy().copy()
    A = am.MultiCoilMRI(mn, np.ones(8, np.float32))
    mn *= 2
    assert torch.allclose(A(x), am.fft2c(maps * x[:, None]), atol=1e-5)
    # a (B, H, W) pixel mask used to broadcast (B, 1, H, W) images into (B, B, H, W)
    with pytest.raises(am.AmbientMRIError, match="do not match mask"):
        am.PixelMask(torch.ones(4, 8, 8))(torch.randn(4, 1, 8, 8))
    assert am.PixelMask(torch.ones(4, 8, 8))(torch.randn(4, 8, 8)).shape == (4, 8, 8)
    with pytest.raises(am.AmbientMRIError, match="mask of shape \\(1, 5, 8, 8\\) does not match maps"):
        am.MultiCoilMRI(maps, torch.ones(1, 5, 8, 8))
    with pytest.raises(TypeError, match="MultiCoilMRI.forward takes a torch tensor or a numpy array, got list"):
        A([[1.0]])
    with pytest.raises(ValueError, match="fft2c transforms the last 2 dimensions"):
        am.fft2c(torch.zeros(4, dtype=torch.complex64))
    with pytest.raises(am.AmbientMRIError, match="C, H, W >= 1"):
        am.MultiCoilMRI(torch.zeros(1, 0, 8, 8, dtype=torch.complex64), torch.ones(8))
    # empty batches pass through (MKL refuses empty FFTs), big-endian arrays are read
    empty = torch.zeros(0, 8, 8, dtype=torch.complex64)
    assert A(empty).shape == (0, 3, 8, 8) and A.adjoint(A(empty)).shape == (0, 8, 8)
    assert am.ifft2c(np.zeros((0, 4, 4), np.complex64)).shape == (0, 4, 4)
    big = (np.arange(16).reshape(4, 4) + 1j).astype(">c8")
    assert np.allclose(am.fft2c(big), am.fft2c(big.astype(np.complex64)))
    assert am.adjointness_error(A, x, torch.zeros(1, 3, 8, 8, dtype=torch.complex64)) == 0.0
