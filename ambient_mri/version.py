"""The package version, written into every output file so a result can be traced to the code that made it."""

__version__ = "0.1.0"  # keep equal to pyproject.toml's version (a test checks)
