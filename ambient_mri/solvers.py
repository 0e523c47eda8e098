"""Batched conjugate gradient on normal equations (A^H A + λ I) x = b; used by CG-SENSE and the fast sampler."""

from __future__ import annotations

from collections.abc import Callable

import torch


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example real inner product Re<a, b>, shape (B, 1, ..., 1)."""
    d = (a.conj() * b).real if a.is_complex() else a * b
    return d.flatten(1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))


def conjugate_gradient(normal: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor | None = None,
                       iters: int = 10, lam: float | torch.Tensor = 0.0, tol: float = 0.0) -> torch.Tensor:
    """Solve (N + λ I) x = b per example of the batch (N Hermitian PSD), ``iters`` steps from ``x0``.

    With ``tol`` each example stops at its own relative residual: an example that has converged is frozen while the
    others go on, so its solution does not depend on what else is in the batch (N must act per example)."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    op = (lambda v: normal(v) + lam * v) if (not isinstance(lam, float) or lam != 0.0) else normal
    r = b - op(x)
    p = r.clone()
    rr = _dot(r, r)
    b_norm = _dot(b, b).clamp_min(1e-30)
    active = torch.ones_like(rr)
    for _ in range(iters):
        Ap = op(p)
        alpha = active * rr / _dot(p, Ap).clamp_min(1e-30)
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = _dot(r, r)
        if tol:
            active = active * (rr_new / b_norm >= tol**2).to(active.dtype)
            if not bool(active.any()):
                break
        p = torch.where(active > 0, r + (rr_new / rr.clamp_min(1e-30)) * p, p)
        rr = rr_new
    return x
