"""``ambient-mri reconstruct``, ``evaluate`` and ``demo``."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .devices import check_threads
from .errors import H5_DAMAGE, AmbientMRIError, DataFileError
from .files import (
    check_finite_number,
    check_seed,
    content_digest,
    file_sha256,
    input_files,
    refuse_file_name_for_folder,
    refuse_overwrite,
    remove_temps,
    removed_if_left_empty,
    run_lock,
    save_figure,
    source_fingerprint,
    write_json,
    write_text,
)
from .sampling.policy import MRI_METHODS as METHODS


def _model_digest(path: str | None) -> str | None:
    return file_sha256(path) if path else None


def recon_settings(args, source: Path, model_digest: str | None) -> str:
    """What makes a reconstruction file what it is; a resumed run redoes any output whose settings differ.
    Defaults are spelled out (a retrospective mask's kind and ACS fraction, a sampler's steps), so that naming a
    default on the rerun does not redo every volume. The input is known by ``source_fingerprint``; outputs of
    versions before it (name, size and mtime only) cannot be proven to come from this input and are redone once."""
    from .masks import DEFAULT_CENTER_FRACTION
    from .sampling.policy import METHODS as TABLE

    keys = ("method", "mask", "acceleration", "center_fraction", "steps", "num_samples", "seed", "batch_size", "coils")
    values = {k: getattr(args, k, None) for k in keys}
    m = TABLE.get(values["method"])
    if values["acceleration"] is not None:
        values["mask"] = values["mask"] or "random"
        values["center_fraction"] = values["center_fraction"] or DEFAULT_CENTER_FRACTION
    if m is not None and m.stochastic and values["steps"] is None:
        values["steps"] = m.mri_steps
    return json.dumps({**values, "model": model_digest, "source": source_fingerprint(source)}, sort_keys=True)


def finished(out: Path, accepted: set[str]) -> bool:
    """An output counts as done only when it is a whole reconstruction file made with one of these settings, whose
    datasets still hold what was written (``content_digest``; outputs of versions before it are redone once)."""
    import h5py

    try:
        with h5py.File(out, "r") as f:
            stored, digest = (f.attrs.get(k) for k in ("settings", "content_sha256"))
            stored = stored.decode() if isinstance(stored, bytes) else stored
            digest = digest.decode() if isinstance(digest, bytes) else digest
            return (stored in accepted and f["reconstruction"].ndim == 3
                    and digest == content_digest({name: f[name][()] for name in f}))
    except (*H5_DAMAGE, ValueError, TypeError):
        return False


def _report_bad(bad: list[tuple[Path, str]], what: str) -> None:
    if bad:
        print(f"{len(bad)} {what} failed:", file=sys.stderr)
        for f, why in bad:
            print(f"  {f}: {why}", file=sys.stderr)


def run_reconstruct(args) -> int:
    from .recon import DIFFUSION, check_not_foreign, reconstruct_file

    if args.method in DIFFUSION and not args.model:
        raise AmbientMRIError(f"--method {args.method} needs --model (a model file from `ambient-mri train`)")
    for name in ("steps", "num_samples", "batch_size", "threads", "coils"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise AmbientMRIError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    check_threads(args.threads)
    check_seed(args.seed, "--seed")
    check_finite_number("--acceleration", args.acceleration, 1.0)
    check_finite_number("--center-fraction", args.center_fraction, 0.0, strict=True)
    # what does not depend on the volume is checked before any folder is made, not found again in every volume
    from .devices import resolve_device
    from .masks import COLUMN_KINDS
    from .sampling import policy

    policy.check_run(policy.method(args.method, "mri"), args.steps, args.num_samples, args.batch_size, args.seed)
    if args.center_fraction is not None and args.center_fraction >= 1:
        raise AmbientMRIError(f"--center-fraction must be below 1, got {args.center_fraction}")
    if args.mask is not None and args.mask not in COLUMN_KINDS:
        raise AmbientMRIError(f"--mask {args.mask!r} is not a column mask kind; choose one of "
                              f"{', '.join(COLUMN_KINDS)}")
    resolve_device(args.device, "--device")
    out = Path(args.output)
    refuse_file_name_for_folder(out, "the reconstructions (one file per volume, named as its input)")
    files, bad = input_files(args.input)
    single = Path(args.input).is_file()
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
        try:
            check_multicoil_model(opts["model"])
        except AmbientMRIError as e:  # name the file: "model was trained for 'pixel'" left the reader guessing
            raise DataFileError(args.model, str(e)) from None
        digest = _model_digest(args.model)
    done = kept = 0
    with removed_if_left_empty(out):
        with run_lock(out, f"reconstruct {args.input} -> {out}"):
            remove_temps(out, [f.name for f in files])
            # a bar on terminals only (disable=None); closed before an error message is printed
            with tqdm(files, desc=f"reconstruct ({args.method})", unit="volume", disable=None) as bar:
                for f in bar:
                    target = out / f.name
                    try:
                        settings = recon_settings(args, f, digest)  # reads the input: one that fails is listed
                        check_not_foreign(target)  # before reconstruct_file's own check: in the CLI's words
                        if target.exists() and not args.overwrite and finished(target, {settings}):
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
    """One row of titled magnitude panels as a PNG (error and std maps in their own colour map; error maps at a
    quarter of the image scale, std maps at their own, which is often 100x smaller and was drawn black)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2), squeeze=False)
    for ax, (title, img) in zip(axes[0], panels):
        is_map = title.startswith(("error", "std"))
        top = vmax / 4 if is_map else vmax
        if title.startswith("std"):
            own = float(np.percentile(np.abs(img), 99.5))
            top, title = (own, f"{title} (0 to {own:.2g})") if own > 0 else (top, title)
        ax.imshow(np.abs(img), cmap="magma" if is_map else "gray", vmin=0, vmax=top)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def _volume_png(target_file: Path, recon_file: Path, png: Path) -> None:
    """The middle slice of what ``evaluate_file`` scored (the same crop), beside zero-filled, the error and the std
    map where the file has them."""
    import h5py

    from .metrics import center_crop, scored_pair

    gt, rec = scored_pair(target_file, recon_file)
    s = gt.shape[0] // 2
    panels = [("reference", gt[s])]
    with h5py.File(recon_file, "r") as p:
        zf, std = (_panel(p, k) for k in ("zero_filled", "std"))
        method = p.attrs.get("method", "?")
    fits = [a is not None and a.shape[0] == gt.shape[0] and all(a.shape[i] >= gt.shape[i] for i in (1, 2))
            for a in (zf, std)]
    if fits[0]:
        panels.append(("zero-filled", center_crop(zf, gt.shape[-2:])[s]))
    panels += [(f"recon ({method})", rec[s]), ("error |recon - ref|", np.abs(rec[s] - gt[s]))]
    if fits[1]:
        panels.append(("std over samples", center_crop(std, gt.shape[-2:])[s]))
    save_panels(png, panels, float(gt.max()))


def _panel(f, key: str) -> np.ndarray | None:
    """An optional panel of a reconstruction file (zero_filled, std) as a magnitude volume; None when it is
    missing or unusable (not a numeric dataset, not finite): the figure is drawn without it."""
    import h5py

    from .metrics import _volume

    d = f.get(key)
    if not isinstance(d, h5py.Dataset) or d.dtype.kind not in "biufc":
        return None
    try:
        return _volume(d[()], key)
    except AmbientMRIError:
        return None


def _finite_or_none(row: dict) -> dict:
    """JSON has no infinity: a reconstruction identical to its target (PSNR inf) is written as null, with a note."""
    out = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
    if any(out[k] is None and row[k] is not None for k in row):
        out["note"] = "null: not finite (PSNR is infinite for a reconstruction identical to its target)"
    return out


def _earlier_figures(out: Path) -> tuple[list[str], set[str]]:
    """What an earlier evaluate in ``out`` wrote, by its metrics.json: (the figures it records, which this run
    removes where their volume now fails; every name it may have drawn: those and one per scored volume, as
    versions before "figures" named them)."""
    try:
        old = _metrics_record((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return [], set()
    if old is None:
        return [], set()
    names = [n for n in old.get("figures", []) if isinstance(n, str) and Path(n).name == n and n.endswith(".png")]
    drawn = {f"{Path(v['file']).stem}.png" for v in old["volumes"] if isinstance(v, dict)
             and isinstance(v.get("file"), str)}
    return names, set(names) | drawn


CSV_HEADER = "file,PSNR,SSIM,NMSE"
JSON_START = '{\n  "volumes": ['  # how every metrics.json evaluate writes begins


def _metrics_record(text: str) -> dict | None:
    """An earlier evaluate's metrics.json, parsed; None for anything else."""
    try:
        old = json.loads(text)
    except ValueError:
        return None
    return old if isinstance(old, dict) and {"volumes", "mean"} <= set(old) else None


def _refuse_foreign_metrics(out: Path) -> None:
    """metrics.csv / metrics.json in ``out`` that evaluate did not write (e.g. a user's own table in the recon
    folder, the default --output) are someone's results: never overwritten."""
    if not out.is_dir():  # nothing there yet, or not a folder (make_folder says so)
        return
    ours = {"metrics.csv": lambda text: text.splitlines()[:1] == [CSV_HEADER],
            # a damaged copy of evaluate's own (cut short) still opens as json.dumps(indent=2) wrote it: redone
            "metrics.json": lambda text: _metrics_record(text) is not None or text.startswith(JSON_START)}
    for name, is_ours in ours.items():
        if not (out / name).exists():
            continue
        try:
            text = (out / name).read_text()
        except (OSError, ValueError) as e:  # unreadable or not text: cannot be judged, so it is kept
            raise DataFileError(out / name, f"exists and cannot be read ({type(e).__name__}); not overwritten "
                                "(choose another --output)") from None
        if text and not is_ours(text):  # an empty file holds nothing to lose (a write killed before its first byte)
            raise DataFileError(out / name, "exists and was not written by evaluate; not overwritten (choose another "
                                "--output)")


def run_evaluate(args) -> int:
    from .metrics import check_folders, evaluate_dirs

    out = Path(args.output or args.recon)
    refuse_overwrite(list(Path(args.target).glob("*.h5")) + list(Path(args.recon).glob("*.h5")),
                     [out / "metrics.csv", out / "metrics.json"])
    _refuse_foreign_metrics(out)
    check_folders(args.target, args.recon)  # before the lock, which would make a missing --recon (the default out)
    # locked from the first read: a reconstruct still writing into this folder must not be scored half done
    with removed_if_left_empty(out), run_lock(out, f"evaluate {args.recon} against {args.target}"):
        res = evaluate_dirs(args.target, args.recon, strict=False, progress=None)  # a bar on terminals only
        rows = res["volumes"]
        print(f"{'volume':<32} {'PSNR':>8} {'SSIM':>8} {'NMSE':>9}")
        for r in rows:
            print(f"{r['file']:<32} {r['PSNR']:8.3f} {r['SSIM']:8.4f} {r['NMSE']:9.5f}")
        m = res["mean"]
        label = f"mean of {len(rows)}/{res['targets']}"
        print(f"{label:<32} {m['PSNR']:8.3f} {m['SSIM']:8.4f} {m['NMSE']:9.5f}")
        for r in rows:
            if "warning" in r:
                print(f"warning: {r['warning']}: scored as {r['file']}", file=sys.stderr)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_HEADER.split(","), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows + [{"file": "mean", **m}])
        remove_temps(out, ["metrics.csv", "metrics.json", *(f"{Path(r['file']).stem}.png" for r in rows)])
        earlier, ours = _earlier_figures(out)
        bad = [(Path(f["path"]), f["reason"]) for f in res["failed"]]
        bad += [(Path(args.recon) / name, "no reconstruction for this target") for name in res["missing"]]
        result = {**res, "volumes": [_finite_or_none(r) for r in rows], "mean": _finite_or_none(m), "figures": []}
        write_text(out / "metrics.csv", buf.getvalue())  # the metrics first: a figure that fails cannot lose them
        write_json(out / "metrics.json", {**result, "figures": earlier})  # until redrawn, the earlier figures stand
        figures = []
        for r in tqdm(rows, desc="figures", unit="volume", disable=None, leave=False):
            png = f"{Path(r['file']).stem}.png"
            if (out / png).exists() and png not in ours:  # someone's file where the figure goes: left alone
                bad.append((out / png, "exists and was not drawn by evaluate: not overwritten (figure not written)"))
                continue
            try:
                _volume_png(Path(args.target) / r["file"], Path(args.recon) / r["file"], out / png)
                figures.append(png)
            except Exception as e:  # noqa: BLE001 - the metrics stand; the figure is listed as failed
                bad.append((out / png, f"figure not written ({type(e).__name__}: {e})"))
        for name in set(earlier) - set(figures):  # an earlier run's figure of a volume that now fails would mislead
            (out / name).unlink(missing_ok=True)
        write_json(out / "metrics.json", {**result, "figures": figures})
    print(f"metrics.csv, metrics.json and {len(figures)} PNG(s) in {out}")
    if len(rows) < res["targets"]:
        print(f"warning: the mean is over {len(rows)} of {res['targets']} target volumes", file=sys.stderr)
    if res["without_target"]:
        names = res["without_target"]
        print(f"note: {len(names)} reconstruction(s) in {args.recon} have no target of that name in {args.target}, "
              f"not scored: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}", file=sys.stderr)
    _report_bad(bad, "volume(s) or figure(s)")
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
                   help="training time budget in minutes (default 13: about 1060 steps on 2 CPU cores, after which "
                        "ambient fast is above L1-wavelet and CG-SENSE at R = 4 and 8, benchmarks/README.md)")
    d.add_argument("--size", type=int, default=64, help="image size of the demo data (default 64)")
    d.add_argument("--device", default=None, help="cpu, cuda (default: cuda if present)")
    d.add_argument("--adps-steps", type=int, default=100,
                   help="A-DPS steps in the demo (anchor: 500; about 8 s per slice per 100 steps on 2 CPU cores)")
    d.add_argument("--coils", type=int, default=8, help="simulated receive coils (default 8)")
    d.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default 0: 1 or torch's default, whichever a quick benchmark finds "
                        "faster on this machine now; on busy cores one thread can be 20x faster)")
    d.set_defaults(func=_run_demo)
