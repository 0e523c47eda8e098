"""Does training-data augmentation help the demo model on anatomy from another source?

Two ambient models train side by side with the demo recipe for the same wall time (one process and one torch
thread each): one on the demo's R=4 training set, one on the same set plus ``--copies`` augmented copies of every
clean training slice (``data_tools.demo.demo_augment``: mirror, small affine, gentle elastic warp, mild gamma),
each copy simulated and undersampled once like a new subject. Both are scored with ambient ``fast`` (mean of 2
samples of 25 steps) and one-step on the demo's held-out volume (MNI152, the training source) and on the other
source (``data_tools.other_sets``: nibabel's real EPI subject, other coils), at R = 4 and 8, beside zero-filled,
CG-SENSE and L1-wavelet. Prints a table and writes benchmarks/results/augment_demo.json.

    python benchmarks/augment_demo.py [--minutes 12] [--copies 1] [--work /tmp/augment_demo]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, training_steps, write_record  # noqa: E402

import ambient_mri as am  # noqa: E402
from ambient_mri.metrics import evaluate_dirs  # noqa: E402
from data_tools.demo import build_demo, demo_augment, demo_center_fraction  # noqa: E402
from data_tools.other_sets import build_epi_set  # noqa: E402

RECIPE = ROOT / "recipes" / "demo_mni_r4.yaml"
CLASSICAL = ("zero_filled", "sense", "l1_wavelet")
LEARNED = {"one_step": {}, "fast": {"steps": 25, "num_samples": 2}}


def _train(data: str, out: str, minutes: float) -> dict:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    run = am.train(RECIPE, [f"data.path={data}", f"output={out}", f"max_minutes={minutes}"], progress=False)
    return {"run": str(run), "last_logged_step": training_steps(Path(run) / "model.pt")}


def _score(raw_val: Path, folder: Path, R: int, method: str, model=None, opts=None) -> float:
    cf = demo_center_fraction(64, R)
    for f in sorted(raw_val.glob("*.h5")):
        am.reconstruct_file(f, folder / f.name, mask="random", acceleration=R, center_fraction=cf, method=method,
                            model=model, progress=False, **(opts or {}))
    return round(evaluate_dirs(raw_val, folder)["mean"]["PSNR"], 3)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=12.0, help="training wall time per model (both at once)")
    p.add_argument("--copies", type=int, default=1)
    p.add_argument("--work", default="/tmp/augment_demo")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "augment_demo.json"))
    args = p.parse_args(argv)
    tic = time.perf_counter()
    work = Path(args.work)
    plain = build_demo(work / "plain")
    aug = build_demo(work / "augmented", augment=demo_augment(args.copies))
    epi = build_epi_set(work / "epi")
    sets = {"demo (MNI152, training source)": Path(plain["raw_val"]), "other source (nibabel EPI)":
            Path(epi["raw_val"])}
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        jobs = {name: pool.submit(_train, str(d["r4_train"]), str(work / name / "runs"), args.minutes)
                for name, d in (("plain", plain), ("augmented", aug))}
        runs = {name: j.result() for name, j in jobs.items()}
    torch.set_num_threads(2)
    models = {name: am.load_model(Path(r["run"]) / "model.pt") for name, r in runs.items()}
    rows = []
    for set_name, raw_val in sets.items():
        for R in (4, 8):
            row = {"set": set_name, "R": R}
            for method in CLASSICAL:
                row[method] = _score(raw_val, work / "recon" / set_name[:5] / f"r{R}" / method, R, method)
            for name, model in models.items():
                for method, opts in LEARNED.items():
                    folder = work / "recon" / set_name[:5] / f"r{R}" / f"{name}_{method}"
                    row[f"{name} {method}"] = _score(raw_val, folder, R, method, model, opts)
            rows.append(row)
            print(row, flush=True)
    cols = [c for c in rows[0] if c not in ("set", "R")]
    print(f"{'set':<32} {'R':>2} " + " ".join(f"{c:>18}" for c in cols))
    for r in rows:
        print(f"{r['set']:<32} {r['R']:>2} " + " ".join(f"{r[c]:18.2f}" for c in cols))
    record = {"benchmark": "augment_demo", "machine": machine_info("cpu"),
              "settings": {"minutes": args.minutes, "copies": args.copies, "augment": vars(demo_augment(args.copies)),
                           "recipe": str(RECIPE.relative_to(ROOT)), "threads_per_model": 1,
                           "fast": LEARNED["fast"], "training": runs},
              "rows": rows}
    return write_record(record, Path(args.out), tic)


if __name__ == "__main__":
    main()
