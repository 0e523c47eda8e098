"""Seconds and peak memory per slice of ``reconstruct`` at official fastMRI sizes, with and without coil compression.

Data: simulated official-size slices (``data_tools.simulate.simulate_coil_data``) from MNI152 anatomy
(``data_tools.sources.mni152_slices``, resized to the image size), noise std 1e-3 of the image maximum per k-space
sample (orthonormal FFT), and a fastMRI random column mask at R = 4 (centre fraction 0.08) per slice:

* ``brain``  16 coils, 640 x 320 k-space (2x readout oversampling), image / target 320 x 320
* ``knee``   15 coils, 640 x 368 k-space, image / target 320 x 368

Methods: ``zero_filled``, ``sense`` (CG-SENSE, λ chosen on the scan's own held-out lines as ``reconstruct`` does),
``l1_wavelet`` (sigpy; λ fixed, iterations capped: its λ search alone is 200 sigpy iterations), ``one_step`` and
``fast`` with a small untrained ambient network (weights do not change time or memory; the network's size does,
and is recorded): each with all coils and with ``coils=4`` (and ``coils=8`` for zero-filled and CG-SENSE, for the
PSNR cost of compression). The cost of a slice includes its preparation (readout crop, compression, ESPIRiT maps,
scale; timed on its own as ``prep_s``). Note: ``reconstruct`` crops the readout to the image rows only when the
k-space has at least twice as many rows as columns (or for a model): the knee's classical methods run on all 640 rows,
its diffusion methods on the model's 320.

Every case runs in a fresh subprocess (one slice per case on CPU by default). Peak memory on CPU is the rise of the
process's resident peak (VmHWM, reset through /proc/self/clear_refs after the imports, data and model are loaded)
over its resident size then; on CUDA also ``torch.cuda.max_memory_allocated`` over what was allocated before the
call. The cases of one method run back to back, their order alternating from method to method, so the time ratios
with / without compression are measured side by side. For diffusion methods every network evaluation is timed
(Denoiser.forward, which includes the ``input_cg`` CG steps on its input, and the UNet alone). PSNR of each result
against ``rss_target`` (fastMRI's RSS of the fully sampled coils, centre-cropped; ``metrics.psnr``, range = max).

    python benchmarks/fullsize.py                  # CPU: small network, fast with 4 steps (about 10 min on 2 cores)
    python benchmarks/fullsize.py --device cuda    # the fastMRI recipes' network (128 x [1,2,2,2], 4 blocks), 50 steps
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

ANATOMIES = {  # name -> (coils, image rows, image columns); k-space has 2x the rows (readout oversampling)
    "brain": (16, 320, 320),
    "knee": (15, 320, 368),
}
METHODS = ("zero_filled", "sense", "l1_wavelet", "one_step", "fast")
DIFFUSION = ("one_step", "fast")
PSNR_METHODS = ("zero_filled", "sense")  # also run at coils=8: the PSNR cost of compression
NETWORKS = {  # the network presets; input_cg as in the recipe the preset comes from
    # UNet's bottleneck always has attention: with 2 levels (tiny) it attends over 160x184 = 29440 positions at
    # 320x368 (one evaluation took 20 s and 6 GB on the CPU), so the CPU default is tiny's width with 4 levels
    "small": {"model_channels": 8, "channel_mult": [1, 2, 2, 2], "num_blocks": 1, "attn_levels": [],
              "dropout": 0.0, "input_cg": 10},
    "tiny": {"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_levels": [], "dropout": 0.0,
             "input_cg": 10},  # tests/helpers.py TINY_NET with the demo recipe's input_cg
    "demo": {"model_channels": 32, "channel_mult": [1, 2, 2], "num_blocks": 1, "attn_levels": [], "dropout": 0.0,
             "input_cg": 10},  # recipes/demo_mni_r4.yaml
    "fastmri": {"model_channels": 128, "channel_mult": [1, 2, 2, 2], "num_blocks": 4, "attn_levels": [],
                "dropout": 0.0, "input_cg": 0},  # recipes/fastmri_*_ambient_r4.yaml
}
ACCELERATION, CENTER_FRACTION, NOISE = 4.0, 0.08, 1e-3
GB = 2**30


# ----------------------------------------------------------------------------------------------- child
def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak counts only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def build_model(network: dict, shape: tuple[int, int]):
    import torch

    from ambient_mri.model import Denoiser
    from ambient_mri.training.recipe import load_recipe
    from ambient_mri.training.trainer import network_config

    torch.manual_seed(0)
    record = {"operator": "multicoil", "ambient": True, "cond": ["mask", "ones"], "image_shape": list(shape),
              "further": {"delta": 0.2},
              "data": {"mask": {"kind": "random", "acceleration": ACCELERATION, "center_fraction": CENTER_FRACTION}}}
    net = Denoiser(network_config(load_recipe({"network": dict(network)}), 2, 2), record)
    return net.eval()


def child(p: dict) -> dict:
    """One case: reconstruct the slices of ``p["data"]`` with one method and coil count; time, memory, PSNR."""
    import torch

    if p["threads"]:
        torch.set_num_threads(p["threads"])
    import ambient_mri.recon as recon
    from ambient_mri import reconstruct
    from ambient_mri.metrics import psnr

    cuda = p["device"].startswith("cuda")
    d = np.load(p["data"])
    k, mask, target = d["kspace"], d["mask"], d["target"]
    S = k.shape[0]
    diffusion = p["method"] in DIFFUSION
    model = build_model(p["network"], target.shape[-2:]) if diffusion else None
    if model is not None and cuda:
        model = model.to(p["device"])

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # time the preparation (crop, compression, ESPIRiT, scale) and every network evaluation
    prep_s, forward_s, unet_s = [], [], []
    real_prepare = recon.prepare_scan

    def timed_prepare(*a, **kw):
        tic = time.perf_counter()
        out = real_prepare(*a, **kw)
        prep_s.append(time.perf_counter() - tic)
        return out

    recon.prepare_scan = timed_prepare
    if model is not None:
        def pre(store):
            def hook(*_):
                sync()
                store.append(-time.perf_counter())
            return hook

        def post(store):
            def hook(*_):
                sync()
                store[-1] += time.perf_counter()
            return hook

        model.register_forward_pre_hook(pre(forward_s))
        model.register_forward_hook(post(forward_s))
        model.precond.register_forward_pre_hook(pre(unet_s))
        model.precond.register_forward_hook(post(unet_s))

    opts = dict(p["opts"])
    if diffusion:
        opts.update(model=model, device=p["device"], batch_size=1)
        if p["method"] != "one_step":  # one evaluation of D: it takes no steps
            opts["steps"] = p["steps"]
    runs = []
    for _rep in range(p["repeats"]):
        prep_s.clear(), forward_s.clear(), unet_s.clear()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated() if cuda else 0
        reset = _reset_peak()
        base_kb = _status_kb("VmRSS")
        tic, cpu, ru = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
        res = reconstruct(k, mask, method=p["method"], coils=p["coils"], progress=False,
                          target_size=tuple(target.shape[-2:]), **opts)
        sync()
        seconds, cpu = time.perf_counter() - tic, time.process_time() - cpu
        ru2 = resource.getrusage(resource.RUSAGE_SELF)
        run = {"seconds": seconds, "seconds_per_slice": seconds / S, "cpu_seconds_per_slice": cpu / S,
               "prep_s": sum(prep_s), "user_s": ru2.ru_utime - ru.ru_utime, "sys_s": ru2.ru_stime - ru.ru_stime,
               "minor_faults": ru2.ru_minflt - ru.ru_minflt,
               "peak_rss_increase_mb": (_status_kb("VmHWM") - base_kb) / 1024 if reset else None,
               "rss_before_mb": base_kb / 1024, "nfe": res.nfe,
               "psnr": psnr(target, res.magnitude), "coils_used": res.extra.get("coils"),
               "lambda": res.extra.get("lambda")}
        if diffusion and forward_s:
            run.update(nfe_calls=len(forward_s), s_per_nfe=float(np.mean(forward_s)),
                       unet_s_per_nfe=float(np.mean(unet_s)), nfe_share=sum(forward_s) / seconds)
        if cuda:
            run.update(cuda_peak_allocated_mb=torch.cuda.max_memory_allocated() / 2**20,
                       cuda_peak_increase_mb=(torch.cuda.max_memory_allocated() - cuda_base) / 2**20,
                       cuda_model_mb=cuda_base / 2**20)
        runs.append(run)
    warm = runs[1:] or runs  # with repeats > 1 the first call (lazy initialisation) is not timed
    out = {"runs": runs, "slices": S}
    for key in ("seconds_per_slice", "cpu_seconds_per_slice", "prep_s", "s_per_nfe", "unet_s_per_nfe"):
        vals = [r[key] for r in warm if r.get(key) is not None]
        out[key] = float(np.median(vals)) if vals else None
    for key in ("peak_rss_increase_mb", "cuda_peak_increase_mb", "cuda_peak_allocated_mb"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        out[key] = float(max(vals)) if vals else None
    out.update({key: runs[-1][key] for key in ("nfe", "psnr", "coils_used", "lambda", "user_s", "sys_s",
                                               "minor_faults")})
    if model is not None:
        out["parameters"] = sum(q.numel() for q in model.parameters())
    out["rss_before_mb"] = runs[0]["rss_before_mb"]
    return out


# ----------------------------------------------------------------------------------------------- parent
def simulate(name: str, slices: int, seed: int, folder: Path) -> dict:
    from ambient_mri.masks import kspace_mask
    from data_tools.simulate import rss_target, simulate_coil_data
    from data_tools.sources import mni152_slices

    C, h, w = ANATOMIES[name]
    img = mni152_slices(slices, size=(h, w))
    sim = simulate_coil_data(img, C, oversample=2, noise_std=NOISE * float(img.max()), seed=seed)
    k = sim.kspace
    mask = np.concatenate([kspace_mask("random", k.shape[-2:], ACCELERATION, CENTER_FRACTION, seed=(seed, s))
                           for s in range(slices)])  # (S, W), one per slice
    target = rss_target(k, (h, w))
    path = folder / f"{name}.npz"
    np.savez(path, kspace=k, mask=mask.astype(np.float32), target=target)
    return {"path": str(path), "kspace_shape": list(k.shape), "image_shape": [h, w], "coils": C,
            "acquired_columns": [int(m.sum()) for m in mask], "acceleration_actual": [float(w / m.sum()) for m in mask],
            "kspace_mb_per_slice": k[0].nbytes / 2**20}


def run_child(payload: dict, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if payload["threads"]:
        env["OMP_NUM_THREADS"] = str(payload["threads"])
    tic = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_child", json.dumps(payload)],
                             capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall_s": time.perf_counter() - tic}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}",
                "wall_s": time.perf_counter() - tic}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - tic  # includes the child's imports and loading
    return res


def method_options(method: str, args) -> dict:
    if method == "sense":
        return {} if args.sense_iters is None else {"iters": args.sense_iters}
    if method == "l1_wavelet":
        return {"iters": args.l1_iters, **({} if args.l1_lam is None else {"lam": args.l1_lam})}
    return {}


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    header = (f"{'anatomy':7s} {'method':11s} {'coils':>5s} {'s/slice':>8s} {'CPU s':>7s} {'x all':>6s} "
              f"{'prep s':>7s} "
              f"{'peak MB':>8s} {'x all':>6s} {'NFE':>4s} {'s/NFE':>7s} {'UNet s':>7s} {'PSNR':>6s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['anatomy']:7s} {r['method']:11s} {r['coils_label']:>5s}  FAILED: {r['error']}")
            continue
        peak = r["cuda_peak_increase_mb"] if r.get("cuda_peak_increase_mb") is not None else r["peak_rss_increase_mb"]
        print(f"{r['anatomy']:7s} {r['method']:11s} {r['coils_label']:>5s} {r['seconds_per_slice']:8.2f} "
              f"{r['cpu_seconds_per_slice']:7.2f} {_fmt(r.get('cpu_time_ratio_to_all'), '6.2f')} "
              f"{_fmt(r['prep_s'], '7.2f')} {_fmt(peak, '8.0f')} "
              f"{_fmt(r.get('peak_ratio_to_all'), '6.2f')} {r['nfe'] or '-':>4} {_fmt(r.get('s_per_nfe'), '7.3f')} "
              f"{_fmt(r.get('unet_s_per_nfe'), '7.3f')} {r['psnr']:6.2f}")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the classical methods run on the CPU anyway)")
    p.add_argument("--slices", type=int, default=1, help="slices per anatomy, reconstructed in one call per case")
    p.add_argument("--anatomies", nargs="+", default=list(ANATOMIES), choices=list(ANATOMIES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--compressed", type=int, nargs="+", default=[4], help="virtual coil counts besides all coils")
    p.add_argument("--psnr-coils", type=int, nargs="*", default=[8],
                   help="further coil counts for zero-filled and CG-SENSE only (the PSNR cost of compression)")
    p.add_argument("--network", choices=list(NETWORKS), default=None, help="default small (cpu), fastmri (cuda)")
    p.add_argument("--input-cg", type=int, default=None, help="override the network preset's input_cg")
    p.add_argument("--steps", type=int, default=None, help="steps of fast (default 4 on cpu, 50 on cuda)")
    p.add_argument("--sense-iters", type=int, default=None, help="CG-SENSE iterations (default: reconstruct's 100)")
    p.add_argument("--l1-iters", type=int, default=None, help="L1-wavelet iterations (default 30 cpu, 100 cuda)")
    p.add_argument("--l1-lam", type=float, default=1e-3,
                   help="L1-wavelet λ (default 1e-3, baselines.L1_DEFAULT); give a negative value to let reconstruct "
                        "choose it (4 x 50 more iterations)")
    p.add_argument("--repeats", type=int, default=None,
                   help="calls per case in its subprocess; the first is not timed when > 1 (default 1 cpu, 2 cuda)")
    p.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default 1 on cpu; 0 = torch's "
                                                             "choice)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="default results/fullsize.json (cpu), results/fullsize_cuda.json (cuda)")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    defaults = {"network": "fastmri" if cuda else "small", "steps": 50 if cuda else 4, "l1_iters": 100 if cuda else 30,
                "repeats": 2 if cuda else 1, "threads": 0 if cuda else 1,
                "out": HERE / "results" / ("fullsize_cuda.json" if cuda else "fullsize.json")}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.l1_lam is not None and args.l1_lam < 0:
        args.l1_lam = None
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    import torch
    from common import machine_info, write_record

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    network = dict(NETWORKS[args.network])
    if args.input_cg is not None:
        network["input_cg"] = args.input_cg
    record = {"benchmark": "fullsize",
              "what": "seconds and peak memory per slice of reconstruct at the official fastMRI sizes (brain 640x320 "
                      "k-space, 16 coils; knee 640x368, 15 coils), each method with all coils and compressed; PSNR "
                      "against the RSS target, and its cost at coils=8 and 4",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(args.device)}
    tic = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ambient_fullsize_") as tmp:
        data = {}
        for a, name in enumerate(args.anatomies):
            t0 = time.perf_counter()
            data[name] = simulate(name, args.slices, args.seed + a, Path(tmp))
            data[name]["simulate_s"] = time.perf_counter() - t0
            C = data[name]["coils"]
            print(f"{name}: {args.slices} slice(s), k-space {data[name]['kspace_shape']}, "
                  f"{data[name]['acquired_columns']} of {data[name]['image_shape'][1]} columns acquired")
        order = 0
        for name in args.anatomies:
            C = data[name]["coils"]
            for method in args.methods:
                extra = args.psnr_coils if method in PSNR_METHODS else []
                counts = [None] + sorted({k for k in [*args.compressed, *extra] if 1 <= k < C}, reverse=True)
                if order % 2:  # alternate which arm goes first, so a drifting load does not favour one
                    counts = counts[::-1]
                order += 1
                for coils in counts:
                    payload = {"data": data[name]["path"], "method": method, "coils": coils, "device": args.device,
                               "threads": args.threads, "network": network, "steps": args.steps,
                               "repeats": args.repeats, "opts": method_options(method, args)}
                    res = run_child(payload, args.timeout)
                    res.update(anatomy=name, method=method, coils=coils or C,
                               coils_label="all" if coils is None else str(coils), order=order)
                    rows.append(res)
                    state = (f"FAILED: {res['error']}" if "error" in res else
                             f"{res['seconds_per_slice']:.2f} s/slice ({res['cpu_seconds_per_slice']:.2f} s CPU), "
                             f"peak RSS "
                             f"+{_fmt(res['peak_rss_increase_mb'], '.0f')} MB, CUDA "
                             f"+{_fmt(res.get('cuda_peak_increase_mb'), '.0f')} MB, PSNR {res['psnr']:.2f}")
                    print(f"  [{time.perf_counter() - tic:5.0f} s] {name} {method} coils={coils or 'all'}: {state}",
                          flush=True)
    # side-by-side ratios to the all-coil run of the same method and anatomy
    for r in rows:
        ref = next((q for q in rows if q["anatomy"] == r["anatomy"] and q["method"] == r["method"]
                    and q["coils_label"] == "all" and "error" not in q), None)
        if ref is None or "error" in r:
            continue
        r["time_ratio_to_all"] = r["seconds_per_slice"] / ref["seconds_per_slice"]
        r["cpu_time_ratio_to_all"] = r["cpu_seconds_per_slice"] / ref["cpu_seconds_per_slice"]
        key = "cuda_peak_increase_mb" if r.get("cuda_peak_increase_mb") else "peak_rss_increase_mb"
        if r.get(key) and ref.get(key):
            r["peak_ratio_to_all"] = r[key] / ref[key]
        r["psnr_minus_all_db"] = r["psnr"] - ref["psnr"]
    print(f"\n{args.slices} slice(s) per case, {args.device}, {args.threads or 'default'} thread(s); fast: "
          f"{args.steps} steps; network {args.network} {network}; 'x all' = ratio to all coils in the same run (CPU "
          f"time, then peak memory); s/slice = wall time, CPU s = the process's CPU time; peak = "
          f"{'CUDA allocated' if args.device.startswith('cuda') else 'resident'} increase during the call")
    print_table(rows)
    psnr_cost = {}
    for name in args.anatomies:
        for method in PSNR_METHODS:
            sel = {r["coils_label"]: r["psnr"] for r in rows
                   if r["anatomy"] == name and r["method"] == method and "error" not in r}
            if "all" in sel:
                psnr_cost[f"{name}/{method}"] = {k: round(v - sel["all"], 3) for k, v in sel.items() if k != "all"}
    print("PSNR change with compression (dB, vs all coils): "
          + "; ".join(f"{k}: " + ", ".join(f"coils={c} {v:+.2f}" for c, v in d.items()) for k, d in psnr_cost.items()))
    fast_knee = [r for r in rows if r["anatomy"] == "knee" and r["method"] == "fast" and "error" not in r]
    for r in fast_knee:
        peak = r.get("cuda_peak_allocated_mb") or (r["rss_before_mb"] + r["peak_rss_increase_mb"])
        r["under_4gb"] = bool(peak * 2**20 < 4 * GB)
        print(f"fast, knee 640x368 x {data['knee']['coils']} coils, coils={r['coils_label']}: peak "
              f"{peak:.0f} MB {'(CUDA allocated)' if r.get('cuda_peak_allocated_mb') else '(whole process RSS)'} "
              f"-> under 4 GB: {r['under_4gb']}")
    record["settings"] = {
        "device": args.device, "slices_per_case": args.slices, "threads": args.threads, "repeats": args.repeats,
        "anatomies": {n: {k: v for k, v in d.items() if k != "path"} for n, d in data.items()},
        "noise_std": f"{NOISE} x image max per k-space sample (orthonormal FFT)",
        "mask": f"fastMRI random, R={ACCELERATION}, center_fraction {CENTER_FRACTION}, one per slice",
        "methods": args.methods, "compressed_coils": args.compressed, "psnr_coils": args.psnr_coils,
        "network": {"preset": args.network, **network, "ambient": True, "cond": ["mask", "ones"],
                    "further": {"delta": 0.2}, "weights": "untrained (seeded init)"},
        "fast_steps": args.steps, "one_step_steps": 1,
        "sense": {"iters": args.sense_iters or 100, "lambda": "chosen by reconstruct on held-out lines"},
        "l1_wavelet": {"iters": args.l1_iters,
                       "lambda": args.l1_lam if args.l1_lam is not None else "chosen by reconstruct"},
        "diffusion_batch_size": 1,
        "memory": "CPU: VmHWM - VmRSS around the call, VmHWM reset via /proc/self/clear_refs after loading; "
                  "CUDA: max_memory_allocated - memory_allocated before the call (model weights excluded)",
        "order": "per method the coil counts back to back in a fresh subprocess each, order alternating by method",
        "time": "reconstruct wall time per slice (median of the calls after the first when repeats > 1), "
                "preparation included (prep_s), and the process's CPU time for it (cpu_seconds_per_slice: on a "
                "shared machine a niced process is starved when the load rises, its wall time is not its work); NFE "
                "time = Denoiser.forward (input_cg CG + UNet), the UNet alone too (wall)"}
    record["results"] = rows
    record["psnr_change_db"] = psnr_cost
    return write_record(record, args.out, tic)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        main()
