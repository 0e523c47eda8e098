"""Does the held-out check (``baselines.heldout_map_errors``) tell when refined maps help? Calibration for
``scan.REFINE_SLICE_MISFIT`` (2) and ``scan.REFINE_CLEAR_RATIO`` / ``REFINE_CLEAR_MISFIT``.

For every slice whose ESPIRiT misfit exceeds 2: the refined maps' held-out error over ESPIRiT's (the ratio
``reconstruct`` judges by), and what refining does to that slice's CG-SENSE (λ 1e-3) PSNR against the reference.
Two sets, both simulated (data_tools.simulate: 2x readout oversampling, smooth phase, birdcage coils):

    phantom  the test phantom that fills the field of view (tests/test_coils.py: 32 x 32, 4 coils, 8 ACS lines,
             R = 2, 3), two seeds, σ 0.006-0.016: ESPIRiT's maps are wrong at the edges, and more noise lowers the
             misfit that shows it
    demo     the demo's first four training volumes (MNI152 axial brains with background, 8 coils, R = 4, 6, 8, the
             demo's ACS rule): the source the learned priors train on

Prints a table and writes benchmarks/results/heldout_ratio.json (about 10 minutes on 2 cores).

    python benchmarks/heldout_ratio.py [--sets phantom demo] [--work DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, write_record  # noqa: E402

from ambient_mri import baselines  # noqa: E402
from ambient_mri.coils import refine_maps  # noqa: E402
from ambient_mri.masks import kspace_mask  # noqa: E402
from ambient_mri.metrics import center_crop  # noqa: E402
from ambient_mri.scan import (  # noqa: E402
    REFINE_CLEAR_MISFIT,
    REFINE_CLEAR_RATIO,
    REFINE_SLICE_MISFIT,
    check_inputs,
    prepare_scan,
    scan_noise_std,
)


def slices_of(name: str, k: np.ndarray, target: np.ndarray, R: int, acs_fraction: float, seed) -> list[dict]:
    """One row per slice whose ESPIRiT misfit exceeds REFINE_SLICE_MISFIT."""
    m = kspace_mask("random", k.shape[-2:], R, acs_fraction, seed=seed)[0]
    kk, mm = check_inputs(k * m, m)
    ks, esp, scales = prepare_scan(kk, mm, target.shape[-2])
    y, noise = ks / scales[:, None, None, None], scan_noise_std(kk, mm) / scales
    fit = baselines.map_fit(y, esp, mm, noise, slices=np.arange(y.shape[0]))
    misfit = [None if t is None else t[0] for t in baselines.slice_misfits(fit)]
    bad = np.array([s for s, v in enumerate(misfit) if v is not None and v > REFINE_SLICE_MISFIT], dtype=int)
    if not bad.size:
        return []
    new = refine_maps(torch.from_numpy(y[bad]), torch.from_numpy(esp[bad]), torch.from_numpy(mm[bad])).numpy()
    err = baselines.heldout_map_errors(y, esp, mm, bad)
    rows = []
    for j, s in enumerate(bad):
        psnr = []
        for maps in (esp[s:s + 1], new[j:j + 1]):
            x = baselines._cg_sense(torch.from_numpy(y[s:s + 1]), torch.from_numpy(maps),
                                    torch.from_numpy(mm[s:s + 1].astype(np.float32)), 1e-3, baselines.SENSE_ITERS)
            mag = center_crop(np.abs(x.numpy() * scales[s]), target.shape[-2:])[0]
            psnr.append(10 * np.log10(target[s].max() ** 2 / np.mean((mag - target[s]) ** 2)))
        rows.append({"case": name, "R": R, "slice": int(s), "misfit": round(float(misfit[s]), 2),
                     "ratio": round(float(err[1, j] / err[0, j]), 3) if err[0, j] > 0 else None,
                     "gain_db": round(float(psnr[1] - psnr[0]), 2)})
        print(f"{name:24s} R {R} slice {s}: misfit {rows[-1]['misfit']:7.2f}  ratio {rows[-1]['ratio']}  "
              f"refining {rows[-1]['gain_db']:+.2f} dB", flush=True)
    return rows


def phantom_rows() -> list[dict]:
    from data_tools.simulate import rss_target, simulate_coil_data
    from helpers import blobs

    size = 32
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    rows = []
    for seed in (0, 1):
        b = blobs(4, size, seed=seed)
        fill = np.stack([b[i] + 0.5 + 0.2 * np.cos(3 * xx + 1) * np.sin(2 * yy) for i in range(4)])
        fill = (fill / fill.max(axis=(1, 2), keepdims=True)).astype(np.float32)
        for sigma in (0.006, 0.009, 0.012, 0.016):
            sim = simulate_coil_data(fill, num_coils=4, oversample=2, noise_std=sigma, seed=seed)
            target = rss_target(sim.kspace, (size, size))
            for R in (2, 3):
                rows += slices_of(f"phantom_s{sigma}_seed{seed}", sim.kspace, target, R, 0.25, (R, seed))
    return rows


def demo_rows(work: Path) -> list[dict]:
    from ambient_mri.data import read_fastmri
    from data_tools.demo import build_demo, demo_center_fraction

    build_demo(work)
    rows = []
    for path in sorted((work / "raw" / "train").glob("demo_train_0[0-3].h5")):
        vol = read_fastmri(path)
        k, target = np.asarray(vol.kspace), np.asarray(vol.target)
        for R in (4, 6, 8):
            rows += slices_of(path.stem, k, target, R, demo_center_fraction(k.shape[-1], R), (R, 1))
    return rows


def summary(rows: list[dict]) -> dict:
    out = {}
    for kind in ("phantom", "demo"):
        rs = [r for r in rows if r["case"].startswith(kind) and r["ratio"] is not None]
        if rs:
            ratio, gain = np.array([r["ratio"] for r in rs]), np.array([r["gain_db"] for r in rs])
            out[kind] = {"slices": len(rs), "ratio": [float(ratio.min()), float(ratio.max())],
                         "gain_db": [float(gain.min()), float(gain.max())],
                         # the ratio rule alone: reconstruct also needs the refined maps to fit better
                         "passing_the_ratio_rule": int(sum(r["ratio"] < (
                             REFINE_CLEAR_RATIO if r["misfit"] <= REFINE_CLEAR_MISFIT else 1.0)
                             for r in rs if r["misfit"] <= 12))}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=["phantom", "demo"], choices=["phantom", "demo"])
    p.add_argument("--work", default=None, help="where the demo data are built (default: a temporary folder)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "heldout_ratio.json"))
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    tic = time.perf_counter()
    rows = phantom_rows() if "phantom" in args.sets else []
    if "demo" in args.sets:
        if args.work:
            rows += demo_rows(Path(args.work))
        else:
            with tempfile.TemporaryDirectory() as d:
                rows += demo_rows(Path(d))
    record = {"benchmark": "heldout_ratio", "machine": machine_info("cpu"),
              "settings": {"sets": args.sets, "refine_slice_misfit": REFINE_SLICE_MISFIT,
                           "refine_clear_misfit": REFINE_CLEAR_MISFIT, "refine_clear_ratio": REFINE_CLEAR_RATIO,
                           "lambda": 1e-3},
              "summary": summary(rows), "rows": rows}
    for kind, s in record["summary"].items():
        print(f"{kind}: {s}")
    return write_record(record, Path(args.out), tic)


if __name__ == "__main__":
    main()
