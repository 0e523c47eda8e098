"""CUDA: a bf16 training run (with resume), a model-file round trip, and the samplers on the GPU against the CPU.

The same code paths as test_training.py and test_sampling.py, with ``training.device: cuda``: the trainer draws
example order, σ and noise on the CPU from seeded generators and initialises the weights on the CPU, so a CUDA
run and a CPU run start from the same numbers. Comparisons in fp32 run with TF32 off (cuDNN enables it for
convolutions by default), so GPU and CPU differ only by summation order. Skipped without a CUDA device.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ambient_mri as am
from ambient_mri.data.factory import with_further
from ambient_mri.model import Denoiser, load_model, save_model
from ambient_mri.recon import reconstruct
from ambient_mri.sampling import Prior, fast_dc
from ambient_mri.training.recipe import load_recipe
from ambient_mri.training.trainer import network_config, train
from helpers import TINY_NET, multicoil_measurements, tiny_recipe

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SIZE = 32
# relative error allowed between a CUDA and a CPU result of the same fp32 computation (TF32 off)
REL_TOL = 2e-3


@pytest.fixture
def gpu():
    """The CUDA device, with TF32 off for matmuls and convolutions while the test runs."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield "cuda"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a).cpu(), torch.as_tensor(b).cpu()
    return float((a - b).abs().norm() / b.abs().norm())


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def dataset_for(recipe):
    base, _ = multicoil_measurements(size=SIZE)
    return with_further(base, load_recipe(recipe)), {"source": "synthetic"}


def run_tiny(out: Path, **training) -> Path:
    recipe = tiny_recipe(out, **training)
    return train(recipe, dataset=dataset_for(recipe), progress=False)


def test_bf16_training_on_cuda_resumes_and_its_model_file_round_trips(tmp_path, gpu):
    run = run_tiny(tmp_path / "gpu", device=gpu, amp="bf16", steps=2, checkpoint_every=2)
    log = records(run)
    assert [r["step"] for r in log] == [1, 2]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in log)

    # Same data, σ, noise and initial weights as a CPU run in fp32: the first loss agrees to bf16 precision.
    cpu_run = run_tiny(tmp_path / "cpu", device="cpu", amp="none", steps=2, checkpoint_every=2)
    assert log[0]["loss"] == pytest.approx(records(cpu_run)[0]["loss"], rel=5e-2)

    # The checkpoint written from CUDA tensors loads on the CPU; the optimiser really stepped.
    ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ck["step"] == 2
    assert any(not torch.equal(ck["model"][k], ck["ema"][k]) for k in ck["model"])

    # Resume on CUDA: optimiser state goes back to the GPU and training continues from step 2.
    run_tiny(tmp_path / "gpu", device=gpu, amp="bf16", steps=3, checkpoint_every=2)
    assert [r["step"] for r in records(run)] == [1, 2, 3]
    assert torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["step"] == 3

    # model.pt loaded on CUDA gives the CPU-loaded model's output (fp32, no autocast).
    on_gpu, on_cpu = load_model(run / "model.pt", device=gpu), load_model(run / "model.pt")
    assert next(on_gpu.parameters()).is_cuda and not next(on_cpu.parameters()).is_cuda
    assert on_gpu.info == on_cpu.info and on_gpu.info["image_shape"] == [SIZE, SIZE]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, SIZE, SIZE, dtype=torch.complex64, generator=g)
    sigma = torch.tensor([0.05, 0.5, 5.0])
    mask = (torch.rand(3, 1, 1, SIZE, generator=g) < 0.5).float()
    with torch.no_grad():
        a = on_gpu(x.to(gpu), sigma.to(gpu), mask.to(gpu))
        b = on_cpu(x, sigma, mask)
    assert a.is_cuda and a.dtype == b.dtype == torch.complex64
    torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-4)


def tiny_ambient_model(info: dict | None = None) -> Denoiser:
    """A tiny multi-coil ambient denoiser whose output depends on its input (weights perturbed from init)."""
    torch.manual_seed(0)
    r = load_recipe({"network": TINY_NET})
    info = info or {"operator": "multicoil", "ambient": True, "cond": ["mask", "ones"], "image_shape": [SIZE, SIZE]}
    net = Denoiser(network_config(r, 2, 2), info)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def test_fast_dc_on_cuda_matches_cpu(gpu):
    data, _ = multicoil_measurements(n=2, size=SIZE)
    y = torch.stack([data[i]["y"] for i in range(2)])
    mask = torch.stack([data[i]["mask"] for i in range(2)])
    maps = torch.stack([data[i]["maps"] for i in range(2)])
    mask_t = am.masks.further_mask(mask, extra_lines=2, seed=0)
    net = tiny_ambient_model()

    def run(device):
        model = copy.deepcopy(net).to(device)
        prior = Prior(model, am.MultiCoilMRI(maps.to(device), mask_t.to(device)), mask_t.to(device))
        x = fast_dc(prior, y.to(device), am.MultiCoilMRI(maps.to(device), mask.to(device)), (2, SIZE, SIZE),
                    steps=10, seed=3)
        return x, prior.nfe

    a, nfe_a = run(gpu)
    b, nfe_b = run("cpu")
    assert a.is_cuda and nfe_a == nfe_b == 10
    assert torch.isfinite(torch.view_as_real(a)).all()
    assert rel_err(a, b) < REL_TOL


@pytest.mark.parametrize("method", ["fast", "adps", "one_step"])
def test_reconstruct_on_cuda_matches_cpu(tmp_path, gpu, method):
    data, _ = multicoil_measurements(n=2, size=SIZE)
    kspace = torch.stack([data[i]["y"] for i in range(2)]).numpy()               # (S, C, H, W), zeros off-mask
    mask = torch.stack([data[i]["mask"] for i in range(2)]).reshape(2, SIZE).numpy()
    # What a trained model file records about its training mask (reconstruct draws a training-type Ã from it).
    info = {"operator": "multicoil", "ambient": True, "cond": ["mask", "ones"], "image_shape": [SIZE, SIZE],
            "further": {"extra_lines": 2, "delta": None, "acs_lines": None, "redraw": False},
            "data": {"mask": {"kind": "uniform1d", "acceleration": 3.0, "center_fraction": 0.25}}}
    path = tmp_path / "model.pt"
    save_model(tiny_ambient_model(info), path)
    kw = dict(model=str(path), method=method, steps=None if method == "one_step" else 5, seed=1, progress=False)
    a = reconstruct(kspace, mask, device=gpu, **kw)
    b = reconstruct(kspace, mask, device="cpu", **kw)
    assert a.nfe == b.nfe > 0
    assert a.image.shape == b.image.shape == (2, SIZE, SIZE) and np.isfinite(a.image).all()
    assert rel_err(torch.from_numpy(a.image), torch.from_numpy(b.image)) < REL_TOL
    assert rel_err(torch.from_numpy(a.magnitude), torch.from_numpy(b.magnitude)) < REL_TOL
