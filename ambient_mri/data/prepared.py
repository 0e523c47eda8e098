"""The prepared-volume format (``ambient_mri.prepared/1``) and ``PreparedSlices``, the training dataset over it.

One prepared HDF5 file = one volume, written by ``ambient-mri prepare fastmri`` (data_tools/prepare.py).
It holds only what was acquired, plus what was computed from it:

    kspace   (S, C, H, L) complex64  the acquired k-space columns (after the readout crop and coil compression),
                                     not normalised; columns past a slice's line count are zero
    lines    (S, L) int32            column index (0..W-1) of each stored column; -1 pads slices with fewer lines
    mask     (S, W) float32          1 on the acquired columns
    maps     (S, C, H, W) complex64  ESPIRiT maps from the calibration (ACS) columns only
    scale    (S,) float32            intensity scale (``SCALE_RULE``); training divides k-space by it
    attrs    format, width = W, image_shape, source, name, split, mask_kind, acceleration, center_fraction,
             per_slice_mask, seed_rule, achieved_acceleration (mean), achieved_acceleration_per_slice (S,),
             acs_lines, calib_width (S,), kernel_width (S,), coils, coils_original, readout_rows_original,
             recon_size, padding, acquisition, scale_rule, settings (JSON of the preparation options),
             package_version

Validation/test references (fully-sampled data) live in a separate folder ``<split>_reference`` that
``PreparedSlices`` never opens.

The per-slice math (``data.calibration.prepare_slice``: readout crop, coil compression from ACS, ESPIRiT, scale) is
shared with reconstruction, so a new acquisition is normalised exactly as the training data were.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import H5_DAMAGE, AmbientMRIError, DataFileError
from .calibration import zero_filled

FORMAT = "ambient_mri.prepared/1"
REFERENCE_FORMAT = "ambient_mri.reference/1"
SCALE_RULE = (
    "scale = 99th percentile over all H x W pixels of |sum_c conj(S_c) x_c / sum_c |S_c|^2|, where x_c = "
    "ifft2c of coil c's calibration block (the calib_width fully acquired centre columns of the acquired, "
    "readout-cropped, coil-compressed k-space; zero elsewhere) and S the ESPIRiT maps from that same block; "
    "per slice, from acquired data only; training uses kspace / scale"
)
HOW_TO_PREPARE = (
    "create them with `ambient-mri prepare fastmri --input RAW --output OUT --split train` "
    "(then use OUT/train), or `ambient-mri prepare demo --output DIR`"
)


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


def _attr(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_prepared_header(path: str | os.PathLike) -> dict:
    """Attributes and shapes of a prepared file (no k-space read); DataFileError if it is not one."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as hf:
            fmt = _attr(hf.attrs.get("format", None))
            if fmt != FORMAT:
                what = "no 'format' attribute" if fmt is None else f"format {fmt!r}"
                raise DataFileError(path, f"not a prepared file ({what}, expected {FORMAT!r}); {HOW_TO_PREPARE}")
            missing = [k for k in ("kspace", "lines", "mask", "maps", "scale") if k not in hf]
            if missing:
                raise DataFileError(path, f"prepared file lacks dataset(s) {missing}")
            attrs = {k: _attr(v) for k, v in hf.attrs.items()}
            shapes = {k: tuple(hf[k].shape) for k in ("kspace", "lines", "mask", "maps", "scale")}
            scale = np.asarray(hf["scale"][()], np.float64).reshape(-1)
    except (OSError, RuntimeError) as err:
        raise DataFileError(path, f"cannot open as HDF5 (not an HDF5 file, or corrupt): {err}") from err
    S, C, H, L = shapes["kspace"]
    W = int(attrs.get("width", shapes["mask"][-1]))
    expect = {"lines": (S, L), "mask": (S, W), "maps": (S, C, H, W), "scale": (S,)}
    for key, shape in expect.items():
        if shapes[key] != shape:
            raise DataFileError(path, f"dataset {key!r} has shape {shapes[key]}, expected {shape} "
                                f"(kspace {shapes['kspace']}, width {W})")
    return {"attrs": attrs, "slices": S, "coils": C, "image_shape": (H, W), "stored_lines": L, "scale": scale}


def _summary(values: list):
    """One value if all agree, else the sorted distinct values."""
    distinct = []
    for v in values:
        if v not in distinct:
            distinct.append(v)
    if len(distinct) == 1:
        return distinct[0]
    try:
        return sorted(distinct)
    except TypeError:
        return distinct


def lines_problem(lines: np.ndarray, mask: np.ndarray, scale: float) -> str | None:
    """What is wrong with one prepared slice's index data (lines (W,) padded with -1, its mask (W,), its scale),
    or None: training refuses such a slice, so ``prepare`` redoes a file holding one."""
    W = mask.shape[-1]
    n = int((lines >= 0).sum())
    if not (np.isfinite(scale) and scale > 0):
        return f"scale is {scale} (expected > 0)"
    if lines[:n].min(initial=0) < 0 or lines[:n].max(initial=0) >= W or (lines[n:] >= 0).any():
        return f"lines out of range for width {W}"
    if not np.array_equal(np.flatnonzero(mask), np.sort(lines[:n])):
        return "mask does not match the stored lines"
    return None


class PreparedSlices(Dataset):
    """All slices of all prepared files (``ambient_mri.prepared/1``) in a folder, as training measurements.

    The index is built from attributes and dataset shapes only. Files are opened per item in whichever process
    reads it (DataLoader workers included), every read is copied out of h5py (fastMRI issue 215), and no handle is
    kept, so memory stays flat. Items: ``y`` (C, H, W) complex64 = acquired columns / scale scattered into zeros,
    ``mask`` (1, 1, W) float32, ``maps`` (C, H, W) complex64, ``sigma_n`` 0-d float32 (0), ``index`` int.

    A file that turns out unreadable or corrupt while training raises DataFileError naming the file and slice:
    a clear stop, because silently skipping slices would change the training distribution.
    """

    def __init__(self, root: str | os.PathLike, limit: int | None = None):
        self.root = Path(root)
        if self.root.is_file():  # "no such folder" read as if the file were missing
            raise DataFileError(self.root, f"a file, not a folder: training reads every prepared file of a folder; "
                                f"give its folder ({self.root.parent})")
        if not self.root.is_dir():
            raise DataFileError(self.root, f"no such folder of prepared files; {HOW_TO_PREPARE}")
        paths = sorted(p for p in self.root.glob("*.h5") if p.is_file() and not p.name.startswith("."))
        if not paths:
            hint = ""
            subs = [d.name for d in sorted(self.root.iterdir()) if d.is_dir() and any(d.glob("*.h5"))]
            if subs:
                hint = f" (its subfolders {subs} hold .h5 files: point at one of those, e.g. {self.root / subs[0]})"
            raise DataFileError(self.root, f"no prepared files (*.h5) in this folder{hint}; {HOW_TO_PREPARE}")
        if limit is not None and limit < 1:
            raise AmbientMRIError(f"limit must be >= 1, got {limit}")
        self.paths: list[str] = []
        headers = []
        file_idx, slice_idx = [], []
        bad: list[DataFileError] = []  # every unusable file is named at once, not one per attempt
        for path in paths:
            try:
                h = read_prepared_header(path)
            except DataFileError as err:
                bad.append(err)
                continue
            if headers and h["image_shape"][0] != headers[0]["image_shape"][0]:
                bad.append(DataFileError(
                    path, f"image shape {h['image_shape']} differs from {headers[0]['image_shape']} in "
                    f"{self.paths[0]} in its rows; files of a training folder may differ in k-space width and coils "
                    "(each step trains on one shape), not in image rows (prepare with one --image-size H)"))
                continue
            self.paths.append(str(path))
            headers.append(h)
            n = h["slices"]
            file_idx.append(np.full(n, len(self.paths) - 1, np.int32))
            slice_idx.append(np.arange(n, dtype=np.int32))
            if limit is not None and sum(len(f) for f in file_idx) >= limit:
                break
        if len(bad) == 1:
            raise bad[0]
        if bad:
            listing = "\n".join(f"  {Path(e.path).name}: {e.problem}" for e in bad)
            raise DataFileError(self.root, f"{len(bad)} of the files read cannot be used for training (move them "
                                f"out of the folder or prepare them again):\n{listing}")
        self._file = np.concatenate(file_idx)[:limit]
        self._slice = np.concatenate(slice_idx)[:limit]
        self._headers = headers
        self.image_shape = tuple(headers[0]["image_shape"])
        self.coils = int(headers[0]["coils"])
        shapes = [(int(h["coils"]), *map(int, h["image_shape"])) for h in headers]
        self.shapes = sorted(set(shapes))  # (coils, H, W) of the files
        self.groups = np.array([self.shapes.index(shapes[f]) for f in self._file], np.int32)  # per item

    def __len__(self) -> int:
        return int(self._file.shape[0])

    def locate(self, i: int) -> tuple[str, int]:
        """(file path, slice number) of item ``i``."""
        return self.paths[int(self._file[i])], int(self._slice[i])

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} slices")
        i = int(i) % len(self)
        path, s = self.locate(i)
        try:
            with h5py.File(path, "r") as hf:
                k = np.array(hf["kspace"][s], dtype=np.complex64)   # copies: no h5py buffer survives
                lines = np.array(hf["lines"][s], dtype=np.int64)
                mask = np.array(hf["mask"][s], dtype=np.float32)
                maps = np.array(hf["maps"][s], dtype=np.complex64)
                scale = float(hf["scale"][s])
        except (*H5_DAMAGE, ValueError, TypeError) as err:
            raise DataFileError(path, f"slice {s}: cannot be read (file corrupt or changed since the dataset was "
                                f"indexed): {err}") from err
        W = mask.shape[-1]
        problem = None
        if not (np.isfinite(k).all() and np.isfinite(maps).all()):
            problem = "kspace or maps contain NaN or Inf"
        elif not maps.any():  # A = 0: the loss would be zero whatever the network does
            problem = "maps are all zero (no coil sees anything)"
        else:
            problem = lines_problem(lines, mask, scale)
        if problem:
            raise DataFileError(path, f"slice {s}: {problem}")
        y = zero_filled(k, lines, W) / np.float32(scale)
        return {
            "y": torch.from_numpy(y.astype(np.complex64, copy=False)),
            "mask": torch.from_numpy(mask).reshape(1, 1, W),
            "maps": torch.from_numpy(maps),
            "sigma_n": torch.tensor(0.0, dtype=torch.float32),
            "index": i,
        }

    def info(self) -> dict:
        """What a model file records about its training data (plain Python values)."""
        used = np.unique(self._file)
        heads = [self._headers[j] for j in used]
        attrs = [h["attrs"] for h in heads]
        counts = np.bincount(self._file, minlength=len(self._headers))[used]
        ach = [float(np.mean(a.get("achieved_acceleration_per_slice", a.get("achieved_acceleration", np.nan))))
               for a in attrs]

        def pick(key):
            return _summary([a.get(key) for a in attrs])

        # which slices of which files: each slice's intensity scale (from its own ACS lines) tells other data of the
        # same names and shapes apart, so a resume on them is refused; the folder's location does not enter
        ident = [[Path(self.paths[f]).name, int(s), float(f"{self._headers[f]['scale'][s]:.6g}")]
                 for f, s in zip(self._file.tolist(), self._slice.tolist())]
        return {
            "kind": "prepared",
            "format": FORMAT,
            "content_sha256": hashlib.sha256(json.dumps(ident).encode()).hexdigest(),
            "root": str(self.root),
            "files": len(used),
            "slices": len(self),
            "image_shape": list(self.image_shape),
            "coils": self.coils,
            "shapes": [list(sh) for sh in self.shapes],
            "coils_original": pick("coils_original"),
            "split": pick("split"),
            "mask": {
                "kind": pick("mask_kind"),
                "acceleration": pick("acceleration"),
                "center_fraction": pick("center_fraction"),
                "per_slice": pick("per_slice_mask"),
                "seed_rule": pick("seed_rule"),
                "acs_lines": pick("acs_lines"),
            },
            "achieved_acceleration": float(np.average(ach, weights=counts)),
            "recon_size": pick("recon_size"),
            "scale_rule": SCALE_RULE,
        }
