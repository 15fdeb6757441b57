"""videomae: video masked autoencoders (VideoMAE, MAE-ST) for self-supervised pretraining."""
from . import masking, models  # noqa: F401  (registers the timm models and masking strategies)
from .masking import build_masking, register_masking
from .models import PretrainVideoMAE, VideoClassifier, build_classifier, build_pretrain_model

__version__ = "0.1.0"
