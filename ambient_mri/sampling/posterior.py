"""Posterior samplers for y = A x + noise, generic over the operator A and over clean or ambient priors.

Each returns the reconstruction (batch of images) and leaves the network-evaluation count in ``prior.nfe``.
    adps / dps  Euler on the EDM grid with the DPS step  -ζ ∇_x ‖y - A D‖² / ‖y - A D‖  (gradient through D);
                A-DPS when the prior is ambient (D sees Ã^H Ã x), DPS when it is clean
    ald         annealed Langevin: score (D - x)/σ² plus the likelihood A^H (y - A x)/(σ² + γ²), no Jacobian
    one_step    D(A^H y, M, σ_min) in one evaluation (A-OS for an ambient prior)
    fast_dc     DDIM-style steps with a few conjugate-gradient data-consistency steps on the normal equations
                after each denoiser call (Decomposed-Diffusion-Sampler style), weighted against D by the
                noise level (DiffPIR style); 50 evaluations by default
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..errors import AmbientMRIError
from ..model import apply_denoiser
from ..operators import LinearOperator
from ..solvers import conjugate_gradient
from .prior import Prior, edm_sigmas, randn_like_image


def _norm(r: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(r.flatten(1), dim=1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def dps(prior: Prior, y: torch.Tensor, A: LinearOperator, shape, steps: int = 500, sigma_max: float = 10.0,
        sigma_min: float = 0.004, zeta: float = 1.0, seed: int = 0, dtype=torch.complex64, progress: bool = False):
    """(A-)DPS: x_{i+1} = x_i + (σ_{i+1} - σ_i)(x_i - D)/σ_i - ζ ∇‖y - A D‖²/‖y - A D‖ (per example)."""
    g = torch.Generator().manual_seed(seed)
    sig = edm_sigmas(steps, sigma_min, sigma_max)
    x = randn_like_image(shape, dtype, g, y.device) * float(sig[0])
    for i in tqdm(range(steps), disable=not progress, desc="A-DPS" if prior.A_tilde is not None else "DPS"):
        s, s_next = float(sig[i]), float(sig[i + 1])
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            d = prior.denoise(x, s)
            res = _norm(y - A(d))
            (grad,) = torch.autograd.grad((res**2).sum(), x)
        with torch.no_grad():
            x = x + (s_next - s) * (x - d) / s - zeta * grad / _bcast(res.clamp_min(1e-12), x)
    return x.detach()


adps = dps


@torch.no_grad()
def ald(prior: Prior, y: torch.Tensor, A: LinearOperator, shape, steps: int = 500, sigma_max: float = 10.0,
        sigma_min: float = 0.004, eps: float = 0.5, gamma: float = 1e-3, seed: int = 0, dtype=torch.complex64,
        progress: bool = False):
    """Annealed Langevin dynamics, one step per noise level (α = ε σ²), returning the final denoised estimate."""
    g = torch.Generator().manual_seed(seed)
    sig = edm_sigmas(steps, sigma_min, sigma_max)
    x = randn_like_image(shape, dtype, g, y.device) * float(sig[0])
    d = x
    for i in tqdm(range(steps), disable=not progress, desc="ALD"):
        s = float(sig[i])
        d = prior.denoise(x, s)
        lik = A.adjoint(y - A(x)) * (s**2 / (s**2 + gamma**2))
        z = randn_like_image(shape, dtype, g, y.device)
        x = x + eps * (d - x) + eps * lik + (2 * eps) ** 0.5 * float(sig[i + 1]) * z
    return d


@torch.no_grad()
def one_step(prior: Prior, y: torch.Tensor, A: LinearOperator, mask: torch.Tensor, sigma: float = 0.003):
    """D_θ(A^H y, M, σ): the network sees the acquired data and its own mask (A-OS)."""
    prior.nfe += 1
    return apply_denoiser(prior.model, A.adjoint(y), sigma, mask, A)


@torch.no_grad()
def fast_dc(prior: Prior, y: torch.Tensor, A: LinearOperator, shape, steps: int = 50, sigma_max: float = 10.0,
            sigma_min: float = 0.004, cg_iters: int = 20, eta: float = 0.5, seed: int = 0, dtype=torch.complex64,
            progress: bool = False, lam: float = 0.0, rho: float = 0.0, noise_std=None):
    """D → CG on (A^H A + λ_i I) x = A^H y + λ_i D started at D → DDIM step to σ_{i+1}.

    The CG is early-stopped (``cg_iters``): it fits the acquired data while keeping D's content where the data say
    little, and stopping regularises against noise amplification. How many steps pay depends on the prior:
    ``reconstruct`` takes 20 with an ambient model and 10 with a clean one (sampling.policy.FAST_MRI).
    λ_i = lam + rho σ_n² / σ_i² (DiffPIR's data weight): with the noise level σ_n of y (``noise_std``, a float or
    one per example), the denoised estimate at level σ_i counts as a measurement of error ~σ_i, so late steps
    trust D more than the noisy data. ``reconstruct`` estimates σ_n from the scan and takes rho = 10."""
    g = torch.Generator().manual_seed(seed)
    sig = edm_sigmas(steps, sigma_min, sigma_max)
    x = randn_like_image(shape, dtype, g, y.device) * float(sig[0])
    rhs = A.adjoint(y)
    if rho and noise_std is None:
        raise AmbientMRIError("fast_dc: rho > 0 weighs D by the data's noise level; give noise_std")
    n2 = 0.0
    if rho:
        n = torch.as_tensor(noise_std, dtype=x.real.dtype, device=y.device).reshape(-1).expand(shape[0])
        n2 = _bcast(n**2, x)
    x0 = x
    for i in tqdm(range(steps), disable=not progress, desc="fast-DC"):
        s, s_next = float(sig[i]), float(sig[i + 1])
        d = prior.denoise(x, s)
        w = lam + rho * n2 / s**2
        weighted = not isinstance(w, float) or w != 0.0
        x0 = conjugate_gradient(A.normal, rhs + w * d if weighted else rhs, x0=d, iters=cg_iters, lam=w)
        if s_next == 0:
            break
        eps_hat = (x - d) / s
        z = randn_like_image(shape, dtype, g, y.device)
        x = x0 + s_next * ((1 - eta**2) ** 0.5 * eps_hat + eta * z)
    return x0
