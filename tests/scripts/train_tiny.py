"""Train the tiny synthetic run: python train_tiny.py OUT STEPS CHECKPOINT_EVERY [SLEEP_PER_STEP].
TRAIN_TINY_PER_RANK=1: each process writes to OUT<rank> (nodes that do not share the run folder)."""

import os
import sys
import time

from ambient_mri.data.factory import with_further
from ambient_mri.training import trainer
from ambient_mri.training.recipe import load_recipe
from helpers import multicoil_measurements, tiny_recipe

out, steps, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sleep = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
if os.environ.get("TRAIN_TINY_PER_RANK"):
    out += os.environ.get("RANK", "0")
if os.environ.get("TRAIN_TINY_FAIL_RANK") == os.environ.get("RANK", "0"):  # this process fails at its 2nd step
    from ambient_mri.errors import AmbientMRIError

    calls, loss = [0], trainer.measurement_loss

    def failing(*a, **k):
        calls[0] += 1
        if calls[0] == 2:
            raise AmbientMRIError("this process failed on purpose")
        return loss(*a, **k)

    trainer.measurement_loss = failing
recipe = tiny_recipe(out, steps=steps, checkpoint_every=every, batch_size=4)
base, _ = multicoil_measurements()
if sleep:
    orig = trainer.measurement_loss

    def slow(*a, **k):
        time.sleep(sleep)
        return orig(*a, **k)

    trainer.measurement_loss = slow
trainer.train(recipe, dataset=(with_further(base, load_recipe(recipe)), {"source": "synthetic"}), progress=False)
