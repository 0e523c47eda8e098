"""The maps-support check (``scan.support_bright_share``, warning above ``scan.MAX_SUPPORT_BRIGHT``) on ESPIRiT's
maps: per slice, the bright zero-filled pixels the maps' support leaves out, over the support's pixel count.

Volumes (simulated with data_tools.simulate, 2x readout oversampling; ESPIRiT from the ACS lines as ``reconstruct``
does): the neck angiogram crops of map_refinement.py's fresh2 set (8 coils, 6 ACS lines, σ 0.01, where ESPIRiT's
support cut a hole into one slice), the demo's first three training volumes and its validation volume (brains with
background), nibabel's EPI subject (12 coils), and pydicom's abdomen, nibabel's T1 crop, the Philips phantom scan
and dipy's noisy DWI (8 coils, 6 ACS lines), at R = 3-8. Prints a table and writes
benchmarks/results/support_check.json (under a minute on 2 cores; needs the bench extra).

    python benchmarks/support_check.py [--work DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, write_record  # noqa: E402

from ambient_mri.masks import kspace_mask  # noqa: E402
from ambient_mri.scan import MAX_SUPPORT_BRIGHT, check_inputs, prepare_scan, support_bright_share  # noqa: E402


def row(name: str, k: np.ndarray, R: int, acs_fraction: float, seed) -> dict:
    m = kspace_mask("random", k.shape[-2:], R, acs_fraction, seed=seed)[0]
    kk, mm = check_inputs(k * m, m)
    ks, maps, _ = prepare_scan(kk, mm, k.shape[-1])
    share = [None if v is None else round(v, 3) for v in support_bright_share(ks, maps)]
    print(f"{name:26s} R {R}: {share}", flush=True)
    return {"case": name, "R": R, "share": share}


def main(argv=None) -> dict:
    import noise_warning

    from ambient_mri.data import read_fastmri
    from data_tools import other_sets as o
    from data_tools.demo import build_demo, demo_center_fraction
    from data_tools.simulate import simulate_coil_data

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None, help="where the demo data are built (default: a temporary folder)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "support_check.json"))
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    tic = time.perf_counter()
    rows = []
    k, _ = noise_warning.simulated(o.nibabel_neck_mip_crops(), 8, 0.01, 5)
    rows += [row("neck_mip_64_c8", k, R, 6 / 64, (R, 17)) for R in (3, 4, 6)]
    with tempfile.TemporaryDirectory() as d:
        work = Path(args.work or d)
        build_demo(work)
        files = sorted((work / "raw" / "train").glob("demo_train_0[0-2].h5")) + sorted((work / "raw" / "val").glob(
            "*.h5"))
        for path in files:
            k = np.asarray(read_fastmri(path).kspace)
            rows += [row(path.stem, k, R, demo_center_fraction(64, R), (R, 1)) for R in (4, 8)]
    k = simulate_coil_data(o.epi_central_planes(4, 64), num_coils=12, oversample=2, noise_std=0.005, seed=3).kspace
    rows += [row("nibabel_epi_64_c12", k, R, 6 / 64, (R, 11)) for R in (6, 8)]
    for name, images in (("abdomen_64_c8", lambda: o.pydicom_abdomen((64, 64))),
                         ("nibabel_t1_crop_64_c8", o.nibabel_anatomical_slices),
                         ("philips_phantom_64_c8", o.nibabel_philips_phantom_slices),
                         ("dipy_dwi_64_c8", o.dipy_dwi_slices)):
        k, _ = noise_warning.simulated(images(), 8, 0.005, 4)
        rows += [row(name, k, R, 6 / 64, (R, 13)) for R in (4, 8)]
    flagged = [(r["case"], r["R"], s) for r in rows for s, v in enumerate(r["share"]) if v is not None
               and v > MAX_SUPPORT_BRIGHT]
    top = max(v for r in rows if not r["case"].startswith("neck") for v in r["share"] if v is not None)
    record = {"benchmark": "support_check", "machine": machine_info("cpu"),
              "settings": {"max_support_bright": MAX_SUPPORT_BRIGHT},
              "summary": {"flagged_slices": flagged, "largest_share_outside_the_neck": top}, "rows": rows}
    print(f"flagged: {flagged}; largest share outside the neck crops: {top}")
    return write_record(record, Path(args.out), tic)


if __name__ == "__main__":
    main()
