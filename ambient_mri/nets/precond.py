"""EDM preconditioning (Karras et al. 2022) around the UNet, and a builder from a plain config dict."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import RecipeError
from .unet import UNet

# sigma below this is clamped for c_noise only, so D(x, 0) = x instead of NaN from log(0)
_SIGMA_MIN_NOISE = 1e-12


class EDMPrecond(nn.Module):
    """D(x; σ) = c_skip x + c_out F([c_in x, cond], c_noise).

    ``forward(x, sigma, cond=None)``: x (B, img_channels, H, W); sigma float, 0-d or (B,) tensor;
    cond (B, cond_channels, H, W) extra channels (e.g. mask of Ã, ones) fed to F unscaled.
    Returns float32 (B, img_channels, H, W), also under autocast.
    """

    def __init__(self, net: UNet, sigma_data: float = 0.5, img_channels: int = 2, cond_channels: int = 0):
        super().__init__()
        if net.in_channels != img_channels + cond_channels or net.out_channels != img_channels:
            raise ValueError(f"net maps {net.in_channels}->{net.out_channels} channels, expected "
                             f"{img_channels + cond_channels}->{img_channels}")
        self.net, self.sigma_data = net, float(sigma_data)
        self.img_channels, self.cond_channels = img_channels, cond_channels

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.img_channels:
            raise ValueError(f"x must be (B, {self.img_channels}, H, W), got {tuple(x.shape)}")
        if (cond is None) != (self.cond_channels == 0):
            raise ValueError(f"denoiser built with cond_channels={self.cond_channels}, "
                             f"cond {'missing' if cond is None else 'given'}")
        b = x.shape[0]
        x = x.float()
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(b)
        if sigma.numel() != b:
            raise ValueError(f"sigma must be a scalar or have B={b} entries, got {sigma.numel()}")
        s = sigma.reshape(b, 1, 1, 1)
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (s ** 2 + sd2)
        c_out = s * self.sigma_data / (s ** 2 + sd2).sqrt()
        c_in = 1 / (sd2 + s ** 2).sqrt()
        c_noise = sigma.clamp_min(_SIGMA_MIN_NOISE).log() / 4
        inp = c_in * x
        if cond is not None:
            if cond.ndim != 4 or cond.shape[1] != self.cond_channels or cond.shape[0] != b \
                    or cond.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"cond must be ({b}, {self.cond_channels}, {x.shape[2]}, {x.shape[3]}), "
                                 f"got {tuple(cond.shape)}")
            inp = torch.cat([inp, cond.to(inp.dtype)], dim=1)
        f = self.net(inp, c_noise)
        return c_skip * x + c_out * f.float()


def denoiser_config_defaults() -> dict[str, Any]:
    """Default denoiser config: DDPM++, MRI anchor size; attention at level 2 (16x16 for 64x64 input)."""
    return dict(img_channels=2, cond_channels=0, model_channels=128, channel_mult=(1, 2, 2, 2), num_blocks=4,
                attn_levels=(2,), dropout=0.1, sigma_data=0.5)


def build_denoiser(config: dict[str, Any] | None = None) -> EDMPrecond:
    """EDMPrecond(UNet) from a plain dict; missing keys take defaults, unknown keys raise ValueError."""
    cfg = denoiser_config_defaults()
    for key, value in (config or {}).items():
        if key not in cfg:
            raise RecipeError(f"unknown denoiser config key {key!r}; allowed: {sorted(cfg)}")
        cfg[key] = value
    net = UNet(in_channels=cfg["img_channels"] + cfg["cond_channels"], out_channels=cfg["img_channels"],
               model_channels=cfg["model_channels"], channel_mult=tuple(cfg["channel_mult"]),
               num_blocks=cfg["num_blocks"], attn_levels=tuple(cfg["attn_levels"]), dropout=cfg["dropout"])
    return EDMPrecond(net, sigma_data=cfg["sigma_data"], img_channels=cfg["img_channels"],
                      cond_channels=cfg["cond_channels"])


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with requires_grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ["EDMPrecond", "build_denoiser", "count_parameters", "denoiser_config_defaults"]
