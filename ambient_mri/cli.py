"""The ``ambient-mri`` command line: prepare, convert, train, reconstruct, evaluate, demo, sample, memorization."""

from __future__ import annotations

import argparse
import sys

from .devices import check_threads
from .errors import AmbientMRIError


def _train(args) -> int:
    import torch

    from .training.trainer import train

    check_threads(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)

    run = train(args.recipe, overrides=args.set, resume=args.resume, progress=not args.no_progress)
    print(f"run directory: {run}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ambient-mri", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    from data_tools.convert_cli import add_convert_parser
    from data_tools.prepare_cli import add_prepare_parser

    add_prepare_parser(sub)
    add_convert_parser(sub)

    t = sub.add_parser("train", help="train a diffusion model from a YAML recipe (torchrun-ready)")
    t.add_argument("recipe", help="recipe YAML file (see recipes/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set steps=20 or --set training.lr=1e-4")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's; on a shared 2-core machine 1 is often much faster)")
    t.set_defaults(func=_train)

    from .commands import add_commands

    add_commands(sub)
    from .image_commands import add_image_commands

    add_image_commands(sub)
    return p


def _format_warning(plain):
    """The package's own warnings (ours by category, or UserWarnings raised from its code or data_tools') as one
    line naming the command (no source line of ours); others (numpy's RuntimeWarnings, ...) as Python has it."""
    import os

    import data_tools

    from .errors import _PACKAGE, BelowZeroFilledWarning

    ours = (_PACKAGE, os.path.dirname(os.path.abspath(data_tools.__file__)) + os.sep)

    def fmt(message, category, filename, lineno, line=None):
        if issubclass(category, BelowZeroFilledWarning) or (issubclass(category, UserWarning) and
                                                            os.path.abspath(filename).startswith(ours)):
            return f"ambient-mri: warning: {message}\n"
        return plain(message, category, filename, lineno, line)
    return fmt


# options and arguments that name files or folders: an empty one (an unset shell variable) meant the working folder
_PATHS = ("recipe", "resume", "model", "input", "output", "target", "recon", "train", "samples")


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    for name in _PATHS:
        values = getattr(args, name, None)
        if any(v == "" for v in (values if isinstance(values, list) else [values])):  # " " may name a folder
            what = name if name == "recipe" else f"--{name}"
            print(f"ambient-mri {args.command}: error: {what} is empty (an unset shell variable?); it would mean the "
                  "working folder: name the file or folder", file=sys.stderr)
            return 2
    plain = warnings.formatwarning
    warnings.formatwarning = _format_warning(plain)
    try:
        return int(args.func(args) or 0)
    except AmbientMRIError as e:
        print(f"ambient-mri {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # an optional dependency (e.g. nilearn for the demo data)
        print(f"ambient-mri {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the system refused (a name too long, no permission) where no check named it
        if e.filename is None:
            raise
        from .files import os_reason

        print(f"ambient-mri {args.command}: error: {e.filename}: {os_reason(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = plain


if __name__ == "__main__":
    sys.exit(main())
