"""Unconditional generation: EDM's Heun (2nd order) or Euler sampler, deterministic for a seed."""

from __future__ import annotations

import torch
from tqdm import tqdm

from .prior import Prior, edm_sigmas, randn_like_image


@torch.no_grad()
def generate(prior: Prior, shape: tuple[int, ...], steps: int = 18, sigma_min: float = 0.002,
             sigma_max: float = 80.0, heun: bool = True, seed: int = 0, dtype=torch.float32, device=None,
             progress: bool = False) -> torch.Tensor:
    """Samples of shape ``shape`` (batch first). An ambient prior keeps one Ã for the whole trajectory."""
    g = torch.Generator().manual_seed(seed)
    sig = edm_sigmas(steps, sigma_min, sigma_max, device="cpu")
    x = randn_like_image(shape, dtype, g, device) * float(sig[0])
    for i in tqdm(range(steps), disable=not progress, desc="generate"):
        s, s_next = float(sig[i]), float(sig[i + 1])
        d = (x - prior.denoise(x, s)) / s
        x_next = x + (s_next - s) * d
        if heun and s_next > 0:
            d2 = (x_next - prior.denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d2)
        x = x_next
    return x
