"""Speed of the multi-coil MRI operator A = M F S (forward and adjoint) against sigpy and fastMRI.

Three implementations of the same operator on the same data, timed side by side in one run:

* ``ambient_mri``  ``am.MultiCoilMRI(maps, mask)``: forward and ``.adjoint``, batched over slices and coils
                   (for even H and W the centred FFT runs as a plain FFT between checkerboards folded into the
                   maps and mask at construction; odd sizes use fft2c).
* ``sigpy``        ``sigpy.mri.linop.Sense(maps[s], weights=mask)`` and its ``.H``, one operator per slice
                   (Sense takes one slice: its image shape is the map shape minus the coil axis, and its FFT runs
                   over every image axis, so a slice axis cannot be added), looped over the slices.
* ``fastmri``      ``fastmri.fft2c`` / ``ifft2c`` on real views (..., 2) with ``fastmri.complex_mul`` /
                   ``complex_conj``, summing over coils: how a fastMRI-based code base writes it.

First the three results are compared (relative error of forward and adjoint against ambient_mri). Then each
round runs every method once, in a rotating order (to cancel drift and machine noise), after warm-up rounds.
One timed call is a forward A x followed by an adjoint A^H y on a fixed k-space y; forward and adjoint are also
reported separately. Results go to ``benchmarks/results/operators.json``.

    python benchmarks/operators.py                      # 4 slices x 16 coils x 640 x 320, CPU
    python benchmarks/operators.py --device cuda        # sigpy on the GPU needs cupy, else it is skipped
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from common import machine_info, stats  # noqa: E402

import ambient_mri as am

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------- data
def smooth_maps(S: int, C: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    """Random non-flat complex64 coil maps (S, C, H, W): smooth magnitude and phase per coil, RSS-normalised."""
    g = torch.Generator().manual_seed(seed)
    lin = lambda n: torch.linspace(-1, 1, n, dtype=torch.float32)  # noqa: E731
    yy, xx = torch.meshgrid(lin(H), lin(W), indexing="ij")
    c = torch.randn(S, C, 6, generator=g)
    centre_y, centre_x = torch.tanh(c[..., 0]), torch.tanh(c[..., 1])
    mag = torch.exp(-((yy - centre_y[..., None, None]) ** 2 + (xx - centre_x[..., None, None]) ** 2) / 0.8)
    phase = c[..., 2, None, None] * xx + c[..., 3, None, None] * yy + c[..., 4, None, None] * xx * yy
    maps = torch.polar(mag, phase)
    return (maps / am.coils.rss(maps, dim=1).clamp_min(1e-6)[:, None]).to(torch.complex64).contiguous()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.complex128), np.asarray(b, dtype=np.complex128)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------------------------- methods
class Ours:
    name = "ambient_mri"

    def __init__(self, maps, mask, x, y, device):
        self.A = am.MultiCoilMRI(maps.to(device), mask.to(device))
        self.x, self.y = x.to(device), y.to(device)

    def forward(self):
        return self.A(self.x)

    def adjoint(self):
        return self.A.adjoint(self.y)

    @staticmethod
    def to_numpy(t):
        return t.detach().cpu().numpy()


class FastMRI:
    name = "fastmri"

    def __init__(self, maps, mask, x, y, device):
        import fastmri

        self.fm = fastmri
        self.maps = torch.view_as_real(maps.to(device))                     # (S, C, H, W, 2)
        self.maps_conj = fastmri.complex_conj(self.maps)
        self.mask = mask.to(device)[None, None, :, :, None]                 # (1, 1, 1|H, W, 1)
        self.x = torch.view_as_real(x.to(device))[:, None]                  # (S, 1, H, W, 2)
        self.y = torch.view_as_real(y.to(device))                           # (S, C, H, W, 2)

    def forward(self):
        fm = self.fm
        return self.mask * fm.fft2c(fm.complex_mul(self.maps, self.x))

    def adjoint(self):
        fm = self.fm
        return fm.complex_mul(self.maps_conj, fm.ifft2c(self.mask * self.y)).sum(dim=1)

    @staticmethod
    def to_numpy(t):
        return torch.view_as_complex(t.detach().cpu().contiguous()).numpy()


class Sigpy:
    name = "sigpy"

    def __init__(self, maps, mask, x, y, device):
        import sigpy as sp
        import sigpy.mri

        self.dev = sp.Device(-1 if device == "cpu" else torch.device(device).index or 0)
        xp = self.dev.xp
        with self.dev:
            mask_np = xp.asarray(mask.numpy())
            self.ops = [sigpy.mri.linop.Sense(xp.asarray(m), weights=mask_np) for m in maps.numpy()]
            self.ops_h = [op.H for op in self.ops]
            self.x = [xp.asarray(s) for s in x.numpy()]
            self.y = [xp.asarray(s) for s in y.numpy()]

    def forward(self):
        with self.dev:
            return [op(s) for op, s in zip(self.ops, self.x)]

    def adjoint(self):
        with self.dev:
            return [op(s) for op, s in zip(self.ops_h, self.y)]

    def to_numpy(self, out):
        import sigpy as sp

        return np.stack([sp.to_device(o, sp.cpu_device) for o in out])


def make_sync(device: str):
    if device == "cpu":
        return lambda: None

    def sync():
        torch.cuda.synchronize()
        try:
            import cupy

            cupy.cuda.Device().synchronize()
        except ImportError:
            pass

    return sync


# ----------------------------------------------------------------------------------------------- info
# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--coils", type=int, default=16)
    p.add_argument("--height", type=int, default=640)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--acceleration", type=float, default=4)
    p.add_argument("--center-fraction", type=float, default=0.08)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "operators.json")
    args = p.parse_args(argv)

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = make_sync(device)
    S, C, H, W = args.slices, args.coils, args.height, args.width

    # Same data for everyone: smooth maps, a fastMRI random mask, a random image and a random k-space.
    maps = smooth_maps(S, C, H, W, seed=0)
    mask = torch.from_numpy(am.masks.kspace_mask("random", (H, W), args.acceleration, args.center_fraction,
                                                 seed=1234))                      # (1, W) float32
    g = torch.Generator().manual_seed(1)
    x = torch.randn(S, H, W, dtype=torch.complex64, generator=g)
    y = mask * torch.randn(S, C, H, W, dtype=torch.complex64, generator=g)

    methods, skipped = [], {}
    for cls in (Ours, Sigpy, FastMRI):
        try:
            methods.append(cls(maps, mask, x, y, device))
        except (ImportError, ValueError) as e:  # sigpy on CUDA needs cupy ("cupy not installed" is a ValueError)
            skipped[cls.name] = f"not run on {device}: {e}"
            print(f"skipping {cls.name}: {e}")

    # ---- agreement (forward and adjoint, relative to ambient_mri)
    ref_f = methods[0].to_numpy(methods[0].forward())
    ref_a = methods[0].to_numpy(methods[0].adjoint())
    agreement = {}
    for m in methods[1:]:
        agreement[m.name] = {"forward_rel_err": rel_err(m.to_numpy(m.forward()), ref_f),
                             "adjoint_rel_err": rel_err(m.to_numpy(m.adjoint()), ref_a)}
    agree_ok = all(v < 1e-5 for d in agreement.values() for v in d.values())
    print(f"A: {S} slices x {C} coils x {H}x{W} complex64, fastMRI random mask R={args.acceleration} "
          f"(achieved {am.masks.achieved_acceleration(mask.numpy()):.2f}), device {device}, "
          f"torch threads {torch.get_num_threads()}")
    for name, d in agreement.items():
        print(f"agreement vs ambient_mri: {name:8s} forward {d['forward_rel_err']:.2e}  "
              f"adjoint {d['adjoint_rel_err']:.2e}")
    print("all agree (rel. err < 1e-5):", agree_ok)
    del ref_f, ref_a

    # ---- timing: interleaved rounds, rotating order
    times = {m.name: {"forward": [], "adjoint": [], "forward+adjoint": []} for m in methods}
    t_start = time.perf_counter()
    for r in range(args.warmup + args.repeats):
        k = r % len(methods)
        for m in methods[k:] + methods[:k]:
            sync()
            t0 = time.perf_counter()
            out = m.forward()
            sync()
            t1 = time.perf_counter()
            out = m.adjoint()
            sync()
            t2 = time.perf_counter()
            del out
            if r >= args.warmup:
                times[m.name]["forward"].append(t1 - t0)
                times[m.name]["adjoint"].append(t2 - t1)
                times[m.name]["forward+adjoint"].append(t2 - t0)
    wall = time.perf_counter() - t_start

    results = {name: {part: stats(v) for part, v in d.items()} for name, d in times.items()}
    base = results.get("sigpy")
    for r in results.values():
        r["ratio_vs_sigpy"] = (r["forward+adjoint"]["median_ms"] / base["forward+adjoint"]["median_ms"]
                               if base else None)
        if base:
            r["ratio_vs_sigpy_forward"] = r["forward"]["median_ms"] / base["forward"]["median_ms"]
            r["ratio_vs_sigpy_adjoint"] = r["adjoint"]["median_ms"] / base["adjoint"]["median_ms"]

    print(f"\n{args.repeats} timed rounds after {args.warmup} warm-up rounds ({wall:.1f} s); "
          "one call = forward + adjoint")
    header = f"{'method':12s} {'median ms':>10s} {'IQR ms':>8s} {'fwd ms':>8s} {'adj ms':>8s} {'vs sigpy':>9s}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        ratio = f"{r['ratio_vs_sigpy']:.2f}x" if r["ratio_vs_sigpy"] is not None else "n/a"
        print(f"{name:12s} {r['forward+adjoint']['median_ms']:10.1f} {r['forward+adjoint']['iqr_ms']:8.1f} "
              f"{r['forward']['median_ms']:8.1f} {r['adjoint']['median_ms']:8.1f} {ratio:>9s}")

    record = {
        "benchmark": "operators",
        "what": "MultiCoilMRI forward A x and adjoint A^H y (A = M F S) vs sigpy Sense and fastMRI functions",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "settings": {"slices": S, "coils": C, "height": H, "width": W, "dtype": "complex64",
                     "mask": "fastMRI RandomMaskFunc", "acceleration": args.acceleration,
                     "center_fraction": args.center_fraction,
                     "achieved_acceleration": am.masks.achieved_acceleration(mask.numpy()),
                     "maps": "random smooth non-flat, RSS-normalised", "device": device,
                     "warmup": args.warmup, "repeats": args.repeats, "order": "interleaved, rotating each round",
                     "sigpy_mode": "one Sense operator per slice, looped over slices",
                     "ambient_mri_fft": ("fftn between checkerboards folded into maps and mask"
                                         if H % 2 == 0 and W % 2 == 0 else "fft2c (odd size)")},
        "agreement_vs_ambient_mri": agreement,
        "all_agree_rel_err_below_1e-5": agree_ok,
        "skipped": skipped,
        "results": results,
        "ambient_mri_ratio_vs_sigpy": results["ambient_mri"]["ratio_vs_sigpy"],
        "timing_wall_s": wall,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return record


if __name__ == "__main__":
    main()
