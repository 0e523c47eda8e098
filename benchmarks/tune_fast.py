"""How many CG steps the fast sampler takes between denoiser calls, its data weight ρ (λ_i = ρ σ_n²/σ_i²) and
its DDIM noise η, chosen per kind of prior on a calibration volume, never on the volume that quality_mri.py scores.

The calibration volume (data_tools.demo.build_calibration) holds MNI slices that neither the training nor the
validation split uses, at least 3 slices from every validation slice. The models are the two that quality_mri.py
trained in --work (an ambient model from R=4 data, an oracle from fully-sampled data). Each (model, R, cg_iters,
rho, eta) cell runs `reconstruct_file(method="fast", steps=S, num_samples=N)` on the calibration volume and scores it
against its fully-sampled reference. Prints a table and writes benchmarks/results/tune_fast.json.

    python benchmarks/quality_mri.py ...           # trains the models in /tmp/quality_mri
    python benchmarks/tune_fast.py [--work /tmp/quality_mri] [--cg-iters 5 10 20 40] [--rho 10] [--eta 0 0.5]
                                   [--accelerations 4 8]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from quality_mri import RESULTS, RUNS, _evaluate, _threads

from data_tools.demo import build_calibration, demo_center_fraction


def main() -> None:
    from common import machine_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/quality_mri", help="quality_mri.py's --work (its trained models)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--slices", type=int, default=90)
    p.add_argument("--cg-iters", type=int, nargs="+", default=[5, 10, 20, 40])
    p.add_argument("--accelerations", type=int, nargs="+", default=[4, 8])
    p.add_argument("--rho", type=float, nargs="+", default=[10.0])
    p.add_argument("--eta", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--num-samples", type=int, default=2, help="posterior samples averaged (NFE = steps x samples)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=str(RESULTS / "tune_fast.json"))
    args = p.parse_args()
    tic = time.time()
    _threads(1)
    work = Path(args.work)
    models = {k: work / "runs" / v / "model.pt" for k, v in RUNS.items()}
    missing = [str(m) for m in models.values() if not m.is_file()]
    if missing:
        raise SystemExit(f"no trained model at {', '.join(missing)}: run benchmarks/quality_mri.py first")
    calib = build_calibration(work / "data", size=args.size, coils=args.coils, slices=args.slices)
    grid = [{"cg_iters": n, "rho": rho, "eta": eta} for n in args.cg_iters for rho in args.rho for eta in args.eta]
    name = {i: " ".join(f"{k}={v:g}" for k, v in c.items()) for i, c in enumerate(grid)}
    tasks = [{"set": "calib", "R": R, "cf": demo_center_fraction(args.size, R), "label": f"{key} {name[i]}",
              "method": "fast",
              "model": key, "opts": {"steps": args.steps, "num_samples": args.num_samples, **c},
              "folder": str(work / "calib_recon" / f"r{R}" / f"{key}_{name[i].replace(' ', '_')}"),
              "raw_val": str(calib), "models": {k: str(v) for k, v in models.items()}, "device": args.device,
              "threads": 1}
             for key in models for R in args.accelerations for i, c in enumerate(grid)]
    ref = [{**tasks[0], "R": R, "cf": demo_center_fraction(args.size, R), "label": "l1_wavelet", "method": "l1_wavelet",
            "model": None, "opts": {}, "folder": str(work / "calib_recon" / f"r{R}" / "l1_wavelet")}
           for R in args.accelerations]  # the classical baseline on the same volume, for reference
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as ex:
        rows = [{**r, "model": t["model"], "cell": t["label"].split(" ", 1)[1]}
                for t, r in zip(tasks, ex.map(_evaluate, tasks))]
        l1 = {t["R"]: r["PSNR"] for t, r in zip(ref, ex.map(_evaluate, ref))}
    best = {}
    for key in models:
        mean = {c: sum(r["PSNR"] for r in rows if r["model"] == key and r["cell"] == c) / len(args.accelerations)
                for c in name.values()}
        best[key] = {"setting": max(mean, key=mean.get), "mean_psnr": mean}
    print(f"{'model':8s} {'R':>2s} " + " ".join(f"{c:>24s}" for c in name.values()))
    for key in models:
        for R in args.accelerations:
            cells = {r["cell"]: r["PSNR"] for r in rows if r["model"] == key and r["R"] == R}
            print(f"{key:8s} {R:2d} " + " ".join(f"{cells[c]:24.2f}" for c in name.values()))
        print(f"{key:8s} best (mean PSNR over R): {best[key]['setting']}")
    print("l1_wavelet on the same volume: " + ", ".join(f"R={R} {v:.2f}" for R, v in l1.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "tune_fast", "machine": machine_info(args.device or "cpu"),
              "settings": {**vars(args), "calibration": str(calib),
                           "models": {k: str(v) for k, v in models.items()}},
              "rows": rows, "best": best, "l1_wavelet_psnr": l1, "seconds": round(time.time() - tic, 1)}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out} in {time.time() - tic:.0f} s")


if __name__ == "__main__":
    main()
