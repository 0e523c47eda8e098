"""The trainer: one loop for every corruption (EDM-style: sample σ, one loss, Adam, EMA, checkpoints).

Runs as one process or under ``torchrun`` (DDP; NCCL on GPUs, gloo on CPU). The global batch of each step is a
pure function of (seed, step): example indices, σ and noise are drawn for the whole global batch and each rank
takes its shard, so any number of processes follows the same trajectory and a resumed run continues exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from ..corruption import is_complex
from ..devices import ensure_memory, out_of_memory_as_error, resolve_device
from ..errors import AmbientMRIError, DataFileError
from ..files import ensure_space, make_folder, refuse_overwrite, remove_temps, run_lock, write_text
from ..model import Denoiser, atomic_torch_save, nonfinite_tensors, plain_values, safe_load, save_model
from ..record import FurtherCorruption, SigmaDistribution, TrainingRecord, acquisition_from_summary
from .losses import consistency_loss, measurement_loss, sample_sigma
from .preview import preview
from .recipe import Recipe, check_prepared_recipe, load_recipe

log = logging.getLogger("ambient_mri.train")
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
RUN_FILES = (CHECKPOINT, MODEL, "recipe.yaml", "log.jsonl")  # with preview_*.png: what a run writes atomically


class StepPlan(Sampler):
    """Yields this rank's example indices for steps [start, steps): epoch-wise permutations seeded by (seed, epoch).

    With ``groups`` (a shape group per example, e.g. k-space widths) of more than one value, each step takes its
    whole global batch from one group, chosen with probability proportional to the group's size and filled without
    replacement (with it only when a group has fewer examples than the batch), seeded by (seed, step)."""

    def __init__(self, indices: np.ndarray, global_batch: int, start: int, steps: int, seed: int, rank: int,
                 world: int, groups: np.ndarray | None = None):
        self.indices, self.G, self.start, self.steps = indices, global_batch, start, steps
        self.seed, self.rank, self.world = seed, rank, world
        g = None if groups is None else np.asarray(groups)[indices]
        self.members = None if g is None or len(np.unique(g)) < 2 else [indices[g == k] for k in np.unique(g)]

    def global_batch(self, step: int) -> np.ndarray:
        if self.members is not None:
            rng = np.random.RandomState((self.seed, step, 7))
            sizes = np.array([len(m) for m in self.members], np.float64)
            group = self.members[rng.choice(len(sizes), p=sizes / sizes.sum())]
            return group[rng.choice(len(group), size=self.G, replace=len(group) < self.G)]
        n = len(self.indices)
        out = []
        pos = step * self.G
        while len(out) < self.G:
            epoch, off = divmod(pos, n)
            perm = np.random.RandomState((self.seed, epoch)).permutation(n)
            take = perm[off: off + self.G - len(out)]
            out.extend(self.indices[take])
            pos += len(take)
        return np.asarray(out)

    def __iter__(self):
        per = self.G // self.world
        for step in range(self.start, self.steps):
            yield self.global_batch(step)[self.rank * per: (self.rank + 1) * per].tolist()

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)


def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables, checked: a bad value raised deep in torch, hung,
    or (WORLD_SIZE < 1) trained silently on a fraction of each batch."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        raw = os.environ.get(name, "0")
        try:
            values[name] = int(raw)
        except ValueError:
            raise AmbientMRIError(f"environment variable {name}={raw!r} is not an integer (torchrun sets it)") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise AmbientMRIError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: need WORLD_SIZE >= 1 and "
                              "0 <= RANK < WORLD_SIZE (launch with torchrun, which sets them)")
    if world > 1 and not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise AmbientMRIError(f"WORLD_SIZE={world} but {' and '.join(missing)} not set: launch with torchrun")
    return rank, world, local


# what a resumed run may change: where it runs and writes, how long and how often it logs; anything else would
# continue a different training under the same name
RESUMABLE = {"name", "output", "data.path", "training.steps", "training.max_minutes", "training.checkpoint_every",
             "training.log_every", "training.num_workers", "training.device", "training.compile", "training.amp"}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


class ResumeError(DataFileError):
    """A resume that would continue a different training (``check_resume``)."""


# what a data summary may change when the same data move (or a package holding them is reinstalled)
_DATA_PLACES = {"root", "path", "source"}


def _same(a, b) -> bool:
    """Equal, with NaN equal to NaN at any depth (a summary's missing value)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


NEW_DATA_FIELDS = frozenset({"content_sha256"})  # data summary fields older checkpoints lack


RESUME_KEYS = frozenset({"model", "ema", "optimizer", "step"})  # what restore reads from a checkpoint


def check_resume(ckpt_path: Path, r: Recipe, data_info: dict) -> None:
    """Refuse to resume ``ckpt_path`` under a recipe or data that differ from the ones it was trained with, naming
    each changed field. Data may move (their summary, not their place, must match); fields the checkpoint's
    version did not have yet are not compared."""
    ck = safe_load(ckpt_path, mmap=zipfile.is_zipfile(ckpt_path))  # mapped: only the recipe is read
    missing = sorted(RESUME_KEYS - set(ck)) if isinstance(ck, dict) else sorted(RESUME_KEYS)
    if missing:  # refused here, before run_folder writes recipe.yaml over the one that could tell what it was
        raise DataFileError(ckpt_path, f"not a training checkpoint (no {', '.join(missing)}"
                          f"{'; this is a model file' if isinstance(ck, dict) and 'state_dict' in ck else ''}); "
                          "train under another name or output, or move it")
    if not isinstance(ck.get("recipe"), dict):
        return  # a checkpoint of a version that recorded no recipe: nothing to compare
    old, new = _flat(plain_values(ck["recipe"])), _flat(plain_values(r.to_dict()))
    changed = [f"{k} ({old[k]!r} -> {new[k]!r})" for k in sorted(old.keys() & new.keys())
               if k not in RESUMABLE and not _same(old[k], new[k])]
    if isinstance(ck.get("data"), dict):
        was, now = ({k: v for k, v in plain_values(d).items() if k not in _DATA_PLACES}
                    for d in (ck["data"], data_info))
        # a field the checkpoint's version did not record (e.g. content_sha256) is not compared
        changed += [f"the training data's {k} ({was.get(k)!r} -> {now.get(k)!r})" for k in sorted(was.keys() |
                    (now.keys() - NEW_DATA_FIELDS)) if not _same(was.get(k), now.get(k))]
    done = ck.get("step")
    if isinstance(done, int) and done > r.training.steps:  # recipe.yaml would record fewer steps than were done
        raise ResumeError(ckpt_path, f"this run has done {done} steps, more than training.steps "
                          f"{r.training.steps}: raise training.steps to train on (its model.pt is of step {done})")
    if changed:
        raise ResumeError(ckpt_path, "resuming would continue a different training: " + "; ".join(changed[:6]) +
                            ("; ..." if len(changed) > 6 else "") + ". Resume with the recipe and data that wrote "
                            "it (recipe.yaml in the run folder), or train under another name or output")


def _device(name: str, local_rank: int) -> torch.device:
    return resolve_device(name, "training.device", local_rank)


def loader_workers(num_workers: int | None, device: torch.device) -> int:
    """DataLoader workers: the recipe's, or by default 4 on CUDA and 0 on CPU. On an H200 the demo model (64x64,
    batch 32) trained 3.4x faster with 4 workers: reading examples in the main process bounded the GPU, while on a
    CPU the workers would only take cores from the step itself."""
    if num_workers is not None:
        return num_workers
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _image_shape(item: dict, operator: str) -> tuple[int, ...]:
    y = item["y"]
    return tuple(y.shape[-2:]) if is_complex(operator) else tuple(y.shape)


def training_record(recipe: Recipe, dataset_info: dict, image_shape: tuple[int, ...]) -> TrainingRecord:
    """What a model file records about its training (sampling reads it through ``sampling.policy``)."""
    c, t = recipe.corruption, recipe.training
    return TrainingRecord(
        operator=c.operator, ambient=c.ambient, image_shape=tuple(int(v) for v in image_shape),
        widths=tuple(sorted({int(sh[-1]) for sh in dataset_info.get("shapes") or [image_shape]})),
        cond=tuple(c.cond) if c.ambient else tuple(ch for ch in c.cond if ch == "ones"),
        further=FurtherCorruption(c.extra_lines, c.delta, c.acs_lines, c.redraw), sigma_n=c.sigma_n,
        sigma=SigmaDistribution(t.P_mean, t.P_std), sigma_data=recipe.network.sigma_data,
        acquisition=acquisition_from_summary(dataset_info.get("mask") or {}, dataclasses.asdict(c)),
        data=dataset_info, recipe=recipe.to_dict())


def network_config(recipe: Recipe, image_channels: int, cond_channels: int) -> dict:
    n = recipe.network
    return dict(img_channels=image_channels, cond_channels=cond_channels, model_channels=n.model_channels,
                channel_mult=list(n.channel_mult), num_blocks=n.num_blocks, attn_levels=list(n.attn_levels),
                dropout=n.dropout, sigma_data=n.sigma_data, input_cg=n.input_cg)


@contextmanager
def run_folder(run_dir: Path, r: Recipe, rank: int):
    """The run folder for one training call (rank 0 writes): created or reused under a lock that refuses a
    second run on it, cleared of the temporaries a killed run left, ``recipe.yaml`` and ``train.log`` written.
    A call that fails before its first checkpoint removes the folders it created, so no stub is left behind."""
    created = not run_dir.exists()
    top = run_dir  # the outermost folder this call creates (e.g. runs/ of a first run): removed on early failure
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    handler = None
    with ExitStack() as stack:
        if rank == 0:
            make_folder(run_dir, "run folder")
            stack.enter_context(run_lock(run_dir, f"train {r.name}"))
            remove_temps(run_dir, RUN_FILES, ["preview_*.png"])
            write_text(run_dir / "recipe.yaml", yaml.safe_dump(r.to_dict(), sort_keys=False))
            handler = logging.FileHandler(run_dir / "train.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
        try:
            yield run_dir
        except BaseException:
            if rank == 0 and created and not (run_dir / CHECKPOINT).exists():
                log.removeHandler(handler)
                handler.close()
                handler = None
                shutil.rmtree(run_dir, ignore_errors=True)
                for d in run_dir.parents:  # and the parents it made, while empty
                    if d == top.parent or not d.is_dir() or any(d.iterdir()):
                        break
                    try:
                        d.rmdir()
                    except OSError:  # e.g. another run just made a folder there: never hide the real error
                        break
            raise
        finally:
            if handler is not None:
                log.removeHandler(handler)
                handler.close()


def trim_log(path: Path, start: int) -> None:
    """Keep the log.jsonl records of steps <= ``start``: a resumed run logs every later step again."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(errors="replace").splitlines():  # a damaged byte spoils its line only
        try:
            if int(json.loads(line)["step"]) <= start:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    write_text(path, "".join(f"{line}\n" for line in keep))


def restore(ckpt_path: Path, model, ema, opt) -> int:
    """Load model, EMA and optimiser from a checkpoint; -> its step."""
    ck = safe_load(ckpt_path)
    try:
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise DataFileError(ckpt_path, "this checkpoint does not match the recipe's network or is not a "
                            f"checkpoint ({type(e).__name__}: {str(e)[:160]}); resume with the recipe that "
                            "wrote it, or train under another name or output") from None
    log.info("resumed from %s at step %d", ckpt_path, step)
    return step


@torch.no_grad()
def ema_update(ema, model, t, step: int) -> None:
    """EDM's EMA: a half-life in images, ramped up to ``ema_rampup_ratio`` of the images seen so far."""
    halflife = t.ema_halflife_images
    if t.ema_rampup_ratio is not None:
        halflife = min(halflife, (step + 1) * t.batch_size * t.ema_rampup_ratio)
    beta = 0.5 ** (t.batch_size / max(halflife, 1e-8))
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - beta)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def save_checkpoint(run_dir: Path, model, ema, opt, step: int, r: Recipe, data, n_train: int, device,
                    data_info: dict | None = None) -> None:
    """checkpoint.pt (the resume state, with the recipe and the data summary a resume is checked against),
    model.pt (EMA weights) and a preview PNG, each written atomically."""
    ensure_space(run_dir, 4 * 5 * sum(p.numel() for p in model.parameters()), "a checkpoint and a model file")
    atomic_torch_save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                       "step": step, "recipe": r.to_dict(), "data": plain_values(data_info or {})},
                      run_dir / CHECKPOINT)
    save_model(ema, run_dir / MODEL)
    preview(ema, data, n_train, r, run_dir / f"preview_{step:07d}.png", device)
    log.info("step %d: checkpoint and model written", step)


TRAINING_MEMORY = "training.batch_size, network.model_channels / channel_mult or data.image_size"


# what gloo and NCCL say when the process at the other end of a collective is gone
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote process exited",
              "communicator was aborted")


@contextmanager
def _peer_failure_as_error(world: int) -> Iterator[None]:
    """In a distributed run, a collective that fails because another process stopped (its own error is printed
    above by that process) -> one line here too, not gloo's or NCCL's traceback."""
    try:
        yield
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        if world < 2 or not any(s in first for s in _PEER_GONE):  # its own NCCL errors keep their whole text
            raise
        here = re.sub(r"^\[[^\]]*\]\s*", "", first)[:100]
        raise AmbientMRIError(f"another process of this distributed run stopped, so this one stops too (its error "
                              f"is above; here: {here})") from None


_OURS = ("AmbientMRIError", "DataFileError", "RecipeError", "ResumeError")


@contextmanager
def _worker_errors_as_ours() -> Iterator[None]:
    """Our errors raised in a DataLoader worker: torch re-raises them in the main process as the error's type
    built from its whole traceback text, or as a RuntimeError when the type takes more than one argument
    (DataFileError): back to the one line the error said."""
    try:
        yield
    except (RuntimeError, AmbientMRIError) as e:
        text = str(e).strip()
        first = text.split("\n", 1)[0]
        if not (first.startswith("Caught ") and " in DataLoader worker process" in first
                and first.split()[1] in _OURS):
            raise
        lines = text.splitlines()  # the error's own text: from the last "ambient_mri.errors.X: " line to the end
        i = max((j for j, line in enumerate(lines) if line.startswith("ambient_mri.")), default=len(lines) - 1)
        head = lines[i].split(": ", 1)[1] if ": " in lines[i] else lines[i]
        raise AmbientMRIError("\n".join([head, *lines[i + 1:]])) from None


RUN_RECIPE_FIELDS = 41  # the fields of the first release's resolved recipe.yaml (every later one has more)


def _written_by_a_run(path: Path) -> bool:
    """recipe.yaml as ``run_folder`` writes it: the whole resolved recipe, every section spelled out with at least
    the first release's fields and none that this version lacks (a user's recipe names a handful)."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    full = Recipe().to_dict()
    if not (isinstance(values, dict) and set(values) == set(full)):
        return False
    sections = [k for k, v in full.items() if isinstance(v, dict)]
    if not all(isinstance(values[k], dict) and set(values[k]) <= set(full[k]) for k in sections):
        return False
    return sum(len(values[k]) if k in sections else 1 for k in values) >= RUN_RECIPE_FIELDS


def _model_of(path: Path, ema) -> bool:
    """Whether ``path`` is a whole model file holding exactly these EMA weights: checkpoint.pt is written before
    model.pt, so a kill between the two leaves the previous checkpoint's model (whole, but steps behind)."""
    try:
        saved = safe_load(path).get("state_dict")
    except (DataFileError, AttributeError):
        return False
    own = ema.state_dict()
    return isinstance(saved, dict) and saved.keys() == own.keys() and all(
        isinstance(saved[k], torch.Tensor) and saved[k].shape == v.shape and torch.equal(saved[k], v.cpu())
        for k, v in own.items())


def check_run_dir(run_dir: Path, r: Recipe, recipe, resume) -> None:
    """The run folder must not be, hold or lie inside the training data (its checkpoints and preview PNGs would
    become training examples of the next run, or a failed first run would remove the data), its recipe.yaml
    must not be the user's recipe file, and a new run starts only where the files it writes are absent or left by
    an earlier run of ours (a killed first run: its recipe.yaml, as ``run_folder`` writes it)."""
    real = Path(os.path.realpath(run_dir))
    if r.data.path and r.data.kind in ("prepared", "images"):
        data = Path(os.path.realpath(r.data.path))
        if real == data or data in real.parents or real in data.parents:
            raise AmbientMRIError(f"run folder {run_dir} overlaps the training data {r.data.path}: its checkpoints "
                                  "and previews would join the data (choose another output or name)")
    if isinstance(recipe, (str, os.PathLike)) and not (run_dir / CHECKPOINT).is_file():
        refuse_overwrite([recipe], [run_dir / "recipe.yaml"], "output or name")
    if run_dir.is_dir() and not (run_dir / CHECKPOINT).is_file():
        present = [n for n in ("recipe.yaml", "log.jsonl", "train.log") if (run_dir / n).exists()]
        present += sorted(p.name for p in run_dir.glob("preview_*.png"))
        if present and not _written_by_a_run(run_dir / "recipe.yaml"):
            raise AmbientMRIError(f"run folder {run_dir} holds {', '.join(present)}, which no training run wrote "
                                  f"(there is no {CHECKPOINT}, and no recipe.yaml as a run writes it): a new run "
                                  "would write over them; choose another name or output (or move them)")
    if (run_dir / MODEL).is_file() and not (run_dir / CHECKPOINT).is_file():
        # a finished run whose checkpoint was deleted to save space: a fresh start would write over its model
        raise AmbientMRIError(f"run folder {run_dir} holds a trained {MODEL} but no {CHECKPOINT} to resume from: a "
                              "new run would write over that model; choose another name or output (or move it)")


def train(recipe, overrides=None, resume: str | Path | None = None, progress: bool = True,
          dataset=None) -> Path:
    """Train from a recipe (YAML path, dict or Recipe); returns the run directory.

    The run directory is ``output/name`` (or ``resume``). If it holds a checkpoint, training resumes from it
    exactly (model, EMA, optimiser, step). ``dataset`` overrides the recipe's data section (tests, notebooks).
    """
    from ..data.factory import build_training_data

    r = load_recipe(recipe, overrides)
    rank, world, local_rank = _dist_env()
    device = _device(r.training.device, local_rank)
    if r.training.batch_size % world:
        raise AmbientMRIError(f"training.batch_size {r.training.batch_size} is not divisible by the {world} "
                              "processes")
    # resolved once: "out/new/.." is out itself, never a new folder to remove on failure (nor a path through a
    # folder that does not exist yet)
    if resume is not None and not isinstance(resume, (str, os.PathLike)):
        raise AmbientMRIError(f"resume: a run folder path, got {type(resume).__name__}")
    run_dir = Path(os.path.realpath(Path(resume) if resume else Path(r.output) / r.name))
    if resume and not (run_dir / CHECKPOINT).is_file():
        raise AmbientMRIError(f"{run_dir}: no {CHECKPOINT} to resume from")
    check_run_dir(run_dir, r, recipe, resume)
    if dataset is None and r.data.kind == "prepared":
        check_prepared_recipe(r)
    with out_of_memory_as_error(torch.device("cpu"), TRAINING_MEMORY):
        data, data_info = dataset if dataset is not None else build_training_data(r)  # before any folder is made
    if len(data) <= r.data.holdout:
        raise AmbientMRIError(f"only {len(data)} training examples; need more than data.holdout={r.data.holdout}")
    if r.training.batch_size > len(data) - r.data.holdout:  # every batch would repeat examples
        raise AmbientMRIError(f"training.batch_size {r.training.batch_size} is larger than the "
                              f"{len(data) - r.data.holdout} training examples (after data.holdout="
                              f"{r.data.holdout}); lower it or add data")
    if (run_dir / CHECKPOINT).is_file():
        check_resume(run_dir / CHECKPOINT, r, data_info)  # before recipe.yaml is written over
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    with run_folder(run_dir, r, rank):
        if world > 1:
            dist.barrier()
        with out_of_memory_as_error(device, TRAINING_MEMORY), _worker_errors_as_ours(), _peer_failure_as_error(world):
            _loop(r, data, data_info, run_dir, device, rank, world, progress)
    if world > 1:
        dist.barrier()
    return run_dir


def step_loss(fwd, model, batch: dict, r: Recipe, step: int, img_shape, rank: int, world: int, device):
    """The loss of one step on this rank's shard: σ (with the data noise σ_n added in quadrature) and the noise
    are drawn for the whole global batch from a generator seeded by (seed, step), so any number of processes and a
    resumed run follow one trajectory; plus the consistency loss below σ_n when the recipe asks for it."""
    t = r.training
    per = t.batch_size // world
    sl = slice(rank * per, (rank + 1) * per)
    noise_dtype = torch.complex64 if is_complex(r.corruption.operator) else torch.float32
    g = torch.Generator().manual_seed(t.seed * 1_000_003 + step)
    sigma_n = batch.get("sigma_n")
    sigma = sample_sigma(t.batch_size, t.P_mean, t.P_std, g)[sl].to(device)
    noise = torch.randn(t.batch_size, *img_shape, generator=g, dtype=noise_dtype)[sl].to(device)
    if sigma_n is not None and bool((sigma_n > 0).any()):
        sigma = torch.sqrt(sigma**2 + sigma_n.float() ** 2)
    loss = measurement_loss(fwd, batch, r.corruption.operator, sigma, noise, r.network.sigma_data,
                            **({"operator_input": True} if model.input_cg else {})).mean()
    if t.consistency_weight > 0 and sigma_n is not None and bool((sigma_n > 0).all()):
        u = torch.rand(per, generator=g).to(device)
        sc = sigma_n.float() * (0.05 + 0.9 * u)
        noise2 = torch.randn(noise.shape, generator=g, dtype=noise_dtype).to(device)
        loss = loss + t.consistency_weight * consistency_loss(
            lambda x, s, m: fwd(x, s, None), batch["y"], sigma_n.float(), sc, noise2, r.network.sigma_data).mean()
    return loss


def optimise(loss: torch.Tensor, model, opt, t, step: int) -> torch.Tensor:
    """Backward, NaN gradients zeroed (they must not reach the weights), clipping, AdamW with linear warm-up;
    -> the gradient norm."""
    for group in opt.param_groups:
        group["lr"] = t.lr * min(1.0, (step + 1) / max(t.warmup_steps, 1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    for p_ in model.parameters():
        if p_.grad is not None:
            torch.nan_to_num_(p_.grad, nan=0.0, posinf=0.0, neginf=0.0)
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    opt.step()
    return gnorm


# Gradients of a non-finite loss are zeroed (``optimise``), so a rare bad batch costs one step; this many in a row
# (or every step of a shorter run) is a diverged run: P_mean 1e300, sigma_data 1e-300 or lr 100 gave NaN on every or
# most steps, and the run wrote checkpoints of an untrained model and exited 0.
MAX_NONFINITE_STEPS = 20


def check_finite_weights(model, ema, step: int) -> None:
    """Raise when the weights or their EMA hold NaN or Inf, before a checkpoint: a loss that stayed finite while
    the weights overflowed (e.g. a huge lr) passes ``check_divergence``. Every rank checks its (identical) copy, so
    all stop together."""
    bad = [f"{which}.{name}" for net, which in ((model, "model"), (ema, "ema"))
           for name in nonfinite_tensors(net.state_dict())]
    if bad:
        raise AmbientMRIError(f"training diverged: at step {step} {len(bad)} weight tensor(s) hold NaN or Inf "
                              f"(e.g. {bad[0]}); this step's checkpoint and model are not written. Lower "
                              "training.lr, or check training.P_mean / P_std and the data")


def check_divergence(worst: int, steps_this_run: int, step: int) -> None:
    """Raise once ``worst`` consecutive steps had a non-finite loss: MAX_NONFINITE_STEPS, or all of a shorter call
    (``steps_this_run``: the steps this call plans, or has done when it stops early), before the step's checkpoint
    is written."""
    if worst >= min(MAX_NONFINITE_STEPS, max(steps_this_run, 1)):
        raise AmbientMRIError(f"training diverged: the loss was NaN or Inf on {worst} steps in a row (at step "
                              f"{step}); this step's checkpoint is not written. Lower training.lr, or check "
                              "network.sigma_data, training.P_mean / P_std, corruption.sigma_n and the data")


def check_ranks_agree(start: int, data_info: dict, device) -> None:
    """Every process must resume from one step on one data set: a node that cannot see the run folder (no shared
    file system) started at step 0 beside one at step 8, trained on other batches and then hung in a mismatched
    collective. Compared by one all-reduce, so all processes see the same verdict and stop together."""
    summary = {k: v for k, v in data_info.items() if k not in _DATA_PLACES}  # where a node keeps them may differ
    digest = int(hashlib.sha256(json.dumps(summary, sort_keys=True, default=str).encode()).hexdigest()[:15], 16)
    mine = torch.tensor([start, -start, digest, -digest], dtype=torch.int64, device=device)
    both = mine.clone()
    dist.all_reduce(both, op=dist.ReduceOp.MAX)  # max of x and of -x: the range in one call
    if both[0] != -both[1] or both[2] != -both[3]:
        raise AmbientMRIError(f"the training processes disagree on where to start (steps {-int(both[1])} to "
                              f"{int(both[0])}) or on the data: every node must see the same run folder (on a "
                              "shared file system) and the same training data")


def _loop(r: Recipe, data, data_info: dict, run_dir: Path, device, rank: int, world: int, progress: bool) -> None:
    """EDM's loop: per step a global batch (a pure function of seed and step), σ and noise, one loss, AdamW with
    warm-up, EMA; log.jsonl, checkpoints and previews on rank 0."""
    t = r.training
    img_shape = _image_shape(data[0], r.corruption.operator)
    record = training_record(r, data_info, img_shape)
    img_ch = 2 if is_complex(r.corruption.operator) else img_shape[0]
    with torch.device("meta"):  # counted without allocating: torch would take what it can before failing
        n_params = sum(p.numel() for p in Denoiser(network_config(r, img_ch, len(record.cond)), record).parameters())
    ensure_memory(4.0 * 5 * n_params, f"a network of {n_params / 1e6:.0f} M parameters (weights, EMA, gradients "
                  "and AdamW's two moments)", "network.model_channels, channel_mult or num_blocks", device)
    torch.manual_seed(t.seed)  # same initial weights on every rank and in every rerun
    model = Denoiser(network_config(r, img_ch, len(record.cond)), record).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    start = restore(run_dir / CHECKPOINT, model, ema, opt) if (run_dir / CHECKPOINT).is_file() else 0
    if world > 1:
        check_ranks_agree(start, data_info, device)
    if rank == 0:
        trim_log(run_dir / "log.jsonl", start)
        if start > 0 and not _model_of(run_dir / MODEL, ema):  # removed, damaged, or left from the step before
            log.info("%s missing, damaged or not of step %d: written again from %s", run_dir / MODEL, start,
                     CHECKPOINT)
            save_model(ema, run_dir / MODEL)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else model
    fwd = torch.compile(net) if t.compile else net
    use_bf16 = t.amp == "bf16" or (t.amp == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    n_train = len(data) - r.data.holdout
    last_preview = run_dir / f"preview_{start:07d}.png"
    if rank == 0 and start > 0 and not last_preview.is_file():  # killed after model.pt, before its preview
        preview(ema, data, n_train, r, last_preview, device)
    plan = StepPlan(np.arange(n_train), t.batch_size, start, t.steps, t.seed, rank, world,
                    getattr(data, "groups", None))
    loader = DataLoader(data, batch_sampler=plan, num_workers=loader_workers(t.num_workers, device),
                        pin_memory=device.type == "cuda", persistent_workers=False)
    log_file = open(run_dir / "log.jsonl", "a") if rank == 0 else None  # noqa: SIM115 - closed below
    bar = tqdm(total=t.steps, initial=start, disable=not progress or rank != 0, desc=r.name, unit="step")
    tic, step = time.time(), start
    deadline = time.time() + 60 * t.max_minutes if t.max_minutes else None
    # non-finite losses, counted on the device (no host sync per step): the current run of them and the longest
    run_bad, worst_bad = torch.zeros((), device=device), torch.zeros((), device=device)
    try:
        for step, batch in enumerate(loader, start=start):
            batch = _to(batch, device)
            torch.manual_seed(t.seed * 1_000_003 + step * 1009 + rank)  # dropout: reproducible on resume
            with autocast():
                shape = _image_shape({"y": batch["y"][0]}, r.corruption.operator)  # this step's shape group
                loss = step_loss(fwd, model, batch, r, step, shape, rank, world, device)
            gnorm = optimise(loss, model, opt, t, step)
            ema_update(ema, model, t, step)
            done = step + 1
            loss_val = loss.detach()
            if world > 1:
                dist.all_reduce(loss_val)
                loss_val /= world
            bar.update(1)
            finite = torch.isfinite(loss_val)
            run_bad = torch.where(finite, torch.zeros_like(run_bad), run_bad + 1)
            worst_bad = torch.maximum(worst_bad, run_bad)
            if rank == 0 and (done % t.log_every == 0 or done == t.steps):
                rec = {"step": done, "loss": float(loss_val), "lr": opt.param_groups[0]["lr"],
                       "grad_norm": float(gnorm), "seconds": round(time.time() - tic, 3),
                       "images_per_second": round(t.log_every * t.batch_size / max(time.time() - tic, 1e-9), 3)}
                log_file.write(json.dumps(rec) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                tic = time.time()
            out_of_time = deadline is not None and time.time() > deadline
            if world > 1 and deadline is not None:  # every rank must stop at the same step
                flag = torch.tensor(float(out_of_time), device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                out_of_time = bool(flag.item())
            save_now = done % t.checkpoint_every == 0 or done == t.steps or out_of_time  # alike on every rank
            if save_now or done % t.log_every == 0:
                check_divergence(int(worst_bad.item()), (done if out_of_time else t.steps) - start, done)
            if save_now:
                check_finite_weights(model, ema, done)
            if rank == 0 and save_now:
                save_checkpoint(run_dir, model, ema, opt, done, r, data, n_train, device, data_info)
            if world > 1 and done % t.checkpoint_every == 0:
                dist.barrier()
            if out_of_time:
                log.info("training.max_minutes reached at step %d", done)
                break
    finally:
        bar.close()
        if log_file:
            log_file.close()
