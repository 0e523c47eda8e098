"""Every reconstruction method on a scan unlike the demo's: lambda_rules' nibabel EPI subject (one real subject, not
the training source) with 12 simulated coils and the fewest ACS lines of the benchmarks (8 at R = 4, 6 at R = 6, 8),
where L1-wavelet and, before its λ floor, ``fast`` fell below zero-filled. One row per model and R: zero-filled,
CG-SENSE, L1-wavelet (automatic λ; its warnings are recorded), one-step, ``fast`` (2 x 25 steps) and A-DPS (500
steps, as published), scored with fastMRI's volume PSNR against the RSS target. Models run side by side, one
process and one torch thread each. Prints a table; writes benchmarks/results/few_acs_epi.json.

    python benchmarks/few_acs_epi.py --model NAME=MODEL.pt [--model NAME=MODEL.pt ...] [--accelerations 4 6 8]
        [--only sense ...]   # re-measure these methods into the existing record
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    load_for_reevaluation,
    machine_info,
    merge_reevaluation,
    training_steps,
    write_record,
)

from ambient_mri.files import write_json  # noqa: E402

METHODS = [("zero_filled", {"method": "zero_filled"}), ("sense", {"method": "sense"}),
           ("l1_wavelet", {"method": "l1_wavelet"}), ("one_step", {"method": "one_step"}),
           ("fast", {"method": "fast", "steps": 25, "num_samples": 2}), ("adps", {"method": "adps", "steps": 500})]
LEARNED = ("one_step", "fast", "adps")


def _rows(name: str, path: str, accelerations: list[int], only: list[str] | None = None) -> list[dict]:
    import lambda_rules
    import torch

    import ambient_mri as am
    from ambient_mri.metrics import evaluate_volume

    torch.set_num_threads(1)
    methods = [(label, opts) for label, opts in METHODS if only is None or label in only]
    model = am.load_model(path) if any(label in LEARNED for label, _ in methods) else None
    (v,) = lambda_rules.volumes(4, names=["nibabel_epi_64_c12"])
    k = v["kspace"]
    steps = training_steps(path)
    rows = []
    for R in accelerations:
        m = lambda_rules.mask(v, R)
        row = {"model": name, "training_steps": steps, "R": R, "acs_lines": v["acs"][R], "warnings": {}}
        for label, opts in methods:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = am.reconstruct(k * m, m, model=model if label in LEARNED else None,
                                     progress=False, **opts)
            row[label] = round(evaluate_volume(v["target"], res.magnitude)["PSNR"], 3)
            if caught:
                row["warnings"][label] = [str(w.message) for w in caught]
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=MODEL.pt")
    p.add_argument("--accelerations", type=int, nargs="+", default=[4, 6, 8])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "few_acs_epi.json"))
    p.add_argument("--only", nargs="+", default=None, choices=[label for label, _ in METHODS],
                   help="re-measure only these methods into the existing --out record (its other columns kept)")
    args = p.parse_args(argv)
    models = dict(spec.split("=", 1) for spec in args.model)
    earlier = (load_for_reevaluation(Path(args.out), ("model", "R"),
                                     [(n, R) for n in models for R in args.accelerations]) if args.only else None)
    import torch

    torch.set_num_threads(1)  # as in the workers, so the record's machine info says what they ran with
    tic = time.perf_counter()
    with ProcessPoolExecutor(len(models), mp_context=get_context("spawn")) as ex:
        futs = [ex.submit(_rows, n, path, args.accelerations, args.only) for n, path in models.items()]
        rows = [r for f in futs for r in f.result()]
    if args.only:
        record = {"machine": machine_info("cpu"), "rows": rows}
        record = merge_reevaluation(record, earlier, ("model", "R"), args.only)
        rows = record["rows"]
    names = [label for label, _ in METHODS]
    print(f"{'model':<12} {'steps':>6} {'R':>2} " + " ".join(f"{n:>11}" for n in names))
    for r in rows:
        print(f"{r['model']:<12} {r['training_steps'] or '-':>6} {r['R']:>2} "
              + " ".join(f"{r[n]:>10.2f}{'*' if n in r['warnings'] else ' '}" for n in names))
    print("* warned")
    below = [f"{r['model']} R={r['R']} {n}" for r in rows for n in names[1:] if r[n] < r["zero_filled"]]
    print("below zero-filled:", below or "none")
    if args.only:
        record["below_zero_filled"] = below
        write_json(args.out, record)
        return record
    record = {"benchmark": "few_acs_epi", "machine": machine_info("cpu"),
              "settings": {**vars(args), "volume": "lambda_rules nibabel_epi_64_c12 (4 central planes, 12 coils)",
                           "methods": dict(METHODS)},
              "rows": rows, "below_zero_filled": below}
    return write_record(record, Path(args.out), tic)


if __name__ == "__main__":
    main()
