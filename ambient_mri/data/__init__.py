"""Data files -> arrays: official fastMRI HDF5 (lazy, slice by slice)."""

from .fastmri import FastMRIVolume, LazyH5Array, read_fastmri

__all__ = ["FastMRIVolume", "LazyH5Array", "read_fastmri"]
