"""``ambient-mri convert``: raw scanner data (ISMRMRD .h5, Siemens twix .dat) -> official fastMRI files (wired into
ambient_mri/cli.py by ``add_convert_parser``)."""

from __future__ import annotations

import argparse


def add_convert_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``convert`` to an argparse subparsers object; it sets ``func(args) -> exit code``."""
    p = subparsers.add_parser(
        "convert", help="raw scanner data (ISMRMRD .h5, Siemens twix .dat) -> fastMRI multi-coil files",
        description="Convert ISMRMRD (.h5/.mrd) and Siemens twix (.dat) raw data to the official fastMRI multi-coil "
                    "layout: kspace (slices, coils, readout with its oversampling, phase encode), centre at "
                    "(H//2, W//2), ismrmrd_header, reconstruction_rss for fully sampled scans, mask for undersampled "
                    "ones. Cartesian 2-D (multi-slice) scans only; averages are averaged; repetitions, contrasts, "
                    "phases and sets are refused. Coils are prewhitened with the file's noise scan by default. "
                    "Bad files are listed at the end (exit status 1); the rest are converted.")
    p.add_argument("--input", required=True, help="a raw file, or a folder of them (.h5 .hdf5 .mrd .ismrmrd .dat)")
    p.add_argument("--output", required=True,
                   help="output folder (never the input folder); files are written as OUTPUT/<input stem>.h5")
    p.add_argument("--no-prewhiten", action="store_true",
                   help="keep the coils as acquired (default: prewhiten with the noise-adjustment scan if present)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.set_defaults(func=run_convert)
    return p


def run_convert(args) -> int:
    """0: every file converted (or already done); 1: some files were bad (listed); 2: refused to run."""
    from .raw import convert

    # a refusal (AmbientMRIError) is printed by cli.main with exit status 2
    summary = convert(args.input, args.output, prewhiten=not args.no_prewhiten,
                      progress=not getattr(args, "quiet", False))
    print(summary.report())
    return 1 if summary.bad else 0
