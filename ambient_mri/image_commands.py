"""``ambient-mri sample`` and ``ambient-mri memorization``: generation and the memorisation study (wired into the
main parser, ``ambient_mri.cli``, by ``add_image_commands(subparsers)``)."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .corruption import is_complex
from .devices import ensure_memory, out_of_memory_as_error
from .errors import AmbientMRIError, DataFileError
from .files import (
    atomic_path,
    check_finite_number,
    check_seed,
    make_folder,
    remove_temps,
    removed_if_left_empty,
    run_lock,
    write_json,
)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) real in [-1, 1] -> uint8 (N, H, W[, C]); complex -> magnitude scaled per image."""
    if np.iscomplexobj(images):
        mag = np.abs(images)
        mag = mag / np.maximum(np.percentile(mag.reshape(len(mag), -1), 99.5, axis=1), 1e-12)[:, None, None]
        return (np.clip(mag, 0, 1) * 255 + 0.5).astype(np.uint8)
    from .data.images import from_model_scale

    u = (from_model_scale(images) * 255 + 0.5).astype(np.uint8)
    return u[:, 0] if u.shape[1] == 1 else u.transpose(0, 2, 3, 1)


def image_grid(images_u8: np.ndarray, columns: int | None = None, pad: int = 2, scale: int | None = None
               ) -> np.ndarray:
    """uint8 (N, H, W[, C]) -> one uint8 grid image (white gaps, nearest-neighbour upscaling for small images)."""
    n, h, w = images_u8.shape[:3]
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    scale = scale or max(1, 64 // max(h, w))
    if scale > 1:
        images_u8 = images_u8.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    shape = (rows * (h + pad) + pad, cols * (w + pad) + pad) + images_u8.shape[3:]
    grid = np.full(shape, 255, np.uint8)
    for i, im in enumerate(images_u8):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return grid


def _save_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


_OURS = ("samples.npy", "samples.json", "grid.png")  # with sample_NNNNN.png: what write_samples writes
_SAMPLE_PNG = re.compile(r"sample_\d{5,}\.png")


def sample_folder(output) -> list[Path]:
    """Check ``output`` for ``write_samples`` before any sampling; -> the earlier run's images there, which
    ``write_samples`` replaces. A folder holding any file this command writes (sample_*.png, samples.npy,
    samples.json, grid.png) counts as an earlier run's only with a samples.json this command wrote (its model, num
    and steps) and image files named as it names them; otherwise they are someone's: refused, nothing touched."""
    out = Path(output)
    if not out.is_dir():
        return []
    old = sorted(out.glob("sample_*.png"))
    if not old and not any((out / name).exists() for name in _OURS):
        return []
    try:
        meta = json.loads((out / "samples.json").read_text())
        ours = isinstance(meta, dict) and {"model", "num", "steps"} <= set(meta)
    except (OSError, ValueError):
        ours = False
    if not ours or any(not (_SAMPLE_PNG.fullmatch(p.name) and p.is_file()) for p in old):
        raise DataFileError(out, "holds sample files (sample_*.png, samples.npy, samples.json or grid.png) that "
                            "`ambient-mri sample` did not record writing; choose another --output")
    return old


def write_samples(samples, output, meta: dict | None = None, stale: list[Path] | None = None) -> dict:
    """samples.json (``meta``) and samples.npy (all, float32 in [-1, 1] or complex64) first, then sample_00000.png
    ... (one per image) and grid.png in ``output``: a run killed while writing images leaves the whole set in
    samples.npy, which ``memorization`` reads before any PNG; one killed before samples.npy leaves samples.json,
    which marks the folder as this command's for the rerun. ``stale``: an earlier run's images to remove
    (default: ``sample_folder``'s, which also refuses someone's files), so that a smaller set leaves none behind; a
    killed write's temporaries of these files are removed too."""
    out = Path(output)
    stale = sample_folder(out) if stale is None else stale
    make_folder(out)
    remove_temps(out, _OURS, ["sample_*.png"])
    # the earlier run's files but its samples.json, which keeps marking the folder as ours until replaced: none of
    # them may sit beside the new meta
    for p in [*stale, out / "samples.npy", out / "grid.png"]:
        p.unlink(missing_ok=True)
    x = samples.detach().cpu().numpy() if hasattr(samples, "detach") else np.asarray(samples)
    write_json(out / "samples.json", meta or {})  # first: a run killed before samples.npy left a folder the rerun
    with atomic_path(out / "samples.npy") as tmp, open(tmp, "wb") as f:  # refused as someone's files
        np.save(f, x.astype(np.complex64 if np.iscomplexobj(x) else np.float32))
    u8 = _to_uint8(x)
    width = max(5, len(str(len(x) - 1)))
    for i, im in enumerate(u8):
        _save_png(out / f"sample_{i:0{width}d}.png", im)
    _save_png(out / "grid.png", image_grid(u8[:256]))
    return {"num": len(x), "folder": str(out)}


def run_sample(args) -> int:
    from .image_recon import default_sigma_min, sample_images
    from .model import load_model

    for name in ("num", "steps", "batch_size"):
        if getattr(args, name) < 1:
            raise AmbientMRIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    check_finite_number("--sigma-min", args.sigma_min, 0.0, strict=True)
    check_seed(args.seed, "--seed")
    model = load_model(args.model, device=args.device)  # before the folder: a bad model leaves nothing behind
    shape = model.record.image_shape
    if shape:  # all samples are held (and copied once) before samples.npy is written: days of sampling lost else
        itemsize = 8 if is_complex(model.record.operator) else 4
        ensure_memory(4.0 * itemsize * args.num * int(np.prod(shape)),
                      f"{args.num} samples of {'x'.join(map(str, shape))}",
                      "--num (or run several sample commands into separate folders)")
    out = Path(args.output)
    train = model.record.data.get("path")
    if isinstance(train, str) and Path(train).is_dir():
        real, data = Path(os.path.realpath(out)), Path(os.path.realpath(train))
        if real == data or data in real.parents:  # the next run there would train on the model's own samples
            raise AmbientMRIError(f"--output {out} is inside the model's training folder {train}: the samples "
                                  "would join its training images; choose another --output")
    sample_folder(out)  # someone's images refused before the folder or its lock is made
    # held from the check to the last image: a second run into this folder would remove this run's temporaries
    # and images as an earlier run's; a run refused inside (an MRI model, a bad --sigma-min) leaves no folder
    with removed_if_left_empty(out), run_lock(out, f"sample {args.model} -> {out}"):
        stale = sample_folder(out)
        tic = time.time()
        with out_of_memory_as_error(args.device or "the default device", "--batch-size (or --num)"):
            x = sample_images(model, args.num, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                              sigma_min=args.sigma_min, heun=not args.euler, device=args.device,
                              progress=not args.no_progress)
        r = model.record
        meta = {"model": str(args.model), "num": args.num, "steps": args.steps, "seed": args.seed,
                "batch_size": args.batch_size, "sampler": "euler" if args.euler else "heun",
                "sigma_min": default_sigma_min(model, args.sigma_min), "seconds": round(time.time() - tic, 2),
                "operator": r.operator, "ambient": r.ambient, "sigma_n": r.sigma_n, "further": asdict(r.further),
                "data": {k: v for k, v in r.data.items()
                         if k in ("kind", "source", "mask", "sigma_n", "image_shape")}}
        write_samples(x, out, meta, stale)
    print(f"{args.num} samples written to {out} (grid.png, samples.npy) in {meta['seconds']:.1f} s")
    return 0


def run_memorization(args) -> int:
    from .data.images import IMAGE_SUFFIXES
    from .memorization import check_thresholds, load_samples, study, study_folder, summary_table, write_study

    dirs = list(args.samples)
    labels = list(args.labels) if args.labels else [Path(d).name or str(d) for d in dirs]
    if len(labels) != len(dirs):
        raise AmbientMRIError(f"{len(labels)} --labels for {len(dirs)} --samples folders")
    if len(set(labels)) != len(labels):
        raise AmbientMRIError(f"--labels must differ, got {labels}")
    if args.num_pairs < 1:
        raise AmbientMRIError(f"--num-pairs must be >= 1, got {args.num_pairs}")
    thresholds = check_thresholds(args.thresholds)
    # default: the first samples folder, or the folder of a .npy file
    out = Path(args.output) if args.output else Path(dirs[0]) if not Path(dirs[0]).is_file() else Path(dirs[0]).parent
    study_folder(out, labels)  # someone's figures refused before any work
    train = Path(args.train)
    if args.train not in ("faces", "mnist") and train.is_dir():  # checked before any samples are read
        def inside(p) -> bool:  # the training folder is read recursively
            return train.resolve() in (Path(p).resolve(), *Path(p).resolve().parents)

        if inside(out):
            raise AmbientMRIError(f"--output {out} is inside the --train folder {train}: its figures would join the "
                                  "training images of the next study; choose another --output")
        for d in dirs:  # sample images (a `sample` folder's sample_*.png) there would be read as training images
            folder = Path(d) if Path(d).is_dir() else Path(d).parent
            if inside(folder) and any(f.stem.startswith("sample") and f.suffix.lower() in IMAGE_SUFFIXES
                                      for f in folder.iterdir()):
                raise AmbientMRIError(f"--samples {d} is inside the --train folder {train}, with its sample images: "
                                      "each sample would be its own nearest training image (every one a copy); "
                                      "move the samples out")
    samples = {lab: load_samples(d) for lab, d in zip(labels, dirs)}
    result = study(samples, args.train, thresholds=thresholds, center=args.center)
    paths = write_study(result, out, num_pairs=args.num_pairs)
    print(summary_table(result))
    print(f"written: {', '.join([paths['json'], *(v for k, v in paths.items() if k != 'json')])}")
    return 0


def add_image_commands(sub) -> None:
    """Add ``sample`` and ``memorization`` to an argparse subparsers object."""
    s = sub.add_parser("sample", help="generate images from a trained model (EDM Heun; ambient models: fixed Ã)")
    s.add_argument("--model", required=True, help="model file (model.pt of a training run)")
    s.add_argument("--num", type=int, required=True, help="number of samples")
    s.add_argument("--output", required=True, help="folder for sample_*.png, samples.npy, grid.png, samples.json")
    s.add_argument("--steps", type=int, default=18, help="sampler steps (default 18, as EDM)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=64, help="samples per network batch")
    s.add_argument("--sigma-min", type=float, default=None,
                   help="lowest noise level (default 0.002; σ_n for a model trained on noisy images; the "
                        "ambient floor exp(P_mean), 0.30 by default, for a model trained on masked pixels)")
    s.add_argument("--euler", action="store_true", help="Euler instead of Heun steps")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cpu)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=run_sample)

    m = sub.add_parser("memorization", help="nearest training image of each generated sample; copy statistics")
    m.add_argument("--samples", nargs="+", required=True, metavar="DIR",
                   help="one or more folders written by `ambient-mri sample` (or .npy files)")
    m.add_argument("--labels", nargs="+", default=None, help="one name per --samples folder (default folder names)")
    m.add_argument("--train", required=True,
                   help="the training images: faces | mnist | a folder of images | a .npy/.npz file")
    m.add_argument("--output", default=None,
                   help="folder for memorization.json, histogram.png, neighbours_*.png (default: first --samples)")
    m.add_argument("--thresholds", nargs="+", type=float, default=[0.90, 0.95, 0.99])
    m.add_argument("--center", action="store_true", help="mean-centre images before the cosine (correlation)")
    m.add_argument("--num-pairs", type=int, default=8, help="sample / neighbour pairs per figure")
    m.set_defaults(func=run_memorization)
