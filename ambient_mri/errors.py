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


class RecipeError(AmbientMRIError):
    """A training recipe with an unknown key or a bad value."""
