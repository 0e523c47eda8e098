"""Trainer: end to end, exact resume after SIGKILL, DDP equivalence, no fully-sampled data in the loss."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import ambient_mri as am
from ambient_mri.data.factory import with_further
from ambient_mri.model import load_model
from ambient_mri.training import measurement_loss
from ambient_mri.training.recipe import load_recipe
from ambient_mri.training.trainer import train
from helpers import multicoil_measurements, tiny_recipe

ROOT = Path(__file__).resolve().parents[1]


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def dataset_for(recipe):
    base, _ = multicoil_measurements()
    return with_further(base, load_recipe(recipe)), {"source": "synthetic"}


def test_train_end_to_end_writes_loadable_model(tmp_path):
    recipe = tiny_recipe(tmp_path)
    run = train(recipe, dataset=dataset_for(recipe), progress=False)
    assert len(losses(run)) == 4 and all(l == l for l in losses(run))
    model = load_model(run / "model.pt")
    assert model.info["operator"] == "multicoil" and model.info["ambient"] is True
    assert model.info["further"]["extra_lines"] == 2 and model.info["image_shape"] == [32, 32]
    assert (run / "preview_0000004.png").stat().st_size > 1000
    x = torch.randn(2, 32, 32, dtype=torch.complex64)
    assert model(x, 1.0, torch.ones(2, 1, 1, 32)).shape == (2, 32, 32)


@pytest.mark.parametrize("input_cg", [0, 5])
def test_ambient_loss_never_sees_unacquired_kspace(input_cg):
    """Changing k-space outside the acquired mask (e.g. putting the fully-sampled data back) changes nothing,
    also when the network's input is a CG solve with Ã (network.input_cg)."""
    data, _ = multicoil_measurements(n=4)
    full = torch.stack([data[i]["y"] for i in range(4)])
    mask = torch.stack([data[i]["mask"] for i in range(4)])
    maps = torch.stack([data[i]["maps"] for i in range(4)])
    mt = am.masks.further_mask(mask, extra_lines=2, seed=0)
    net = load_model_free_denoiser(input_cg=input_cg)
    sigma = torch.tensor([0.5, 1.0, 2.0, 0.1])
    noise = torch.randn(4, 32, 32, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    garbage = full + (1 - mask) * torch.randn(full.shape, dtype=torch.complex64)
    a = measurement_loss(net, {"y": full, "mask": mask, "mask_tilde": mt, "maps": maps}, "multicoil", sigma, noise,
                         0.5, operator_input=input_cg > 0)
    b = measurement_loss(net, {"y": garbage, "mask": mask, "mask_tilde": mt, "maps": maps}, "multicoil", sigma,
                         noise, 0.5, operator_input=input_cg > 0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def load_model_free_denoiser(input_cg: int = 0):
    torch.manual_seed(0)
    from ambient_mri.model import Denoiser
    from ambient_mri.training.trainer import network_config
    from helpers import TINY_NET

    r = load_recipe({"network": {**TINY_NET, "input_cg": input_cg}})
    net = Denoiser(network_config(r, 2, 2), {"operator": "multicoil", "cond": ["mask", "ones"]})
    with torch.no_grad():  # make the output depend on the input
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def test_input_cg_feeds_the_network_a_sense_estimate(tmp_path):
    """network.input_cg = k: D's input is k CG steps on Ã^H Ã u = Ã^H z, which unalias what the adjoint folds (closer
    to the truth than Ã^H z); with F = 0 and small σ, D returns exactly that estimate. The setting survives a
    model file round trip, and the model refuses to run without its operator."""
    from ambient_mri.model import save_model
    from ambient_mri.solvers import conjugate_gradient

    data, truth = multicoil_measurements(n=2)
    y = torch.stack([data[i]["y"] for i in range(2)])
    mask = torch.stack([data[i]["mask"] for i in range(2)])
    maps = torch.stack([data[i]["maps"] for i in range(2)])
    A = am.MultiCoilMRI(maps, mask)
    plain, cg = load_model_free_denoiser(), load_model_free_denoiser(input_cg=10)
    for net in (plain, cg):
        with torch.no_grad():
            net.precond.net.conv_out.weight.zero_()
            net.precond.net.conv_out.bias.zero_()
    x = A.adjoint(y)
    sense = conjugate_gradient(A.normal, x, iters=10)
    inside = (maps.abs() ** 2).sum(1) > 0.5
    err = {k: float(((v - truth) * inside).norm()) for k, v in (("adjoint", x), ("sense", sense))}
    assert err["sense"] < 0.9 * err["adjoint"], err
    with torch.no_grad():
        torch.testing.assert_close(cg(x, 1e-6, mask, A), sense, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(plain(x, 1e-6, mask), x, rtol=1e-4, atol=1e-5)
        with pytest.raises(am.AmbientMRIError, match="input_cg"):
            cg(x, 1.0, mask)
    save_model(cg, tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt").input_cg == 10
    with pytest.raises(am.RecipeError, match="input_cg"):
        load_recipe({"network": {"input_cg": -1}})
    with pytest.raises(am.RecipeError, match="input_cg: CG on the input applies to MRI"):
        load_recipe({"network": {"input_cg": 2}, "corruption": {"operator": "pixel"}})


def _weights(path):
    return torch.load(path, weights_only=True)


def test_sigkill_between_checkpoints_resumes_exactly(tmp_path):
    script = ROOT / "tests" / "scripts" / "train_tiny.py"
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "kill"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}:{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(ref_dir), "12", "4"], check=True, env=env, timeout=300)
    # The killed run sleeps after each step, so SIGKILL lands between checkpoints 4 and 8.
    proc = subprocess.Popen([sys.executable, str(script), str(kill_dir), "12", "4", "0.3"], env=env)
    ckpt = kill_dir / "tiny" / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpt.exists() and len(losses(kill_dir / "tiny")) >= 6):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _weights(ckpt)["step"] == 4
    assert not list((kill_dir / "tiny").glob("*.tmp")) and not list((kill_dir / "tiny").glob(".*tmp"))
    subprocess.run([sys.executable, str(script), str(kill_dir), "12", "4"], check=True, env=env, timeout=300)
    a, b = _weights(ref_dir / "tiny" / "checkpoint.pt"), _weights(ckpt)
    assert a["step"] == b["step"] == 12
    for key in ("model", "ema"):
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=0, atol=0, msg=f"{key}.{k}")
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa:
        for k in sa[i]:
            torch.testing.assert_close(sa[i][k], sb[i][k], rtol=0, atol=0)


def test_resume_with_another_recipe_or_data_is_refused_and_changes_nothing(tmp_path):
    """A resume may change how long and where it runs, not what it trains: a changed corruption, seed or data set
    is refused by name before anything in the run folder is written."""
    recipe = tiny_recipe(tmp_path, steps=2, checkpoint_every=2)
    run = train(recipe, dataset=dataset_for(recipe), progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for override, pattern in ((["corruption.extra_lines=3"], r"corruption.extra_lines \(2 -> 3\)"),
                              (["training.seed=7"], r"training.seed \(0 -> 7\)"),
                              (["network.model_channels=16"], "network.model_channels")):
        changed = load_recipe(recipe, [*override, "training.steps=4"])
        with pytest.raises(am.DataFileError, match=f"checkpoint.pt: resuming would continue a different training: "
                                                   f".*{pattern}"):
            train(changed, dataset=dataset_for(changed), progress=False)
    longer = load_recipe(recipe, ["training.steps=4"])
    other_data = (dataset_for(longer)[0], {"source": "synthetic", "files": 99})
    with pytest.raises(am.DataFileError, match=r"the training data's files \(None -> 99\)"):
        train(longer, dataset=other_data, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # recipe.yaml included
    moved = (dataset_for(longer)[0], {"source": "elsewhere", "root": "/new/place", "path": "/new/place"})
    from ambient_mri.training.trainer import _same

    assert _same({"a": [float("nan")]}, {"a": [float("nan")]}) and not _same({"a": [1.0]}, {"a": [2.0]})
    ck = torch.load(run / "checkpoint.pt", weights_only=True)  # an older version's checkpoint: fewer fields
    del ck["recipe"]["data"]["augment"]
    torch.save(ck, run / "checkpoint.pt")
    train(longer, dataset=moved, progress=False)  # more steps, moved data, a field added since: allowed
    assert len(losses(run)) == 4


def test_two_gloo_processes_match_one_process(tmp_path):
    script = ROOT / "tests" / "scripts" / "train_tiny.py"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}:{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "6", "6"], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                    str(script), str(tmp_path / "two"), "6", "6"], check=True, env=env, timeout=300)
    one, two = losses(tmp_path / "one" / "tiny"), losses(tmp_path / "two" / "tiny")
    assert len(one) == len(two) == 6
    assert one == pytest.approx(two, rel=1e-4, abs=1e-6)
    a = _weights(tmp_path / "one" / "tiny" / "checkpoint.pt")["model"]
    b = _weights(tmp_path / "two" / "tiny" / "checkpoint.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_processes_that_would_resume_from_different_steps_stop_together(tmp_path):
    """A node that could not see the run folder started at step 0 beside one resuming at step 2, trained other
    batches, then both hung in a mismatched collective until gloo's 30-minute timeout."""
    script = ROOT / "tests" / "scripts" / "train_tiny.py"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}:{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "run0"), "2", "2"], check=True, env=env, timeout=300)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29518",
                        str(script), str(tmp_path / "run"), "4", "2"], env={**env, "TRAIN_TINY_PER_RANK": "1"},
                       capture_output=True, text=True, timeout=240)
    assert p.returncode != 0
    assert p.stderr.count("the training processes disagree on where to start (steps 0 to 2)") == 2, p.stderr[-2000:]
    assert len(losses(tmp_path / "run0" / "tiny")) == 2   # the resumed folder was not trained on


def test_when_one_process_fails_the_others_stop_with_one_line(tmp_path):
    script = ROOT / "tests" / "scripts" / "train_tiny.py"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}:{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           "TRAIN_TINY_FAIL_RANK": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519",
                        str(script), str(tmp_path / "run"), "6", "6"], env=env, capture_output=True, text=True,
                       timeout=240)
    assert p.returncode != 0 and "this process failed on purpose" in p.stderr
    # the other process's gloo error (when it reached a collective before torchrun stopped it) is one of our lines
    if "Connection closed by peer" in p.stderr:
        assert "AmbientMRIError: another process of this distributed run stopped" in p.stderr, p.stderr[-3000:]


def test_recipe_errors_name_the_key(tmp_path):
    with pytest.raises(am.RecipeError, match="stesp"):
        load_recipe({"training": {"stesp": 3}})
    with pytest.raises(am.RecipeError, match="unknown recipe key 'lrr'"):
        load_recipe({}, ["lrr=3"])
    with pytest.raises(am.RecipeError, match="batch_size"):
        load_recipe({"training": {"batch_size": "eight"}})
    with pytest.raises(am.RecipeError, match="operator"):
        load_recipe({"corruption": {"operator": "radial"}})
    bad = tmp_path / "r.yaml"
    bad.write_text("training: {steps: [1,\n")
    with pytest.raises(am.RecipeError, match="YAML"):
        load_recipe(bad)

    recipe = tiny_recipe(tmp_path, batch_size=3)
    with pytest.raises(am.AmbientMRIError, match="divisible"), pytest.MonkeyPatch.context() as mp:
        for k, v in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
            mp.setenv(k, v)
        train(recipe, dataset=dataset_for(recipe), progress=False)
    # torchrun's variables, checked before any work (they gave torch tracebacks, a hang, or a silent half batch)
    for env, pattern in (({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR and MASTER_PORT not set"),
                         ({"RANK": "abc", "WORLD_SIZE": "1"}, "RANK='abc' is not an integer"),
                         ({"RANK": "0", "WORLD_SIZE": "-2"}, "need WORLD_SIZE >= 1"),
                         ({"RANK": "3", "WORLD_SIZE": "2"}, "0 <= RANK < WORLD_SIZE")):
        with pytest.raises(am.AmbientMRIError, match=pattern), pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            train(tiny_recipe(tmp_path), dataset=dataset_for(recipe), progress=False)
    with pytest.raises(am.AmbientMRIError, match="no checkpoint.pt"):
        train(tiny_recipe(tmp_path), resume=tmp_path / "nowhere", dataset=dataset_for(recipe), progress=False)


def test_loader_workers_default_by_device():
    """num_workers null: 4 loader workers on CUDA (the main process's reads bounded an H200), none on a CPU; a
    recipe's own number wins; a negative one is refused with its key."""
    from ambient_mri.training.trainer import loader_workers

    assert load_recipe({}).training.num_workers is None
    assert loader_workers(None, torch.device("cpu")) == 0
    assert loader_workers(None, torch.device("cuda")) == min(4, os.cpu_count() or 1)
    assert loader_workers(2, torch.device("cuda")) == 2 and loader_workers(2, torch.device("cpu")) == 2
    assert load_recipe({}, ["num_workers=3"]).training.num_workers == 3
    with pytest.raises(am.RecipeError, match="training.num_workers"):
        load_recipe({"training": {"num_workers": -1}})


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_is_valid(path):
    r = load_recipe(path)
    assert r.name == path.stem
    if r.corruption.operator == "multicoil" and r.corruption.ambient:
        assert (r.corruption.extra_lines is None) != (r.corruption.delta is None)


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("fastmri_*.yaml")), ids=lambda p: p.name)
def test_recipe_headers_prepare_what_the_recipe_says(path):
    """A header that says T2 prepares the T2 files only (the brain training folder holds four contrasts), and
    every header prepares the training split the recipe reads (data.path = <--output>/train)."""
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    data_path = Path(yaml.safe_load(path.read_text())["data"]["path"])  # as written, not resolved
    assert data_path.name == "train" and f"--output {data_path.parent} " in header
    if " T2" in header.splitlines()[0]:
        assert "file_brain_AXT2_*.h5" in header and "--input fastmri/" not in header


def test_adps_anchor_recipes_match_the_paper_line_counts():
    """REFERENCE.md: Ã keeps 106/64/45/35 of the 160/80/53/40 lines at R = 2/4/6/8."""
    for R, after in ((2, 106), (4, 64), (6, 45), (8, 35)):
        r = load_recipe(ROOT / "recipes" / f"fastmri_brain_ambient_r{R}.yaml")
        assert round(320 / R) - r.corruption.extra_lines == after
