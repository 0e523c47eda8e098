"""The training record: what a model was trained on, typed and versioned, stored in every model file.

Sampling reads everything it needs from here (``sampling.policy``): the operator and image shape, how the training
measurements were acquired (A), the further corruption (Ã ⊂ A), the data noise σ_n, the training σ distribution,
σ_data and the network's condition channels. ``data`` and ``recipe`` travel along as provenance only.

Version 1 is the untyped dict that model files held up to package 0.1.0 (no ``version`` key); ``from_dict`` is the
one converter from it. A model file with a version this package does not know is refused by name.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .errors import AmbientMRIError

OPERATORS = ("multicoil", "singlecoil", "pixel", "identity")  # what a training record may name
MRI_OPERATORS = OPERATORS[:2]  # complex images (B, H, W); the others real (B, C, H, W)
MAX_SIGMA_N = 2.0  # image noise: the width of [-1, 1] (training's bound; inference also takes a model's own σ_n)

VERSION = 2
KNOWN_VERSIONS = (1, 2)


@dataclass(frozen=True)
class Acquisition:
    """How each training measurement was acquired (the operator A). k-space: mask kind, R, ACS fraction and
    lines (None when the training files disagree); images: the missing-pixel probability p and box side."""

    kind: str | None = None
    acceleration: float | None = None
    center_fraction: float | None = None
    acs_lines: int | None = None
    p: float = 0.0
    box: int | None = None


@dataclass(frozen=True)
class FurtherCorruption:
    """Ã ⊂ A: acquired non-ACS columns removed (``extra_lines``) or each acquired column / kept pixel dropped with
    probability ``delta``; ``acs_lines`` protected centre columns; ``redraw`` a new Ã at every use."""

    extra_lines: int | None = None
    delta: float | None = None
    acs_lines: int | None = None
    redraw: bool = False

    def mask_options(self) -> dict:
        """The keyword arguments of ``masks.further_mask`` that are set."""
        return {k: v for k, v in (("extra_lines", self.extra_lines), ("delta", self.delta),
                                  ("acs_lines", self.acs_lines)) if v is not None}


@dataclass(frozen=True)
class SigmaDistribution:
    """Training noise levels: ln σ ~ N(P_mean, P_std²) (EDM)."""

    P_mean: float = -1.2
    P_std: float = 1.2

    def quantile(self, z: float) -> float:
        """exp(P_mean + z P_std): the σ at z standard deviations."""
        return float(math.exp(self.P_mean + z * self.P_std))


@dataclass(frozen=True)
class TrainingRecord:
    operator: str                                   # multicoil | singlecoil | pixel | identity
    ambient: bool                                   # trained on Ã ⊂ A
    image_shape: tuple[int, ...]                    # (H, W) for MRI, (C, H, W) for images
    widths: tuple[int, ...] = ()                    # every k-space / image width the training data had
    cond: tuple[str, ...] = ()                      # extra network inputs: "mask" (of Ã), "ones"
    further: FurtherCorruption = field(default_factory=FurtherCorruption)
    sigma_n: float = 0.0                            # noise of the training images (images only)
    sigma: SigmaDistribution = field(default_factory=SigmaDistribution)
    sigma_data: float = 0.5
    acquisition: Acquisition = field(default_factory=Acquisition)
    data: dict = field(default_factory=dict)        # provenance: what the training set said about itself
    recipe: dict = field(default_factory=dict)      # provenance: the whole recipe
    version: int = VERSION

    @property
    def is_mri(self) -> bool:
        return self.operator in MRI_OPERATORS

    def to_dict(self) -> dict:
        """Plain values for the model file: version 1's keys (so older readers still find them) plus the typed
        sections ``acquisition`` and ``sigma``."""
        d = asdict(self)
        d["image_shape"], d["cond"], d["widths"] = list(self.image_shape), list(self.cond), list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainingRecord:
        """The one converter: a model file's record (version 1 or 2) -> TrainingRecord."""
        if not isinstance(d, dict):
            raise AmbientMRIError(f"the training record is a {type(d).__name__}, not a mapping")
        version = d.get("version", 1)
        if version not in KNOWN_VERSIONS:
            raise AmbientMRIError(f"training record version {version!r} is not known to this ambient_mri (it reads "
                                  f"versions {', '.join(map(str, KNOWN_VERSIONS))}); upgrade the package")
        if "operator" not in d:
            raise AmbientMRIError("the training record names no operator")
        recipe = d.get("recipe") or {}
        data = d.get("data") or {}
        if version == 1:
            t = recipe.get("training") or {}
            sigma = SigmaDistribution(float(t.get("P_mean", -1.2)), float(t.get("P_std", 1.2)))
            acq = acquisition_from_summary(data.get("mask") or {}, recipe.get("corruption") or {})
        else:
            sigma = SigmaDistribution(**_known(SigmaDistribution, d.get("sigma") or {}))
            acq = Acquisition(**_known(Acquisition, d.get("acquisition") or {}))
        shape = tuple(int(v) for v in d.get("image_shape") or ())
        if any(v < 1 for v in shape):
            raise AmbientMRIError(f"the training record's image_shape {list(shape)} has a size below 1")
        op = str(d["operator"])
        want = 2 if op in MRI_OPERATORS else 3
        if shape and op in OPERATORS and len(shape) != want:  # empty: not recorded; an unknown operator is
            # refused by name where it is read
            raise AmbientMRIError(f"the training record's image_shape {list(shape)} is not "
                                  f"{'(H, W)' if want == 2 else '(C, H, W)'} for operator {op!r}")
        rec = cls(operator=op, ambient=bool(d.get("ambient", False)), image_shape=shape,
                  widths=tuple(int(v) for v in d.get("widths") or shape[-1:]),
                  cond=tuple(d.get("cond") or ()),
                  further=FurtherCorruption(**_known(FurtherCorruption, d.get("further") or {})),
                  sigma_n=float(d.get("sigma_n") or 0.0), sigma=sigma,
                  sigma_data=float(d.get("sigma_data", 0.5)), acquisition=acq, data=data, recipe=recipe)
        # what sampling computes with: a NaN or out-of-range value here gave NaN or near-blank samples silently
        for name, value, ok in (("sigma_n", rec.sigma_n, 0 <= rec.sigma_n <= MAX_SIGMA_N),
                                ("sigma.P_mean", sigma.P_mean, math.isfinite(sigma.P_mean)),
                                ("sigma.P_std", sigma.P_std, 0 < sigma.P_std < math.inf),
                                ("sigma_data", rec.sigma_data, 0 < rec.sigma_data < math.inf),
                                ("acquisition.p", acq.p, 0 <= acq.p < 1)):
            if not ok:  # NaN fails every comparison
                raise AmbientMRIError(f"the training record's {name} is {value!r}, out of range (a damaged or "
                                      "hand-edited model file)")
        return rec


def _known(cls, values: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def _single(v):
    """A data summary holds one value, or the sorted distinct values when files disagree: those mean 'none'."""
    return None if isinstance(v, (list, tuple)) else v


def acquisition_from_summary(mask: dict, corruption: dict) -> Acquisition:
    """The Acquisition from a training set's mask summary (``info()["mask"]`` of the data) and the recipe's
    corruption section (images: p and box)."""
    acs, R, cf = (_single(mask.get(k)) for k in ("acs_lines", "acceleration", "center_fraction"))
    box = mask.get("box", corruption.get("box"))
    return Acquisition(kind=_single(mask.get("kind")), acceleration=None if R is None else float(R),
                       center_fraction=None if cf is None else float(cf), acs_lines=None if acs is None else int(acs),
                       p=float(mask.get("p", corruption.get("p", 0.0)) or 0.0), box=None if box is None else int(box))
