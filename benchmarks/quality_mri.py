"""Reconstruction quality on the MNI demo data: an ambient model trained only on R=4 k-space against an oracle
trained on fully-sampled k-space with the same budget, and the classical baselines, at R = 4, 6, 8.

Two evaluation sets, side by side (``--sets``):

    demo  the demo's held-out volume: 8 MNI152 T1 template slices from a slab disjoint from the training slabs
          (the template is what the models train on, and the samplers were tuned on its calibration slices)
    epi   another source: 8 axial slices of one real subject, nibabel's bundled BOLD EPI (example4d.nii.gz),
          simulated with the same coil count and noise but another birdcage radius and seed
          (data_tools.other_sets.build_epi_set), written in the same official fastMRI layout

Both are reconstructed with the same fastMRI random masks and centre fractions (demo_center_fraction).

Not a test (about 40-45 minutes on a 2-core CPU at the defaults with the demo set only; the second set adds
about half the evaluation time). The two models train side by side (one process and one torch thread each,
--minutes of wall time each), then --workers processes reconstruct the held-out volumes with every method at
every R (the long A-DPS/DPS runs first). Prints a table and writes benchmarks/results/quality_mri.json and
quality_mri.png (one row of plots per set).

    python benchmarks/quality_mri.py [--size 64] [--minutes 20] [--adps-steps 500] [--workers 2] [--work DIR]
                                     [--sets demo epi] [--device cuda] [--set training.batch_size=32 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import h5py
import numpy as np
import torch

import ambient_mri as am
from ambient_mri.metrics import evaluate_dirs
from data_tools.demo import build_demo, demo_center_fraction
from data_tools.other_sets import build_epi_set

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "recipes" / "demo_mni_r4.yaml"
RUNS = {"ambient": "ambient_r4", "oracle": "oracle_full"}  # model key -> run name under --work/runs
# evaluation set key -> (name in tables, description); the demo's reconstructions stay under --work/recon
SETS = {
    "demo": ("demo (MNI152, tuned on)",
             "MNI152 2009a T1 template (nilearn; the training source), held-out slab of 8 axial slices"),
    "epi": ("other source (nibabel EPI)",
            "nibabel example4d.nii.gz: one real subject's BOLD EPI (another scanner, subject and contrast), "
            "8 axial slices; same coil count and noise, birdcage radius 1.2 instead of 1.5, seed 5000"),
}


REDUCIBLE = ("size", "coils", "slices", "minutes", "adps_steps", "accelerations", "sets")  # reported if not default


def methods(adps_steps: int) -> list[tuple[str, str, str | None, dict]]:
    """(label, method, model key, options)."""
    return [
        ("zero_filled", "zero_filled", None, {}),
        ("cg_sense", "sense", None, {}),
        ("l1_wavelet", "l1_wavelet", None, {}),
        ("ambient one-step", "one_step", "ambient", {}),
        # fast: the mean of 2 posterior samples at equal NFE (+0.13 dB over one 50-step sample in a pilot on the
        # calibration volume, docs/reconstruction.md) and a std map for free
        ("ambient fast (50 NFE)", "fast", "ambient", {"steps": 25, "num_samples": 2}),
        ("ambient fast (100 NFE)", "fast", "ambient", {"steps": 50, "num_samples": 2}),
        (f"ambient A-DPS ({adps_steps})", "adps", "ambient", {"steps": adps_steps}),
        ("oracle fast (50 NFE)", "fast", "oracle", {"steps": 25, "num_samples": 2}),
        (f"oracle DPS ({adps_steps})", "dps", "oracle", {"steps": adps_steps}),
    ]


def _threads(n: int) -> None:
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def _train(overrides: list[str], threads: int) -> str:
    _threads(threads)
    return str(am.train(RECIPE, overrides, progress=False))


_MODELS: dict = {}


def _evaluate(task: dict) -> dict:
    """One (R, method) cell: reconstruct every held-out file, score it against its fully-sampled reference."""
    _threads(task["threads"])
    key = task["model"]
    if key and key not in _MODELS:
        _MODELS[key] = am.load_model(task["models"][key], device=task["device"])
    folder = Path(task["folder"])
    t0 = time.time()
    nfe, slices = 0, 0
    for f in sorted(Path(task["raw_val"]).glob("*.h5")):
        out = am.reconstruct_file(f, folder / f.name, mask="random", acceleration=task["R"],
                                  center_fraction=task["cf"], method=task["method"], model=_MODELS.get(key),
                                  device=task["device"], progress=False, **task["opts"])
        with h5py.File(out, "r") as h:
            nfe, slices = int(h.attrs["nfe"]), slices + h["reconstruction"].shape[0]
    m = evaluate_dirs(task["raw_val"], folder)["mean"]
    return {"set": task["set"], "R": task["R"], "method": task["label"], "options": task["opts"], **m, "nfe": nfe,
            "seconds_per_slice": round((time.time() - t0) / max(slices, 1), 3),
            "PSNR_per_slice": _slice_psnr(task["raw_val"], folder)}


HEAD = 0.08  # head mask: reference above this fraction of its volume's maximum


def _folder(work: Path, R: int, label: str, set_key: str = "demo") -> Path:
    root = work / ("recon" if set_key == "demo" else f"recon_{set_key}")
    return root / f"r{R}" / label.replace(" ", "_").replace("(", "").replace(")", "")


def head_ssim(raw_val: str, folder: Path) -> float:
    """SSIM (fastMRI's: 7x7 window, data_range the volume maximum) averaged over the head only: reference pixels
    above HEAD of the volume maximum. Outside the head the RSS reference holds its noise floor (about 0.015 of
    the maximum here) while SENSE-type reconstructions are zero outside the coil maps' support, and SSIM's
    luminance term there is C1 / (μ² + C1) ≈ 0.3 whatever the reconstruction inside the head."""
    from skimage.metrics import structural_similarity

    from ambient_mri.metrics import center_crop

    vals = []
    for f in sorted(Path(raw_val).glob("*.h5")):
        with h5py.File(f, "r") as h, h5py.File(folder / f.name, "r") as r:
            gt = h["reconstruction_rss"][()]
            pred = center_crop(r["reconstruction"][()], gt.shape[-2:])
        for g, p in zip(gt, pred):
            _, smap = structural_similarity(g, p, data_range=gt.max(), full=True)
            vals.append(smap[g > HEAD * gt.max()])
    return float(np.concatenate(vals).mean())


def _slice_psnr(raw_val: str, folder: Path) -> list[float]:
    """PSNR of every held-out slice (data range: its volume's maximum, as the volume PSNR uses), for paired
    per-slice comparisons of two methods."""
    from skimage.metrics import peak_signal_noise_ratio

    from ambient_mri.metrics import center_crop

    out = []
    for f in sorted(Path(raw_val).glob("*.h5")):
        with h5py.File(f, "r") as h, h5py.File(folder / f.name, "r") as r:
            gt = h["reconstruction_rss"][()]
            pred = center_crop(r["reconstruction"][()], gt.shape[-2:])
        out += [round(float(peak_signal_noise_ratio(g, p, data_range=gt.max())), 3) for g, p in zip(gt, pred)]
    return out


PAIRS = [("ambient fast (50 NFE)", "l1_wavelet"), ("ambient fast (50 NFE)", "cg_sense")]


def paired(rows: list[dict]) -> dict:
    """Per set and R, each pair (a, b) of PAIRS: PSNR(a) - PSNR(b) slice by slice: mean, SD, how many slices a
    wins. Keys "R=4", ... for the demo set (as before the second set), "epi R=4", ... for the others."""
    out: dict = {}
    for s, R in sorted({(r.get("set", "demo"), r["R"]) for r in rows}, key=lambda k: (list(SETS).index(k[0]), k[1])):
        cell = {r["method"]: r.get("PSNR_per_slice") for r in rows if r["R"] == R and r.get("set", "demo") == s}
        for a, b in PAIRS:
            if cell.get(a) and cell.get(b):
                d = [x - y for x, y in zip(cell[a], cell[b])]
                mean = sum(d) / len(d)
                sd = (sum((v - mean) ** 2 for v in d) / max(len(d) - 1, 1)) ** 0.5
                out.setdefault(f"R={R}" if s == "demo" else f"{s} R={R}", {})[f"{a} - {b}"] = {
                    "mean_dB": round(mean, 3), "sd_dB": round(sd, 3), "slices_won": sum(v > 0 for v in d),
                    "slices": len(d)}
    return out


def main() -> None:
    from common import machine_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--slices", type=int, default=90, help="MNI slices in the demo set (train + held-out val)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (1 is fastest on 2 busy cores)")
    p.add_argument("--workers", type=int, default=2, help="processes for the evaluation")
    p.add_argument("--minutes", type=float, default=20.0, help="training wall time per model (both at once)")
    p.add_argument("--adps-steps", type=int, default=500)
    p.add_argument("--accelerations", type=int, nargs="+", default=[4, 6, 8])
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS),
                   help="evaluation sets: demo (MNI152 held-out slab), epi (nibabel's real EPI subject)")
    p.add_argument("--work", default="/tmp/quality_mri")
    p.add_argument("--device", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override for both models (e.g. training.batch_size=32 on a GPU)")
    p.add_argument("--out", default=str(RESULTS / "quality_mri.json"), help="result JSON (the PNG goes beside it)")
    p.add_argument("--reuse", action="store_true", help="evaluate the models already trained in --work again")
    p.add_argument("--only", nargs="+", default=None, metavar="LABEL",
                   help="with --reuse: re-evaluate only these methods (labels as in the table) and keep the other rows "
                        "of --out (a new --out holds just these rows)")
    args = p.parse_args()
    labels = [m[0] for m in methods(args.adps_steps)]
    if args.only and not args.reuse:
        p.error("--only needs --reuse (models already trained in --work)")
    unknown = sorted(set(args.only or []) - set(labels))
    if unknown:
        p.error(f"--only: unknown method(s) {unknown}; the labels are {labels}")
    tic = time.time()
    _threads(args.threads)
    work = Path(args.work)
    paths = build_demo(work / "data", size=args.size, coils=args.coils, slices=args.slices)
    raw_val = {"demo": str(paths["raw_val"]),  # the held-out volume of each set, in the same fastMRI layout
               "epi": str(build_epi_set(work / "epi_data", size=args.size, coils=args.coils)["raw_val"])}
    common = [f"output={work / 'runs'}", f"max_minutes={args.minutes}", "steps=1000000"]
    if args.device:
        common.append(f"device={args.device}")
    common += args.set
    jobs = {
        "ambient": common + [f"data.path={paths['r4_train']}", f"name={RUNS['ambient']}"],
        "oracle": common + [f"data.path={paths['full_train']}", f"name={RUNS['oracle']}", "corruption.ambient=false",
                            "corruption.cond=[ones]"],
    }
    ctx = get_context("spawn")  # fresh interpreters: no torch thread pool or CUDA state inherited
    if args.reuse and all((work / "runs" / n / "model.pt").is_file() for n in RUNS.values()):
        runs = {k: work / "runs" / n for k, n in RUNS.items()}
        previous = json.loads(Path(args.out).read_text())["settings"] if Path(args.out).is_file() else {}
        train_s = 60 * float(previous["train_minutes_wall"]) if previous.get("train_minutes_wall") else None
    else:
        with ProcessPoolExecutor(len(jobs), mp_context=ctx) as ex:
            futs = {k: ex.submit(_train, v, args.threads) for k, v in jobs.items()}
            runs = {k: Path(f.result()) for k, f in futs.items()}
        train_s = time.time() - tic
    logs = {k: [json.loads(line) for line in (v / "log.jsonl").read_text().splitlines()] for k, v in runs.items()}
    unlogged = [str(runs[k]) for k, log in logs.items() if not log]
    if unlogged:  # fewer steps than training.log_every: nothing to report the training by
        raise SystemExit(f"quality_mri: no training step logged in {', '.join(unlogged)}; train longer (--minutes) "
                         "or log more often (--set training.log_every=N)")
    steps_trained = {k: log[-1]["step"] for k, log in logs.items()}
    # from each run's own log, so a model trained further (resumed) is reported as it is (with --only into an earlier
    # record these go under settings.reevaluated: the record's own settings stay those of the run that trained)
    train_minutes = {k: round(sum(r["seconds"] for r in log) / 60, 1) for k, log in logs.items()}
    print(f"trained {train_minutes} min (logged){' (reused)' if args.reuse else ''}: {steps_trained} steps", flush=True)

    tasks = []
    for set_key in args.sets:
        for R in args.accelerations:
            for label, method, key, opts in methods(args.adps_steps):
                if args.only and label not in args.only:
                    continue
                tasks.append({"set": set_key, "R": R, "cf": demo_center_fraction(args.size, R), "label": label,
                              "method": method, "model": key, "opts": opts,
                              "folder": str(_folder(work, R, label, set_key)), "raw_val": raw_val[set_key],
                              "models": {k: str(v / "model.pt") for k, v in runs.items()},
                              "device": args.device, "threads": args.threads})
    cost = {"adps": 3.0, "dps": 3.0, "ald": 1.0, "fast": 1.0, "one_step": 0.0}  # NFE x (1 or fwd+bwd)
    tasks.sort(key=lambda t: -cost.get(t["method"], 0.0) * t["opts"].get("steps", 1) * t["opts"].get("num_samples", 1))
    rows = []
    with ProcessPoolExecutor(args.workers, mp_context=ctx) as ex:
        for fut in as_completed([ex.submit(_evaluate, t) for t in tasks]):
            r = fut.result()
            rows.append(r)
            print(f"{r['set']:<4} R={r['R']} {r['method']:<26} PSNR {r['PSNR']:6.2f} SSIM {r['SSIM']:.4f} "
                  f"NMSE {r['NMSE']:.5f} NFE {r['nfe']:4d} {r['seconds_per_slice']:7.2f} s/slice", flush=True)
    out = Path(args.out)
    earlier = json.loads(out.read_text()) if args.only and out.is_file() else {}
    if earlier:  # the other rows as they were measured, with the settings and seconds of that run
        for r in earlier["rows"]:
            r.setdefault("set", "demo")  # records from before the second set hold demo rows only
        rows += [r for r in earlier["rows"] if not (r["method"] in args.only and r["set"] in args.sets)]
    rows.sort(key=lambda r: (list(SETS).index(r["set"]), r["R"], labels.index(r["method"])))
    for r in rows:  # every row, also those kept from an earlier run (their reconstructions are still in --work)
        r["SSIM_head"] = head_ssim(raw_val[r["set"]], _folder(work, r["R"], r["method"], r["set"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "quality_mri",
        "machine": machine_info(args.device or "cpu"),
        "settings": {**vars(args), "steps_trained": steps_trained, "train_minutes_logged": train_minutes,
                     "train_minutes_wall": train_s and round(train_s / 60, 2),
                     "recipe": str(RECIPE.relative_to(ROOT)),
                     "data": "MNI152 demo (simulated coils), val volume held out, fastMRI random masks",
                     "evaluation_sets": {k: {"name": SETS[k][0], "source": SETS[k][1], "raw_val": raw_val[k]}
                                         for k in args.sets},
                     "reduced_from_defaults": {k: {"default": p.get_default(k), "used": v}
                                               for k, v in vars(args).items() if k in REDUCIBLE
                                               and v != p.get_default(k)},
                     "seconds_per_slice": "wall time of one worker; workers ran concurrently"},
        "rows": rows, "paired_per_slice_psnr": paired(rows), "seconds": round(time.time() - tic, 1),
    }
    if earlier:  # the run that trained the models and measured the other rows stays the record's settings
        before = earlier["settings"].get("reevaluated", [])  # one entry per re-evaluation, oldest first
        before = [before] if isinstance(before, dict) else before
        record["settings"] = {**earlier["settings"], "reevaluated": [*before, {
            "methods": args.only, "machine": record["machine"], "seconds": record["seconds"],
            "settings": {k: v for k, v in vars(args).items() if k in ("device", "workers", "threads", "only")},
            "steps_trained": steps_trained, "train_minutes_logged": train_minutes}]}
        record["machine"], record["seconds"] = earlier["machine"], earlier["seconds"]
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)
    _plot(rows, out.with_suffix(".png"))
    print()
    print(table(rows))
    for R, pairs in record["paired_per_slice_psnr"].items():
        for name, v in pairs.items():
            print(f"{R} {name}: {v['mean_dB']:+.2f} dB (SD {v['sd_dB']:.2f}), "
                  f"better on {v['slices_won']}/{v['slices']} slices")
    print(f"wrote {out} in {time.time() - tic:.0f} s")


def _cell(rows: list[dict], set_key: str, R: int, method: str) -> dict | None:
    return next((r for r in rows if r.get("set", "demo") == set_key and r["R"] == R and r["method"] == method), None)


def table(rows: list[dict]) -> str:
    """Every method and R with the sets side by side: PSNR, SSIM, SSIM inside the head; '<zf' marks a PSNR below
    zero-filled's on that set at that R."""
    sets = [k for k in SETS if any(r.get("set", "demo") == k for r in rows)]
    labels = list(dict.fromkeys(r["method"] for r in rows))
    width = max(25, *(len(SETS[k][0]) for k in sets))
    lines = [f"{'method':<26} {'R':>2} " + " | ".join(SETS[k][0].ljust(width) for k in sets),
             f"{'':<26} {'':>2} " + " | ".join(f"{'PSNR':>6}{'':3} {'SSIM':>7} {'head':>7}".ljust(width) for _ in sets)]
    for R in sorted({r["R"] for r in rows}):
        for lab in labels:
            parts = []
            for k in sets:
                c, zf = _cell(rows, k, R, lab), _cell(rows, k, R, "zero_filled")
                if c is None:
                    parts.append(f"{'-':>6}{'':3} {'-':>7} {'-':>7}".ljust(width))
                    continue
                low = "<zf" if zf is not None and lab != "zero_filled" and c["PSNR"] < zf["PSNR"] else ""
                head = c.get("SSIM_head", float("nan"))
                parts.append(f"{c['PSNR']:6.2f}{low:<3} {c['SSIM']:7.4f} {head:7.4f}".ljust(width))
            lines.append(f"{lab:<26} {R:>2} " + " | ".join(parts))
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    """One row of plots per evaluation set: PSNR and SSIM against R for every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [k for k in SETS if any(r.get("set", "demo") == k for r in rows)]
    labels = list(dict.fromkeys(r["method"] for r in rows))
    Rs = sorted({r["R"] for r in rows})
    fig, ax = plt.subplots(len(sets), 2, figsize=(12, 4 * len(sets)), squeeze=False)
    for i, k in enumerate(sets):
        for lab in labels:
            for j, metric in enumerate(("PSNR", "SSIM")):
                vals = [(c or {}).get(metric, float("nan")) for c in (_cell(rows, k, R, lab) for R in Rs)]
                ax[i, j].plot(Rs, vals, marker="o", label=lab)
                ax[i, j].set_xlabel("acceleration R")
                ax[i, j].set_ylabel(metric)
                ax[i, j].set_xticks(Rs)
                ax[i, j].set_title(f"{SETS[k][0]}: {metric}")
        ax[i, 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
