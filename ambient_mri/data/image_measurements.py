"""Image measurements: each image's fixed corruption (missing pixels, a missing box, Gaussian noise).

``ImageMeasurements`` turns images (N, C, H, W) in [-1, 1] into measurements once, at construction, and keeps only
the measurements (the clean images are not stored):

    y      (C, H, W)  mask ⊙ (x + σ_n z), zeros where a pixel is missing
    mask   (1, H, W)  1 = pixel kept (shared by the colour channels)
    sigma_n           the noise level σ_n of the example
    index             the example's index; its mask and noise are drawn from a generator seeded by it

so the same item is identical in every epoch, as the dataset convention of ``measurements.py`` requires.

With the recipe's ``data.augment`` (``augment.py``), the clean training images are augmented before they are
corrupted: each augmented copy is one more example with its own index, hence its own mask and noise. The last
``data.holdout`` images (the preview's examples) are not augmented and stay last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import torch

from ..errors import AmbientMRIError
from ..masks import pixel_mask, seed_from
from .augment import AugmentConfig, augment_images
from .images import ImageSet, load_images
from .measurements import ArrayMeasurements

_TAG = 104729  # separates the data-corruption streams from other seeded streams of the package


def box_mask(shape, box: int, seed=None) -> np.ndarray:
    """(H, W) float32 mask that is 1 except for one missing ``box`` x ``box`` square at a seeded position."""
    H, W = (int(s) for s in shape)
    if not isinstance(box, (int, np.integer)) or isinstance(box, bool) or not 1 <= box <= min(H, W):
        raise AmbientMRIError(f"box side must be an integer in [1, {min(H, W)}], got {box!r}")
    rng = np.random.RandomState(seed_from(seed))
    top, left = rng.randint(0, H - box + 1), rng.randint(0, W - box + 1)
    m = np.ones((H, W), np.float32)
    m[top: top + box, left: left + box] = 0
    return m


def check_corruption(p: float = 0.0, box: int | None = None, sigma_n: float = 0.0) -> None:
    if not 0 <= p < 1:
        raise AmbientMRIError(f"missing-pixel probability p must be in [0, 1), got {p}")
    if sigma_n < 0 or not np.isfinite(sigma_n):
        raise AmbientMRIError(f"noise level sigma_n must be >= 0, got {sigma_n}")
    if box is not None and (isinstance(box, bool) or not isinstance(box, (int, np.integer)) or box < 1):
        raise AmbientMRIError(f"box must be a positive integer (side of the missing square), got {box!r}")


def image_corruption_mask(index: int, shape, p: float = 0.0, box: int | None = None, seed: int = 0) -> np.ndarray:
    """The (H, W) acquisition mask of example ``index``: pixels missing with probability p and/or a missing box."""
    m = pixel_mask(shape, p, seed=(seed, _TAG, int(index), 0)) if p > 0 else np.ones(tuple(shape), np.float32)
    if box is not None:
        m = m * box_mask(shape, box, seed=(seed, _TAG, int(index), 1))
    return m


def corrupt_images(images, p: float = 0.0, box: int | None = None, sigma_n: float = 0.0, seed: int = 0,
                   start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """y = mask ⊙ (x + σ_n z) and mask (N, 1, H, W) for images (N, C, H, W) in [-1, 1]; example i uses the
    generators seeded by (seed, start + i): the same image index always gets the same mask and noise."""
    check_corruption(p, box, sigma_n)
    x = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, np.float32)
    if x.ndim != 4:
        raise AmbientMRIError(f"expected images (N, C, H, W), got shape {x.shape}")
    N, C, H, W = x.shape
    y = np.empty_like(x)
    mask = np.empty((N, 1, H, W), np.float32)
    for i in range(N):
        k = start + i
        mask[i, 0] = image_corruption_mask(k, (H, W), p, box, seed)
        noisy = x[i]
        if sigma_n > 0:
            noisy = noisy + sigma_n * np.random.RandomState((seed, _TAG, k, 2)).standard_normal((C, H, W))
        y[i] = mask[i] * noisy
    return torch.from_numpy(y), torch.from_numpy(mask)


class ImageMeasurements(ArrayMeasurements):
    """Measurements of images (see the module docstring): built once from clean images, which are then dropped.

    ``images``: an ImageSet or an array (N, C, H, W) in [-1, 1]. ``labels`` and ``info()`` travel with it.
    """

    def __init__(self, images, p: float = 0.0, box: int | None = None, sigma_n: float = 0.0, seed: int = 0,
                 info: dict | None = None):
        check_corruption(p, box, sigma_n)
        iset = images if isinstance(images, ImageSet) else ImageSet(np.asarray(images, np.float32))
        if iset.images.ndim != 4 or len(iset) == 0:
            raise AmbientMRIError(f"expected a non-empty image array (N, C, H, W), got {iset.images.shape}")
        y, mask = corrupt_images(iset.images, p, box, sigma_n, seed)
        empty = np.flatnonzero(mask.flatten(1).sum(1).numpy() == 0)
        if empty.size:  # a box covering the image, or p near 1: the loss is 0 and the model learns nothing
            raise AmbientMRIError(f"{empty.size} of {len(mask)} examples keep no pixel (box {box}, p {p} on "
                                  f"{tuple(mask.shape[-2:])} images): lower corruption.p or corruption.box")
        super().__init__(y, mask, sigma_n=float(sigma_n))
        self.labels, self.names = list(iset.labels), list(iset.names)
        self.p, self.box, self.sigma_n_value, self.seed = float(p), box, float(sigma_n), seed
        self._info = dict(info or {})
        self._info.setdefault("source", iset.source)
        self._digest = hashlib.sha256(self.y.numpy().tobytes()).hexdigest()

    def info(self) -> dict:
        """What a model file records about its training data (plain Python values)."""
        N, C, H, W = self.y.shape
        kind = "+".join(k for k, on in (("pixels", self.p > 0), ("box", self.box is not None)) if on) or "none"
        return {**self._info, "num_images": int(N), "image_shape": [int(C), int(H), int(W)],
                "value_range": [-1.0, 1.0], "mask": {"kind": kind, "p": self.p, "box": self.box},
                "sigma_n": self.sigma_n_value, "corruption_seed": self.seed,
                "kept_fraction": float(self.mask.float().mean()),
                # the measurements themselves: a resume on other images with the same shape and masks is refused
                "content_sha256": self._digest}


def augment_image_set(iset: ImageSet, settings: AugmentConfig, holdout: int = 0, seed: int = 0) -> ImageSet:
    """Clean images (N, C, H, W) -> [the first N - holdout images, their augmented copies (copy 1 of each, then
    copy 2, ...), the last ``holdout`` images]: (N + copies * (N - holdout), C, H, W). Labels follow the images;
    a copy's name is its original's with ``~augK`` appended. ``augment_images`` draws the copies."""
    n = len(iset) - max(int(holdout), 0)
    if settings.copies == 0 or n <= 0:
        return iset
    x = iset.images
    images = np.concatenate([augment_images(x[:n], settings, seed=seed), x[n:]])

    def spread(items: list, tag) -> list:
        if len(items) != len(iset):
            return list(items)
        head = [tag(v, k) for k in range(settings.copies + 1) for v in items[:n]]
        return head + list(items[n:])

    return ImageSet(images.astype(np.float32, copy=False), spread(iset.labels, lambda v, k: v),
                    spread(iset.names, lambda v, k: v if k == 0 else f"{v}~aug{k}"), iset.source)


def build_image_measurements(recipe) -> ImageMeasurements:
    """The recipe's image data (data.kind images | faces | mnist) with its augmentation (if any) and corruption
    sections applied."""
    d, c = recipe.data, recipe.corruption
    iset = load_images(d.kind, d.image_size, d.grayscale, d.resize, d.limit, path=d.path)
    info = {"kind": d.kind, "image_size": list(iset.images.shape[-2:]), "grayscale": d.grayscale,
            "resize": d.resize, "limit": d.limit}
    if d.kind == "images":
        info["path"] = os.path.realpath(d.path)  # absolute: `sample` checks its --output against it from anywhere
    aug = getattr(d, "augment", None) or AugmentConfig()
    if aug.copies > 0:
        num_originals = len(iset)
        iset = augment_image_set(iset, aug, holdout=d.holdout, seed=0)
        info["augment"] = {**dataclasses.asdict(aug), "seed": 0, "num_originals": num_originals}
    return ImageMeasurements(iset, p=c.p, box=c.box, sigma_n=c.sigma_n, info=info)
