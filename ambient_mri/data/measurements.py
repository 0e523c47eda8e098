"""Datasets of measurements (never clean images) and the further corruption Ã ⊂ A applied per example.

Every dataset item is a dict: ``y`` (measurement, zeros where nothing was acquired), ``mask`` (of A),
optional ``maps`` (coil maps), ``sigma_n`` (0-d float) and ``index``. ``WithFurtherCorruption`` adds
``mask_tilde``; the default collate stacks items into a batch (see ambient_mri.corruption).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import AmbientMRIError
from ..masks import further_mask


class ArrayMeasurements(Dataset):
    """In-memory measurements. y: (N, ...) tensor; mask: (N, 1, ., W) or one mask shared by all; maps optional."""

    def __init__(self, y: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None = None,
                 sigma_n: float | torch.Tensor = 0.0):
        self.y, self.maps = y, maps
        self.mask = mask if mask.shape[0] == y.shape[0] else mask.expand(y.shape[0], *mask.shape[1:])
        self.sigma_n = torch.as_tensor(sigma_n, dtype=torch.float32).expand(y.shape[0])
        if maps is not None and maps.shape[0] != y.shape[0]:
            raise AmbientMRIError(f"maps have {maps.shape[0]} examples, measurements {y.shape[0]}")

    def __len__(self) -> int:
        return self.y.shape[0]

    def __getitem__(self, i: int) -> dict:
        item = {"y": self.y[i], "mask": self.mask[i], "sigma_n": self.sigma_n[i], "index": i}
        if self.maps is not None:
            item["maps"] = self.maps[i]
        return item


class WithFurtherCorruption(Dataset):
    """Adds ``mask_tilde``: Ã ⊂ A per example, fixed (seeded by the example index, as in every anchor) or
    redrawn at each use. With neither extra_lines nor delta, Ã = A."""

    def __init__(self, base: Dataset, extra_lines: int | None = None, delta: float | None = None,
                 acs_lines: int | None = None, redraw: bool = False, seed: int = 0, kind: str | None = None):
        self.base, self.redraw, self.seed = base, redraw, seed
        self.opts = dict(extra_lines=extra_lines, delta=delta, acs_lines=acs_lines, kind=kind)
        self.active = extra_lines is not None or delta is not None

    def __len__(self) -> int:
        return len(self.base)

    @property
    def groups(self):
        """Shape group of each example (items of one group batch together), or None: all alike."""
        return getattr(self.base, "groups", None)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        if not self.active:
            item["mask_tilde"] = item["mask"]
            return item
        seed = None if self.redraw else (self.seed, 7919, int(item.get("index", i)))
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        try:
            item["mask_tilde"] = further_mask(item["mask"], seed=seed, **self.opts)
        except AmbientMRIError as e:  # e.g. acs_lines wider than this example's k-space: name the recipe section
            raise AmbientMRIError(f"corruption: {e} (the further mask Ã of training example {i})") from None
        return item
