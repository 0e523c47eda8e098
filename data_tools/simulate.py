"""Simulated multi-coil k-space from magnitude images, written in the official fastMRI HDF5 layout.

Pipeline (all slices and coils at once): magnitude image (S, h, w) -> zero-padded rows to an ``oversample``x
readout FOV (S, H, w) -> smooth random phase -> birdcage coil maps (C, H, w) -> centered FFT -> complex
Gaussian noise. ``write_fastmri`` stores any k-space exactly as fastMRI files are stored, with the target
computed as fastMRI does (RSS of the coil images, centre-cropped).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sigpy.mri
import torch

from ambient_mri.data.augment import smooth_phase
from ambient_mri.data.fastmri_header import ISMRMRD_NAMESPACE
from ambient_mri.errors import AmbientMRIError
from ambient_mri.files import write_h5
from ambient_mri.masks import acs_width
from ambient_mri.metrics import center_crop
from ambient_mri.operators import fft2c, ifft2c


@dataclass
class SimulatedVolume:
    """Simulated acquisition and its ground truth.

    kspace: (S, C, H, W) or (S, H, W) complex64 (noise included).
    image: (S, H, W) complex64 object in the oversampled FOV (phase included, no coils, no noise).
    maps: (C, H, W) complex64 coil sensitivities (RSS = 1 everywhere), None for single-coil.
    """

    kspace: np.ndarray
    image: np.ndarray
    maps: np.ndarray | None


# --------------------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------------------


def oversample_rows(images: np.ndarray, oversample: int = 2) -> np.ndarray:
    """(S, h, w) -> (S, oversample*h, w): zero rows above and below, where fastMRI's centre crop looks."""
    if int(oversample) != oversample or oversample < 1:
        raise AmbientMRIError(f"oversample must be a positive integer, got {oversample}")
    S, h, w = images.shape
    H = int(oversample) * h
    top = (H - h) // 2  # fastmri.data.transforms.center_crop starts at (H - h) // 2
    out = np.zeros((S, H, w), dtype=images.dtype)
    out[:, top : top + h] = images
    return out


def birdcage_maps(num_coils: int, shape: tuple[int, int], radius: float = 1.5) -> np.ndarray:
    """(C, H, W) complex64 birdcage sensitivities (sigpy), normalised so their RSS is 1."""
    return sigpy.mri.birdcage_maps((int(num_coils), *shape), r=radius, dtype=np.complex64)


def complex_noise(shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    """Circular complex Gaussian, E|n|^2 = std^2 (each of re/im has std / sqrt(2)); complex64."""
    parts = rng.standard_normal((2, *shape), dtype=np.float32) * np.float32(std / np.sqrt(2.0))
    return (parts[0] + 1j * parts[1]).astype(np.complex64)


def simulate_coil_data(
    images,
    num_coils: int | None = 8,
    oversample: int = 2,
    noise_std: float = 0.0,
    phase: bool = True,
    seed: int = 0,
    coil_radius: float = 1.5,
) -> SimulatedVolume:
    """Magnitude images (S, h, w) (or one (h, w)) -> SimulatedVolume with k-space (S, C, oversample*h, w).

    ``num_coils=None`` gives single-coil k-space (S, H, w). Seeded: same inputs, same output.
    """
    imgs = np.asarray(images)
    imgs = imgs[None] if imgs.ndim == 2 else imgs
    if imgs.ndim != 3 or imgs.size == 0:
        raise AmbientMRIError(f"images must be (slices, h, w), got shape {np.shape(images)}")
    if not np.isfinite(imgs).all():
        raise AmbientMRIError("images contain NaN or Inf")
    rng = np.random.default_rng(seed)
    obj = oversample_rows(imgs.astype(np.complex64), oversample)
    S, H, W = obj.shape
    if phase:
        obj = obj * np.exp(1j * smooth_phase(S, (H, W), rng)).astype(np.complex64)
    maps = None if num_coils is None else birdcage_maps(num_coils, (H, W), coil_radius)
    coil_images = obj if maps is None else obj[:, None] * maps[None]
    kspace = fft2c(np.ascontiguousarray(coil_images, dtype=np.complex64))
    if noise_std > 0:
        kspace = kspace + complex_noise(kspace.shape, noise_std, rng)
    return SimulatedVolume(kspace=kspace.astype(np.complex64, copy=False), image=obj, maps=maps)


def simulate_coil_kspace(
    images,
    num_coils: int | None = 8,
    oversample: int = 2,
    noise_std: float = 0.0,
    phase: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Images (S, h, w) -> k-space (S, C, oversample*h, w) complex64; (S, H, w) if num_coils is None."""
    return simulate_coil_data(images, num_coils, oversample, noise_std, phase, seed).kspace


# --------------------------------------------------------------------------------------------------
# fastMRI target and header
# --------------------------------------------------------------------------------------------------


def rss_target(kspace: np.ndarray, recon_size: tuple[int, int]) -> np.ndarray:
    """fastMRI's reference: |ifft2c(k)| (RSS over coils if multi-coil), centre-cropped: (S, h, w) float32."""
    k = torch.from_numpy(np.ascontiguousarray(kspace, dtype=np.complex64))
    x = ifft2c(k)
    # Same operations as fastmri.complex_abs then fastmri.rss, so values agree to the last bit or so.
    mag = torch.sqrt(x.real**2 + x.imag**2)
    if k.ndim == 4:
        mag = torch.sqrt((mag**2).sum(dim=1))
    return center_crop(mag.numpy(), recon_size).astype(np.float32)


def ismrmrd_header(
    encoded: tuple[int, int],
    recon: tuple[int, int],
    pad_columns: int = 0,
    num_slices: int = 1,
    num_coils: int = 1,
) -> bytes:
    """ISMRMRD XML whose encoding limits give fastMRI padding (pad_columns, W - pad_columns)."""
    H, W = encoded
    h, w = recon
    acquired = W - 2 * pad_columns
    # fastMRI: padding_left = W // 2 - center, padding_right = padding_left + maximum + 1.
    center, maximum = W // 2 - pad_columns, acquired - 1
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="{ISMRMRD_NAMESPACE}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <acquisitionSystemInformation>
    <receiverChannels>{num_coils}</receiverChannels>
  </acquisitionSystemInformation>
  <encoding>
    <encodedSpace>
      <matrixSize><x>{H}</x><y>{W}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{float(H)}</x><y>{float(W)}</y><z>1.0</z></fieldOfView_mm>
    </encodedSpace>
    <reconSpace>
      <matrixSize><x>{h}</x><y>{w}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{float(h)}</x><y>{float(w)}</y><z>1.0</z></fieldOfView_mm>
    </reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1>
        <minimum>0</minimum><maximum>{maximum}</maximum><center>{center}</center>
      </kspace_encoding_step_1>
      <kspace_encoding_step_2><minimum>0</minimum><maximum>0</maximum><center>0</center></kspace_encoding_step_2>
      <slice><minimum>0</minimum><maximum>{num_slices - 1}</maximum><center>{num_slices // 2}</center></slice>
    </encodingLimits>
    <trajectory>cartesian</trajectory>
  </encoding>
</ismrmrdHeader>
""".encode()


# --------------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------------


def write_fastmri(
    path,
    kspace,
    target=None,
    mask=None,
    attrs: Mapping | None = None,
    pad_columns: int = 0,
    recon_size: tuple[int, int] | None = None,
    acquisition: str = "AXT2",
    target_key: str | None = None,
) -> Path:
    """Write one volume in the official fastMRI layout (atomically) and return its path.

    kspace: (S, C, H, W) multi-coil or (S, H, W) single-coil complex. ``pad_columns`` edge columns on each
    side are zeroed and declared in the header. ``mask`` (W,) makes a test file: k-space is zeroed off the
    mask, ``acceleration``/``num_low_frequency`` are stored, and no target is computed. With neither target
    nor mask, the target is fastMRI's RSS of the k-space, centre-cropped to ``recon_size``
    (default (min(H, W), W), i.e. 320 x 320 for 640 x 320 k-space). ``attrs`` add to / override attributes.
    """
    path = Path(path)
    k = _as_kspace(kspace)
    S, H, W = k.shape[0], k.shape[-2], k.shape[-1]
    multicoil = k.ndim == 4
    pad = _check_padding(pad_columns, W)
    if pad:
        k[..., :pad] = 0
        k[..., W - pad :] = 0
    m = None if mask is None else _as_mask(mask, W)
    if m is not None:
        k *= m  # a test file holds only the acquired columns
    default_recon = (min(H, W), W)  # fastMRI: 320 x 320 from 640 x 320 k-space
    if target is None and m is None:
        target = rss_target(k, recon_size or default_recon)
    tgt = None if target is None else _as_target(target, S)
    recon = tuple(recon_size or (tgt.shape[-2:] if tgt is not None else default_recon))
    header = ismrmrd_header((H, W), recon, pad, S, k.shape[1] if multicoil else 1)
    key = target_key or ("reconstruction_rss" if multicoil else "reconstruction_esc")
    datasets = {"kspace": k, "ismrmrd_header": header}
    if tgt is not None:
        datasets[key] = tgt
    if m is not None:
        datasets["mask"] = m.astype(bool)
    write_h5(path, datasets, _file_attrs(path, tgt, m, acquisition, attrs))
    return path


def make_fastmri_volume(
    path,
    images,
    num_coils: int | None = 8,
    oversample: int = 2,
    noise_std: float = 0.0,
    phase: bool = True,
    seed: int = 0,
    mask=None,
    pad_columns: int = 0,
    acquisition: str = "AXT2",
    attrs: Mapping | None = None,
) -> SimulatedVolume:
    """Simulate k-space from magnitude images (S, h, w); write it as a fastMRI file with an (h, w) target."""
    sim = simulate_coil_data(images, num_coils, oversample, noise_std, phase, seed)
    h, w = np.shape(images)[-2:]
    write_fastmri(
        path,
        sim.kspace,
        mask=mask,
        attrs=attrs,
        pad_columns=pad_columns,
        recon_size=(h, w),
        acquisition=acquisition,
    )
    return sim


def _as_kspace(kspace) -> np.ndarray:
    k = kspace.detach().cpu().numpy() if isinstance(kspace, torch.Tensor) else np.asarray(kspace)
    if not np.iscomplexobj(k):
        raise AmbientMRIError(f"kspace must be complex, got {k.dtype}")
    if k.ndim not in (3, 4):
        raise AmbientMRIError(f"kspace must be (S, C, H, W) or (S, H, W), got shape {k.shape}")
    return np.array(k, dtype=np.complex64, copy=True)  # copy: padding and masking edit it in place


def _check_padding(pad_columns: int, width: int) -> int:
    if int(pad_columns) != pad_columns or not 0 <= pad_columns < width // 2:
        raise AmbientMRIError(f"pad_columns must be an integer in [0, {width // 2}), got {pad_columns}")
    return int(pad_columns)


def _as_mask(mask, width: int) -> np.ndarray:
    m = np.asarray(mask, dtype=np.float32).reshape(-1)
    if m.shape != (width,):
        raise AmbientMRIError(
            f"mask must have {width} columns (the k-space width), got shape {np.shape(mask)}"
        )
    if not np.isin(m, (0.0, 1.0)).all() or not m.any():
        raise AmbientMRIError("mask must hold 0/1 values with at least one acquired column")
    return m


def _as_target(target, num_slices: int) -> np.ndarray:
    t = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    if t.ndim != 3 or t.shape[0] != num_slices or np.iscomplexobj(t):
        raise AmbientMRIError(f"target must be real (S={num_slices}, h, w), got {t.dtype} {t.shape}")
    return np.ascontiguousarray(t, dtype=np.float32)


def _file_attrs(
    path: Path, target: np.ndarray | None, mask: np.ndarray | None, acquisition: str, extra: Mapping | None
) -> dict:
    out: dict = {"acquisition": acquisition, "patient_id": hashlib.sha256(path.stem.encode()).hexdigest()}
    if target is not None:
        out["max"] = float(target.max())
        out["norm"] = float(np.linalg.norm(target))
    if mask is not None:
        out["acceleration"] = int(round(mask.size / mask.sum()))
        out["num_low_frequency"] = acs_width(mask)
    out.update(extra or {})
    return out


