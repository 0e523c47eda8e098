"""Reconstruction quality on the MNI demo data: an ambient model trained only on R=4 k-space against an oracle
trained on fully-sampled k-space with the same budget, and the classical baselines, at R = 4, 6, 8.

Not a test (≈30-45 minutes on a 2-core CPU at the defaults). Prints a table and writes
benchmarks/results/quality_mri.json and quality_mri.png.

    python benchmarks/quality_mri.py [--size 64] [--minutes 12] [--adps-steps 500] [--work /tmp/quality_mri]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import h5py
import torch

import ambient_mri as am
from ambient_mri.metrics import evaluate_dirs
from data_tools.demo import build_demo, demo_center_fraction

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def methods(adps_steps: int) -> list[tuple[str, str, str | None, dict]]:
    """(label, method, model key, options)."""
    return [
        ("zero_filled", "zero_filled", None, {}),
        ("cg_sense", "sense", None, {}),
        ("l1_wavelet", "l1_wavelet", None, {}),
        ("ambient one-step", "one_step", "ambient", {}),
        ("ambient fast (50 NFE)", "fast", "ambient", {"steps": 50}),
        ("ambient fast (100 NFE)", "fast", "ambient", {"steps": 100}),
        (f"ambient A-DPS ({adps_steps})", "adps", "ambient", {"steps": adps_steps}),
        ("oracle fast (50 NFE)", "fast", "oracle", {"steps": 50}),
        (f"oracle DPS ({adps_steps})", "dps", "oracle", {"steps": adps_steps}),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--slices", type=int, default=90, help="MNI slices in the demo set (train + held-out val)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core CPU)")
    p.add_argument("--minutes", type=float, default=12.0, help="training budget per model")
    p.add_argument("--adps-steps", type=int, default=500)
    p.add_argument("--accelerations", type=int, nargs="+", default=[4, 6, 8])
    p.add_argument("--work", default="/tmp/quality_mri")
    p.add_argument("--device", default=None)
    args = p.parse_args()
    tic = time.time()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    paths = build_demo(work / "data", size=args.size, coils=args.coils, slices=args.slices)
    recipe = ROOT / "recipes" / "demo_mni_r4.yaml"
    common = [f"output={work / 'runs'}", f"max_minutes={args.minutes}", "steps=1000000"]
    if args.device:
        common.append(f"device={args.device}")
    runs = {
        "ambient": am.train(recipe, common + [f"data.path={paths['r4_train']}", "name=ambient_r4"], progress=False),
        "oracle": am.train(recipe, common + [f"data.path={paths['full_train']}", "name=oracle_full",
                                             "corruption.ambient=false", "corruption.cond=[ones]"], progress=False),
    }
    models = {k: am.load_model(v / "model.pt", device=args.device) for k, v in runs.items()}
    steps_trained = {k: json.loads((v / "log.jsonl").read_text().splitlines()[-1])["step"] for k, v in runs.items()}
    rows = []
    for R in args.accelerations:
        cf = demo_center_fraction(args.size, R)
        for label, method, key, opts in methods(args.adps_steps):
            folder = work / "recon" / f"r{R}" / label.replace(" ", "_").replace("(", "").replace(")", "")
            t0 = time.time()
            nfe, slices = 0, 0
            for f in sorted(Path(paths["raw_val"]).glob("*.h5")):
                out = am.reconstruct_file(f, folder / f.name, mask="random", acceleration=R, center_fraction=cf,
                                          method=method, model=models.get(key), device=args.device,
                                          progress=False, **opts)
                with h5py.File(out, "r") as h:
                    nfe, slices = int(h.attrs["nfe"]), slices + h["reconstruction"].shape[0]
            m = evaluate_dirs(paths["raw_val"], folder)["mean"]
            rows.append({"R": R, "method": label, **m, "nfe": nfe,
                         "seconds_per_slice": round((time.time() - t0) / max(slices, 1), 3)})
            r = rows[-1]
            print(f"R={R} {label:<26} PSNR {r['PSNR']:6.2f} SSIM {r['SSIM']:.4f} NMSE {r['NMSE']:.5f} "
                  f"NFE {nfe:4d} {r['seconds_per_slice']:7.2f} s/slice", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "quality_mri",
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": __import__("os").cpu_count(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "settings": {**vars(args), "steps_trained": steps_trained, "recipe": str(recipe.relative_to(ROOT)),
                     "data": "MNI152 demo (simulated coils), val volume held out, fastMRI random masks"},
        "rows": rows, "seconds": round(time.time() - tic, 1),
    }
    (RESULTS / "quality_mri.json").write_text(json.dumps(record, indent=2) + "\n")
    _plot(rows, RESULTS / "quality_mri.png")
    print(f"wrote {RESULTS / 'quality_mri.json'} in {time.time() - tic:.0f} s")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["method"] for r in rows))
    Rs = sorted({r["R"] for r in rows})
    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    for lab in labels:
        for k, metric in enumerate(("PSNR", "SSIM")):
            ax[k].plot(Rs, [next(r[metric] for r in rows if r["R"] == R and r["method"] == lab) for R in Rs],
                       marker="o", label=lab)
            ax[k].set_xlabel("acceleration R")
            ax[k].set_ylabel(metric)
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
