"""The embedded demo data set, built offline from the MNI152 T1 template (nilearn) in well under a minute.

Layout under ``DIR``:

    raw/train/demo_train_XX.h5       simulated fastMRI multi-coil files (volumes of up to 8 axial slices)
    raw/val/demo_val_00.h5           one validation volume from a disjoint slab of the template
    prepared_r4/train                R=4 fastMRI ``random`` masks (per slice), for ambient training
    prepared_r4/{val,val_reference}  the validation volume at R=4, and its fully-sampled reference
    prepared_r8/{val,val_reference}  the validation volume at R=8
    prepared_full/train              the training volumes fully sampled (R=1), for the oracle model
    demo.json                        what was built (sizes, slices, masks, noise)

Simulation (data_tools.simulate.make_fastmri_volume): magnitude slice -> 2x readout oversampling -> smooth random
phase -> birdcage coils -> centred FFT -> complex Gaussian noise; written in the official fastMRI layout, then
prepared with exactly the pipeline used for real fastMRI files (data_tools.prepare).

Slice split: the template's brain-containing axial range is cut into a central validation slab and the two
slabs around it, separated by a gap of ``GAP`` slices (1 mm apart neighbours are near duplicates), so no
validation slice has a near copy in training.

Augmentation (off by default; ``build_demo(augment=AugmentConfig(copies=N, ...))``, ``ambient-mri prepare demo
--augment-copies N`` with the settings of ``demo_augment``): the clean training slices are augmented once
(ambient_mri.data.augment) and each copy is simulated as a new subject, with its own phase, noise and (per-slice,
by file name) masks, in ``raw/train/demo_train_augK_XX.h5``; every copy is corrupted exactly once. The validation
volume is never augmented, and its files are the same as without augmentation.

Masks are drawn per slice (seed = file name + slice): with only a few training volumes, per-volume masks would
leave most phase-encode columns never acquired in any training example. The ACS width is fastMRI's
(0.08 at R=4, 0.04 at R=8) but at least 8 (R=4) / 6 (R=8) lines, since ESPIRiT needs >= 6 calibration lines;
at the default 64 columns that gives center fractions 0.125 and 0.09375.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np

from ambient_mri.data.augment import AugmentConfig, augment_images
from ambient_mri.devices import ensure_memory
from ambient_mri.errors import H5_DAMAGE, AmbientMRIError, DataFileError
from ambient_mri.files import (
    refuse_unless_truncated_h5,
    remove_temps,
    removed_if_left_empty,
    run_lock,
    write_json,
)

from .prepare import prepare_fastmri
from .simulate import make_fastmri_volume
from .sources import mni152_brain_range, mni152_slices

VOLUME_SLICES = 8
GAP = 4
VAL_SPACING = 3
AUGMENT_SEED = 0          # augment_images' seed for the demo's training slices
AUGMENT_FIRST_SEED = 3000  # simulation seed of the first augmented volume (originals: 1000.., calibration: 2000)


def demo_augment(copies: int) -> AugmentConfig:
    """The augmentation of ``ambient-mri prepare demo --augment-copies N``: mirror images, small rotations,
    scalings and shifts, a gentle elastic warp and a mild intensity curve (no phase: the simulation gives every
    slice its own smooth random phase already)."""
    return AugmentConfig(copies=copies, flip=True, rotate=5.0, scale=0.05, shift=0.03, elastic=1.0,
                         elastic_smoothness=4.0, gamma=[0.85, 1.2])


def demo_center_fraction(width: int, acceleration: int) -> float:
    """fastMRI's centre fraction for R (0.08 at 4, 0.04 at 8) with at least 8 (R<=4) / 6 ACS lines."""
    standard = {4: 0.08, 8: 0.04}.get(acceleration, 0.32 / acceleration)
    acs = max(round(width * standard), 8 if acceleration <= 4 else 6)
    return acs / width


def demo_slices(slices: int, axis: str = "axial") -> tuple[list[int], list[int]]:
    """Template slice numbers for (train, val): val from a central slab, train from the slabs around it."""
    if slices < 2:
        raise AmbientMRIError(f"the demo needs at least 2 slices (1 train, 1 val), got {slices}")
    lo, hi = mni152_brain_range(axis)
    n_val = max(1, min(VOLUME_SLICES, slices // 5))
    n_train = slices - n_val
    c = (lo + hi) // 2
    half = (VAL_SPACING * n_val + 1) // 2
    val = c - half + VAL_SPACING * np.arange(n_val) + (VAL_SPACING // 2 if n_val == 1 else 0)
    left = np.arange(lo, c - half - GAP)
    right = np.arange(c + half + GAP, hi)
    pool = np.concatenate([left, right])
    if n_train > pool.size:
        raise AmbientMRIError(f"--slices {slices} is too many: the template has {pool.size + n_val} usable slices")
    pick = np.floor((np.arange(n_train) + 0.5) * pool.size / n_train).astype(int)
    return [int(v) for v in pool[pick]], [int(v) for v in val]


def check_build(size: int, coils: int) -> None:
    """The demo's --size and --coils, checked before any folder is made."""
    if size < 16 or size % 2:
        raise AmbientMRIError(f"--size must be an even number >= 16, got {size}")
    if coils < 2:  # one simulated coil: ESPIRiT maps vanish on a third of the image and training diverges
        raise AmbientMRIError(f"--coils must be >= 2 (the demo simulates a multi-coil scan), got {coils}")
    # the 40 slices' complex64 k-space, with the maps, images and copies the simulation and prepare hold beside it
    ensure_memory(4 * 40 * coils * size * size * 8.0, f"the demo data at --size {size} with {coils} coils",
                  "--size or --coils")


def build_demo(output: str | os.PathLike, size: int = 64, coils: int = 8, slices: int = 40,
               noise_std: float = 0.005, workers: int = 1, progress: bool = False, axis: str = "axial",
               augment: AugmentConfig | dict | None = None) -> dict:
    """Build the demo set (module docstring) under ``output``; returns a dict of the folders (Paths).

    ``augment``: augmentation settings for the clean training slices (default: none); each copy is one more
    training volume per original one, ``raw/train/demo_train_augK_XX.h5``. ``phase`` is refused (the slices are
    magnitude images; the simulation adds a phase to every slice). Whole volumes already built are kept and damaged
    ones written again (the simulation is deterministic; prepare redoes what it cannot prove done); augmented files
    from other settings are refused.
    """
    check_build(size, coils)
    aug = augment if isinstance(augment, AugmentConfig) else AugmentConfig.from_dict(augment)
    aug.check("augment")
    if aug.phase:
        raise AmbientMRIError("augment.phase: the demo's template slices are real magnitude images and the "
                              "simulation already gives every slice its own smooth random phase: switch phase off")
    tic = time.time()
    out = Path(output)
    train_ids, val_ids = demo_slices(slices, axis)
    raw_train, raw_val = out / "raw" / "train", out / "raw" / "val"
    volumes = {raw_train / f"demo_train_{v:02d}.h5": train_ids[j: j + VOLUME_SLICES]
               for v, j in enumerate(range(0, len(train_ids), VOLUME_SLICES))}
    volumes[raw_val / "demo_val_00.h5"] = val_ids
    augmented = {raw_train / f"demo_train_aug{k}_{v:02d}.h5": (k, train_ids[j: j + VOLUME_SLICES])
                 for k in range(1, aug.copies + 1) for v, j in enumerate(range(0, len(train_ids), VOLUME_SLICES))}
    aug_record = {**dataclasses.asdict(aug), "seed": AUGMENT_SEED}
    # checked under the lock: a second build with other settings, checked before the first wrote its
    # demo.json, would have mixed two demos
    with removed_if_left_empty(out), run_lock(out, f"prepare demo -> {out}"):
        _check_record(out / "demo.json", size, coils, noise_std, train_ids, val_ids)
        _check_augmented(raw_train, augmented, aug_record)
        foreign = sorted(p for d in (raw_train, raw_val) for p in d.glob("*.h5")
                         if p not in volumes and p not in augmented and not p.name.startswith("demo_train_aug"))
        if foreign:  # prepare takes every .h5 of these folders: it would be trained or scored on
            raise AmbientMRIError(f"{foreign[0]}" + (f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else "") +
                                  ": not a demo volume, in the demo's raw data folders; it would be prepared and used: "
                                  "move it, or use another --output")
        for path in [*volumes, *augmented]:
            check_own_volume(path)
        for path in [*volumes, *augmented, out / "demo.json"]:  # what a killed build left half-written
            remove_temps(path.parent, [path.name])
        _simulate(volumes, size, coils, noise_std, axis, first_seed=1000)
        if augmented:
            _simulate_augmented(augmented, train_ids, aug, aug_record, size, coils, noise_std, axis)

        cf4, cf8 = demo_center_fraction(size, 4), demo_center_fraction(size, 8)
        runs = [
            (raw_train, out / "prepared_r4", dict(acceleration=4, center_fraction=cf4, split="train")),
            (raw_val, out / "prepared_r4", dict(acceleration=4, center_fraction=cf4, split="val")),
            (raw_val, out / "prepared_r8", dict(acceleration=8, center_fraction=cf8, split="val")),
            (raw_train, out / "prepared_full", dict(acceleration=1, center_fraction=cf4, split="train")),
        ]
        for src, dst, kw in runs:
            summary = prepare_fastmri(src, dst, mask="random", per_slice_mask=True, workers=workers,
                                      progress=progress, **kw)
            if summary.refused:
                raise AmbientMRIError("demo preparation failed:\n" + summary.report())

        paths = {
            "root": out, "raw_train": raw_train, "raw_val": raw_val,
            "r4_train": out / "prepared_r4" / "train", "r4_val": out / "prepared_r4" / "val",
            "r4_val_reference": out / "prepared_r4" / "val_reference",
            "r8_val": out / "prepared_r8" / "val", "r8_val_reference": out / "prepared_r8" / "val_reference",
            "full_train": out / "prepared_full" / "train",
        }
        record = {
            "source": f"MNI152 2009a T1 template (nilearn), {axis} slices", "image_size": [size, size],
            "kspace_size": [2 * size, size], "coils": coils, "noise_std": noise_std,
            "train_slices": train_ids, "val_slices": val_ids, "mask": "random, per slice",
            "augment": aug_record if aug.copies else None,
            "r4": {"acceleration": 4, "center_fraction": cf4}, "r8": {"acceleration": 8, "center_fraction": cf8},
            "paths": {k: str(v) for k, v in paths.items()}, "seconds": round(time.time() - tic, 2),
        }
        write_json(out / "demo.json", record)
    return paths


def _check_record(path: Path, size: int, coils: int, noise_std: float, train_ids, val_ids) -> None:
    """A demo.json already in the output must be a demo's, built with these settings: the volumes it lists are
    kept as they are, so other --size/--coils/--slices would mix two demos (and the record would lie), and a
    user's demo.json would be written over. Fields an older record lacks are not compared."""
    if not path.exists():
        return
    try:
        have = json.loads(path.read_text())
        built = {"size": int(have["image_size"][0]), "coils": int(have["coils"])}
        for key in ("noise_std", "train_slices", "val_slices"):
            if key in have:
                built[key] = have[key] if key != "noise_std" else float(have[key])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        raise AmbientMRIError(f"{path}: not a demo record; it would be written over: use another --output") from None
    want = {"size": size, "coils": coils, "noise_std": float(noise_std), "train_slices": list(train_ids),
            "val_slices": list(val_ids)}
    differ = [k for k in built if built[k] != want[k]]
    if differ:
        raise AmbientMRIError(f"{path.parent} holds a demo built with other settings ({', '.join(differ)}: "
                              f"{', '.join(str(built[k]) for k in differ)[:120]}); use another --output for these")


def check_own_volume(path: Path) -> None:
    """A file at a demo volume's name is kept or written again only if it is one of ours: an HDF5 file with the
    builder's ``mni152_slices`` attribute, or a truncated HDF5 file (empty, or beginning with the signature, as a
    killed write leaves it); a user's file there is refused, never overwritten (nor trained on)."""
    if not path.exists():
        return
    try:
        with h5py.File(path, "r") as f:
            ours = "mni152_slices" in f.attrs
    except H5_DAMAGE as e:
        refuse_unless_truncated_h5(path, e, "--output")
        return
    if not ours:
        raise DataFileError(path, "exists and was not written by the demo builder (no mni152_slices attribute); it "
                            "will not be overwritten (move it, or use another --output)")


def is_complete(path: Path) -> bool:
    """Whether a volume this builder wrote is whole: its k-space and target read back to the last slice. Anything
    else (missing, truncated, damaged) is written again."""
    try:
        with h5py.File(path, "r") as f:
            f["kspace"][-1:], f["reconstruction_rss"][-1:]
        return True
    except H5_DAMAGE:
        return False


def _simulate(volumes: dict, size: int, coils: int, noise_std: float, axis: str, first_seed: int) -> None:
    """Write each {path: template slice numbers} volume that is not complete yet (volume k seeded first_seed + k),
    all slices normalised together over the brain range."""
    todo = {p: ids for p, ids in volumes.items() if not is_complete(p)}
    if not todo:
        return
    lo, hi = mni152_brain_range(axis)
    stack = mni152_slices(hi - lo, (size, size), axis=axis, start=lo, stop=hi)  # one normalisation for all
    for seed, (path, ids) in enumerate(volumes.items(), start=first_seed):
        if path in todo:
            make_fastmri_volume(path, np.stack([stack[i - lo] for i in ids]), num_coils=coils, oversample=2,
                                noise_std=noise_std, phase=True, seed=seed, acquisition="AXT1",
                                attrs={"mni152_slices": ids, "mni152_axis": axis})


def _check_augmented(raw_train: Path, augmented: dict, record: dict) -> None:
    """Refuse a folder whose augmented training volumes another augmentation made (they would train silently)."""
    want = json.dumps(record, sort_keys=True)
    for path in sorted(raw_train.glob("demo_train_aug*.h5")):
        if path in augmented and not is_complete(path):
            continue  # a damaged volume of this build: written again
        try:
            with h5py.File(path, "r") as f:
                found = f.attrs.get("augment")
        except H5_DAMAGE as e:
            raise AmbientMRIError(f"{path}: cannot read ({e}); delete it or use another --output") from None
        found = found.decode() if isinstance(found, bytes) else found
        if path not in augmented or found != want:
            asked = want if augmented else "no augmentation"
            raise AmbientMRIError(f"{path}: an augmented training volume made with augmentation {found}, but this "
                                  f"build asks for {asked}; it would be trained on: use another --output")


def _simulate_augmented(volumes: dict, train_ids: list[int], aug: AugmentConfig, record: dict, size: int,
                        coils: int, noise_std: float, axis: str) -> None:
    """Write each {path: (copy k, template slice numbers)} volume that is not complete yet: copy k of those training
    slices (``augment_images`` over all training slices, seed ``AUGMENT_SEED``), simulated like a new subject
    (volume j seeded ``AUGMENT_FIRST_SEED + j``)."""
    todo = {p for p in volumes if not is_complete(p)}
    if not todo:
        return
    lo, hi = mni152_brain_range(axis)
    stack = mni152_slices(hi - lo, (size, size), axis=axis, start=lo, stop=hi)  # as _simulate: one normalisation
    clean = stack[np.asarray(train_ids) - lo]
    copies = augment_images(clean, aug, seed=AUGMENT_SEED)  # (n * (1 + copies), h, w): originals, copy 1, ...
    row = {t: i for i, t in enumerate(train_ids)}
    n = len(train_ids)
    for seed, (path, (k, ids)) in enumerate(volumes.items(), start=AUGMENT_FIRST_SEED):
        if path in todo:
            make_fastmri_volume(path, np.stack([copies[k * n + row[i]] for i in ids]), num_coils=coils, oversample=2,
                                noise_std=noise_std, phase=True, seed=seed, acquisition="AXT1",
                                attrs={"mni152_slices": ids, "mni152_axis": axis, "augment_copy": k,
                                       "augment": json.dumps(record, sort_keys=True)})


def demo_calibration_slices(slices: int, axis: str = "axial", num: int = VOLUME_SLICES) -> list[int]:
    """Template slices for tuning sampler settings: used by neither split, at least ``VAL_SPACING`` from every
    validation slice, the ones farthest from both splits first (ties: farther from validation)."""
    train, val = demo_slices(slices, axis)
    lo, hi = mni152_brain_range(axis)
    free = [s for s in range(lo, hi) if s not in set(train) | set(val)]
    dist = {s: (min(abs(s - t) for t in train), min(abs(s - v) for v in val)) for s in free}
    ok = [s for s in free if dist[s][1] >= VAL_SPACING]
    return sorted(sorted(ok, key=lambda s: (-min(dist[s]), -dist[s][1]))[:num])


def build_calibration(output: str | os.PathLike, size: int = 64, coils: int = 8, slices: int = 40,
                      noise_std: float = 0.005, axis: str = "axial") -> Path:
    """One fully-sampled volume of ``demo_calibration_slices``, simulated like the demo volumes, as
    ``output/raw/calib/demo_calib_00.h5``: where sampler settings are chosen, so that the validation volume only
    scores them. Returns the folder."""
    ids = demo_calibration_slices(slices, axis)
    if not ids:
        raise AmbientMRIError(f"--slices {slices} leaves no template slice for calibration")
    folder = Path(output) / "raw" / "calib"
    _simulate({folder / "demo_calib_00.h5": ids}, size, coils, noise_std, axis, first_seed=2000)
    return folder
