"""Raw scanner data -> official fastMRI multi-coil files: ISMRMRD (.h5/.mrd, via ``ismrmrd``) and Siemens twix
(.dat, VB and VD/VE, via ``twixtools``). ``ambient-mri convert --input RAW --output DIR`` (data_tools/convert_cli.py).

Output (one file per scan, ``DIR/<input stem>.h5``, written atomically), as fastMRI stores it:

* ``kspace`` complex64 (S, C, H, W) = (slices, coils, readout rows, phase-encode columns). The readout keeps its
  oversampling (H = the encoded readout matrix, 2 x the recon rows on Siemens/fastMRI data). The centre of
  k-space is at (H//2, W//2).
* ``ismrmrd_header``: the ISMRMRD XML (for ISMRMRD input the file's own header, completed where it lacks the
  phase-encode encoding limits, without its ``subjectInformation`` and ``studyInformation``, the dates, UIDs and
  IDs of its ``measurementInformation`` and the site and device names of ``acquisitionSystemInformation``; for
  twix one built from the protocol), so ``read_fastmri`` finds the encoded and recon matrix sizes and fastMRI's
  k-space padding (``padding_left = W//2 - center``).
* ``reconstruction_rss`` float32 (S, h, w) for fully sampled scans: RSS over coils of ``ifft2c(kspace)``,
  centre-cropped to the recon matrix (h, w), as fastMRI (``data_tools.simulate.rss_target``). Attributes ``max``,
  ``norm`` (of that target), ``acquisition`` (the protocol name), ``patient_id`` (SHA-256 of the header's
  patient ID, or of the file name when the header has none; never the ID itself).
* Undersampled scans (phase-encode lines missing between the first and the last acquired line) get ``mask``
  (W,) bool with attributes ``acceleration`` (the header's nominal factor if > 1, else the achieved one: acquired
  extent / acquired lines, 2 decimals) and
  ``num_low_frequency`` (the run of acquired lines through column W//2), and no target, as fastMRI test files.
* ``convert_settings``: JSON of the conversion settings and the source file's name, size, mtime and a digest of
  1 MiB sampled over it (``files.source_fingerprint``); a rerun
  skips an output whose settings match and redoes it otherwise.

Reordering applied (no flips, no FFT along any axis; the image orientation is the scanner's):

* a readout's sample ``j`` goes to row ``j - center_sample + H//2`` (ISMRMRD ``center_sample``, twix
  ``CenterCol``), so an asymmetric echo is zero-filled in place; samples inside ``discard_pre``/``discard_post``
  (twix ``CutOff``) are dropped;
* phase-encode step ``e1`` goes to column ``e1 - center + W//2`` with ``center`` the header's
  ``encodingLimits/kspace_encoding_step_1/center`` (twix ``CenterLin``): partial Fourier is zero-filled in place;
* channel ``c`` of a readout goes to coil ``c``; slice counters are sorted and numbered 0..S-1.

Handled: several slices (the slice axis); averages and any repeated line (the mean of all copies of a sample);
noise-adjustment readouts (ISMRMRD ``ACQ_IS_NOISE_MEASUREMENT``, twix ``NOISEADJSCAN``, in any measurement of a
multi-raid file), used by default to prewhiten the coils: with the noise covariance ``Psi = X X^H / M`` scaled
by (noise dwell time / image dwell time) when both are known, ``kspace <- L^-1 kspace`` with ``L L^H = Psi``
(Cholesky), so the noise in the output is white with unit variance per coil; ``prewhiten=False`` skips it.
Skipped: navigator, phase-correction, feedback, dummy, phase-stabilisation readouts, and calibration-only
readouts (ISMRMRD ``ACQ_IS_PARALLEL_CALIBRATION`` without ``..._AND_IMAGING``, twix ``PATREFSCAN`` without
``PATREFANDIMASCAN``: a separate reference scan may have another contrast; they are counted in the result's notes).

Refused with ``DataFileError`` naming the file: files that are neither ISMRMRD nor twix, truncated or corrupt
files, non-Cartesian trajectories (radial, spiral, PROPELLER, EPI / reversed readouts), 3-D encodings
(partitions / ``kspace_encoding_step_2``), more than one repetition, contrast (echo), phase or set (each is named
in the message; split the scan first), several encoding spaces, readouts that do not fit the encoded matrix,
slices sampled with different phase-encode lines, non-finite samples.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ambient_mri.errors import H5_DAMAGE, AmbientMRIError, DataFileError
from ambient_mri.files import (
    HDF5_SIGNATURE,
    make_folder,
    refuse_file_name_for_folder,
    refuse_overwrite,
    refuse_unless_truncated_h5,
    remove_temps,
    removed_if_left_empty,
    run_lock,
    source_fingerprint,
    unusable_reason,
    write_h5,
)
from ambient_mri.masks import acs_width

# 2: "fully sampled" needs the centre line and half of k-space; outputs of /1 are redone on a rerun
FORMAT = "ambient_mri.convert/2"
ISMRMRD_SUFFIXES = (".h5", ".hdf5", ".mrd", ".ismrmrd")
TWIX_SUFFIXES = (".dat",)
RAW_SUFFIXES = ISMRMRD_SUFFIXES + TWIX_SUFFIXES
REFUSED_COUNTERS = ("repetition", "contrast", "phase", "set")
_CHUNK = 1024  # ISMRMRD readouts read per HDF5 call

# ISMRMRD acquisition flags (bit = flag - 1), as in ismrmrd.constants
_ACQ = {
    "noise": 19, "calib": 20, "calib_and_imaging": 21, "reverse": 22, "navigation": 23, "phasecorr": 24,
    "hpfeedback": 26, "dummyscan": 27, "rtfeedback": 28, "surfacecoilcorrection": 29,
    "phase_stabilization_reference": 30, "phase_stabilization": 31,
}
_ISMRMRD_SKIP = ("navigation", "phasecorr", "hpfeedback", "dummyscan", "rtfeedback", "surfacecoilcorrection",
                 "phase_stabilization_reference", "phase_stabilization")
_TWIX_SKIP = ("ACQEND", "RTFEEDBACK", "HPFEEDBACK", "SYNCDATA", "REFPHASESTABSCAN", "PHASESTABSCAN", "PHASCOR",
              "noname60", "SLICE_ACCEL_REFSCAN", "SLICE_ACCEL_PHASCOR", "RETRO_DUMMYSCAN")
_TWIX_TRAJECTORIES = {1: "Cartesian", 2: "radial", 4: "spiral", 8: "PROPELLER/BLADE"}


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass
class ConvertedFile:
    """What happened to one input file."""

    source: str
    status: str  # "converted" | "skipped" | "bad"
    reason: str = ""
    output: str | None = None
    format: str = ""  # "ismrmrd" | "twix"
    shape: tuple[int, ...] = ()
    fully_sampled: bool | None = None
    prewhitened: bool = False
    acceleration: float | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        if self.status == "bad":
            return f"  {self.source}: {self.reason}"
        sampling = "fully sampled" if self.fully_sampled else f"undersampled (R={self.acceleration:g})"
        extra = "; ".join(([self.reason] if self.reason else []) + self.notes)
        return (f"  {self.source} -> {self.output}: {self.format} {self.shape}, {sampling}, "
                f"{'prewhitened' if self.prewhitened else 'not prewhitened'}{'; ' + extra if extra else ''}")


@dataclass
class ConvertSummary:
    input: str
    output: str
    results: list[ConvertedFile] = field(default_factory=list)
    seconds: float = 0.0

    def _with(self, status: str) -> list[ConvertedFile]:
        return [r for r in self.results if r.status == status]

    @property
    def converted(self) -> list[ConvertedFile]:
        return self._with("converted")

    @property
    def skipped(self) -> list[ConvertedFile]:
        return self._with("skipped")

    @property
    def bad(self) -> list[ConvertedFile]:
        return self._with("bad")

    def report(self) -> str:
        lines = [f"convert: {len(self.converted)} file(s) converted, {len(self.skipped)} already done, "
                 f"{len(self.bad)} bad, in {self.seconds:.1f} s -> {self.output}"]
        lines += [r.line() for r in self.converted + self.skipped]
        if self.bad:
            lines.append("bad files (not converted):")
            lines += [r.line() for r in self.bad]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# What a reader hands to the assembler
# --------------------------------------------------------------------------------------------------


@dataclass
class _Scan:
    """One raw scan, format-independent. Counter arrays have one entry per image readout."""

    fmt: str
    H: int
    W: int
    center_line: int
    recon: tuple[int, int]
    counters: dict[str, np.ndarray]  # slice, e1, e2, average, repetition, contrast, phase, set
    center_sample: np.ndarray
    discard: np.ndarray  # (n, 2) pre, post
    samples: np.ndarray
    channels: np.ndarray
    data: Callable[[], Iterator[np.ndarray]]  # yields each image readout's (C, N) complex data, in order
    noise: np.ndarray | None = None  # (C, M)
    noise_dwell: float | None = None
    image_dwell: float | None = None
    fit_matrix: bool = False  # twix: grow H/W to fit the readouts (the protocol sizes are not authoritative)
    header: Callable[[int, int, int, tuple[int, int], int, int, int, int], bytes] | None = None
    acceleration: float | None = None
    protocol: str = ""
    patient: str = ""
    notes: list[str] = field(default_factory=list)


def _ifset(flags: np.ndarray, name: str) -> np.ndarray:
    return (flags >> np.uint64(_ACQ[name] - 1)) & np.uint64(1) == 1


# --------------------------------------------------------------------------------------------------
# ISMRMRD
# --------------------------------------------------------------------------------------------------


def _parse_ismrmrd_xml(path: Path, raw):
    import ismrmrd.xsd
    from xsdata.formats.dataclass.parsers import XmlParser
    from xsdata.formats.dataclass.parsers.config import ParserConfig

    if isinstance(raw, np.ndarray):
        raw = raw.item() if raw.size == 1 else raw.tobytes()
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    # xsdata warns (from deep in site-packages, naming no file) about values it cannot convert, e.g. a
    # non-integer accessionNumber: those become notes of this file's result
    from xsdata.exceptions import ConverterWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", category=ConverterWarning)
        try:
            hdr = ismrmrd.xsd.CreateFromDocument(raw)
        except Exception:  # noqa: BLE001 - older headers carry elements the current schema lacks: parse leniently
            try:
                parser = XmlParser(config=ParserConfig(fail_on_unknown_properties=False))
                hdr = parser.from_bytes(bytes(raw), ismrmrd.xsd.ismrmrdHeader)
            except Exception as err:  # noqa: BLE001
                raise DataFileError(path, f"the ISMRMRD XML header cannot be parsed: {err}") from None
    for w in caught:  # any other warning goes on as if never caught
        if not issubclass(w.category, ConverterWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return hdr, sorted({"XML header: " + " ".join(str(w.message).split()) for w in caught
                        if issubclass(w.category, ConverterWarning)})


def _ismrmrd_group(path: Path, hf: h5py.File) -> h5py.Group:
    if "kspace" in hf and "dataset" not in hf:
        raise DataFileError(path, "is already a fastMRI file (it has 'kspace'), not ISMRMRD raw data")
    if "dataset" in hf and isinstance(hf["dataset"], h5py.Group):
        return hf["dataset"]
    groups = [g for g in hf.values() if isinstance(g, h5py.Group) and "xml" in g]
    if len(groups) == 1:
        return groups[0]
    raise DataFileError(path, f"not an ISMRMRD file: no 'dataset' group with 'xml' and 'data' "
                        f"(found {sorted(hf.keys())})")


def _read_ismrmrd(path: Path) -> _Scan:
    """Everything but the readout data (which ``_Scan.data`` streams from the file)."""
    try:
        hf = h5py.File(path, "r")
    except OSError as err:
        raise DataFileError(path, f"cannot open as HDF5 (truncated or corrupt): {err}") from None
    with hf:
        grp = _ismrmrd_group(path, hf)
        if "xml" not in grp:
            raise DataFileError(path, "ISMRMRD file without an XML header ('xml' missing)")
        try:
            xml = grp["xml"][0]
        except (OSError, ValueError, IndexError) as err:
            raise DataFileError(path, f"the ISMRMRD XML header cannot be read: {err}") from None
        hdr, header_notes = _parse_ismrmrd_xml(path, xml)
        if "data" not in grp or not isinstance(grp["data"], h5py.Dataset):
            raise DataFileError(path, "ISMRMRD file without acquisitions ('data' missing)")
        ds = grp["data"]
        if ds.dtype.names is None or not {"head", "data"} <= set(ds.dtype.names):
            raise DataFileError(path, f"ISMRMRD 'data' has an unexpected type {ds.dtype}")
        dataset_name = grp.name
        try:
            heads = ds.fields("head")[:]
        except (OSError, ValueError) as err:
            raise DataFileError(path, f"ISMRMRD acquisition headers cannot be read (truncated?): {err}") from None
    if not hdr.encoding:
        raise DataFileError(path, "the ISMRMRD header has no <encoding>")
    enc = hdr.encoding[0]
    traj = getattr(enc.trajectory, "value", str(enc.trajectory))
    if str(traj).lower() != "cartesian":
        raise DataFileError(path, f"non-Cartesian trajectory {traj!r}: only Cartesian scans can be converted")
    H, W, Z = (int(getattr(enc.encodedSpace.matrixSize, a)) for a in "xyz")
    lim = enc.encodingLimits
    e2 = getattr(lim, "kspace_encoding_step_2", None) if lim is not None else None
    if Z > 1 or (e2 is not None and e2.maximum > 0):
        raise DataFileError(path, f"3-D encoding (encoded matrix {H} x {W} x {Z}): only 2-D (multi-slice) scans "
                            "can be converted")
    e1 = getattr(lim, "kspace_encoding_step_1", None) if lim is not None else None
    center = int(e1.center) if e1 is not None else W // 2
    recon = (int(enc.reconSpace.matrixSize.x), int(enc.reconSpace.matrixSize.y))

    flags = heads["flags"].astype(np.uint64)
    if not len(flags):
        raise DataFileError(path, "ISMRMRD file without acquisitions")
    noise = _ifset(flags, "noise")
    skip = np.zeros(len(flags), bool)
    for name in _ISMRMRD_SKIP:
        skip |= _ifset(flags, name)
    calib_only = _ifset(flags, "calib") & ~_ifset(flags, "calib_and_imaging") & ~noise & ~skip
    image = ~noise & ~skip & ~calib_only
    if not image.any():
        raise DataFileError(path, "no imaging readouts (only noise, calibration or navigator data)")
    if (_ifset(flags, "reverse") & image).any():
        raise DataFileError(path, "reversed readouts (ACQ_IS_REVERSE: EPI-like): only Cartesian scans with "
                            "readouts in one direction can be converted")
    if (heads["encoding_space_ref"][image] != 0).any():
        raise DataFileError(path, "readouts use several encoding spaces; only single-encoding scans are supported")
    h = heads[image]
    idx = h["idx"]
    counters = {"slice": idx["slice"], "e1": idx["kspace_encode_step_1"], "e2": idx["kspace_encode_step_2"],
                "average": idx["average"], "repetition": idx["repetition"], "contrast": idx["contrast"],
                "phase": idx["phase"], "set": idx["set"]}
    counters = {k: np.asarray(v, np.int64) for k, v in counters.items()}
    image_rows = np.flatnonzero(image)
    noise_rows = np.flatnonzero(noise)

    def stream(rows: np.ndarray) -> Iterator[np.ndarray]:
        try:
            with h5py.File(path, "r") as f:
                d = f[dataset_name]["data"]
                for start in range(0, len(rows), _CHUNK):
                    sel = rows[start:start + _CHUNK]
                    lo, hi = int(sel[0]), int(sel[-1]) + 1
                    block = d.fields("data")[lo:hi]
                    for r in sel:
                        head = heads[r]
                        yield _ismrmrd_samples(path, block[r - lo], int(head["active_channels"]),
                                               int(head["number_of_samples"]))
        except AmbientMRIError:  # a DataFileError is a ValueError: already names the file and the problem
            raise
        except (*H5_DAMAGE, ValueError) as err:
            raise DataFileError(path, f"ISMRMRD readout data cannot be read (truncated?): {err}") from None

    noise_data = None
    if len(noise_rows):
        blocks = list(stream(noise_rows))
        if len({b.shape[0] for b in blocks}) != 1:
            raise DataFileError(path, "noise readouts have different channel counts")
        noise_data = np.concatenate(blocks, axis=1)
    accel = None
    pi = getattr(enc, "parallelImaging", None)
    if pi is not None and pi.accelerationFactor is not None:
        accel = float(pi.accelerationFactor.kspace_encoding_step_1)
    mi, si = hdr.measurementInformation, hdr.subjectInformation
    notes = list(header_notes)
    if calib_only.any():
        notes.append(f"{int(calib_only.sum())} calibration-only readouts ignored")

    def header(S: int, C: int, Hh: int, Ww: int, rec: tuple[int, int], cen: int, lo: int, hi: int) -> bytes:
        import ismrmrd.xsd as X

        enc.encodedSpace.matrixSize.x, enc.encodedSpace.matrixSize.y = Hh, Ww
        enc.reconSpace.matrixSize.x, enc.reconSpace.matrixSize.y = rec
        if enc.encodingLimits is None:
            enc.encodingLimits = X.encodingLimitsType()
        if enc.encodingLimits.kspace_encoding_step_1 is None:
            enc.encodingLimits.kspace_encoding_step_1 = X.limitType(minimum=lo, maximum=hi, center=cen)
        # who was scanned, when and where stays behind: the converted file is meant to be shared as fastMRI's are
        hdr.subjectInformation = hdr.studyInformation = None
        for part, names in PERSONAL_FIELDS.items():
            if getattr(hdr, part) is not None:
                for name in names:
                    setattr(getattr(hdr, part), name, None)
        return X.ToXML(hdr).encode()

    return _Scan(
        fmt="ismrmrd", H=H, W=W, center_line=center, recon=recon, counters=counters,
        center_sample=np.asarray(h["center_sample"], np.int64),
        discard=np.stack([h["discard_pre"], h["discard_post"]], 1).astype(np.int64),
        samples=np.asarray(h["number_of_samples"], np.int64), channels=np.asarray(h["active_channels"], np.int64),
        data=lambda: stream(image_rows), noise=noise_data,
        noise_dwell=_positive(heads["sample_time_us"][noise_rows].max()) if len(noise_rows) else None,
        image_dwell=_positive(h["sample_time_us"].max()), header=header, acceleration=accel,
        protocol=(mi.protocolName if mi is not None and mi.protocolName else "") or "",
        patient=(si.patientID if si is not None and si.patientID else "") or "", notes=notes)


# fields that date a scan or name the site, the scanner and the series (DICOM UIDs): not copied
PERSONAL_FIELDS = {
    "measurementInformation": ("measurementID", "seriesDate", "seriesTime", "frameOfReferenceUID",
                               "seriesInstanceUIDRoot", "referencedImageSequence", "measurementDependency"),
    "acquisitionSystemInformation": ("institutionName", "stationName", "deviceID", "deviceSerialNumber"),
}


def _ismrmrd_samples(path: Path, flat: np.ndarray, channels: int, samples: int) -> np.ndarray:
    flat = np.asarray(flat, np.float32)
    if flat.size != 2 * channels * samples:
        raise DataFileError(path, f"a readout holds {flat.size // 2} samples, its header says {channels} channels "
                            f"x {samples} samples (corrupt file)")
    return flat.view(np.complex64).reshape(channels, samples)


def _positive(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) and v > 0 else None


# --------------------------------------------------------------------------------------------------
# Siemens twix
# --------------------------------------------------------------------------------------------------


def _check_twix_layout(path: Path) -> None:
    """Refuse files that cannot be twix before twixtools sees them (it would print, loop or raise deep down)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(10240)
    if len(head) < 8:
        raise DataFileError(path, "too short to be a Siemens twix file")
    first, second = np.frombuffer(head[:8], "<u4")
    if first < 10000 and second <= 64:  # VD/VE multi-raid file (twixtools' own test)
        if second == 0 or len(head) < 10240:
            raise DataFileError(path, "not a Siemens twix file (no measurements in the multi-raid header)")
        from twixtools import hdr_def

        raid = np.frombuffer(head[: hdr_def.MultiRaidFileHeader.itemsize], hdr_def.MultiRaidFileHeader)[0]
        for k in range(int(second)):
            off, length = int(raid["entry"][k]["off_"]), int(raid["entry"][k]["len_"])
            if off < 10240 or off >= size:
                raise DataFileError(path, f"not a Siemens twix file, or truncated (measurement {k} starts at byte "
                                    f"{off}, the file has {size} bytes)")
            if length and off + length > size:
                raise DataFileError(path, f"truncated: measurement {k} needs {off + length} bytes, the file has "
                                    f"{size}")
    else:  # VB: the first word is the protocol header length
        if not 32 <= first < size or not 0 < second <= 64 or b"Config" not in head and b"Meas" not in head:
            raise DataFileError(path, "neither ISMRMRD (HDF5) nor a Siemens twix file")


class _EmptyBlock(Exception):  # not a ValueError: twixtools' read loop catches those and carries on
    pass


@contextlib.contextmanager
def _no_empty_blocks():
    """twixtools steps through the data blocks by their length: a block of length 0 (zero-filled data) kept it on
    one spot forever, its list of blocks growing by ~40 MB/s. Such a block is raised as _EmptyBlock instead."""
    import twixtools.mdb

    base = twixtools.mdb.Mdb

    class Guarded(base):
        def __init__(self, fid, *args, **kwargs):
            start = fid.tell()
            super().__init__(fid, *args, **kwargs)
            if self.dma_len <= 0 and not self.is_flag_set("ACQEND"):  # twixtools stops at ACQEND whatever its length
                raise _EmptyBlock(start)

    twixtools.mdb.Mdb = Guarded
    try:
        yield
    finally:
        twixtools.mdb.Mdb = base


def _read_twix_file(path: Path) -> list[dict]:
    import twixtools

    if not path.suffix:
        raise DataFileError(path, "twix files need a file extension (twixtools adds '.dat' to names without one)")
    _check_twix_layout(path)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _no_empty_blocks():
            warnings.simplefilter("ignore")
            meas = twixtools.read_twix(str(path), parse_pmu=False, parse_geometry=False, verbose=False,
                                       keep_acqend=True, keep_syncdata=False)
    except DataFileError:
        raise
    except _EmptyBlock as e:
        raise DataFileError(path, f"corrupt: the measurement data block at byte {e.args[0]} has length 0 (zeroed "
                            "data?)") from None
    except Exception as err:  # noqa: BLE001 - twixtools raises anything (KeyError, ValueError...) on bad files
        raise DataFileError(path, f"cannot be read as a Siemens twix file ({type(err).__name__}: {err})") from None
    if not meas or any("MeasYaps" not in m.get("hdr", {}) for m in meas):
        raise DataFileError(path, "not a Siemens twix file (no protocol header)")
    last = meas[-1]["mdb"]
    if not last or not last[-1].is_flag_set("ACQEND"):
        raise DataFileError(path, "truncated: the image measurement has no end-of-acquisition marker (ACQEND)")
    return meas


def _yaps(hdr: dict, *keys, default=None):
    d = hdr.get("MeasYaps", {})
    for k in keys:
        if isinstance(d, dict) and k in d:
            d = d[k]
        elif isinstance(d, list) and isinstance(k, int) and k < len(d):
            d = d[k]
        else:
            return default
    return d


def _num(v, default=None):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return default
    return v if np.isfinite(v) else default


def _read_twix(path: Path) -> _Scan:
    meas = _read_twix_file(path)
    hdr = meas[-1]["hdr"]
    traj = int(_num(_yaps(hdr, "sKSpace", "ucTrajectory"), 1))
    if traj != 1:
        raise DataFileError(path, f"non-Cartesian trajectory ({_TWIX_TRAJECTORIES.get(traj, f'code {traj}')}): "
                            "only Cartesian scans can be converted")
    epi = int(_num(_yaps(hdr, "sFastImaging", "lEPIFactor"), 1))
    if int(_num(_yaps(hdr, "sKSpace", "ucDimension"), 2)) == 4:
        raise DataFileError(path, "3-D encoding (sKSpace.ucDimension = 3D): only 2-D (multi-slice) scans "
                            "can be converted")
    image, noise, calib_only = [], [], 0
    for mdb in meas[-1]["mdb"]:
        if any(mdb.is_flag_set(f) for f in _TWIX_SKIP):
            continue
        if mdb.is_flag_set("NOISEADJSCAN"):
            noise.append(mdb)
        elif mdb.is_flag_set("PATREFSCAN") and not mdb.is_flag_set("PATREFANDIMASCAN"):
            calib_only += 1
        else:
            if mdb.is_flag_set("REFLECT"):
                raise DataFileError(path, f"reflected readouts (EPI, echo-train factor {epi}): only Cartesian "
                                    "scans with readouts in one direction can be converted")
            image.append(mdb)
    noise_hdr = hdr
    if not noise:  # VD/VE: the noise adjustment usually is an earlier measurement of the multi-raid file
        for m in meas[:-1]:
            found = [b for b in m["mdb"] if b.is_flag_set("NOISEADJSCAN") and not b.is_flag_set("ACQEND")]
            if found:
                noise, noise_hdr = found, m["hdr"]
    if not image:
        raise DataFileError(path, "no imaging readouts in the last measurement")
    if epi > 1:
        raise DataFileError(path, f"EPI (echo-train factor {epi}): only Cartesian scans can be converted")

    def counter(name):
        return np.array([getattr(b.mdh.Counter, name) for b in image], np.int64)

    counters = {"slice": counter("Sli"), "e1": counter("Lin"), "e2": counter("Par"), "average": counter("Ave"),
                "repetition": counter("Rep"), "contrast": counter("Eco"), "phase": counter("Phs"),
                "set": counter("Set")}
    samples = np.array([b.mdh.SamplesInScan for b in image], np.int64)
    center_sample = np.array([b.mdh.CenterCol for b in image], np.int64)
    center_lines = {int(b.mdh.CenterLin) for b in image}
    if len(center_lines) != 1:
        raise DataFileError(path, f"readouts disagree on the k-space centre line ({sorted(center_lines)})")
    center = center_lines.pop()
    base = int(_num(_yaps(hdr, "sKSpace", "lBaseResolution"), 0))
    os_factor = _num(hdr.get("Dicom", {}).get("flReadoutOSFactor"), 2.0)
    H = max(int(round(base * os_factor)), int(_num(hdr.get("Meas", {}).get("iNoOfFourierColumns"), 0)))
    W = max(int(_num(_yaps(hdr, "sKSpace", "lPhaseEncodingLines"), 0)),
            int(_num(hdr.get("Meas", {}).get("iNoOfFourierLines"), 0)))
    slab = _yaps(hdr, "sSliceArray", "asSlice", 0, default={}) or {}
    ro_fov, pe_fov = _num(slab.get("dReadoutFOV"), 0.0), _num(slab.get("dPhaseFOV"), 0.0)
    recon_h = base if base else H // 2
    recon_w = int(round(base * pe_fov / ro_fov)) if base and ro_fov and pe_fov else W
    dwell = _positive(_num(_yaps(hdr, "sRXSPEC", "alDwellTime", 0), 0.0))
    noise_dwell = _positive(_num(_yaps(noise_hdr, "sRXSPEC", "alDwellTime", 0), 0.0)) if noise else None
    noise_data = None
    if noise:
        blocks = [np.asarray(b.data, np.complex64) for b in noise]
        if len({b.shape[0] for b in blocks}) != 1:
            raise DataFileError(path, "noise readouts have different channel counts")
        noise_data = np.concatenate(blocks, axis=1)
    accel = _num(_yaps(hdr, "sPat", "lAccelFactPE"))
    notes = [f"{calib_only} calibration-only readouts (PATREFSCAN) ignored"] if calib_only else []
    protocol = str(hdr.get("Dicom", {}).get("tProtocolName") or _yaps(hdr, "tProtocolName", default="") or "")
    patient = str(hdr.get("Meas", {}).get("PatientID") or "")

    def header(S: int, C: int, Hh: int, Ww: int, rec: tuple[int, int], cen: int, lo: int, hi: int) -> bytes:
        return _twix_xml(hdr, S, C, Hh, Ww, rec, cen, lo, hi, ro_fov * Hh / max(recon_h, 1), pe_fov, protocol)

    return _Scan(
        fmt="twix", H=H, W=W, center_line=center, recon=(recon_h, recon_w), counters=counters,
        center_sample=center_sample,
        discard=np.array([[b.mdh.CutOff.Pre, b.mdh.CutOff.Post] for b in image], np.int64),
        samples=samples, channels=np.array([b.mdh.UsedChannels for b in image], np.int64),
        data=lambda: (np.asarray(b.data, np.complex64) for b in image), noise=noise_data, noise_dwell=noise_dwell,
        image_dwell=dwell, fit_matrix=True, header=header, acceleration=accel, protocol=protocol, patient=patient,
        notes=notes)


def _twix_xml(hdr: dict, S, C, H, W, recon, center, lo, hi, ro_fov, pe_fov, protocol) -> bytes:
    import ismrmrd.xsd as X

    dicom = hdr.get("Dicom", {})
    slab = _yaps(hdr, "sSliceArray", "asSlice", 0, default={}) or {}
    thick = _num(slab.get("dThickness"), 1.0)
    h, w = recon
    enc = X.encodingType(
        encodedSpace=X.encodingSpaceType(matrixSize=X.matrixSizeType(x=H, y=W, z=1),
                                         fieldOfView_mm=X.fieldOfViewMm(x=ro_fov or H, y=pe_fov or W, z=thick)),
        reconSpace=X.encodingSpaceType(matrixSize=X.matrixSizeType(x=h, y=w, z=1),
                                       fieldOfView_mm=X.fieldOfViewMm(x=ro_fov * h / H if ro_fov else h,
                                                                      y=pe_fov * w / W if pe_fov else w, z=thick)),
        encodingLimits=X.encodingLimitsType(
            kspace_encoding_step_1=X.limitType(minimum=lo, maximum=hi, center=center),
            kspace_encoding_step_2=X.limitType(minimum=0, maximum=0, center=0),
            slice=X.limitType(minimum=0, maximum=S - 1, center=S // 2)),
        trajectory=X.trajectoryType.CARTESIAN)
    model = dicom.get("ManufacturersModelName")
    field_t = _num(dicom.get("flMagneticFieldStrength"))
    header = X.ismrmrdHeader(
        experimentalConditions=X.experimentalConditionsType(
            H1resonanceFrequency_Hz=int(_num(dicom.get("lFrequency"), 0) or 0)),
        acquisitionSystemInformation=X.acquisitionSystemInformationType(
            systemVendor=str(dicom.get("Manufacturer") or "SIEMENS"), systemModel=str(model) if model else None,
            systemFieldStrength_T=field_t, receiverChannels=C),
        measurementInformation=X.measurementInformationType(
            patientPosition=_patient_position(dicom.get("tPatientPosition")), protocolName=protocol or None),
        encoding=[enc])
    return X.ToXML(header).encode()


def _patient_position(value):
    import ismrmrd.xsd as X

    try:
        return X.patientPositionType(str(value))
    except ValueError:
        return X.patientPositionType("HFS")


# --------------------------------------------------------------------------------------------------
# Assembly: readouts -> (S, C, H, W) k-space
# --------------------------------------------------------------------------------------------------


@dataclass
class _Assembled:
    kspace: np.ndarray
    acquired: np.ndarray  # (W,) bool
    prewhitened: bool
    notes: list[str]
    header: bytes
    recon: tuple[int, int]


def _check_counters(path: Path, scan: _Scan) -> None:
    c = scan.counters
    for name in REFUSED_COUNTERS:
        values = np.unique(c[name])
        if len(values) > 1:
            raise DataFileError(path, f"has {len(values)} {name}s ({name} counter {values.min()}..{values.max()}): "
                                f"scans with more than one {name} are not supported; split them first")
    if len(np.unique(c["e2"])) > 1:
        raise DataFileError(path, "3-D encoding (several partitions / kspace_encode_step_2 values): only 2-D "
                            "(multi-slice) scans can be converted")
    chans = np.unique(scan.channels)
    if len(chans) != 1:
        raise DataFileError(path, f"readouts have different channel counts ({chans.tolist()})")
    if chans[0] < 1:
        raise DataFileError(path, "its readouts hold no coil data (0 active channels)")


def _assemble(path: Path, scan: _Scan, prewhiten: bool) -> _Assembled:
    _check_counters(path, scan)
    if min(scan.recon) < 1:  # the target would be an empty image
        raise DataFileError(path, f"the header's recon matrix is {scan.recon[0]} x {scan.recon[1]}; it must be at "
                            "least 1 x 1")
    C = int(scan.channels[0])
    e1 = scan.counters["e1"]
    lo_line, hi_line = int(e1.min()), int(e1.max())
    H, W, center = scan.H, scan.W, scan.center_line
    if scan.fit_matrix:  # grow symmetrically until every readout fits
        H = max(H, 2 * int(max(scan.center_sample.max(), (scan.samples - scan.center_sample).max())))
        W = max(W, 2 * max(center - lo_line, hi_line - center + 1))
    first_row = scan.center_sample * -1 + H // 2
    last_row = first_row + scan.samples - 1 - scan.discard[:, 1]
    first_row = first_row + scan.discard[:, 0]
    if (first_row < 0).any() or (last_row >= H).any():
        i = int(np.flatnonzero((first_row < 0) | (last_row >= H))[0])
        raise DataFileError(path, f"a readout of {scan.samples[i]} samples centred at sample {scan.center_sample[i]} "
                            f"does not fit the encoded readout matrix of {H} rows")
    cols = e1 - center + W // 2
    if (cols < 0).any() or (cols >= W).any():
        raise DataFileError(path, f"phase-encode lines {lo_line}..{hi_line} (centre {center}) do not fit the "
                            f"encoded matrix of {W} columns")
    slice_ids, slices = np.unique(scan.counters["slice"], return_inverse=True)
    S = len(slice_ids)
    kspace = np.zeros((S, C, H, W), np.complex64)
    count = np.zeros((S, H, W), np.int32)
    for i, data in enumerate(scan.data()):
        if data.shape != (C, scan.samples[i]):
            raise DataFileError(path, f"readout {i} holds data of shape {data.shape}, its header says "
                                f"{C} channels x {scan.samples[i]} samples (corrupt file)")
        pre, post = int(scan.discard[i, 0]), int(scan.discard[i, 1])
        seg = data[:, pre:data.shape[1] - post]
        r0 = int(first_row[i])
        kspace[slices[i], :, r0:r0 + seg.shape[1], cols[i]] += seg
        count[slices[i], r0:r0 + seg.shape[1], cols[i]] += 1
    if not np.isfinite(kspace).all():
        raise DataFileError(path, "the raw data contain non-finite samples (NaN or Inf)")
    notes = list(scan.notes)
    if count.max() > 1:
        notes.append(f"repeated readouts averaged (up to {int(count.max())} copies of a sample)")
        kspace /= np.maximum(count, 1)[:, None]
    per_slice = count.any(axis=1)  # (S, W)
    if not (per_slice == per_slice[0]).all():
        n = per_slice.sum(axis=1)
        raise DataFileError(path, f"slices are sampled with different phase-encode lines (lines per slice: "
                            f"{n.tolist()}); not a single-mask volume")
    prewhitened = False
    if prewhiten and scan.noise is not None:
        kspace = _prewhiten(path, kspace, scan, C)
        prewhitened = True
    elif prewhiten:
        notes.append("no noise scan")
    h, w = int(min(scan.recon[0], H)), int(min(scan.recon[1], W))
    header = scan.header(S, C, int(H), int(W), (h, w), int(center), lo_line, hi_line)
    return _Assembled(kspace, per_slice[0], prewhitened, notes, header, (h, w))


def noise_whitener(noise: np.ndarray, dwell_ratio: float = 1.0) -> np.ndarray:
    """(C, C) matrix ``L^-1`` with ``L L^H = Psi * dwell_ratio``, ``Psi = X X^H / M`` for noise samples X (C, M);
    ``dwell_ratio`` = noise dwell time / image dwell time. Applying it makes the noise white with unit variance."""
    x = np.asarray(noise, np.complex128)
    psi = x @ x.conj().T / x.shape[1] * dwell_ratio
    L = np.linalg.cholesky(psi)
    return np.linalg.inv(L)


def _prewhiten(path: Path, kspace: np.ndarray, scan: _Scan, C: int) -> np.ndarray:
    noise = scan.noise
    if noise.shape[0] != C:
        raise DataFileError(path, f"the noise scan has {noise.shape[0]} channels, the image {C}; convert with "
                            "--no-prewhiten")
    if noise.shape[1] < C or not np.isfinite(noise).all():
        raise DataFileError(path, f"the noise scan is unusable ({noise.shape[1]} samples for {C} channels, or "
                            "non-finite); convert with --no-prewhiten")
    ratio = scan.noise_dwell / scan.image_dwell if scan.noise_dwell and scan.image_dwell else 1.0
    try:
        white = noise_whitener(noise, ratio)
    except np.linalg.LinAlgError:
        raise DataFileError(path, "the noise covariance is not positive definite (a dead or duplicated channel?); "
                            "convert with --no-prewhiten") from None
    S, _, H, W = kspace.shape
    out = np.einsum("dc,schw->sdhw", white.astype(np.complex64), kspace, optimize=True)
    return np.ascontiguousarray(out, dtype=np.complex64)


# --------------------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    """"ismrmrd" (an HDF5 file) or "twix" (anything else that passes the twix layout check); DataFileError else."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(path, "file not found")
    if not path.is_file():
        raise DataFileError(path, "not a regular file")
    with open(path, "rb") as f:
        head = f.read(2048)
    if any(head[o:o + 8] == HDF5_SIGNATURE for o in (0, 512, 1024)):
        return "ismrmrd"
    if path.suffix.lower() in ISMRMRD_SUFFIXES:
        raise DataFileError(path, "not an HDF5 file, so not ISMRMRD raw data (no HDF5 signature)")
    _check_twix_layout(path)
    return "twix"


def settings_json(source: Path, prewhiten: bool) -> str:
    return json.dumps({"format": FORMAT, "prewhiten": bool(prewhiten), "source": source_fingerprint(source)},
                      sort_keys=True)


def _stored_settings(path: Path) -> str | None:
    """The settings an existing output was written with; None for an incomplete/unreadable file (redo it)."""
    try:
        with h5py.File(path, "r") as hf:
            s = hf.attrs.get("convert_settings")
            if s is None:
                raise DataFileError(path, "exists and was not written by convert; it will not be overwritten "
                                    "(move it, or use another --output)")
            whole = {"kspace", "ismrmrd_header"} <= set(hf) and ("reconstruction_rss" in hf or "mask" in hf)
            if not whole or hf["kspace"].ndim != 4 or not np.isfinite(hf["kspace"][-1]).all():
                return None  # a convert output missing a part: redo it
            return s.decode() if isinstance(s, bytes) else str(s)
    except AmbientMRIError:  # a DataFileError is a ValueError: never let the clause below swallow it
        raise
    except (OSError, RuntimeError) as err:
        refuse_unless_truncated_h5(path, err)
        return None
    except (KeyError, ValueError):
        return None


def _fastmri_content(source: Path, scan, asm, settings: str, fmt: str) -> tuple[dict, dict, bool, float]:
    """The datasets and attributes of the fastMRI file of an assembled scan, whether it is fully sampled, and its
    acceleration."""
    mask = asm.acquired
    lines = np.flatnonzero(mask)
    if not lines.size:
        raise DataFileError(source, "no phase-encode line holds acquired samples")
    if not np.any(asm.kspace):  # a "fully sampled" all-zero reference would fail only later, in reconstruct
        raise DataFileError(source, "every acquired sample is zero: the file holds no signal")
    extent = int(lines[-1] - lines[0] + 1)
    # no gap, through the centre line, and at least half of k-space (partial Fourier down to 4/8): one line, or a
    # few central lines alone, are an undersampled scan whose "reference" would be a blurred image
    W = mask.shape[-1]
    fully = bool(mask[lines[0]:lines[-1] + 1].all()) and lines[0] <= W // 2 <= lines[-1] and 2 * extent >= W
    attrs = {"acquisition": scan.protocol or "unknown",
             "patient_id": hashlib.sha256((scan.patient or source.name).encode()).hexdigest(),
             "convert_settings": settings, "prewhitened": asm.prewhitened, "source_format": fmt}
    datasets: dict = {"kspace": asm.kspace, "ismrmrd_header": asm.header}
    accel = 1.0
    if fully:
        from data_tools.simulate import rss_target

        target = rss_target(asm.kspace, asm.recon)
        datasets["reconstruction_rss"] = target
        attrs["max"] = float(target.max())
        attrs["norm"] = float(np.linalg.norm(target))
    else:
        # over the partial-Fourier extent, unless the lines cover less than half of k-space
        accel = scan.acceleration if scan.acceleration and scan.acceleration > 1 else \
            (extent if 2 * extent >= W else W) / len(lines)
        datasets["mask"] = mask.astype(bool)
        # fastMRI stores the nominal integer factor; without one in the header, the achieved one (2 decimals)
        attrs["acceleration"] = int(round(accel)) if abs(accel - round(accel)) < 1e-6 else round(float(accel), 2)
        attrs["num_low_frequency"] = acs_width(mask)
    return datasets, attrs, fully, accel


def _source_name(settings: str | None) -> str | None:
    """The source file name recorded in an output's ``convert_settings``, or None."""
    try:
        return json.loads(settings)["source"]["name"] if settings else None
    except (ValueError, KeyError, TypeError):
        return None


def _convert(source: Path, out_path: Path, prewhiten: bool, fmt: str | None) -> ConvertedFile:
    tic = time.time()
    source, out_path = Path(source), Path(out_path)
    if not source.is_file():
        raise DataFileError(source, "file not found" if not source.exists() else "not a regular file")
    fmt = fmt or detect_format(source)
    settings = settings_json(source, prewhiten)
    stored = _stored_settings(out_path) if out_path.exists() else None
    other = _source_name(stored)
    if other is not None and other != source.name:  # e.g. a.h5 added beside an a.mrd converted earlier
        raise DataFileError(source, f"its output {out_path} holds the conversion of another file, {other}; it will "
                            "not be replaced (rename this file, or use another --output)")
    if stored == settings:
        with h5py.File(out_path, "r") as hf:
            shape = tuple(hf["kspace"].shape)
            full = "mask" not in hf
            pw = bool(hf.attrs.get("prewhitened", False))
            accel = float(hf.attrs.get("acceleration", 1))
        return ConvertedFile(str(source), "skipped", "already converted with the same settings", str(out_path),
                             fmt, shape, full, pw, accel, seconds=time.time() - tic)
    try:
        scan = _read_ismrmrd(source) if fmt == "ismrmrd" else _read_twix(source)
        asm = _assemble(source, scan, prewhiten)
        datasets, attrs, fully, accel = _fastmri_content(source, scan, asm, settings, fmt)
    except AmbientMRIError:
        raise
    except MemoryError:
        raise DataFileError(source, "too large to convert in memory") from None
    except Exception as err:  # noqa: BLE001 - library internals on a bad file: name the file, never a traceback
        raise DataFileError(source, f"cannot be converted ({type(err).__name__}: {err})") from None
    write_h5(out_path, datasets, attrs)
    return ConvertedFile(str(source), "converted", "", str(out_path), fmt, tuple(asm.kspace.shape), fully,
                         asm.prewhitened, float(round(accel, 2)), asm.notes, time.time() - tic)


def convert_ismrmrd(path: str | os.PathLike, out_path: str | os.PathLike, prewhiten: bool = True) -> ConvertedFile:
    """One ISMRMRD raw file -> one fastMRI file (see the module docstring); DataFileError for a bad file."""
    path = Path(path)
    if detect_format(path) != "ismrmrd":
        raise DataFileError(path, "not an ISMRMRD (HDF5) file")
    return _convert(path, Path(out_path), prewhiten, "ismrmrd")


def convert_twix(path: str | os.PathLike, out_path: str | os.PathLike, prewhiten: bool = True) -> ConvertedFile:
    """One Siemens twix .dat file -> one fastMRI file (see the module docstring); DataFileError for a bad file."""
    path = Path(path)
    if detect_format(path) != "twix":
        raise DataFileError(path, "is an HDF5 file, not Siemens twix")
    return _convert(path, Path(out_path), prewhiten, "twix")


def convert_file(path: str | os.PathLike, out_path: str | os.PathLike, prewhiten: bool = True) -> ConvertedFile:
    """One raw file of either format (detected from its content) -> one fastMRI file."""
    return _convert(Path(path), Path(out_path), prewhiten, None)


# --------------------------------------------------------------------------------------------------
# Files and folders
# --------------------------------------------------------------------------------------------------


def raw_inputs(input: str | os.PathLike) -> list[Path]:
    """One file, or a folder's raw files (``RAW_SUFFIXES``, case-insensitive, not hidden), sorted."""
    input = Path(input)
    if input.is_file():
        return [input]
    if input.is_dir():
        files = sorted(p for p in input.iterdir()
                       if p.suffix.lower() in RAW_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise DataFileError(input, f"no raw files ({', '.join(RAW_SUFFIXES)}) in this folder")
        return files
    raise DataFileError(input, "no such file or folder")


def _output_name(source: Path) -> str:
    return re.sub(r"[^\w.+-]", "_", source.stem) + ".h5"


def convert(input: str | os.PathLike, output: str | os.PathLike, prewhiten: bool = True,
            progress: bool = False) -> ConvertSummary:
    """Convert one raw file or every raw file of a folder into ``output/<stem>.h5``.

    Refuses (DataFileError, before writing anything) an output folder that is the input folder (or the folder of
    the input file) or an output path that is an input file, compared as resolved paths. Bad files do not stop
    the run: they are listed in the summary with their reason (``summary.bad``).
    """
    tic = time.time()
    input, output = Path(input), Path(output)
    files = raw_inputs(input)
    in_dir = input if input.is_dir() else input.parent
    if Path(os.path.realpath(output)) == Path(os.path.realpath(in_dir)):
        raise DataFileError(output, f"is the input folder {in_dir}; refusing to write converted files among the "
                            "raw data: choose another --output")
    if output.exists() and not output.is_dir():
        raise DataFileError(output, "--output must be a folder, and this is an existing file")
    refuse_file_name_for_folder(output, "the converted files (one per scan, OUTPUT/<input stem>.h5)")
    names: dict[str, Path] = {}
    plan: list[tuple[Path, Path | None, str]] = []
    for f in files:
        name = _output_name(f)
        why = unusable_reason(f)
        if not why and name in names:
            why = f"its output name {name} is also that of {names[name].name}; rename one of them"
        names.setdefault(name, f)
        plan.append((f, output / name, why))
    refuse_overwrite(files, [output] + [o for _, o, _ in plan])
    summary = ConvertSummary(str(input), str(output))
    with removed_if_left_empty(output), run_lock(make_folder(output), f"convert {input} -> {output}"):
        remove_temps(output, [o.name for _, o, _ in plan])
        for f, out, why in plan:
            if progress:
                print(f"converting {f.name} ...", flush=True)
            if why:
                summary.results.append(ConvertedFile(str(f), "bad", why))
                continue
            try:
                summary.results.append(_convert(f, out, prewhiten, None))
            except AmbientMRIError as err:  # one file never stops the folder: it is listed
                reason = err.problem if isinstance(err, DataFileError) and Path(err.path) == f else str(err)
                summary.results.append(ConvertedFile(str(f), "bad", reason))
    summary.seconds = time.time() - tic
    return summary
