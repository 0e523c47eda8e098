"""Does a scan tell when a learned prior does not fit it? ``fast`` against CG-SENSE on acquired lines neither saw.

For every case, after ``reconstruct`` ran ``fast`` (with the maps and normalisation it chose), its central slices are
solved again with some acquired non-ACS lines held out (``baselines.heldout_errors``, 2 folds of 4), with ``fast``
and with CG-SENSE at ``fast``'s λ floor, and each is scored by how well it predicts the held-out lines ("zero":
their energy, what a zero-filled image predicts). This prints, per case, the PSNR of zero-filled, CG-SENSE and
``fast`` (judged against the reference only here) next to fast's held-out error over CG-SENSE's and over zero's:
whether a scan could tell, without a reference, that the prior does not fit it (``reconstruct`` does not run this).

Sets (64 x 64, the demo model's size):

    demo          the demo's own held-out volume (``--demo DIR``, MNI152, the training source) at R = 4, 6, 8:
                  where the prior fits
    fresh         map_refinement's fresh set (a Siemens abdomen, dipy diffusion series, nibabel's T1 crop):
                  calibration, where a rule would be chosen (none was: no threshold separates the cases)
    fresh2        map_refinement's fresh2 set (a neck angiogram, a Philips phantom): held out, scored after the rule
                  is fixed
    noisy-mni     noise_warning's noisy MNI152 axial slices (σ 0.02, 0.05; 8, 12 coils; R = 4, 6, 8): the training
                  source with heavy noise
    noisy-epi     the same with nibabel's EPI subject (another source)

Every row also carries the scan's ``outer_line_snr`` (from the CG-SENSE run): whether ``fast`` falls below zero-filled
where the noise warning of the linear methods (``scan.MIN_OUTER_SNR``) would fire. ``--no-heldout``: PSNRs and
warnings only. ``--spread``: a second ``fast`` sample (seed 1) and the two samples' spread (RMS of their magnitudes'
std over the RMS of their mean): whether the prior disagrees with itself where it does not fit.

    python benchmarks/prior_check.py --demo demo_run [--sets demo fresh fresh2] [--out PATH]
    python benchmarks/prior_check.py --demo demo_run --sets noisy-mni noisy-epi --no-heldout \
        --out benchmarks/results/prior_check_noisy.json
    python benchmarks/prior_check.py --demo demo_run --sets demo fresh --no-heldout --spread \
        --out benchmarks/results/prior_check_spread.json

In each fold both solvers choose their λ floor (``tikhonov_floor``) from the kept lines alone, so neither has seen
the lines it is scored on. (The first run took the floor of the whole scan, chosen on these same groups: CG-SENSE's
error was in-sample for λ and the ratio leaned against ``fast``.)

Writes benchmarks/results/prior_check.json.
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

from common import machine_info, training_steps, write_record  # noqa: E402

import ambient_mri as am  # noqa: E402
from ambient_mri import baselines, recon  # noqa: E402
from ambient_mri.data import read_fastmri  # noqa: E402
from ambient_mri.masks import kspace_mask  # noqa: E402
from ambient_mri.metrics import evaluate_volume  # noqa: E402
from ambient_mri.scan import missing_energy_ratio  # noqa: E402


def demo_cases(demo: Path):
    vol = read_fastmri(sorted((demo / "data" / "raw" / "val").glob("*.h5"))[0])
    k = np.asarray(vol.kspace)
    t = np.asarray(vol.target)
    for R, acs in ((4, 8), (6, 6), (8, 6)):
        yield "demo_val_mni", "demo (training source)", k, t, R, acs, (R, 3)


def map_refinement_cases(name: str):
    import map_refinement

    for case, set_name, k, t, R, acs, seed, _ in getattr(map_refinement, f"{name}_cases")():
        if t.shape[-2:] == (64, 64):
            yield case, set_name, k, t, R, acs, seed


HELDOUT: dict = {}
_diffusion = recon._diffusion


def _diffusion_and_heldout(m, model, k, msk, y, mps, scales, steps, num_samples, seed, device, batch_size, progress,
                           extra, opts):
    """``recon._diffusion``, then the held-out errors of ``fast`` and CG-SENSE on the central slices, into
    HELDOUT."""
    out = _diffusion(m, model, k, msk, y, mps, scales, steps, num_samples, seed, device, batch_size, progress, extra,
                     opts)
    central = baselines.central_slices(y.shape[0], baselines.VALIDATION_SLICES["sense"])

    # each solver chooses its λ floor inside the fold, from the kept lines alone (fast: _diffusion's own rule),
    # so neither has seen the held-out lines
    def learned(yk, mp, keep):
        kk = k[central] * keep[:, None, None, :]
        return _diffusion(m, model, kk, keep, yk, mp, scales[central], steps, 1, seed, device, None, False, {},
                          opts)[0], mp

    def sense(yk, mp, keep):
        lam = baselines.tikhonov_floor(yk, mp, keep, seed)
        return baselines._cg_sense(torch.from_numpy(yk), torch.from_numpy(mp), torch.from_numpy(keep), lam,
                                   baselines.SENSE_ITERS).numpy(), mp

    err = baselines.heldout_errors({"fast": learned, "sense": sense}, y, mps, msk, central, seed)
    HELDOUT.update({name: v.tolist() for name, v in err.items()})
    return out


def noisy_cases(source: str):
    import noise_warning

    yield from noise_warning.heldout_cases(source)


def run(method: str, k, m, target, model, seed: int = 0) -> tuple[float, dict, list[str], np.ndarray, np.ndarray]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = am.reconstruct(k, m, method=method, progress=False, target_size=target.shape[-2:],
                             **({"model": model, "seed": seed} if method == "fast" else {}))
    kinds = sorted({w.message.reason for w in caught if isinstance(w.message, am.BelowZeroFilledWarning)})
    return round(evaluate_volume(target, res.magnitude)["PSNR"], 3), res.extra, kinds, res.magnitude, res.image


def spread(a: np.ndarray, b: np.ndarray) -> float:
    """Two samples' disagreement: RMS of their magnitudes' std over the RMS of their mean's magnitude."""
    return float(np.sqrt(np.mean(((a - b) / 2) ** 2)) / np.sqrt(np.mean(((a + b) / 2) ** 2)))


def run_sets(sets: list[str], demo: Path, model, with_spread: bool = False,
             only: list[str] | None = None) -> list[dict]:
    rows = []
    print(f"{'case':24s} {'R':>2s} {'ZF':>6s} {'SENSE':>6s} {'fast':>6s} | {'fast/SENSE':>10s} {'fast/zero':>9s} "
          f"{'SENSE/zero':>10s} {'snr':>6s}  fast warnings")
    for name in sets:
        source = {"noisy-mni": "mni_axial", "noisy-epi": "epi"}.get(name)
        cases = demo_cases(demo) if name == "demo" else noisy_cases(source) if source else map_refinement_cases(name)
        for case, set_name, k_full, t, R, acs, seed in cases:
            if only and f"{case}:{R}" not in only and case not in only:
                continue
            m = kspace_mask("random", k_full.shape[-2:], R, acs / k_full.shape[-1], seed=seed)[0]
            k = k_full * m
            row = {"case": case, "set": set_name, "R": R, "acs_lines": acs, "coils": int(k.shape[1])}
            HELDOUT.clear()
            for method in ("zero_filled", "sense", "fast"):
                row[method], extra, row[f"{method}_warnings"], mag, image = run(method, k, m, t, model)
                if method == "sense":
                    row["outer_line_snr"] = extra.get("outer_line_snr")
                if method != "zero_filled":  # fast's is reconstruct's own (extra); CG-SENSE's for comparison
                    masks = np.broadcast_to(m, (len(k), m.size))
                    row[f"{method}_missing_energy"] = missing_energy_ratio(image, masks)
            if with_spread:  # a second sample (seed 1): does the prior disagree with itself where it fails?
                row["fast_seed1"], _, _, mag1, _ = run("fast", k, m, t, model, seed=1)
                row["spread"] = spread(mag, mag1)
            nan = float("nan")
            if HELDOUT and sum(HELDOUT["zero"]) > 0:    # else no line could be held out
                err = {key: np.asarray(v) for key, v in HELDOUT.items()}
                row["heldout_error"] = dict(HELDOUT)
                row["fast_over_sense"] = float(err["fast"].sum() / err["sense"].sum())
                row["fast_over_zero"] = float(err["fast"].sum() / err["zero"].sum())
                row["sense_over_zero"] = float(err["sense"].sum() / err["zero"].sum())
            rows.append(row)
            snr = row["outer_line_snr"]
            print(f"{case[:24]:24s} {R:2d} {row['zero_filled']:6.2f} {row['sense']:6.2f} {row['fast']:6.2f} | "
                  f"{row.get('fast_over_sense', nan):10.3f} {row.get('fast_over_zero', nan):9.3f} "
                  f"{row.get('sense_over_zero', nan):10.3f} {nan if snr is None else snr:6.2f}  "
                  f"E {row['fast_missing_energy'] or nan:5.2f}/{row['sense_missing_energy'] or nan:5.2f}  "
                  f"{','.join(row['fast_warnings']) or '-'}"
                  + (f"  spread {row['spread']:.4f}" if with_spread else ""), flush=True)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", default="demo_run", help="the demo's output folder (model and held-out volume)")
    sets = ["demo", "fresh", "fresh2", "noisy-mni", "noisy-epi"]
    p.add_argument("--sets", nargs="+", default=sets[:3], choices=sets)
    p.add_argument("--no-heldout", action="store_true", help="skip the held-out solves (PSNRs and warnings only)")
    p.add_argument("--spread", action="store_true", help="also a second fast sample (seed 1) and the two "
                   "samples' spread")
    p.add_argument("--cases", nargs="+", help="only these cases (CASE or CASE:R)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prior_check.json"))
    args = p.parse_args(argv)
    tic = time.perf_counter()
    demo = Path(args.demo)
    model_path = demo / "runs" / "demo_mni_r4" / "model.pt"
    model = am.load_model(model_path)
    if not args.no_heldout:
        recon._diffusion = _diffusion_and_heldout
    try:
        rows = run_sets(args.sets, demo, model, args.spread, args.cases)
    finally:
        recon._diffusion = _diffusion
    record = {"benchmark": "prior_check", "machine": machine_info("cpu"),
              "settings": {"sets": args.sets, "model": str(model_path), "model_training_steps":
                           training_steps(model_path), "fast": "reconstruct's defaults, seed 0",
                           "heldout": not args.no_heldout, "spread": args.spread, "cases": args.cases},
              "rows": rows}
    return write_record(record, Path(args.out), tic)


if __name__ == "__main__":
    main()
