"""The diffusion prior as samplers use it: D(x, σ) through a fixed Ã (ambient models), counting evaluations."""

from __future__ import annotations

import numpy as np
import torch

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


def ambient_sigma_floor(info: dict) -> float:
    """Smallest σ a sampler should use with a model trained on further-corrupted data (0 for other models).

    EDM preconditioning gives D = c_skip x_in + c_out F with c_out -> 0 as σ -> 0. An ambient network's input
    Ã^H Ã x lacks what Ã did not see, so at small σ D returns its masked input and cannot add the missing content
    (samples of an ambient face model looked like masked photos at σ_min = 0.002). Its training σ follow
    ln σ ~ N(P_mean, P_std²); samplers stop at the median, exp(P_mean) (0.30 for EDM's defaults), and return
    D there. On the demo and face models: faces at σ_min 0.2 have the clean photos' noise level (0.026 vs 0.028)
    where 0.002 gave masked images; MRI fast +0.5 dB at R = 4 (docs/reconstruction.md)."""
    return training_sigma(info, 0.0) if info.get("ambient") else 0.0


def one_step_sigma(info: dict) -> float:
    """σ for A-OS: the anchor's 0.003 assumes a model trained down to that level; ours train ln σ ~ N(P_mean,
    P_std²), so use the lower 2.3% quantile exp(P_mean - 2 P_std) (0.027 for EDM's defaults), never below 0.003.
    At a σ the model never saw, D(x) is just x: c_skip -> 1 and F is untrained there."""
    return max(0.003, training_sigma(info, -2.0))


def training_sigma(info: dict, z: float) -> float:
    """exp(P_mean + z P_std): the σ at z standard deviations of the model's training σ distribution (ln σ normal;
    EDM's P_mean -1.2, P_std 1.2 when the model file does not record them)."""
    t = (info.get("recipe") or {}).get("training", {})
    return float(np.exp(t.get("P_mean", -1.2) + z * t.get("P_std", 1.2)))


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
               device=None) -> torch.Tensor:
    """EDM's noise levels σ_0 > ... > σ_{N-1} = σ_min, with σ_N = 0 appended: (steps + 1,) float64."""
    i = torch.arange(steps, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + i / max(steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)]).to(device)


def randn_like_image(shape, dtype, generator: torch.Generator, device) -> torch.Tensor:
    """N(0, I) noise drawn on the CPU from ``generator`` (same numbers on any device), complex if dtype is."""
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)
