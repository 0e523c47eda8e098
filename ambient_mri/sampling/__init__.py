"""Samplers: unconditional generation and posterior sampling, generic over operators and priors; the policy
that chooses their settings from a model's training record."""

from .generate import generate
from .policy import ambient_sigma_floor, one_step_sigma, sigma_floor
from .posterior import adps, ald, dps, fast_dc, one_step
from .prior import Prior, edm_sigmas

__all__ = ["Prior", "adps", "ald", "ambient_sigma_floor", "dps", "edm_sigmas", "fast_dc", "generate", "one_step",
           "one_step_sigma", "sigma_floor"]
