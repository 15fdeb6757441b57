"""All defaults in one place, as an fvcore CfgNode (yacs): YAML files inherit with `_BASE_`, the
command line overrides with `KEY VALUE` pairs, unknown keys and wrong types are errors naming the
key. The resolved config is written next to every run's checkpoints.

    cfg = load_config("configs/pretrain/ssv2_vit_b.yaml", ["TRAIN.BATCH_SIZE", "16"])
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys

from fvcore.common.config import BASE_KEY, CfgNode


C = CfgNode()
C.OUTPUT_DIR = "runs/default"
C.SEED = 0
C.TASK = "pretrain"                  # pretrain | finetune | linprobe
C.IMPORTS = ""                       # your modules or .py files, comma-separated, imported first:
                                     # they may register masking strategies or timm models

C.MODEL = CfgNode()
C.MODEL.NAME = "pretrain_videomae_base_patch16_224"   # one of ours, or a timm name IMPORTS registers
C.MODEL.NUM_FRAMES = 16
C.MODEL.IMG_SIZE = 224
C.MODEL.TUBELET_SIZE = 2
C.MODEL.PATCH_SIZE = 0               # 0 = the size in MODEL.NAME
C.MODEL.DEPTH = 0                    # 0 = the encoder depth of MODEL.NAME's size
C.MODEL.DECODER_DEPTH = 4
C.MODEL.DECODER_DIM = 0              # decoder width; 0 = MODEL.NAME's (a pretraining checkpoint's shapes win on load)
C.MODEL.DECODER_HEADS = 0            # decoder attention heads; 0 = MODEL.NAME's
C.MODEL.DECODER_MLP_RATIO = 0.0      # decoder MLP width / decoder width; 0 = MODEL.NAME's (V2 giant: 48/11)
C.MODEL.NORM_TARGET = True           # alias of MODEL.TARGET kept for stored configs: True = pixel, False = pixel_raw
C.MODEL.TARGET = ""                  # what the decoder reconstructs: pixel (per-cube normalized, the default;
                                     # "" = what NORM_TARGET says), pixel_raw, frame_diff, hog, teacher, or one
                                     # registered by IMPORTS (videomae/targets)
C.MODEL.TEACHER_CHECKPOINT = ""      # MODEL.TARGET teacher: the frozen encoder's checkpoint (any format we read)
C.MODEL.TEACHER_NAME = ""            # ... its model name; "" = MODEL.NAME (with MODEL.PATCH_SIZE / DEPTH)
C.MODEL.TEACHER_NORM = False         # ... layer-normalize its features per token (MVD)
C.MODEL.POS_EMBED = "sinusoid"       # or "separable" (MAE-ST); a checkpoint's separable tables switch it on load
C.MODEL.CLS_TOKEN = False            # MAE-ST's cls token before the cube tokens (its checkpoints have one)
C.MODEL.POOL = "mean"                # classifier feature: mean (of cube tokens) | token0 (after the final
                                     # norm) | skip_first (MAE-ST without cls token: mean of tokens 1:)
C.MODEL.DROP_PATH = 0.0
C.MODEL.HEAD_DROP = 0.0
C.MODEL.NUM_CLASSES = 0              # classification tasks; 0 = from the dataset
C.MODEL.GRAD_CHECKPOINTING = False
C.MODEL.COMPILE = False
C.MODEL.PRETRAINED = ""              # weights to start from: fine-tuning, or more pretraining

C.MASK = CfgNode()
C.MASK.TYPE = "tube"
C.MASK.RATIO = 0.9
C.MASK.DECODER_TYPE = ""             # "running_cell" for VideoMAE V2 dual masking
C.MASK.DECODER_RATIO = 0.5
C.MASK.MOTION_TEMPERATURE = 0.25     # motion: Gumbel noise scale on per-clip motion ranks (docs/motion_masking.md)
C.MASK.MOTION_TUBE = False           # motion: score per spatial position over time, mask whole tubes
C.MASK.MOTION_SOURCE = "auto"        # motion: auto (codec motion vectors with PyAV, else frame differences) | mv | diff

C.DATA = CfgNode()
C.DATA.DATASET = "ssv2"              # ssv2 | kinetics | synthetic | custom: picks flip/sampling defaults
C.DATA.ROOT = ""                     # prefix for relative paths in the lists
C.DATA.LIST_DIR = ""                 # folder holding train.csv / val.csv / test.csv
C.DATA.TRAIN_LIST = "train.csv"
C.DATA.VAL_LIST = "val.csv"
C.DATA.TEST_LIST = "test.csv"
C.DATA.LIST_FORMAT = "video"         # video | rawframes | v2_pretrain
C.DATA.NUM_CLASSES = 0
C.DATA.SAMPLING_RATE = 2             # dense sampling stride: SSv2 2, K400 4
C.DATA.FINETUNE_SAMPLING = "segment"  # segment (SSv2 TSN) | dense (K400)
C.DATA.NUM_REPEATS = 1               # repeated sampling: augmented copies per decoded clip
C.DATA.FLIP = False                  # SSv2 labels say left/right: no flip
C.DATA.BACKEND = "decord"
C.DATA.DECODE_SHORT_SIDE = 0         # 0 = decode at native size
C.DATA.NUM_WORKERS = 8
C.DATA.MAX_BAD_RATIO = 0.05           # training stops when, over the whole run (all workers and ranks), the
                                     # share of failed video loads is above this at 99.9% confidence (Wilson
                                     # lower bound) after at least min(100, list size) loads; a bad video is
                                     # read from another in its place and listed once in OUTPUT_DIR/
                                     # bad_videos.txt. 0: stop at the first bad video; 1.0: never stop
C.DATA.MIN_FRAMES = 0                # training: a video with fewer frames is bad (stills, 3-frame clips);
                                     # 0 = MODEL.NUM_FRAMES. Shorter than the dense span is fine (clamped)
C.DATA.LOADER_TIMEOUT = 600.0
C.DATA.TRAIN_CROP_SCALE = (0.08, 1.0)  # fine-tuning random resized crop: area share range
C.DATA.RAND_AUGMENT = "rand-m7-n4-mstd0.5-inc1"
C.DATA.RANDOM_ERASING = 0.25
C.DATA.TEST_NUM_CLIPS = 2
C.DATA.TEST_NUM_CROPS = 3
C.DATA.EVAL_SKIP_BAD = False         # evaluation: skip a video that fails to decode (counted and listed
                                     # in the metrics) instead of stopping with its list file:line

C.TRAIN = CfgNode()
C.TRAIN.BATCH_SIZE = 32              # videos per process per micro-step
C.TRAIN.ACCUM_STEPS = 1              # micro-steps per optimizer step: the same global batch on fewer GPUs
C.TRAIN.RECIPE_GLOBAL_BATCH = 0      # the published recipe's videos per optimizer step; a run whose BATCH_SIZE
                                     # x processes x ACCUM_STEPS differs says so in one line; 0 = no recipe
C.TRAIN.EPOCHS = 800
C.TRAIN.MAX_STEPS = 0                # > 0: stop after this many optimizer steps; the schedule is unchanged,
                                     # so a run stopped here and resumed equals one that did not stop
C.TRAIN.SCHEDULE_STEPS = 0           # > 0: the lr schedule's length (and the run's) in optimizer steps, for
                                     # schedules shorter than TRAIN.EPOCHS; 0 = TRAIN.EPOCHS x steps per epoch
C.TRAIN.WARMUP_EPOCHS = 40
C.TRAIN.BASE_LR = 1.5e-4             # lr = BASE_LR x total batch / 256
C.TRAIN.MIN_LR = 1e-5                # also scaled by total batch / 256
C.TRAIN.WARMUP_LR = 0.0
C.TRAIN.WEIGHT_DECAY = 0.05
C.TRAIN.BETAS = (0.9, 0.95)
C.TRAIN.EPS = 1e-8
C.TRAIN.OPTIMIZER = "adamw"          # adamw (fused where the device has it, else foreach) | adamw_foreach |
                                     # adamw_loop
C.TRAIN.CLIP_GRAD = 0.0              # 0 = off
C.TRAIN.LAYER_DECAY = 1.0            # fine-tuning: 0.75
C.TRAIN.LABEL_SMOOTHING = 0.1
C.TRAIN.MIXUP = 0.8
C.TRAIN.CUTMIX = 1.0
C.TRAIN.MIXUP_SWITCH_PROB = 0.5
C.TRAIN.EMA = 0.0                    # > 0: model EMA decay
C.TRAIN.LOG_PERIOD = 10              # steps between JSON-lines records
C.TRAIN.CKPT_PERIOD = 1              # epochs between checkpoints
C.TRAIN.CKPT_STEPS = 0               # > 0: also every this many steps
C.TRAIN.KEEP_CHECKPOINTS = 2
C.TRAIN.EVAL_PERIOD = 1              # epochs between validations (classification; pretraining: the common-
                                     # mask loss, see TRAIN.VAL_VIDEOS), and after the last step
C.TRAIN.VAL_VIDEOS = 1000            # pretraining: validate on up to this many videos of DATA.VAL_LIST (evenly
                                     # spread over it) when that list exists; 0 = no validation
C.TRAIN.AUTO_RESUME = True
C.TRAIN.DIVERGENCE_FACTOR = 10.0     # stop when the loss of a log step is above this x the running median of
                                     # the log steps' losses for TRAIN.DIVERGENCE_PATIENCE log steps in a row
C.TRAIN.DIVERGENCE_PATIENCE = 3      # log steps in a row above TRAIN.DIVERGENCE_FACTOR x the median; 0 = off
C.TRAIN.BREAK_LOCK = False           # take OUTPUT_DIR's run.lock even if another host's run holds it
C.TRAIN.ALLOW_CHANGES = ""           # keys a resumed run may change beyond the allowlist, comma-separated

C.DEEPSPEED = CfgNode()
C.DEEPSPEED.ZERO_STAGE = 1
C.DEEPSPEED.PRECISION = "bf16"       # fp32 | bf16 (autocast over fp32 weights) | fp16 (GPU, loss scaling)
C.DEEPSPEED.OFFLOAD_OPTIMIZER = False

C.LOG = CfgNode()
C.LOG.TENSORBOARD = True
C.LOG.PROGRESS = True                # a tqdm bar on a terminal; plain lines in a log file or pipe
C.LOG.PROGRESS_SECONDS = 30.0        # seconds between progress lines when not on a terminal
C.LOG.PEAK_TFLOPS = 0.0              # the device's dense peak for MFU; 0 = from the table of known GPUs

_CHOICES = {
    "TASK": ("pretrain", "finetune", "linprobe"),
    "MODEL.POS_EMBED": ("sinusoid", "separable"),
    "MODEL.POOL": ("mean", "token0", "skip_first"),
    "DATA.DATASET": ("ssv2", "kinetics", "synthetic", "custom"),
    "DATA.LIST_FORMAT": ("video", "rawframes", "v2_pretrain"),
    "DATA.FINETUNE_SAMPLING": ("segment", "dense"),
    "DATA.BACKEND": ("decord", "pyav", "torchcodec"),
    "DEEPSPEED.ZERO_STAGE": (0, 1, 2, 3),
    "DEEPSPEED.PRECISION": ("fp32", "bf16", "fp16"),
    "TRAIN.OPTIMIZER": ("adamw", "adamw_foreach", "adamw_loop"),
}


class ConfigError(ValueError):
    pass


def _all_keys(node, prefix="") -> list[str]:
    keys = []
    for key, value in node.items():
        keys += _all_keys(value, f"{prefix}{key}.") if isinstance(value, CfgNode) else [f"{prefix}{key}"]
    return keys


def _explain(where: str, err: Exception) -> ConfigError:
    """yacs says 'Non-existent key: X' or 'Type mismatch (...)': say it with the closest valid key."""
    message = str(err.args[0]) if err.args else str(err)
    match = re.search(r"[Nn]on-existent (?:config )?key: ([\w.]+)", message)
    if match:
        return _unknown_key(where, match.group(1))
    match = re.fullmatch(r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values \((.*) vs\. (.*)\) "
                         r"for config key: ([\w.]+)", message, re.S)
    if match:
        want, got, _, value, key = match.groups()
        return ConfigError(f"{where}: {key} must be of type {want}, got {value!r} (a {got})")
    return ConfigError(f"{where}: {message}")


def _unknown_key(where: str, key: str) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(key, _all_keys(C), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(f"{where}: unknown config key {key}{hint}")


def _section_error(where: str, key: str, node: CfgNode) -> ConfigError:
    """`TRAIN 5`: yacs would dump the whole node in a type-mismatch message."""
    keys = list(node)
    more = ", ..." if len(keys) > 6 else ""
    return ConfigError(f"{where}: {key} is a section, not a value (its keys: {', '.join(keys[:6])}{more}); "
                       f"set one key, e.g. {key}.{keys[0]}")


def _check_shape(where: str, data: dict, node: CfgNode, prefix: str = "") -> None:
    """A YAML mapping against the defaults, before yacs merges it: unknown keys with a suggestion,
    a value where a section belongs and the reverse. An int for a float key becomes a float
    (`BASE_LR: 1` means 1.0), as on the command line."""
    for key, value in data.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str) or key not in node:
            raise _unknown_key(where, full)
        default = node[key]
        if isinstance(default, CfgNode):
            if not isinstance(value, dict):
                raise _section_error(where, full, default)
            _check_shape(where, value, default, f"{full}.")
        elif isinstance(value, dict):
            raise ConfigError(f"{where}: {full} is a value, not a section; write {full}: <value>")
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            data[key] = float(value)


def get_defaults() -> CfgNode:
    return C.clone()


def _lookup(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def import_user_modules(spec: str) -> None:
    """Import `IMPORTS`: module names (found from the working directory too) or `.py` files. This
    is how a strategy registered with `@register_masking` in your own code reaches tools/train.py."""
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item.endswith(".py"):
            path = os.path.abspath(item)
            if not os.path.isfile(path):
                raise ConfigError(f"IMPORTS: file not found: {item}")
            name = "videomae_user_" + re.sub(r"\W", "_", os.path.splitext(path)[0])
            if name in sys.modules:
                continue
            spec_ = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[name] = module
            spec_.loader.exec_module(module)
            continue
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            importlib.import_module(item)
        except ModuleNotFoundError as err:
            if err.name and item.startswith(err.name):  # the module itself, not one it imports
                raise ConfigError(f"IMPORTS: no module named {item!r} (give an importable name or a .py file)") \
                    from None
            raise


def _check_masking(cfg: CfgNode) -> None:
    import difflib

    from ..masking import MASKING_REGISTRY

    for key in ("MASK.TYPE", "MASK.DECODER_TYPE"):
        name = _lookup(cfg, key)
        if (name or key == "MASK.TYPE") and name not in MASKING_REGISTRY:
            close = difflib.get_close_matches(name, list(MASKING_REGISTRY), n=1)
            raise ConfigError(f"{key} = {name!r} is not a registered masking strategy "
                              f"({', '.join(sorted(MASKING_REGISTRY))})" +
                              (f"; did you mean {close[0]!r}?" if close else
                               "; a strategy of your own needs IMPORTS to load the module that registers it"))


def _check_target(cfg: CfgNode) -> None:
    import difflib

    from ..targets import TARGET_REGISTRY, resolve_target_name

    m = cfg.MODEL
    try:
        name = resolve_target_name(m.TARGET, m.NORM_TARGET)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if name not in TARGET_REGISTRY:
        close = difflib.get_close_matches(name, list(TARGET_REGISTRY), n=1)
        raise ConfigError(f"MODEL.TARGET = {name!r} is not a registered reconstruction target "
                          f"({', '.join(sorted(TARGET_REGISTRY))})" +
                          (f"; did you mean {close[0]!r}?" if close else
                           "; a target of your own needs IMPORTS to load the module that registers it"))
    if name == "teacher" and cfg.TASK == "pretrain" and not m.TEACHER_CHECKPOINT:
        raise ConfigError("MODEL.TARGET teacher needs MODEL.TEACHER_CHECKPOINT (the frozen encoder's checkpoint)")
    if name != "teacher":
        for key, neutral in (("TEACHER_CHECKPOINT", ""), ("TEACHER_NAME", ""), ("TEACHER_NORM", False)):
            if m[key] != neutral:
                raise ConfigError(f"MODEL.{key} = {m[key]!r} applies to MODEL.TARGET teacher, not {name}; "
                                  f"leave it at {neutral!r}")


PRETRAIN_PREFIX, CLASSIFIER_PREFIX = "pretrain_videomae_", "videomae_vit_"


def our_models() -> dict[str, tuple[str, int]]:
    """name -> (kind, patch size) for every model in our name table (videomae/models/factory.py
    MODELS, which `MODEL.NAME` resolves through, not timm's registry); kind is "pretrain" or
    "classifier"."""
    from ..models.factory import MODELS

    table = {}
    for name in MODELS:
        if name.startswith((PRETRAIN_PREFIX, CLASSIFIER_PREFIX)):
            patch = re.search(r"_patch(\d+)_", name)
            table[name] = ("pretrain" if name.startswith(PRETRAIN_PREFIX) else "classifier",
                           int(patch.group(1)) if patch else 0)
    return table


def _plugin_model(name: str) -> bool:
    """A timm model registered by a module the user imported (IMPORTS), not by timm itself."""
    import timm

    if not timm.is_model(name):
        return False
    return not timm.models.model_entrypoint(name).__module__.startswith("timm.")


def model_hint(name: str, kind: str | None = None) -> str:
    """'; did you mean <closest of our model names>?', or the list of names of that kind."""
    import difflib

    names = sorted(n for n, (k, _) in our_models().items() if kind in (None, k))
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    return f"; did you mean {close[0]}?" if close else f"; choose from {', '.join(names)}"


def _check_model(cfg: CfgNode) -> None:
    m, table = cfg.MODEL, our_models()
    wanted = "pretrain" if cfg.TASK == "pretrain" else "classifier"
    if m.NAME not in table:
        if _plugin_model(m.NAME):
            patch = m.PATCH_SIZE   # a model of your own: only an explicit patch size can be checked
            return _check_geometry(cfg, patch, f"MODEL.PATCH_SIZE={patch}") if patch else None
        raise ConfigError(f"MODEL.NAME = {m.NAME!r} is not one of our models{model_hint(m.NAME, wanted)} "
                          "(a model of your own needs IMPORTS to load the module that registers it)")
    kind, patch = table[m.NAME]
    if kind != wanted:
        # the same size as the other kind: pretrain_videomae_<size>... <-> videomae_vit_<size>...
        ours, theirs = (PRETRAIN_PREFIX, CLASSIFIER_PREFIX) if kind == "pretrain" else (CLASSIFIER_PREFIX, PRETRAIN_PREFIX)
        same_size = theirs + m.NAME[len(ours):]   # V2's huge decoder has no classifier of its own
        example = same_size if same_size in table else model_hint(same_size, wanted).split()[-1].rstrip("?")
        raise ConfigError(f"MODEL.NAME = {m.NAME} is a {kind} model but TASK is {cfg.TASK}: use a {theirs}* "
                          f"name, e.g. {example}")
    if m.PATCH_SIZE:
        _check_geometry(cfg, m.PATCH_SIZE, f"MODEL.PATCH_SIZE={m.PATCH_SIZE}")
    else:
        _check_geometry(cfg, patch, f"the patch size of {m.NAME} ({patch}; MODEL.PATCH_SIZE changes it)")


def _check_geometry(cfg: CfgNode, patch: int, what: str) -> None:
    if cfg.MODEL.IMG_SIZE % patch:
        raise ConfigError(f"MODEL.IMG_SIZE={cfg.MODEL.IMG_SIZE} is not a multiple of {what}")


# (key, lowest, highest, lowest included, highest included): what a value may be at all
_RANGES = (
    ("MODEL.IMG_SIZE", 1, None, True, None), ("MODEL.TUBELET_SIZE", 1, None, True, None),
    ("MODEL.PATCH_SIZE", 0, None, True, None), ("MODEL.DEPTH", 0, None, True, None),
    ("MODEL.DECODER_DEPTH", 1, None, True, None), ("MODEL.DECODER_DIM", 0, None, True, None),
    ("MODEL.DECODER_HEADS", 0, None, True, None), ("MODEL.DECODER_MLP_RATIO", 0.0, None, True, None),
    ("MODEL.NUM_CLASSES", 0, None, True, None),
    ("MODEL.DROP_PATH", 0.0, 1.0, True, False), ("MODEL.HEAD_DROP", 0.0, 1.0, True, False),
    ("MASK.DECODER_RATIO", 0.0, 1.0, True, False),
    ("DATA.NUM_CLASSES", 0, None, True, None), ("DATA.SAMPLING_RATE", 1, None, True, None),
    ("DATA.DECODE_SHORT_SIDE", 0, None, True, None), ("DATA.NUM_WORKERS", 0, None, True, None),
    ("DATA.MAX_BAD_RATIO", 0.0, 1.0, True, True), ("DATA.MIN_FRAMES", 0, None, True, None), ("DATA.LOADER_TIMEOUT", 0.0, None, False, None),
    ("DATA.RANDOM_ERASING", 0.0, 1.0, True, True),
    ("DATA.TEST_NUM_CLIPS", 1, None, True, None), ("DATA.TEST_NUM_CROPS", 1, None, True, None),
    ("TRAIN.EPOCHS", 1, None, True, None), ("TRAIN.MAX_STEPS", 0, None, True, None),
    ("TRAIN.RECIPE_GLOBAL_BATCH", 0, None, True, None),
    ("TRAIN.WARMUP_EPOCHS", 0, None, True, None),
    ("TRAIN.BASE_LR", 0.0, None, True, None),   # 0 keeps the weights as loaded: a check of the loading
    ("TRAIN.MIN_LR", 0.0, None, True, None),
    ("TRAIN.WARMUP_LR", 0.0, None, True, None), ("TRAIN.WEIGHT_DECAY", 0.0, None, True, None),
    ("TRAIN.EPS", 0.0, None, False, None), ("TRAIN.CLIP_GRAD", 0.0, None, True, None),
    ("TRAIN.LAYER_DECAY", 0.0, 1.0, False, True), ("TRAIN.LABEL_SMOOTHING", 0.0, 1.0, True, False),
    ("TRAIN.MIXUP", 0.0, None, True, None), ("TRAIN.CUTMIX", 0.0, None, True, None),
    ("TRAIN.MIXUP_SWITCH_PROB", 0.0, 1.0, True, True), ("TRAIN.EMA", 0.0, 1.0, True, False),
    ("TRAIN.LOG_PERIOD", 1, None, True, None), ("TRAIN.CKPT_PERIOD", 1, None, True, None),
    ("TRAIN.CKPT_STEPS", 0, None, True, None), ("TRAIN.KEEP_CHECKPOINTS", 0, None, True, None),
    ("TRAIN.EVAL_PERIOD", 1, None, True, None), ("TRAIN.VAL_VIDEOS", 0, None, True, None),
)


def _check_ranges(cfg: CfgNode) -> None:
    for key, low, high, low_in, high_in in _RANGES:
        value = _lookup(cfg, key)
        below = value < low if low_in else value <= low
        above = high is not None and (value > high if high_in else value >= high)
        if below or above:
            if high is None:
                need = f">= {low}" if low_in else f"> {low}"
            else:
                need = f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
            raise ConfigError(f"{key} must be {need}, got {value}")
    betas = tuple(cfg.TRAIN.BETAS)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"TRAIN.BETAS must be two numbers in [0, 1), got {betas}")
    scale = tuple(cfg.DATA.TRAIN_CROP_SCALE)
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ConfigError(f"DATA.TRAIN_CROP_SCALE must be (low, high) with 0 < low <= high <= 1, got {scale}")


def validate(cfg: CfgNode) -> None:
    _check_masking(cfg)
    _check_target(cfg)
    for key, choices in _CHOICES.items():
        value = _lookup(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key} = {value!r} is not one of {list(choices)}")
    for key in ("TRAIN.BATCH_SIZE", "TRAIN.ACCUM_STEPS", "DATA.NUM_REPEATS", "MODEL.NUM_FRAMES"):
        if _lookup(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {_lookup(cfg, key)}")
    if not 0.0 <= cfg.MASK.RATIO < 1.0:
        raise ConfigError(f"MASK.RATIO must be in [0, 1), got {cfg.MASK.RATIO}")
    _check_ranges(cfg)
    if cfg.TASK == "pretrain":  # fine-tuning knobs that pretraining would otherwise ignore silently
        for key, neutral in (("TRAIN.EMA", 0.0), ("TRAIN.LAYER_DECAY", 1.0)):
            if _lookup(cfg, key) != neutral:
                raise ConfigError(f"{key} = {_lookup(cfg, key)} applies to TASK finetune / linprobe, not pretrain; "
                                  f"leave it at {neutral}")
    if cfg.MODEL.NUM_FRAMES % cfg.MODEL.TUBELET_SIZE:
        raise ConfigError(f"MODEL.NUM_FRAMES={cfg.MODEL.NUM_FRAMES} is not a multiple of "
                          f"MODEL.TUBELET_SIZE={cfg.MODEL.TUBELET_SIZE}")
    _check_model(cfg)


def _ints_as_floats(cfg: CfgNode, overrides: list) -> list:
    """`TRAIN.BASE_LR 0` means 0.0: yacs would reject the int for a float key."""
    out = []
    for key, value in zip(overrides[0::2], overrides[1::2]):
        try:
            current = _lookup(cfg, str(key))
        except KeyError:
            current = None   # merge_from_list names the unknown key
        if isinstance(current, float) and re.fullmatch(r"\s*[+-]?\d+\s*", str(value)):
            value = f"{str(value).strip()}.0"
        out += [key, value]
    return out


def _parse_yaml(text: str, where: str) -> dict:
    """YAML text -> a mapping, or a ConfigError naming the file, line and column."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        place = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        problem = " ".join(filter(None, (err.context, err.problem)))
        raise ConfigError(f"{place}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: YAML error: {' '.join(str(err).split())}") from None
    if data is None:
        raise ConfigError(f"{where} is empty: a config holds KEY: value mappings, e.g. 'TRAIN: {{EPOCHS: 10}}'")
    if not isinstance(data, dict):
        raise ConfigError(f"{where} holds a YAML {type(data).__name__}, not KEY: value mappings "
                          "(e.g. 'TRAIN: {EPOCHS: 10}')")
    return data


def _merge_dicts(child: dict, base: dict) -> dict:
    """`base` updated by `child`, section by section (fvcore's `_BASE_` semantics)."""
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_dicts(value, base[key])
        else:
            base[key] = value
    return base


def _read_yaml(path: str, chain: tuple = ()) -> dict:
    """A config file with its `_BASE_` chain resolved (paths relative to the file naming them)."""
    where = str(path)
    if os.path.abspath(path) in chain:
        raise ConfigError(f"{where}: _BASE_ chain loops back to itself")
    if os.path.isdir(path):
        raise ConfigError(f"config is a folder, not a YAML file: {where}")
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"{where}:{line}: byte 0x{raw[err.start]:02x} is not UTF-8; save the file as UTF-8") from None
    data = _parse_yaml(text, where)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    merged: dict = {}
    for base in bases if isinstance(bases, list) else [bases]:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{where}: _BASE_ must be a file name or a list of them, got {base!r}")
        full = os.path.join(os.path.dirname(path), os.path.expanduser(base))
        if not os.path.isfile(full):
            raise ConfigError(f"{where}: _BASE_ file not found: {base} (looked for {full})")
        _merge_dicts(_read_yaml(full, (*chain, os.path.abspath(path))), merged)
    return _merge_dicts(data, merged)


def _merge(cfg: CfgNode, data: dict, where: str) -> None:
    _check_shape(where, data, cfg)
    try:
        cfg.merge_from_other_cfg(CfgNode(data))
    except (KeyError, AssertionError, ValueError) as err:
        raise _explain(where, err) from None


def _check_override_keys(cfg: CfgNode, keys) -> None:
    """`TRAIN 5` or `MODEL.NAME.X 1`: say what the key is before yacs compares types."""
    for key in map(str, keys):
        node, walked = cfg, []
        for part in key.split("."):
            if not isinstance(node, CfgNode):
                raise ConfigError(f"command line: {'.'.join(walked)} is a value, not a section: "
                                  f"no key {key}")
            if part not in node:
                raise _unknown_key("command line", key)
            node = node[part]
            walked.append(part)
        if isinstance(node, CfgNode):
            raise _section_error("command line", key, node)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                text: str | None = None) -> CfgNode:
    """Defaults <- YAML file (with `_BASE_` chain) or YAML text (a config stored in a checkpoint)
    <- `KEY VALUE` overrides; then validated."""
    cfg = get_defaults()
    if path is not None:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        _merge(cfg, _read_yaml(path), path)
    if text is not None:
        _merge(cfg, _parse_yaml(text, "stored config"), "stored config")
    if overrides:
        if len(overrides) % 2:
            raise ConfigError(f"overrides come in KEY VALUE pairs; got an odd list: {overrides}")
        _check_override_keys(cfg, overrides[0::2])
        try:
            cfg.merge_from_list(_ints_as_floats(cfg, list(overrides)))
        except (KeyError, AssertionError, ValueError) as err:
            raise _explain("command line", err) from None
    import_user_modules(cfg.IMPORTS)
    validate(cfg)
    cfg.freeze()
    return cfg


def checkpoint_config(checkpoint: str, config: str | None = None, overrides=()) -> CfgNode:
    """The config to use `checkpoint` with: `config` when given, else the one its run stored with it
    (inside our `model.pt`, or `config.yaml` in a run folder), so tools need `--config` only for other
    projects' checkpoints. The weights come from `checkpoint`, so MODEL.PRETRAINED is cleared.

    A stored config came with the checkpoint, from whoever made it: it is data. Its IMPORTS are never
    imported (a plugin the model needs is named on the command line: `IMPORTS my_plugin.py`), and no
    config's OUTPUT_DIR is used: OUTPUT_DIR is the checkpoint's own folder unless the command line
    (`OUTPUT_DIR x`, or a tool's `--out`) says otherwise."""
    checkpoint = os.fspath(checkpoint)
    out_dir = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))
    head, tail = ["OUTPUT_DIR", out_dir], [*map(str, overrides), "MODEL.PRETRAINED", ""]
    if config:  # the user's own file: its IMPORTS are the user's choice
        return load_config(config, [*head, *tail])
    if os.path.isdir(checkpoint):
        path = os.path.join(checkpoint, "config.yaml")
        if not os.path.isfile(path):
            raise ConfigError(f"{checkpoint} holds no config.yaml: give the config it was trained with (--config)")
        with open(path, encoding="utf-8", errors="replace") as handle:
            _note_stored_imports(path, handle.read(), tail)
        return load_config(path, [*head, "IMPORTS", "", *tail])
    text = _stored_config_text(checkpoint)
    _note_stored_imports(checkpoint, text, tail)
    return load_config(None, [*head, "IMPORTS", "", *tail], text=text)


def _note_stored_imports(where: str, text: str, overrides: list) -> None:
    """One line when a stored config names IMPORTS that are not imported (and the command line
    names none), so a model that needs a plugin fails with a reason in view."""
    import yaml

    try:
        stored = yaml.safe_load(text)
    except yaml.YAMLError:
        return  # load_config reports it
    imports = stored.get("IMPORTS") if isinstance(stored, dict) else None
    given = "IMPORTS" in [str(key) for key in overrides[0::2]]
    if imports and not given and os.environ.get("RANK", "0") == "0":
        print(f"note: the config stored with {where} names IMPORTS {imports!r}; a stored config is read as data, "
              "its IMPORTS are not imported (pass IMPORTS on the command line if the model needs them)",
              file=sys.stderr)


def _stored_config_text(path: str) -> str:
    import torch

    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint not found: {path}")
    try:  # mmap: only the metadata is read; the tensors stay on disk until the weights are loaded
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # safetensors, an old-format pickle, ...: not one of ours
        stored = None
    text = stored.get("config") if isinstance(stored, dict) else None
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{path} carries no config: give the one it was trained with (--config)")
    return text


def save_config(cfg: CfgNode, path: str | os.PathLike) -> None:
    """Written atomically under a temp name of this process's own (two starters never share one);
    a failed write is one line naming the path and the cause."""
    from .run_folder import temp_name, writing

    path = os.fspath(path)
    tmp = temp_name(path)
    with writing("the config", path, cleanup=(tmp,)):
        with open(tmp, "w") as handle:
            handle.write(cfg.dump())
        os.replace(tmp, path)
