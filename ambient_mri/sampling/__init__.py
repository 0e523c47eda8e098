"""Samplers: unconditional generation and posterior sampling, generic over operators and priors."""

from .generate import generate
from .posterior import adps, ald, dps, fast_dc, one_step
from .prior import Prior, edm_sigmas

__all__ = ["Prior", "adps", "ald", "dps", "edm_sigmas", "fast_dc", "generate", "one_step"]
