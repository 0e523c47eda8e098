"""One check of a device name for every entry point: a clear error instead of torch's, before any work starts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

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


def check_threads(n: int | None, option: str = "--threads") -> None:
    """A torch CPU thread count from the user: None or 0 (torch's default) up to 4 threads per core (at least 256);
    100000 made torch fail to map a shared library or segfault."""
    top = max(256, 4 * (os.cpu_count() or 1))
    if n is not None and not 0 <= n <= top:
        raise AmbientMRIError(f"{option} must be in 0..{top} (0: torch's default; this machine has "
                              f"{os.cpu_count()} cores), got {n}")


def available_host_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def ensure_memory(nbytes: float, what: str, lower: str, device: torch.device | str = "cpu") -> None:
    """Refuse an allocation of about ``nbytes`` on ``device`` that cannot fit in its free memory: on the host, past
    it Linux's out-of-memory killer ends the process with no message at all. ``lower`` names the settings to lower."""
    device = torch.device(device)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_host_memory()
    if free is not None and nbytes > free:
        raise AmbientMRIError(f"{what} needs about {nbytes / 2**30:.1f} GiB of memory, {free / 2**30:.1f} GiB is "
                              f"free on {device}: lower {lower}")


@contextmanager
def out_of_memory_as_error(device: torch.device | str, lower: str) -> Iterator[None]:
    """torch's own out-of-memory errors (the up-front estimate missed a network's working memory) -> one line
    that says which settings to ``lower``."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and "can't allocate memory" not in str(e):
            raise
        raise AmbientMRIError(f"out of memory on {device} ({(str(e).splitlines() or [type(e).__name__])[0][:160]}): "
                              f"lower {lower}") from None
