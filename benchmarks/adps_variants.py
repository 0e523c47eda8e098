"""A-DPS with an ambient model: which Ã, how many samples, beside one-step, CG-SENSE and zero-filled.

Each variant is ``a_tilde:N[:zeta[:sigma_min]]``: Ã ``training`` (the anchor's: a fresh training-type mask per
slice), ``scan`` (the model's further corruption of the scan's own mask) or ``acquired`` (the scan's mask itself,
as one-step sees it), N samples averaged (``num_samples``; N = 1 is one posterior sample, as published) and the
step size ζ and the last noise level σ_min (defaults: ``reconstruct``'s). Sets: a calibration volume of MNI slices
that neither demo split uses (``data_tools.demo.build_calibration``: settings are chosen there), the demo's held-
out volume (training source) and the nibabel EPI subject (other source, ``data_tools.other_sets``), all fastMRI
files, reconstructed with ``reconstruct_file`` (random masks seeded by the file name, the demo's ACS rule) and
scored with fastMRI's volume PSNR and SSIM against the RSS target. Prints a table; writes
benchmarks/results/adps_variants.json.

    python benchmarks/adps_variants.py --model demo_run/runs/demo_mni_r4/model.pt --demo demo_run [--device cuda]
        [--steps 500] [--variants scan:1 acquired:1 training:1 acquired:8] [--workers 3]
        [--with-fast [--fast-a-tilde acquired]]
        [--set calib=DIR --set demo=DIR --set epi=DIR]  # prebuilt raw folders instead of building them
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, training_steps, write_record  # noqa: E402

import ambient_mri as am  # noqa: E402
from ambient_mri.metrics import evaluate_dirs  # noqa: E402

_MODEL = {}


def _run(task: dict) -> dict:
    """One (set, R, method) cell in a worker process: reconstruct every file of the set, score the folder."""
    from data_tools.demo import demo_center_fraction

    torch.set_num_threads(task["threads"])
    model = None
    if task["model"]:
        if task["model"] not in _MODEL:
            _MODEL[task["model"]] = am.load_model(task["model"], device=task["device"])
        model = _MODEL[task["model"]]
    raw, folder, R = Path(task["raw"]), Path(task["folder"]), task["R"]
    tic = time.perf_counter()
    for f in sorted(raw.glob("*.h5")):
        am.reconstruct_file(f, folder / f.name, mask="random", acceleration=R,
                            center_fraction=demo_center_fraction(64, R), method=task["method"], model=model,
                            device=task["device"] if model is not None else None, progress=False, **task["opts"])
    mean = evaluate_dirs(raw, folder)["mean"]
    return {**{k: task[k] for k in ("set", "R", "label")}, "PSNR": round(mean["PSNR"], 3),
            "SSIM": round(mean["SSIM"], 4), "seconds": round(time.perf_counter() - tic, 1)}


def _sets(args) -> dict[str, str]:
    given = dict(s.split("=", 1) for s in args.set)
    sets = {}
    for name in args.sets:
        if name in given:
            sets[name] = given[name]
        elif name == "calib":
            from data_tools.demo import build_calibration
            sets[name] = str(build_calibration(Path(args.work) / "calib"))
        elif name == "demo":
            sets[name] = str(Path(args.demo) / "data" / "raw" / "val")
        elif name == "epi":
            from data_tools.other_sets import build_epi_set
            sets[name] = str(build_epi_set(Path(args.work) / "epi")["raw_val"])
        else:
            raise SystemExit(f"unknown set {name!r}: calib, demo, epi, or give it with --set {name}=DIR")
    return sets


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an ambient MRI model (model.pt)")
    p.add_argument("--demo", default="demo_run", help="the demo's output folder (its held-out volume)")
    p.add_argument("--sets", nargs="+", default=["calib", "demo", "epi"])
    p.add_argument("--set", action="append", default=[], metavar="NAME=DIR", help="a prebuilt raw folder")
    p.add_argument("--variants", nargs="*", default=["scan:1", "acquired:1", "training:1", "acquired:8"])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--accelerations", type=int, nargs="+", default=[4, 6, 8])
    p.add_argument("--classical", action="store_true", help="also zero-filled, CG-SENSE and L1-wavelet")
    p.add_argument("--with-fast", action="store_true", help="also ambient fast (2 x 25 steps, the demo's setting)")
    p.add_argument("--fast-a-tilde", nargs="+", default=[], metavar="KIND",
                   help="with --with-fast: also fast with these Ã kinds (scan is its default; acquired, training)")
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="/tmp/adps_variants")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "adps_variants.json"))
    args = p.parse_args(argv)
    tic = time.perf_counter()
    sets = _sets(args)
    methods = [("one-step", "one_step", {})]
    for v in args.variants:  # a_tilde:N[:zeta[:sigma_min]]
        a, n, *rest = v.split(":")
        methods.append((f"A-DPS {v}", "adps", {"steps": args.steps, "a_tilde": a, "num_samples": int(n),
                                                **dict(zip(("zeta", "sigma_min"), map(float, rest)))}))
    if args.with_fast:
        methods.append(("fast", "fast", {"steps": 25, "num_samples": 2}))
        methods += [(f"fast a_tilde={a}", "fast", {"steps": 25, "num_samples": 2, "a_tilde": a})
                    for a in args.fast_a_tilde]
    if args.classical:
        methods = [("zero-filled", "zero_filled", {}), ("CG-SENSE", "sense", {}), ("L1-wavelet", "l1_wavelet", {})
                   ] + methods
    tasks = []
    for name, raw in sets.items():
        for R in args.accelerations:
            for label, method, opts in methods:
                tag = label.replace(" ", "_").replace(":", "x")
                tasks.append({"set": name, "R": R, "label": label, "method": method, "opts": opts, "raw": raw,
                              "folder": str(Path(args.work) / "recon" / Path(args.model).parent.name / name
                                            / f"r{R}" / tag),
                              "model": args.model if method not in ("zero_filled", "sense", "l1_wavelet") else None,
                              "device": args.device, "threads": args.threads})
    # the costly cells first, so that the workers finish together
    tasks.sort(key=lambda t: -t["opts"].get("steps", 0) * t["opts"].get("num_samples", 1))
    rows = []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        for job in as_completed([pool.submit(_run, t) for t in tasks]):
            rows.append(job.result())
            print(rows[-1], flush=True)
    labels = [m[0] for m in methods]
    print(f"\n{'set':6} {'R':>2} " + " ".join(f"{lab:>18}" for lab in labels))
    for name in sets:
        for R in args.accelerations:
            cells = {r["label"]: r["PSNR"] for r in rows if r["set"] == name and r["R"] == R}
            print(f"{name:6} {R:>2} " + " ".join(f"{cells.get(lab, float('nan')):>18.2f}" for lab in labels))
    record = {"benchmark": "adps_variants", "machine": machine_info(args.device or "cpu"),
              "settings": {**vars(args), "sets": sets, "training_steps": training_steps(args.model)},
              "rows": rows}
    return write_record(record, Path(args.out), tic)


if __name__ == "__main__":
    main()
