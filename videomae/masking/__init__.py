from .base import MASKING_REGISTRY, MaskingStrategy, build_masking, register_masking, validate_mask
from .strategies import BlockMasking, FrameMasking, RandomMasking, RunningCellMasking, TubeMasking
from .motion import MotionMasking
