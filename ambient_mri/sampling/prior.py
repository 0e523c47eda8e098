"""The diffusion prior as samplers use it: D(x, σ) through a fixed Ã (ambient models), counting evaluations."""

from __future__ import annotations

import torch

from ..errors import AmbientMRIError
from ..model import apply_denoiser
from ..operators import LinearOperator


class Prior:
    """Wraps a Denoiser. For an ambient model the network sees Ã^H Ã x and the mask of Ã (fixed per trajectory);
    for a clean model it sees x. ``nfe`` counts network evaluations."""

    def __init__(self, model, A_tilde: LinearOperator | None = None, mask_tilde: torch.Tensor | None = None):
        self.model, self.A_tilde, self.mask_tilde = model, A_tilde, mask_tilde
        self.nfe = 0

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        self.nfe += 1
        inp = self.A_tilde.normal(x) if self.A_tilde is not None else x
        return apply_denoiser(self.model, inp, sigma, self.mask_tilde, self.A_tilde)


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
               device=None) -> torch.Tensor:
    """EDM's noise levels σ_0 > ... > σ_{N-1} = σ_min, with σ_N = 0 appended: (steps + 1,) float64."""
    if sigma_min > sigma_max:  # also where one of them is a default (a model's σ floor) and the other given
        raise AmbientMRIError(f"sigma_min ({sigma_min:g}) is above sigma_max ({sigma_max:g}); one of them may be the "
                              "model's default: give both")
    i = torch.arange(steps, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + i / max(steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)]).to(device)


def randn_like_image(shape, dtype, generator: torch.Generator, device) -> torch.Tensor:
    """N(0, I) noise drawn on the CPU from ``generator`` (same numbers on any device), complex if dtype is."""
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)
