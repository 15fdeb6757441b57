"""Reconstruction targets: what the pretraining decoder predicts for each masked token.

`MODEL.TARGET` picks one by name: pixel (default), pixel_raw, frame_diff, hog, teacher, or one of
your own registered with `@register_target` in a module named by `IMPORTS` (see base.py)."""
from .base import (NORM_TARGET_ALIAS, TARGET_REGISTRY, ReconstructionTarget, build_target, register_target,
                   resolve_target_name, target_from_config)
from .frame_diff import FrameDiffTarget, frame_differences
from .hog import HOGTarget, hog_frames
from .pixel import PixelRawTarget, PixelTarget
from .teacher import TeacherTarget
