"""One loss for every setting: clean EDM, ambient (further corruption Ã ⊂ A), Tweedie (Gaussian-noisy data),
and both at once; plus the optional consistency term for σ below the data's noise level.

With x_t = x0 + σ n and measurements y = A x0 + σ_n ε, the network sees only what can be computed from y:
    z = Ã x_t  ≈  M̃ y + sqrt(σ² − σ_n²) Ã n         (measurement space; total noise σ on the Ã samples)
    D = D_θ(Ã^H z, M̃, σ)
and is trained to predict the measurement:
    L = λ(σ) ‖ P − y ‖²,   P = A D  on samples of A not in Ã,
                           P = (1 − c) A D + c z  on samples of Ã,  c = σ_n² / σ².
Its minimiser is D = E[x0 | Ã x_t] (where A identifies x0). Special cases: clean EDM (A = Ã = I, σ_n = 0),
ambient (σ_n = 0), Tweedie (A = Ã = I). The c-term is exact when Ã Ã^H is a projection (pixel masks,
single-coil MRI, identity); for multi-coil data with σ_n > 0 it treats the coil noise as white (approximation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..corruption import make_operator

DenoiserFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """λ(σ) = (σ² + σ_d²) / (σ σ_d)²."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigma(n: int, p_mean: float, p_std: float, generator: torch.Generator,
                 sigma_n: torch.Tensor | None = None) -> torch.Tensor:
    """ln σ ~ N(P_mean, P_std²); for noisy data σ = sqrt(σ0² + σ_n²) > σ_n, where the Tweedie loss is defined."""
    sigma = torch.exp(p_mean + p_std * torch.randn(n, generator=generator))
    if sigma_n is not None:
        sigma = torch.sqrt(sigma**2 + sigma_n.to(sigma) ** 2)
    return sigma


def _per_example(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def _meas_mask(mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Masks are stored (B, 1, ., W); single-coil k-space is (B, H, W)."""
    return mask[:, 0] if mask.ndim == y.ndim + 1 else mask


def measurement_loss(denoiser: DenoiserFn, batch: dict, operator: str, sigma: torch.Tensor, noise: torch.Tensor,
                     sigma_data: float, operator_input: bool = False) -> torch.Tensor:
    """Per-example loss (B,) of the module docstring. noise: image-domain N(0, I) (complex for MRI).
    operator_input: the denoiser also takes Ã (a model with network.input_cg)."""
    y = batch["y"]
    mask, mask_t = batch["mask"], batch.get("mask_tilde", batch["mask"])
    maps = batch.get("maps")
    sigma_n = batch.get("sigma_n")
    sigma_n = torch.zeros_like(sigma) if sigma_n is None else sigma_n.to(sigma)
    A = make_operator(operator, mask, maps)
    A_t = make_operator(operator, mask_t, maps)
    m_t = _meas_mask(mask_t, y).to(y.real.dtype)
    y = _meas_mask(mask, y).to(y.real.dtype) * y  # only acquired samples may enter the loss

    extra = torch.sqrt(torch.clamp(sigma**2 - sigma_n**2, min=0))
    z = m_t * y + _per_example(extra, y) * A_t(noise)
    d = denoiser(A_t.adjoint(z), sigma, mask_t, A_t) if operator_input else denoiser(A_t.adjoint(z), sigma, mask_t)
    pred = A(d)
    c = _per_example(sigma_n**2 / sigma**2, y)
    pred = pred + c * m_t * (z - pred)
    err = torch.abs(pred - y) ** 2
    # Normalising by the image size (not the acquired count) keeps the minimiser and the EDM loss scale.
    return edm_weight(sigma, sigma_data) * err.flatten(1).sum(1) / noise[0].numel()


def consistency_loss(denoiser: DenoiserFn, y: torch.Tensor, sigma_n: torch.Tensor, sigma_c: torch.Tensor,
                     noise: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Martingale consistency below the data noise level (identity operator, noisy images), per example (B,).

    The Tweedie loss trains D only for σ > σ_n. Below it, D must satisfy E[x0 | x_σn] = E[ E[x0 | x_σc] | x_σn ]
    for σc < σ_n: x_σc is drawn by one ancestral (DDPM) step from the data y = x_σn towards the model's own
    x0_hat = D(y, σ_n), and D(x_σc, σc) is pulled to x0_hat (no gradient through the target). With an exact
    denoiser of a Gaussian the expected residual is zero.
    """
    s_n, s_c = _per_example(sigma_n, y), _per_example(sigma_c, y)
    with torch.no_grad():
        x0_hat = denoiser(y, sigma_n, None)
        r = (s_c / s_n) ** 2
        x_c = x0_hat + r * (y - x0_hat) + s_c * torch.sqrt(1 - r) * noise
    err = (denoiser(x_c, sigma_c, None) - x0_hat) ** 2
    return edm_weight(sigma_c, sigma_data) * err.flatten(1).mean(1)
