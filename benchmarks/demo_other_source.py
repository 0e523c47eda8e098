"""The model ``ambient-mri demo`` trained, scored on its own held-out volume and on anatomy from another source.

Reads the demo's model and held-out volume from ``--demo DIR`` (the demo's ``--output``), builds the other-source
set (``data_tools.other_sets``: 8 slices of nibabel's real EPI subject, other coils, fastMRI layout) and
reconstructs both at R = 4, 6 and 8 with the demo's masks and the demo's method settings: zero-filled, CG-SENSE,
L1-wavelet, one-step, ``fast`` (mean of 2 samples of 25 steps) and A-DPS (``--adps-steps``, default 100 as in the
demo). Prints a table and writes benchmarks/results/demo_other_source.json (about 6 minutes on 2 cores).

    python benchmarks/demo_other_source.py --demo demo_run [--work /tmp/demo_other_source]
        [--only sense ...]   # re-measure these methods into the existing record
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from augment_demo import _score  # noqa: E402
from common import load_for_reevaluation, machine_info, merge_reevaluation, write_record  # noqa: E402

import ambient_mri as am  # noqa: E402
from ambient_mri.files import write_json  # noqa: E402
from data_tools.other_sets import build_epi_set  # noqa: E402

METHODS = ("zero_filled", "sense", "l1_wavelet", "one_step", "fast", "adps")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", default="demo_run", help="the demo's output folder (holds runs/demo_mni_r4/model.pt)")
    p.add_argument("--adps-steps", type=int, default=100)
    p.add_argument("--work", default="/tmp/demo_other_source")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "demo_other_source.json"))
    p.add_argument("--only", nargs="+", default=None, choices=METHODS,
                   help="re-measure only these methods into the existing --out record (its other columns kept)")
    args = p.parse_args(argv)
    tic = time.perf_counter()
    torch.set_num_threads(2)
    demo = Path(args.demo)
    learned = {"one_step": {}, "fast": {"steps": 25, "num_samples": 2}, "adps": {"steps": args.adps_steps}}
    methods = [m for m in METHODS if args.only is None or m in args.only]
    names = ("demo (MNI152, training source)", "other source (nibabel EPI)")
    earlier = (load_for_reevaluation(Path(args.out), ("set", "R"), [(n, R) for n in names for R in (4, 6, 8)])
               if args.only else None)
    model = am.load_model(demo / "runs" / "demo_mni_r4" / "model.pt") if set(methods) & set(learned) else None
    sets = dict(zip(names, (demo / "data" / "raw" / "val", Path(build_epi_set(Path(args.work) / "epi")["raw_val"]))))
    rows = []
    for name, raw in sets.items():
        for R in (4, 6, 8):
            row = {"set": name, "R": R}
            for method in methods:
                folder = Path(args.work) / "recon" / name[:5] / f"r{R}" / method
                row[method] = _score(raw, folder, R, method, model if method in learned else None,
                                     learned.get(method))
            rows.append(row)
            print(row, flush=True)
    if args.only:
        record = merge_reevaluation({"machine": machine_info("cpu"), "rows": rows}, earlier, ("set", "R"), args.only)
        write_json(args.out, record)
        return record
    demo_table = json.loads((demo / "results.json").read_text()) if (demo / "results.json").is_file() else None
    record = {"benchmark": "demo_other_source", "machine": machine_info("cpu"),
              "settings": {"demo": str(demo), "adps_steps": args.adps_steps, "fast": learned["fast"],
                           "demo_settings": demo_table and demo_table.get("settings"),
                           "training_steps": json.loads((demo / "runs" / "demo_mni_r4" / "log.jsonl").read_text()
                                                        .strip().splitlines()[-1])["step"]},
              "rows": rows,
              "demo_results_json": demo_table and {k: round(v["PSNR"], 3) for k, v in demo_table["results"].items()}}
    return write_record(record, Path(args.out), tic)


if __name__ == "__main__":
    main()
