"""Training: the one loss for every corruption, the recipe schema, and the trainer."""

from .losses import consistency_loss, edm_weight, measurement_loss, sample_sigma

__all__ = ["consistency_loss", "edm_weight", "measurement_loss", "sample_sigma"]
