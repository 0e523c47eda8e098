"""Errors the package raises for bad input. Each message names the file (when there is one) and the problem."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from contextvars import ContextVar


class AmbientMRIError(ValueError):
    """Bad input to ambient_mri: the message says what is wrong and where."""


class DataFileError(AmbientMRIError):
    """A data file that cannot be used; ``path`` names it."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        # Worker processes (reconstruct pools, DataLoader workers) pickle errors back to the parent; the default
        # would call __init__ with the message alone and replace this error by a BrokenProcessPool.
        return type(self), (self.path, self.problem)


# What h5py raises on a damaged file: OSError where it cannot open it (truncated, not HDF5), RuntimeError or
# KeyError where metadata read after opening is damaged ("Unable to synchronously check link existence").
H5_DAMAGE = (OSError, RuntimeError, KeyError)


class RecipeError(AmbientMRIError):
    """A training recipe with an unknown key or a bad value."""


class BelowZeroFilledWarning(UserWarning):
    """A reconstruction that may be worse than zero-filled; ``reason`` says why. To the linear methods sense and
    l1_wavelet only: "underdetermined" (too few samples per unknown pixel), "noise" (the lines outside the ACS block
    are mostly noise), "unchecked_lambda" (no line to hold out, the default λ used), "strong_lambda" (L1's held-out
    lines chose a strong λ); to every method but zero_filled: "maps" (the coil maps do not explain the acquired
    data), "maps_support" (the maps are zero where the image is bright); to the learned methods: "maps_unchecked"
    (no image row has enough samples to check the maps), "prior_energy" (the image puts far more energy into the
    missing k-space columns than the acquired ones predict). One category, so
    ``warnings.filterwarnings(..., category=BelowZeroFilledWarning)`` or ``pytest.warns`` can select them."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # raised as an error (-W error) in a worker process, it is pickled back whole
        return type(self), (self.args[0], self.reason)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
# the volume a BelowZeroFilledWarning is about, and the list its file records them in (``volume_warnings``)
_VOLUME: ContextVar[tuple[str, list] | None] = ContextVar("ambient_mri_volume", default=None)


def warn_below_zero_filled(message: str, reason: str) -> None:
    """Issue a BelowZeroFilledWarning at the user's line (the first frame outside this package, whichever entry
    point was called); inside ``volume_warnings`` the message ends with the volume's name (so a folder run says
    which volume each is about, and Python does not fold identical texts of different volumes) and the warning is
    recorded for its output file, whatever the warning filters do with it."""
    volume = _VOLUME.get()
    if volume is not None:
        volume[1].append({"reason": reason, "message": message})
        message = f"{message} [{volume[0]}]"
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(BelowZeroFilledWarning(message, reason), stacklevel=level)


@contextlib.contextmanager
def volume_warnings(name) -> Iterator[list[dict]]:
    """Within this block the below-zero-filled warnings name ``name`` and are collected in the list it yields
    ({"reason", "message"} each); per thread and per task, as a context variable."""
    record: list[dict] = []
    token = _VOLUME.set((str(name), record))
    try:
        yield record
    finally:
        _VOLUME.reset(token)
