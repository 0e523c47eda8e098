"""Cost of ambient training over clean EDM training, and the memory of data preparation and loading.

Part 1 (training step). The same network, batch size and optimiser, timed side by side in one run:

* ``clean``    ``measurement_loss(..., operator="identity")`` on complex images: the network sees x0 + σ n
               (the clean EDM loss; the mask of Ã is all ones, so the network has the same input channels).
* ``ambient``  ``measurement_loss(..., operator="multicoil")`` on undersampled multi-coil k-space with a further
               mask Ã ⊂ A: z = M̃ y + σ Ã n, D(Ã^H z), loss on A D (the trainer's loss for a prepared data set).

One timed step is what ``ambient_mri.training.trainer.train`` does per step once the batch is on the device: the
loss under autocast, ``zero_grad``, backward, NaN-guard on the gradients, gradient clipping, AdamW step and the
EMA update (data loading is excluded; part 2 covers it). Arms alternate in a rotating order each round after
warm-up rounds; median and IQR per arm. The ratio is the median over rounds of ambient / clean within a round
(paired, so a shared machine's drifting load cancels; the ratio of the two medians is reported too); the issue's
target is <= 1.10. The operator work alone is timed with a trivial one-parameter "network" (forward + backward
of the loss), and one ambient step is profiled to give the share of the FFTs.

Part 2 (data). Simulated official-layout fastMRI volumes (``data_tools.simulate.make_fastmri_volume``) are
prepared with ``data_tools.prepare.prepare_fastmri`` for 10 and for 40 volumes, each in its own subprocess, which
reports its slices/s and its peak resident memory (VmHWM from /proc; ``ru_maxrss`` would also count what the
parent held when it forked the child), and the same after the imports, before any volume: the peak must not
grow with the number of volumes. Then ``PreparedSlices`` over the 40 prepared volumes
is read for several epochs through a DataLoader with 2 workers, driven by the trainer's own batch sampler (one
iterator for the whole run, so the workers live throughout, as in training), in another subprocess that records
the resident memory of the main process (after ``gc.collect()`` and glibc's ``malloc_trim(0)``, so it counts live
memory, not freed memory the allocator keeps; the untrimmed value is kept too) and of its workers at the end of
each epoch: epoch 1 vs the last epoch should be flat.

    python benchmarks/training.py                    # CPU-sized network and images (< 10 minutes on 2 cores)
    python benchmarks/training.py --device cuda      # the anchor size (384x320, 4 coils, batch 8, DDPM++ 128), bf16
    python benchmarks/training.py --skip-data        # part 1 only
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start/stop chatter on stderr
import torch  # noqa: E402
from common import machine_info, stats, write_record  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Defaults per device; any of them can be given on the command line.
CPU_DEFAULTS = dict(coils=8, height=128, width=128, batch=4, model_channels=32, channel_mult=[1, 2, 2], num_blocks=2,
                    attn_levels=[], amp="none", warmup=1, repeats=10, threads=1)
CUDA_DEFAULTS = dict(coils=4, height=384, width=320, batch=8, model_channels=128, channel_mult=[1, 2, 2, 2],
                     num_blocks=4, attn_levels=[], amp="bf16", warmup=5, repeats=30, threads=None)
TARGET_RATIO = 1.10


# ----------------------------------------------------------------------------------------------- info
def _status_kb(field: str, pid: int | str = "self") -> int | None:
    """VmRSS / VmHWM (kB) from /proc/<pid>/status; None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _child_pids(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return sorted(set(out))


def _mb(kb: float | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


# ----------------------------------------------------------------------------------------------- part 1
def phantoms(n: int, H: int, W: int, seed: int = 0) -> np.ndarray:
    """(n, H, W) float32: a few random ellipses each, max 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:H * 1j, -1:1:W * 1j]
    out = np.zeros((n, H, W), np.float32)
    for i in range(n):
        for _ in range(4):
            cy, cx = rng.uniform(-0.4, 0.4, 2)
            ry, rx = rng.uniform(0.15, 0.5, 2)
            out[i] += rng.uniform(0.3, 1.0) * (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
    return out / out.max()


def make_batches(B: int, C: int, H: int, W: int, acceleration: float, center_fraction: float, extra_lines: int,
                 device: str) -> tuple[dict, dict]:
    """(ambient batch, clean batch) of the same B examples: y = M F S x0 with a further mask Ã, and x0 itself."""
    from ambient_mri.masks import further_mask, kspace_mask
    from ambient_mri.operators import MultiCoilMRI
    from data_tools.simulate import simulate_coil_data

    sim = simulate_coil_data(phantoms(B, H, W), num_coils=C, oversample=1, seed=0)
    x0 = torch.from_numpy(sim.image)                                               # (B, H, W) complex64
    maps = torch.from_numpy(sim.maps)[None].expand(B, -1, -1, -1).contiguous()     # (B, C, H, W)
    mask = torch.from_numpy(np.stack([kspace_mask("random", (1, W), acceleration, center_fraction, seed=(7, b))
                                      for b in range(B)]))[:, None]               # (B, 1, 1, W)
    mask_t = further_mask(mask, extra_lines=extra_lines, seed=11)
    y = MultiCoilMRI(maps, mask)(x0)
    ambient = {"y": y, "mask": mask, "mask_tilde": mask_t, "maps": maps}
    clean = {"y": x0, "mask": torch.ones(B, 1, 1, 1)}
    to = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return to(ambient), to(clean)


class Arm:
    """One training set-up: its own copy of the network, AdamW and EMA; ``step`` is one trainer step."""

    def __init__(self, name: str, operator: str, batch: dict, model: torch.nn.Module, device: str, amp: bool,
                 compile_: bool):
        self.name, self.operator, self.batch = name, operator, batch
        self.model = copy.deepcopy(model).to(device).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=2e-4)
        self.fwd = torch.compile(self.model) if compile_ else self.model
        self.autocast = (lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)) if amp \
            else nullcontext
        self.losses: list[float] = []

    def step(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        from ambient_mri.training import measurement_loss

        with self.autocast():
            loss = measurement_loss(self.fwd, self.batch, self.operator, sigma, noise, 0.5).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in self.model.parameters():
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        with torch.no_grad():
            for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(pm.detach(), 1e-4)
        return loss.detach()


class ScalarNet(torch.nn.Module):
    """A one-parameter 'network' D(x) = w x: what is left of a step is the loss and its operators."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.9))

    def forward(self, x, sigma, mask):
        return self.w * x


def make_sync(device: str):
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def interleaved(fns: dict, warmup: int, repeats: int, sync, per_round=None) -> tuple[dict, float]:
    """Run every fn once per round in a rotating order; returns seconds per fn (timed rounds only), wall time."""
    names = list(fns)
    times = {n: [] for n in names}
    t_start = time.perf_counter()
    for r in range(warmup + repeats):
        args = per_round(r) if per_round else ()
        k = r % len(names)
        for n in names[k:] + names[:k]:
            sync()
            t0 = time.perf_counter()
            fns[n](*args)
            sync()
            if r >= warmup:
                times[n].append(time.perf_counter() - t0)
    return times, time.perf_counter() - t_start


def profile_step(arm: Arm, sigma, noise, device: str) -> dict:
    """One profiled ambient step: share of the FFTs and the top operators by self time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        arm.step(sigma, noise)
        make_sync(device)()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events)
    fft = sum(getattr(e, key) for e in events if "fft" in e.key.lower())
    top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:10]
    return {"time_kind": key, "total_ms": total / 1e3, "fft_ms": fft / 1e3, "fft_share": fft / max(total, 1e-9),
            "top": [{"op": e.key, "self_ms": round(getattr(e, key) / 1e3, 3), "share": round(getattr(e, key) /
                                                                                             max(total, 1e-9), 4)}
                    for e in top]}


def bench_training(args, device: str) -> dict:
    from ambient_mri.model import Denoiser
    from ambient_mri.nets import count_parameters
    from ambient_mri.training import sample_sigma

    B, C, H, W = args.batch, args.coils, args.height, args.width
    extra = args.extra_lines if args.extra_lines is not None else max(1, round(W * 16 / 320))
    amb_batch, clean_batch = make_batches(B, C, H, W, args.acceleration, args.center_fraction, extra, device)
    config = dict(img_channels=2, cond_channels=2, model_channels=args.model_channels,
                  channel_mult=list(args.channel_mult), num_blocks=args.num_blocks,
                  attn_levels=list(args.attn_levels), dropout=0.1, sigma_data=0.5)
    torch.manual_seed(0)
    model = Denoiser(config, {"operator": "multicoil", "cond": ["mask", "ones"]})
    n_params = count_parameters(model)
    amp = args.amp == "bf16"
    arms = {"clean": Arm("clean", "identity", clean_batch, model, device, amp, args.compile),
            "ambient": Arm("ambient", "multicoil", amb_batch, model, device, amp, args.compile)}
    del model
    sync = make_sync(device)

    def per_round(r):  # same σ and noise for both arms in a round, drawn as the trainer draws them
        g = torch.Generator().manual_seed(1_000_003 + r)
        sigma = sample_sigma(B, -1.2, 1.2, g).to(device)
        noise = torch.randn(B, H, W, generator=g, dtype=torch.complex64).to(device)
        return sigma, noise

    def run(arm):
        return lambda s, n: arm.losses.append(float(arm.step(s, n)))

    print(f"training step: {B} x ({C} coils, {H}x{W}), UNet {args.model_channels} x {args.channel_mult}, "
          f"{args.num_blocks} blocks, attention levels {args.attn_levels} + bottleneck, {n_params / 1e6:.2f} M "
          f"parameters, amp {args.amp}, device {device}, torch threads {torch.get_num_threads()}")
    times, wall = interleaved({n: run(a) for n, a in arms.items()}, args.warmup, args.repeats, sync, per_round)
    results = {n: stats(v) for n, v in times.items()}
    for n, r in results.items():
        r["images_per_s"] = B / (r["median_ms"] / 1e3)
        r["final_loss"] = arms[n].losses[-1]
    # The ratio is paired: each round runs both arms back to back, so the per-round ratio cancels the drift of a
    # shared machine's load, which the ratio of the two medians does not (medians can come from different rounds).
    per_round_ratio = np.asarray(times["ambient"]) / np.asarray(times["clean"])
    rq1, ratio, rq3 = np.percentile(per_round_ratio, [25, 50, 75])
    ratio_of_medians = results["ambient"]["median_ms"] / results["clean"]["median_ms"]

    # operator work alone: the loss with a one-parameter network, forward + backward
    scalar = ScalarNet().to(device)
    from ambient_mri.training import measurement_loss

    s0, n0 = per_round(0)

    def loss_only(batch, op):
        def f():
            scalar.zero_grad(set_to_none=True)
            measurement_loss(scalar, batch, op, s0, n0, 0.5).mean().backward()
        return f

    lt, _ = interleaved({"clean": loss_only(clean_batch, "identity"), "ambient": loss_only(amb_batch, "multicoil")},
                        3, max(20, args.repeats), sync)
    loss_only_res = {n: stats(v) for n, v in lt.items()}
    prof = profile_step(arms["ambient"], s0, n0, device)

    print(f"\n{args.repeats} timed rounds after {args.warmup} warm-up rounds ({wall:.1f} s); one step = loss "
          "(forward) + backward + clip + AdamW + EMA")
    header = f"{'arm':10s} {'median ms':>10s} {'IQR ms':>8s} {'images/s':>9s} {'loss-only ms':>13s}"
    print(header)
    print("-" * len(header))
    for n, r in results.items():
        print(f"{n:10s} {r['median_ms']:10.1f} {r['iqr_ms']:8.1f} {r['images_per_s']:9.2f} "
              f"{loss_only_res[n]['median_ms']:13.2f}")
    verdict = "meets" if ratio <= TARGET_RATIO else "ABOVE"
    print(f"ratio ambient / clean: {ratio:.3f} (median of the per-round ratios, IQR {rq1:.3f}-{rq3:.3f}; ratio of "
          f"the medians {ratio_of_medians:.3f}); {verdict} the target <= {TARGET_RATIO}")
    extra_ms = loss_only_res["ambient"]["median_ms"] - loss_only_res["clean"]["median_ms"]
    implied = 1 + extra_ms / results["clean"]["median_ms"]
    print(f"implied by the operator work alone: {implied:.3f}")
    print(f"operator work of the ambient loss (one-parameter network): +{extra_ms:.2f} ms per step; "
          f"FFTs in one profiled ambient step: {prof['fft_ms']:.1f} ms of {prof['total_ms']:.1f} ms "
          f"({100 * prof['fft_share']:.1f}%)")
    if ratio > TARGET_RATIO:
        print("top operators of one ambient step (self time):")
        for e in prof["top"]:
            print(f"  {e['op']:40s} {e['self_ms']:9.2f} ms  {100 * e['share']:5.1f}%")
    return {
        "settings": {"device": device, "batch": B, "coils": C, "height": H, "width": W, "dtype": "complex64",
                     "amp": args.amp, "compile": args.compile, "model_channels": args.model_channels,
                     "channel_mult": list(args.channel_mult), "num_blocks": args.num_blocks,
                     "attn_levels": list(args.attn_levels), "parameters": n_params, "cond": ["mask", "ones"],
                     "mask": "fastMRI random, per example", "acceleration": args.acceleration,
                     "center_fraction": args.center_fraction, "further": {"extra_lines": extra},
                     "warmup": args.warmup, "repeats": args.repeats, "order": "interleaved, rotating each round",
                     "step": "measurement_loss + zero_grad + backward + nan_to_num + clip_grad_norm + AdamW + EMA",
                     "clean_arm": "measurement_loss(operator='identity') on the complex images x0 (mask of Ã = 1)",
                     "ambient_arm": "measurement_loss(operator='multicoil') with maps, mask and a further mask Ã"},
        "results": results,
        "ratio_ambient_over_clean": float(ratio),
        "ratio_definition": "median over rounds of ambient step time / clean step time in the same round",
        "ratio_per_round_q1_q3": [float(rq1), float(rq3)],
        "ratio_per_round_all": [round(float(v), 4) for v in per_round_ratio],
        "ratio_of_medians": ratio_of_medians,
        "ratio_implied_by_operator_work": implied,
        "target_ratio": TARGET_RATIO,
        "meets_target": bool(ratio <= TARGET_RATIO),
        "loss_only_one_parameter_network": loss_only_res,
        "ambient_operator_ms_per_step": extra_ms,
        "profile_one_ambient_step": prof,
        "timing_wall_s": wall,
    }


# ----------------------------------------------------------------------------------------------- part 2
def simulate_volumes(folder: Path, n: int, slices: int, coils: int, h: int, w: int) -> list[Path]:
    """n official-layout volumes of (slices, coils, 2h, w) k-space (readout oversampled 2x, recon size h x w)."""
    from data_tools.simulate import make_fastmri_volume

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for v in range(n):
        p = folder / f"sim_{v:03d}.h5"
        make_fastmri_volume(p, phantoms(slices, h, w, seed=v), num_coils=coils, oversample=2, noise_std=0.002,
                            seed=v)
        paths.append(p)
    return paths


def _run_child(kind: str, payload: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_child", kind, json.dumps(payload)],
                         check=True, capture_output=True, text=True, env=env, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_prepare(p: dict) -> dict:
    import ambient_mri  # noqa: F401 - imports count towards the baseline, not the preparation
    from data_tools.prepare import prepare_fastmri

    base_rss, base_hwm = _status_kb("VmRSS"), _status_kb("VmHWM")
    tic = time.perf_counter()
    summary = prepare_fastmri(p["input"], p["output"], mask="random", acceleration=4,
                              center_fraction=p["center_fraction"], split="train", per_slice_mask=True,
                              workers=p["workers"], progress=False)
    seconds = time.perf_counter() - tic
    slices = sum(r.slices for r in summary.prepared)
    return {"volumes": len(summary.prepared), "refused": [f"{r.source}: {r.reason}" for r in summary.refused],
            "slices": slices, "seconds": seconds, "slices_per_s": slices / seconds, "workers": p["workers"],
            "rss_after_imports_mb": _mb(base_rss), "peak_after_imports_mb": _mb(base_hwm),
            "peak_rss_mb": _mb(_status_kb("VmHWM")), "rss_at_end_mb": _mb(_status_kb("VmRSS")),
            # ru_maxrss also counts what the parent held when it forked this process; kept for reference only
            "ru_maxrss_self_mb": _mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
            "ru_maxrss_children_mb": _mb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) or None}


def _malloc_trim() -> bool:
    """Hand freed heap pages back to the OS (glibc), so RSS shows live memory rather than the allocator's cache:
    how much freed memory glibc keeps depends on the order of allocations, which machine load changes."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0) or True)
    except (OSError, AttributeError):
        return False


def child_iterate(p: dict) -> dict:
    from torch.utils.data import DataLoader

    from ambient_mri.data.prepared import PreparedSlices
    from ambient_mri.training.trainer import StepPlan

    data = PreparedSlices(p["root"])
    n, G, epochs = len(data), p["batch"], p["epochs"]
    steps = epochs * n // G
    plan = StepPlan(np.arange(n), G, 0, steps, 0, 0, 1)
    loader = DataLoader(data, batch_sampler=plan, num_workers=p["workers"], pin_memory=False,
                        persistent_workers=False)
    me = os.getpid()
    per_epoch, checksum, items, batch_bytes = [], 0.0, 0, 0
    tic = time.perf_counter()
    for step, batch in enumerate(loader):
        checksum += float(batch["y"].abs().sum())
        items += batch["y"].shape[0]
        batch_bytes = max(batch_bytes, sum(v.nbytes for v in batch.values() if isinstance(v, torch.Tensor)))
        del batch
        if (step + 1) * G // n > step * G // n:  # crossed an epoch boundary
            gc.collect()
            raw = _status_kb("VmRSS")
            trimmed = _malloc_trim()
            workers = _child_pids(me)
            per_epoch.append({"epoch": (step + 1) * G // n, "items": items,
                              "main_rss_before_trim_mb": _mb(raw),
                              "main_rss_mb": _mb(_status_kb("VmRSS")) if trimmed else _mb(raw),
                              "main_rss_anon_mb": _mb(_status_kb("RssAnon")),
                              "main_rss_shmem_mb": _mb(_status_kb("RssShmem")),
                              "main_rss_file_mb": _mb(_status_kb("RssFile")),
                              "workers_rss_mb": [_mb(_status_kb("VmRSS", w)) for w in workers]})
    seconds = time.perf_counter() - tic
    return {"slices": n, "batch": G, "workers": p["workers"], "epochs": epochs, "steps": steps, "items": items,
            "seconds": seconds, "items_per_s": items / seconds, "per_epoch": per_epoch,
            "batch_mb": round(batch_bytes / 2**20, 2), "prefetch_factor": loader.prefetch_factor,
            "main_peak_rss_mb": _mb(_status_kb("VmHWM"))}


def bench_data(args, tmp: Path) -> dict:
    from data_tools.demo import demo_center_fraction

    h, w = args.prep_size
    cf = demo_center_fraction(w, 4)  # fastMRI's 0.08 at R=4, but >= 8 ACS lines (ESPIRiT needs >= 6)
    print(f"\npreparation: volumes of {args.prep_slices} slices x {args.prep_coils} coils x {2 * h}x{w} k-space "
          f"(recon size {h}x{w}), R=4 random per-slice masks (centre fraction {cf:.4f}), workers "
          f"{args.prep_workers}")
    tic = time.perf_counter()
    n_max = max(args.volumes)
    raw_all = simulate_volumes(tmp / "raw_all", n_max, args.prep_slices, args.prep_coils, h, w)
    sim_s = time.perf_counter() - tic
    prep = {}
    for n in args.volumes:
        src = tmp / f"raw_{n}"
        src.mkdir()
        for p in raw_all[:n]:
            (src / p.name).symlink_to(p)
        prep[n] = _run_child("prepare", {"input": str(src), "output": str(tmp / f"prepared_{n}"),
                                         "center_fraction": cf, "workers": args.prep_workers})
        if prep[n]["refused"]:
            raise SystemExit("preparation refused files:\n" + "\n".join(prep[n]["refused"]))
    header = f"{'volumes':>8s} {'slices':>7s} {'seconds':>8s} {'slices/s':>9s} {'peak RSS MB':>12s} " \
             f"{'after imports MB':>17s} {'growth MB':>10s}"
    print(header)
    print("-" * len(header))
    for n, r in prep.items():
        r["peak_growth_over_imports_mb"] = round(r["peak_rss_mb"] - r["peak_after_imports_mb"], 1)
        print(f"{n:8d} {r['slices']:7d} {r['seconds']:8.1f} {r['slices_per_s']:9.2f} {r['peak_rss_mb']:12.1f} "
              f"{r['peak_after_imports_mb']:17.1f} {r['peak_growth_over_imports_mb']:10.1f}")
    lo, hi = prep[min(args.volumes)], prep[max(args.volumes)]
    peak_delta = hi["peak_rss_mb"] - lo["peak_rss_mb"]
    flat_prep = peak_delta <= max(20.0, 0.05 * lo["peak_rss_mb"])
    print(f"peak RSS {max(args.volumes)} vs {min(args.volumes)} volumes: {peak_delta:+.1f} MB -> "
          f"{'flat' if flat_prep else 'GROWS'}")

    it = _run_child("iterate", {"root": str(tmp / f"prepared_{n_max}" / "train"), "batch": args.loader_batch,
                                "workers": args.loader_workers, "epochs": args.epochs})
    first, last = it["per_epoch"][0], it["per_epoch"][-1]
    main_delta = last["main_rss_mb"] - first["main_rss_mb"]
    worker_delta = sum(last["workers_rss_mb"]) - sum(first["workers_rss_mb"])
    tol_main = 10.0
    flat_iter = main_delta <= tol_main and worker_delta <= 10.0
    print(f"\nPreparedSlices over {it['slices']} slices, DataLoader {it['workers']} workers, batch {it['batch']}, "
          f"{it['epochs']} epochs ({it['items_per_s']:.0f} slices/s)")
    header = f"{'epoch':>6s} {'main RSS MB':>12s} {'(anon':>7s} {'shmem':>6s} {'file)':>6s} {'untrimmed':>10s} " \
             f"{'workers RSS MB':>20s}"
    print(header)
    print("-" * len(header))
    for e in it["per_epoch"]:
        print(f"{e['epoch']:6d} {e['main_rss_mb']:12.1f} {e['main_rss_anon_mb']:7.1f} {e['main_rss_shmem_mb']:6.1f} "
              f"{e['main_rss_file_mb']:6.1f} {e['main_rss_before_trim_mb']:10.1f} "
              f"{' + '.join(f'{v:.1f}' for v in e['workers_rss_mb']):>20s}")
    print(f"epoch {last['epoch']} vs 1: main {main_delta:+.1f} MB (after gc + malloc_trim; allowed {tol_main:.0f}), "
          f"workers {worker_delta:+.1f} MB (allowed 10) -> {'flat' if flat_iter else 'GROWS'}")
    return {
        "settings": {"slices_per_volume": args.prep_slices, "coils": args.prep_coils,
                     "kspace": [2 * h, w], "recon_size": [h, w], "acceleration": 4, "center_fraction": cf,
                     "mask": "random, per slice", "volumes": list(args.volumes), "prepare_workers": args.prep_workers,
                     "loader_workers": args.loader_workers, "loader_batch": args.loader_batch,
                     "epochs": args.epochs, "simulation_s": sim_s},
        "prepare": {str(n): r for n, r in prep.items()},
        "prepare_peak_rss_delta_mb": peak_delta,
        "prepare_peak_flat": bool(flat_prep),
        "iterate": it,
        "iterate_main_rss_delta_mb": main_delta,
        "iterate_workers_rss_delta_mb": worker_delta,
        "iterate_main_allowed_delta_mb": tol_main,
        "iterate_flat": bool(flat_iter),
    }


# ----------------------------------------------------------------------------------------------- main
def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (cuda: anchor-size defaults, bf16)")
    p.add_argument("--coils", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--model-channels", type=int)
    p.add_argument("--channel-mult", type=int, nargs="+")
    p.add_argument("--num-blocks", type=int)
    p.add_argument("--attn-levels", type=int, nargs="*")
    p.add_argument("--amp", choices=["none", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the network (as training.compile)")
    p.add_argument("--acceleration", type=float, default=4)
    p.add_argument("--center-fraction", type=float, default=0.08)
    p.add_argument("--extra-lines", type=int, default=None, help="lines removed for Ã (default: round(W * 16/320))")
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default on CPU: 1, see benchmarks/README.md; 0: torch's choice)")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--skip-data", action="store_true")
    p.add_argument("--volumes", type=int, nargs="+", default=[10, 40])
    p.add_argument("--prep-slices", type=int, default=4)
    p.add_argument("--prep-coils", type=int, default=8)
    p.add_argument("--prep-size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"),
                   help="recon size; the simulated k-space has 2H rows")
    p.add_argument("--prep-workers", type=int, default=1)
    p.add_argument("--loader-workers", type=int, default=2)
    p.add_argument("--loader-batch", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--out", type=Path, default=None,
                   help="default results/training.json (cpu), results/training_cuda.json (cuda)")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    defaults = CUDA_DEFAULTS if cuda else CPU_DEFAULTS
    if args.out is None:
        args.out = HERE / "results" / ("training_cuda.json" if cuda else "training.json")
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    record = {"benchmark": "training",
              "what": "training step of the ambient loss vs the clean EDM loss (same network and batch); "
                      "preparation throughput and peak memory; PreparedSlices loading memory over epochs",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(device)}
    tic = time.perf_counter()
    if not args.skip_training:
        record["training"] = bench_training(args, device)
    if not args.skip_data:
        with tempfile.TemporaryDirectory(prefix="ambient_bench_") as tmp:
            record["data"] = bench_data(args, Path(tmp))
    return write_record(record, args.out, tic)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        result = {"prepare": child_prepare, "iterate": child_iterate}[sys.argv[2]](json.loads(sys.argv[3]))
        print(json.dumps(result))
    else:
        main()
