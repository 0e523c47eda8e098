"""The preview PNG a training run writes with each checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from ..files import save_figure
from ..model import Denoiser, apply_denoiser
from .recipe import Recipe

PREVIEW_MAX = 8  # held-out examples shown


@torch.no_grad()
def preview(model: Denoiser, data, n_train: int, r: Recipe, path: Path, device) -> None:
    """PNG: zero-filled A^H y and the one-step reconstruction D(A^H y, M, σ) of the held-back examples, at the σ
    that ``reconstruct(method="one_step")`` uses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..corruption import make_operator
    from ..sampling.policy import one_step_sigma

    idx = list(range(n_train, len(data)))[:PREVIEW_MAX]  # 290 held-out images made a 480 x 69600 PNG, one batch
    if not idx:
        return
    items = [data[i] for i in idx]
    items = [it for it in items if it["y"].shape == items[0]["y"].shape]  # one shape group (mixed widths)
    batch = {k: torch.stack([it[k] for it in items]).to(device) for k in ("y", "mask", "maps") if k in items[0]}
    A = make_operator(r.corruption.operator, batch["mask"], batch.get("maps"))
    zf = A.adjoint(batch["y"])
    rec = apply_denoiser(model, zf, one_step_sigma(model.record), batch["mask"], A)
    fig, axes = plt.subplots(len(items), 2, figsize=(6, 3 * len(items)), squeeze=False)
    for row, (a, b) in enumerate(zip(zf, rec)):
        for col, (img, title) in enumerate(((a, "input A^H y"), (b, "one-step D"))):
            im = img.abs() if img.is_complex() else img.mean(0)
            axes[row, col].imshow(im.float().cpu().numpy(), cmap="gray")
            axes[row, col].set_title(title)
            axes[row, col].axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
