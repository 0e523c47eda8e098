"""``ambient-mri prepare fastmri`` and ``ambient-mri prepare demo`` (wired into ambient_mri/cli.py by
``add_prepare_parser``)."""

from __future__ import annotations

import argparse
import sys

from ambient_mri.errors import AmbientMRIError


def add_prepare_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``prepare {fastmri,demo}`` to an argparse subparsers object; each sets ``func(args) -> exit code``."""
    p = subparsers.add_parser("prepare", help="prepare training/evaluation data",
                              description="Prepare data: official fastMRI files, or the built-in demo set.")
    sub = p.add_subparsers(dest="prepare_command", required=True)

    f = sub.add_parser(
        "fastmri", help="official fastMRI multi-coil files -> prepared volumes",
        description="Undersample (fixed mask per volume, seeded by file name as fastMRI does), keep only the "
                    "acquired columns, crop the readout oversampling, compute ESPIRiT maps and the intensity "
                    "scale from the calibration lines only. Writes OUTPUT/<split>/ and, for val/test, the "
                    "fully-sampled reference to OUTPUT/<split>_reference/ (never read by training).")
    f.add_argument("--input", required=True, help="folder of fastMRI .h5 files (or one file)")
    f.add_argument("--output", required=True, help="output folder; files go to OUTPUT/<split>/")
    f.add_argument("--mask", default="random", help="random | equispaced | gaussian1d | uniform1d (default random)")
    f.add_argument("--acceleration", type=float, default=4, help="R; 1 = fully sampled (default 4)")
    f.add_argument("--center-fraction", type=float, default=0.08, help="ACS fraction of the width (default 0.08)")
    f.add_argument("--split", default="train", choices=("train", "val", "test"))
    f.add_argument("--per-slice-mask", action="store_true", help="draw a mask per slice (seed: name + slice)")
    f.add_argument("--coils", type=int, default=None, help="compress to K virtual coils (SVD of the ACS data)")
    f.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="image size (default: the header's recon rows x the k-space width)")
    f.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    f.add_argument("--calib-width", type=int, default=None,
                   help="ESPIRiT/scale calibration width (default: the fully acquired centre, at most 32)")
    f.add_argument("--limit", type=int, default=None, help="only the first N files")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=run_prepare_fastmri)

    d = sub.add_parser("demo", help="build the offline demo set (MNI152 template, simulated coils)",
                       description="Simulate fastMRI-layout multi-coil files from the MNI152 template and prepare "
                                   "them: prepared_r4/{train,val,val_reference}, prepared_r8/{val,val_reference}, "
                                   "prepared_full/train.")
    d.add_argument("--output", required=True, help="output folder")
    d.add_argument("--size", type=int, default=64, help="image size (square; k-space has 2x readout oversampling)")
    d.add_argument("--coils", type=int, default=8)
    d.add_argument("--slices", type=int, default=40, help="total slices (about 1/5 go to validation, at most 8)")
    d.add_argument("--workers", type=int, default=1)
    d.add_argument("--augment-copies", type=int, default=0, metavar="N",
                   help="add N augmented copies of every clean training slice (mirror, small rotation/scale/shift, "
                        "elastic warp, intensity curve), each simulated and undersampled once as a new subject; "
                        "validation is never augmented (default 0: off)")
    d.set_defaults(func=run_prepare_demo)
    return p


def run_prepare_fastmri(args) -> int:
    from .prepare import prepare_fastmri

    try:
        summary = prepare_fastmri(args.input, args.output, mask=args.mask, acceleration=args.acceleration,
                                  center_fraction=args.center_fraction, split=args.split,
                                  per_slice_mask=args.per_slice_mask, coils=args.coils, image_size=args.image_size,
                                  workers=args.workers, calib_width=args.calib_width, limit=args.limit,
                                  progress=not getattr(args, "no_progress", False))
    except AmbientMRIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.report())
    reasons = {r.reason for r in summary.refused}
    if len(summary.refused) > 1 and not summary.prepared + summary.skipped and len(reasons) == 1:
        print(f"error: all {len(summary.refused)} file(s) were refused with the same problem (check the "
              f"arguments): {reasons.pop()}", file=sys.stderr)
        return 2
    return 1 if summary.refused else 0


def run_prepare_demo(args) -> int:
    from .demo import build_demo, demo_augment

    try:
        copies = getattr(args, "augment_copies", 0)
        augment = demo_augment(copies) if copies else None
        paths = build_demo(args.output, size=args.size, coils=args.coils, slices=args.slices, workers=args.workers,
                           augment=augment)
    except (AmbientMRIError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"demo data in {paths['root']}:")
    for key, path in paths.items():
        if key != "root":
            print(f"  {key:18s} {path}")
    return 0
