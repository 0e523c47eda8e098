"""Samplers: unconditional generation and posterior sampling, generic over operators and priors."""

from .generate import generate
from .posterior import adps, ald, dps, fast_dc, one_step
from .prior import Prior, ambient_sigma_floor, edm_sigmas, one_step_sigma

__all__ = ["Prior", "adps", "ambient_sigma_floor", "ald", "dps", "edm_sigmas", "fast_dc", "generate", "one_step",
           "one_step_sigma"]
