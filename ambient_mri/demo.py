"""``ambient-mri demo``: the whole path on the built-in MNI152 data, no arguments needed.

1. build the demo set (simulated 8-coil fastMRI files from the MNI152 template, prepared at R=4),
2. train a small ambient model on R=4 measurements only, for ``--minutes``,
3. reconstruct the held-out volume at R=4 and R=8 with the fast sampler, A-DPS, one-step and the classical
   baselines, from the official-layout files through ``reconstruct_file`` (what a user runs),
4. print the PSNR/SSIM/NMSE table and save ``results.json`` and ``results.png``.

Options: ``--size`` (image side, default 64), ``--coils`` (default 8), ``--minutes`` (training budget),
``--adps-steps``, ``--device``, ``--threads`` (torch CPU threads; default: 1 or torch's default, whichever a quick
benchmark finds faster, see ``pick_threads``). Re-running into the same ``--output`` keeps the data and continues
training from the last checkpoint; a different ``--size``/``--coils`` needs a new folder (the marker
``.ambient_mri_demo``, written first, records them), and a non-empty folder that holds no demo is refused.
Reduced setting (CI): ``ambient-mri demo --output DIR --minutes 0.2 --size 32 --adps-steps 5`` (~35 s on 2 cores).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .devices import check_threads, resolve_device
from .errors import AmbientMRIError
from .files import (
    LOCK_NAME,
    check_finite_number,
    file_sha256,
    make_folder,
    remove_temps,
    run_lock,
    save_figure,
    write_json,
)
from .metrics import evaluate_dirs

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo_mni_r4.yaml"
DEMO_METHODS = ("zero_filled", "sense", "l1_wavelet", "one_step", "fast", "adps")
TABLE_STEPS = 1060  # the training steps of the README's table (13 minutes on this project's 2-core machine)
RECON_MINUTES = 3  # building the data and stages 3-4 at the defaults on 2 CPU cores (measured: 2.7 min, README.md)


def pick_threads(size: int, device: str | None = None) -> int:
    """Torch CPU threads for the demo: 1 or torch's default, whichever runs a demo-sized convolution faster here.

    The demo's tensors are small, so each operation is short; when the cores are shared with other jobs, the
    OpenMP threads of a multi-threaded operation wait on each other for a scheduler time slice at every barrier
    and the whole demo ran ~30x slower (the ``fast`` sampler took 131 s instead of 4 s at size 32 on 2 busy
    cores). A quick interleaved benchmark picks the faster setting on this machine now.
    """
    n = torch.get_num_threads()
    if n <= 1 or (device or "cpu").startswith("cuda"):
        return n
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(8, 32, size, size)
    times: dict[int, list[float]] = {1: [], n: []}
    with torch.no_grad():
        for _ in range(5):
            for k in (1, n):
                torch.set_num_threads(k)
                conv(x)
                t0 = time.perf_counter()
                for _ in range(3):
                    conv(x)
                times[k].append(time.perf_counter() - t0)
    best = min(times, key=lambda k: float(np.median(times[k])))
    torch.set_num_threads(n)
    return best


MARKER = ".ambient_mri_demo"  # written first into the output folder: what this folder's demo is built with


def _claim(out: Path, size: int, coils: int) -> None:
    """Take ``out`` for the demo: a new or empty folder, or one a demo of the same --size/--coils started (its
    marker, or the data record of an older version). Anything else is someone's folder: the demo would write over
    results.json and train on any .h5 file under data/raw."""
    marker = out / MARKER
    if marker.is_file():
        try:
            have = json.loads(marker.read_text())
            have = (int(have["size"]), int(have["coils"]))
        except (ValueError, KeyError, TypeError):
            raise AmbientMRIError(f"{marker}: unreadable demo marker; use a new --output folder") from None
        if have != (size, coils):
            raise AmbientMRIError(f"{out} holds a demo started with --size {have[0]} --coils {have[1]}; use a new "
                                  f"--output folder for --size {size} --coils {coils}")
    elif any(p.name != LOCK_NAME for p in out.iterdir()) and not (out / "data" / "demo.json").is_file():
        raise AmbientMRIError(f"{out} is not empty and holds no demo: the demo would write over its files; use a "
                              "new --output folder")
    if not _demo_results(out / "results.json"):  # with or without a marker: a user's file there is theirs
        raise AmbientMRIError(f"{out / 'results.json'} is not a demo's table: the demo would write over it; use a "
                              "new --output folder")
    if not _demo_figure(out):
        raise AmbientMRIError(f"{out / 'results.png'} is not the figure a demo drew (results.json does not record "
                              "it): the demo would write over it; move it, or use a new --output folder")
    _check_settings(out / "data", size, coils)
    write_json(marker, {"size": size, "coils": coils})


TABLE_START = '{\n  "run": '  # how every results.json the demo writes begins (write_json, "run" first)


def _read_table(path: Path) -> tuple[bool, dict | None]:
    """(whether results.json is the demo's, the table): absent (True, None); a demo table (True, table); one cut
    short that begins as the demo writes it, a damaged table of ours to write again (True, None); else
    (False, None)."""
    if not path.exists():
        return True, None
    try:
        text = path.read_text()
    except (OSError, ValueError):
        return False, None
    try:
        table = json.loads(text)
    except ValueError:
        return text.startswith(TABLE_START), None
    ours = isinstance(table, dict) and {"run", "results"} <= set(table) and isinstance(table["results"], dict)
    return ours, table if ours else None


def _demo_results(path: Path) -> bool:
    """Whether ``path`` is absent, a results.json a demo wrote ({"run": ..., "results": {...}}) or one cut short."""
    return _read_table(path)[0]


def _demo_figure(out: Path) -> bool:
    """Whether results.png is absent or the one the demo's results.json records (its SHA-256; a table of an older
    version, of a run stopped before the figure was recorded, or cut short records none readable, and its figure
    is taken as ours)."""
    png = out / "results.png"
    if not png.exists():
        return True
    ours, table = _read_table(out / "results.json")
    if not ours or not (out / "results.json").exists():
        return False
    return table is None or "figure_sha256" not in table or table["figure_sha256"] == file_sha256(png)


def _check_settings(root: Path, size: int, coils: int) -> None:
    record = root / "demo.json"
    if not record.is_file():
        return
    try:
        built = json.loads(record.read_text())
        have = (int(built["image_size"][0]), int(built["coils"]))
    except (ValueError, KeyError, TypeError, IndexError):
        raise AmbientMRIError(f"{record}: unreadable demo record; use a new --output folder") from None
    if have != (size, coils):
        raise AmbientMRIError(f"{root.parent} holds a demo built with --size {have[0]} --coils {have[1]}; use a "
                              f"new --output folder for --size {size} --coils {coils}")


def run_demo(args) -> int:
    n = torch.get_num_threads()
    try:
        return _run_demo(args)
    finally:
        torch.set_num_threads(n)


def _run_demo(args) -> int:
    from data_tools.demo import build_demo, check_build, demo_center_fraction

    from .model import load_model
    from .training.trainer import ResumeError, train

    tic = time.time()
    out = Path(args.output)
    if not RECIPE.is_file():
        raise AmbientMRIError(f"{RECIPE}: demo recipe not found (run the demo from a source checkout)")
    check_finite_number("--minutes", args.minutes, 0.0, strict=True)
    if args.adps_steps < 1:
        raise AmbientMRIError(f"--adps-steps must be >= 1, got {args.adps_steps}")
    coils = getattr(args, "coils", 8)
    check_threads(getattr(args, "threads", 0))
    check_build(args.size, coils)  # before the thread benchmark, which runs at --size
    resolve_device(args.device, "--device")  # before the data are built, not at training
    threads = getattr(args, "threads", 0) or pick_threads(args.size, args.device)
    torch.set_num_threads(threads)
    # two demos into one folder mixed one's model and reconstructions with the other's table; the data build and
    # the training take their own folders' locks inside this one
    with run_lock(make_folder(out), f"demo -> {out}"):
        _claim(out, args.size, coils)
        remove_temps(out, ["results.json", "results.png"])  # a killed demo's
        print(f"The demo trains for up to {args.minutes:g} min; on 2 CPU cores the whole run takes about "
              f"{args.minutes + RECON_MINUTES:.0f} min (building the data and reconstructing take the rest).")
        print(f"[1/4] building the demo data in {out / 'data'} ({args.size}x{args.size}, {coils} coils; "
              f"{threads} CPU thread(s))")
        paths = build_demo(out / "data", size=args.size, coils=coils, progress=False)
        print(f"[2/4] training an ambient model on R=4 data only for up to {args.minutes} min "
              f"({time.time() - tic:.0f} s so far)")
        overrides = [f"data.path={paths['r4_train']}", f"output={out / 'runs'}", f"max_minutes={args.minutes}"]
        if args.device:
            overrides.append(f"device={args.device}")
        try:
            run = train(RECIPE, overrides)
        except ResumeError as e:  # e.g. the demo recipe changed since this folder's model was trained
            raise AmbientMRIError(f"{out} holds a demo model trained with another recipe or data ({e.problem}); use a "
                                  "new --output folder") from None
        model = load_model(run / "model.pt", device=args.device)
        steps = _trained_steps(run)
        if steps is not None and steps < TABLE_STEPS:  # e.g. a slower or busy machine: the README's table needs more
            print(f"note: the model trained {steps} steps; the README's table is from {TABLE_STEPS} (with 416, "
                  "`fast` was 1 dB below L1-wavelet at R = 4). Running this command again with --minutes M trains M "
                  "more minutes (it resumes).")
        print(f"[3/4] reconstructing the held-out volume at R=4 and R=8 ({time.time() - tic:.0f} s so far)")
        results: dict = {}
        for R in (4, 8):
            cf = demo_center_fraction(args.size, R)
            for method in DEMO_METHODS:
                folder = out / "recon" / f"r{R}" / method
                t0 = time.time()
                nfe, achieved = _reconstruct_method(model, method, R, cf, Path(paths["raw_val"]), folder, args)
                m = evaluate_dirs(paths["raw_val"], folder)["mean"]
                # the R the mask reached: below 48 columns the ACS lines ESPIRiT needs exceed W / 8 (kspace_mask warns)
                results[f"R{R}/{method}"] = {**m, "nfe": nfe, "achieved_R": round(achieved, 2),
                                             "seconds": round(time.time() - t0, 2)}
                print(f"      R={R} {method:<12} PSNR {m['PSNR']:6.2f} dB  ({time.time() - t0:5.1f} s; "
                      f"{time.time() - tic:.0f} s so far)", flush=True)
        print("[4/4] results (held-out slices, fastMRI metrics against reconstruction_rss)")
        print(f"{'R':>2} {'reached':>7} {'method':<12} {'PSNR':>7} {'SSIM':>7} {'NMSE':>8} {'NFE':>5} {'sec':>7}")
        for key, r in results.items():
            R, method = key.split("/")
            print(f"{R[1:]:>2} {r['achieved_R']:7.2f} {method:<12} {r['PSNR']:7.2f} {r['SSIM']:7.4f} {r['NMSE']:8.5f} "
                  f"{r['nfe']:5d} {r['seconds']:7.1f}")
        table = {"run": str(run), "results": results,
                 "settings": {"size": args.size, "coils": coils, "minutes": args.minutes, "threads": threads,
                              "adps_steps": args.adps_steps, "training_steps": steps},
                 "seconds": round(time.time() - tic, 1)}
        write_json(out / "results.json", table)  # first: a run stopped while drawing leaves a figure it may redraw
        _figure(out, paths["raw_val"])
        write_json(out / "results.json", {**table, "figure_sha256": file_sha256(out / "results.png")})
        print(f"table: {out / 'results.json'}; figure: {out / 'results.png'}; total {time.time() - tic:.0f} s")
    return 0


def _reconstruct_method(model, method: str, R: int, cf: float, raw_val: Path, folder: Path, args) -> tuple[int, float]:
    """Reconstruct every validation volume with ``method`` at ``R`` into ``folder``; -> (NFE, the R reached)."""
    import h5py

    from .recon import reconstruct_file

    opts = {"model": model} if method not in ("zero_filled", "sense", "l1_wavelet") else {}
    if method == "adps":
        opts["steps"] = args.adps_steps
    if method == "fast":  # the mean of 2 samples beats one of twice the steps (docs/reconstruction.md)
        opts.update(steps=25, num_samples=2)
    nfe, achieved = 0, float("nan")
    with run_lock(folder, f"demo -> {folder}"):  # its own lock: remove_temps clears this folder
        for f in sorted(raw_val.glob("*.h5")):
            remove_temps(folder, [f.name])
            reconstruct_file(f, folder / f.name, mask="random", acceleration=R, center_fraction=cf, method=method,
                             device=args.device, progress=False, **opts)
            with h5py.File(folder / f.name, "r") as h:
                nfe, achieved = int(h.attrs["nfe"]), float(h.attrs["acceleration"])
    return nfe, achieved


def _trained_steps(run: Path) -> int | None:
    """The step of the run's checkpoint (written when training stops for time; log.jsonl only every log_every
    steps), None when it cannot be read."""
    from .model import safe_load

    try:
        return int(safe_load(run / "checkpoint.pt", mmap=True)["step"])
    except (AmbientMRIError, KeyError, TypeError, ValueError):
        return None


def _figure(out: Path, raw_val) -> None:
    import h5py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = sorted(Path(raw_val).glob("*.h5"))[0]
    with h5py.File(f, "r") as h:
        ref = h["reconstruction_rss"][()]
    s = ref.shape[0] // 2
    vmax = float(ref.max())
    fig, axes = plt.subplots(4, len(DEMO_METHODS) + 1, figsize=(2.2 * (len(DEMO_METHODS) + 1), 9))
    for row, R in enumerate((4, 8)):
        axes[2 * row, 0].imshow(ref[s], cmap="gray", vmin=0, vmax=vmax)
        axes[2 * row, 0].set_title(f"reference (R={R} row)", fontsize=8)
        axes[2 * row + 1, 0].axis("off")
        for col, method in enumerate(DEMO_METHODS, start=1):
            with h5py.File(out / "recon" / f"r{R}" / method / f.name, "r") as h:
                rec = h["reconstruction"][s]
            axes[2 * row, col].imshow(rec, cmap="gray", vmin=0, vmax=vmax)
            axes[2 * row, col].set_title(f"R={R} {method}", fontsize=8)
            axes[2 * row + 1, col].imshow(np.abs(rec - ref[s]), cmap="magma", vmin=0, vmax=vmax / 4)
            axes[2 * row + 1, col].set_title("|error|", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, out / "results.png", dpi=90)
