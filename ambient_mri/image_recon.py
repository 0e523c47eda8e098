"""Images with the MRI engine's samplers: unconditional generation, inpainting, denoising, the memorisation probe.

A thin front end over ``ambient_mri.sampling``: EDM's ``generate`` for generation and, for posteriors, the method
table, defaults, Ã and σ rules of ``sampling.policy`` (the same ones ``reconstruct`` uses for MRI) with the image
operators ``PixelMask`` and ``Identity``. Images are (B, C, H, W) in [-1, 1] (the training scale;
``ambient_mri.data.images.to_model_scale`` maps [0, 1] images there).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .arrays import as_tensor
from .devices import resolve_device
from .errors import AmbientMRIError
from .masks import seed_from
from .operators import Identity, LinearOperator, PixelMask
from .record import MAX_SIGMA_N
from .sampling import generate, policy
from .sampling.policy import _GEN_TAG, image_prior, sigma_floor
from .sampling.prior import Prior

METHODS = policy.IMAGE_METHODS


@dataclass
class ImageResult:
    """A posterior reconstruction: ``image`` (B, C, H, W) in [-1, 1] (the mean when num_samples > 1),
    ``std`` (B, C, H, W) over the samples or None, all ``samples`` (S, B, C, H, W), network evaluations, seconds."""

    image: torch.Tensor
    std: torch.Tensor | None
    samples: torch.Tensor
    nfe: int
    seconds: float


# --------------------------------------------------------------------------------------------------
# What the model was trained on
# --------------------------------------------------------------------------------------------------


def is_image_model(model) -> bool:
    return policy.as_record(model).operator in ("pixel", "identity")


def model_image_shape(model) -> tuple[int, ...]:
    shape = policy.as_record(model).image_shape
    if not shape:
        raise AmbientMRIError("the model file does not record its image shape")
    return shape


def _device(model, device) -> torch.device:
    if device is not None:
        return resolve_device(device)
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# Unconditional generation
# --------------------------------------------------------------------------------------------------


def default_sigma_min(model, sigma_min: float | None = None, floor: float = 0.002) -> float:
    """σ_min of generation: the given one, else ``policy.sigma_floor`` (``floor``, σ_n of a noisy model, the
    ambient floor of an ambient one, whichever is largest)."""
    return float(sigma_min) if sigma_min is not None else sigma_floor(policy.as_record(model), floor)


@torch.no_grad()
def sample_images(model, num: int, steps: int = 18, seed: int = 0, batch_size: int = 64,
                  sigma_min: float | None = None, sigma_max: float = 80.0, heun: bool = True, device=None,
                  progress: bool = False) -> torch.Tensor:
    """``num`` samples (num, C, H, W) in [-1, 1] (CPU, float32) with EDM's Heun sampler (``generate``).

    Ambient pixel models keep one training-type Ã per trajectory; noisy models stop at σ_n (see the module
    docstring). Deterministic for (seed, batch_size). Clean MRI models give complex (num, H, W) images.
    """
    policy.check_count("num", num)
    policy.check_run(policy.METHODS["fast"], steps, 1, batch_size, seed)  # a diffusion method: counts and seed
    policy.check_options({"sigma_min": sigma_min, "sigma_max": sigma_max})
    if not (isinstance(heun, (bool, np.bool_)) or (isinstance(heun, int) and heun in (0, 1))):  # "no" is truthy
        raise AmbientMRIError(f"heun must be True or False, got {heun!r}")
    r = policy.as_record(model)
    if r.is_mri and r.ambient:
        raise AmbientMRIError("generation from an ambient MRI model needs coil maps and a k-space Ã; "
                              "use ambient_mri.reconstruct for posterior sampling instead")
    dev = _device(model, device)
    shape = model_image_shape(model)
    complex_ = r.is_mri
    img_shape = tuple(shape[-2:]) if complex_ else shape
    s_min = default_sigma_min(model, sigma_min)
    out = []
    for b, start in enumerate(range(0, num, batch_size)):
        n = min(batch_size, num - start)
        prior = image_prior(model, n, seed=seed * 100_003 + b, device=dev)
        x = generate(prior, (n, *img_shape), steps=steps, sigma_min=s_min, sigma_max=sigma_max, heun=heun,
                     seed=seed * 100_003 + b, dtype=torch.complex64 if complex_ else torch.float32, device=dev,
                     progress=progress)
        out.append(x.cpu())
    x = torch.cat(out)
    bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
    if bad:  # NaN survives clamp_ and came out as black PNGs with exit 0
        raise AmbientMRIError(f"{bad} of {num} samples are not finite (NaN or Inf) with sigma_min {s_min:g}: the "
                              "last steps divide by σ (raise sigma_min; EDM's default is 0.002), or the model's "
                              "weights overflow; nothing is returned")
    return x if complex_ else x.clamp_(-1, 1)


# --------------------------------------------------------------------------------------------------
# Posterior sampling: inpainting and denoising
# --------------------------------------------------------------------------------------------------


def _as_images(x, name: str, channels: int | None = None) -> torch.Tensor:
    t = as_tensor(x, name)  # big-endian and negative-stride arrays too; object arrays and meta tensors refused
    if t.is_complex():  # .float() would keep the real part with only torch's warning
        raise AmbientMRIError(f"{name}: complex values; the image models take real images (and masks) in [-1, 1]")
    t = t.float()
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or 0 in t.shape:
        raise AmbientMRIError(f"{name}: expected a non-empty (H, W), (C, H, W) or (B, C, H, W), got shape "
                              f"{tuple(t.shape)}")
    if channels is not None and t.shape[1] != channels:
        raise AmbientMRIError(f"{name}: has {t.shape[1]} channel(s), the model {channels}")
    if not torch.isfinite(t).all():
        raise AmbientMRIError(f"{name}: contains NaN or Inf")
    return t


def _check_scale(x: torch.Tensor, sigma_n: float, name: str, model=None) -> None:
    """Images must be in the model's [-1, 1] (plus their noise): a 0..255 image would be clamped, its known pixels
    lost, without a word. Only a clearly wrong range is refused (beyond 2 + 10 σ_n), not a noisy pixel past 1."""
    cap = max(MAX_SIGMA_N, policy.as_record(model).sigma_n) if model is not None else MAX_SIGMA_N
    if sigma_n > cap:  # also keeps the range check below from letting 0..255 images through
        raise AmbientMRIError(f"sigma_n must be at most {cap:g} (the images' [-1, 1] scale, or the model's training "
                              f"σ_n), got {sigma_n:g}: σ 50 on 0..255 images is 50 / 127.5 = 0.39 in that scale")
    top = float(x.abs().max())
    if top > 2 + 10 * sigma_n:
        raise AmbientMRIError(f"{name}: values reach {top:g} (sigma_n {sigma_n:g}); images must be in [-1, 1], the "
                              "models' scale (ambient_mri.data.images.to_model_scale maps [0, 1] images there)")


def _check_model(model) -> tuple[int, int, int]:
    if not is_image_model(model):
        op = policy.as_record(model).operator
        raise AmbientMRIError(f"model was trained for the {op!r} operator; inpainting and denoising need an image "
                              "model (operator pixel or identity)")
    return model_image_shape(model)


def posterior(model, y, A: LinearOperator, mask: torch.Tensor, sigma_n: float = 0.0, method: str = "dps",
              steps: int | None = None, num_samples: int = 1, seed: int = 0, device=None, progress: bool = False,
              **options) -> ImageResult:
    """Posterior samples of x given y = A x + σ_n z for an image model, with the package's samplers.

    y (B, C, H, W); ``mask`` (B, 1, H, W) is the mask of A (ones for the identity), shown to ambient models by
    ``one_step``. method: dps | adps (A-DPS: dps through a training-type Ã; an ambient model always sees one) |
    ald | fast (also called fast_dc) | one_step. ``options`` go to the sampler (zeta, sigma_max, sigma_min, ...;
    the method table of ``sampling.policy`` lists them).
    """
    m = policy.method(method, "image", options)
    policy.check_run(m, steps, num_samples, None, seed)
    policy.check_number("sigma_n", sigma_n)
    C, H, W = _check_model(model)
    dev = _device(model, device)
    y = y.to(dev)
    if tuple(y.shape[-3:]) != (C, H, W):
        raise AmbientMRIError(f"the model was trained on {C}x{H}x{W} images, the input is "
                              f"{'x'.join(map(str, y.shape[-3:]))}")
    mask = mask.to(dev)
    steps = steps if steps is not None else policy.default_steps(m, policy.as_record(model))
    B = y.shape[0]
    tic = time.time()
    samples, nfe = [], 0
    for s in range(num_samples):
        run_seed = seed * 1_000_003 + s
        prior = Prior(model) if m.name == "one_step" else image_prior(model, B, seed=run_seed, device=dev)
        x = policy.sample(m, prior, y, A, (B, C, H, W), mask, steps, run_seed, sigma_n=sigma_n, progress=progress,
                          dtype=torch.float32, **options)
        samples.append(x.detach().cpu().clamp(-1, 1))
        nfe += prior.nfe
    stack = torch.stack(samples)
    std = stack.std(0) if num_samples > 1 else None
    return ImageResult(stack.mean(0), std, stack, nfe, time.time() - tic)


def inpaint(model, image, mask, method: str = "dps", steps: int | None = None, sigma_n: float = 0.0,
            num_samples: int = 1, seed: int = 0, device=None, progress: bool = False, **options) -> ImageResult:
    """Fill the missing pixels of ``image`` ((H, W), (C, H, W) or (B, C, H, W) in [-1, 1]; values under mask 0
    are ignored) given ``mask`` ((H, W), (1, H, W) or (B, 1, H, W); 1 = known, e.g. a pixel or box mask) with a
    model trained on masked, noisy or clean images. ``sigma_n``: noise level of the known pixels."""
    C, _, _ = _check_model(model)
    policy.check_number("sigma_n", sigma_n)
    x = _as_images(image, "image", C)
    m = _as_images(mask, "mask")
    if m.shape[1] != 1 or m.shape[-2:] != x.shape[-2:]:
        raise AmbientMRIError(f"mask of shape {tuple(m.shape)} does not fit images of shape {tuple(x.shape)}")
    if not torch.all((m == 0) | (m == 1)):
        raise AmbientMRIError("mask must contain only 0 (missing) and 1 (known)")
    m = m.expand(x.shape[0], 1, *x.shape[-2:]) if m.shape[0] == 1 else m
    if m.shape[0] != x.shape[0]:
        raise AmbientMRIError(f"{m.shape[0]} masks for {x.shape[0]} images")
    _check_scale(x * m, sigma_n, "image", model)
    A = PixelMask(m.to(_device(model, device)))
    return posterior(model, m * x, A, m, sigma_n, method, steps, num_samples, seed, device, progress, **options)


def denoise(model, noisy, sigma_n: float, method: str = "one_step", steps: int | None = None, num_samples: int = 1,
            seed: int = 0, device=None, progress: bool = False, **options) -> ImageResult:
    """Remove Gaussian noise of level ``sigma_n`` (in the [-1, 1] scale) from ``noisy`` images.
    ``one_step`` is Tweedie's E[x0 | y] = D(y, σ_n) — exact for a model trained on noisy images at σ_n ≤ σ;
    dps / ald / fast_dc draw posterior samples (A = identity)."""
    C, _, _ = _check_model(model)
    policy.check_number("sigma_n", sigma_n, strict=True)
    y = _as_images(noisy, "noisy", C)
    _check_scale(y, sigma_n, "noisy", model)
    ones = torch.ones(y.shape[0], 1, *y.shape[-2:])
    if method == "one_step":
        options.setdefault("sigma", float(sigma_n))
    return posterior(model, y, Identity(), ones, sigma_n, method, steps, num_samples, seed, device, progress,
                     **options)


# --------------------------------------------------------------------------------------------------
# Memorisation probe
# --------------------------------------------------------------------------------------------------


def probe_mask(shape, keep: float = 0.1, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """(B, 1, H, W) random pixel masks keeping a fraction ``keep`` of the pixels (seeded per image)."""
    if not 0 < keep <= 1:
        raise AmbientMRIError(f"keep must be in (0, 1], got {keep}")
    H, W = shape[-2:]
    rows = [np.random.RandomState(seed_from((seed, _GEN_TAG, b, 9))).uniform(size=(H, W)) < keep for b in range(batch)]
    return torch.from_numpy(np.stack(rows).astype(np.float32))[:, None]


def memorization_probe(model, images, keep: float = 0.1, mask=None, method: str = "dps", steps: int | None = None,
                       seed: int = 0, device=None, progress: bool = False, **options) -> dict:
    """Mask most of each image (keep a fraction ``keep`` of its pixels, or use ``mask``), reconstruct it with
    ``inpaint`` and measure how close the result is to the original: cosine similarity (pixel space, [-1, 1]),
    SSIM (data range 2) and PSNR per image. A model that memorised its training set restores *training* images
    from a few pixels far better than unseen ones: run it on training and held-out images and compare.
    Returns {"cosine", "ssim", "psnr" (lists), their means, "reconstruction", "masked", "mask", "nfe"}."""
    from .metrics import batch_ssim, cosine_similarity

    C, _, _ = _check_model(model)
    x = _as_images(images, "images", C)
    # the whole reference, not only its kept pixels (inpaint's check): it is what the result is scored against
    _check_scale(x, options.get("sigma_n", 0.0), "images", model)
    m = probe_mask(x.shape, keep, seed, x.shape[0]) if mask is None else _as_images(mask, "mask")
    res = inpaint(model, x, m, method=method, steps=steps, seed=seed, device=device, progress=progress, **options)
    rec = res.image.numpy()
    ref = x.numpy()
    cos = cosine_similarity(rec, ref)
    ssim = batch_ssim(rec, ref, data_range=2.0)
    mse = ((rec - ref) ** 2).reshape(len(ref), -1).mean(1)
    psnr = 10 * np.log10(4.0 / np.maximum(mse, 1e-12))
    return {"cosine": cos.tolist(), "ssim": ssim.tolist(), "psnr": psnr.tolist(), "mean_cosine": float(cos.mean()),
            "mean_ssim": float(ssim.mean()), "mean_psnr": float(psnr.mean()), "keep": keep, "method": method,
            "reconstruction": res.image, "masked": m * x, "mask": m, "nfe": res.nfe}
