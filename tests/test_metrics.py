"""Metrics equal fastmri.evaluate's definitions, per volume and over directories."""

import argparse

import h5py
import numpy as np
import pytest
from fastmri import evaluate as fe

import ambient_mri as am


def volumes(seed=0, S=4, H=40, W=32):
    rng = np.random.default_rng(seed)
    gt = np.abs(rng.standard_normal((S, H, W))).astype(np.float32) + 0.5
    pred = (gt + 0.2 * rng.standard_normal(gt.shape)).astype(np.float32)
    return gt, pred


@pytest.mark.parametrize("seed", range(4))
def test_evaluate_volume_equals_fastmri(seed):
    gt, pred = volumes(seed)
    ours = am.metrics.evaluate_volume(gt, pred)
    assert ours["PSNR"] == pytest.approx(float(fe.psnr(gt, pred)), abs=1e-6)
    assert ours["SSIM"] == pytest.approx(float(fe.ssim(gt, pred)[0]), abs=1e-6)
    assert ours["NMSE"] == pytest.approx(float(fe.nmse(gt, pred)), abs=1e-6)


@pytest.mark.parametrize("scale", [1e-12, 1e12])
def test_metrics_do_not_depend_on_the_intensity_scale(scale):
    """SSIM in float32 (fastMRI's) is NaN at these scales; ours is computed in float64."""
    gt, pred = volumes(0)
    ref = am.metrics.evaluate_volume(gt, pred)
    ours = am.metrics.evaluate_volume(gt * np.float32(scale), pred * np.float32(scale))
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], rel=1e-5), k


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # the perfect case: skimage's PSNR is inf
def test_evaluate_volume_crops_and_takes_magnitude():
    gt, pred = volumes(1, H=32, W=32)
    big = np.zeros((4, 40, 36), dtype=np.complex64)
    pred = np.abs(pred)
    big[:, 4:36, 2:34] = pred * np.exp(1j * 0.7)
    a = am.metrics.evaluate_volume(gt, big)
    b = am.metrics.evaluate_volume(gt, pred)
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-5)
    perfect = am.metrics.evaluate_volume(gt, gt)
    assert perfect["NMSE"] == 0 and perfect["SSIM"] == pytest.approx(1.0) and perfect["PSNR"] == np.inf


def test_evaluate_dirs_equals_fastmri_evaluate(tmp_path):
    tdir, rdir = tmp_path / "t", tmp_path / "r"
    tdir.mkdir()
    rdir.mkdir()
    for i in range(3):
        gt, pred = volumes(10 + i, S=3, H=36, W=32)
        with h5py.File(tdir / f"v{i}.h5", "w") as f:
            f["reconstruction_rss"] = gt
            f.attrs["acquisition"] = "AXT2"
        with h5py.File(rdir / f"v{i}.h5", "w") as f:
            f["reconstruction"] = pred
    ours = am.metrics.evaluate_dirs(tdir, rdir)
    args = argparse.Namespace(target_path=tdir, predictions_path=rdir, acquisition=None, acceleration=None)
    ref = fe.evaluate(args, "reconstruction_rss").means()
    assert len(ours["volumes"]) == 3
    for k in ("PSNR", "SSIM", "NMSE"):
        assert ours["mean"][k] == pytest.approx(float(np.squeeze(ref[k])), abs=1e-6)


def test_metrics_bad_input(tmp_path):
    gt, pred = volumes()
    with pytest.raises(am.AmbientMRIError, match="slices"):
        am.metrics.evaluate_volume(gt, pred[:2])
    bad = pred.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(am.AmbientMRIError, match="NaN"):
        am.metrics.evaluate_volume(gt, bad)
    with pytest.raises(am.AmbientMRIError, match="not a directory"):
        am.metrics.evaluate_dirs(tmp_path / "missing", tmp_path)
    # an all-zero or negative target gave PSNR -inf / SSIM NaN, or a negative SSIM, without a word
    for target in (np.zeros_like(gt), -np.abs(gt)):
        with pytest.raises(am.AmbientMRIError, match="target has maximum .*must be a magnitude image"):
            am.metrics.evaluate_volume(target, pred)
    with pytest.raises(am.AmbientMRIError, match="non-empty volume"):
        am.metrics.evaluate_volume(gt[:0], pred[:0])


def test_std_panels_are_drawn_at_their_own_scale(tmp_path, monkeypatch):
    """The std map was drawn at a quarter of the image scale: a sampler's std 300x smaller came out black."""
    import matplotlib.axes

    from ambient_mri.commands import save_panels

    drawn = {}
    real = matplotlib.axes.Axes.imshow

    def spy(self, img, *a, vmax=None, **k):
        drawn[len(drawn)] = vmax
        return real(self, img, *a, vmax=vmax, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    ref = np.ones((8, 8))
    std = np.full((8, 8), 8e-4)
    save_panels(tmp_path / "p.png", [("reference", ref), ("error x1", ref / 10), ("std over samples", std)], vmax=1.0)
    assert drawn == {0: 1.0, 1: 0.25, 2: pytest.approx(8e-4)}
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_single_coil_targets_are_scored_against_esc_as_fastmri_does(tmp_path):
    import h5py

    rng = np.random.default_rng(0)
    esc = rng.random((2, 16, 16)).astype(np.float32) + 0.5
    for name, kspace in (("single.h5", np.zeros((2, 32, 16), np.complex64)),
                         ("multi.h5", np.zeros((2, 4, 32, 16), np.complex64))):
        (tmp_path / "t").mkdir(exist_ok=True)
        (tmp_path / "r").mkdir(exist_ok=True)
        with h5py.File(tmp_path / "t" / name, "w") as f:
            f["kspace"] = kspace
            f["reconstruction_esc"] = esc
            f["reconstruction_rss"] = 2 * esc
        with h5py.File(tmp_path / "r" / name, "w") as f:
            f["reconstruction"] = esc
    rows = {r["file"]: r for r in am.metrics.evaluate_dirs(tmp_path / "t", tmp_path / "r")["volumes"]}
    assert rows["single.h5"]["PSNR"] == np.inf or rows["single.h5"]["NMSE"] == 0.0
    assert rows["multi.h5"]["NMSE"] == pytest.approx(0.25)
