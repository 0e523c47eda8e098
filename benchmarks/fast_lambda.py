"""The λ floor of the `fast` sampler's CG steps: 0 (the previous default) against the Tikhonov weight CG-SENSE
chooses on the scan's own held-out lines (the default now), beside zero-filled and CG-SENSE.

Volumes: fastMRI files given with ``--set NAME=FILE`` (reconstructed with the demo's random masks, seeded by the file
name, and ACS rule, as ``adps_variants.py`` does: the calibration volume, the demo's held-out volume, the 8-coil EPI
set) and ``lambda_rules.py``'s 12-coil EPI subject with 6 ACS lines at R = 6 and 8 (``--lambda-rules-epi``), where
fast with λ = 0 fell below zero-filled. Scored with fastMRI's volume PSNR against the RSS target. Prints a table;
writes benchmarks/results/fast_lambda.json.

    python benchmarks/fast_lambda.py --model MODEL.pt --set calib=FILE --set demo=FILE --set epi=FILE
        [--lambda-rules-epi] [--accelerations 4 6 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, training_steps, write_record  # noqa: E402

import ambient_mri as am  # noqa: E402
from ambient_mri.masks import kspace_mask  # noqa: E402
from ambient_mri.metrics import evaluate_volume  # noqa: E402


def _volumes(args) -> list[tuple[str, np.ndarray, np.ndarray, object]]:
    """(name, k-space, target, mask(R) -> column mask) per volume."""
    from data_tools.demo import demo_center_fraction

    out = []
    for spec in args.set:
        name, path = spec.split("=", 1)
        vol = am.data.read_fastmri(path)
        k = np.asarray(vol.kspace)
        out.append((name, k, vol.target.read(),
                    lambda R, k=k, f=Path(path).name: kspace_mask("random", k.shape[-2:], R,
                                                                  demo_center_fraction(64, R), seed=f)[0]))
    if args.lambda_rules_epi:
        import lambda_rules

        (v,) = lambda_rules.volumes(4, names=["nibabel_epi_64_c12"])
        k = v["kspace"]
        out.append(("epi_c12_lambda_rules", k, v["target"], lambda R, v=v: lambda_rules.mask(v, R)))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--set", action="append", default=[], metavar="NAME=FILE")
    p.add_argument("--lambda-rules-epi", action="store_true")
    p.add_argument("--accelerations", type=int, nargs="+", default=[4, 6, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fast_lambda.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tic = time.perf_counter()
    model = am.load_model(args.model)
    rows = []
    print(f"{'volume':22} {'R':>2} {'ZF':>6} {'SENSE':>6} {'λ':>7} {'fast λ=0':>9} {'fast λ=SENSE':>13}")
    for name, k, target, mask_of in _volumes(args):
        for R in args.accelerations:
            m = mask_of(R)
            ks = k * m

            def score(res, target=target) -> float:
                return round(evaluate_volume(target, res.magnitude)["PSNR"], 3)

            sense = am.reconstruct(ks, m, method="sense", progress=False)
            fast = dict(model=model, method="fast", steps=25, num_samples=2, progress=False)
            new = am.reconstruct(ks, m, **fast)
            row = {"volume": name, "R": R, "zero_filled": score(am.reconstruct(ks, m, method="zero_filled")),
                   "sense": score(sense), "lambda": sense.extra["lambda"], "fast_lam0": score(
                       am.reconstruct(ks, m, lam=0.0, **fast)), "fast": score(new), "fast_lam": new.extra["lam"]}
            rows.append(row)
            print(f"{name:22} {R:>2} {row['zero_filled']:6.2f} {row['sense']:6.2f} {row['lambda']:7.0e} "
                  f"{row['fast_lam0']:9.2f} {row['fast']:13.2f}", flush=True)
    record = {"benchmark": "fast_lambda", "machine": machine_info("cpu"),
              "settings": {**vars(args), "steps": 25, "num_samples": 2, "training_steps": training_steps(args.model)},
              "rows": rows}
    return write_record(record, Path(args.out), tic)


if __name__ == "__main__":
    main()
