"""A second real-anatomy evaluation set, from a different source than the demo's training data.

The demo trains on the MNI152 T1 template (nilearn: a population average). This set is one real subject: the
first volume of nibabel's bundled BOLD EPI test file ``nibabel/tests/data/example4d.nii.gz`` (128 x 96 x 24
voxels, 2 x 2 x 2.2 mm, T2*-weighted; another scanner, subject and contrast). Of the files the installed
packages ship it is the only full-head in-vivo brain scan: nibabel's ``anatomical.nii`` is a real T1 but a
33 x 41 x 25 crop of the brain's centre (2 mm; no skull outline), dipy and pydicom are not installed.

``nibabel_epi_slices`` gives its axial slices oriented like the demo's (anterior up, subject's right on the
image's left), zero-padded to the target's aspect ratio (anatomy not stretched) and resized with anti-aliasing,
max 1 over the stack. ``build_epi_set`` simulates them with the demo's simulator (data_tools.simulate: 2x readout
oversampling, smooth random phase, birdcage coils, complex noise), the same coil count and noise as the demo but
another birdcage radius and seed, and writes the volume in the official fastMRI multi-coil layout (kspace,
reconstruction_rss, ismrmrd_header) where the demo keeps its held-out volume:

    DIR/raw/val/epi_val_00.h5        the evaluation volume (fully sampled; masks are applied by the evaluation)
    DIR/prepared_r4/{val,val_reference}, DIR/prepared_r8/...   with ``prepare=True``, as build_demo prepares
    DIR/epi_set.json                 what was built
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ambient_mri.errors import AmbientMRIError

from .simulate import simulate_coil_data, write_fastmri
from .sources import _pad_to_aspect, _resize

EPI_FILE = "example4d.nii.gz"
EPI_BRAIN = (4, 21)   # [start, stop) of the axial slices with a sizeable brain section (of 24)
COIL_RADIUS = 1.2     # birdcage radius (sigpy units); the demo uses the simulator's default 1.5
SEED = 5000           # phase and noise seed; the demo's volumes use 1000.. (calibration 2000, augmented 3000..)


def nibabel_epi_path() -> Path:
    try:
        from nibabel.testing import data_path
    except ImportError as err:
        raise ImportError("the EPI set needs nibabel: pip install nibabel") from err
    return Path(data_path) / EPI_FILE


def nibabel_epi_slices(num_slices: int = 8, size: tuple[int, int] = (64, 64), start: int = EPI_BRAIN[0],
                       stop: int = EPI_BRAIN[1]) -> tuple[np.ndarray, list[int]]:
    """``num_slices`` evenly spaced axial slices of nibabel's example4d EPI (first time point) from [start, stop)
    as (S, h, w) float32 with max 1 over the stack, and their slice numbers.

    Orientation as ``mni152_slices``: anterior at the top, the subject's left on the image's right (the file
    is LAS, the template RAS, so columns are flipped to match); zero-padded to the aspect of ``size``, resized
    with anti-aliasing (the same resize as the demo's slices)."""
    import nibabel as nib

    img = nib.load(str(nibabel_epi_path()))
    vol = np.asarray(img.dataobj, dtype=np.float32)[..., 0]  # (x, y, z)
    n = vol.shape[2]
    if not 0 <= start < stop <= n:
        raise AmbientMRIError(f"need 0 <= start < stop <= {n}, got start={start}, stop={stop}")
    if not 1 <= num_slices <= stop - start:
        raise AmbientMRIError(f"num_slices must be in [1, {stop - start}] for EPI slices {start}..{stop - 1}")
    idx = start + np.floor((np.arange(num_slices) + 0.5) * (stop - start) / num_slices).astype(int)
    planes = np.moveaxis(vol, 2, 0)[idx]                       # (S, x, y)
    planes = np.flip(np.swapaxes(planes, 1, 2), axis=1)        # rows: anterior at the top
    if nib.aff2axcodes(img.affine)[0] == "L":
        planes = np.flip(planes, axis=2)                       # columns left -> right as in the RAS template
    stack = np.clip(_resize(_pad_to_aspect(np.ascontiguousarray(planes), size), size), 0.0, None)
    return (stack / stack.max()).astype(np.float32), [int(i) for i in idx]


def epi_central_planes(num_slices: int = 4, size: int = 64) -> np.ndarray:
    """The ``num_slices`` central axial planes of nibabel's example4d EPI (first time point) as stored (no
    reorientation or padding), bicubic-resized with anti-aliasing to size x size, clipped at 0, max 1: the images
    of the 12-coil EPI volume of benchmarks/lambda_rules.py (the case where L1-wavelet and, before its λ floor,
    ``fast`` fell below zero-filled)."""
    import nibabel as nib
    import torch

    epi = np.asarray(nib.load(str(nibabel_epi_path())).dataobj, np.float32)[..., 0]
    z = epi.shape[2] // 2
    planes = np.moveaxis(epi[:, :, z - num_slices // 2: z - num_slices // 2 + num_slices], -1, 0)
    t = torch.from_numpy(np.ascontiguousarray(planes))[:, None]
    out = torch.nn.functional.interpolate(t, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    out = out[:, 0].clamp_min(0).numpy()
    return out / out.max()


def build_epi_set(output: str | os.PathLike, size: int = 64, coils: int = 8, slices: int = 8,
                  noise_std: float = 0.005, coil_radius: float = COIL_RADIUS, seed: int = SEED,
                  prepare: bool = False) -> dict:
    """Simulate ``slices`` EPI slices (module docstring) into ``output/raw/val/epi_val_00.h5``; returns a dict of
    the folders (Paths) with the keys build_demo uses for its held-out volume (``raw_val``; with ``prepare``
    also ``r4_val``, ``r4_val_reference``, ``r8_val``, ``r8_val_reference``). Deterministic; a whole existing
    file is kept, a damaged one written again."""
    from .demo import demo_center_fraction, is_complete

    if size < 16 or size % 2:
        raise AmbientMRIError(f"size must be an even number >= 16, got {size}")
    if coils < 1:
        raise AmbientMRIError(f"coils must be >= 1, got {coils}")
    tic = time.time()
    out = Path(output)
    raw_val = out / "raw" / "val"
    path = raw_val / "epi_val_00.h5"
    images, ids = nibabel_epi_slices(slices, (size, size))
    if not is_complete(path):  # missing or damaged: written (again)
        sim = simulate_coil_data(images, num_coils=coils, oversample=2, noise_std=noise_std, phase=True, seed=seed,
                                 coil_radius=coil_radius)
        write_fastmri(path, sim.kspace, recon_size=(size, size), acquisition="AXT2",
                      attrs={"source": f"nibabel/tests/data/{EPI_FILE}", "epi_slices": ids,
                             "coil_radius": coil_radius, "seed": seed})
    paths = {"root": out, "raw_val": raw_val}
    cf4, cf8 = demo_center_fraction(size, 4), demo_center_fraction(size, 8)
    if prepare:
        from .prepare import prepare_fastmri

        for R, cf in ((4, cf4), (8, cf8)):
            summary = prepare_fastmri(raw_val, out / f"prepared_r{R}", mask="random", per_slice_mask=True,
                                      acceleration=R, center_fraction=cf, split="val", progress=False)
            if summary.refused:
                raise AmbientMRIError("EPI set preparation failed:\n" + summary.report())
            paths[f"r{R}_val"] = out / f"prepared_r{R}" / "val"
            paths[f"r{R}_val_reference"] = out / f"prepared_r{R}" / "val_reference"
    record = {
        "source": f"nibabel {EPI_FILE} (BOLD EPI, one real subject, first time point), axial slices",
        "image_size": [size, size], "kspace_size": [2 * size, size], "coils": coils, "noise_std": noise_std,
        "coil_radius": coil_radius, "seed": seed, "val_slices": ids, "mask": "random, per slice",
        "r4": {"acceleration": 4, "center_fraction": cf4}, "r8": {"acceleration": 8, "center_fraction": cf8},
        "paths": {k: str(v) for k, v in paths.items()}, "seconds": round(time.time() - tic, 2),
    }
    (out / "epi_set.json").write_text(json.dumps(record, indent=2) + "\n")
    return paths


# Three more real MR sources, none used to train or tune anything (benchmarks/lambda_rules.py's "new sources" set):
# dipy's b0 EPI (diffusion series, 10 axial slices) and T1 coronal slice, and pydicom's MR_small.dcm (a 64 x 64 crop
# of another anatomy that fills its field of view). Optional: ``pip install -e ".[bench]"``.


def optional_module(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"this set needs {module}: pip install -e \".[bench]\"") from err


def _unit(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    out = np.clip(_resize(_pad_to_aspect(np.ascontiguousarray(stack, np.float32), size), size), 0.0, None)
    return (out / out.max()).astype(np.float32)


def dipy_file(name: str) -> Path:
    """A data file that ships inside dipy (``dipy/data/files/NAME``)."""
    return Path(optional_module("dipy").__file__).parent / "data" / "files" / name


def dipy_b0_slices(num_slices: int = 4, size: tuple[int, int] = (128, 128)) -> np.ndarray:
    """The ``num_slices`` central axial slices (S, H, W) of dipy's ``S0_10slices.nii.gz``, anterior at the top,
    max 1."""
    nib = optional_module("nibabel")
    vol = np.asarray(nib.load(str(dipy_file("S0_10slices.nii.gz"))).dataobj, np.float32)[..., 0]
    z = vol.shape[2] // 2 - num_slices // 2
    planes = np.moveaxis(vol[:, :, z:z + num_slices], -1, 0)
    return _unit(np.flip(np.swapaxes(planes, 1, 2), axis=1), size)


def dipy_t1_coronal(size: tuple[int, int] = (128, 128)) -> np.ndarray:
    """dipy's real T1 coronal slice (256 x 256) as a one-slice stack (1, H, W), max 1."""
    return _unit(np.load(dipy_file("t1_coronal_slice.npy"))[None], size)


def pydicom_mr_small() -> np.ndarray:
    """pydicom's ``MR_small.dcm`` test image (64 x 64) as a one-slice stack (1, 64, 64), max 1."""
    pydicom = optional_module("pydicom")
    from pydicom.data import get_testdata_file

    return _unit(pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array[None].astype(np.float32), (64, 64))


# Four sources held out from every threshold and rule of ``reconstruct`` (benchmarks/map_refinement.py's "fresh"
# set, built after scan.MAX_MAP_MISFIT was last moved): another anatomy (a Siemens abdomen, pydicom), two diffusion
# series of other subjects (dipy) and a T1 crop of the brain's centre that fills its field of view (nibabel).


def _central_axial(vol: np.ndarray, num_slices: int, size: tuple[int, int]) -> np.ndarray:
    """``num_slices`` central planes of an (x, y, z) volume, anterior at the top (as ``dipy_b0_slices``), max 1."""
    z = vol.shape[2] // 2 - num_slices // 2
    planes = np.moveaxis(vol[:, :, z:z + num_slices], -1, 0)
    return _unit(np.flip(np.swapaxes(planes, 1, 2), axis=1), size)


def pydicom_abdomen(size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """pydicom's ``examples_overlay.dcm``: an axial abdominal MR slice (Siemens, 300 x 484, the body spans the
    columns) as a one-slice stack (1, H, W), zero-padded to ``size``'s aspect, max 1."""
    pydicom = optional_module("pydicom")
    from pydicom.data import get_testdata_file

    return _unit(pydicom.dcmread(get_testdata_file("examples_overlay.dcm")).pixel_array[None].astype(np.float32), size)


def dipy_dwi_slices(num_slices: int = 4, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """The ``num_slices`` central axial slices of dipy's ``test_piesno.nii.gz`` (a noisy diffusion-weighted brain,
    96 x 96 x 14), max 1."""
    nib = optional_module("nibabel")
    return _central_axial(np.asarray(nib.load(str(dipy_file("test_piesno.nii.gz"))).dataobj, np.float32),
                          num_slices, size)


def dipy_aniso_slices(num_slices: int = 4, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """The ``num_slices`` central axial slices of dipy's ``aniso_vox.nii.gz`` (a b0 brain, 58 x 58 x 24, 4 x 4 x 5
    mm), max 1."""
    nib = optional_module("nibabel")
    return _central_axial(np.asarray(nib.load(str(dipy_file("aniso_vox.nii.gz"))).dataobj, np.float32),
                          num_slices, size)


def nibabel_anatomical_slices(num_slices: int = 4, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """The ``num_slices`` central axial slices of nibabel's ``anatomical.nii`` (a real T1, a 33 x 41 x 25 crop of
    the brain's centre at 2 mm: tissue fills the field of view), max 1."""
    nib = optional_module("nibabel")
    from nibabel.testing import data_path

    vol = np.asarray(nib.load(str(Path(data_path) / "anatomical.nii")).dataobj, np.float32)
    return _central_axial(np.clip(vol, 0.0, None), num_slices, size)


# Two sources held out from the refinement bar's move to 2 (map_refinement.py's "fresh2" set): a neck angiogram
# (a Siemens MIP, vessels over soft tissue that fills the field of view) and a Philips EPI phantom scan (nibabel).


def nibabel_neck_mip_crops(num_slices: int = 4, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """``num_slices`` 72 x 72 crops along the tissue strip (rows 156-227, columns 20-300) of nibabel's
    ``slicethickness_empty_string.dcm`` (a Siemens MR angiogram MIP of the neck, 384 x 384), max 1."""
    pydicom = optional_module("pydicom")
    nib = optional_module("nibabel")
    img = pydicom.dcmread(Path(nib.__file__).parent / "nicom" / "tests" / "data" /
                          "slicethickness_empty_string.dcm").pixel_array.astype(np.float32)
    starts = np.linspace(20, 300 - 72, num_slices).astype(int)
    return _unit(np.stack([img[156:228, c:c + 72] for c in starts]), size)


def nibabel_philips_phantom_slices(num_slices: int = 4, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """``num_slices`` central slices of the first dynamic of nibabel's ``phantom_EPI_asc_CLEAR_2_1.PAR`` (a Philips
    EPI of a round phantom, 64 x 64 x 9, with its ghosts), max 1."""
    nib = optional_module("nibabel")
    from nibabel.testing import data_path

    vol = np.asarray(nib.load(str(Path(data_path) / "phantom_EPI_asc_CLEAR_2_1.PAR")).dataobj, np.float32)[..., 0]
    z = vol.shape[2] // 2 - num_slices // 2
    return _unit(np.moveaxis(vol[:, :, z:z + num_slices], -1, 0), size)
