"""Official fastMRI multi-coil files -> prepared volumes (``ambient_mri.prepared/1``) for training and evaluation.

Per volume (one input file -> ``OUTPUT/<split>/<name>``):

1. Undersampling mask, fixed per volume and seeded by the file name as fastMRI does
   (``kspace_mask(kind, (H, W), R, cf, seed=name)``, i.e. ``tuple(map(ord, name))``), or per slice
   (``seed = tuple(map(ord, name)) + (slice,)``). Files that carry a ``mask`` (prospective test files) keep it.
   R = 1 means fully sampled. Columns outside the header's k-space padding are never counted as acquired.
2. Only the acquired columns are read from the input (never the rest of k-space), cropped to the image rows
   (readout oversampling; default rows = the header's recon size) by a 1-D centred FFT along the readout,
   optionally compressed to K virtual coils (SVD over coils of the calibration columns), and stored.
3. ESPIRiT maps and the intensity scale (``ambient_mri.data.prepared.SCALE_RULE``) from the calibration
   columns only.
4. ``--split val|test``: the fully-sampled reference goes to a separate ``OUTPUT/<split>_reference/<name>``
   (``reconstruction_rss`` = the file's target as is; ``image`` = SENSE combination of the fully sampled
   k-space at the prepared size with the same compression and maps, divided by the same scale). Never for train.

``--image-size H W`` with W smaller than the k-space width also crops columns in image space; that resamples
the phase-encode grid, so it reads the full k-space (retrospective simulation of a smaller FOV) and draws the
mask on the cropped grid. It is refused for files that carry their own mask.

Every file is written atomically (temporary file + os.replace). Files already prepared with the same settings
from the same input (its name, size, mtime and sampled digest, ``files.source_fingerprint``) are skipped, with
their reference where one is due, so a killed run resumes; anything else of ours (a replaced input, a damaged or
missing reference) is prepared again, and a file prepared with other settings is refused rather than overwritten.
Unusable input files are recorded with the reason and the run continues; the summary lists them.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ambient_mri.coils import sense_combine
from ambient_mri.data.calibration import apply_compression, prepare_slice, row_crop
from ambient_mri.data.fastmri import FastMRIVolume, read_fastmri
from ambient_mri.data.prepared import FORMAT, REFERENCE_FORMAT, SCALE_RULE, lines_problem, read_prepared_header
from ambient_mri.errors import H5_DAMAGE, AmbientMRIError, DataFileError
from ambient_mri.files import (
    atomic_path,
    ensure_space,
    input_files,
    refuse_overwrite,
    refuse_unless_truncated_h5,
    remove_temps,
    removed_if_left_empty,
    run_lock,
    source_fingerprint,
)
from ambient_mri.masks import COLUMN_KINDS, achieved_acceleration, acs_width, kspace_mask, num_low_frequencies
from ambient_mri.metrics import center_crop
from ambient_mri.operators import fft2c, ifft2c

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PrepareOptions:
    """What a preparation does; ``settings()`` is stored in every file and compared when resuming."""

    mask: str = "random"
    acceleration: float = 4.0
    center_fraction: float = 0.08
    split: str = "train"
    per_slice_mask: bool = False
    coils: int | None = None
    image_size: tuple[int, int] | None = None
    calib_width: int | None = None

    def validate(self) -> PrepareOptions:
        if self.mask not in COLUMN_KINDS:
            raise AmbientMRIError(f"--mask must be one of {', '.join(COLUMN_KINDS)} (column masks), got {self.mask!r}")
        if not np.isfinite(self.acceleration) or self.acceleration < 1:
            raise AmbientMRIError(f"--acceleration must be >= 1, got {self.acceleration}")
        if not 0 < self.center_fraction < 1:
            raise AmbientMRIError(f"--center-fraction must be in (0, 1), got {self.center_fraction}")
        if self.split not in SPLITS:
            raise AmbientMRIError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.coils is not None and self.coils < 1:
            raise AmbientMRIError(f"--coils must be >= 1, got {self.coils}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise AmbientMRIError(f"--image-size needs two positive integers H W, got {self.image_size}")
        if self.calib_width is not None and self.calib_width < 6:
            raise AmbientMRIError(f"--calib-width must be >= 6 (ESPIRiT needs it), got {self.calib_width}")
        return self

    def settings(self) -> str:
        d = asdict(self)
        d["acceleration"] = float(d["acceleration"])
        d["image_size"] = None if self.image_size is None else [int(v) for v in self.image_size]
        d["format"] = FORMAT
        return json.dumps(d, sort_keys=True)


@dataclass
class FileResult:
    source: str
    status: str  # "prepared" | "skipped" | "refused"
    reason: str = ""
    output: str | None = None
    reference: str | None = None
    slices: int = 0
    seconds: float = 0.0


@dataclass
class PrepareSummary:
    input: str
    output: str
    split: str
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    def _with(self, status: str) -> list[FileResult]:
        return [r for r in self.results if r.status == status]

    @property
    def prepared(self) -> list[FileResult]:
        return self._with("prepared")

    @property
    def skipped(self) -> list[FileResult]:
        return self._with("skipped")

    @property
    def refused(self) -> list[FileResult]:
        return self._with("refused")

    def report(self) -> str:
        n = sum(r.slices for r in self.prepared)
        lines = [f"prepare {self.split}: {len(self.prepared)} file(s) prepared ({n} slices), "
                 f"{len(self.skipped)} already done, {len(self.refused)} refused, in {self.seconds:.1f} s "
                 f"-> {Path(self.output) / self.split}"]
        if self.refused:
            lines.append("refused files:")
            lines += [f"  {r.source}: {r.reason}" for r in self.refused]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------


def slice_masks(name: str, width: int, num_slices: int, opts: PrepareOptions) -> tuple[np.ndarray, str, int]:
    """(S, W) float32 masks, the seed rule, and the nominal ACS line count for a volume named ``name``."""
    if opts.acceleration == 1:
        return np.ones((num_slices, width), np.float32), "fully sampled (acceleration 1)", width

    def one(seed):
        return kspace_mask(opts.mask, (1, width), opts.acceleration, opts.center_fraction, seed=seed).reshape(width)

    name_seed = tuple(map(ord, name))
    if opts.per_slice_mask:
        masks = np.stack([one(name_seed + (s,)) for s in range(num_slices)])
        rule = "per slice: seed = tuple(map(ord, file name)) + (slice,)"
    else:
        masks = np.broadcast_to(one(name_seed), (num_slices, width)).copy()
        rule = "per volume (fastMRI): seed = tuple(map(ord, file name))"
    return masks.astype(np.float32), rule, num_low_frequencies(width, opts.center_fraction)


# --------------------------------------------------------------------------------------------------
# One volume
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_h5(path: Path) -> Iterator[h5py.File]:
    """An HDF5 file written through ``files.atomic_path`` (renamed onto ``path`` only on success)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as hf:
        yield hf


def _stored_settings(path: Path, kind: str = FORMAT) -> str | None:
    """The settings a prepared file (``kind``: FORMAT, or REFERENCE_FORMAT for a reference) was made with; None for
    a file that is no complete HDF5 file (a leftover to redo). A readable HDF5 file of another kind is someone's
    data: DataFileError, never overwritten."""
    try:
        with h5py.File(path, "r") as hf:
            fmt, s = hf.attrs.get("format"), hf.attrs.get("settings")
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
            if fmt != kind:
                what = "prepared file" if kind == FORMAT else "prepared reference"
                raise DataFileError(path, f"exists and is not a {what}; it will not be overwritten (move it, "
                                    "or use another --output)")
            return s.decode() if isinstance(s, bytes) else (None if s is None else str(s))
    except H5_DAMAGE as err:
        refuse_unless_truncated_h5(path, err)
        return None


def _image_size(vol: FastMRIVolume, opts: PrepareOptions) -> tuple[int, int]:
    H0, W = vol.kspace.shape[-2:]
    if opts.image_size is not None:
        h, w = (int(v) for v in opts.image_size)
    else:
        h, w = int(vol.header["recon_size"][0]), W
    if not 0 < h <= H0 or not 0 < w <= W:
        raise DataFileError(vol.path, f"image size {(h, w)} does not fit the k-space size {(H0, W)} "
                            "(use --image-size)")
    return h, w


def _full_slice(vol: FastMRIVolume, s: int, size: tuple[int, int], crop_columns: bool) -> np.ndarray:
    """Whole k-space of slice s at the prepared size (reference, or column crop, only)."""
    k = vol.slice(s)
    if crop_columns:
        return fft2c(np.ascontiguousarray(center_crop(ifft2c(k), size)))
    return row_crop(k, size[0])


def prepare_volume(source: str | os.PathLike, output: str | os.PathLike, opts: PrepareOptions) -> FileResult:
    """Prepare one input file into ``output/<split>/`` (and ``<split>_reference/``); never raises for bad input
    files: the result says ``refused`` and why."""
    source = Path(source)
    tic = time.time()
    try:
        return _prepare_volume(source, Path(output), opts, tic)
    except (AmbientMRIError, OSError, KeyError) as err:
        reason = err.problem if isinstance(err, DataFileError) and Path(err.path) == source else str(err)
        return FileResult(str(source), "refused", reason, seconds=time.time() - tic)


def _prepare_volume(source: Path, output: Path, opts: PrepareOptions, tic: float) -> FileResult:
    name = source.name
    out_dir = output / opts.split
    ref_dir = output / f"{opts.split}_reference"
    out_path, ref_path = out_dir / name, ref_dir / name
    settings, fingerprint = opts.settings(), json.dumps(source_fingerprint(source), sort_keys=True)
    if opts.split != "train" and ref_path.exists():
        _stored_settings(ref_path, REFERENCE_FORMAT)  # someone's file where the reference goes: refused
    if out_path.exists():
        stored = _stored_settings(out_path)
        if stored is not None and stored != settings:
            return FileResult(str(source), "refused", f"{out_path} was prepared with other settings ({stored}); "
                              "use another --output", str(out_path))
        # done only if made from this very input (source_fingerprint) and, where one is due, with a whole reference
        if stored == settings and _made_from(out_path, fingerprint, prepared=True) and (
                opts.split == "train" or not _wants_reference(source) or _made_from(ref_path, fingerprint)):
            return FileResult(str(source), "skipped", "already prepared", str(out_path), None, 0,
                              time.time() - tic)
    vol = read_fastmri(source)
    if not vol.multicoil:
        raise DataFileError(source, f"single-coil k-space {vol.kspace.shape}; prepare needs multi-coil files")
    S, C, H0, W0 = vol.kspace.shape
    H, W = _image_size(vol, opts)
    crop_columns = W != W0
    if opts.coils is not None and opts.coils > C:
        raise DataFileError(source, f"has {C} coils; cannot compress to --coils {opts.coils}")

    if vol.mask is not None:  # prospectively undersampled: keep the file's mask
        if crop_columns:
            raise DataFileError(source, "carries its own mask (prospectively undersampled); its columns cannot be "
                                f"cropped from {W0} to {W} (drop the width from --image-size)")
        masks = np.broadcast_to(vol.acquired(vol.mask), (S, W)).astype(np.float32)
        seed_rule = "mask from the file"
        acs = int(vol.attrs.get("num_low_frequency", acs_width(vol.mask[None])))
        kind, R, cf = "file", float(vol.attrs.get("acceleration", achieved_acceleration(vol.mask[None]))), acs / W
    else:
        masks, seed_rule, acs = slice_masks(name, W, S, opts)
        if not crop_columns:
            masks = vol.acquired(masks)
        kind, R, cf = opts.mask, float(opts.acceleration), float(opts.center_fraction)
    if not masks.any(axis=1).all():
        raise DataFileError(source, "a slice has no acquired columns")
    counts = masks.sum(axis=1).astype(int)
    L = int(counts.max())
    K = C if opts.coils is None else int(opts.coils)
    want_ref = opts.split != "train" and (vol.target is not None or vol.mask is None)
    # HDF5 can crash outright when the disk fills mid-write: refuse up front what cannot fit
    need = 8 * S * K * H * (L + W)  # complex64 k-space columns and maps
    if want_ref:
        need += 8 * S * H * W + (4 * int(np.prod(vol.target.shape)) if vol.target is not None else 0)
    ensure_space(out_dir, need, f"{name} ({need / 2**20:.1f} MB)")

    with contextlib.ExitStack() as stack:
        hf = stack.enter_context(atomic_h5(out_path))
        d_k = hf.create_dataset("kspace", (S, K, H, L), np.complex64, chunks=(1, K, H, L))
        d_lines = hf.create_dataset("lines", data=np.full((S, L), -1, np.int32))
        hf.create_dataset("mask", data=masks)
        d_maps = hf.create_dataset("maps", (S, K, H, W), np.complex64, chunks=(1, K, H, W))
        scales = np.zeros(S, np.float32)
        calib_w, kernel_w = np.zeros(S, np.int32), np.zeros(S, np.int32)
        rf = stack.enter_context(atomic_h5(ref_path)) if want_ref else None
        d_img = None
        if rf is not None and vol.mask is None:
            d_img = rf.create_dataset("image", (S, H, W), np.complex64, chunks=(1, H, W))

        for s in range(S):
            lines = np.flatnonzero(masks[s]).astype(np.int32)
            if crop_columns:  # resampled phase-encode grid: needs the whole slice, masked right after
                acquired = _full_slice(vol, s, (H, W), True)[..., lines]
            elif len(lines) == W0:  # fully sampled (R = 1)
                acquired = vol.slice(s)
            else:  # read only the acquired columns from disk
                acquired = vol.kspace[s, :, :, lines.tolist()]
            try:
                p = prepare_slice(acquired, lines, W, rows=H, coils=opts.coils, calib_width=opts.calib_width)
            except AmbientMRIError as err:
                raise DataFileError(source, f"slice {s}: {err}") from err
            d_k[s, :, :, : len(lines)] = p.kspace
            d_lines[s, : len(lines)] = lines
            d_maps[s] = p.maps
            scales[s], calib_w[s], kernel_w[s] = p.scale, p.calib_width, p.kernel_width
            if d_img is not None:  # reference only (val/test): fully sampled k-space, same crop/compression/maps
                full = apply_compression(_full_slice(vol, s, (H, W), crop_columns), p.compression)
                d_img[s] = sense_combine(ifft2c(full), p.maps) / np.float32(p.scale)

        hf.create_dataset("scale", data=scales)
        per_slice_R = np.array([W / c for c in counts], np.float32)
        attrs = {
            "format": FORMAT, "width": W, "image_shape": [H, W], "source": str(source.resolve()), "name": name,
            "split": opts.split, "mask_kind": kind, "acceleration": R, "center_fraction": cf,
            "per_slice_mask": bool(opts.per_slice_mask and vol.mask is None and opts.acceleration != 1),
            "seed_rule": seed_rule, "achieved_acceleration": float(S * W / counts.sum()),
            "achieved_acceleration_per_slice": per_slice_R, "acs_lines": int(acs), "calib_width": calib_w,
            "kernel_width": kernel_w, "coils": K, "coils_original": C,
            "coil_compression": "none" if K == C else "SVD over coils of the calibration columns, per slice",
            "readout_rows_original": H0, "width_original": W0,
            "recon_size": [int(v) for v in vol.header["recon_size"][:2]],
            "padding": [int(vol.header["padding_left"]), int(vol.header["padding_right"])],
            "acquisition": str(vol.attrs.get("acquisition", "")), "scale_rule": SCALE_RULE,
            "settings": opts.settings(), "package_version": _version(), "source_fingerprint": fingerprint,
        }
        for key, value in attrs.items():
            hf.attrs[key] = value
        if rf is not None:
            if vol.target is not None:
                target = vol.target.read()
                rf.create_dataset("reconstruction_rss" if vol.target_key == "reconstruction_rss"
                                  else vol.target_key, data=target)
                rf.attrs["max"] = float(vol.attrs.get("max", target.max()))
            rf.create_dataset("scale", data=scales)
            for key, value in {"format": REFERENCE_FORMAT, "source": attrs["source"], "name": name,
                               "source_fingerprint": fingerprint,
                               "prepared": str(Path("..") / opts.split / name), "image_shape": [H, W],
                               "acquisition": attrs["acquisition"], "scale_rule": SCALE_RULE,
                               "image": "SENSE combination of the fully sampled k-space with the prepared maps, "
                                        "divided by scale" if d_img is not None else "none (no fully sampled data)",
                               }.items():
                rf.attrs[key] = value
        # ExitStack closes in reverse: the reference is renamed into place before the prepared file, so an
        # existing prepared file always has its reference.
    return FileResult(str(source), "prepared", "", str(out_path), str(ref_path) if want_ref else None, S,
                      time.time() - tic)


def _made_from(path: Path, fingerprint: str, prepared: bool = False) -> bool:
    """Whether ``path`` is a whole file of this preparation (prepared or reference) made from that input; a
    ``prepared`` one must also pass training's own check (``read_prepared_header``: every dataset, every shape),
    so a file edited or damaged since is redone, not counted as done."""
    if prepared:
        try:
            read_prepared_header(path)
        except (DataFileError, ValueError):  # ValueError: a k-space that is not 4-D
            return False
    try:
        with h5py.File(path, "r") as hf:
            stored = hf.attrs.get("source_fingerprint")
            stored = stored.decode() if isinstance(stored, bytes) else stored
            if stored != fingerprint or "scale" not in hf or hf["scale"].shape[0] == 0:
                return False
            if prepared:  # the small index data, slice by slice as training checks them
                lines, mask, scale = hf["lines"][()], hf["mask"][()], hf["scale"][()]
                return all(lines_problem(lines[s], mask[s], float(scale[s])) is None for s in range(len(scale)))
            return True
    except (*H5_DAMAGE, ValueError):
        return False


def _wants_reference(source: Path) -> bool:
    try:
        vol = read_fastmri(source)
    except AmbientMRIError:
        return True
    return vol.target is not None or vol.mask is None


def _version() -> str:
    try:
        from ambient_mri import __version__
    except ImportError:  # pragma: no cover
        return "unknown"
    return __version__


# --------------------------------------------------------------------------------------------------
# Many volumes
# --------------------------------------------------------------------------------------------------


def single_threaded_blas():
    """Limit BLAS to one thread while preparing: ESPIRiT's many small SVDs run several times slower with
    multi-threaded OpenBLAS (measured: 0.07 s vs 0.39 s for a 729 x 288 SVD on 2 cores); parallelism comes
    from --workers instead. Needs threadpoolctl (installed with scikit-learn); a no-op without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


_WORKER_LIMITS = []


def _die_with_parent() -> None:
    """Linux: end this worker when the process that started it dies. A killed prepare left its workers writing
    outputs without the folder's lock, racing the rerun that took the lock over."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux or no glibc: the workers outlive a killed parent, as before
        pass


def _init_worker() -> None:
    import torch

    _die_with_parent()
    torch.set_num_threads(1)
    _WORKER_LIMITS.append(single_threaded_blas())  # kept alive for the worker's lifetime


def _job(args: tuple[str, str, PrepareOptions]) -> FileResult:
    source, output, opts = args
    try:
        return prepare_volume(source, output, opts)
    except Exception as err:  # noqa: BLE001 - one unexpected failure must not lose a long run; it is reported
        return FileResult(source, "refused", f"unexpected {type(err).__name__}: {err}")


def _in_workers(jobs: list, workers: int, bar, fn=None) -> list[FileResult]:
    """``fn`` (default ``_job``) of every job in spawned worker processes. A worker that dies (the out-of-memory
    killer, a crash inside HDF5) breaks the pool: multiprocessing.Pool then waited forever for its file; here every
    file not finished is listed as not prepared, and the rest stand."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    out = []
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker)
    try:
        futures = {pool.submit(fn or _job, job): job[0] for job in jobs}
        for future in as_completed(futures):
            try:
                out.append(future.result())
            except BrokenProcessPool:
                out.append(FileResult(futures[future], "refused", "not prepared: a worker process died (killed for "
                                      "memory, or a crash) while this or another file was being prepared; rerun "
                                      "the command (with fewer --workers) to prepare it"))
            bar.update(1)
    except BaseException:
        # Ctrl-C: the executor's own exit would wait for every queued file (its workers survive SIGINT and take the
        # next job); stop them now, as Pool.terminate did. Their half-written temporaries go on the rerun.
        pool.shutdown(wait=False, cancel_futures=True)
        for p in list(getattr(pool, "_processes", {}).values()):
            p.terminate()
        raise
    pool.shutdown()
    return out


def prepare_fastmri(input: str | os.PathLike, output: str | os.PathLike, mask: str = "random",
                    acceleration: float = 4, center_fraction: float = 0.08, split: str = "train",
                    per_slice_mask: bool = False, coils: int | None = None,
                    image_size: Sequence[int] | None = None, workers: int = 1, calib_width: int | None = None,
                    limit: int | None = None, progress: bool = True) -> PrepareSummary:
    """Prepare every fastMRI file in ``input`` into ``output/<split>/`` (see the module docstring).

    Raises AmbientMRIError for unusable arguments (no input files, output not writable); bad input files are
    refused one by one and listed in the returned summary (``summary.report()``).
    """
    from tqdm import tqdm

    opts = PrepareOptions(mask, float(acceleration), float(center_fraction), split, bool(per_slice_mask), coils,
                          None if image_size is None else tuple(int(v) for v in image_size), calib_width).validate()
    if workers < 1:
        raise AmbientMRIError(f"--workers must be >= 1, got {workers}")
    files, unusable = input_files(input, limit=limit)
    output = Path(output)
    out_dir, ref_dir = output / split, output / f"{split}_reference"
    refuse_overwrite(files, [output, out_dir, ref_dir] + [d / f.name for f in files for d in (out_dir, ref_dir)])
    tic = time.time()
    summary = PrepareSummary(str(input), str(output), split)
    summary.results += [FileResult(str(f), "refused", why) for f, why in unusable]
    jobs = [(str(f), str(output), opts) for f in files]
    bar = tqdm(total=len(jobs), desc=f"prepare {split}", unit="file", disable=not progress)
    try:
        with removed_if_left_empty(output, out_dir, ref_dir), run_lock(out_dir, f"prepare {split} -> {output}"):
            for folder in (out_dir, ref_dir):  # what a killed run of this split left half-written
                remove_temps(folder, [f.name for f in files])
            if workers <= 1 or len(jobs) <= 1:
                with single_threaded_blas():
                    for job in jobs:
                        summary.results.append(_job(job))
                        bar.update(1)
            else:
                summary.results += _in_workers(jobs, workers, bar)
    finally:
        bar.close()
    order = {str(f): i for i, f in enumerate(sorted(files + [f for f, _ in unusable]))}
    summary.results.sort(key=lambda r: order.get(r.source, 0))
    summary.seconds = time.time() - tic
    return summary
