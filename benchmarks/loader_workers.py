"""Training throughput with the examples read in the main process (num_workers 0) or by 4 DataLoader workers.

The demo recipe (64x64, 8 coils) at batch 32 for --steps steps on --device, both arms on the same data; the
loss at the last step must agree (examples are seeded by their index, so the workers change nothing but time).
--profile prints the top of a cProfile of the main-process arm. Writes benchmarks/results/loader_workers.json.

    python benchmarks/loader_workers.py [--device cuda] [--steps 150] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import time
from pathlib import Path

from data_tools.demo import build_demo

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from common import machine_info

    from ambient_mri.training.trainer import train

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--work", default="/tmp/loader_workers")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loader_workers.json"))
    args = p.parse_args()
    paths = build_demo(Path(args.work) / "data", size=64, coils=8, slices=90)
    base = [f"data.path={paths['r4_train']}", f"steps={args.steps}", "batch_size=32", f"device={args.device}",
            "checkpoint_every=100000", "log_every=25"]
    rows = []
    for nw in (0, 4):
        prof = cProfile.Profile() if args.profile and nw == 0 else None
        tic = time.time()
        if prof:
            prof.enable()
        run = train(ROOT / "recipes" / "demo_mni_r4.yaml", base + [f"output={args.work}/runs{nw}", f"num_workers={nw}"],
                    progress=False)
        if prof:
            prof.disable()
        last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
        rows.append({"num_workers": nw, "seconds": round(time.time() - tic, 2), "last_loss": last["loss"],
                     "images_per_second_last_25_steps": last["images_per_second"]})
        print(f"num_workers={nw}: {args.steps} steps in {rows[-1]['seconds']:.1f} s, loss {last['loss']:.6f}, "
              f"{last['images_per_second']:.0f} images/s over the last 25 steps", flush=True)
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
            print(s.getvalue()[-4000:], flush=True)
    ratio = rows[0]["seconds"] / rows[1]["seconds"]
    print(f"speed-up with 4 workers: {ratio:.2f}x; same last loss: {rows[0]['last_loss'] == rows[1]['last_loss']}")
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({"benchmark": "loader_workers", "machine": machine_info(args.device),
                               "settings": vars(args), "rows": rows, "speedup": round(ratio, 3)}, indent=2) + "\n")
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
