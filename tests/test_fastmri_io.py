"""fastMRI HDF5 I/O: the writer/simulator (data_tools) against the lazy reader and against fastmri."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import fastmri
import h5py
import numpy as np
import pytest
import torch
from fastmri.data.mri_data import SliceDataset
from fastmri.data.transforms import center_crop

from ambient_mri.data import FastMRIVolume, read_fastmri
from ambient_mri.errors import AmbientMRIError, DataFileError
from ambient_mri.operators import fft2c
from data_tools.simulate import (
    make_fastmri_volume,
    rss_target,
    simulate_coil_data,
    simulate_coil_kspace,
    write_fastmri,
)

S, C, h, w = 4, 4, 64, 32  # small volumes: 4 slices x 4 coils, 64 x 32 images, 128 x 32 k-space


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """(S, h, w) smooth-ish positive magnitude images."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    blob = np.exp(-(x**2 + y**2) * 2)
    return (blob[None] * (0.5 + rng.random((S, h, w)))).astype(np.float32)


@pytest.fixture(scope="module")
def kspace_mc(images) -> np.ndarray:
    return simulate_coil_kspace(images, num_coils=C, noise_std=0.01, seed=3)


def good_file(tmp_path: Path, kspace: np.ndarray, name: str = "vol.h5", **kw) -> Path:
    return write_fastmri(tmp_path / name, kspace, **kw)


# --------------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------------


def _equispaced_mask(width: int, every: int = 5, acs: int = 6) -> np.ndarray:
    m = np.zeros(width, np.float32)
    m[::every] = 1
    m[(width - acs + 1) // 2 : (width - acs + 1) // 2 + acs] = 1
    return m


@pytest.mark.parametrize("case", ["multicoil", "singlecoil", "padded", "testfile"])
def test_round_trip(tmp_path, images, case):
    coils = None if case == "singlecoil" else C
    k = simulate_coil_kspace(images, num_coils=coils, noise_std=0.01, seed=2)
    pad = 3 if case == "padded" else 0
    mask = _equispaced_mask(w) if case == "testfile" else None
    path = write_fastmri(
        tmp_path / f"{case}.h5",
        k,
        mask=mask,
        pad_columns=pad,
        recon_size=(h, w),
        acquisition="CORPD_FBK",
        attrs={"extra": 7},
    )
    vol = read_fastmri(path)

    expected_k = k.copy()
    if pad:
        expected_k[..., :pad] = 0
        expected_k[..., w - pad :] = 0
    if mask is not None:
        expected_k = expected_k * mask
    assert vol.kspace.shape == k.shape and vol.kspace.dtype == np.complex64
    np.testing.assert_array_equal(np.asarray(vol.kspace), expected_k)
    assert vol.multicoil == (coils is not None) and vol.num_slices == S and vol.num_coils == coils

    hd = vol.header
    assert hd["from_xml"] and hd["encoding_size"] == (2 * h, w, 1) and hd["recon_size"] == (h, w, 1)
    assert (hd["padding_left"], hd["padding_right"]) == (pad, w - pad)
    assert vol.attrs["acquisition"] == "CORPD_FBK" and vol.attrs["extra"] == 7
    assert isinstance(vol.attrs["patient_id"], str) and vol.attrs["patient_id"]

    if mask is None:
        assert vol.mask is None
        assert vol.target_key == ("reconstruction_rss" if coils else "reconstruction_esc")
        target = np.asarray(vol.target)
        np.testing.assert_array_equal(target, rss_target(expected_k, (h, w)))
        assert vol.attrs["max"] == pytest.approx(float(target.max()))
        assert vol.attrs["norm"] == pytest.approx(float(np.linalg.norm(target)), rel=1e-6)
        np.testing.assert_array_equal(vol.target_slice(-1), target[-1])
    else:
        assert vol.target is None and vol.target_key is None and vol.target_slice(0) is None
        np.testing.assert_array_equal(vol.mask, mask)
        assert vol.mask.dtype == np.float32
        assert vol.attrs["acceleration"] == round(w / mask.sum()) and vol.attrs["num_low_frequency"] == 6
        assert "max" not in vol.attrs and "norm" not in vol.attrs


def test_official_datasets_and_types(tmp_path, kspace_mc):
    path = good_file(tmp_path, kspace_mc)
    with h5py.File(path, "r") as hf:
        assert set(hf.keys()) == {"kspace", "reconstruction_rss", "ismrmrd_header"}
        assert hf["kspace"].dtype == np.complex64 and hf["reconstruction_rss"].dtype == np.float32
        assert isinstance(hf["ismrmrd_header"][()], bytes)
        assert hf["reconstruction_rss"].shape == (S, w, w)  # default recon size: (min(H, W), W)
        assert set(hf.attrs) == {"max", "norm", "acquisition", "patient_id"}
    assert not [p for p in tmp_path.iterdir() if p.name != path.name]  # atomic write leaves no temp file


def test_fastmri_slicedataset_reads_our_files(tmp_path, kspace_mc):
    """fastMRI's own loader agrees with ours on padding, sizes, k-space and target."""
    write_fastmri(tmp_path / "a.h5", kspace_mc, pad_columns=2, recon_size=(h, w))
    ds = SliceDataset(tmp_path, challenge="multicoil")
    assert len(ds) == S
    meta = ds.raw_samples[0].metadata
    vol = read_fastmri(tmp_path / "a.h5")
    for key in ("padding_left", "padding_right", "encoding_size", "recon_size"):
        assert meta[key] == vol.header[key]
    kspace, mask, target, attrs, fname, slice_num = ds[1]
    assert mask is None and fname == "a.h5" and slice_num == 1
    np.testing.assert_array_equal(kspace, vol.slice(1))
    np.testing.assert_array_equal(target, vol.target[1])


# --------------------------------------------------------------------------------------------------
# Target and simulation correctness
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coils", [2, None])
def test_target_equals_fastmri_computation(tmp_path, coils):
    """Full size (2 slices, 640 x 320 k-space): target = fastmri.rss/complex_abs + center_crop."""
    rng = np.random.default_rng(5)
    imgs = rng.random((2, 320, 320)).astype(np.float32)
    k = simulate_coil_kspace(imgs, num_coils=coils, noise_std=0.05, seed=1)
    assert k.shape == ((2, coils, 640, 320) if coils else (2, 640, 320))
    vol = read_fastmri(write_fastmri(tmp_path / "full.h5", k))

    coil_imgs = fastmri.complex_abs(fastmri.ifft2c(torch.view_as_real(torch.from_numpy(k))))
    ref = fastmri.rss(coil_imgs, dim=1) if coils else coil_imgs
    ref = center_crop(ref, (320, 320)).numpy()
    target = np.asarray(vol.target)
    assert target.shape == (2, 320, 320)
    np.testing.assert_allclose(target, ref, rtol=1e-5, atol=1e-6 * ref.max())
    assert vol.header["recon_size"] == (320, 320, 1) and vol.header["encoding_size"] == (640, 320, 1)


def test_noise_free_target_is_the_input_image(tmp_path, images):
    """Coil maps have RSS 1 and the image sits where the centre crop looks, so target == |image|."""
    sim = make_fastmri_volume(tmp_path / "clean.h5", images, num_coils=C, seed=4)
    vol = read_fastmri(tmp_path / "clean.h5")
    np.testing.assert_allclose(np.asarray(vol.target), images, atol=1e-5)
    assert vol.header["recon_size"] == (h, w, 1)
    np.testing.assert_array_equal(np.asarray(vol.kspace), sim.kspace)


def test_simulation_ground_truth(images):
    sim = simulate_coil_data(images, num_coils=C, noise_std=0.0, seed=7)
    assert sim.kspace.shape == (S, C, 2 * h, w) and sim.kspace.dtype == np.complex64
    assert sim.maps.shape == (C, 2 * h, w) and sim.image.shape == (S, 2 * h, w)
    np.testing.assert_allclose(np.sqrt((np.abs(sim.maps) ** 2).sum(0)), 1.0, rtol=1e-5)
    assert np.abs(sim.maps).std(axis=(1, 2)).min() > 0.05  # not flat
    np.testing.assert_allclose(sim.kspace, fft2c(sim.image[:, None] * sim.maps[None]), atol=1e-5)
    # Smooth phase, different per slice; magnitude unchanged; rows outside the object are empty.
    phase = np.angle(sim.image[:, h // 2 + 10 : h // 2 + 50])
    assert np.abs(np.diff(np.unwrap(phase, axis=-1), axis=-1)).max() < 0.5
    assert not np.allclose(phase[0], phase[1])
    np.testing.assert_allclose(np.abs(sim.image[:, h // 2 : h // 2 + h]), images, atol=1e-6)
    assert not sim.image[:, : h // 2].any()


def test_simulation_noise_and_seeding(images):
    clean = simulate_coil_data(images, num_coils=C, seed=7).kspace
    noisy = simulate_coil_kspace(images, num_coils=C, noise_std=0.3, seed=7)
    noise = noisy - clean
    assert np.mean(np.abs(noise) ** 2) == pytest.approx(0.09, rel=0.05)  # E|n|^2 = std^2
    assert np.std(noise.real) == pytest.approx(np.std(noise.imag), rel=0.05)
    np.testing.assert_array_equal(noisy, simulate_coil_kspace(images, num_coils=C, noise_std=0.3, seed=7))
    assert not np.array_equal(noisy, simulate_coil_kspace(images, num_coils=C, noise_std=0.3, seed=8))
    single = simulate_coil_kspace(images, num_coils=None, phase=False)
    assert single.shape == (S, 2 * h, w)
    assert simulate_coil_kspace(images[0], num_coils=2).shape == (1, 2, 2 * h, w)


def test_writer_rejects_bad_input(tmp_path, kspace_mc):
    with pytest.raises(AmbientMRIError, match="complex"):
        write_fastmri(tmp_path / "x.h5", kspace_mc.real)
    with pytest.raises(AmbientMRIError, match="columns"):
        write_fastmri(tmp_path / "x.h5", kspace_mc, mask=np.ones(w + 1))
    with pytest.raises(AmbientMRIError, match="pad_columns"):
        write_fastmri(tmp_path / "x.h5", kspace_mc, pad_columns=w // 2)
    with pytest.raises(AmbientMRIError, match="cannot crop"):
        write_fastmri(tmp_path / "x.h5", kspace_mc, recon_size=(h, 2 * w))
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------
# Laziness and process safety
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    """30 slices x 4 coils x 128 x 64 complex64 (7.9 MB); one slice is 262 kB."""
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((30, 4, 128, 64)) + 1j * rng.standard_normal((30, 4, 128, 64))).astype(
        np.complex64
    )
    return write_fastmri(tmp_path_factory.mktemp("big") / "big.h5", k)


class _ReadCounter:
    """Counts the elements that h5py datasets hand out, whichever way they are read."""

    def __init__(self, monkeypatch):
        self.elements: dict[str, int] = {}
        for name in ("__getitem__", "read_direct", "__array__"):
            original = getattr(h5py.Dataset, name)
            monkeypatch.setattr(h5py.Dataset, name, self._wrap(original, name))

    def _wrap(self, original, method):
        counter = self

        def wrapper(ds, *args, **kwargs):
            out = original(ds, *args, **kwargs)
            arr = args[0] if method == "read_direct" else out
            counter.elements[ds.name] = counter.elements.get(ds.name, 0) + int(np.size(arr))
            return out

        return wrapper


def test_reading_one_slice_reads_only_that_slice(monkeypatch, big_file):
    counter = _ReadCounter(monkeypatch)
    vol = read_fastmri(big_file)
    assert counter.elements.get("/kspace", 0) == 0 and counter.elements.get("/reconstruction_rss", 0) == 0
    one = vol.slice(7)
    assert one.shape == (4, 128, 64)
    assert counter.elements["/kspace"] == one.size  # not 30 x that
    vol.target[7]
    assert counter.elements["/reconstruction_rss"] == 64 * 64


def test_reading_one_slice_reads_few_bytes_from_disk(big_file):
    """Independent of how the reader is written: bytes read by the process (Linux /proc/self/io)."""
    io = Path("/proc/self/io")
    if not io.exists():
        pytest.skip("needs /proc/self/io")

    def rchar() -> int:
        return int(next(line for line in io.read_text().splitlines() if line.startswith("rchar")).split()[1])

    slice_bytes = 4 * 128 * 64 * 8
    before = rchar()
    vol = read_fastmri(big_file)
    vol.slice(12)
    used = rchar() - before
    assert used < 3 * slice_bytes, f"read {used} bytes for one {slice_bytes}-byte slice of a 30-slice file"


def test_lazy_array_indexing_matches_numpy(big_file):
    vol = read_fastmri(big_file)
    full = np.asarray(vol.kspace)
    assert full.shape == vol.kspace.shape == (30, 4, 128, 64) and len(vol.kspace) == 30 == len(vol)
    assert vol.kspace.ndim == 4 and vol.kspace.dtype == np.complex64
    for index in (
        3,
        -1,
        slice(2, 9, 3),
        (5, 1),
        (slice(None, 4), 0, slice(10, 20)),
        [4, 1, 4],
        np.array([2, 0]),
    ):
        np.testing.assert_array_equal(vol.kspace[index], full[index])
    np.testing.assert_array_equal(vol.slice(-2), full[-2])
    with pytest.raises(IndexError):
        vol.slice(30)
    target = np.asarray(vol.target)
    np.testing.assert_array_equal(vol.target[[9, 3]], target[[9, 3]])


def test_pickle_and_context_manager(big_file):
    vol = read_fastmri(big_file)
    with vol as held:
        assert held is vol and vol._file is not None
        clone = pickle.loads(pickle.dumps(vol))  # as a DataLoader worker with spawn would get it
        assert clone._file is None
        np.testing.assert_array_equal(clone.slice(3), vol.slice(3))
    assert vol._file is None
    np.testing.assert_array_equal(vol.slice(3), clone.slice(3))
    assert isinstance(vol, FastMRIVolume) and "big.h5" in repr(vol)


def test_dataloader_workers_read_their_own_handles(big_file):
    """Forked workers must not reuse the parent's open handle; every slice comes back right."""

    class Slices(torch.utils.data.Dataset):
        def __init__(self, vol):
            self.vol = vol

        def __len__(self):
            return len(self.vol)

        def __getitem__(self, i):
            return torch.from_numpy(self.vol.slice(i))

    vol = read_fastmri(big_file)
    with vol:  # parent holds a handle while workers read
        loader = torch.utils.data.DataLoader(Slices(vol), batch_size=8, num_workers=2)
        got = torch.cat(list(loader)).numpy()
    np.testing.assert_array_equal(got, np.asarray(vol.kspace))


# --------------------------------------------------------------------------------------------------
# Bad files: DataFileError naming the file and the problem
# --------------------------------------------------------------------------------------------------


def _replace(path: Path, name: str, data=None, **kw) -> None:
    with h5py.File(path, "a") as hf:
        if name in hf:
            del hf[name]
        if data is not None:
            hf.create_dataset(name, data=data, **kw)


def _header(path: Path, text: bytes) -> None:
    _replace(path, "ismrmrd_header", text, dtype=h5py.string_dtype("ascii"))


def _bad_file(kind: str, tmp_path: Path, k: np.ndarray) -> Path:
    """Build the bad file ``kind``; most start from a good file and break one thing."""
    path = tmp_path / f"bad_{kind}.h5"
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
        return path
    if kind == "not_hdf5":
        path.write_text("this is not an HDF5 file\n")
        return path
    good_file(tmp_path, k, name=path.name)
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "no_kspace":
        _replace(path, "kspace")
    elif kind == "kspace_group":
        _replace(path, "kspace")
        with h5py.File(path, "a") as hf:
            hf.create_group("kspace")
    elif kind == "rank":
        _replace(path, "kspace", k[:, 0, 0])
    elif kind == "real_pairs":
        _replace(path, "kspace", np.stack([k.real, k.imag], axis=-1))
    elif kind == "real":
        _replace(path, "kspace", np.abs(k))
    elif kind == "empty":
        _replace(path, "kspace", k[:0])
    elif kind == "mask_width":
        _replace(path, "mask", np.ones(w + 2, bool))
    elif kind == "mask_zero":
        _replace(path, "mask", np.zeros(w, bool))
    elif kind == "mask_values":
        _replace(path, "mask", np.full(w, 0.5, np.float32))
    elif kind == "target_slices":
        _replace(path, "reconstruction_rss", np.ones((S + 1, w, w), np.float32))
    elif kind == "target_rank":
        _replace(path, "reconstruction_rss", np.ones((S, w), np.float32))
    elif kind == "header_xml":
        _header(path, b"<ismrmrdHeader><encoding>")
    elif kind == "header_missing":
        _header(path, b'<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding/></ismrmrdHeader>')
    elif kind == "header_value":
        with h5py.File(path, "r") as hf:
            text = hf["ismrmrd_header"][()]
        _header(path, text.replace(b"<center>", b"<center>abc", 1))
    elif kind == "header_center":   # a centre line beyond the last encoded line gave nonsense padding, ignored
        with h5py.File(path, "r") as hf:
            text = hf["ismrmrd_header"][()]
        start = text.index(b"<center>") + len(b"<center>")
        _header(path, text[:start] + b"9999" + text[text.index(b"</center>", start):])
    return path


BAD_CASES = {
    "missing": "not found",
    "directory": "directory",
    "not_hdf5": "hdf5",
    "truncated": "truncated",
    "no_kspace": "missing dataset 'kspace'",
    "kspace_group": "group",
    "rank": "rank",
    "real_pairs": "stored as real",
    "real": "real",
    "empty": "empty",
    "mask_width": "mask width",
    "mask_zero": "all zero",
    "mask_values": "0 or 1",
    "target_slices": "slice count",
    "target_rank": "target",
    "header_xml": "not valid xml",
    "header_missing": "lacks",
    "header_value": "not an integer",
    "header_center": "invalid encoding limits (center 9999",
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_file_gives_clear_error(tmp_path, kspace_mc, kind):
    path = _bad_file(kind, tmp_path, kspace_mc)
    with pytest.raises(DataFileError) as info:
        read_fastmri(path)
    message = str(info.value)
    assert path.name in message and BAD_CASES[kind] in message.lower(), message
    assert info.value.path == str(path)
    assert "\n" not in message.strip()


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_kspace_named_by_slice(tmp_path, kspace_mc, bad_value):
    k = kspace_mc.copy()
    k[2, 1, 5, 5] = bad_value
    path = tmp_path / "nan.h5"
    write_fastmri(path, k, target=np.ones((S, h, w), np.float32))
    vol = read_fastmri(path)  # opening reads no k-space, so it succeeds
    assert vol.slice(1).shape == (C, 2 * h, w)
    for read in (lambda: vol.slice(2), lambda: vol.kspace[1:4], lambda: np.asarray(vol.kspace)):
        with pytest.raises(DataFileError) as info:
            read()
        message = str(info.value)
        assert "nan.h5" in message and "slice 2" in message and "NaN" in message


def test_missing_header_falls_back_to_shapes(tmp_path, kspace_mc):
    path = good_file(tmp_path, kspace_mc, recon_size=(h, w))
    _replace(path, "ismrmrd_header")
    hd = read_fastmri(path).header
    assert not hd["from_xml"]
    assert (hd["padding_left"], hd["padding_right"]) == (0, w)
    assert hd["encoding_size"] == (2 * h, w, 1) and hd["recon_size"] == (h, w, 1)


def test_fallback_target_key_and_explicit_choice(tmp_path, kspace_mc):
    path = good_file(tmp_path, kspace_mc, target_key="reconstruction_esc")
    assert read_fastmri(path).target_key == "reconstruction_esc"  # multi-coil file with only an ESC target
    with pytest.raises(DataFileError, match="reconstruction_rss"):
        read_fastmri(path, target_key="reconstruction_rss")


# --------------------------------------------------------------------------------------------------
# Real image source
# --------------------------------------------------------------------------------------------------


def test_mni152_slices():
    pytest.importorskip("nilearn")
    from data_tools.sources import mni152_slices

    x = mni152_slices(5, size=(64, 48))
    assert x.shape == (5, 64, 48) and x.dtype == np.float32
    assert x.max() == pytest.approx(1.0) and x.min() >= 0
    brain = (x > 0.05).mean(axis=(1, 2))
    assert brain.min() > 0.1 and (brain < 0.9).all()  # brain in every slice, with background around it
    assert all(not np.allclose(x[i], x[i + 1]) for i in range(4))
    assert mni152_slices(2, size=(32, 32), axis="coronal", start=90, stop=120).shape == (2, 32, 32)
    assert mni152_slices(1, size=(32, 40), axis="sagittal").shape == (1, 32, 40)
    with pytest.raises(AmbientMRIError, match="axis"):
        mni152_slices(2, axis="oblique")
    with pytest.raises(AmbientMRIError, match="num_slices"):
        mni152_slices(50, start=0, stop=10)


def test_mni152_without_nilearn_says_how_to_install(monkeypatch):
    from data_tools import sources

    monkeypatch.setitem(sys.modules, "nilearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install ambient_mri\[demo\]"):
        sources.mni152_slices(2)


def test_make_volume_from_mni_is_readable_by_fastmri(tmp_path):
    pytest.importorskip("nilearn")
    from data_tools.sources import mni152_slices

    imgs = mni152_slices(2, size=(64, 64))
    make_fastmri_volume(tmp_path / "mni.h5", imgs, num_coils=4, noise_std=1e-4, pad_columns=4)
    ds = SliceDataset(tmp_path, challenge="multicoil")
    assert len(ds) == 2 and ds.raw_samples[0].metadata["padding_left"] == 4
    vol = read_fastmri(tmp_path / "mni.h5")
    assert os.fspath(vol.path).endswith("mni.h5") and vol.target.shape == (2, 64, 64)
