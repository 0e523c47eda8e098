"""Errors the package raises for bad input. Each message names the file (when there is one) and the problem."""

from __future__ import annotations


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


class RecipeError(AmbientMRIError):
    """A training recipe with an unknown key or a bad value."""


class BelowZeroFilledWarning(UserWarning):
    """A reconstruction that may be worse than zero-filled; ``reason`` says why (all but the two "maps" reasons are
    given to the linear methods sense and l1_wavelet only; "maps" to every method but zero_filled):
    "underdetermined" (too few samples per unknown pixel), "noise" (the lines outside the ACS block are mostly
    noise), "unchecked_lambda" (no line to hold out, the default λ used), "strong_lambda" (L1's held-out lines
    chose a strong λ), "maps" (the coil maps do not explain the acquired data) or "maps_unchecked" (learned
    methods: no image row has enough samples to check the maps). One category, so
    ``warnings.filterwarnings(..., category=BelowZeroFilledWarning)`` or ``pytest.warns`` can select them."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # raised as an error (-W error) in a worker process, it is pickled back whole
        return type(self), (self.args[0], self.reason)
