"""DDPM++-style UNet (after EDM's SongUNet with the DDPM++ settings), for any image size.

Attention placement is given by *level* index: level ``i`` works on feature maps downsampled by ``2**i``
(level 0 = full resolution). For a 64x64 input, level 2 is 16x16. Levels keep the meaning for any H, W.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _groups(channels: int) -> int:
    """GroupNorm group count: 32 for wide layers, fewer for narrow ones, always a divisor of channels."""
    g = max(1, min(32, channels // 4))
    while channels % g:
        g -= 1
    return g


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels, eps=1e-6)


def _init(layer: nn.Module, scale: float = 1.0) -> nn.Module:
    """Xavier-uniform weights scaled by ``scale``, zero bias (EDM's DDPM++ init; scale 1e-5 = 'init_zero')."""
    nn.init.xavier_uniform_(layer.weight)
    with torch.no_grad():
        layer.weight.mul_(scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar per example: (B,) -> (B, num_channels)."""

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        half = num_channels // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().reshape(-1, 1) * self.freqs.reshape(1, -1)
        return torch.cat([x.sin(), x.cos()], dim=1)


class Block(nn.Module):
    """Residual block: GroupNorm-SiLU-conv, noise embedding added (or scale/shift), optional resample by 2
    and single-head self-attention. (B, cin, H, W), (B, E) -> (B, cout, H', W')."""

    def __init__(self, cin: int, cout: int, emb_channels: int, dropout: float, resample: str | None = None,
                 attention: bool = False, adaptive_scale: bool = False, num_heads: int = 1):
        super().__init__()
        self.resample, self.adaptive_scale, self.num_heads = resample, adaptive_scale, num_heads
        self.norm0 = _norm(cin)
        self.conv0 = _init(nn.Conv2d(cin, cout, 3, padding=1))
        self.affine = _init(nn.Linear(emb_channels, cout * (2 if adaptive_scale else 1)))
        self.norm1 = _norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _init(nn.Conv2d(cout, cout, 3, padding=1), 1e-5)  # block starts near identity
        self.skip = _init(nn.Conv2d(cin, cout, 1)) if (cin != cout or resample) else None
        self.attention = attention
        if attention:
            self.norm2 = _norm(cout)
            self.qkv = _init(nn.Conv2d(cout, cout * 3, 1))
            self.proj = _init(nn.Conv2d(cout, cout, 1), 1e-5)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        # resample between the activation and conv0 so the conv runs at the output resolution
        x = self.conv0(self._resample(F.silu(self.norm0(x))))
        params = self.affine(emb).unsqueeze(-1).unsqueeze(-1).to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(self.dropout(x))
        skip = self._resample(orig)
        x = (x + (self.skip(skip) if self.skip is not None else skip)) * math.sqrt(0.5)
        if self.attention:
            b, c, h, w = x.shape
            qkv = self.qkv(self.norm2(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
            q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, C/heads)
            a = F.scaled_dot_product_attention(q, k, v)
            x = (x + self.proj(a.transpose(-1, -2).reshape(b, c, h, w))) * math.sqrt(0.5)
        return x


class UNet(nn.Module):
    """DDPM++ UNet. ``forward(x, noise_labels)``: (B, in_channels, H, W), (B,) -> (B, out_channels, H, W).

    Any H, W: the input is zero-padded (bottom/right) to a multiple of ``2**(len(channel_mult)-1)`` and the
    output is cropped back. ``attn_levels`` are level indices (see module docstring); the bottleneck block
    at the lowest level always has attention, as in DDPM++.
    """

    def __init__(self, in_channels: int, out_channels: int, model_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 2, 2, 2), num_blocks: int = 4,
                 attn_levels: Sequence[int] = (2,), dropout: float = 0.1, adaptive_scale: bool = False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_levels = len(channel_mult)
        emb = model_channels * 4
        self.map_noise = PositionalEmbedding(model_channels)
        self.map0 = _init(nn.Linear(model_channels, emb))
        self.map1 = _init(nn.Linear(emb, emb))
        kw = dict(emb_channels=emb, dropout=dropout, adaptive_scale=adaptive_scale)
        attn = set(attn_levels)

        self.conv_in = _init(nn.Conv2d(in_channels, model_channels, 3, padding=1))
        self.enc = nn.ModuleList()
        skips, c = [model_channels], model_channels
        for level, mult in enumerate(channel_mult):
            if level > 0:
                self.enc.append(Block(c, c, resample="down", **kw))
                skips.append(c)
            for _ in range(num_blocks):
                self.enc.append(Block(c, model_channels * mult, attention=level in attn, **kw))
                c = model_channels * mult
                skips.append(c)

        # decoder entries are (block, takes_skip); every encoder output is consumed exactly once
        self.dec = nn.ModuleList()
        self.dec_takes_skip: list[bool] = []
        for level in reversed(range(self.num_levels)):
            if level == self.num_levels - 1:  # bottleneck pair; as in DDPM++, its attention is always on
                self._add_dec(Block(c, c, attention=True, **kw), False)
                self._add_dec(Block(c, c, **kw), False)
            else:
                self._add_dec(Block(c, c, resample="up", **kw), False)
            for i in range(num_blocks + 1):
                cout = model_channels * channel_mult[level]
                use_attn = i == num_blocks and level in attn
                self._add_dec(Block(c + skips.pop(), cout, attention=use_attn, **kw), True)
                c = cout
        assert not skips
        self.norm_out = _norm(c)
        self.conv_out = _init(nn.Conv2d(c, out_channels, 3, padding=1), 1e-5)  # as EDM: output starts ~0

    def _add_dec(self, block: Block, takes_skip: bool) -> None:
        self.dec.append(block)
        self.dec_takes_skip.append(takes_skip)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor | float) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = 2 ** (self.num_levels - 1)
        x = F.pad(x, (0, -w % m, 0, -h % m))
        noise_labels = torch.as_tensor(noise_labels, device=x.device).reshape(-1)
        if noise_labels.numel() == 1:
            noise_labels = noise_labels.expand(x.shape[0])
        emb = F.silu(self.map1(F.silu(self.map0(self.map_noise(noise_labels)))))

        x = self.conv_in(x)
        skips = [x]
        for block in self.enc:
            x = block(x, emb)
            skips.append(x)
        for block, takes_skip in zip(self.dec, self.dec_takes_skip):
            if takes_skip:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        x = self.conv_out(F.silu(self.norm_out(x)))
        return x[..., :h, :w]
