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
