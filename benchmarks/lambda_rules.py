"""How close the automatic λ of CG-SENSE and L1-wavelet comes to the best λ of its grid, per volume.

The rule (``ambient_mri.baselines.choose_lambda``) sees only the scan's acquired lines (cross-validation over the
non-ACS lines); the reference is used here, and only here, to score every λ of the grid. Sets:

    calibration  MNI152 axial slices, 64 x 64, 8 simulated coils, noise 0.005 (the demo's data and ACS rule)
    held-out     nibabel's example4d BOLD EPI (one real subject, another scanner and contrast), 64 x 64, 12 coils;
                 MNI152 coronal slices, 128 x 128, 16 coils; and the real Siemens twix GRE phantom (2 coils, 160 x
                 160, fully sampled) of tests/data, undersampled with 20 ACS lines
    new sources  dipy's b0 EPI, dipy's T1 coronal slice, pydicom's MR_small (added after the rules were fixed)
    fresh        map_refinement's fresh and fresh2 cases (a Siemens abdomen, dipy diffusion series, nibabel's T1
                 crop, a neck angiogram, a Philips phantom; their own coils, noise, ACS counts and mask seeds),
                 only with ``--fresh``: never looked at while any λ rule was chosen

For every volume and R: zero-filled PSNR, PSNR at each λ of the grid, the chosen λ and its PSNR, the gap to the
grid's best (target: < 0.5 dB). Prints a table and writes benchmarks/results/lambda_rules.json.

    python benchmarks/lambda_rules.py [--slices 4] [--volumes NAME ... [--merge]] \
        [--out benchmarks/results/lambda_rules.json]   # --merge: those volumes' rows replace theirs in --out
    python benchmarks/lambda_rules.py --fresh --out benchmarks/results/lambda_rules_fresh.json
    python benchmarks/lambda_rules.py --score-rules benchmarks/results/lambda_rules.json \
        --out benchmarks/results/lambda_rules_alternatives.json   # other rules on the same curves, seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_for_reevaluation, machine_info  # noqa: E402

import ambient_mri as am  # noqa: E402
from ambient_mri.baselines import (  # noqa: E402
    CV_TOLERANCE,
    FOLDS,
    L1_GRID,
    SENSE_GRID,
    VALIDATION_SLICES,
    tolerance_pick,
)
from ambient_mri.files import write_json  # noqa: E402
from ambient_mri.masks import kspace_mask  # noqa: E402
from ambient_mri.metrics import evaluate_volume  # noqa: E402
from data_tools.simulate import rss_target, simulate_coil_data  # noqa: E402


def volumes(slices: int, names: list[str] | None = None) -> list[dict]:
    """name, set, k-space (S, C, H, W), target (S, h, w), Rs and the ACS line count per R (only ``names``, if
    given)."""
    from data_tools.demo import demo_center_fraction
    from data_tools.other_sets import epi_central_planes
    from data_tools.sources import mni152_brain_range, mni152_slices

    out = []
    lo, hi = mni152_brain_range("axial")
    mid = (lo + hi) // 2
    img = mni152_slices(slices, (64, 64), axis="axial", start=mid - 2 * slices, stop=mid + 2 * slices)
    out.append({"name": "mni_axial_64_c8", "set": "calibration", "images": img, "coils": 8, "noise": 0.005,
                "R": (4, 6, 8), "acs": {R: round(64 * demo_center_fraction(64, R)) for R in (4, 6, 8)}})
    out.append({"name": "nibabel_epi_64_c12", "set": "held-out", "images": epi_central_planes(slices, 64),
                "coils": 12, "noise": 0.005, "R": (4, 6, 8), "acs": {4: 8, 6: 6, 8: 6}})
    lo, hi = mni152_brain_range("coronal")
    mid = (lo + hi) // 2
    cor = mni152_slices(slices, (128, 128), axis="coronal", start=mid - 2 * slices, stop=mid + 2 * slices)
    out.append({"name": "mni_coronal_128_c16", "set": "held-out", "images": cor, "coils": 16, "noise": 0.003,
                "R": (4, 6, 8), "acs": {4: 10, 6: 10, 8: 10}})
    out = [v for v in out if names is None or v["name"] in names]
    out += new_source_volumes(slices, names)
    for v in out:
        sim = simulate_coil_data(v.pop("images"), num_coils=v["coils"], oversample=2, noise_std=v["noise"], seed=3)
        v["kspace"], v["target"] = sim.kspace, rss_target(sim.kspace, sim.kspace.shape[-1:] * 2)
    twix = ROOT / "tests" / "data" / "gre.dat"
    if twix.is_file() and (names is None or "twix_gre_phantom_c2" in names):
        from data_tools.raw import convert_file

        with tempfile.TemporaryDirectory() as d:
            convert_file(twix, Path(d) / "gre.h5")
            vol = am.data.read_fastmri(Path(d) / "gre.h5")
            out.append({"name": "twix_gre_phantom_c2", "set": "held-out (real scanner data)", "coils": 2,
                        "kspace": np.asarray(vol.kspace), "target": vol.target.read(), "R": (2, 3, 4),
                        "acs": {2: 20, 3: 20, 4: 20}})
    return out


NEW_SOURCES = "new sources (never tuned on)"
FRESH = "fresh (held out from every λ rule)"


def fresh_volumes(names: list[str] | None = None) -> list[dict]:
    """map_refinement's fresh and fresh2 cases, one volume per case with its Rs, ACS counts and mask seeds."""
    import map_refinement

    out: dict = {}
    for case, _, k, t, R, acs, seed, _ in [*map_refinement.fresh_cases(), *map_refinement.fresh2_cases()]:
        if names is not None and case not in names:
            continue
        v = out.setdefault(case, {"name": case, "set": FRESH, "coils": int(k.shape[1]), "kspace": k, "target": t,
                                  "R": (), "acs": {}, "seed": seed[1]})
        v["R"] += (R,)
        v["acs"][R] = acs
    return list(out.values())


def new_source_volumes(slices: int, names: list[str] | None = None) -> list[dict]:
    """Three real MR sources added after the λ rules were fixed (settings fixed before any was scored; the λ rules
    were never tuned on them, but pydicom's MR_small later set scan.MAX_MAP_MISFIT):
    dipy's b0 EPI (diffusion series), dipy's T1 coronal slice and pydicom's MR_small (another anatomy filling its
    field of view), with other coil counts, noise levels and ACS counts. Skipped, with a note, without the
    ``bench`` extra."""
    from data_tools import other_sets as o

    specs = [("dipy_b0_128_c10", lambda: o.dipy_b0_slices(slices, (128, 128)), 10, 0.004, (4, 6, 8), (10, 8, 8)),
             ("dipy_t1_coronal_128_c6", lambda: o.dipy_t1_coronal((128, 128)), 6, 0.003, (3, 4, 6), (12, 12, 12)),
             ("pydicom_mr_small_64_c4", o.pydicom_mr_small, 4, 0.005, (2, 3, 4), (8, 8, 8))]
    out = []
    for name, load, coils, noise, Rs, acs in specs:
        if names is not None and name not in names:
            continue
        try:
            img = load()
        except ImportError as err:
            print(f"skipping {name}: {err}")
            continue
        out.append({"name": name, "set": NEW_SOURCES, "images": img, "coils": coils, "noise": noise, "R": Rs,
                    "acs": dict(zip(Rs, acs))})
    return out


def psnr(v: dict, res) -> float:
    return round(evaluate_volume(v["target"], res.magnitude)["PSNR"], 3)


def mask(v: dict, R: int) -> np.ndarray:
    """The column mask (W,) of volume ``v`` at R: fastMRI random lines with the volume's ACS count at R, seeded."""
    return kspace_mask("random", v["kspace"].shape[-2:], R, v["acs"][R] / v["kspace"].shape[-1],
                       seed=(R, v.get("seed", 11)))[0]


def run(v: dict, R: int, method: str) -> dict:
    m = mask(v, R)
    k = v["kspace"] * m
    grid = SENSE_GRID if method == "sense" else L1_GRID
    zf = psnr(v, am.reconstruct(k, m, method="zero_filled", progress=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = am.reconstruct(k, m, method=method, progress=False)
    warned = sorted({w.message.reason for w in caught if isinstance(w.message, am.BelowZeroFilledWarning)})
    fixed = {"l2": auto.extra["l2"]} if method == "l1_wavelet" else {}  # the scan's ℓ2 floor, searched once
    per_lam = [psnr(v, am.reconstruct(k, m, method=method, lam=lam, progress=False, **fixed)) for lam in grid]
    chosen, got = auto.extra["lambda"], psnr(v, auto)
    best = int(np.argmax(per_lam))
    return {"volume": v["name"], "set": v["set"], "R": R, "method": method, "acs_lines": v["acs"][R],
            "zero_filled": zf, "psnr_per_lambda": dict(zip(map(str, grid), per_lam)), "best_lambda": grid[best],
            "best_psnr": per_lam[best], "chosen_lambda": chosen, "chosen_psnr": got,
            "gap_db": round(per_lam[best] - got, 3), "l2": auto.extra.get("l2"), "warnings": warned,
            "map_misfit": auto.extra.get("map_misfit"), "map_unexplained": auto.extra.get("map_unexplained"),
            # the rule's own curve over the grid, so other rules on the same folds can be scored offline
            "validation_error": [round(e, 6) for e in auto.extra.get("validation_error", [])],
            "validation_error_all_lines": [round(e, 6) for e in auto.extra.get("validation_error_all_lines", [])]}


def summarize(rows: list[dict]) -> dict:
    summary = {}
    for part in ("calibration", "held-out", NEW_SOURCES, FRESH):
        sel = [r for r in rows if r["set"] == part or part == "held-out" and r["set"].startswith(part)]
        if not sel:
            continue
        summary[part] = {"within_0.5_dB": f"{sum(r['gap_db'] < 0.5 for r in sel)}/{len(sel)}",
                         "below_zero_filled": [f"{r['volume']} R={r['R']} {r['method']}" for r in sel
                                               if r["chosen_psnr"] < r["zero_filled"]],
                         "below_zero_filled_unwarned": [f"{r['volume']} R={r['R']} {r['method']}" for r in sel
                                                        if r["chosen_psnr"] < r["zero_filled"] and not r["warnings"]]}
    return summary


def pick_within(errs: list[float], tol: float, largest: bool = False) -> int:
    """Index of the smallest (or largest) λ whose validation error is within ``tol`` of the curve's minimum."""
    if not largest:
        return tolerance_pick(errs, tol)
    e = np.asarray(errs)
    return int(np.flatnonzero(e <= (1 + tol) * e.min())[-1])


def score_rules(path: Path, out: Path) -> dict:
    """Other rules on the validation curves recorded in ``path`` (the same folds, no new solves): for each rule,
    how many calibration and held-out cases land within 0.5 dB of the grid's best, the worst gap, how many fall
    below zero-filled."""
    try:
        rows = [r for r in json.loads(path.read_text())["rows"] if r.get("validation_error")]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not a lambda_rules.py result ({type(e).__name__}: {e})") from None
    if not rows:
        raise SystemExit(f"{path}: no validation curves (written by a lambda_rules.py older than --score-rules)")
    rules = {f"smallest λ within {t:g}": (t, False) for t in (0, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)}
    rules.update({f"largest λ within {t:g}": (t, True) for t in (0.01, 0.02, 0.05)})
    table = {}
    for name, (tol, largest) in rules.items():
        parts = {"calibration": [], "held-out": [], NEW_SOURCES: [], FRESH: []}
        for r in rows:
            lams = list(r["psnr_per_lambda"])
            got = r["psnr_per_lambda"][lams[pick_within(r["validation_error"], tol, largest)]]
            parts[r["set"] if r["set"] in (NEW_SOURCES, FRESH, "calibration") else "held-out"].append(
                (round(r["best_psnr"] - got, 3), got < r["zero_filled"]))
        table[name] = {k: {"within_0.5_dB": f"{sum(g < 0.5 for g, _ in v)}/{len(v)}",
                           "worst_gap_db": max(g for g, _ in v), "below_zero_filled": sum(b for _, b in v)}
                       for k, v in parts.items() if v}
        print(f"{name:<24} " + "   ".join(f"{k} {t['within_0.5_dB']:>5} (worst {t['worst_gap_db']:.2f} dB, "
                                         f"{t['below_zero_filled']} below ZF)" for k, t in table[name].items()))
    result = {"benchmark": "lambda_rules (other rules on the recorded curves)", "curves": str(path),
              "current_rule": f"l1_wavelet: smallest λ within {CV_TOLERANCE:g}; sense: the geometric mean of the best "
                              "λ on non-ACS and on all lines (off the grid: scored by the main run only)",
              "rules": table}
    write_json(out, result)
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--methods", nargs="+", default=["sense", "l1_wavelet"])
    p.add_argument("--volumes", nargs="+", default=None, metavar="NAME", help="only these volumes (default: all)")
    p.add_argument("--out", default=None, help="default: results/lambda_rules.json, or with --score-rules "
                                                "results/lambda_rules_alternatives.json")
    p.add_argument("--score-rules", metavar="JSON", default=None,
                   help="score other λ rules on the validation curves of an earlier run (no new solves) and write "
                        "them to --out")
    p.add_argument("--fresh", action="store_true", help="the fresh set only (map_refinement's fresh and fresh2 "
                                                        "cases; with --volumes, those of its cases)")
    p.add_argument("--merge", action="store_true", help="with --volumes: replace those volumes' rows in the "
                                                        "record at --out, keep the others")
    args = p.parse_args(argv)
    results = ROOT / "benchmarks" / "results"
    if args.score_rules:
        out = Path(args.out or results / "lambda_rules_alternatives.json")
        if out.resolve() == Path(args.score_rules).resolve():
            p.error(f"--out {out} is the curves file --score-rules reads; choose another output")
        return score_rules(Path(args.score_rules), out)
    args.out = args.out or str(results / "lambda_rules.json")
    earlier = None
    if args.merge:
        if not args.volumes:
            p.error("--merge re-measures the volumes named by --volumes into --out")
        earlier = load_for_reevaluation(Path(args.out), ("volume",), [(v,) for v in args.volumes])
        recorded = sorted({r["method"] for r in earlier["rows"] if r["volume"] in args.volumes})
        if earlier["settings"].get("slices") != args.slices or recorded != sorted(args.methods):
            p.error(f"--merge must measure what {args.out} holds: slices {earlier['settings'].get('slices')} and "
                    f"methods {recorded} (got --slices {args.slices} --methods {' '.join(args.methods)})")
    torch.set_num_threads(1)
    tic = time.time()
    rows = []
    print(f"{'volume':<22} {'set':<12} {'R':>2} {'method':<10} {'ZF':>6} {'best λ':>7} {'best':>6} "
          f"{'chosen λ':>8} {'chosen':>6} {'gap':>5}")
    for v in fresh_volumes(args.volumes) if args.fresh else volumes(args.slices, args.volumes):
        for R in v["R"]:
            for method in args.methods:
                r = run(v, R, method)
                rows.append(r)
                print(f"{r['volume']:<22} {r['set'][:12]:<12} {R:>2} {method:<10} {r['zero_filled']:6.2f} "
                      f"{r['best_lambda']:7.0e} {r['best_psnr']:6.2f} {r['chosen_lambda']:8.1e} "
                      f"{r['chosen_psnr']:6.2f} {r['gap_db']:5.2f}", flush=True)
    if args.merge:  # the re-measured volumes' rows replace theirs, every other row is kept
        new = {r["volume"]: [] for r in rows}
        for r in rows:
            new[r["volume"]].append(r)
        merged = []
        for r in earlier["rows"]:
            if r["volume"] not in new:
                merged.append(r)
            elif new[r["volume"]]:
                merged += new[r["volume"]]
                new[r["volume"]] = []
        rows = merged
    summary = summarize(rows)
    print(json.dumps(summary))
    result = {"benchmark": "lambda_rules", "machine": machine_info("cpu"), "seconds": round(time.time() - tic, 1),
              "settings": {"slices": args.slices, "folds": FOLDS, "cv_tolerance": CV_TOLERANCE,
                           "validation_slices": VALIDATION_SLICES,
                           "sense_grid": list(SENSE_GRID),
                           "l1_grid": list(L1_GRID),
                           "l1_l2": "the Tikhonov λ of the non-ACS lines' rule (baselines.tikhonov_floor)",
                           "sense_rule": "geometric mean of the best λ on non-ACS lines and on all lines",
                           "fresh": args.fresh},
              "rows": rows, "summary": summary}
    if args.merge:
        result["machine"], result["seconds"] = earlier["machine"], earlier["seconds"]
        result["settings"] = {**earlier["settings"], "reevaluated": [
            *earlier["settings"].get("reevaluated", []),
            {"volumes": args.volumes, "methods": args.methods, "slices": args.slices, "machine": machine_info("cpu"),
             "seconds": round(time.time() - tic, 1)}]}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
