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

from fvcore.common.config import CfgNode


C = CfgNode()
C.OUTPUT_DIR = "runs/default"
C.SEED = 0
C.TASK = "pretrain"                  # pretrain | finetune | linprobe
C.IMPORTS = ""                       # your modules or .py files, comma-separated, imported first:
                                     # they may register masking strategies or timm models

C.MODEL = CfgNode()
C.MODEL.NAME = "pretrain_videomae_base_patch16_224"   # any registered timm name
C.MODEL.NUM_FRAMES = 16
C.MODEL.IMG_SIZE = 224
C.MODEL.TUBELET_SIZE = 2
C.MODEL.PATCH_SIZE = 0               # 0 = the size in MODEL.NAME
C.MODEL.DEPTH = 0                    # 0 = the encoder depth of MODEL.NAME's size
C.MODEL.DECODER_DEPTH = 4
C.MODEL.NORM_TARGET = True           # per-cube normalized pixel targets
C.MODEL.POS_EMBED = "sinusoid"       # or "separable" (MAE-ST)
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
C.DATA.MAX_BAD_RATIO = 0.05
C.DATA.LOADER_TIMEOUT = 600.0
C.DATA.TRAIN_CROP_SCALE = (0.08, 1.0)  # fine-tuning random resized crop: area share range
C.DATA.RAND_AUGMENT = "rand-m7-n4-mstd0.5-inc1"
C.DATA.RANDOM_ERASING = 0.25
C.DATA.TEST_NUM_CLIPS = 2
C.DATA.TEST_NUM_CROPS = 3

C.TRAIN = CfgNode()
C.TRAIN.BATCH_SIZE = 32              # videos per process per micro-step
C.TRAIN.ACCUM_STEPS = 1
C.TRAIN.EPOCHS = 800
C.TRAIN.MAX_STEPS = 0                # > 0: stop after this many optimizer steps (smoke runs, demos)
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
C.TRAIN.EVAL_PERIOD = 1              # epochs between validations (classification)
C.TRAIN.AUTO_RESUME = True

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
    """yacs says 'Non-existent key: X' (or a type mismatch); add the closest valid key."""
    import difflib
    import re

    message = str(err.args[0]) if err.args else str(err)
    match = re.search(r"[Nn]on-existent (?:config )?key: ([\w.]+)", message)
    if match:
        close = difflib.get_close_matches(match.group(1), _all_keys(C), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        return ConfigError(f"{where}: unknown config key {match.group(1)}{hint}")
    return ConfigError(f"{where}: {message}")


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


def validate(cfg: CfgNode) -> None:
    _check_masking(cfg)
    for key, choices in _CHOICES.items():
        value = _lookup(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key} = {value!r} is not one of {list(choices)}")
    for key in ("TRAIN.BATCH_SIZE", "TRAIN.ACCUM_STEPS", "DATA.NUM_REPEATS", "MODEL.NUM_FRAMES"):
        if _lookup(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {_lookup(cfg, key)}")
    if not 0.0 <= cfg.MASK.RATIO < 1.0:
        raise ConfigError(f"MASK.RATIO must be in [0, 1), got {cfg.MASK.RATIO}")
    if cfg.TASK == "pretrain":  # fine-tuning knobs that pretraining would otherwise ignore silently
        for key, neutral in (("TRAIN.EMA", 0.0), ("TRAIN.LAYER_DECAY", 1.0)):
            if _lookup(cfg, key) != neutral:
                raise ConfigError(f"{key} = {_lookup(cfg, key)} applies to TASK finetune / linprobe, not pretrain; "
                                  f"leave it at {neutral}")
    if cfg.MODEL.NUM_FRAMES % cfg.MODEL.TUBELET_SIZE:
        raise ConfigError(f"MODEL.NUM_FRAMES={cfg.MODEL.NUM_FRAMES} is not a multiple of "
                          f"MODEL.TUBELET_SIZE={cfg.MODEL.TUBELET_SIZE}")


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


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                text: str | None = None) -> CfgNode:
    """Defaults <- YAML file (with `_BASE_` chain) or YAML text (a config stored in a checkpoint)
    <- `KEY VALUE` overrides; then validated."""
    cfg = get_defaults()
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            cfg.merge_from_file(os.fspath(path))
        except (KeyError, AssertionError, ValueError) as err:
            raise _explain(os.fspath(path), err) from None
    if text is not None:
        try:
            cfg.merge_from_other_cfg(CfgNode.load_cfg(text))
        except (KeyError, AssertionError, ValueError) as err:
            raise _explain("stored config", err) from None
    if overrides:
        if len(overrides) % 2:
            raise ConfigError(f"overrides come in KEY VALUE pairs; got an odd list: {overrides}")
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
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        handle.write(cfg.dump())
    os.replace(tmp, path)
