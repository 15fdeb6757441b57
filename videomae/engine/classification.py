"""Fine-tuning and linear probing as tasks of the one training loop.

Fine-tuning (VideoMAE recipe): layer-wise lr decay, drop path, mixup/cutmix on whole clips, label
smoothing, RandAugment + random erasing (data side), repeated augmentation, optional EMA.
Evaluation: single-view validation each epoch, multi-view test at the end, merged across ranks.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..convert import load_checkpoint
from ..models.factory import create_model
from .config import ConfigError
from .data import build_dataset
from .evaluation import classification_metrics, predict_dataset, test_report
from .optim import param_groups
from .tasks import StepContext, drop_path_noise, model_kwargs, normalize_on_device


def num_classes_of(cfg) -> int:
    n = cfg.MODEL.NUM_CLASSES or cfg.DATA.NUM_CLASSES
    if n <= 0:
        raise ConfigError("set DATA.NUM_CLASSES (or MODEL.NUM_CLASSES) for a classification task")
    return n


def build_classifier_from_cfg(cfg, log=print):
    m = cfg.MODEL
    model = create_model(m.NAME, num_classes=num_classes_of(cfg), head_drop_rate=m.HEAD_DROP,
                         **({"pool": m.POOL} if m.POOL != "mean" else {}), **model_kwargs(cfg))
    if hasattr(model, "decoder"):
        raise ConfigError(f"MODEL.NAME={m.NAME} is a pretraining model; use a videomae_vit_* name to fine-tune")
    if m.PRETRAINED:
        log(str(load_checkpoint(model, m.PRETRAINED)))
    return model


def mix_clips(mixup, video: torch.Tensor, target: torch.Tensor):
    """timm's Mixup/CutMix on (B, C, T, H, W): it cuts boxes over the last two dims, so time is
    folded into channels and one box (and one mixing weight) goes through every frame of a clip."""
    b, c, t, h, w = video.shape
    mixed, target = mixup(video.reshape(b, c * t, h, w), target)
    return mixed.reshape(b, c, t, h, w), target


class ClassificationTask:
    name = "finetune"
    train_split = "train"
    has_eval = True
    linear_probe = False

    def __init__(self, cfg):
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        self.cfg = cfg
        t = cfg.TRAIN
        self.mixup = None
        if not self.linear_probe and (t.MIXUP > 0 or t.CUTMIX > 0):
            self.mixup = Mixup(mixup_alpha=t.MIXUP, cutmix_alpha=t.CUTMIX, switch_prob=t.MIXUP_SWITCH_PROB,
                               label_smoothing=t.LABEL_SMOOTHING, num_classes=num_classes_of(cfg))
            self.criterion = SoftTargetCrossEntropy()
        else:
            self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=t.LABEL_SMOOTHING)
        self.ema = None
        self.log = print
        self._datasets = {}

    def build_model(self):
        model = build_classifier_from_cfg(self.cfg, log=self.log)
        if self.linear_probe:
            for name, p in model.named_parameters():
                p.requires_grad = name.startswith(("head.", "fc_norm."))
        if self.cfg.TRAIN.EMA > 0:
            from timm.utils import ModelEmaV3
            if self.cfg.DEEPSPEED.ZERO_STAGE == 3:
                raise ConfigError("TRAIN.EMA needs full parameters on every rank: use DEEPSPEED.ZERO_STAGE <= 2")
            self.ema = ModelEmaV3(model, decay=self.cfg.TRAIN.EMA)
        return model

    def flop_inputs(self, model, device) -> tuple[tuple, dict]:
        m = self.cfg.MODEL
        return (torch.zeros(1, 3, m.NUM_FRAMES, m.IMG_SIZE, m.IMG_SIZE, device=device),), {}

    def param_groups(self, model):
        return param_groups(model, self.cfg.TRAIN.WEIGHT_DECAY, layer_decay=self.cfg.TRAIN.LAYER_DECAY,
                            num_layers=len(model.blocks))

    def train_step(self, engine, batch: dict, ctx: StepContext):
        video = normalize_on_device(batch["video"], engine.device)
        target = batch["label"].to(engine.device)
        if self.mixup is not None:
            video, target = mix_clips(self.mixup, video, target)
        logits = engine(video, drop_noise=drop_path_noise(engine.module, ctx, video.shape[0], engine.device))
        return self.criterion(logits.float(), target), {}

    def after_step(self, trainer) -> None:
        if self.ema is not None:
            module = trainer.engine.module
            # the copy was made before the engine moved the model: follow it to its device once
            device = next(module.parameters()).device
            if next(self.ema.module.parameters()).device != device:
                self.ema.to(device)
            self.ema.update(module, step=trainer.step)

    # -- evaluation -----------------------------------------------------------------------------
    def _predict(self, trainer, split: str):
        if split not in self._datasets:  # built once; val runs every EVAL_PERIOD epochs
            self._datasets[split] = build_dataset(self.cfg, split)
        dataset, engine = self._datasets[split], trainer.engine
        was_training = engine.module.training
        engine.eval()
        with trainer.autocast:
            probs = predict_dataset(engine, self.cfg, dataset, trainer.info.world_size, trainer.info.rank,
                                    trainer.device)
        if was_training:
            engine.train()
        return dataset, probs

    def evaluate(self, trainer, split: str = "val") -> dict:
        dataset, probs = self._predict(trainer, split)
        return classification_metrics(probs, np.array([r.label for r in dataset.records]))

    def final_test(self, trainer) -> dict:
        dataset, probs = self._predict(trainer, "test")
        metrics = test_report(self.cfg, dataset, probs, trainer.out_dir, trainer.info.is_main)
        if trainer.info.is_main:
            trainer.log.record("test", trainer.step, **{k: v for k, v in metrics.items() if k != "views"})
            trainer.log.info("test ({views} views): top-1 {top1:.2f}, top-5 {top5:.2f}, mean class "
                             "{mean_class_acc:.2f} over {videos} videos".format(**metrics))
        if self.ema is not None and trainer.info.is_main:
            from .checkpoint import save_model_file
            save_model_file(self.ema.module.state_dict(), os.path.join(trainer.out_dir, "model_ema.pt"),
                            {"step": trainer.step, "task": self.name})
        return {f"test_{k}": v for k, v in metrics.items()}


# what a linear probe trains; everything else is the frozen encoder
PROBE_MODULES = ("fc_norm", "head_dropout", "head")


class LinearProbeTask(ClassificationTask):
    """Frozen encoder, mean-pooled features, a trained fc_norm + linear head.

    The encoder stays in eval mode (no drop path, no dropout) and gets no gradient; training sees
    plain random-resized crops (DATA.TRAIN_CROP_SCALE) and flips (DATA.FLIP) only: RandAugment,
    random erasing, mixup and cutmix are fine-tuning augmentation and are off whatever the config
    says (so `TASK linprobe` on a fine-tuning config probes, it does not fine-tune the head with
    the fine-tuning recipe's noise). configs/linprobe/ holds the probe recipes."""
    name = "linprobe"
    linear_probe = True

    def build_model(self):
        c = self.cfg
        ignored = [f"{k} {v}" for k, v, off in (("DATA.RAND_AUGMENT", c.DATA.RAND_AUGMENT, ""),
                                                 ("DATA.RANDOM_ERASING", c.DATA.RANDOM_ERASING, 0.0),
                                                 ("TRAIN.MIXUP", c.TRAIN.MIXUP, 0.0),
                                                 ("TRAIN.CUTMIX", c.TRAIN.CUTMIX, 0.0),
                                                 ("MODEL.DROP_PATH", c.MODEL.DROP_PATH, 0.0)) if v != off]
        if ignored:
            self.log("linprobe: frozen encoder in eval mode; fine-tuning settings not used: " + ", ".join(ignored))
        return super().build_model()

    @staticmethod
    def freeze_mode(model) -> None:
        """Everything but the probe in eval mode (the trainer puts the whole model in train mode)."""
        for name, child in model.named_children():
            if name not in PROBE_MODULES and child.training:
                child.eval()

    def train_step(self, engine, batch: dict, ctx: StepContext):
        self.freeze_mode(engine.module)
        video = normalize_on_device(batch["video"], engine.device)
        logits = engine(video)   # no drop-path draws: the encoder is in eval mode
        return self.criterion(logits.float(), batch["label"].to(engine.device)), {}

