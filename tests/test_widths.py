"""Every official fastMRI k-space width through one model: brain (W = 320, 396) and knee (W = 368, 372) files in the
official layout -> prepare (full phase-encode width kept) -> train on the mixed widths -> reconstruct each file
without a warning -> fastmri.evaluate reads the outputs. 4 coils and one slice per file keep it short."""

from __future__ import annotations

import argparse
import warnings

import h5py
import numpy as np
import pytest

import ambient_mri as am
from ambient_mri.training.trainer import StepPlan, train
from data_tools.prepare import prepare_fastmri
from data_tools.simulate import simulate_coil_data, write_fastmri
from helpers import TINY_NET, blobs

pytestmark = pytest.mark.usefixtures("one_thread")
WIDTHS = {"brain_a": 320, "brain_b": 396, "knee_a": 368, "knee_b": 372}


def test_step_plan_takes_each_batch_from_one_shape_group():
    groups = np.array([0] * 10 + [1] * 3 + [2] * 7)
    plan = StepPlan(np.arange(20), 4, 0, 200, seed=3, rank=0, world=1, groups=groups)
    seen = set()
    for step in range(200):
        batch = plan.global_batch(step)
        assert len(batch) == 4 and len(set(groups[batch])) == 1
        seen.add(int(groups[batch[0]]))
        if groups[batch[0]] != 1:
            assert len(set(batch.tolist())) == 4  # no repeats unless the group is smaller than the batch
        assert np.array_equal(batch, StepPlan(np.arange(20), 4, 0, 200, 3, 0, 1, groups).global_batch(step))
    assert seen == {0, 1, 2}
    one = StepPlan(np.arange(20), 4, 0, 10, 3, 0, 1, np.zeros(20, int))  # one group: the epoch-wise plan
    assert np.array_equal(one.global_batch(7), StepPlan(np.arange(20), 4, 0, 10, 3, 0, 1).global_batch(7))


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    raw = tmp_path_factory.mktemp("official")
    for i, (name, W) in enumerate(WIDTHS.items()):
        img = blobs(1, 400, seed=i)[:, 40:360, (400 - W) // 2: (400 - W) // 2 + W]   # (1, 320, W) images
        sim = simulate_coil_data(img, num_coils=4, oversample=2, noise_std=1e-3, seed=i)  # 640 x W k-space
        write_fastmri(raw / f"{name}.h5", sim.kspace, recon_size=(320, 320),
                      acquisition="AXT2" if name.startswith("brain") else "CORPD_FBK")
    return raw


def test_one_model_trains_on_mixed_widths_and_reconstructs_each(official, tmp_path):
    from fastmri.evaluate import evaluate

    summary = prepare_fastmri(official, tmp_path / "prep", acceleration=4, center_fraction=0.08, progress=False)
    assert len(summary.prepared) == 4, summary.report()
    for name, W in WIDTHS.items():
        with h5py.File(tmp_path / "prep" / "train" / f"{name}.h5") as f:
            assert f.attrs["width"] == W and tuple(f.attrs["image_shape"]) == (320, W)  # no column crop
    # four levels: the UNet's bottleneck attention at full size would otherwise span 160 x 198 positions
    net = {**TINY_NET, "channel_mult": [1, 1, 2, 2]}
    recipe = {"name": "widths", "output": str(tmp_path / "runs"), "network": net,
              "data": {"path": str(tmp_path / "prep" / "train"), "holdout": 1},
              "corruption": {"operator": "multicoil", "ambient": True, "delta": 0.2},
              "training": {"steps": 5, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 5,
                           "log_every": 1, "device": "cpu"}}
    run = train(recipe, progress=False)
    model = am.load_model(run / "model.pt")
    assert model.record.widths == (320, 368, 372, 396)
    for name in WIDTHS:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # every width was seen in training: no warning
            am.reconstruct_file(official / f"{name}.h5", tmp_path / "recon" / f"{name}.h5", model=model,
                                method="one_step", acceleration=4, center_fraction=0.08)
        with h5py.File(tmp_path / "recon" / f"{name}.h5") as f:
            assert f["reconstruction"].shape == (1, 320, 320) and np.isfinite(f["reconstruction"][()]).all()
    means = evaluate(argparse.Namespace(target_path=official, predictions_path=tmp_path / "recon", acquisition=None,
                                        acceleration=None), "reconstruction_rss").means()
    assert all(np.isfinite(np.asarray(v)).all() for v in means.values()), means
