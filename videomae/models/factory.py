"""Model sizes as data, in our own name table and registered with timm.

`create_model("pretrain_videomae_base_patch16_224")` and
`create_model("videomae_vit_base_patch16_224", num_classes=174)` build our models; every
EncoderConfig field (`num_frames`, `img_size`, `tubelet_size`, `drop_path_rate`, ...) is a keyword.
Our code looks names up in `MODELS`, never in timm's global registry: another package (say the
official model files) may register the same names with timm, and `MODEL.NAME` still means ours.
The timm registration is for timm users: after `import videomae`, `timm.create_model(...)` works
with the same names, as long as nothing registered over them.
"""
from __future__ import annotations

import dataclasses

from timm.models import register_model

from .classifier import VideoClassifier
from .encoder import EncoderConfig
from .pretrain import PretrainConfig, PretrainVideoMAE

# encoder (dim, depth, heads, patch, mlp_ratio) and decoder (dim, heads, MLP ratio; 4 unless named)
# per size, as official VideoMAE (S/B/L/H) and VideoMAE V2 (g, and V2's huge, whose decoder is 512
# wide where v1's is 640); "tiny" is ours, for tests and CPU demos. V2's decoder blocks take the
# encoder's MLP ratio: 48/11 for the giant, int(512 * 48/11) = 2234 wide.
SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, patch_size=16, mlp_ratio=4.0,
                 decoder_embed_dim=96, decoder_num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16, mlp_ratio=4.0,
                  decoder_embed_dim=192, decoder_num_heads=3),
    "base": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, mlp_ratio=4.0,
                 decoder_embed_dim=384, decoder_num_heads=6),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, patch_size=16, mlp_ratio=4.0,
                  decoder_embed_dim=512, decoder_num_heads=8),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=16, mlp_ratio=4.0,
                 decoder_embed_dim=640, decoder_num_heads=8),
    "v2_huge": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=16, mlp_ratio=4.0,
                    decoder_embed_dim=512, decoder_num_heads=8),
    "giant": dict(embed_dim=1408, depth=40, num_heads=16, patch_size=14, mlp_ratio=48 / 11,
                  decoder_embed_dim=512, decoder_num_heads=8, decoder_mlp_ratio=48 / 11),
}
# sizes that differ from another only in the decoder: a pretraining name, no classifier of their own
DECODER_ONLY = {"v2_huge": "huge"}

_DECODER_KEYS = ("decoder_embed_dim", "decoder_num_heads", "decoder_depth", "decoder_mlp_ratio",
                 "norm_target")
_ENCODER_KEYS = {f.name for f in dataclasses.fields(EncoderConfig)}
_TIMM_KEYS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")  # passed by timm, unused


def _split_kwargs(size: str, kwargs: dict, allowed_extra: tuple = ()) -> tuple[dict, dict, dict]:
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES)}")
    for key in _TIMM_KEYS:
        kwargs.pop(key, None)
    if kwargs.pop("pretrained", False):
        raise ValueError("pretrained=True: weights are not downloaded; build the model and load a "
                         "checkpoint file with videomae.convert.load_checkpoint")
    preset = dict(SIZES[size])
    decoder = {k: preset.pop(k) for k in list(preset) if k.startswith("decoder_")}
    encoder, extra = preset, {}
    for key, value in kwargs.items():
        if key in _ENCODER_KEYS:
            encoder[key] = value
        elif key in _DECODER_KEYS:
            decoder[key] = value
        elif key in allowed_extra:
            extra[key] = value
        else:
            raise TypeError(f"unexpected model argument {key!r}; valid: "
                            f"{sorted(_ENCODER_KEYS | set(_DECODER_KEYS) | set(allowed_extra))}")
    return encoder, decoder, extra


def build_pretrain_model(size: str = "base", target=None, **kwargs) -> PretrainVideoMAE:
    """`target`: a videomae.targets.ReconstructionTarget (default: pixels, per `norm_target`)."""
    encoder, decoder, _ = _split_kwargs(size, kwargs)
    return PretrainVideoMAE(PretrainConfig(encoder=EncoderConfig(**encoder), **decoder), target=target)


def build_classifier(size: str = "base", **kwargs) -> VideoClassifier:
    extra_keys = ("num_classes", "head_drop_rate", "use_mean_pooling", "init_scale", "pool")
    passed_decoder = sorted(k for k in kwargs if k in _DECODER_KEYS)
    if passed_decoder:
        raise TypeError(f"decoder arguments {passed_decoder} do not apply to a classifier")
    encoder, _, extra = _split_kwargs(size, kwargs, extra_keys)
    return VideoClassifier(EncoderConfig(**encoder), **extra)


# name -> builder, for every model of ours (filled below, one pretraining and one classifier per size)
MODELS: dict = {}


def create_model(name: str, **kwargs):
    """Our model `name` from our table; any other name goes to timm (a model of your own that a
    module named in IMPORTS registered there)."""
    if name in MODELS:
        return MODELS[name](**kwargs)
    import timm
    return timm.create_model(name, **kwargs)


def _register(size: str, patch: int) -> None:
    def pretrain(pretrained: bool = False, **kwargs):
        return build_pretrain_model(size, pretrained=pretrained, **kwargs)

    def classifier(pretrained: bool = False, **kwargs):
        return build_classifier(size, pretrained=pretrained, **kwargs)

    names = [(pretrain, f"pretrain_videomae_{size}_patch{patch}_224")]
    if size not in DECODER_ONLY:
        names.append((classifier, f"videomae_vit_{size}_patch{patch}_224"))
    for fn, name in names:
        fn.__name__ = fn.__qualname__ = name
        fn.__module__ = __name__
        fn.__doc__ = f"VideoMAE {size} ({'pretraining' if fn is pretrain else 'classifier'})."
        MODELS[name] = fn
        globals()[name] = register_model(fn)


for _size, _preset in SIZES.items():
    _register(_size, _preset["patch_size"])
