"""Small synthetic measurement sets shared by the training and sampling tests."""

from __future__ import annotations

import numpy as np
import torch

from ambient_mri.data.measurements import ArrayMeasurements
from ambient_mri.masks import kspace_mask
from data_tools.simulate import simulate_coil_data


def blobs(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """(n, size, size) float32 phantoms: a few random ellipses of random intensity."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    out = np.zeros((n, size, size), np.float32)
    for i in range(n):
        for _ in range(3):
            cy, cx, ry, rx = rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(0.15, 0.5), \
                rng.uniform(0.15, 0.5)
            out[i] += rng.uniform(0.3, 1.0) * (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
    return out / out.max()


def multicoil_measurements(n: int = 12, size: int = 32, coils: int = 4, R: float = 3, seed: int = 0):
    """ArrayMeasurements of undersampled multi-coil k-space (zeros off-mask), per-example random masks."""
    sim = simulate_coil_data(blobs(n, size, seed), num_coils=coils, oversample=1, seed=seed)
    masks = np.stack([kspace_mask("uniform1d", (size, size), R, 0.25, seed=(seed, i)) for i in range(n)])
    mask = torch.from_numpy(masks)[:, None]                                       # (n, 1, 1, W)
    y = torch.from_numpy(sim.kspace) * mask
    maps = torch.from_numpy(sim.maps)[None].expand(n, -1, -1, -1).contiguous()
    return ArrayMeasurements(y, mask, maps), torch.from_numpy(sim.image)


TINY_NET = {"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_levels": [], "dropout": 0.0}


def tiny_recipe(tmp_path, **training) -> dict:
    t = {"steps": 4, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1,
         "device": "cpu"}
    t.update(training)
    return {"name": "tiny", "output": str(tmp_path), "network": dict(TINY_NET),
            "corruption": {"operator": "multicoil", "ambient": True, "extra_lines": 2},
            "training": t}


def job_that_dies_on_bad(args):
    """A prepare job for ``prepare._in_workers`` whose process dies (as the out-of-memory killer ends it) on a
    source named bad*; other sources are reported prepared."""
    import os
    import time
    from pathlib import Path

    from data_tools.prepare import FileResult

    if Path(args[0]).name.startswith("bad"):
        os._exit(9)
    time.sleep(0.2)
    return FileResult(args[0], "prepared")


def job_that_sleeps(args):
    """A prepare job for ``prepare._in_workers`` that takes a second."""
    import time

    from data_tools.prepare import FileResult

    time.sleep(1.0)
    return FileResult(args[0], "prepared")
