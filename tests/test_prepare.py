"""Preparation pipeline (fastMRI files -> prepared volumes), PreparedSlices, and the demo builder."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ambient_mri.data.calibration import row_crop
from ambient_mri.data.prepared import FORMAT, PreparedSlices
from ambient_mri.errors import AmbientMRIError, DataFileError
from ambient_mri.masks import kspace_mask
from ambient_mri.operators import MultiCoilMRI
from data_tools.prepare import PrepareOptions, prepare_fastmri, slice_masks
from data_tools.prepare_cli import add_prepare_parser
from data_tools.simulate import make_fastmri_volume, write_fastmri
from helpers import blobs

S, C, h, W = 3, 4, 32, 32  # 3 slices x 4 coils; 64 x 32 k-space (2x readout oversampling), 32 x 32 images
R, CF = 2, 0.25            # 8 ACS lines: ESPIRiT needs >= 6 calibration lines
OPTS = dict(acceleration=R, center_fraction=CF, progress=False)


def _simulate(path: Path, seed: int, **kw):
    return make_fastmri_volume(path, blobs(S, h, seed=seed), num_coils=C, noise_std=0.002, seed=seed, **kw)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Two good multi-coil volumes and one corrupt file."""
    d = tmp_path_factory.mktemp("raw")
    _simulate(d / "vol_a.h5", 1)
    _simulate(d / "vol_b.h5", 2)
    (d / "corrupt.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 50)
    return d


@pytest.fixture(scope="module")
def good(raw, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("good")
    for name in ("vol_a.h5", "vol_b.h5"):
        shutil.copy(raw / name, d / name)
    return d


@pytest.fixture(scope="module")
def val_full(good, tmp_path_factory) -> Path:
    """The good volumes prepared as a fully sampled (R=1) validation split, with references."""
    out = tmp_path_factory.mktemp("val_full")
    s = prepare_fastmri(good, out, split="val", acceleration=1, center_fraction=CF, progress=False)
    assert not s.refused, s.report()
    return out


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _datasets(path: Path) -> dict:
    with h5py.File(path, "r") as hf:
        return {k: hf[k][()] for k in hf}


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------


def test_prepare_train_files_workers_resume_and_refusals(raw, tmp_path):
    out = tmp_path / "out"
    summary = prepare_fastmri(raw, out, workers=2, **OPTS)
    assert [Path(r.source).name for r in summary.refused] == ["corrupt.h5"]
    assert "HDF5" in summary.refused[0].reason
    assert len(summary.prepared) == 2 and "corrupt.h5" in summary.report()
    assert sorted(p.name for p in (out / "train").iterdir()) == ["vol_a.h5", "vol_b.h5"]
    assert not (out / "train_reference").exists() and not _temps(out)

    for name in ("vol_a.h5", "vol_b.h5"):
        path = out / "train" / name
        d = _datasets(path)
        mask = kspace_mask("random", (1, W), R, CF, seed=name).reshape(W)  # fastMRI's per-volume seed
        lines = np.flatnonzero(mask)
        assert d["kspace"].shape == (S, C, h, len(lines)) and d["kspace"].dtype == np.complex64
        assert (d["lines"] == lines).all() and d["lines"].dtype == np.int32
        assert (d["mask"] == mask).all() and d["mask"].dtype == np.float32
        # exactly the acquired columns of the readout-cropped k-space
        from ambient_mri.metrics import center_crop
        from ambient_mri.operators import fft2c, ifft2c

        with h5py.File(raw / name) as hf:
            full = hf["kspace"][()]
        expect = fft2c(np.ascontiguousarray(center_crop(ifft2c(full), (h, W))))[..., lines]
        np.testing.assert_allclose(d["kspace"], expect, atol=1e-5 * np.abs(expect).max())
        assert d["maps"].shape == (S, C, h, W) and np.isfinite(d["maps"]).all()
        assert np.isfinite(d["scale"]).all() and (d["scale"] > 0).all()
        with h5py.File(path) as hf:
            a = hf.attrs
            assert a["format"] == FORMAT and a["width"] == W and list(a["image_shape"]) == [h, W]
            assert a["mask_kind"] == "random" and a["acceleration"] == R and a["coils_original"] == C
            assert a["achieved_acceleration"] == pytest.approx(W / len(lines))
            assert a["acs_lines"] == 8 and "tuple(map(ord" in a["seed_rule"]

    # A killed run resumes: done files are skipped, a missing one is redone, stale temporaries go away.
    mtime = (out / "train" / "vol_a.h5").stat().st_mtime_ns
    (out / "train" / "vol_b.h5").unlink()
    (out / "train" / ".vol_b.h5.abc123.tmp").write_bytes(b"half a file")
    again = prepare_fastmri(raw, out, **OPTS)
    assert [Path(r.source).name for r in again.skipped] == ["vol_a.h5"]
    assert [Path(r.source).name for r in again.prepared] == ["vol_b.h5"]
    assert (out / "train" / "vol_a.h5").stat().st_mtime_ns == mtime and not _temps(out)
    # ... and one damaged since (a dataset gone) is redone, not counted as done
    with h5py.File(out / "train" / "vol_a.h5", "a") as hf:
        del hf["maps"]
    again = prepare_fastmri(raw, out, **OPTS)
    assert [Path(r.source).name for r in again.prepared] == ["vol_a.h5"]
    assert [Path(r.source).name for r in again.skipped] == ["vol_b.h5"]
    assert _datasets(out / "train" / "vol_a.h5")["maps"].shape == (S, C, h, W)
    with h5py.File(out / "train" / "vol_a.h5", "a") as hf:  # maps of one coil: training would refuse the file
        maps = hf["maps"][:, :1]
        del hf["maps"]
        hf["maps"] = maps
    assert [Path(r.source).name for r in prepare_fastmri(raw, out, **OPTS).prepared] == ["vol_a.h5"]

    # Other settings into the same folder: refused, not silently mixed.
    other = prepare_fastmri(raw, out, acceleration=4, center_fraction=CF, progress=False)
    reasons = {Path(r.source).name: r.reason for r in other.refused}
    assert sorted(reasons) == ["corrupt.h5", "vol_a.h5", "vol_b.h5"] and "other settings" in reasons["vol_a.h5"]


@pytest.mark.parametrize("variant", ["default", "compressed_per_slice"])
def test_no_fully_sampled_data_reaches_training(raw, tmp_path, variant):
    """Two files that differ only in non-acquired columns must give byte-identical prepared files."""
    opts = dict(OPTS, coils=2, per_slice_mask=True) if variant != "default" else OPTS
    name = "vol_a.h5"
    with h5py.File(raw / name) as hf:
        k = hf["kspace"][()]
        target = hf["reconstruction_rss"][()]
    masks, _, _ = slice_masks(name, W, S, PrepareOptions(acceleration=R, center_fraction=CF,
                                                         per_slice_mask=opts.get("per_slice_mask", False)))
    off = (masks == 0)[:, None, None, :]                            # (S, 1, 1, W) non-acquired columns
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)).astype(np.complex64)
    k2 = np.where(off, 3 * k + np.abs(k).max() * noise, k).astype(np.complex64)
    assert not np.array_equal(k, k2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(raw / name, tmp_path / "a" / name)
    write_fastmri(tmp_path / "b" / name, k2, target=target, recon_size=(h, W))

    for src in ("a", "b"):
        s = prepare_fastmri(tmp_path / src, tmp_path / f"out_{src}", **opts)
        assert len(s.prepared) == 1, s.report()
    pa, pb = (tmp_path / f"out_{x}" / "train" / name for x in "ab")
    da, db = _datasets(pa), _datasets(pb)
    assert sorted(da) == sorted(db) == ["kspace", "lines", "maps", "mask", "scale"]
    for key in da:
        assert da[key].tobytes() == db[key].tobytes(), f"{key} depends on non-acquired k-space"
    with h5py.File(pa) as fa, h5py.File(pb) as fb:
        for key in fa.attrs:
            if key not in ("source", "source_fingerprint"):  # the input file, not what prepare read
                assert np.array_equal(fa.attrs[key], fb.attrs[key]), key
    assert not (tmp_path / "out_a" / "train_reference").exists()

    # Control: anything that does read the fully sampled data sees the difference (so this test can fail).
    for src in ("a", "b"):
        prepare_fastmri(tmp_path / src, tmp_path / f"ref_{src}", split="val", **opts)
    ra, rb = (_datasets(tmp_path / f"ref_{x}" / "val_reference" / name) for x in "ab")
    assert not np.allclose(ra["image"], rb["image"], atol=1e-3)


def test_prospective_test_file_keeps_its_mask(tmp_path):
    mask = np.zeros(W, np.float32)
    mask[12:20] = 1
    mask[::5] = 1
    _simulate(tmp_path / "raw" / "test_vol.h5", 5, mask=mask)
    s = prepare_fastmri(tmp_path / "raw", tmp_path / "out", split="test", **OPTS)
    assert len(s.prepared) == 1, s.report()
    d = _datasets(tmp_path / "out" / "test" / "test_vol.h5")
    assert (d["mask"] == mask).all() and (d["lines"][0] == np.flatnonzero(mask)).all()
    assert not (tmp_path / "out" / "test_reference").exists()  # no target, no fully sampled data


def test_val_reference_is_separate(val_full, good):
    with h5py.File(val_full / "val_reference" / "vol_a.h5") as ref, h5py.File(good / "vol_a.h5") as src:
        assert (ref["reconstruction_rss"][()] == src["reconstruction_rss"][()]).all()
        assert ref["image"].shape == (S, h, W) and ref["image"].dtype == np.complex64
    with h5py.File(val_full / "val" / "vol_a.h5") as hf:
        assert "reconstruction_rss" not in hf and "image" not in hf
        assert hf["mask"][()].all() and hf.attrs["acceleration"] == 1


# --------------------------------------------------------------------------------------------------
# PreparedSlices
# --------------------------------------------------------------------------------------------------


def test_prepared_slices_items_and_adjoint(val_full):
    ds = PreparedSlices(val_full / "val")
    assert len(ds) == 2 * S
    info = ds.info()
    assert info["image_shape"] == [h, W] and info["coils"] == C and info["slices"] == 2 * S
    assert info["achieved_acceleration"] == 1 and "99th percentile" in info["scale_rule"]
    assert json.loads(json.dumps(info)) == info  # plain values, fit for the model file
    for i in range(len(ds)):
        it = ds[i]
        assert it["y"].shape == (C, h, W) and it["y"].dtype == torch.complex64
        assert it["mask"].shape == (1, 1, W) and it["mask"].dtype == torch.float32
        assert it["maps"].shape == (C, h, W) and it["maps"].dtype == torch.complex64
        assert it["sigma_n"].shape == () and float(it["sigma_n"]) == 0 and it["index"] == i
        path, s = ds.locate(i)
        with h5py.File(Path(path).parent.parent / "val_reference" / Path(path).name) as ref:
            x = ref["image"][s]
        zf = MultiCoilMRI(it["maps"][None], it["mask"][None]).adjoint(it["y"][None])[0].numpy()
        corr = abs(np.vdot(zf, x)) / np.linalg.norm(zf) / np.linalg.norm(x)
        assert corr > 0.9
        assert 0.3 < np.percentile(np.abs(zf), 99) < 3  # normalised by the scale


def test_prepared_slices_undersampled_dataloader(raw, tmp_path):
    prepare_fastmri(raw, tmp_path, per_slice_mask=True, **OPTS)
    ds = PreparedSlices(tmp_path / "train", limit=5)
    assert len(ds) == 5 and ds.info()["slices"] == 5
    for i in range(len(ds)):
        it = ds[i]
        off = it["mask"].reshape(-1) == 0
        assert off.any() and (it["y"][..., off] == 0).all() and (it["y"][..., ~off] != 0).any()
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    assert [b["y"].shape[0] for b in batches] == [2, 2, 1]
    assert batches[0]["mask"].shape == (2, 1, 1, W) and batches[0]["maps"].shape == (2, C, h, W)
    torch.testing.assert_close(batches[1]["y"][1], ds[3]["y"])


def test_prepared_slices_never_opens_reference(val_full, monkeypatch):
    opened = []
    real = h5py.File

    def spy(name, *args, **kw):
        opened.append(str(name))
        return real(name, *args, **kw)

    monkeypatch.setattr(h5py, "File", spy)
    ds = PreparedSlices(val_full / "val")
    for i in range(len(ds)):
        ds[i]
    ds.info()
    assert opened and all("_reference" not in p for p in opened)


def test_corrupt_file_mid_run_stops_with_file_and_slice(val_full, tmp_path):
    shutil.copytree(val_full / "val", tmp_path / "val")
    ds = PreparedSlices(tmp_path / "val")
    path = tmp_path / "val" / "vol_b.h5"
    with h5py.File(path, "r+") as hf:
        k = hf["kspace"][1]
        k[0, 0, 0] = np.nan
        hf["kspace"][1] = k
    with pytest.raises(DataFileError, match=r"vol_b\.h5: slice 1: .*NaN"):
        ds[S + 1]
    ds[S]  # the other slices still read
    with h5py.File(path, "r+") as hf:  # maps zeroed (an audit): A = 0, a loss of zero whatever the network does
        hf["maps"][0] = np.zeros_like(hf["maps"][0])
    with pytest.raises(DataFileError, match=r"vol_b\.h5: slice 0: maps are all zero"):
        ds[S]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated while training
    with pytest.raises(DataFileError, match=r"vol_b\.h5: slice 0: cannot be read"):
        ds[S]


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def test_bad_input(tmp_path, good):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AmbientMRIError, match="no .h5 files"):
        prepare_fastmri(tmp_path / "empty", tmp_path / "out", **OPTS)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(AmbientMRIError, match="not writable"):
        prepare_fastmri(good, tmp_path / "a_file" / "out", **OPTS)
    with pytest.raises(AmbientMRIError, match="--mask"):
        prepare_fastmri(good, tmp_path / "out", mask="poisson2d", **OPTS)

    with pytest.raises(DataFileError, match="ambient-mri prepare"):
        PreparedSlices(tmp_path / "empty")
    with pytest.raises(DataFileError, match="ambient-mri prepare"):
        PreparedSlices(tmp_path / "missing")
    with pytest.raises(DataFileError, match=r"a_file: a file, not a folder: .*give its folder"):
        PreparedSlices(tmp_path / "a_file")
    with pytest.raises(DataFileError, match=r"vol_a\.h5: not a prepared file"):
        PreparedSlices(good)  # official fastMRI files, not prepared ones


def test_inconsistent_image_shapes(good, tmp_path):
    prepare_fastmri(good, tmp_path / "x", limit=1, **OPTS)
    prepare_fastmri(good, tmp_path / "y", image_size=(24, 24), **OPTS)  # column crop: mask on the 24-wide grid
    with h5py.File(tmp_path / "y" / "train" / "vol_b.h5") as hf:
        assert hf["maps"].shape == (S, C, 24, 24) and hf.attrs["width"] == 24
    shutil.copy(tmp_path / "y" / "train" / "vol_b.h5", tmp_path / "x" / "train" / "vol_b.h5")
    with pytest.raises(DataFileError, match="vol_b.h5: image shape"):
        PreparedSlices(tmp_path / "x" / "train")


def test_training_folder_names_every_bad_file(good, tmp_path):
    prepare_fastmri(good, tmp_path / "x", limit=1, **OPTS)
    prepare_fastmri(good, tmp_path / "y", image_size=(24, 24), **OPTS)
    folder = tmp_path / "x" / "train"
    shutil.copy(tmp_path / "y" / "train" / "vol_b.h5", folder / "vol_b.h5")  # other image rows
    shutil.copy(good / "vol_a.h5", folder / "vol_c.h5")  # an official fastMRI file, not a prepared one
    (folder / "vol_d.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataFileError) as err:
        PreparedSlices(folder)
    msg = str(err.value)
    assert msg.startswith(f"{folder}: 3 of the files read cannot be used")
    assert "vol_b.h5: image shape" in msg and "vol_c.h5: not a prepared file" in msg
    assert "vol_d.h5: cannot open as HDF5" in msg and "vol_a.h5:" not in msg


# --------------------------------------------------------------------------------------------------
# CLI and demo
# --------------------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    add_prepare_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


def test_cli_prepare_fastmri(raw, tmp_path, capsys):
    rc = _cli(["prepare", "fastmri", "--input", str(raw), "--output", str(tmp_path), "--acceleration", str(R),
               "--center-fraction", str(CF), "--coils", "3", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1 and "2 file(s) prepared" in out and "corrupt.h5" in out  # one refused file -> exit 1
    assert PreparedSlices(tmp_path / "train").coils == 3
    assert _cli(["prepare", "fastmri", "--input", str(tmp_path / "nothing"), "--output", str(tmp_path)]) == 2


def test_demo_tiny(tmp_path, capsys):
    rc = _cli(["prepare", "demo", "--output", str(tmp_path), "--size", "32", "--coils", "4", "--slices", "10"])
    assert rc == 0, capsys.readouterr()
    for sub in ("raw/train", "raw/val", "prepared_r4/train", "prepared_r4/val", "prepared_r4/val_reference",
                "prepared_r8/val", "prepared_r8/val_reference", "prepared_full/train"):
        assert list((tmp_path / sub).glob("*.h5")), sub
    assert not (tmp_path / "prepared_r4" / "train_reference").exists()
    train = PreparedSlices(tmp_path / "prepared_r4" / "train")
    full = PreparedSlices(tmp_path / "prepared_full" / "train")
    val = PreparedSlices(tmp_path / "prepared_r8" / "val")
    assert len(train) == len(full) == 8 and len(val) == 2 and train.image_shape == (32, 32)
    assert full.info()["achieved_acceleration"] == 1 and train.info()["mask"]["per_slice"] is True
    assert (tmp_path / "demo.json").is_file()
    os.utime(tmp_path / "demo.json")  # rerun reuses everything
    from data_tools.demo import build_demo

    paths = build_demo(tmp_path, size=32, coils=4, slices=10)
    assert paths["r4_train"] == tmp_path / "prepared_r4" / "train"
    # a user's file at a demo volume's name was taken for a damaged volume and written over (an audit); a user's
    # whole HDF5 file there would have been kept and trained on: both refused; a truncated volume is redone
    own = tmp_path / "raw" / "val" / "demo_val_00.h5"
    data = own.read_bytes()
    for theirs in (b"mine", None):
        if theirs is None:
            with h5py.File(own, "w") as f:
                f["kspace"], f["reconstruction_rss"] = np.zeros((1, 2, 4, 4), np.complex64), np.zeros((1, 4, 4))
        else:
            own.write_bytes(theirs)
        before = own.read_bytes()
        with pytest.raises(AmbientMRIError, match="demo_val_00.h5: exists and (is not an HDF5 file|was not written)"):
            build_demo(tmp_path, size=32, coils=4, slices=10)
        assert own.read_bytes() == before
    own.write_bytes(data[: len(data) // 2])
    build_demo(tmp_path, size=32, coils=4, slices=10)
    assert own.read_bytes() == data
    # a killed build's temporaries are cleared by the next one (they stayed for ever); nobody else's are
    (own.parent / ".demo_val_00.h5.k1ll3d.tmp").write_bytes(b"half")
    (tmp_path / ".demo.json.k1ll3d.tmp").write_text("half")
    (own.parent / ".notes.tmp").write_text("mine")
    from ambient_mri.files import run_lock

    with run_lock(tmp_path, "prepare demo elsewhere"), pytest.raises(AmbientMRIError, match="another run is writing"):
        build_demo(tmp_path, size=32, coils=4, slices=10)
    build_demo(tmp_path, size=32, coils=4, slices=10)
    assert sorted(p.name for p in tmp_path.rglob(".*.tmp")) == [".notes.tmp"]


def test_row_crop_matches_2d_crop():
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((2, 16, 8)) + 1j * rng.standard_normal((2, 16, 8))).astype(np.complex64)
    from ambient_mri.metrics import center_crop
    from ambient_mri.operators import fft2c, ifft2c

    expect = fft2c(np.ascontiguousarray(center_crop(ifft2c(k), (6, 8))))
    np.testing.assert_allclose(row_crop(k, 6), expect, atol=1e-5)


def test_calibration_volume_uses_slices_of_neither_split(tmp_path):
    """Sampler settings are tuned on slices that neither train nor score: disjoint from both demo splits and at
    least VAL_SPACING from every validation slice; the volume is an official-layout file, fully sampled."""
    from ambient_mri.data import read_fastmri
    from data_tools.demo import VAL_SPACING, build_calibration, demo_calibration_slices, demo_slices

    for n in (12, 40, 90):
        ids = demo_calibration_slices(n)
        train, val = demo_slices(n)
        assert len(ids) == 8 and len(set(ids)) == 8
        assert not set(ids) & (set(train) | set(val))
        assert min(abs(a - b) for a in ids for b in val) >= VAL_SPACING
    folder = build_calibration(tmp_path, size=32, coils=2, slices=12)
    vol = read_fastmri(folder / "demo_calib_00.h5")
    assert vol.kspace.shape == (8, 2, 64, 32) and (np.abs(vol.kspace) > 0).all()
    with h5py.File(folder / "demo_calib_00.h5", "r") as f:
        assert list(f.attrs["mni152_slices"]) == demo_calibration_slices(12)


@pytest.mark.parametrize("std", [0.002, 0.02])
def test_noise_std_reads_the_noise_level_from_the_readout_oversampling(std):
    """data.prepared.noise_std on the acquired columns of 2x-oversampled 8-coil k-space: the simulated complex
    noise level to within 5%, whatever the acceleration; noise-free data give (almost) zero."""
    from ambient_mri.data.calibration import noise_std
    from ambient_mri.masks import kspace_mask
    from data_tools.simulate import simulate_coil_kspace
    from helpers import blobs

    k = simulate_coil_kspace(blobs(1, 32, seed=2), num_coils=8, oversample=2, noise_std=std, seed=1)[0]
    for R in (1, 4):
        cols = np.flatnonzero(kspace_mask("random", k.shape[-2:], R, 0.25, seed=0)[0]) if R > 1 else slice(None)
        assert abs(noise_std(k[..., cols]) / std - 1) < 0.05
    clean = simulate_coil_kspace(blobs(1, 32, seed=2), num_coils=8, oversample=2, noise_std=0.0, seed=1)[0]
    assert noise_std(clean) < 1e-3 * std


def test_a_worker_that_dies_is_listed_instead_of_hanging_the_run():
    """multiprocessing.Pool waited forever for the file of a worker the out-of-memory killer ended."""
    from tqdm import tqdm

    from data_tools.prepare import _in_workers
    from helpers import job_that_dies_on_bad

    jobs = [(f"/data/{name}.h5", "/out", None) for name in ("a", "bad", "c")]
    with tqdm(total=3, disable=True) as bar:
        results = _in_workers(jobs, 2, bar, job_that_dies_on_bad)
    by = {r.source: r for r in results}
    assert sorted(by) == sorted(j[0] for j in jobs)
    assert by["/data/bad.h5"].status == "refused" and "a worker process died" in by["/data/bad.h5"].reason


def test_prepare_workers_end_when_the_run_is_killed(tmp_path):
    """Workers of a killed prepare kept writing outputs without the folder's lock, racing the rerun."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    child = ("from data_tools.prepare import _die_with_parent; _die_with_parent(); import time; "
             "print('ready', flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               f"p = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
                               "print(p.pid, flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True,
                              cwd=str(root), env={**os.environ, "PYTHONPATH": str(root)})
    worker = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "ready"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    def alive(pid: int) -> bool:  # a zombie (dead, not yet reaped by init) counts as dead
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    for _ in range(50):
        if not alive(worker):
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived its killed parent")


def test_ctrl_c_stops_a_run_with_workers_at_once(tmp_path):
    """After the switch to ProcessPoolExecutor, Ctrl-C let the workers take every queued file (36 s for 40 files
    where Pool stopped in under a second), and a second Ctrl-C hung in multiprocessing's exit."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    script = ("from tqdm import tqdm\nfrom data_tools.prepare import _in_workers\nfrom helpers import job_that_sleeps\n"
              "print('start', flush=True)\n"
              "_in_workers([(f'/d/{i}.h5', '/o', None) for i in range(40)], 2, tqdm(disable=True), job_that_sleeps)\n")
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=str(root), env={**os.environ, "PYTHONPATH": f"{root}:{root / 'tests'}"},
                         start_new_session=True)
    assert p.stdout.readline().strip() == "start"
    time.sleep(3)   # the workers are up and busy
    tic = time.time()
    os.killpg(p.pid, signal.SIGINT)   # what a terminal's Ctrl-C sends: the whole process group
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError("the run went on after Ctrl-C") from None
    assert time.time() - tic < 10 and "KeyboardInterrupt" in p.stderr.read()
