"""Raw scanner data -> fastMRI files (data_tools/raw.py, ``ambient-mri convert``).

ISMRMRD files are written with the ``ismrmrd`` library from known k-space; the real twix file is the
2-channel GRE phantom that ships with twixtools (tests/data/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import os
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

ismrmrd = pytest.importorskip("ismrmrd")
pytest.importorskip("twixtools")
import ismrmrd.xsd as X  # noqa: E402

import ambient_mri  # noqa: E402
from ambient_mri.cli import main  # noqa: E402
from ambient_mri.data import read_fastmri  # noqa: E402
from ambient_mri.errors import DataFileError  # noqa: E402
from data_tools.convert_cli import add_convert_parser  # noqa: E402
from data_tools.prepare import prepare_fastmri  # noqa: E402
from data_tools.raw import convert, convert_file, convert_ismrmrd, convert_twix, noise_whitener  # noqa: E402
from data_tools.simulate import simulate_coil_data  # noqa: E402
from helpers import blobs  # noqa: E402

GRE = Path(__file__).parent / "data" / "gre.dat"
S, C, h, W = 2, 4, 16, 16  # 2 slices x 4 coils; 32 x 16 k-space (2x readout oversampling)
H = 2 * h


def known_kspace(S=S, C=C, h=h, w=W, seed=0) -> np.ndarray:
    return simulate_coil_data(blobs(S, h, seed=seed)[:, :, :w], num_coils=C, oversample=2, seed=seed).kspace


def header_xml(Hh, Ww, recon, center, maximum, slices, trajectory="cartesian", z=1, accel=None) -> str:
    enc = X.encodingType(
        encodedSpace=X.encodingSpaceType(matrixSize=X.matrixSizeType(x=Hh, y=Ww, z=z),
                                         fieldOfView_mm=X.fieldOfViewMm(x=2.0 * Hh, y=Ww, z=5)),
        reconSpace=X.encodingSpaceType(matrixSize=X.matrixSizeType(x=recon[0], y=recon[1], z=1),
                                       fieldOfView_mm=X.fieldOfViewMm(x=recon[0], y=recon[1], z=5)),
        encodingLimits=X.encodingLimitsType(
            kspace_encoding_step_1=X.limitType(minimum=0, maximum=maximum, center=center),
            kspace_encoding_step_2=X.limitType(minimum=0, maximum=z - 1, center=z // 2),
            slice=X.limitType(minimum=0, maximum=slices - 1, center=0)),
        trajectory=X.trajectoryType(trajectory))
    if accel:
        enc.parallelImaging = X.parallelImagingType(
            accelerationFactor=X.accelerationFactorType(kspace_encoding_step_1=accel, kspace_encoding_step_2=1))
    hdr = X.ismrmrdHeader(
        experimentalConditions=X.experimentalConditionsType(H1resonanceFrequency_Hz=123000000),
        measurementInformation=X.measurementInformationType(patientPosition=X.patientPositionType("HFS"),
                                                            protocolName="AXT2_test", seriesDate="2024-05-06",
                                                            measurementID="45239_12345678_1"),
        subjectInformation=X.subjectInformationType(patientID="PATIENT-42", patientName="Doe^Jane"),
        studyInformation=X.studyInformationType(studyDate="2024-05-06", accessionNumber="ACC-9"),
        acquisitionSystemInformation=X.acquisitionSystemInformationType(systemVendor="SIEMENS",
                                                                        institutionName="St Example",
                                                                        deviceSerialNumber="45239"),
        encoding=[enc])
    return X.ToXML(hdr)


def write_ismrmrd(path, k, lines=None, rows=None, noise=None, averages=1, repetitions=1, dwell=5.0,
                  noise_dwell=5.0, trajectory="cartesian", z=1, reverse=False, accel=None, avg_offset=None):
    """Known k-space (S, C, H, W) as an ISMRMRD file: one readout per (slice, column in ``lines``), holding the
    samples ``rows`` (a slice of the readout), noise readouts first (``noise`` (C, M), 256 samples each)."""
    nS, nC, nH, nW = k.shape
    lines = range(nW) if lines is None else lines
    rows = rows or slice(0, nH)
    xml = header_xml(nH, nW, (nH // 2, nW), nW // 2, int(max(lines)), nS, trajectory, z, accel)
    path = Path(path)
    if path.exists():
        path.unlink()
    with ismrmrd.Dataset(str(path), "dataset", mode="w") as d:
        d.write_xml_header(xml)
        if noise is not None:
            for j in range(0, noise.shape[1], 256):
                a = ismrmrd.Acquisition.from_array(np.ascontiguousarray(noise[:, j:j + 256], np.complex64))
                a.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
                a.sample_time_us = noise_dwell
                d.append_acquisition(a)
        for rep in range(repetitions):
            for s in range(nS):
                for e in lines:
                    for av in range(averages):
                        data = k[s, :, rows, e]
                        if avg_offset is not None:
                            data = data + (1 if av % 2 == 0 else -1) * avg_offset
                        a = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data, np.complex64))
                        a.idx.kspace_encode_step_1 = int(e)
                        a.idx.slice = s
                        a.idx.average = av
                        a.idx.repetition = rep
                        a.center_sample = nH // 2 - (rows.start or 0)
                        a.sample_time_us = dwell
                        if reverse:
                            a.set_flag(ismrmrd.ACQ_IS_REVERSE)
                        d.append_acquisition(a)
    return path


def rss_reference(k: np.ndarray, size) -> np.ndarray:
    """fastMRI's target computed independently with numpy: RSS of the centred orthonormal ifft2, centre crop."""
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    rss = np.sqrt((np.abs(img) ** 2).sum(1))
    top, left = (k.shape[-2] - size[0]) // 2, (k.shape[-1] - size[1]) // 2
    return rss[:, top:top + size[0], left:left + size[1]]


def sha(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# ISMRMRD: known k-space in, the same k-space out
# --------------------------------------------------------------------------------------------------


def test_fully_sampled_ismrmrd_round_trips(tmp_path):
    k = known_kspace()
    src = write_ismrmrd(tmp_path / "full.h5", k)
    res = convert_ismrmrd(src, tmp_path / "out" / "full.h5")
    assert res.status == "converted" and res.fully_sampled and not res.prewhitened
    vol = read_fastmri(res.output)
    out = vol.kspace.read()
    assert out.dtype == np.complex64 and out.shape == (S, C, H, W)
    np.testing.assert_array_equal(out, k)  # readout -> rows, e1 -> columns, centre at (H//2, W//2): no change
    assert vol.mask is None and vol.target_key == "reconstruction_rss"
    assert vol.header["encoding_size"][:2] == (H, W) and vol.header["recon_size"][:2] == (h, W)
    assert (vol.header["padding_left"], vol.header["padding_right"]) == (0, W)
    target = vol.target.read()
    ref = rss_reference(k.astype(np.complex128), (h, W))
    assert target.shape == (S, h, W)
    np.testing.assert_allclose(target, ref, rtol=0, atol=1e-6 * ref.max())
    assert vol.attrs["max"] == pytest.approx(float(target.max()))
    assert vol.attrs["norm"] == pytest.approx(float(np.linalg.norm(target)), rel=1e-6)
    assert vol.attrs["acquisition"] == "AXT2_test"
    assert vol.attrs["patient_id"] == hashlib.sha256(b"PATIENT-42").hexdigest()  # a hash, never the raw ID
    with h5py.File(res.output, "r") as f:  # who, when and where stay behind; what was measured is kept
        xml = bytes(f["ismrmrd_header"][()]).decode()
    for secret in ("PATIENT-42", "Doe^Jane", "2024-05-06", "ACC-9", "St Example", "45239"):
        assert secret not in xml
    assert "AXT2_test" in xml and "SIEMENS" in xml and "HFS" in xml
    # a rerun with the same settings skips; other settings redo it
    assert convert_ismrmrd(src, res.output).status == "skipped"
    assert convert_ismrmrd(src, res.output, prewhiten=False).status == "converted"
    with h5py.File(res.output, "a") as f:  # an output missing a part is not proven complete: redone
        del f["reconstruction_rss"]
    assert convert_ismrmrd(src, res.output, prewhiten=False).status == "converted"
    assert read_fastmri(res.output).target is not None


def test_undersampled_ismrmrd_keeps_the_acquired_mask(tmp_path):
    k = known_kspace()
    keep = np.zeros(W, bool)
    keep[::4] = True
    keep[W // 2 - 2:W // 2 + 2] = True  # 4 ACS lines (6..9)
    src = write_ismrmrd(tmp_path / "under.h5", k, lines=np.flatnonzero(keep), accel=4)
    res = convert_file(src, tmp_path / "out" / "under.h5")
    assert res.status == "converted" and not res.fully_sampled
    vol = read_fastmri(res.output)
    np.testing.assert_array_equal(vol.mask, keep.astype(np.float32))
    np.testing.assert_array_equal(vol.kspace.read(), k * keep)
    assert vol.target is None  # as fastMRI test files
    assert vol.attrs["acceleration"] == 4 and vol.attrs["num_low_frequency"] == 4


def test_asymmetric_echo_and_partial_fourier_are_zero_filled_in_place(tmp_path):
    k = known_kspace()
    lines = range(3, W)             # partial Fourier: the first 3 phase-encode lines were never acquired
    rows = slice(6, H)              # asymmetric echo: readouts start 6 samples late (centre_sample = H//2 - 6)
    src = write_ismrmrd(tmp_path / "pf.h5", k, lines=lines, rows=rows)
    vol = read_fastmri(convert_ismrmrd(src, tmp_path / "out" / "pf.h5").output)
    expected = k.copy()
    expected[..., :6, :] = 0
    expected[..., :3] = 0
    np.testing.assert_array_equal(vol.kspace.read(), expected)
    assert vol.mask is None and vol.target is not None  # no gaps between the first and last line: fully sampled
    np.testing.assert_allclose(vol.target.read(), rss_reference(expected.astype(np.complex128), (h, W)),
                               atol=1e-6 * vol.target.read().max(), rtol=0)


def test_averages_are_averaged_and_repetitions_refused_by_name(tmp_path):
    k = known_kspace()
    src = write_ismrmrd(tmp_path / "avg.h5", k, averages=2, avg_offset=0.5 + 0.25j)
    res = convert_ismrmrd(src, tmp_path / "out" / "avg.h5")
    np.testing.assert_allclose(read_fastmri(res.output).kspace.read(), k, atol=1e-6)
    assert any("averaged" in n for n in res.notes)
    rep = write_ismrmrd(tmp_path / "rep.h5", k, repetitions=2)
    with pytest.raises(DataFileError, match=r"rep\.h5.*2 repetitions"):
        convert_ismrmrd(rep, tmp_path / "out" / "rep.h5")


def test_prewhitening_with_a_known_noise_covariance(tmp_path):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((C, C)) + 1j * rng.standard_normal((C, C)) + 3 * np.eye(C)  # Psi = A A^H, correlated

    def coloured(n, scale=1.0):
        z = (rng.standard_normal((C, n)) + 1j * rng.standard_normal((C, n))) / np.sqrt(2)
        return (scale * A @ z).astype(np.complex64)

    noise = coloured(256 * 80)
    # image readouts = pure noise, acquired at half the noise scan's dwell time -> twice its variance
    k = coloured(S * H * W, np.sqrt(2)).reshape(C, S, H, W).transpose(1, 0, 2, 3).copy()
    src = write_ismrmrd(tmp_path / "noise.h5", k, noise=noise, dwell=5.0, noise_dwell=10.0)
    res = convert_ismrmrd(src, tmp_path / "out" / "noise.h5")
    assert res.prewhitened
    out = read_fastmri(res.output).kspace.read()
    # exactly the documented transform: L^-1 k with L L^H = (X X^H / M) * (noise dwell / image dwell)
    white = noise_whitener(noise, 10.0 / 5.0)
    np.testing.assert_allclose(out, np.einsum("dc,schw->sdhw", white, k), rtol=0, atol=1e-4 * np.abs(out).max())
    cov = np.einsum("schw,sdhw->cd", out, out.conj()) / (S * H * W)
    np.testing.assert_allclose(cov, np.eye(C), atol=0.15)  # white, unit variance
    raw_cov = np.einsum("schw,sdhw->cd", k, k.conj()) / (S * H * W)
    assert np.abs(raw_cov - np.eye(C)).max() > 1  # ... and it was far from white before
    # --no-prewhiten keeps the data as acquired
    kept = convert_ismrmrd(src, tmp_path / "out2" / "noise.h5", prewhiten=False)
    assert not kept.prewhitened
    np.testing.assert_array_equal(read_fastmri(kept.output).kspace.read(), k)


def test_converted_file_goes_through_prepare_and_reconstruct(tmp_path, one_thread):
    k = known_kspace(S=2, C=4, h=32, w=32, seed=5)  # 64 x 32 k-space: 8 ACS lines at center_fraction 0.25
    raw = tmp_path / "raw"
    raw.mkdir()
    write_ismrmrd(raw / "vol.h5", k)
    summary = convert(raw, tmp_path / "fastmri")
    assert not summary.bad and len(summary.converted) == 1
    f = Path(summary.converted[0].output)
    prep = prepare_fastmri(f.parent, tmp_path / "prepared", acceleration=2, center_fraction=0.25, split="val",
                           progress=False)
    assert not prep.refused and len(prep.prepared) == 1, prep.report()
    target = read_fastmri(f).target.read()
    for method in ("zero_filled", "sense"):
        out = ambient_mri.reconstruct_file(f, tmp_path / method / "vol.h5", acceleration=2, center_fraction=0.25,
                                           method=method, progress=False)
        with h5py.File(out, "r") as hf:
            rec = hf["reconstruction"][()]
        assert rec.shape == target.shape and np.isfinite(rec).all()
        nrmse = np.linalg.norm(rec - target) / np.linalg.norm(target)
        assert nrmse < 0.5, (method, nrmse)


# --------------------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------------------


def test_bad_files_give_data_file_errors_naming_the_file(tmp_path):
    k = known_kspace(S=1)
    good = write_ismrmrd(tmp_path / "good.h5", k)
    data = good.read_bytes()
    cases = {
        "truncated.h5": lambda p: p.write_bytes(data[: len(data) // 2]),
        "garbage.h5": lambda p: p.write_bytes(os.urandom(3000)),
        "garbage.dat": lambda p: p.write_bytes(os.urandom(3000)),
        "hdf5_garbage.h5": lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 50),
        "radial.h5": lambda p: write_ismrmrd(p, k, trajectory="radial"),
        "three_d.h5": lambda p: write_ismrmrd(p, k, z=4),
        "epi.h5": lambda p: write_ismrmrd(p, k, reverse=True),
        "truncated.dat": lambda p: p.write_bytes(GRE.read_bytes()[:1_000_000]),
    }
    expect = {"radial.h5": "non-Cartesian", "three_d.h5": "3-D", "epi.h5": "reversed", "truncated.dat": "truncated",
              "garbage.dat": "twix", "truncated.h5": "HDF5"}
    for name, make in cases.items():
        p = tmp_path / name
        make(p)
        with pytest.raises(DataFileError) as info:
            convert_file(p, tmp_path / "out" / name)
        msg = str(info.value)
        assert str(p) in msg and "Traceback" not in msg, msg
        assert expect.get(name, "") in msg, msg
    fastmri_file = tmp_path / "fastmri.h5"  # an already converted file is not raw data
    convert_ismrmrd(good, fastmri_file)
    with pytest.raises(DataFileError, match="already a fastMRI file"):
        convert_file(fastmri_file, tmp_path / "out" / "again.h5")
    with pytest.raises(DataFileError, match="HDF5 file, not Siemens twix"):
        convert_twix(good, tmp_path / "out" / "x.h5")
    out = tmp_path / "out"
    assert not out.exists() or not [p.name for p in out.iterdir()]  # nothing written, no temporaries left


def test_folder_converts_the_good_files_and_lists_the_bad_one(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_ismrmrd(raw / "a.h5", known_kspace(S=1, seed=1))
    shutil.copy(GRE, raw / "gre.dat")
    (raw / "broken.dat").write_bytes(os.urandom(5000))
    (raw / "notes.txt").write_text("not raw data: ignored")
    parser = argparse.ArgumentParser()
    add_convert_parser(parser.add_subparsers())
    args = parser.parse_args(["convert", "--input", str(raw), "--output", str(tmp_path / "out"), "--quiet"])
    assert args.func(args) == 1  # a bad file: non-zero exit
    report = capsys.readouterr().out
    assert "2 file(s) converted" in report and "1 bad" in report
    assert f"{raw / 'broken.dat'}:" in report and "neither ISMRMRD" in report
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.h5", "gre.h5"]
    again = convert(raw, tmp_path / "out")  # rerun: the complete outputs are skipped
    assert len(again.skipped) == 2 and len(again.bad) == 1 and not again.converted
    redo = convert(raw, tmp_path / "out", prewhiten=False)  # other settings: redone
    assert len(redo.converted) == 2


def test_files_already_in_the_output_folder_are_never_overwritten_or_deleted(tmp_path):
    """A user's raw scan, a text file or a foreign HDF5 file named like an output were overwritten (the
    "not written by convert" refusal was swallowed), every hidden .tmp file there was deleted, and an input added
    later with the stem of an earlier one replaced that one's output."""
    raw, out = tmp_path / "raw", tmp_path / "scans"
    raw.mkdir()
    out.mkdir()
    write_ismrmrd(raw / "a.mrd", known_kspace(S=1, seed=2))
    write_ismrmrd(out / "a.h5", known_kspace(S=1, seed=1))                 # the user's raw scan
    (out / "b.h5").write_text("my notes")                                   # not HDF5 at all
    write_ismrmrd(raw / "b.mrd", known_kspace(S=1, seed=3))
    (out / ".thesis_draft.tmp").write_text("draft")
    (out / ".c.h5.k1ll3d.tmp").write_bytes(b"half of a killed write")     # this run's own leftover
    write_ismrmrd(raw / "c.mrd", known_kspace(S=1, seed=4))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".c.h5.k1ll3d.tmp"}
    summary = convert(raw, out)
    assert [Path(r.source).name for r in summary.bad] == ["a.mrd", "b.mrd"]
    assert "not written by convert" in summary.bad[0].reason and "not an HDF5 file" in summary.bad[1].reason
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in before} == before
    assert sorted(p.name for p in out.iterdir()) == [".thesis_draft.tmp", "a.h5", "b.h5", "c.h5"]
    # an output that is empty, or a truncated HDF5 file, is a damaged earlier output: redone
    (out / "c.h5").write_bytes((out / "c.h5").read_bytes()[:200])
    assert len(convert(raw / "c.mrd", out).converted) == 1 and read_fastmri(out / "c.h5").kspace.shape[0] == 1
    # c.h5 added later beside c.mrd: c.mrd's output is kept, the newcomer listed
    write_ismrmrd(tmp_path / "c.h5", known_kspace(S=1, seed=5))
    kept = (out / "c.h5").read_bytes()
    again = convert(tmp_path / "c.h5", out)
    assert "holds the conversion of another file, c.mrd" in again.bad[0].reason
    assert (out / "c.h5").read_bytes() == kept


def test_a_few_acquired_lines_are_not_a_fully_sampled_scan_and_bad_readouts_do_not_stop_a_folder(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    k = known_kspace(S=1)
    write_ismrmrd(raw / "one_line.h5", k, lines=[W // 2])
    write_ismrmrd(raw / "centre.h5", k, lines=range(W // 2 - 2, W // 2 + 2))
    write_ismrmrd(raw / "discard.h5", k)
    with h5py.File(raw / "discard.h5", "r+") as f:   # every sample discarded: an IndexError stopped the folder
        data = f["dataset"]["data"][:]
        data["head"]["discard_pre"][:] = 100
        f["dataset"]["data"][...] = data
    write_ismrmrd(raw / "zz_good.h5", k)
    summary = convert(raw, tmp_path / "out")
    by_name = {Path(r.source).name: r for r in summary.results}
    assert by_name["one_line.h5"].status == "converted" and not by_name["one_line.h5"].fully_sampled
    assert not by_name["centre.h5"].fully_sampled and by_name["centre.h5"].acceleration == W / 4
    assert by_name["zz_good.h5"].fully_sampled
    assert by_name["discard.h5"].status == "bad" and by_name["discard.h5"].reason
    with h5py.File(tmp_path / "out" / "centre.h5") as f:
        assert "reconstruction_rss" not in f and f["mask"][:].sum() == 4


def test_output_in_the_input_folder_is_refused_and_nothing_changes(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_ismrmrd(raw / "a.h5", known_kspace(S=1))
    shutil.copy(GRE, raw / "gre.dat")
    before = sha(raw)
    (tmp_path / "link").symlink_to(raw)
    for out in (raw, tmp_path / "link", raw / "."):
        with pytest.raises(DataFileError, match="input folder"):
            convert(raw, out)
    with pytest.raises(DataFileError, match="input folder"):
        convert(raw / "a.h5", raw)  # one file: its own folder is refused too
    assert main(["convert", "--input", str(raw), "--output", str(tmp_path / "link")]) == 2
    assert "input folder" in capsys.readouterr().err
    assert sha(raw) == before and sorted(p.name for p in raw.iterdir()) == ["a.h5", "gre.dat"]


# --------------------------------------------------------------------------------------------------
# A real Siemens twix file
# --------------------------------------------------------------------------------------------------


def test_real_twix_gre_phantom_converts_to_an_image(tmp_path):
    res = convert_twix(GRE, tmp_path / "gre.h5")
    assert res.status == "converted" and res.fully_sampled and res.format == "twix"
    vol = read_fastmri(res.output)
    k = vol.kspace.read()
    assert k.shape == (1, 2, 320, 160)  # 160 x 160 protocol, readout oversampling kept (2 x 160 rows)
    assert vol.header["recon_size"][:2] == (160, 160) and vol.header["encoding_size"][:2] == (320, 160)
    peak = np.unravel_index(np.abs(k).sum((0, 1)).argmax(), k.shape[-2:])
    assert abs(peak[0] - 160) <= 2 and abs(peak[1] - 80) <= 2  # k-space centre at (H//2, W//2)
    img = vol.target.read()
    assert img.shape == (1, 160, 160) and np.isfinite(img).all() and img.max() > 0
    # a phantom: bright object in the middle, dark corners
    assert img[0, 60:100, 60:100].mean() > 5 * img[0, :10, :10].mean()
    np.testing.assert_allclose(img, rss_reference(k.astype(np.complex128), (160, 160)), atol=1e-6 * img.max(), rtol=0)


def test_twix_noise_scan_prewhitens_and_missing_lines_give_a_mask(tmp_path):
    """The real GRE file rewritten with twixtools: a NOISEADJSCAN with known coil covariance added, every third
    line outside the centre removed."""
    import twixtools

    with contextlib.redirect_stdout(io.StringIO()):
        meas = twixtools.read_twix(str(GRE), verbose=False, keep_acqend=True, parse_pmu=False, parse_geometry=False)
    mdbs = [b.convert_to_local() for b in meas[-1]["mdb"]]
    image = [b for b in mdbs if b.is_image_scan()]
    rng = np.random.default_rng(0)
    A = np.array([[1.0, 0], [0.6 + 0.3j, 0.5]])
    noise = []
    for _ in range(40):
        nb = copy.deepcopy(image[0])
        nb.clear_all_flags()
        nb.add_flag("NOISEADJSCAN")
        z = (rng.standard_normal((2, 320)) + 1j * rng.standard_normal((2, 320))) / np.sqrt(2)
        nb.data[:] = (A @ z).astype(np.complex64)
        noise.append(nb)
    kept = [b for b in image if b.cLin % 3 != 1 or abs(b.cLin - 80) < 10]
    scan = dict(meas[-1], mdb=noise + kept + [b for b in mdbs if b.is_flag_set("ACQEND")])
    src = tmp_path / "synthetic.dat"
    with contextlib.redirect_stdout(io.StringIO()):
        twixtools.write_twix([scan], str(src))
    white = convert_twix(src, tmp_path / "out" / "white.h5")
    raw = convert_twix(src, tmp_path / "out" / "raw.h5", prewhiten=False)
    assert white.prewhitened and not raw.prewhitened and not white.fully_sampled
    vol, k0 = read_fastmri(white.output), read_fastmri(raw.output).kspace.read()
    expected_mask = np.zeros(160, np.float32)
    expected_mask[[b.cLin for b in kept]] = 1
    np.testing.assert_array_equal(vol.mask, expected_mask)
    assert vol.target is None and vol.attrs["num_low_frequency"] == 20
    assert vol.attrs["acceleration"] == pytest.approx(160 / expected_mask.sum(), abs=0.01)
    X = np.concatenate([b.data for b in noise], axis=1)
    np.testing.assert_allclose(vol.kspace.read(), np.einsum("dc,schw->sdhw", noise_whitener(X), k0),
                               rtol=0, atol=1e-6 * np.abs(k0).max())
    whitened_noise = noise_whitener(X) @ X
    np.testing.assert_allclose(whitened_noise @ whitened_noise.conj().T / X.shape[1], np.eye(2), atol=1e-6)


def test_sense_warns_when_the_coils_cannot_unalias_the_real_two_coil_scan(tmp_path):
    """R = 2 with 2 coils leaves about one sample per unknown pixel: CG-SENSE falls below zero-filled there even with
    maps from the fully-sampled scan (benchmarks/twix_maps.py), so reconstruct must say so; the same acceleration
    with 8 simulated coils must not warn."""
    import warnings

    from ambient_mri.masks import kspace_mask

    res = convert_twix(GRE, tmp_path / "gre.h5")
    k = read_fastmri(res.output).kspace.read()
    mask = kspace_mask("random", k.shape[-2:], 2, 20 / k.shape[-1], seed=(2, 11))[0]  # 92 of 160 columns
    with pytest.warns(UserWarning, match="cannot unalias"):
        out = ambient_mri.reconstruct(k * mask, mask, method="sense", lam=1e-2, iters=5, progress=False)
    assert 1.1 < out.extra["samples_per_unknown"] < 1.3  # more samples than unknowns, still too few
    sim = simulate_coil_data(blobs(1, 32), num_coils=8, oversample=2, seed=0)
    m8 = kspace_mask("random", sim.kspace.shape[-2:], 2, 0.25, seed=0)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ambient_mri.reconstruct(sim.kspace * m8, m8, method="sense", lam=1e-2, iters=5, progress=False)
    assert out.extra["samples_per_unknown"] > 2


def test_another_scan_of_the_same_name_size_and_mtime_is_converted_again(tmp_path):
    """The resume check read name, size and mtime only: tar, cp -p and rsync keep mtimes, so a different scan of
    the same size converted into the same folder was skipped as done and the output kept the first scan."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    write_ismrmrd(a / "scan.h5", known_kspace(S=1, seed=1))
    write_ismrmrd(b / "scan.h5", known_kspace(S=1, seed=2))
    assert (a / "scan.h5").stat().st_size == (b / "scan.h5").stat().st_size
    os.utime(a / "scan.h5", ns=(10**18, 10**18)), os.utime(b / "scan.h5", ns=(10**18, 10**18))
    out = tmp_path / "out"
    assert len(convert(a, out).converted) == 1
    assert len(convert(a, out).skipped) == 1          # the same scan again: kept
    assert len(convert(b, out).converted) == 1        # the other scan: converted again
    np.testing.assert_array_equal(read_fastmri(out / "scan.h5").kspace, read_fastmri(convert(b, tmp_path / "o2")
                                  .converted[0].output).kspace)


def test_a_scan_without_coils_and_a_twix_file_of_zeros_are_listed_as_bad(tmp_path):
    """Readouts with 0 active channels were converted into a file the package's own reader refuses; a twix file
    whose data blocks are zero kept twixtools on one spot forever, its memory growing ~40 MB/s (an audit)."""
    import struct

    raw = tmp_path / "raw"
    raw.mkdir()
    write_ismrmrd(raw / "nocoil.h5", np.zeros((1, 0, 16, 16), np.complex64))
    (raw / "zeros.dat").write_bytes((struct.pack("<II", 20000, 1) + b"Config").ljust(20000, b"\0") + bytes(100_000))
    shutil.copy(GRE, raw / "gre.dat")
    summary = convert(raw, tmp_path / "out")
    reasons = {Path(r.source).name: r.reason for r in summary.bad}
    assert "0 active channels" in reasons["nocoil.h5"]
    assert "block at byte 20000 has length 0" in reasons["zeros.dat"]
    assert [Path(r.source).name for r in summary.converted] == ["gre.dat"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gre.h5"]


def test_a_twix_end_marker_of_length_zero_is_the_end_not_corruption(tmp_path):
    """The zero-length guard refused a file whose ACQEND block has length 0, which twixtools and mapVBVD read as
    the normal end of the scan (a review)."""
    import struct

    import twixtools

    end = twixtools.read_twix(str(GRE), verbose=False, keep_acqend=True)[-1]["mdb"][-1]
    assert end.is_flag_set("ACQEND")
    data = bytearray(GRE.read_bytes())
    word, = struct.unpack_from("<I", data, end.mem_pos)
    struct.pack_into("<I", data, end.mem_pos, word >> 25 << 25)  # DMA length 0, flags kept
    (tmp_path / "gre0.dat").write_bytes(bytes(data))
    summary = convert(tmp_path / "gre0.dat", tmp_path / "out")
    assert [r.status for r in summary.results] == ["converted"], summary.report()


def test_an_empty_recon_matrix_an_all_zero_scan_and_header_warnings_are_named(tmp_path, capsys):
    """A recon matrix of 0 x 0 failed with numpy's "zero-size array to reduction operation"; an all-zero scan
    converted as a fully sampled file with an all-zero reference; xsdata's warning about a header value was printed
    from site-packages naming no file; --output out.h5 made a folder of that name and a run whose every file was bad
    left an empty output folder (an audit)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    k = known_kspace(S=1)
    zero = write_ismrmrd(raw / "zero.h5", np.zeros_like(k))
    recon0 = write_ismrmrd(raw / "recon0.h5", k)
    with h5py.File(recon0, "r+") as f:
        xml = f["dataset/xml"][0]
        xml = (xml if isinstance(xml, bytes) else xml.encode()).decode()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # xsdata on the test header's accessionNumber
            hdr = X.CreateFromDocument(xml)
        hdr.encoding[0].reconSpace.matrixSize.x = hdr.encoding[0].reconSpace.matrixSize.y = 0
        f["dataset/xml"][0] = X.ToXML(hdr)
    summary = convert(raw, tmp_path / "out")
    reasons = {Path(r.source).name: r.reason for r in summary.bad}
    assert "recon matrix is 0 x 0" in reasons["recon0.h5"], reasons
    assert "every acquired sample is zero" in reasons["zero.h5"], reasons
    assert not (tmp_path / "out").exists()  # nothing converted: no empty folder left behind
    zero.unlink()
    recon0.unlink()
    odd = write_ismrmrd(raw / "odd.h5", k)
    with h5py.File(odd, "r+") as f:
        xml = f["dataset/xml"][0]
        xml = (xml if isinstance(xml, bytes) else xml.encode()).decode()
        f["dataset/xml"][0] = xml.replace("<accessionNumber>ACC-9</accessionNumber>",
                                          "<accessionNumber>not-a-number</accessionNumber>")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the header's warning is a note of the file's result, not a raw warning
        got = convert_file(odd, tmp_path / "out" / "odd.h5")
    assert got.status == "converted" and any("XML header" in n for n in got.notes), got.notes
    assert not any("\n" in n for n in got.notes)  # one line of the report
    assert main(["convert", "--input", str(odd), "--output", str(tmp_path / "conv.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ambient-mri convert: error:") and "not a file name" in err, err
    assert not (tmp_path / "conv.h5").exists()
