"""VideoMAE V2's giant and huge pretraining checkpoints load exactly (reduced depth): V2's giant
decoder has the encoder's MLP ratio 48/11 (2,234 wide), V2's huge decoder is 512 wide (v1's 640);
both presets are in the name table, and a checkpoint's decoder shapes win over a preset's. Checked
against V2's pretraining forward (models/modeling_pretrain.py) written out here from raw tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from videomae.convert import load_checkpoint
from videomae.models import MODELS, create_model

FRAMES = 4


def sinusoid(n, dim):
    """get_sinusoid_encoding_table: pos / 10000^(2 (j // 2) / dim), sin on even, cos on odd columns."""
    table = torch.tensor([[p / math.pow(10000, 2 * (j // 2) / dim) for j in range(dim)] for p in range(n)],
                         dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = table[:, 0::2].sin(), table[:, 1::2].cos()
    return table.float()[None]


def v2_file(width, heads, mlp, patch, dec_width, dec_mlp, seed=0):
    """A V2 pretraining state dict (one encoder and one decoder block), every tensor random."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, s=0.02: s * torch.randn(*shape, generator=g)  # noqa: E731

    def block(prefix, dim, hidden):
        return {prefix + "norm1.weight": 1 + rnd(dim), prefix + "norm1.bias": rnd(dim),
                prefix + "attn.qkv.weight": rnd(3 * dim, dim), prefix + "attn.q_bias": rnd(dim),
                prefix + "attn.v_bias": rnd(dim), prefix + "attn.proj.weight": rnd(dim, dim),
                prefix + "attn.proj.bias": rnd(dim), prefix + "norm2.weight": 1 + rnd(dim),
                prefix + "norm2.bias": rnd(dim), prefix + "mlp.fc1.weight": rnd(hidden, dim),
                prefix + "mlp.fc1.bias": rnd(hidden), prefix + "mlp.fc2.weight": rnd(dim, hidden),
                prefix + "mlp.fc2.bias": rnd(dim)}

    cube = 2 * patch * patch * 3
    state = {"encoder.patch_embed.proj.weight": rnd(width, 3, 2, patch, patch), "encoder.patch_embed.proj.bias": rnd(width),
             **block("encoder.blocks.0.", width, mlp), "encoder.norm.weight": 1 + rnd(width),
             "encoder.norm.bias": rnd(width), "encoder_to_decoder.weight": rnd(dec_width, width),
             "mask_token": rnd(1, 1, dec_width), **block("decoder.blocks.0.", dec_width, dec_mlp),
             "decoder.norm.weight": 1 + rnd(dec_width), "decoder.norm.bias": rnd(dec_width),
             "decoder.head.weight": rnd(cube, dec_width), "decoder.head.bias": rnd(cube)}
    return state, heads


def v2_blocks(state, prefix, x, heads):
    w = lambda name: state[prefix + name]  # noqa: E731
    dim = x.shape[-1]
    h = F.layer_norm(x, (dim,), w("norm1.weight"), w("norm1.bias"), 1e-6)
    qkv = h @ w("attn.qkv.weight").T + torch.cat([w("attn.q_bias"), torch.zeros(dim), w("attn.v_bias")])
    B, N, _ = qkv.shape
    q, k, v = qkv.reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
    attn = (q * (dim // heads) ** -0.5 @ k.transpose(-2, -1)).softmax(-1)
    x = x + (attn @ v).transpose(1, 2).reshape(B, N, dim) @ w("attn.proj.weight").T + w("attn.proj.bias")
    h = F.layer_norm(x, (dim,), w("norm2.weight"), w("norm2.bias"), 1e-6)
    return x + F.gelu(h @ w("mlp.fc1.weight").T + w("mlp.fc1.bias")) @ w("mlp.fc2.weight").T + w("mlp.fc2.bias")


def v2_pretrain(state, heads, dec_heads, video, mask):
    """PretrainVisionTransformer.forward: visible cubes encoded, decoder over [visible, mask tokens]
    with the decoder's sinusoid, predictions for the masked ones."""
    kernel = state["encoder.patch_embed.proj.weight"]
    x = F.conv3d(video, kernel, state["encoder.patch_embed.proj.bias"], stride=kernel.shape[2:]).flatten(2).transpose(1, 2)
    B, N, width = x.shape
    x = (x + sinusoid(N, width))[~mask].reshape(B, -1, width)
    x = v2_blocks(state, "encoder.blocks.0.", x, heads)
    x = F.layer_norm(x, (width,), state["encoder.norm.weight"], state["encoder.norm.bias"], 1e-6)
    x = x @ state["encoder_to_decoder.weight"].T
    dim = x.shape[-1]
    pos = sinusoid(N, dim).expand(B, -1, -1)
    x = torch.cat([x + pos[~mask].reshape(B, -1, dim), state["mask_token"] + pos[mask].reshape(B, -1, dim)], 1)
    x = v2_blocks(state, "decoder.blocks.0.", x, dec_heads)
    masked = int(mask[0].sum())
    x = F.layer_norm(x[:, -masked:], (dim,), state["decoder.norm.weight"], state["decoder.norm.bias"], 1e-6)
    return x @ state["decoder.head.weight"].T + state["decoder.head.bias"]


MASK = torch.tensor([[True, False, False, True] * 2, [False, True, True, False] * 2])   # a 2x2 tube, 8 tokens


def check(name, state, heads, patch, dec_heads=8, **kwargs):
    video = torch.randn(2, 3, FRAMES, 2 * patch, 2 * patch, generator=torch.Generator().manual_seed(1))
    model = create_model(name, depth=1, num_frames=FRAMES, img_size=2 * patch, **kwargs).eval()
    report = load_checkpoint(model, state)
    assert not report.new and not report.dropped, str(report)
    with torch.no_grad():
        pred = model(video, MASK).pred
    torch.testing.assert_close(pred, v2_pretrain(state, heads, dec_heads, video, MASK), rtol=0, atol=1e-5)
    return report, model


def test_v2_giant_pretraining_file_loads_exactly():
    hidden = int(1408 * 48 / 11)
    state, heads = v2_file(1408, 16, hidden, 14, 512, int(512 * 48 / 11))
    assert state["decoder.blocks.0.mlp.fc1.weight"].shape == (2234, 512)
    report, _ = check("pretrain_videomae_giant_patch14_224", state, heads, 14, decoder_depth=1)
    assert not report.adapted, str(report)   # the preset is V2's giant: nothing to fit


def test_v2_huge_loads_by_name_and_into_v1s_huge_by_its_shapes():
    state, heads = v2_file(1280, 16, 5120, 16, 512, 2048)
    report, _ = check("pretrain_videomae_v2_huge_patch16_224", state, heads, 16, decoder_depth=1)
    assert not report.adapted
    assert "videomae_vit_v2_huge_patch16_224" not in MODELS   # its classifier is the huge one
    # v1's huge decoder (640 wide, depth 4) stays a name of its own; a V2 file rebuilds it to fit
    v1 = create_model("pretrain_videomae_huge_patch16_224", depth=1, num_frames=FRAMES, img_size=32)
    assert v1.cfg.decoder_embed_dim == 640 and v1.cfg.decoder_depth == 4
    report, model = check("pretrain_videomae_huge_patch16_224", state, heads, 16)
    assert ("decoder", "built to fit the checkpoint's shapes: width 640 -> 512, depth 4 -> 1, MLP 2560 -> 2048 "
            "wide (8 heads, the model's: the shapes do not tell)") in report.adapted
    assert (model.cfg.decoder_embed_dim, model.cfg.decoder_depth) == (512, 1)


def test_decoder_dimensions_are_config_keys(tmp_path):
    from videomae.engine.config import ConfigError, load_config
    from videomae.engine.tasks import PretrainTask

    overrides = ["MODEL.NAME", "pretrain_videomae_tiny_patch16_224", "MODEL.NUM_FRAMES", "4", "MODEL.IMG_SIZE", "32",
                 "MODEL.DECODER_DIM", "64", "MODEL.DECODER_HEADS", "4", "MODEL.DECODER_MLP_RATIO", "3",
                 "MODEL.DECODER_DEPTH", "1", "MODEL.DEPTH", "1", "DATA.LIST_DIR", str(tmp_path)]
    cfg = load_config("configs/demo/pretrain.yaml", overrides)
    task = PretrainTask(cfg)
    task.log = lambda *a: None
    model = task.build_model()
    block = model.decoder.blocks[0]
    assert (model.mask_token.shape[-1], block.attn.num_heads, block.mlp.fc1.out_features) == (64, 4, 192)
    # 0 keeps the preset's, as before
    model = create_model("pretrain_videomae_tiny_patch16_224", depth=1, decoder_depth=1, num_frames=4, img_size=32)
    assert (model.cfg.decoder_embed_dim, model.cfg.decoder_num_heads, model.cfg.decoder_mlp_ratio) == (96, 3, 4.0)
    with pytest.raises(ConfigError, match="MODEL.DECODER_DIM must be >= 0"):
        load_config("configs/demo/pretrain.yaml", ["MODEL.DECODER_DIM", "-1"])
