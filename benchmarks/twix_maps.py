"""Why CG-SENSE cannot beat zero-filled on the real 2-coil Siemens scan (tests/data/gre.dat), whatever the maps.

The scan (a GRE phantom, 160 x 160, 2 receive coils, fully sampled) is converted with ``ambient-mri convert`` and
undersampled with fastMRI random masks (20 ACS lines, R = 2, 3, 4). CG-SENSE runs at every λ of the grid with maps
from five sources, from what ``reconstruct`` may use to what no reconstruction can have:

    espirit_acs            ESPIRiT from the ACS lines (what ``reconstruct`` does)
    espirit_full           ESPIRiT from the fully-sampled centre 64 columns (more calibration than any scan has)
    smoothed_full_s{1,4}   coil image / RSS of the fully-sampled scan, each coil image smoothed by a Gaussian of
                           1 or 4 pixels first (nearly true sensitivities, without the noise of this very scan)
    inverse_crime          coil image / RSS of the fully-sampled scan itself: the fully-sampled data fit these maps
                           exactly, noise included, so nothing is left to amplify. This is the issue's "32.5 dB
                           bound"; it is not a bound any map estimator can reach.

The table shows the best PSNR over the λ grid per source, next to zero-filled and ρ, the samples per unknown pixel
(``scan.samples_per_unknown``). With two coils, R = 2 leaves about one sample per unknown: every honest map source
stays at or below zero-filled, and only the inverse-crime maps rise above it. ``reconstruct`` warns below
``MIN_SAMPLES_PER_UNKNOWN``. About a minute on 2 cores.

    python benchmarks/twix_maps.py [--out benchmarks/results/twix_maps.json]
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
from scipy.ndimage import gaussian_filter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, write_record  # noqa: E402

import ambient_mri as am  # noqa: E402
from ambient_mri.baselines import SENSE_GRID  # noqa: E402
from ambient_mri.coils import espirit, rss  # noqa: E402
from ambient_mri.data.calibration import row_crop  # noqa: E402
from ambient_mri.masks import kspace_mask  # noqa: E402
from ambient_mri.metrics import evaluate_volume  # noqa: E402
from ambient_mri.operators import ifft2c  # noqa: E402
from ambient_mri.scan import MIN_SAMPLES_PER_UNKNOWN  # noqa: E402
from data_tools.raw import convert_file  # noqa: E402

TWIX = ROOT / "tests" / "data" / "gre.dat"


def map_sources(k: np.ndarray, acs_mask: np.ndarray, rows: int) -> dict[str, np.ndarray]:
    """Maps (C, rows, W) of each source for fully-sampled k-space k (C, H0, W); acs_mask (W,) of the scan."""
    kc = row_crop(k, rows)
    coil = ifft2c(torch.from_numpy(kc)).numpy()

    def divided(c: np.ndarray) -> np.ndarray:
        return c / np.maximum(rss(c), 1e-12)

    def smoothed(s: float) -> np.ndarray:
        return divided(np.stack([gaussian_filter(c.real, s) + 1j * gaussian_filter(c.imag, s) for c in coil]))

    return {
        "espirit_acs": espirit(kc * acs_mask, mask=acs_mask[None]),
        "espirit_full": espirit(kc, calib_width=64, mask=np.ones((1, k.shape[-1]), np.float32)),
        "smoothed_full_s1": smoothed(1.0),
        "smoothed_full_s4": smoothed(4.0),
        "inverse_crime": divided(coil),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "twix_maps.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tic = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        convert_file(TWIX, Path(d) / "gre.h5")
        vol = am.data.read_fastmri(Path(d) / "gre.h5")
        k, ref = np.asarray(vol.kspace), vol.target.read()
    H0, W = k.shape[-2:]
    rows = ref.shape[-2]

    def psnr(res) -> float:
        return round(evaluate_volume(ref, res.magnitude)["PSNR"], 2)

    table = []
    for R in (2, 3, 4):
        mask = kspace_mask("random", (H0, W), R, 20 / W, seed=(R, 11))[0]
        acs = np.zeros(W, np.float32)
        acs[W // 2 - 10: W // 2 + 10] = 1
        zf = psnr(am.reconstruct(k * mask, mask, method="zero_filled", progress=False))
        row = {"R": R, "acquired_columns": int(mask.sum()), "zero_filled": zf}
        for name, maps in map_sources(k[0], acs * mask, rows).items():
            per_lam = []
            for lam in SENSE_GRID:
                with warnings.catch_warnings():  # reconstruct's ρ warning fires at every R here: it is the point
                    warnings.simplefilter("ignore", UserWarning)
                    res = am.reconstruct(k * mask, mask, maps=maps[None], method="sense", lam=lam, progress=False)
                per_lam.append(psnr(res))
            if name == "espirit_acs":
                row["samples_per_unknown"] = round(res.extra["samples_per_unknown"], 3)
            row[name] = {"best_psnr": max(per_lam), "best_lambda": SENSE_GRID[int(np.argmax(per_lam))],
                         "psnr_per_lambda": dict(zip(map(str, SENSE_GRID), per_lam))}
        table.append(row)
    names = list(map_sources(k[0], acs, rows))
    print(f"{'R':>2} {'rho':>5} {'ZF':>6} " + " ".join(f"{n:>16}" for n in names))
    for r in table:
        print(f"{r['R']:>2} {r['samples_per_unknown']:5.2f} {r['zero_filled']:6.2f} "
              + " ".join(f"{r[n]['best_psnr']:16.2f}" for n in names))
    honest = [n for n in names if n != "inverse_crime"]
    summary = {"honest_sources_above_zero_filled": [f"R={r['R']} {n}" for r in table for n in honest
                                                    if r[n]["best_psnr"] > r["zero_filled"] + 0.1],
               "min_samples_per_unknown_for_a_warning": MIN_SAMPLES_PER_UNKNOWN}
    print(summary)
    record = {"benchmark": "twix_maps", "machine": machine_info("cpu"),
              "settings": {"scan": "tests/data/gre.dat (twixtools sdist, 2 coils, 160 x 160)",
                           "mask": "fastMRI random, 20 ACS lines, seed (R, 11)", "lambda_grid": list(SENSE_GRID),
                           "metric": "fastMRI PSNR against the scan's own fully-sampled RSS"},
              "rows": table, "summary": summary}
    return write_record(record, Path(args.out), tic)


if __name__ == "__main__":
    main()
