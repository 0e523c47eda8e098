"""Coil-map refinement (``coils.refine_maps``) where ESPIRiT's maps do not explain the data: CG-SENSE and L1-wavelet
with the maps ``reconstruct`` now uses (refined when ``scan.maps_misfit`` holds), with ESPIRiT's maps as before
(given explicitly), and with the true simulated maps; zero-filled for reference. Judged against the reference only
here.

Sets (8 ACS lines unless said; data_tools.simulate: 2x readout oversampling, smooth phase, birdcage coils, noise):

    calibration   MNI152 coronal slices, the centre 64 x 64 of 128 x 128 (the brain fills the field of view), 4 and
                  8 coils, R = 2, 3 / 3, 4: where the Legendre degree (< 6 against < 4 and < 8) was chosen
    wide          noise_warning's held-out wide set (dipy's T1 and MNI152 axial crops that fill the field of view,
                  face photos), never looked at while choosing
    mr_small      pydicom's MR_small (4 coils, R = 2, 3, 4; the bench extra), another source; it set the warning's
                  threshold that also triggers the refinement, so it is not blind to that threshold
    regular       lambda_rules' volumes (brains with background, the twix phantom): the refinement should not fire
                  where ESPIRiT's maps explain the data; CG-SENSE only
    fresh         sources built after scan.MAX_MAP_MISFIT moved to 12 and the held-out check of refined maps was
                  added (``fresh_cases``: a Siemens abdomen, two dipy diffusion series, nibabel's T1 crop; 4-16
                  coils, 6-8 ACS lines, R = 2-8), never looked at before: written to results/map_refinement_fresh.json
    fresh2        sources built before scan.REFINE_SLICE_MISFIT moved to 2 and the clear-win rule was set, judged
                  with them only after (``fresh2_cases``: a neck angiogram's crops, a Philips phantom scan; 4-16
                  coils, 6-8 ACS lines, R = 2-8): written to results/map_refinement_fresh2.json

With ``--model`` the model's ``fast`` sampler (seed 0, default steps) joins every case of its image size (64 x 64
for quality_mri's models) outside the regular set (where nothing is refined): the learned methods get the same maps
check and refinement. Prints a table and writes
benchmarks/results/map_refinement.json (about 14-17 minutes on 2 cores, with --model too).

    python benchmarks/map_refinement.py [--sets calibration wide mr_small regular fresh fresh2] [--model PATH]
                                        [--refine-bar 6] [--out PATH]
    python benchmarks/map_refinement.py --alternations 6 12 24 48 96   # how many alternations: ..._alternations.json
    python benchmarks/map_refinement.py --timing   # seconds and CG-SENSE PSNR at fastMRI's brain size (minutes):
                                                   # results/map_refinement_timing.json
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, training_steps, write_record  # noqa: E402

import ambient_mri as am  # noqa: E402
from ambient_mri.coils import REFINE_DEGREE, REFINE_ITERS  # noqa: E402
from ambient_mri.masks import kspace_mask  # noqa: E402
from ambient_mri.metrics import evaluate_volume  # noqa: E402
from ambient_mri.scan import MAX_MAP_MISFIT, MIN_MAP_UNEXPLAINED, check_inputs, prepare_scan  # noqa: E402
from data_tools.simulate import birdcage_maps  # noqa: E402


def true_maps(k: np.ndarray, rows: int) -> np.ndarray:
    """The birdcage maps (radius 1.5) the simulator used, cropped to the reconstructed rows."""
    H0 = k.shape[-2]
    top = (H0 - rows) // 2
    return birdcage_maps(k.shape[1], (H0, k.shape[-1]))[:, top: top + rows]


def calibration_cases():
    import noise_warning

    from data_tools.sources import mni152_brain_range, mni152_slices

    lo, hi = mni152_brain_range("coronal")
    mni = mni152_slices(2, (128, 128), axis="coronal", start=(lo + hi) // 2 - 6, stop=(lo + hi) // 2 + 6)
    mni = np.asarray(mni[:, 32:96, 32:96], np.float32) / float(np.max(mni[:, 32:96, 32:96]))
    for coils, Rs in ((4, (2, 3)), (8, (3, 4))):
        k, t = noise_warning.simulated(mni, coils, 0.005, 5)
        for R in Rs:
            yield f"mni_coronal_zoom_64_c{coils}", "calibration", k, t, R, 8, (R, 7), True


def wide_cases():
    import noise_warning

    for name, _, k, t, R, acs, seed in noise_warning.wide_cases():
        yield name, "wide (held-out)", k, t, R, acs, seed, True


def mr_small_cases():
    import noise_warning

    from data_tools.other_sets import pydicom_mr_small

    k, t = noise_warning.simulated(pydicom_mr_small(), 4, 0.005, 3)
    for R in (2, 3, 4):
        yield "pydicom_mr_small_64_c4", "mr_small (other source)", k, t, R, 8, (R, 11), True


def fresh_cases():
    """Held out from scan.MAX_MAP_MISFIT's last move and every other rule (data_tools.other_sets, "fresh"): another
    anatomy (pydicom's Siemens abdomen, the body spanning the phase-encode direction) at 64 with 6 ACS lines and at
    128 with 16 coils, two dipy diffusion series (a noisy DWI with 12 coils and 6 ACS lines, a b0), and nibabel's T1
    crop of the brain's centre that fills the field of view."""
    import noise_warning

    from data_tools import other_sets as o

    specs = [("abdomen_64_c8", lambda: o.pydicom_abdomen((64, 64)), 8, 0.005, (2, 3, 4), 6),
             ("abdomen_128_c16", lambda: o.pydicom_abdomen((128, 128)), 16, 0.003, (4, 6, 8), 8),
             ("dipy_dwi_64_c12", o.dipy_dwi_slices, 12, 0.01, (4, 6, 8), 6),
             ("dipy_aniso_64_c4", o.dipy_aniso_slices, 4, 0.005, (2, 3), 8),
             ("dipy_aniso_64_c8", o.dipy_aniso_slices, 8, 0.005, (4, 6), 8),
             ("nibabel_t1_crop_64_c4", o.nibabel_anatomical_slices, 4, 0.005, (2, 3), 8),
             ("nibabel_t1_crop_64_c8", o.nibabel_anatomical_slices, 8, 0.005, (3, 4, 6), 8)]
    for name, images, coils, sigma, Rs, acs in specs:
        k, t = noise_warning.simulated(images(), coils, sigma, 4)
        for R in Rs:
            yield name, "fresh (held out)", k, t, R, acs, (R, 13), True


def fresh2_cases():
    """Held out from scan.REFINE_SLICE_MISFIT's move to 2 (data_tools.other_sets, "fresh2"): crops of a neck
    angiogram (soft tissue fills the field of view), one of them noisy (σ 0.02), and a Philips EPI phantom scan."""
    import noise_warning

    from data_tools import other_sets as o

    specs = [("neck_mip_64_c4", o.nibabel_neck_mip_crops, 4, 0.005, (2, 3), 8),
             ("neck_mip_64_c8", o.nibabel_neck_mip_crops, 8, 0.01, (3, 4, 6), 6),
             ("neck_mip_64_c12", o.nibabel_neck_mip_crops, 12, 0.02, (4, 6), 8),
             ("philips_phantom_64_c8", o.nibabel_philips_phantom_slices, 8, 0.005, (4, 6, 8), 6),
             ("philips_phantom_64_c16", o.nibabel_philips_phantom_slices, 16, 0.01, (4, 8), 8)]
    for name, images, coils, sigma, Rs, acs in specs:
        k, t = noise_warning.simulated(images(), coils, sigma, 5)
        for R in Rs:
            yield name, "fresh2 (held out)", k, t, R, acs, (R, 17), True


def regular_cases():
    import lambda_rules

    for v in lambda_rules.volumes(4):
        for R in v["R"]:
            yield (v["name"], "regular", v["kspace"], v["target"], R, v["acs"][R], (R, 11),
                   not v["name"].startswith("twix"))


MODEL = {}  # --model: the learned prior whose `fast` runs on the cases of its image size


def run(method: str, k, m, target, maps=None) -> tuple[float, dict, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = am.reconstruct(k, m, maps=maps, method=method, progress=False, target_size=target.shape[-2:],
                             **({"model": MODEL["model"], "seed": 0} if method == "fast" else {}))
    kinds = sorted({w.message.reason for w in caught if isinstance(w.message, am.BelowZeroFilledWarning)})
    return round(evaluate_volume(target, res.magnitude)["PSNR"], 3), res.extra, kinds


def run_case(name, set_name, k_full, target, R, acs, seed, simulated, methods) -> dict:
    m = kspace_mask("random", k_full.shape[-2:], R, acs / k_full.shape[-1], seed=seed)[0]
    k = k_full * m
    row = {"case": name, "set": set_name, "R": R, "acs_lines": acs, "coils": int(k.shape[1])}
    row["zero_filled"] = run("zero_filled", k, m, target)[0]
    espirit = None
    if MODEL and set_name != "regular" and target.shape[-2] == MODEL["rows"] and k.shape[-1] in MODEL["widths"]:
        methods = [*methods, "fast"]
    for method in methods:
        psnr, extra, kinds = run(method, k, m, target)
        refined = bool(extra.get("maps_refined"))
        row[method] = psnr
        row[f"{method}_warnings"] = kinds
        row["maps_refined"] = refined
        row["maps_refined_slices"] = extra.get("maps_refined_slices", [])
        row["maps_heldout_ratio"] = extra.get("maps_heldout_ratio")
        row["map_misfit"] = extra.get("map_misfit")
        row["map_misfit_espirit"] = extra.get("map_misfit_espirit", extra.get("map_misfit"))
        if refined:  # what reconstruct gave before: ESPIRiT's maps, given so that nothing refines them
            if espirit is None:
                kk, msk = check_inputs(k, m)
                espirit = prepare_scan(kk, msk, target.shape[-2])[1]
            row[f"{method}_espirit"], _, row[f"{method}_espirit_warnings"] = run(method, k, m, target, espirit)
        else:
            row[f"{method}_espirit"], row[f"{method}_espirit_warnings"] = psnr, kinds
        if simulated:
            row[f"{method}_true_maps"] = run(method, k, m, target, true_maps(k, target.shape[-2]))[0]
    return row


def summary(rows: list[dict], methods: list[str]) -> dict:
    out = {}
    for set_name in dict.fromkeys(r["set"] for r in rows):
        rs = [r for r in rows if r["set"] == set_name]
        s = {"cases": len(rs), "refined": sum(r["maps_refined"] for r in rs)}
        for method in methods:
            have = [r for r in rs if method in r]
            if not have:
                continue
            gain = [r[method] - r[f"{method}_espirit"] for r in have if r["maps_refined"]]
            s[method] = {
                "cases": len(have),
                "below_zero_filled_before": sum(r[f"{method}_espirit"] < r["zero_filled"] for r in have),
                "below_zero_filled_now": sum(r[method] < r["zero_filled"] for r in have),
                "below_zero_filled_now_unwarned": [f"{r['case']} R={r['R']}" for r in have if r[method] <
                                                   r["zero_filled"] and not r[f"{method}_warnings"]],
                "gain_where_refined_db": [round(min(gain), 2), round(float(np.mean(gain)), 2), round(max(gain), 2)]
                if gain else None}
        out[set_name] = s
    return out


def timing(slices: int = 2) -> dict:
    """Seconds of ESPIRiT, of ``refine_maps`` and of one CG-SENSE solve (λ 1e-3, up to 100 steps) at fastMRI's brain
    size (640 x 320 k-space, 16 coils, 320 x 320 image; MNI152 coronal slices filling the field of view, R = 4,
    8 ACS lines), and of the whole refinement path of ``reconstruct`` (per-slice checks, refinement, re-checks), side
    by side."""
    import torch

    from ambient_mri.baselines import _cg_sense, map_fit, misfit_of
    from ambient_mri.coils import refine_maps
    from ambient_mri.recon import _refined
    from ambient_mri.scan import scan_noise_std

    # the brain fills the field of view, and with 8 ACS lines ESPIRiT's maps fail, so the check fires and the whole
    # refinement path is timed
    name, k, target = fullsize_case(slices)
    m = kspace_mask("random", k.shape[-2:], 4, 8 / 320, seed=0)[0]
    kk, msk = check_inputs(k * m, m)
    tic = time.perf_counter()
    ks, esp, scales = prepare_scan(kk, msk, 320)
    t_esp = time.perf_counter() - tic
    y = torch.from_numpy(ks / scales[:, None, None, None])
    tic = time.perf_counter()
    _cg_sense(y, torch.from_numpy(esp), torch.from_numpy(msk), 1e-3, 100)
    t_cg = time.perf_counter() - tic
    tic = time.perf_counter()
    refine_maps(y, torch.from_numpy(esp), torch.from_numpy(msk))
    t_ref = time.perf_counter() - tic
    noise = scan_noise_std(kk, msk) / scales
    fit = map_fit(y.numpy(), esp, msk, noise)   # the central slices' check, as reconstruct runs it first
    misfit = misfit_of(fit)
    tic = time.perf_counter()  # what reconstruct adds where the check fires: per-slice checks, refinement, re-check
    extra: dict = {}
    _refined(y.numpy(), esp, msk, noise, fit, extra)
    t_path = time.perf_counter() - tic
    out = {"slices": slices, "kspace": list(k.shape[1:]), "seconds_espirit": round(t_esp, 2),
           "seconds_cg_sense": round(t_cg, 2), "seconds_refine_maps": round(t_ref, 2),
           "seconds_refinement_path": round(t_path, 2),
           "refine_over_cg_sense": round(t_ref / t_cg, 2), "refine_over_espirit": round(t_ref / t_esp, 2),
           "path_over_cg_sense": round(t_path / t_cg, 2), "map_misfit_espirit": round(misfit[0], 1),
           "slices_refined": extra.get("maps_refined_slices")}
    print(f"{slices} slices {k.shape[1:]}: ESPIRiT {t_esp:.1f} s, CG-SENSE {t_cg:.1f} s, refine_maps {t_ref:.1f} s "
          f"({out['refine_over_cg_sense']}x CG-SENSE), the whole per-slice refinement path {t_path:.1f} s "
          f"({out['path_over_cg_sense']}x CG-SENSE; misfit {misfit[0]:.1f}, slices refined {out['slices_refined']})")
    # and what the refinement gives at this size (wider k-space, more coils than the 64 / 128 cases above)
    # (CG-SENSE only: L1-wavelet's λ search at this size takes tens of minutes on 2 cores)
    out["quality"] = run_case(name, "fastMRI size", k, target, 4, 8, 0, True, ["sense"])
    print("PSNR zero-filled {zero_filled:.2f}; CG-SENSE refined {sense:.2f}, ESPIRiT {sense_espirit:.2f}, true maps "
          "{sense_true_maps:.2f}; refined slices {maps_refined_slices}".format(**out["quality"]))
    return out


def fullsize_case(slices: int = 2):
    """2 coronal MNI152 slices filling the field of view at fastMRI's brain size: (name, k-space (S, 16, 640, 320),
    RSS target (S, 320, 320)); R = 4 with 8 ACS lines (mask seed 0) is where ESPIRiT's maps fail."""
    import noise_warning

    from data_tools.sources import mni152_slices

    img = np.asarray(mni152_slices(slices, (640, 640), axis="coronal"), np.float32)[:, 160:480, 160:480]
    k, target = noise_warning.simulated(img / img.max(), 16, 1e-3, 0)
    return f"mni_coronal_fill_320_c16 ({slices} slices)", k, target


def alternations(counts: list[int]) -> list[dict]:
    """CG-SENSE (λ 1e-3 fixed, so only the maps differ) with ESPIRiT's, the true and the refined maps after each
    count of alternations, on the calibration crops and on ``fullsize_case`` (the same source, where the count
    was found too small)."""
    import torch

    from ambient_mri.baselines import _cg_sense
    from ambient_mri.coils import refine_maps
    from ambient_mri.metrics import center_crop

    name, kf, target = fullsize_case()
    cases = [(n, kf_, t, R, acs, seed) for n, _, kf_, t, R, acs, seed, _ in calibration_cases()]
    cases.append((name, kf, target, 4, 8, 0))
    rows = []
    for name, kf, target, R, acs, seed in cases:
        m = kspace_mask("random", kf.shape[-2:], R, acs / kf.shape[-1], seed=seed)[0]
        kk, msk = check_inputs(kf * m, m)
        ks, esp, scales = prepare_scan(kk, msk, target.shape[-2])
        y = torch.from_numpy(ks / scales[:, None, None, None])

        def psnr(maps, y=y, msk=msk, scales=scales, target=target) -> float:
            x = _cg_sense(y, torch.from_numpy(np.ascontiguousarray(maps)), torch.from_numpy(msk), 1e-3, 100)
            img = np.abs(x.numpy() * scales[:, None, None])
            return round(evaluate_volume(target, center_crop(img, target.shape[-2:]))["PSNR"], 2)

        row = {"case": name, "R": R, "acs_lines": acs, "espirit": psnr(esp),
               "true_maps": psnr(np.broadcast_to(true_maps(kf, target.shape[-2]), esp.shape).astype(np.complex64))}
        for n in counts:
            t = time.perf_counter()
            row[f"refined_{n}"] = psnr(refine_maps(y, torch.from_numpy(esp), torch.from_numpy(msk), iters=n).numpy())
            row[f"seconds_{n}"] = round(time.perf_counter() - t, 2)
        print(row, flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sets = ["calibration", "wide", "mr_small", "regular", "fresh", "fresh2"]
    p.add_argument("--sets", nargs="+", default=sets[:-2], choices=sets)
    p.add_argument("--model", default=None, help="a model file: its `fast` sampler joins the cases of its image size")
    p.add_argument("--timing", action="store_true", help="only the cost and CG-SENSE's PSNR at fastMRI's brain size "
                                                         "(minutes), to "
                                                         "results/map_refinement_timing.json")
    p.add_argument("--alternations", nargs="+", type=int, default=None, metavar="N",
                   help="only CG-SENSE (λ 1e-3) with maps refined by N alternations, on the calibration crops and at "
                        "fastMRI's size, to results/map_refinement_alternations.json")
    p.add_argument("--refine-bar", type=float, default=None, metavar="MISFIT",
                   help="run with scan.REFINE_SLICE_MISFIT set to MISFIT (6: the bar before it moved to 2)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from ambient_mri import recon

    if args.refine_bar is not None:
        recon.REFINE_SLICE_MISFIT = args.refine_bar
    results = ROOT / "benchmarks" / "results"
    if args.alternations:
        tic = time.perf_counter()
        record = {"benchmark": "map_refinement (alternations)", "machine": machine_info("cpu"),
                  "settings": {"counts": args.alternations, "lambda": 1e-3, "refine_degree": REFINE_DEGREE},
                  "rows": alternations(args.alternations)}
        return write_record(record, Path(args.out or results / "map_refinement_alternations.json"), tic)
    if args.timing:
        tic = time.perf_counter()
        record = {"benchmark": "map_refinement (timing)", "machine": machine_info("cpu"), "timing": timing()}
        return write_record(record, Path(args.out or results / "map_refinement_timing.json"), tic)
    name = next((f"map_refinement_{n}.json" for n in ("fresh2", "fresh") if n in args.sets), "map_refinement.json")
    args.out = args.out or str(results / name)
    if args.model:
        model = am.load_model(args.model)
        MODEL.update(model=model, rows=model.record.image_shape[-2], widths=tuple(model.record.widths),
                     path=args.model, steps=training_steps(args.model))
    tic = time.perf_counter()
    makers = {"calibration": calibration_cases, "wide": wide_cases, "mr_small": mr_small_cases,
              "regular": regular_cases, "fresh": fresh_cases, "fresh2": fresh2_cases}
    rows = []
    print(f"{'case':26s} {'R':>2s} {'ZF':>6s} {'misfit':>13s} | {'SENSE':>6s} {'before':>6s} {'true':>6s} | "
          f"{'L1':>6s} {'before':>6s} {'true':>6s} | {'fast':>6s} {'before':>6s} {'true':>6s}  warnings now")
    for name in args.sets:
        if name in ("mr_small", "fresh", "fresh2"):
            try:
                import pydicom  # noqa: F401
            except ImportError as err:
                print(f"skipping {name}: {err} (the bench extra)")
                continue
        methods = ["sense"] if name == "regular" else ["sense", "l1_wavelet"]
        for case in makers[name]():
            r = run_case(*case, methods)
            rows.append(r)
            mf = "-" if r["map_misfit_espirit"] is None else f"{r['map_misfit_espirit']:.1f}"
            if r["maps_refined"]:
                mf += f"->{r['map_misfit']:.1f}"
            cells = " | ".join(
                f"{r[m]:6.2f} {r[f'{m}_espirit']:6.2f} {r.get(f'{m}_true_maps', float('nan')):6.2f}"
                if m in r else f"{'':6s} {'':6s} {'':6s}" for m in ("sense", "l1_wavelet", "fast"))
            warned = " | ".join(",".join(r.get(f"{m}_warnings", [])) or "-" for m in methods + ["fast"] if m in r)
            print(f"{r['case'][:26]:26s} {r['R']:2d} {r['zero_filled']:6.2f} {mf:>13s} | {cells}  {warned}",
                  flush=True)
    record = {"benchmark": "map_refinement", "machine": machine_info("cpu"),
              "settings": {"sets": args.sets, "refine_degree": REFINE_DEGREE, "refine_iters": REFINE_ITERS,
                           "refine_slice_misfit": recon.REFINE_SLICE_MISFIT,
                           "max_map_misfit": MAX_MAP_MISFIT, "min_map_unexplained": MIN_MAP_UNEXPLAINED,
                           "model": MODEL.get("path"), "model_training_steps": MODEL.get("steps")},
              "summary": summary(rows, ["sense", "l1_wavelet", "fast"]), "rows": rows}
    for set_name, s in record["summary"].items():
        print(f"{set_name}: {s}")
    return write_record(record, Path(args.out), tic)


if __name__ == "__main__":
    main()
