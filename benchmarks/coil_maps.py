"""Coil maps from few ACS lines: how far ``reconstruct``'s ESPIRiT maps are from the true simulated maps, and what
CG-SENSE makes of them, as the ACS count falls.

Sets (data_tools.simulate: 2x readout oversampling, smooth random phase, birdcage coils, complex noise 0.005):

    calibration   4 MNI152 axial slices (the demo's source), 64 x 64, 8 coils (radius 1.5)
    held-out      4 slices of nibabel's real EPI subject (data_tools.other_sets), 64 x 64, 8 coils (radius 1.2)

Masks: fastMRI ``random`` column masks at R = 4 and 8 whose centre fraction gives the ACS count. For each ACS
count: the map error of ESPIRiT against the true maps, sqrt(Σ ||S S^H − T T^H||² / Σ ||T T^H||²) over the object
(reference above 5 % of its maximum; invariant to the maps' per-pixel phase, maps cropped to zero on the object
count fully), and the PSNR of zero-filled (fastMRI's RSS of the zero-filled coil images), CG-SENSE with ESPIRiT
maps (what ``reconstruct`` does) and CG-SENSE with the true maps, λ chosen by ``reconstruct`` in both. An ACS count
is used at R only if it leaves at least 2 of the W / R lines to the random part (else the mask is the ACS block).
Below ``coils.MIN_ACS_LINES`` reconstruct refuses, which is recorded. Prints a table and writes
benchmarks/results/coil_maps.json (about 5 minutes on 2 cores).

    python benchmarks/coil_maps.py [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, write_record  # noqa: E402

import ambient_mri as am  # noqa: E402
from ambient_mri.coils import MIN_ACS_LINES  # noqa: E402
from ambient_mri.masks import calibration_width, kspace_mask  # noqa: E402
from ambient_mri.metrics import evaluate_volume  # noqa: E402
from ambient_mri.scan import check_inputs, prepare_scan, zero_filled_rss  # noqa: E402
from data_tools.other_sets import nibabel_epi_slices  # noqa: E402
from data_tools.simulate import rss_target, simulate_coil_data  # noqa: E402
from data_tools.sources import mni152_brain_range, mni152_slices  # noqa: E402

ACS_COUNTS = (4, 6, 8, 10, 13, 16, 24)
SIZE = 64


def volumes() -> list[dict]:
    lo, hi = mni152_brain_range("axial")
    mid = (lo + hi) // 2
    mni = mni152_slices(4, (SIZE, SIZE), axis="axial", start=mid - 8, stop=mid + 8)
    epi, _ = nibabel_epi_slices(4, (SIZE, SIZE), start=10, stop=14)
    out = []
    for name, images, radius in (("calibration: MNI152 axial", mni, 1.5), ("held-out: nibabel EPI", epi, 1.2)):
        sim = simulate_coil_data(images, num_coils=8, oversample=2, noise_std=0.005, seed=3, coil_radius=radius)
        out.append({"name": name, "kspace": sim.kspace, "maps": sim.maps,
                    "target": rss_target(sim.kspace, (SIZE, SIZE))})
    return out


def map_error(est: np.ndarray, true: np.ndarray, obj: np.ndarray) -> float:
    """Phase-invariant error of maps (S, C, H, W) on the object pixels obj (S, H, W)."""
    P = np.einsum("schw,sdhw->shwcd", est, est.conj())[obj]
    T = np.einsum("schw,sdhw->shwcd", true, true.conj())[obj]
    return float(np.linalg.norm(P - T) / np.linalg.norm(T))


def psnr(k: np.ndarray, mask: np.ndarray, target: np.ndarray, **options) -> float:
    with warnings.catch_warnings():  # the ρ warning is not what this benchmark measures
        warnings.simplefilter("ignore", UserWarning)
        res = am.reconstruct(k * mask, mask, progress=False, **options)
    return round(evaluate_volume(target, res.magnitude)["PSNR"], 2)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "coil_maps.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tic = time.perf_counter()
    rows = []
    print(f"{'set':<28} {'R':>2} {'ACS':>3} {'map err':>8} {'ZF':>6} {'SENSE esp':>9} {'SENSE true':>10}")
    for v in volumes():
        k, target = v["kspace"], v["target"]
        S, C, H0, W = k.shape
        top = (H0 - SIZE) // 2  # reconstruct crops the readout to the image rows (fastMRI's centre crop)
        tm = np.ascontiguousarray(np.broadcast_to(v["maps"][:, top:top + SIZE], (S, C, SIZE, W)))
        for R in (4, 8):
            for acs in (a for a in ACS_COUNTS if a <= W / R - 2):
                mask = kspace_mask("random", (H0, W), R, acs / W, seed=(R, acs))[0]
                got = calibration_width(mask[None])
                row = {"set": v["name"], "R": R, "acs_lines": int(got)}

                zf = zero_filled_rss(k, np.broadcast_to(mask.reshape(1, -1), (S, W)), target.shape[-2:])
                row["zero_filled"] = round(evaluate_volume(target, zf)["PSNR"], 2)  # fastMRI's: needs no maps
                row["sense_true_maps"] = psnr(k, mask, target, method="sense", maps=tm)
                try:
                    kk, mm = check_inputs(k * mask, mask)
                    _, est, _ = prepare_scan(kk, mm, SIZE)
                    obj = target > 0.05 * target.max()
                    row["map_error"] = round(map_error(est, tm, obj), 3)
                    row["sense_espirit"] = psnr(k, mask, target, method="sense")
                except am.AmbientMRIError as e:
                    row["map_error"], row["sense_espirit"], row["refused"] = None, None, str(e)[:120]
                rows.append(row)
                esp = f"{row['sense_espirit']:9.2f}" if row["sense_espirit"] is not None else f"{'refused':>9}"
                err = f"{row['map_error']:8.3f}" if row["map_error"] is not None else f"{'-':>8}"
                print(f"{v['name'][:28]:<28} {R:>2} {got:>3} {err} {row['zero_filled']:6.2f} "
                      f"{esp} {row['sense_true_maps']:10.2f}", flush=True)
    ok = [r for r in rows if r["acs_lines"] >= MIN_ACS_LINES and r["sense_espirit"] is not None]
    summary = {"min_acs_lines": MIN_ACS_LINES,
               "espirit_sense_below_zero_filled": [f"{r['set']} R={r['R']} ACS={r['acs_lines']}" for r in ok
                                                   if r["sense_espirit"] < r["zero_filled"]],
               "refused": [f"{r['set']} R={r['R']} ACS={r['acs_lines']}" for r in rows if "refused" in r]}
    print(summary)
    record = {"benchmark": "coil_maps", "machine": machine_info("cpu"),
              "settings": {"size": SIZE, "coils": 8, "noise_std": 0.005, "acs_counts": list(ACS_COUNTS),
                           "mask": "fastMRI random, seed (R, ACS)", "lambda": "chosen by reconstruct"},
              "rows": rows, "summary": summary}
    return write_record(record, Path(args.out), tic)


if __name__ == "__main__":
    main()
