"""A trained model: the EDM denoiser in image terms, what it was trained on, and its safe file format.

A model file is ``torch.save({"format": ..., "info": {...}, "config": {...}, "state_dict": {...}})`` and is read
back with ``torch.load(weights_only=True)``, so loading never runs pickled code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .corruption import cond_channels
from .devices import resolve_device
from .errors import AmbientMRIError, DataFileError
from .files import HDF5_SIGNATURE, atomic_path
from .nets import build_denoiser, channels_to_complex, complex_to_channels
from .operators import LinearOperator
from .record import OPERATORS, TrainingRecord
from .solvers import conjugate_gradient

FORMAT = "ambient_mri.model/1"


class Denoiser(nn.Module):
    """D_θ(x, σ, M̃) on images: complex (B, H, W) for MRI, real (B, C, H, W) otherwise.

    ``record`` (``ambient_mri.record.TrainingRecord``) says how the model was trained; ``info`` is the same as plain
    values (a copy: change the record with ``dataclasses.replace``)."""

    def __init__(self, config: dict[str, Any], record: TrainingRecord | dict[str, Any]):
        super().__init__()
        self.config = dict(config)
        self.record = record if isinstance(record, TrainingRecord) else TrainingRecord.from_dict(record)
        self.input_cg = int(self.config.get("input_cg", 0))
        self.precond = build_denoiser({k: v for k, v in self.config.items() if k != "input_cg"})

    @property
    def complex(self) -> bool:
        return self.record.is_mri

    @property
    def cond(self) -> tuple[str, ...]:
        return self.record.cond

    @property
    def info(self) -> dict[str, Any]:
        return self.record.to_dict()

    def forward(self, x: torch.Tensor, sigma, mask_tilde: torch.Tensor | None = None,
                operator: LinearOperator | None = None) -> torch.Tensor:
        """x = Ã^H z (B, H, W) or images; with ``input_cg`` = k > 0 the network sees k CG steps on Ã^H Ã u = x
        instead (a SENSE estimate from Ã's lines: the coil maps unalias what the adjoint folds), so the model
        needs ``operator`` = Ã. It stays a function of Ã x_t, so the ambient loss's minimiser is unchanged."""
        if self.input_cg:
            if operator is None:
                raise AmbientMRIError("this model was trained with network.input_cg: pass the operator of its input")
            x = conjugate_gradient(operator.normal, x, iters=self.input_cg)
        h = complex_to_channels(x) if self.complex else x
        B, _, H, W = h.shape
        cond = cond_channels(self.cond, mask_tilde, B, H, W, device=h.device)
        out = self.precond(h, sigma, cond)
        return channels_to_complex(out) if self.complex else out


def apply_denoiser(model, x: torch.Tensor, sigma, mask: torch.Tensor | None, operator: LinearOperator | None):
    """model(x, σ, M̃), handing over the operator of the input to a model that needs it (network.input_cg);
    other denoisers (any callable (x, σ, M̃)) are called as before."""
    if getattr(model, "input_cg", 0):
        return model(x, sigma, mask, operator)
    return model(x, sigma, mask)


def atomic_torch_save(obj: Any, path) -> None:
    """torch.save through ``files.atomic_path``: a reader never sees half a file; a full disk is a DataFileError."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def safe_load(path, map_location="cpu", mmap: bool = False) -> dict:
    """torch.load with weights_only=True; a clear error naming the file on anything unreadable. ``mmap``: map the
    tensors instead of reading them (to look at a large checkpoint's small entries)."""
    path = Path(path)
    if path.is_dir():
        hint = f" (it holds {path / 'model.pt'})" if (path / "model.pt").is_file() else ""
        raise DataFileError(path, f"is a folder, not a model file: give the model.pt of a training run{hint}")
    if not path.is_file():
        raise DataFileError(path, "no such file")
    what = _foreign_kind(path)
    if what:
        raise DataFileError(path, f"is {what}, not an ambient_mri model or checkpoint file (torch.save's zip "
                            "archive)")
    if not mmap:
        _check_zip(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt or unsafe files
        msg = str(e)
        if "weights_only" in msg or "Unsupported global" in msg or "Unpickler" in msg:
            # torch's message goes on to suggest weights_only=False, i.e. running the file's code: never quote it
            raise DataFileError(path, "holds pickled Python objects beyond weights (code could run on loading); "
                                "ambient_mri loads tensors and plain values only and refuses this file") from None
        raise DataFileError(path, f"not a loadable ambient_mri file ({type(e).__name__}: "
                            f"{msg.strip().splitlines()[0][:160] if msg.strip() else 'unreadable'})") from None


def _check_zip(path: Path) -> None:
    """torch.load does not check the archive's CRC-32s: a flipped byte in the weights loaded and ran. Checked here
    (about 2 ms per MB), a damaged copy is refused by name. Members stored with CRC 0 (torch's
    ``serialization.config.save.compute_crc32 = False``) carry no checksum and are not judged."""
    import zipfile

    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # the legacy pickle format has no checksums
            return
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.CRC:
                    with z.open(info) as member:  # zipfile compares the CRC-32 at the end of the member
                        while member.read(1 << 22):
                            pass
    except zipfile.BadZipFile as e:
        why = "not a complete zip archive" if "CRC" not in str(e) else "a member fails its checksum"
        raise DataFileError(path, f"is damaged: {why} ({e}; a truncated or corrupted copy?): copy it again, or "
                            "use another checkpoint") from None
    except Exception as e:  # noqa: BLE001 - an encrypted or oddly compressed archive is no torch file either
        raise DataFileError(path, f"not a loadable ambient_mri file ({type(e).__name__}: {e})") from None


# how torch.save's legacy (pre-zip) format begins: its magic number 0x1950a86a20f9469cfc6c, pickled with protocol 2
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def _foreign_kind(path: Path) -> str | None:
    """What a file that torch.save did not write looks like (None: it may be torch's zip archive or the legacy
    pickle format; torch.load then decides)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "empty"
    if head.startswith((b"PK\x03\x04", TORCH_LEGACY_MAGIC)):
        return None
    if head.startswith(b"\x80"):  # torch.load's unpickler would print its protocol warning before refusing it
        return "a plain Python pickle (pickle.dump), never loaded"
    if head.startswith(HDF5_SIGNATURE):
        return "an HDF5 file (data, not a model)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a torch file"
    return "a text file (a recipe? models are the model.pt a training run writes)"


def save_model(model: Denoiser, path, state_dict: dict | None = None) -> None:
    """Write a model file (``state_dict`` defaults to the model's own, e.g. pass the EMA weights)."""
    sd = state_dict if state_dict is not None else model.state_dict()
    atomic_torch_save({"format": FORMAT, "config": plain_values(model.config),
                       "info": plain_values(model.record.to_dict()),
                       "state_dict": {k: v.detach().cpu() for k, v in sd.items()}}, path)


def load_model(path, device=None) -> Denoiser:
    """Read a model file (``model.pt`` of a run, EMA weights) safely; ``model.record`` says how it was trained
    (older files' records are converted; an unknown record version is refused by name)."""
    dev = resolve_device(device or "cpu")
    obj = safe_load(path)
    weights = isinstance(obj, dict) and ("state_dict" in obj or "ema" in obj)
    if not weights or not {"info", "config"} <= set(obj):
        hint = " (this is a training checkpoint; load model.pt from the same run)" \
            if isinstance(obj, dict) and "optimizer" in obj else ""
        raise DataFileError(path, f"not an ambient_mri model file (missing config/info/state_dict){hint}")
    fmt = obj.get("format", FORMAT)
    if fmt != FORMAT:
        name, _, version = str(fmt).partition("/")
        ours = FORMAT.partition("/")[2]
        why = ": not an ambient_mri model file"
        if name == FORMAT.partition("/")[0] and version.isdigit():
            why = (": written by a newer ambient_mri; upgrade the package" if int(version) > int(ours) else
                   ": an older model format this ambient_mri does not read")
        raise DataFileError(path, f"model file format {fmt!r} is not {FORMAT!r}{why}")
    try:
        record = TrainingRecord.from_dict(obj["info"])
    except AmbientMRIError as e:
        raise DataFileError(path, str(e)) from None
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # a damaged or hand-edited record
        raise DataFileError(path, f"its training record (info) cannot be read ({type(e).__name__}: {e})") from None
    if record.operator not in OPERATORS:
        raise DataFileError(path, f"the training record's operator {record.operator!r} is not one of "
                            f"{', '.join(OPERATORS)}")
    cfg = obj["config"] if isinstance(obj["config"], dict) else {}
    want = 2 if record.is_mri else (record.image_shape[0] if record.image_shape else None)  # real, imag for MRI
    have, sd = cfg.get("img_channels"), cfg.get("sigma_data", 0.5)
    if want is not None and have is not None and have != want:  # sampling failed on the first network call
        raise DataFileError(path, f"its network takes {have} image channel(s) but its training record describes "
                            f"{want} (a damaged or hand-edited model file)")
    if not (isinstance(sd, (int, float)) and not isinstance(sd, bool) and 0 < sd < math.inf):  # NaN samples
        raise DataFileError(path, f"its network's sigma_data is {sd!r}, not a positive number (a damaged or "
                            "hand-edited model file)")
    try:
        model = Denoiser(obj["config"], record)
        model.load_state_dict(obj.get("ema", obj.get("state_dict")))
    except (RuntimeError, TypeError, ValueError) as e:
        raise DataFileError(path, f"weights do not match the recorded network config ({str(e)[:200]})") from None
    bad = nonfinite_tensors(model.state_dict())
    if bad:  # a diverged run: every reconstruction would be NaN
        raise DataFileError(path, f"weights contain NaN or Inf ({len(bad)} tensor(s), e.g. {bad[0]}): the training "
                            "run diverged; use an earlier checkpoint or retrain (e.g. lower training.lr)")
    return model.eval().to(dev)


def nonfinite_tensors(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold NaN or Inf (one host sync for all)."""
    names = [k for k, t in state_dict.items() if t.is_floating_point()]
    if not names:
        return []
    finite = torch.stack([torch.isfinite(state_dict[k]).all() for k in names]).tolist()
    return [k for k, ok in zip(names, finite) if not ok]


def plain_values(obj):
    """Recipes hold tuples and numpy scalars; the safe loader accepts only plain containers."""
    if isinstance(obj, dict):
        return {str(k): plain_values(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_values(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "item") and not isinstance(obj, torch.Tensor):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    raise AmbientMRIError(f"cannot store {type(obj).__name__} in a model file")
