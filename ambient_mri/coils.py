"""Coil sensitivities: ESPIRiT from the calibration (ACS) lines, their polynomial refinement from all acquired lines
(``refine_maps``), and coil combination."""

from __future__ import annotations

import inspect

import numpy as np
import torch

from .arrays import as_array
from .errors import AmbientMRIError
from .files import check_count
from .masks import calibration_width

MIN_ACS_LINES = 6  # fewer: an error (sigpy's ESPIRiT on a 4-line region returns maps that are zero everywhere)
# refine_maps: Legendre degree per axis (< 6) and alternations, chosen on the calibration crops of
# benchmarks/coil_maps.py (MNI152 coronal crops that fill the field of view; degree < 4 and < 8 were worse there),
# and the Tikhonov λ of its image steps (CG-SENSE's default on normalised data). The alternation converges slowly:
# CG-SENSE at λ 1e-3 with the refined maps gained +1.3 to +1.9 dB from 6 alternations to 48 on those crops and
# 0.1-0.25 more at 96; on the same source at fastMRI's size (320 wide, 16 coils) 31.4 dB at 6, 35.5 at 48, the true
# maps 36.7 (benchmarks/map_refinement.py --alternations). 48 for half the cost of 96
REFINE_DEGREE = 6
REFINE_ITERS = 48
REFINE_LAMBDA = 1e-3


def default_kernel_width(calib_width: int) -> int:
    """ESPIRiT kernel width for a calibration width.

    sigpy's default 6 needs ~18+ calibration lines; on 10 lines it gives maps whose SENSE image is unusable
    (REFERENCE.md), so narrow regions get a smaller kernel (10 -> 4, 12-17 -> 5).
    """
    if calib_width >= 18:
        return 6
    return int(max(3, min(5, (calib_width - 2) // 2)))


def espirit(kspace, calib_width: int | None = None, kernel_width: int | None = None, thresh: float = 0.02,
            crop: float = 0.95, max_iter: int = 100, mask=None, device=None, show_pbar: bool = False,
            **sigpy_options):
    """ESPIRiT maps from acquired k-space, using only the fully acquired centre columns (ACS).

    kspace: (C, H, W) or (S, C, H, W) complex, zeros where not acquired. mask: optional column/2-D mask of
    the acquisition ((W,), (1, W), (H, W); with (S, C, H, W) k-space also per slice (S, 1|H, W)); k-space outside
    it is zeroed first so nothing else can leak into calibration. Each slice is calibrated on its own ACS lines.
    calib_width: default = the symmetric fully acquired centre width (capped at 32). The named options and any
    other ``sigpy_options`` go to ``sigpy.mri.app.EspiritCalib`` (an unknown one is an error naming it; maps only,
    so ``output_eigenvalue`` is refused). Returns maps with the shape and array type of ``kspace``.
    """
    import sigpy as sp
    import sigpy.mri

    if sigpy_options.get("output_eigenvalue"):
        raise AmbientMRIError("espirit returns maps only: output_eigenvalue is not supported")
    sigpy_options.pop("output_eigenvalue", None)
    unknown = sorted(set(sigpy_options) - (set(inspect.signature(sigpy.mri.app.EspiritCalib).parameters) - {"ksp"}))
    if unknown:
        raise AmbientMRIError(f"espirit: unknown option(s) {', '.join(unknown)} for sigpy's EspiritCalib")
    k, is_torch = as_array(kspace, "espirit: kspace"), isinstance(kspace, torch.Tensor)
    if not np.iscomplexobj(k) or k.ndim not in (3, 4):
        raise AmbientMRIError(f"espirit expects complex (C, H, W) or (S, C, H, W) k-space, got {k.dtype} {k.shape}")
    if not np.isfinite(k).all():
        raise AmbientMRIError("espirit: k-space contains NaN or Inf")
    for name, v in (("calib_width", calib_width), ("kernel_width", kernel_width)):
        if v is not None:
            check_count(f"espirit: {name}", v)
    batch = k if k.ndim == 4 else k[None]
    masks = [None] * len(batch)
    if mask is not None:
        m = as_array(mask, "espirit: mask")
        m = np.asarray(m, dtype=np.float32)
        if not np.isfinite(m).all():
            raise AmbientMRIError("espirit: mask contains NaN or Inf")
        if m.ndim == 3 and k.ndim == 4:  # per slice (S, 1|H, W): each slice its own acquisition
            m = m[:, None]
        try:  # anything that broadcasts to the k-space: (W,), (H, W), (C, H, W), (S, 1, 1, W), k != 0, ...
            full = np.broadcast_to(m, k.shape)
        except ValueError:
            raise AmbientMRIError(f"espirit: mask of shape {m.shape} does not fit k-space of shape {k.shape} (give a "
                                  "column mask (W,) or (1, W), an (H, W) mask, or per slice (S, 1, W))") from None
        acquired = (full != 0).any(axis=-3).astype(np.float32)   # a sample any coil acquired
        masks = list(acquired) if k.ndim == 4 else [acquired]
    options = dict(thresh=thresh, crop=crop, max_iter=max_iter, show_pbar=show_pbar, **sigpy_options)
    maps = []
    for s, (ks, ms) in enumerate(zip(batch, masks)):
        try:  # the ACS width of each slice: a slice with fewer lines must not be calibrated on empty columns
            maps.append(_espirit_slice(ks, ms, calib_width, kernel_width, sp.Device(-1 if device is None else device),
                                       options))
        except AmbientMRIError as e:
            raise AmbientMRIError(f"{e} (slice {s})" if k.ndim == 4 else str(e)) from None
    out = np.stack(maps).astype(k.dtype if k.dtype == np.complex128 else np.complex64)
    out = out if k.ndim == 4 else out[0]
    return torch.from_numpy(out) if is_torch else out


def _espirit_slice(k: np.ndarray, m: np.ndarray | None, calib_width: int | None, kernel_width: int | None, dev,
                   options: dict) -> np.ndarray:
    """``espirit`` of one slice (C, H, W), its mask None or broadcastable to (H, W)."""
    import sigpy.mri

    if m is not None:
        k = k * np.broadcast_to(m, k.shape[-2:])
    acs = calibration_width(np.abs(k).reshape(-1, k.shape[-1]) > 0 if m is None else m)
    if calib_width is None:
        calib_width = min(acs, 32)
    if calib_width < MIN_ACS_LINES:
        raise AmbientMRIError(
            f"espirit: need at least {MIN_ACS_LINES} fully acquired centre (ACS) lines to estimate coil maps, found "
            f"{acs}" + ("" if calib_width == acs else f" (calib_width {calib_width})") + "; acquire more ACS lines "
            "or pass maps explicitly"
        )
    if calib_width > acs:
        raise AmbientMRIError(f"espirit: calib_width {calib_width} exceeds the {acs} acquired ACS lines")
    kw = kernel_width or default_kernel_width(calib_width)
    if kw > calib_width:
        raise AmbientMRIError(f"espirit: kernel_width {kw} exceeds the calibration width {calib_width}")
    maps = sigpy.mri.app.EspiritCalib(k, calib_width=calib_width, kernel_width=kw, device=dev, **options).run()
    if not np.any(maps):
        raise AmbientMRIError(f"espirit: the maps are zero everywhere (no eigenvalue above crop {options['crop']} "
                              f"from {calib_width} ACS lines): acquire more ACS lines or pass maps explicitly")
    return np.asarray(maps)


def rss(coil_images, dim: int = -3):
    """Root sum of squares over the coil dimension (numpy or torch, real or complex)."""
    if isinstance(coil_images, torch.Tensor):
        return torch.sqrt(torch.sum(torch.abs(coil_images) ** 2, dim=dim))
    a = as_array(coil_images, "rss: coil_images")
    if not -a.ndim <= dim < a.ndim:
        raise AmbientMRIError(f"rss: coil_images of shape {a.shape} have no dimension {dim} (coils)")
    return np.sqrt(np.sum(np.abs(a) ** 2, axis=dim))


def sense_combine(coil_images, maps, dim: int = -3):
    """Least-squares coil combination Σ conj(S_c) x_c / Σ |S_c|² (zero where the maps vanish); numpy or torch."""
    num = (maps.conj() * coil_images).sum(dim)
    den = (abs(maps) ** 2).sum(dim)
    return num / (den + (den == 0))


def legendre_basis(H: int, W: int, degree: int = REFINE_DEGREE) -> torch.Tensor:
    """(degree², H, W) complex64 products P_i(row) P_j(column) of Legendre polynomials of degree < ``degree``, pixel
    centres mapped into (-1, 1)."""
    from numpy.polynomial import legendre

    def axis(n: int) -> np.ndarray:
        t = (2 * np.arange(n) + 1) / n - 1
        return np.stack([legendre.legval(t, np.eye(degree)[i]) for i in range(degree)])

    b = axis(H)[:, None, :, None] * axis(W)[None, :, None, :]
    return torch.from_numpy(b.reshape(degree * degree, H, W).astype(np.complex64))


def refine_maps(y: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor, degree: int = REFINE_DEGREE,
                iters: int = REFINE_ITERS, lam: float = REFINE_LAMBDA) -> torch.Tensor:
    """JSENSE (Ying & Sheng 2007) with polynomial maps, started from ``maps``: alternately the CG-SENSE image x of
    every acquired line and, per coil, the least-squares map S_c = Σ_j a_cj P_j (``legendre_basis``) with
    M F (S_c x) = y_c, kept on the support of ``maps`` and normalised to Σ_c |S_c|² = 1 there.

    ESPIRiT (and sigpy's JsenseRecon) represent maps by a few k-space coefficients, so the maps are periodic over the
    field of view; when anatomy fills the phase-encode field of view the true maps differ at its two edges and ESPIRiT
    from few ACS lines is wrong there (benchmarks/coil_maps.py). Polynomials need not be periodic. The support stays
    ESPIRiT's: without it CG-SENSE lost up to 5 dB on brains with background (the support halves the unknowns).
    y (S, C, H, W) complex, normalised, zero off the mask; maps (S, C, H, W); mask (S, W) -> maps (S, C, H, W)."""
    from .operators import MultiCoilMRI, fft2c
    from .solvers import conjugate_gradient

    S, C, H, W = y.shape
    B = legendre_basis(H, W, degree).to(y.device, y.dtype)                   # (J, H, W)
    support = ((maps.abs() ** 2).sum(1, keepdim=True) > 0).to(y.dtype)       # (S, 1, H, W)
    m4 = mask[:, None, None, :].to(y.real.dtype)
    x = None
    for _ in range(iters):
        A = MultiCoilMRI(maps, m4)
        x = conjugate_gradient(A.normal, A.adjoint(y * m4), x0=x, iters=100, lam=lam, tol=1e-5)   # (S, H, W)
        new = []
        for s in range(S):  # one (J, J) system per slice, shared by its coils
            cols = mask[s].nonzero().flatten()
            design = fft2c(B * x[s])[..., cols].reshape(B.shape[0], -1)   # (J, N)
            if not bool(design.abs().amax() > 0):   # nothing acquired or no support: keep this slice's maps
                new.append(maps[s])
                continue
            gram = design.conj() @ design.T
            rhs = design.conj() @ y[s][..., cols].reshape(C, -1).T        # (J, C)
            ridge = 1e-6 * gram.diagonal().real.mean() * torch.eye(len(B), dtype=gram.dtype, device=gram.device)
            coef = torch.linalg.solve(gram + ridge, rhs)
            new.append(torch.einsum("jc,jhw->chw", coef, B))
        maps = torch.stack(new) * support
        norm = (maps.abs() ** 2).sum(1, keepdim=True).sqrt()
        maps = maps / torch.where(norm > 0, norm, torch.ones_like(norm))
    return maps
