"""The memorisation study (Daras et al. 2023, §5 of Ambient Diffusion): does a model copy its training images?

For every generated sample: its nearest training image by pixel-space cosine similarity (images in the model's
[-1, 1] scale, flattened), the SSIM of that pair, and the share of samples whose similarity exceeds 0.90 / 0.95 /
0.99. Because small data sets hold near-duplicates of their own (the ORL faces: ten photos per person), the
study also measures the training set against itself and separates

    copy            the sample is at least as close to its nearest training image j as any *other* training
                    image is to j, and at least ``copy_floor`` (0.98): on the ORL faces at 32x32, with every photo
                    held out once (ten splits, one photo per person each), 0% / 1.0% / 1.5% of these new photos
                    count as copies of the first 100 / 200 / all 400 photos, while a training photo plus noise of
                    σ 0.05 stays above 0.985 (one plus σ 0.2 does not: ``noise_recall`` finds those)
    identity match  not a copy, but as similar as a typical pair of same-person photos (similarity >= the median
                    training-set nearest-neighbour similarity) and its 3 nearest training images show one person
    novel           everything else

Figures: ``histogram.png`` (one curve per model, plus the training set against itself) and
``neighbours_<label>.png`` (the most similar samples beside their nearest training images).
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
import warnings
from pathlib import Path

import numpy as np

from .arrays import as_array
from .data.images import ImageSet, from_model_scale, image_set_from_array, load_images, read_image_files
from .errors import AmbientMRIError, DataFileError
from .files import NPY_ERRORS, check_count, make_folder, npy_problem, remove_temps, run_lock, save_figure, write_json
from .metrics import batch_ssim, nearest_neighbours

THRESHOLDS = (0.90, 0.95, 0.99)
SAMPLES_FILE = "samples.npy"
SAMPLE_OVERSHOOT = 1.5  # .npy samples up to this far outside [-1, 1] are clipped with a warning; beyond: refused


def model_scale_images(a, source: str, warn: bool = True) -> np.ndarray:
    """(N, C, H, W) float32 in the model's [-1, 1] from an array or tensor: floats taken as they are (up to
    SAMPLE_OVERSHOOT outside [-1, 1] clipped with a warning), uint8 read as [0, 255]; other dtypes and complex
    refused. ``warn``: say so when every value is >= 0 (images in [0, 1] compare wrongly with [-1, 1] ones)."""
    a = as_array(a, source)
    if np.iscomplexobj(a):
        raise AmbientMRIError(f"{source}: complex (MRI) images: the memorisation study compares real images")
    if a.dtype != np.uint8 and a.dtype.kind != "f":  # ints and bools have no scale to read them in
        raise AmbientMRIError(f"{source}: images of dtype {a.dtype}: give floats in [-1, 1] (the model's scale, "
                              "as `ambient-mri sample` writes) or uint8 images in [0, 255]")
    top = float(np.abs(a).max()) if a.dtype.kind == "f" and a.size and np.isfinite(a).all() else 0.0
    if 1.0 < top <= SAMPLE_OVERSHOOT:  # an unclamped sampler's last step overshoots a little: clipped
        warnings.warn(f"{source}: values reach {top:.3g}, outside the model scale [-1, 1]; clipped to it",
                      stacklevel=3)
        a = np.clip(a, -1.0, 1.0)
    images = image_set_from_array(a, grayscale=False, value_range=(-1.0, 1.0), source=source).images
    if warn and a.dtype != np.uint8 and float(a.min()) >= 0:
        warnings.warn(f"{source}: every value is >= 0; images are compared in the model's scale [-1, 1] (0 = mid "
                      "grey): if these are images in [0, 1], they compare wrongly: give them as uint8 or scaled to "
                      "[-1, 1]", stacklevel=3)
    return images


def _channels_equal(images: np.ndarray, axis: int) -> bool:
    """Whether every pixel has equal values in all channels along ``axis``: a grey image stored as colour."""
    first = np.take(images, [0], axis=axis)
    return bool((images == first).all())


def load_samples(path) -> np.ndarray:
    """Generated samples (N, C, H, W) in [-1, 1]: a folder written by ``ambient-mri sample`` (its samples.npy),
    a folder of PNG images, or a .npy file: floats in [-1, 1] (the model's scale) or uint8 in [0, 255], (N, H, W),
    (N, C, H, W) or channels-last."""
    p = Path(path)
    if p.is_dir() and (p / SAMPLES_FILE).is_file():
        p = p / SAMPLES_FILE
    if p.is_file() and p.suffix == ".npy":
        try:
            a = np.load(p, allow_pickle=False)
        except NPY_ERRORS as e:
            raise DataFileError(p, npy_problem(e, p)) from None
        try:  # the study warns about [0, 1] values, once, where it compares them
            return model_scale_images(a, str(p), warn=False)
        except AmbientMRIError as e:
            raise DataFileError(p, str(e).removeprefix(f"{p}: ")) from None
    if p.is_dir():
        pngs = sorted(f for f in p.iterdir() if f.suffix.lower() == ".png" and f.stem.startswith("sample"))
        if not pngs:
            raise DataFileError(p, f"no {SAMPLES_FILE} and no sample*.png images")
        from PIL import Image

        try:
            with Image.open(pngs[0]) as im:  # a palette image is grey when its colours are
                gray = im.mode in ("L", "LA", "I", "I;16", "F") or (
                    im.mode == "P" and _channels_equal(np.asarray(im.convert("RGB")), axis=-1))
        except OSError as e:
            raise DataFileError(pngs[0], f"cannot be read as an image ({e})") from None
        return read_image_files(pngs, p, grayscale=gray,
                                mixed_sizes="the samples of one model must share one size (as `sample` writes them)"
                                ).images
    if p.is_file():
        raise DataFileError(p, "is neither a .npy file nor a folder; give samples.npy (np.save), a folder written by "
                               "`ambient-mri sample` or a folder of sample*.png images")
    raise DataFileError(p, "no such samples folder or .npy file")


def training_images_like(train, samples: np.ndarray, limit: int | None = None) -> ImageSet:
    """The training images brought to the samples' size and channels. ``train``: an ImageSet, an array in
    [-1, 1], "faces", "mnist", a folder of images or a .npy/.npz file."""
    C, H, W = samples.shape[1:]
    if isinstance(train, ImageSet):
        iset = train
    elif not isinstance(train, (str, os.PathLike)):  # an array or tensor: read as the samples are
        images = model_scale_images(train, "training images")
        iset = ImageSet(images, [""] * len(images), [str(i) for i in range(len(images))], "array")
    else:
        iset = load_images(str(train), image_size=(H, W), grayscale=C == 1, limit=limit)
        if C == 3 and iset.images.shape[1] == 3 and _channels_equal(iset.images, axis=1):
            # grey files are read as RGB with three equal channels: refused, as a grey .npy already is
            raise AmbientMRIError(f"training images {train} are grey, samples {C}x{H}x{W} are colour: compare "
                                  "colour samples with colour training images")
    if iset.images.shape[1:] != (C, H, W):
        raise AmbientMRIError(f"training images are {'x'.join(map(str, iset.images.shape[1:]))}, samples "
                              f"{C}x{H}x{W}")
    return iset


def threshold_key(t: float) -> str:
    """0.9 -> "0.90" (the study's keys), 0.995 -> "0.995": never two thresholds under one key."""
    return f"{t:.2f}" if round(t, 2) == t else f"{t:g}"


def check_thresholds(thresholds) -> tuple[float, ...]:
    """Similarity thresholds: finite, in [-1, 1) (a cosine), all different."""
    if isinstance(thresholds, (int, float, np.floating)) and not isinstance(thresholds, bool):
        thresholds = (thresholds,)  # one threshold
    try:
        ts = tuple(float(t) for t in thresholds) if not isinstance(thresholds, (str, bytes)) else ()
    except (TypeError, ValueError):
        ts = ()
    if not ts or any(not (math.isfinite(t) and -1 <= t < 1) for t in ts) or len(set(ts)) != len(ts):
        raise AmbientMRIError(f"thresholds must be different numbers in [-1, 1) (cosine similarities), got "
                              f"{thresholds!r}")
    return ts


def _shares(v: np.ndarray, thresholds) -> dict[str, float | None]:
    return {threshold_key(t): float((v > t).mean()) if np.isfinite(v).all() else None for t in thresholds}


def _finite(v: float) -> float | None:
    """JSON has no NaN: SSIM of images under 7 pixels is not defined."""
    return float(v) if np.isfinite(v) else None


def _summary(v: np.ndarray, thresholds) -> dict:
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
            "share_above": _shares(v, thresholds)}


def study(samples: dict[str, np.ndarray], train, thresholds=THRESHOLDS, center: bool = False,
          copy_floor: float = 0.98, identity_threshold: float | None = None, identity_k: int = 3) -> dict:
    """The memorisation study of several models' samples against one training set (see the module docstring).

    samples: {label: (N, C, H, W) in [-1, 1]}; train: as ``training_images_like``. Returns a JSON-ready dict
    (``settings``, ``train``, ``models``) plus, under ``_arrays``, what the figures need.
    """
    if not isinstance(samples, dict) or not samples:
        raise AmbientMRIError("samples: a dict {label: images (N, C, H, W) in [-1, 1]} with at least one entry")
    samples = {k: model_scale_images(v, f"samples {k!r}") for k, v in samples.items()}
    thresholds = check_thresholds(thresholds)
    for name, v in (("copy_floor", copy_floor), ("identity_threshold", identity_threshold)):
        if v is not None and not (isinstance(v, (int, float, np.floating)) and -1 <= v <= 1):  # NaN fails too
            raise AmbientMRIError(f"{name} must be a cosine similarity in [-1, 1], got {v!r}")
    check_count("identity_k", identity_k)
    first = next(iter(samples.values()))
    tr = training_images_like(train, first)
    X = tr.images
    if len(X) < 2:  # the copy rule compares each sample's neighbour with that image's nearest *other* image
        raise AmbientMRIError(f"the training set {tr.source} holds {len(X)} image; the study needs at least 2")
    labels = np.asarray(tr.labels if len(tr.labels) == len(X) else [""] * len(X))
    has_ids = len(set(labels.tolist())) > 1
    t_sim, _ = nearest_neighbours(X, X, k=1, center=center, exclude_self=True)
    t_nn = t_sim[:, 0]
    id_thr = float(np.median(t_nn)) if identity_threshold is None else float(identity_threshold)
    out = {"settings": {"similarity": "cosine of flattened images in [-1, 1]" + (" (mean-centred)" if center else ""),
                        "thresholds": list(thresholds), "copy_floor": copy_floor,
                        "identity_threshold": id_thr if has_ids else None, "identity_k": identity_k},
           "train": {"source": tr.source, "num_images": int(len(X)), "image_shape": list(X.shape[1:]),
                     "identities": int(len(set(labels.tolist()))) if has_ids else None,
                     "nn_similarity_to_other_training_images": _summary(t_nn, thresholds)},
           "models": {}, "_arrays": {"train": X, "train_nn": t_nn, "models": {}}}
    for name, S in samples.items():
        S = np.asarray(S, np.float32)
        if S.shape[1:] != X.shape[1:]:
            raise AmbientMRIError(f"samples {name!r} are {'x'.join(map(str, S.shape[1:]))}, the first ones "
                                  f"{'x'.join(map(str, X.shape[1:]))}")
        k = min(max(identity_k, 1), len(X))
        sim, idx = nearest_neighbours(S, X, k=k, center=center)
        s1, j = sim[:, 0], idx[:, 0]
        ssim = batch_ssim(S, X[j], data_range=2.0) if min(X.shape[-2:]) >= 7 else np.full(len(S), np.nan)
        copy = s1 >= np.maximum(t_nn[j], copy_floor)
        rec = {"num_samples": int(len(S)), **_summary(s1, thresholds),
               "ssim": {"mean": _finite(np.mean(ssim)), "median": _finite(np.median(ssim)),
                        "share_above": _shares(ssim, thresholds)},
               "copies": float(copy.mean()), "distinct_training_images_copied": int(len(set(j[copy].tolist())))}
        ident = np.zeros(len(S), bool)
        if has_ids:
            same = (labels[idx] == labels[j][:, None]).all(1)
            ident = ~copy & (s1 >= id_thr) & same
            rec["identity_matches"] = float(ident.mean())
            rec["identities_matched"] = int(len(set(labels[j][ident | copy].tolist())))
        rec["novel"] = float((~copy & ~ident).mean())
        rec["per_sample"] = [{"nearest": int(a), "similarity": round(float(b), 5), "ssim": _finite(round(float(c), 5)),
                              "label": str(labels[a]), "copy": bool(d), "identity_match": bool(e)}
                             for a, b, c, d, e in zip(j, s1, ssim, copy, ident)]
        out["models"][name] = rec
        out["_arrays"]["models"][name] = {"samples": S, "similarity": s1, "nearest": j, "ssim": ssim}
    return out


def noise_recall(samples, clean, noisy, center: bool = False) -> dict:
    """Does a model trained on noisy images reproduce the *noise* of its training images?

    samples (N, C, H, W); clean and noisy (M, C, H, W): the training images and the noisy versions the model was
    trained on, in the same scale. For each sample, its nearest clean training image j; the correlation between
    the sample's residual (sample − clean_j) and that image's training noise (noisy_j − clean_j). About 0 for a
    model that learned the clean distribution, 1 for copies of the noisy images. ``control``: the same with the
    noise of another training image (j + 1), the value that chance gives.
    """
    S, X, Y = (np.asarray(a, np.float32) for a in (samples, clean, noisy))
    if X.shape != Y.shape or S.shape[1:] != X.shape[1:]:
        raise AmbientMRIError(f"noise_recall needs samples (N, ...) and clean/noisy training images of one shape; "
                              f"got {S.shape}, {X.shape}, {Y.shape}")
    _, idx = nearest_neighbours(S, X, k=1, center=center)
    j = idx[:, 0]
    r = (S - X[j]).reshape(len(S), -1)

    def corr(e):
        e = e.reshape(len(S), -1)
        return (r * e).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(e, axis=1), 1e-12)

    c = corr(Y[j] - X[j])
    k = (j + 1) % len(X)
    return {"mean": float(c.mean()), "median": float(np.median(c)), "share_above_0.5": float((c > 0.5).mean()),
            "control": float(corr(Y[k] - X[k]).mean())}


def _save(fig, path: Path) -> None:
    save_figure(fig, path, dpi=110)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_histogram(result: dict, path) -> Path:
    """One curve per model: the distribution of each sample's highest similarity to the training set; dashed:
    every training image against its nearest *other* training image (the near-duplicate level of the data)."""
    plt = _plt()
    arr = result["_arrays"]
    allv = np.concatenate([arr["train_nn"]] + [m["similarity"] for m in arr["models"].values()])
    lo = float(min(np.floor(allv.min() * 20) / 20, 0.5))
    bins = np.linspace(lo, 1.0, 61)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, m in arr["models"].items():
        r = result["models"][name]
        share = r["share_above"].get(threshold_key(0.95))
        lab = f"{name} (mean {r['mean']:.3f}" + (f", >0.95: {share:.0%})" if share is not None else ")")
        ax.hist(m["similarity"], bins=bins, histtype="step", density=True, linewidth=1.8, label=lab)
    ax.hist(arr["train_nn"], bins=bins, histtype="step", density=True, linestyle="--", color="gray", linewidth=1.4,
            label="training image vs nearest other training image")
    for t in result["settings"]["thresholds"]:
        ax.axvline(t, color="k", linewidth=0.6, alpha=0.4)
    ax.set_xlabel("highest cosine similarity to a training image")
    ax.set_ylabel("density")
    ax.set_title("Memorisation: similarity of generated samples to their nearest training image", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    _save(fig, path)
    return path


def plot_trajectory(trajectory: dict[str, list[dict]], path, reference_noise: float | None = None) -> Path:
    """Memorisation against training steps, one line per model. trajectory: {label: [{"steps", "copies",
    "noise_copies", "noise_sigma", "noise_recall"}, ...]} (the memorisation benchmark's records). Panels: the
    share of samples that copy a training image (solid: the pixel rule of ``study``; dashed: samples whose
    ``noise_recall`` exceeds 0.5, i.e. that carry their photo's own training noise), the samples' estimated
    noise level (grey: ``reference_noise``, the clean training images) and the mean ``noise_recall``."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for c, (name, recs) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], trajectory.items()):
        st = [r["steps"] for r in recs]
        axes[0].plot(st, [r["copies"] for r in recs], "-o", color=c, label=name)
        axes[0].plot(st, [r["noise_copies"] for r in recs], "--", color=c, alpha=0.7)
        axes[1].plot(st, [r["noise_sigma"] for r in recs], "-o", color=c, label=name)
        axes[2].plot(st, [r["noise_recall"] for r in recs], "-o", color=c, label=name)
    if reference_noise is not None:
        axes[1].axhline(reference_noise, color="gray", linestyle="--", label="clean training images")
    for ax, t in zip(axes, ["copies (solid: of a clean photo; dashed: with its training noise)",
                            "estimated noise σ of the samples", "noise_recall: the training noise in the samples"]):
        ax.set_xlabel("training steps")
        ax.set_title(t, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    _save(fig, path)
    return path


def _show(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    u = from_model_scale(img)
    return (u[0], "gray") if u.shape[0] == 1 else (u.transpose(1, 2, 0), None)


def plot_neighbours(result: dict, name: str, path, num: int = 8) -> Path:
    """Top row: the ``num`` samples most similar to the training set (most similar first); bottom row: the
    nearest training image of each, with the similarity, SSIM and whether it counts as a copy."""
    plt = _plt()
    arr = result["_arrays"]
    m = arr["models"][name]
    order = np.argsort(-m["similarity"])[:num]
    labels = result["models"][name]["per_sample"]
    fig, axes = plt.subplots(2, len(order), figsize=(1.6 * len(order), 4.4), squeeze=False)
    for c, i in enumerate(order):
        img, cmap = _show(m["samples"][i])
        axes[0, c].imshow(img, cmap=cmap, vmin=0, vmax=1)
        axes[0, c].set_title(f"sample {i}", fontsize=7)
        img, cmap = _show(arr["train"][m["nearest"][i]])
        axes[1, c].imshow(img, cmap=cmap, vmin=0, vmax=1)
        tag = " copy" if labels[i]["copy"] else (" same id" if labels[i]["identity_match"] else "")
        ssim = f"ssim {m['ssim'][i]:.2f}" if np.isfinite(m["ssim"][i]) else "ssim -"
        axes[1, c].set_title(f"cos {m['similarity'][i]:.3f}\n{ssim}{tag}", fontsize=7)
        for r in range(2):
            axes[r, c].axis("off")
    fig.suptitle(f"{name}: samples (top) and their nearest training images (bottom)", fontsize=9)
    fig.tight_layout(h_pad=2.0)
    path = Path(path)
    _save(fig, path)
    return path


def _safe_name(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label) or "model"


STUDY_JSON = "memorization.json"


def study_folder(output, labels) -> set[str]:
    """Check ``output`` before a study is written there: histogram.png, memorization.json or neighbours_*.png that
    an earlier study did not record writing (its memorization.json lists its figures) are someone's files:
    refused, nothing touched; and two labels must not share a figure name. -> the earlier study's figure names."""
    for lab in labels:  # matplotlib failed on the first, the file system on the second, after the JSON was written
        # undecodable bytes of a file name come as surrogates (Cs); control characters (Cc) break a title too
        if any(unicodedata.category(ch) in ("Cs", "Cc") for ch in str(lab)):
            raise AmbientMRIError(f"label {lab!r} holds control characters or undecodable bytes (a folder name in "
                                  "another encoding?): give --labels")
        if len(f"neighbours_{_safe_name(lab)}.png".encode()) > 255:
            raise AmbientMRIError(f"label {str(lab)[:40]!r}... is too long for its figure's file name "
                                  "(neighbours_<label>.png, at most 255 bytes): give a shorter --labels")
    names = [_safe_name(lab) for lab in labels]
    if len(set(names)) != len(names):
        raise AmbientMRIError(f"labels {list(labels)} give the same figure name (neighbours_<label>.png with other "
                              "characters as _): choose labels that differ in letters, digits, - _ .")
    out = Path(output)
    if not out.is_dir():
        return set()
    ours: set[str] = set()
    try:
        meta = json.loads((out / STUDY_JSON).read_text())
        if isinstance(meta, dict) and {"settings", "models", "figures"} <= set(meta):
            ours = {STUDY_JSON, *(Path(p).name for p in meta["figures"].values())}
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    planned = {STUDY_JSON, "histogram.png", *(f"neighbours_{n}.png" for n in names)}
    foreign = sorted(n for n in planned if (out / n).exists() and n not in ours)
    if foreign:
        raise DataFileError(out, f"holds {', '.join(foreign)}, which no earlier memorization study here recorded "
                            "writing; they will not be overwritten (choose another --output)")
    return ours - {STUDY_JSON}


def write_study(result: dict, output, num_pairs: int = 8) -> dict:
    """memorization.json, histogram.png and neighbours_<label>.png in ``output`` (``study_folder`` checks it
    first); returns their paths."""
    out = Path(output)
    check_count("num_pairs", num_pairs)  # matplotlib's error came after the JSON was written
    study_folder(out, list(result["models"]))  # someone's files refused before the folder or its lock is made
    paths = {"histogram": str(out / "histogram.png"),
             **{f"neighbours_{name}": str(out / f"neighbours_{_safe_name(name)}.png") for name in result["models"]}}
    clean = {k: v for k, v in result.items() if k != "_arrays"}
    clean["figures"] = paths
    # two studies written into one folder at once mixed one's JSON with the other's figures
    with run_lock(make_folder(out), "memorization study"):
        earlier = study_folder(out, list(result["models"]))
        remove_temps(out, [STUDY_JSON, "histogram.png"], ["neighbours_*.png"])
        for name in earlier - {Path(p).name for p in paths.values()}:  # unlisted, it would later read as someone's
            if name == "histogram.png" or re.fullmatch(r"neighbours_.*\.png", name):  # never what a damaged JSON
                (out / name).unlink(missing_ok=True)  # names besides, e.g. the samples.npy in this folder
        # the numbers and the figures' names first: a run stopped while drawing leaves figures a rerun may replace
        write_json(out / STUDY_JSON, clean)
        plot_histogram(result, paths["histogram"])
        for name in result["models"]:
            plot_neighbours(result, name, paths[f"neighbours_{name}"], num_pairs)
    paths["json"] = str(out / STUDY_JSON)
    return paths


def summary_table(result: dict) -> str:
    """A plain-text table: one row per model."""
    th = [f">{threshold_key(t)}" for t in result["settings"]["thresholds"]]
    head = ["model", "N", "mean", *th, "SSIM", "copies", "same-id", "novel"]
    rows = [head]
    tnn = result["train"]["nn_similarity_to_other_training_images"]
    for name, r in result["models"].items():
        rows.append([name, str(r["num_samples"]), f"{r['mean']:.3f}",
                     *[f"{v:.1%}" for v in r["share_above"].values()],
                     "-" if r["ssim"]["mean"] is None else f"{r['ssim']['mean']:.3f}",
                     f"{r['copies']:.1%}", f"{r['identity_matches']:.1%}" if "identity_matches" in r else "-",
                     f"{r['novel']:.1%}"])
    rows.append(["train vs train", str(result["train"]["num_images"]), f"{tnn['mean']:.3f}",
                 *[f"{v:.1%}" for v in tnn["share_above"].values()], "", "", "", ""])
    w = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows)
