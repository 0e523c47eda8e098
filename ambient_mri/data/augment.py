"""Augmentation of the clean images that simulated training examples are made from, done once at build time.

Ambient training must never show the model two different corruptions of one clean image, and no clean image may
reach the loss. So augmentation is not a per-step transform of training batches: ``augment_images`` runs once,
where a data set is built from clean images (``data.image_measurements`` for image recipes,
``data_tools.demo.build_demo`` for the MRI demo), and every augmented copy becomes a new training example that is
then corrupted exactly once (its own mask and noise), like a new subject. Real fastMRI k-space has no clean image
to augment, so prepared MRI data cannot be augmented.

Copy ``k`` (1..copies) of image ``i`` is drawn from a generator seeded by (seed, i, k), so the result does not
depend on how many images are augmented together. In order, a copy is

    flipped        odd-numbered copies are mirrored left-right (last axis), when ``flip`` is on
    deformed       one interpolation (scipy.ndimage.map_coordinates, bilinear, edge values outside) through a
                   random rotation, scale and shift about the centre plus a smooth random displacement field
    intensity      a gamma curve: complex images |x| -> max|x| (|x| / max|x|)^γ with the phase kept; real images
                   (x - lo) / (hi - lo) -> its γ-th power on [lo, hi] = [min, max] of the image; monotone
    phase          complex images only: multiplied by exp(i φ), φ a random smooth (quadratic) phase

Bilinear interpolation and the gamma curve keep every value inside the image's own range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from ..errors import AmbientMRIError

_TAG = 7919  # separates the augmentation streams from the other seeded streams of the package


# Upper bounds that only keep absurd values from hanging or overflowing (1e8 copies ran for minutes with no word; an
# elastic smoothness of 1e300 failed inside scipy): far above any useful setting.
MAX_COPIES = 1000
MAX_PIXELS = 4096.0


@dataclass
class AugmentConfig:
    """Augmentation settings (the recipe's ``data.augment``; ``build_demo(augment=...)``). Default: off."""

    copies: int = 0                 # augmented copies per image, added after the originals; 0 = off
    flip: bool = False              # mirror odd-numbered copies left-right
    rotate: float = 0.0             # affine: largest rotation in degrees (uniform in [-rotate, rotate])
    scale: float = 0.0              # affine: largest relative scale change (factor uniform in [1-scale, 1+scale])
    shift: float = 0.0              # affine: largest shift per axis as a fraction of the image side
    elastic: float = 0.0            # elastic: largest displacement in pixels (0 = none)
    elastic_smoothness: float = 4.0  # elastic: std in pixels of the Gaussian that smooths the displacement field
    gamma: list[float] = field(default_factory=lambda: [1.0, 1.0])  # intensity curve: γ log-uniform in [lo, hi]
    phase: bool = False             # random smooth phase (complex MRI images only)

    @classmethod
    def from_dict(cls, values: dict | None) -> AugmentConfig:
        """Settings from a plain mapping (unknown keys refused by name); ``None`` gives the defaults (off)."""
        values = dict(values or {})
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                raise AmbientMRIError(f"unknown augmentation setting {key!r}; allowed: {', '.join(known)}")
        return cls(**values)

    def random_transforms(self) -> list[str]:
        """Names of the settings that make each copy different at random (flip alone is not random)."""
        lo, hi = self.gamma if len(self.gamma) == 2 else (1.0, 1.0)
        on = {"rotate": self.rotate > 0, "scale": self.scale > 0, "shift": self.shift > 0,
              "elastic": self.elastic > 0, "gamma": hi > lo, "phase": self.phase}
        return [k for k, v in on.items() if v]

    def problems(self) -> list[tuple[str, object, str]]:
        """[(setting, value, what it must be)] for every setting that cannot be used; empty when all are fine."""
        g = list(self.gamma)
        out = []
        checks = [
            ("copies", self.copies, isinstance(self.copies, (int, np.integer)) and not isinstance(self.copies, bool)
             and 0 <= self.copies <= MAX_COPIES, f"an integer in [0, {MAX_COPIES}]"),
            ("rotate", self.rotate, 0 <= self.rotate <= 180, "in [0, 180] degrees"),
            ("scale", self.scale, 0 <= self.scale < 1, "in [0, 1)"),
            ("shift", self.shift, 0 <= self.shift <= 0.5, "in [0, 0.5] (a fraction of the image side)"),
            ("elastic", self.elastic, 0 <= self.elastic <= MAX_PIXELS, f"in [0, {MAX_PIXELS}] (pixels)"),
            ("elastic_smoothness", self.elastic_smoothness, 0 < self.elastic_smoothness <= MAX_PIXELS,
             f"in (0, {MAX_PIXELS}] (pixels)"),
            ("gamma", g, len(g) == 2 and all(math.isfinite(v) for v in g) and 0 < g[0] <= g[1],
             "two numbers lo <= hi, both > 0 ([1, 1] = no intensity curve)"),
        ]
        out += [(k, v, rule) for k, v, ok, rule in checks if not ok]
        if out or self.copies == 0:
            return out
        # Copies that equal their original (or each other) would be one clean image corrupted twice.
        if not self.random_transforms():
            if not self.flip:
                out.append(("copies", self.copies, "0 when no transform is on: a copy would be its original "
                            "again, and the model would see two corruptions of one clean image; switch on flip, "
                            "rotate, scale, shift, elastic, gamma or phase"))
            elif self.copies > 1:
                out.append(("copies", self.copies, "at most 1 when flip is the only transform: further copies "
                            "would repeat the original or its mirror image exactly"))
        return out

    def check(self, where: str = "augment", error: type[AmbientMRIError] = AmbientMRIError) -> None:
        """Raise ``error`` naming ``where.setting`` for the first unusable setting."""
        for key, value, rule in self.problems():
            raise error(f"{where}.{key}: must be {rule}, got {value!r}")


def smooth_phase(
    num_slices: int, shape: tuple[int, int], rng: np.random.Generator, order: int = 2
) -> np.ndarray:
    """(S, H, W) float32 phase: per slice, a random polynomial of degree ``order`` in y, x over [-1, 1]."""
    y = np.linspace(-1.0, 1.0, shape[0], dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, shape[1], dtype=np.float32)[None, :]
    powers = [(i, d - i) for d in range(order + 1) for i in range(d + 1)]  # y^i x^j, i + j <= order
    basis = np.stack([np.broadcast_to(y**i * x**j, shape) for i, j in powers])  # (T, H, W)
    degree = np.array([i + j for i, j in powers])
    # Constant offset anywhere on the circle; higher orders shrink so the phase stays smooth.
    scale = np.where(degree == 0, np.pi, 1.0 / np.maximum(degree, 1)).astype(np.float32)
    coeffs = rng.standard_normal((num_slices, len(powers))).astype(np.float32) * scale
    return np.einsum("st,thw->shw", coeffs, basis).astype(np.float32)


def sample_coordinates(shape: tuple[int, int], settings: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """(2, H, W) float64 input coordinates (row, column) each output pixel is read from: a random rotation,
    scale and shift about the image centre, plus a smooth displacement field of largest length ``elastic``."""
    from scipy.ndimage import gaussian_filter

    s = settings
    H, W = shape
    theta = math.radians(rng.uniform(-s.rotate, s.rotate))
    factor = rng.uniform(1 - s.scale, 1 + s.scale)
    shift = rng.uniform(-s.shift, s.shift, size=2) * np.array([H, W])
    centre = np.array([(H - 1) / 2, (W - 1) / 2])
    # Output pixel p shows the input at A (p - centre - shift) + centre, A the inverse rotation and scale.
    a = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]]) / factor
    grid = np.stack(np.meshgrid(np.arange(H), np.arange(W), indexing="ij")).astype(np.float64)
    coords = np.einsum("ij,jhw->ihw", a, grid - (centre + shift)[:, None, None]) + centre[:, None, None]
    if s.elastic > 0:
        sigma = (0, s.elastic_smoothness, s.elastic_smoothness)
        displacement = gaussian_filter(rng.standard_normal((2, H, W)), sigma=sigma)
        length = np.sqrt((displacement**2).sum(0)).max()
        coords += displacement * (s.elastic / length if length > 0 else 0.0)
    return coords


def _warp(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """(C, H, W) image read at (2, H, W) coordinates, bilinear, edge values outside; same dtype."""
    from scipy.ndimage import map_coordinates

    return np.stack([map_coordinates(c, coords, order=1, mode="nearest") for c in image]).astype(image.dtype)


def intensity_curve(image: np.ndarray, gamma: float) -> np.ndarray:
    """A monotone gamma curve on one (C, H, W) image (module docstring); the image's range is kept."""
    if gamma == 1:
        return image
    if np.iscomplexobj(image):
        mag = np.abs(image)
        top = mag.max()
        if top == 0:
            return image
        u = mag / top
        gain = np.where(u > 0, np.power(np.maximum(u, 1e-30), gamma - 1), 0.0)
        return (image * gain).astype(image.dtype)
    lo, hi = image.min(), image.max()
    if hi <= lo:
        return image
    return (lo + (hi - lo) * np.power((image - lo) / (hi - lo), gamma)).astype(image.dtype)


def augment_one(image: np.ndarray, copy: int, settings: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Copy number ``copy`` (1-based) of one (C, H, W) image, drawn with ``rng`` (module docstring)."""
    s = settings
    out = image[..., ::-1].copy() if s.flip and copy % 2 == 1 else image.copy()
    if s.rotate > 0 or s.scale > 0 or s.shift > 0 or s.elastic > 0:
        out = _warp(out, sample_coordinates(out.shape[-2:], s, rng))
    lo, hi = s.gamma
    if hi > lo:
        out = intensity_curve(out, float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
    if s.phase:
        out = (out * np.exp(1j * smooth_phase(1, out.shape[-2:], rng))).astype(image.dtype)
    return out


def augment_images(images: np.ndarray, settings: AugmentConfig | dict | None, seed: int = 0) -> np.ndarray:
    """Images (N, H, W) or (N, C, H, W), real or complex -> (N * (1 + copies), ...) of the same dtype: the
    originals unchanged, then copy 1 of every image, then copy 2, ...: ``out[k * N + i]`` is copy k of image i.

    Channels share one transform. Deterministic for ``seed`` (a non-negative integer): copy k of image i depends
    only on (seed, i, k) and the settings. ``phase`` is refused for real images.
    """
    s = settings if isinstance(settings, AugmentConfig) else AugmentConfig.from_dict(settings)
    s.check()
    x = np.asarray(images)
    if x.ndim not in (3, 4) or x.shape[0] == 0 or min(x.shape[-2:]) < 2:
        raise AmbientMRIError(f"augment_images expects images (N, H, W) or (N, C, H, W), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.iscomplexobj(x)):
        raise AmbientMRIError(f"augment_images expects float or complex images, got dtype {x.dtype}")
    if s.phase and not np.iscomplexobj(x):
        raise AmbientMRIError("augment.phase: a random smooth phase applies only to complex (MRI) images; these "
                              "images are real-valued (magnitude or intensity) and have no phase to vary: switch "
                              "phase off")
    if not np.isfinite(x).all():
        raise AmbientMRIError("augment_images: the images contain NaN or Inf")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise AmbientMRIError(f"augment_images: seed must be a non-negative integer, got {seed!r}")
    if s.copies == 0:
        return x.copy()
    planes = x if x.ndim == 4 else x[:, None]
    copies = [planes]
    for k in range(1, s.copies + 1):
        copies.append(np.stack([augment_one(img, k, s, np.random.default_rng((int(seed), _TAG, i, k)))
                                for i, img in enumerate(planes)]))
    out = np.concatenate(copies)
    if not np.isfinite(out).all():  # e.g. an elastic field too large for float32 arithmetic
        raise AmbientMRIError("augment_images: the augmented images contain NaN or Inf; lower the transform sizes")
    same = [k for k in range(1, s.copies + 1) for i in range(len(planes)) if np.array_equal(copies[k][i], planes[i])]
    if same:  # transforms too small to change a pixel (rotate 1e-300): a clean image would be corrupted twice
        raise AmbientMRIError(f"augment_images: {len(same)} augmented copies equal their original image exactly "
                              "(the transforms are too small to change a pixel); make them larger or set copies: 0")
    return out if x.ndim == 4 else out[:, 0]
