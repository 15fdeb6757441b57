"""`teacher`: token features of a frozen encoder (MVD's masked feature distillation).

    MODEL.TARGET teacher MODEL.TEACHER_CHECKPOINT runs/k400_pretrain/model.pt [MODEL.TEACHER_NAME ...]
    [MODEL.TEACHER_NORM True]

The teacher is built as MODEL.TEACHER_NAME (default: MODEL.NAME with the student's MODEL.PATCH_SIZE,
MODEL.DEPTH and MODEL.POS_EMBED) for the student's clip size and tubelet, and loaded from any
checkpoint `videomae.convert.load_checkpoint` reads (ours, official VideoMAE, MAE-ST, HF). Its
encoder (for a pretraining model: blocks and final norm) encodes every token of the clip; the
targets are the predicted tokens' features, (B, M, D_teacher), optionally layer-normalized per token
without affine parameters (MVD's feature normalization). It runs in eval mode under no_grad, in the
run's autocast; it is held by the target, not registered in the student, so it is not trained, not
given to DeepSpeed and not written to our checkpoints (a resumed run loads it again from
MODEL.TEACHER_CHECKPOINT). Its token grid must equal the student's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ReconstructionTarget, gather_tokens, register_target


@register_target("teacher")
class TeacherTarget(ReconstructionTarget):
    def __init__(self, encoder: torch.nn.Module, norm: bool = False, source: str = "teacher"):
        """`encoder`: a VideoEncoder (or anything with `forward_tokens(video)`, `grid_size` and
        `embed_dim`), frozen here."""
        self.encoder = encoder.eval().requires_grad_(False)
        self.norm = norm
        self.source = source

    @classmethod
    def from_config(cls, cfg) -> "TeacherTarget":
        m = cfg.MODEL
        if not m.TEACHER_CHECKPOINT:
            raise ValueError("MODEL.TARGET teacher needs MODEL.TEACHER_CHECKPOINT: the checkpoint of the frozen "
                             "encoder whose token features are the targets")
        return cls.load(m.TEACHER_NAME or m.NAME, m.TEACHER_CHECKPOINT, norm=m.TEACHER_NORM,
                        **teacher_kwargs(cfg))

    @classmethod
    def load(cls, name: str, checkpoint: str, norm: bool = False, log=None, **kwargs) -> "TeacherTarget":
        """Build model `name` with `kwargs`, load `checkpoint` into it and keep its encoder."""
        from ..convert import load_checkpoint
        from ..models.factory import create_model

        model = create_model(name, **kwargs)
        report = load_checkpoint(model, checkpoint)
        if log is not None:
            log(f"teacher: {report}")
        encoder = getattr(model, "encoder", model)   # a pretraining model's encoder, or a classifier's trunk
        return cls(encoder, norm=norm, source=f"{name} from {checkpoint}")

    def width(self, enc) -> int:
        return self.encoder.embed_dim

    def check(self, enc, grid) -> None:
        if tuple(self.encoder.grid_size) != tuple(grid):
            raise ValueError(f"the teacher ({self.source}) has token grid {tuple(self.encoder.grid_size)} but the "
                             f"student has {tuple(grid)}: give a teacher with the student's patch and tubelet size")

    def _on(self, device: torch.device) -> torch.nn.Module:
        # the student's .to(device) does not reach the teacher (not registered): follow the clips
        # (a Python attribute comparison, no device read)
        weight = next(self.encoder.parameters())
        if weight.device != device:
            self.encoder.to(device)
        return self.encoder

    @torch.no_grad()
    def __call__(self, video, enc, ids=None):
        encoder = self._on(video.device)
        encoder.eval()
        feats = encoder.forward_tokens(video).float()                  # B, N, D
        if self.norm:
            feats = F.layer_norm(feats, feats.shape[-1:], eps=1e-6)
        return gather_tokens(feats, ids)

    def __repr__(self) -> str:
        return f"TeacherTarget({self.source}, norm={self.norm})"


def teacher_kwargs(cfg) -> dict:
    """Factory arguments of the teacher: the student's clip geometry; MODEL.PATCH_SIZE, MODEL.DEPTH
    and MODEL.POS_EMBED only when the teacher is the student's own model name."""
    m = cfg.MODEL
    kwargs = dict(num_frames=m.NUM_FRAMES, img_size=m.IMG_SIZE, tubelet_size=m.TUBELET_SIZE)
    if not m.TEACHER_NAME or m.TEACHER_NAME == m.NAME:
        kwargs["pos_embed"] = m.POS_EMBED
        kwargs.update({k: v for k, v in (("patch_size", m.PATCH_SIZE), ("depth", m.DEPTH)) if v})
    return kwargs
