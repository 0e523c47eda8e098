"""``ambient-mri demo``: the whole path on the built-in MNI152 data, no arguments needed.

1. build the demo set (simulated 8-coil fastMRI files from the MNI152 template, prepared at R=4),
2. train a small ambient model on R=4 measurements only, for ``--minutes``,
3. reconstruct the held-out volume at R=4 and R=8 with the fast sampler, A-DPS, one-step and the classical
   baselines, from the official-layout files through ``reconstruct_file`` (what a user runs),
4. print the PSNR/SSIM/NMSE table and save ``results.json`` and ``results.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .errors import AmbientMRIError
from .metrics import evaluate_dirs

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo_mni_r4.yaml"
METHODS = ("zero_filled", "sense", "l1_wavelet", "one_step", "fast", "adps")


def run_demo(args) -> int:
    from data_tools.demo import build_demo, demo_center_fraction

    from .model import load_model
    from .recon import reconstruct_file
    from .training.trainer import train

    tic = time.time()
    out = Path(args.output)
    print(f"[1/4] building the demo data in {out / 'data'}")
    paths = build_demo(out / "data", size=args.size, progress=False)
    if not RECIPE.is_file():
        raise AmbientMRIError(f"{RECIPE}: demo recipe not found (run the demo from a source checkout)")
    print(f"[2/4] training an ambient model on R=4 data only for up to {args.minutes} min")
    overrides = [f"data.path={paths['r4_train']}", f"output={out / 'runs'}", f"max_minutes={args.minutes}"]
    if args.device:
        overrides.append(f"device={args.device}")
    run = train(RECIPE, overrides)
    model = load_model(run / "model.pt", device=args.device)
    print("[3/4] reconstructing the held-out volume at R=4 and R=8")
    results: dict = {}
    for R in (4, 8):
        cf = demo_center_fraction(args.size, R)
        for method in METHODS:
            folder = out / "recon" / f"r{R}" / method
            t0 = time.time()
            nfe = 0
            for f in sorted(Path(paths["raw_val"]).glob("*.h5")):
                opts = {"model": model} if method not in ("zero_filled", "sense", "l1_wavelet") else {}
                if method == "adps":
                    opts["steps"] = args.adps_steps
                reconstruct_file(f, folder / f.name, mask="random", acceleration=R, center_fraction=cf,
                                 method=method, device=args.device, progress=False, **opts)
                import h5py

                with h5py.File(folder / f.name, "r") as h:
                    nfe = int(h.attrs["nfe"])
            m = evaluate_dirs(paths["raw_val"], folder)["mean"]
            results[f"R{R}/{method}"] = {**m, "nfe": nfe, "seconds": round(time.time() - t0, 2)}
    print("[4/4] results (held-out slices, fastMRI metrics against reconstruction_rss)")
    print(f"{'R':>2} {'method':<12} {'PSNR':>7} {'SSIM':>7} {'NMSE':>8} {'NFE':>5} {'sec':>7}")
    for key, r in results.items():
        R, method = key.split("/")
        print(f"{R[1:]:>2} {method:<12} {r['PSNR']:7.2f} {r['SSIM']:7.4f} {r['NMSE']:8.5f} {r['nfe']:5d} "
              f"{r['seconds']:7.1f}")
    (out / "results.json").write_text(json.dumps({"run": str(run), "results": results,
                                                  "seconds": round(time.time() - tic, 1)}, indent=2) + "\n")
    _figure(out, paths["raw_val"])
    print(f"table: {out / 'results.json'}; figure: {out / 'results.png'}; total {time.time() - tic:.0f} s")
    return 0


def _figure(out: Path, raw_val) -> None:
    import h5py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = sorted(Path(raw_val).glob("*.h5"))[0]
    with h5py.File(f, "r") as h:
        ref = h["reconstruction_rss"][()]
    s = ref.shape[0] // 2
    vmax = float(ref.max())
    fig, axes = plt.subplots(4, len(METHODS) + 1, figsize=(2.2 * (len(METHODS) + 1), 9))
    for row, R in enumerate((4, 8)):
        axes[2 * row, 0].imshow(ref[s], cmap="gray", vmin=0, vmax=vmax)
        axes[2 * row, 0].set_title(f"reference (R={R} row)", fontsize=8)
        axes[2 * row + 1, 0].axis("off")
        for col, method in enumerate(METHODS, start=1):
            with h5py.File(out / "recon" / f"r{R}" / method / f.name, "r") as h:
                rec = h["reconstruction"][s]
            axes[2 * row, col].imshow(rec, cmap="gray", vmin=0, vmax=vmax)
            axes[2 * row, col].set_title(f"R={R} {method}", fontsize=8)
            axes[2 * row + 1, col].imshow(np.abs(rec - ref[s]), cmap="magma", vmin=0, vmax=vmax / 4)
            axes[2 * row + 1, col].set_title("|error|", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=90)
    plt.close(fig)
