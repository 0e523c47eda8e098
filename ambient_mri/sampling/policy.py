"""One sampling policy for every operator: from a model's training record (and the measurement) the method's
defaults, the Ã the network sees, the σ floor, the one-step σ and the Prior. ``reconstruct`` (MRI) and the image
functions (``image_recon``) are thin front ends over it and share its method table.

How training shapes sampling:
    ambient model (trained on Ã ⊂ A)   the network sees Ã^H Ã x and the mask of Ã, one Ã per trajectory: a fresh
                                       training-type Ã (the training acquisition, then the further corruption; the
                                       anchor's A-DPS), or for MRI's ``fast`` the further corruption of the scan's
                                       own mask (only measured lines; docs/reconstruction.md). Samplers stop at
                                       the median training σ, exp(P_mean) (``sigma_floor``).
    noisy model (images y = x + σ_n z) the Tweedie loss trains D only for σ > σ_n: samplers stop at σ_n.
    clean model                        the plain EDM denoiser (a multi-coil one through a full-mask operator).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import AmbientMRIError
from ..files import check_count, check_finite_number, check_seed
from ..masks import further_mask, kspace_mask, seed_from
from ..operators import MultiCoilMRI, PixelMask
from ..record import TrainingRecord
from . import posterior
from .prior import Prior

_GEN_TAG = 31337  # image generation / inference masks use their own seeded streams, never the training ones
_SCHEDULE = ("sigma_max", "sigma_min", "a_tilde")


@dataclass(frozen=True)
class Method:
    """A reconstruction method: its default steps on MRI and on images (None: not offered there) and its
    options (anything else is refused by name); ``diffusion``: it needs a model; ``stochastic``: it draws noise,
    so it takes steps and several samples differ."""

    name: str
    mri_steps: int | None
    image_steps: int | None
    options: tuple[str, ...]
    diffusion: bool = True
    stochastic: bool = True


METHODS = {m.name: m for m in (
    Method("zero_filled", 0, None, (), diffusion=False, stochastic=False),
    Method("sense", 0, None, ("lam", "iters"), diffusion=False, stochastic=False),
    Method("l1_wavelet", 0, None, ("lam", "iters", "l2"), diffusion=False, stochastic=False),
    Method("adps", 500, 250, (*_SCHEDULE, "zeta")),
    Method("dps", 500, 250, (*_SCHEDULE, "zeta")),
    Method("ald", 500, 250, (*_SCHEDULE, "eps", "gamma")),
    Method("one_step", 1, 1, ("sigma",), stochastic=False),  # D(A^H y) once: N samples would be N copies
    Method("fast", 50, 50, (*_SCHEDULE, "cg_iters", "eta", "lam", "rho", "noise_std")),
)}
ALIASES = {"fast_dc": "fast"}  # the image API's earlier name
MRI_METHODS = tuple(n for n, m in METHODS.items() if m.mri_steps is not None)
IMAGE_METHODS = tuple(n for n, m in METHODS.items() if m.image_steps is not None)
# fast on MRI, by kind of prior (ambient?): chosen on the demo calibration volume, never on the scored one
# (benchmarks/tune_fast.py): CG steps between denoiser calls (an ambient D leaves much to the data; a clean D is
# sharp, and long CG on its output fits noise), DiffPIR's data weight ρ and the DDIM noise η.
FAST_MRI = {True: {"cg_iters": 20, "rho": 10.0, "eta": 0.0}, False: {"cg_iters": 10, "rho": 10.0, "eta": 0.5}}
ADPS_AMBIENT_SIGMA_MIN = 0.1  # A-DPS/DPS with an ambient MRI model (sampler_defaults)


def as_record(model_or_record) -> TrainingRecord:
    """The TrainingRecord of a model, a record, or a model file's record dict (converted)."""
    if isinstance(model_or_record, TrainingRecord):
        return model_or_record
    rec = getattr(model_or_record, "record", None)
    if isinstance(rec, TrainingRecord):
        return rec
    if isinstance(model_or_record, dict):
        return TrainingRecord.from_dict(model_or_record)
    info = getattr(model_or_record, "info", None)  # a duck-typed model that carries the record as a dict
    if isinstance(info, dict):
        return TrainingRecord.from_dict(info)
    raise AmbientMRIError(f"expected an ambient_mri model (load_model), got {type(model_or_record).__name__}")


# what each numeric option may be: a count >= 1, a number > 0, >= 0, or in [0, 1] (None: the default)
_COUNTS, _POSITIVE, _UNIT = ("iters", "cg_iters"), ("sigma_max", "sigma_min", "sigma", "eps", "gamma"), ("eta",)


def check_number(name: str, v, low: float = 0.0, strict: bool = False, high: float | None = None) -> None:
    """A required real, finite option in [low, high] (``strict``: above low): ``files.check_finite_number``."""
    if v is None:
        raise AmbientMRIError(f"{name} must be a finite number, got None")
    check_finite_number(name, v, low, strict, high)


def check_options(options: dict) -> None:
    """Every numeric sampler or solver option by name (a NaN σ or a negative λ gave NaN images, not an error)."""
    for k, v in options.items():
        if v is None or k == "a_tilde":
            continue
        if k in _COUNTS:
            check_count(k, v)
        elif k in _UNIT:
            check_number(k, v, 0.0, high=1.0)
        else:
            check_number(k, v, 0.0, strict=k in _POSITIVE)
    lo, hi = options.get("sigma_min"), options.get("sigma_max")
    if lo is not None and hi is not None and lo > hi:
        raise AmbientMRIError(f"sigma_min ({lo!r}) must not be above sigma_max ({hi!r})")


MAX_STEPS = 100_000  # 200x A-DPS's 500; the σ grid of 10**12 steps alone would be 8 TB


def check_run(m: Method, steps, num_samples, batch_size=None, seed=0) -> None:
    """The counts and the seed of one reconstruction; a deterministic method refuses steps and samples it would
    ignore."""
    for name, v in (("steps", steps), ("num_samples", num_samples), ("batch_size", batch_size)):
        if v is not None:
            check_count(name, v, high=MAX_STEPS if name == "steps" else None)
    check_seed(seed)
    if not m.stochastic and (steps is not None or (num_samples or 1) > 1):
        raise AmbientMRIError(f"method {m.name!r} is deterministic: it takes no steps and no num_samples > 1 "
                              "(std maps come from the sampling methods: adps, dps, ald, fast)")


def method(name: str, domain: str, options: dict | None = None) -> Method:
    """The method ``name`` for ``domain`` ("mri" | "image"), its options checked against the table and by value."""
    m = METHODS.get(ALIASES.get(name, name)) if isinstance(name, str) else None
    offered = MRI_METHODS if domain == "mri" else IMAGE_METHODS
    if m is None or m.name not in offered:
        raise AmbientMRIError(f"unknown method {name!r}; choose one of {', '.join(offered)}")
    unknown = sorted(set(options or {}) - set(m.options))
    if unknown:
        raise AmbientMRIError(f"option(s) {', '.join(unknown)} do not apply to method {m.name!r}; its options: "
                              f"{', '.join(m.options) or 'none'}")
    check_options(options or {})
    return m


def default_steps(m: Method, record: TrainingRecord) -> int:
    return m.mri_steps if record.is_mri else m.image_steps


def sampler_defaults(m: Method, record: TrainingRecord, sigma_n: float = 0.0) -> dict:
    """Sampler options a method takes unless the caller gives them (``sigma_n``: the measurement's noise)."""
    if not m.diffusion or m.name == "one_step":
        return {}
    out = {"sigma_min": sigma_floor(record)}
    if record.is_mri and m.name in ("adps", "dps"):
        # (A-)DPS imposes the data only through the gradient of ‖y - A D‖, which reaches x mostly at small σ: the
        # anchor's σ_min 0.004 for a clean model. An ambient model ends on D = E[x0 | Ã x] with Ã = the scan's
        # lines, a one-step estimate from the iterate; below the σ it was trained at D just returns its input.
        # ADPS_AMBIENT_SIGMA_MIN was chosen on the calibration volume (benchmarks/adps_variants.py, 500 steps:
        # +0.9 to +1.0 dB over 0.004 at R = 4 and 8; docs/reconstruction.md)
        out["sigma_min"] = max(ADPS_AMBIENT_SIGMA_MIN if record.ambient else 0.004, record.sigma_n)
    if m.name == "fast" and record.is_mri:
        out.update(FAST_MRI[record.ambient])
    if m.name == "ald":  # the likelihood's noise level
        out["gamma"] = max(float(sigma_n), 1e-3)
    return out


def sigma_floor(record, floor: float = 0.004) -> float:
    """Smallest σ a sampler uses: ``floor`` (0.004 for posterior sampling, as A-DPS; 0.002 for generation, as EDM),
    σ_n for a model trained on noisy images, and for an ambient model the median training σ, exp(P_mean).

    Why the ambient floor: EDM's D = c_skip x_in + c_out F with c_out -> 0 as σ -> 0, and an ambient network's input
    Ã^H Ã x lacks what Ã did not see, so at small σ D returns its masked input (samples of an ambient face model
    looked like masked photos at σ_min = 0.002; at 0.2 they have the clean photos' noise level; MRI fast +0.5 dB)."""
    r = as_record(record)
    return max(floor, r.sigma_n, r.sigma.quantile(0.0) if r.ambient else 0.0)


def ambient_sigma_floor(record) -> float:
    """exp(P_mean) for an ambient model, 0 otherwise (the ambient part of ``sigma_floor``)."""
    r = as_record(record)
    return r.sigma.quantile(0.0) if r.ambient else 0.0


def one_step_sigma(record, sigma_n: float = 0.0) -> float:
    """σ of the one-step reconstruction D(A^H y, M, σ). MRI: the anchor's 0.003 assumes a model trained down to
    that level; ours train ln σ ~ N(P_mean, P_std²), so the lower 2.3% quantile exp(P_mean - 2 P_std) (0.027 for
    EDM's defaults), never below 0.003 (at a σ never seen, c_skip -> 1 and D(x) is just x). Images: Tweedie's
    E[x0 | y] = D(y, σ_n) at the measurement's noise σ_n, never below 0.003."""
    r = as_record(record)
    return max(0.003, r.sigma.quantile(-2.0)) if r.is_mri else max(0.003, float(sigma_n))


def training_type_mask(record, batch: int, seed: int, width: int | None = None) -> torch.Tensor | None:
    """A fresh Ã of the kind an ambient model was trained with (None for other models): the training
    acquisition, then the further corruption. MRI: column masks (B, 1, 1, W) with the recorded mask kind, R and
    ACS fraction; pixel models: (B, 1, H, W) with the training p and box. Sample b is seeded by (seed, b)."""
    r = as_record(record)
    if not r.ambient or r.operator not in ("multicoil", "pixel"):
        return None
    a, fur = r.acquisition, r.further.mask_options()
    rows = []
    if r.operator == "multicoil":
        if not (a.kind and a.acceleration and a.center_fraction):
            raise AmbientMRIError("the model file does not record its training mask (mask_kind, acceleration, "
                                  "center_fraction); cannot draw a training-type Ã")
        kind = a.kind if a.kind != "poisson2d" else "random"
        for b in range(batch):
            m = kspace_mask(kind, (1, width), float(a.acceleration), float(a.center_fraction), seed=(seed, b))
            rows.append(further_mask(m, seed=(seed, b, 1), **fur) if fur else m)
        return torch.from_numpy(np.stack(rows))[:, None]
    from ..data.image_measurements import box_mask

    _, H, W = r.image_shape
    for b in range(batch):
        m = (np.random.RandomState(seed_from((seed, _GEN_TAG, b, 0))).uniform(size=(H, W)) >= a.p).astype(np.float32)
        if a.box is not None:
            m = m * box_mask((H, W), int(a.box), seed=(seed, _GEN_TAG, b, 1))
        if r.further.delta is not None:
            m = further_mask(m, delta=float(r.further.delta), seed=(seed, _GEN_TAG, b, 2), kind="pixels")
        rows.append(m)
    return torch.from_numpy(np.stack(rows))[:, None]


def scan_type_mask(record, mask: torch.Tensor, seed: int) -> torch.Tensor:
    """Ã ⊂ the scan's own column mask (B, 1, 1, W): the model's further corruption applied to the acquired lines,
    exactly as training applied it to each training mask, so the network sees only measured k-space lines."""
    fur = as_record(record).further.mask_options()
    if not fur:
        return mask.clone()
    rows = [further_mask(mask[b].cpu().numpy(), seed=(seed, b, 2), **fur) for b in range(mask.shape[0])]
    return torch.from_numpy(np.stack(rows)).to(mask.device)


def mri_prior(model, m: Method, mask: torch.Tensor, maps: torch.Tensor, seed: int, a_tilde: str | None = None) -> Prior:
    """The Prior for multi-coil k-space with column mask (B, 1, 1, W) and maps (B, C, H, W)."""
    r = as_record(model)
    if m.name == "one_step":
        return Prior(model)
    if not r.ambient:  # a clean multi-coil model was trained on A^H A (x0 + σ n) with a full mask: feed it the same
        full = torch.ones_like(mask)
        return Prior(model, MultiCoilMRI(maps, full), full)
    # A-DPS and fast: Ã = the scan's own lines (chosen on the calibration volume over the anchor's fresh
    # training-type Ã and over the further corruption of the scan's mask, docs/reconstruction.md)
    a_tilde = a_tilde or ("acquired" if m.name in ("adps", "dps", "fast") else "training")
    if a_tilde not in ("training", "scan", "acquired"):
        raise AmbientMRIError(f"a_tilde must be 'training', 'scan' or 'acquired', got {a_tilde!r}")
    if a_tilde == "training":
        mt = training_type_mask(r, mask.shape[0], seed, width=mask.shape[-1]).to(mask.device)
    elif a_tilde == "scan":
        mt = scan_type_mask(r, mask, seed)
    else:  # every measured line, as one-step sees them
        mt = mask.clone()
    return Prior(model, MultiCoilMRI(maps, mt), mt)


def image_prior(model, batch: int, seed: int = 0, device=None) -> Prior:
    """The Prior for images: a fixed training-type Ã per trajectory for ambient pixel models; a ones mask for a
    model that takes a mask channel without being ambient; else the plain denoiser."""
    r = as_record(model)
    mt = training_type_mask(r, batch, seed)
    if mt is None:
        if "mask" in r.cond:
            H, W = r.image_shape[-2:]
            return Prior(model, None, torch.ones(batch, 1, H, W, device=device))
        return Prior(model)
    mt = mt.to(device)
    return Prior(model, PixelMask(mt), mt)


# A-DPS is DPS through an ambient prior. Looked up in ``sampling.posterior`` at call time, so a sampler can be
# swapped there (tests spy on the options each one receives).
SAMPLERS = {"adps": "adps", "dps": "dps", "ald": "ald", "fast": "fast_dc"}


def sample(m: Method, prior: Prior, y: torch.Tensor, A, shape: tuple[int, ...], mask: torch.Tensor, steps: int,
           seed: int, sigma_n: float = 0.0, progress: bool = False, dtype=torch.complex64, **options) -> torch.Tensor:
    """Run method ``m`` with the policy's defaults under the caller's ``options``: (B, ...) reconstructions;
    ``prior.nfe`` counts the network evaluations. ``mask`` is the mask of A (one-step shows it to the network)."""
    r = as_record(prior.model)
    if m.name == "one_step":
        return posterior.one_step(prior, y, A, mask, sigma=options.get("sigma", one_step_sigma(r, sigma_n)))
    opts = {**sampler_defaults(m, r, sigma_n), **options}
    fn = getattr(posterior, SAMPLERS[m.name])
    return fn(prior, y, A, shape, steps=steps, seed=seed, dtype=dtype, progress=progress, **opts)
