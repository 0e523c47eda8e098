"""Recipe -> training dataset of measurements (with the further corruption Ã attached)."""

from __future__ import annotations

from ..errors import AmbientMRIError
from .measurements import WithFurtherCorruption


def with_further(base, recipe):
    """Attach Ã per the recipe's corruption section (Ã = A when the run is not ambient)."""
    c = recipe.corruption
    if not c.ambient:
        return WithFurtherCorruption(base)
    kind = "pixels" if c.operator == "pixel" else None
    return WithFurtherCorruption(base, extra_lines=c.extra_lines, delta=c.delta, acs_lines=c.acs_lines,
                                 redraw=c.redraw, seed=recipe.training.seed, kind=kind)


def build_training_data(recipe):
    """(dataset, info) for ``recipe.data``; info is recorded in the model file."""
    d = recipe.data
    if d.kind == "prepared":
        from .prepared import PreparedSlices

        base = PreparedSlices(d.path, limit=d.limit)
        return with_further(base, recipe), base.info()
    if d.kind in ("images", "faces", "mnist"):
        from .image_measurements import build_image_measurements

        base = build_image_measurements(recipe)
        return with_further(base, recipe), base.info()
    raise AmbientMRIError(f"data.kind {d.kind!r} has no loader yet")
