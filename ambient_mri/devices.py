"""One check of a device name for every entry point: a clear error instead of torch's, before any work starts."""

from __future__ import annotations

import torch

from .errors import AmbientMRIError


def resolve_device(name=None, what: str = "device", local_rank: int = 0) -> torch.device:
    """None or "auto" -> cuda:local_rank when CUDA is available, else cpu; "cpu", "cuda", "cuda:N" or a
    torch.device are checked against this machine. ``what`` names the setting in the error (e.g. training.device)."""
    if name is None or name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise AmbientMRIError(f"{what} {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise AmbientMRIError(f"{what} {name!r}: only cpu and cuda devices are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AmbientMRIError(f"{what} is {name!r} but no CUDA device is available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AmbientMRIError(f"{what} {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
