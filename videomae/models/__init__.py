from .classifier import VideoClassifier
from .encoder import EncoderConfig, VideoEncoder
from .factory import MODELS, SIZES, build_classifier, build_pretrain_model, create_model
from .masks import TokenSplit, check_mask_layout, split_tokens
from .pos_embed import SeparablePosEmbed, SinusoidPosEmbed, resize_pos_embed, sinusoid_table
from .pretrain import PretrainConfig, PretrainOutput, PretrainVideoMAE
from .targets import IMAGENET_MEAN, IMAGENET_STD, cube_targets, patchify, unpatchify
from .tokenizer import CubeEmbed
