"""Complex images <-> real channel stacks, the form the network sees."""

from __future__ import annotations

import torch


def complex_to_channels(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) complex -> (B, 2, H, W) real [re, im]; (B, C, H, W) complex -> (B, 2C, H, W) real.

    For C > 1 the layout is [re_0, im_0, re_1, im_1, ...], so channel pairs stay adjacent.
    """
    if not torch.is_complex(x):
        raise ValueError(f"complex_to_channels expects a complex tensor, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"complex_to_channels expects (B,H,W) or (B,C,H,W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    # view_as_real gives (..., 2) last; move it next to C so pairs interleave.
    return torch.view_as_real(x).permute(0, 1, 4, 2, 3).reshape(b, 2 * c, h, w).contiguous()


def channels_to_complex(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) real -> (B, H, W) complex; (B, 2C, H, W) real -> (B, C, H, W) complex for C > 1.

    Inverse of :func:`complex_to_channels`.
    """
    if torch.is_complex(x) or x.ndim != 4 or x.shape[1] % 2:
        raise ValueError(f"channels_to_complex expects real (B,2C,H,W), got {tuple(x.shape)} {x.dtype}")
    b, c2, h, w = x.shape
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # view_as_complex has no half-precision support on all backends
    z = torch.view_as_complex(x.reshape(b, c2 // 2, 2, h, w).permute(0, 1, 3, 4, 2).contiguous())
    return z[:, 0] if c2 == 2 else z
