"""``ambient-mri reconstruct``, ``evaluate`` and ``demo``."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import AmbientMRIError, DataFileError
from .files import (
    check_finite_number,
    check_seed,
    input_files,
    make_folder,
    refuse_overwrite,
    remove_temps,
    run_lock,
    save_figure,
    write_json,
    write_text,
)
from .sampling.policy import MRI_METHODS as METHODS


def _fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _model_digest(path: str | None) -> str | None:
    if not path:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recon_settings(args, source: Path, model_digest: str | None) -> str:
    """What makes a reconstruction file what it is; a resumed run redoes any output whose settings differ."""
    keys = ("method", "mask", "acceleration", "center_fraction", "steps", "num_samples", "seed", "batch_size", "coils")
    return json.dumps({**{k: getattr(args, k, None) for k in keys}, "model": model_digest,
                       "source": _fingerprint(source)}, sort_keys=True)


def finished(out: Path, settings: str) -> bool:
    """An output counts as done only when it is a whole reconstruction file made with these settings."""
    import h5py

    try:
        with h5py.File(out, "r") as f:
            rec = f["reconstruction"]
            stored = f.attrs.get("settings")
            stored = stored.decode() if isinstance(stored, bytes) else stored
            return stored == settings and rec.ndim == 3 and bool(np.isfinite(rec[()]).all())
    except (OSError, KeyError, ValueError):
        return False


def _check_not_foreign(out: Path) -> None:
    """An existing readable HDF5 file without a reconstruction is someone's data: never overwrite it."""
    import h5py

    try:
        with h5py.File(out, "r") as f:
            foreign = "reconstruction" not in f
    except OSError:
        return  # not a whole HDF5 file: a leftover to redo
    if foreign:
        raise DataFileError(out, "exists and is not a reconstruction file; it will not be overwritten")


def _report_bad(bad: list[tuple[Path, str]], what: str) -> None:
    if bad:
        print(f"{len(bad)} {what} failed:", file=sys.stderr)
        for f, why in bad:
            print(f"  {f}: {why}", file=sys.stderr)


def run_reconstruct(args) -> int:
    from .recon import DIFFUSION, reconstruct_file

    if args.method in DIFFUSION and not args.model:
        raise AmbientMRIError(f"--method {args.method} needs --model (a model file from `ambient-mri train`)")
    for name in ("steps", "num_samples", "batch_size", "threads", "coils"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise AmbientMRIError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    check_seed(args.seed, "--seed")
    check_finite_number("--acceleration", args.acceleration, 1.0)
    check_finite_number("--center-fraction", args.center_fraction, 0.0, strict=True)
    files, bad = input_files(args.input)
    single = Path(args.input).is_file()
    out = Path(args.output)
    refuse_overwrite(files + [f for f, _ in bad], [out] + [out / f.name for f in files])
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    opts = dict(method=args.method, steps=args.steps, num_samples=args.num_samples, seed=args.seed,
                device=args.device, batch_size=args.batch_size, coils=args.coils, progress=False)
    digest = None
    if args.model:
        from .model import load_model
        from .scan import check_multicoil_model

        opts["model"] = load_model(args.model)
        check_multicoil_model(opts["model"])
        digest = _model_digest(args.model)
    done = kept = 0
    with run_lock(out, f"reconstruct {args.input} -> {out}"):
        remove_temps(out)
        # a bar on terminals only (disable=None); closed before an error message is printed
        with tqdm(files, desc=f"reconstruct ({args.method})", unit="volume", disable=None) as bar:
            for f in bar:
                target = out / f.name
                settings = recon_settings(args, f, digest)
                try:
                    if target.exists():
                        _check_not_foreign(target)
                        if not args.overwrite and finished(target, settings):  # resumable: finished volumes kept
                            kept += 1
                            continue
                    reconstruct_file(f, target, mask=args.mask, acceleration=args.acceleration,
                                     center_fraction=args.center_fraction, settings=settings, **opts)
                    done += 1
                except AmbientMRIError as e:
                    if single:  # one file: its problem is the command's error
                        raise
                    bad.append((f, e.problem if isinstance(e, DataFileError) and Path(e.path) == f else str(e)))
                except Exception as e:  # noqa: BLE001 - one volume must not stop the others; it is listed
                    if single:
                        raise
                    bad.append((f, f"unexpected {type(e).__name__}: {e}"))
    reasons = {why for _, why in bad}
    if len(bad) == 1 and not done + kept:  # a folder of one volume: as a single file
        raise AmbientMRIError(f"{bad[0][0]}: {bad[0][1]}")
    if bad and not done + kept and len(reasons) == 1:  # the same problem everywhere: likely the arguments
        _report_bad(bad, "volume(s)")
        raise AmbientMRIError(f"all {len(bad)} volume(s) failed with the same problem (check the arguments): "
                              f"{reasons.pop()}")
    print(f"{done} volume(s) reconstructed into {out} ({kept} already there, {len(bad)} failed)")
    _report_bad(bad, "volume(s)")
    return 1 if bad else 0


def save_panels(path: Path, panels: list[tuple[str, np.ndarray]], vmax: float) -> None:
    """One row of titled magnitude panels as a PNG (error and std maps in their own colour map)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2), squeeze=False)
    for ax, (title, img) in zip(axes[0], panels):
        is_map = title.startswith(("error", "std"))
        ax.imshow(np.abs(img), cmap="magma" if is_map else "gray", vmin=0, vmax=(vmax / 4 if is_map else vmax))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def _volume_png(target_file: Path, recon_file: Path, png: Path) -> None:
    import h5py

    from .metrics import center_crop

    with h5py.File(target_file, "r") as t, h5py.File(recon_file, "r") as p:
        key = "reconstruction_rss" if "reconstruction_rss" in t else "reconstruction_esc"
        gt = t[key][()]
        s = gt.shape[0] // 2
        rec = np.abs(center_crop(p["reconstruction"][s], gt.shape[-2:]))
        panels = [("reference", gt[s])]
        if "zero_filled" in p:
            panels.append(("zero-filled", center_crop(p["zero_filled"][s], gt.shape[-2:])))
        method = p.attrs.get("method", "?")
        panels += [(f"recon ({method})", rec), ("error |recon - ref|", np.abs(rec - gt[s]))]
        if "std" in p:
            panels.append(("std over samples", center_crop(p["std"][s], gt.shape[-2:])))
    save_panels(png, panels, float(gt.max()))


def run_evaluate(args) -> int:
    from .metrics import evaluate_dirs

    out = Path(args.output or args.recon)
    refuse_overwrite(list(Path(args.target).glob("*.h5")) + list(Path(args.recon).glob("*.h5")),
                     [out / "metrics.csv", out / "metrics.json"])
    res = evaluate_dirs(args.target, args.recon, strict=False)
    make_folder(out)
    rows = res["volumes"]
    print(f"{'volume':<32} {'PSNR':>8} {'SSIM':>8} {'NMSE':>9}")
    for r in rows:
        print(f"{r['file']:<32} {r['PSNR']:8.3f} {r['SSIM']:8.4f} {r['NMSE']:9.5f}")
    m = res["mean"]
    label = f"mean of {len(rows)}/{res['targets']}"
    print(f"{label:<32} {m['PSNR']:8.3f} {m['SSIM']:8.4f} {m['NMSE']:9.5f}")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["file", "PSNR", "SSIM", "NMSE"])
    w.writeheader()
    w.writerows(rows + [{"file": "mean", **m}])
    write_text(out / "metrics.csv", buf.getvalue())
    write_json(out / "metrics.json", res)
    for r in rows:
        _volume_png(Path(args.target) / r["file"], Path(args.recon) / r["file"], out / f"{Path(r['file']).stem}.png")
    print(f"metrics.csv, metrics.json and one PNG per volume in {out}")
    bad = [(Path(args.recon) / f["file"], f["reason"]) for f in res["failed"]]
    bad += [(Path(args.recon) / name, "no reconstruction for this target") for name in res["missing"]]
    if bad:
        print(f"warning: the mean is over {len(rows)} of {res['targets']} target volumes", file=sys.stderr)
    _report_bad(bad, "volume(s)")
    return 1 if bad else 0


def _run_demo(args) -> int:
    from .demo import run_demo  # torch training and the demo data sources load only when the demo runs

    return run_demo(args)


def add_commands(sub) -> None:
    r = sub.add_parser("reconstruct", help="reconstruct fastMRI files (a file or a folder)")
    r.add_argument("--model", help="model file (needed by the diffusion methods)")
    r.add_argument("--input", required=True, help="official fastMRI .h5 file or folder")
    r.add_argument("--output", required=True, help="folder for the reconstructions (one file per volume)")
    r.add_argument("--method", default="fast", choices=METHODS)
    r.add_argument("--mask", default=None, help="retrospective mask kind for fully-sampled files (default random)")
    r.add_argument("--acceleration", type=float, default=None, help="retrospective undersampling factor R")
    r.add_argument("--center-fraction", type=float, default=None, help="ACS fraction (default 0.08)")
    r.add_argument("--steps", type=int, default=None, help="sampler steps (default per method)")
    r.add_argument("--num-samples", type=int, default=1, help="posterior samples per slice (>1 gives std maps)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    r.add_argument("--batch-size", type=int, default=None, help="slices per sampler batch")
    r.add_argument("--coils", type=int, default=None,
                   help="compress to K virtual coils per slice (SVD of the ACS columns, as prepare --coils)")
    r.add_argument("--overwrite", action="store_true", help="redo volumes whose output exists")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    r.set_defaults(func=run_reconstruct)

    e = sub.add_parser("evaluate", help="PSNR/SSIM/NMSE of reconstructions against fastMRI references")
    e.add_argument("--target", required=True, help="folder of files with reconstruction_rss (or _esc)")
    e.add_argument("--recon", required=True, help="folder of reconstruction files (same names)")
    e.add_argument("--output", default=None, help="where metrics.csv/json and PNGs go (default: --recon)")
    e.set_defaults(func=run_evaluate)

    d = sub.add_parser("demo", help="the whole path on the built-in MNI152 demo data, no arguments needed")
    d.add_argument("--output", default="demo_run", help="folder for data, model, reconstructions and figures")
    d.add_argument("--minutes", type=float, default=13.0,
                   help="training time budget in minutes (default 13: the ~1300 steps after which ambient fast beats "
                        "L1-wavelet at R = 4 on 2 CPU cores, benchmarks/README.md)")
    d.add_argument("--size", type=int, default=64, help="image size of the demo data (default 64)")
    d.add_argument("--device", default=None, help="cpu, cuda (default: cuda if present)")
    d.add_argument("--adps-steps", type=int, default=100,
                   help="A-DPS steps in the demo (anchor: 500; about 8 s per slice per 100 steps on 2 CPU cores)")
    d.add_argument("--coils", type=int, default=8, help="simulated receive coils (default 8)")
    d.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default 0: 1 or torch's default, whichever a quick benchmark finds "
                        "faster on this machine now; on busy cores one thread can be 20x faster)")
    d.set_defaults(func=_run_demo)
