"""MAE-ST checkpoints load exactly: its learned separable position tables (the model switches to
them), its cls token (MODEL.CLS_TOKEN; dropped only when asked), its fine-tuned head (pool over
tokens 1:, then `norm` -> our fc_norm). Each checked against MAE-ST's formulas written out here
from raw checkpoint tensors (models_vit.py / models_mae.py / util/video_vit.py at 8ecf99e)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY, run_tool
from videomae.convert import CheckpointError, load_checkpoint, open_checkpoint
from videomae.models import build_classifier, build_pretrain_model
from videomae.models.masks import split_tokens

D, HEADS, DEPTH, CLASSES = 192, 3, 2, 5
GEO = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2)   # grid (2, 4, 4): 32 tokens
VIDEO = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(5))


def maest_file(cls_embed=True, finetuned=False, depth=DEPTH, patch=8, seed=0):
    """A MAE-ST state dict with every tensor random (biases and norms included, the key bias non-zero)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, s=0.1: s * torch.randn(*shape, generator=g)  # noqa: E731
    t, h, w = 2, 32 // patch, 32 // patch   # 4 frames of 32x32
    state = {"patch_embed.proj.weight": rnd(D, 3, 2, patch, patch), "patch_embed.proj.bias": rnd(D),
             "pos_embed_spatial": rnd(1, h * w, D), "pos_embed_temporal": rnd(1, t, D)}
    if cls_embed:
        state.update(cls_token=rnd(1, 1, D, s=1.0), pos_embed_class=rnd(1, 1, D, s=1.0))
    for i in range(depth):
        b = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            state.update({b + f"{norm}.weight": 1 + rnd(D), b + f"{norm}.bias": rnd(D)})
        for name in ("q", "k", "v", "proj"):
            state.update({b + f"attn.{name}.weight": rnd(D, D), b + f"attn.{name}.bias": rnd(D)})
        state.update({b + "mlp.fc1.weight": rnd(4 * D, D), b + "mlp.fc1.bias": rnd(4 * D),
                      b + "mlp.fc2.weight": rnd(D, 4 * D), b + "mlp.fc2.bias": rnd(D)})
    state.update({"norm.weight": 1 + rnd(D), "norm.bias": rnd(D)})
    if finetuned:
        state.update({"head.weight": rnd(CLASSES, D, s=1.0), "head.bias": rnd(CLASSES)})
    else:   # a few of the decoder's tensors, which loading into a classifier drops
        state.update({"decoder_embed.weight": rnd(96, D), "mask_token": rnd(1, 1, 96),
                      "decoder_pos_embed_spatial": rnd(1, h * w, 96)})
        if cls_embed:
            state["decoder_cls_token"] = rnd(1, 1, 96)
    return state


def maest_blocks(state, x):
    """util/video_vit.py Block: pre-norm, separate q/k/v with biases, softmax(q k^T * d^-0.5) v, GELU MLP."""
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        w = lambda name: state[f"blocks.{i}.{name}"]  # noqa: E731
        h = F.layer_norm(x, (D,), w("norm1.weight"), w("norm1.bias"), 1e-6)
        B, N, _ = h.shape
        q, k, v = ((h @ w(f"attn.{n}.weight").T + w(f"attn.{n}.bias")).reshape(B, N, HEADS, -1).transpose(1, 2)
                   for n in "qkv")
        attn = (q @ k.transpose(-2, -1) * (D // HEADS) ** -0.5).softmax(-1)
        x = x + (attn @ v).transpose(1, 2).reshape(B, N, D) @ w("attn.proj.weight").T + w("attn.proj.bias")
        h = F.layer_norm(x, (D,), w("norm2.weight"), w("norm2.bias"), 1e-6)
        x = x + F.gelu(h @ w("mlp.fc1.weight").T + w("mlp.fc1.bias")) @ w("mlp.fc2.weight").T + w("mlp.fc2.bias")
    return x


def maest_embed(state, video, keep=None):
    """PatchEmbed + cls token + separable position table (cls: pos_embed_class), tokens `keep` only."""
    kernel = state["patch_embed.proj.weight"]
    x = F.conv3d(video, kernel, state["patch_embed.proj.bias"], stride=kernel.shape[2:]).flatten(2).transpose(1, 2)
    t, hw = state["pos_embed_temporal"].shape[1], state["pos_embed_spatial"].shape[1]
    pos = state["pos_embed_spatial"].repeat(1, t, 1) + torch.repeat_interleave(state["pos_embed_temporal"], hw, 1)
    x = x + pos
    if keep is not None:
        x = torch.stack([x[b, keep[b]] for b in range(x.shape[0])])
    if "cls_token" in state:
        cls = (state["cls_token"] + state["pos_embed_class"]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], 1)
    return x


def maest_encoder(state, video, keep):
    """models_mae.py forward_encoder: visible tokens, blocks, norm, then the cls token removed."""
    x = F.layer_norm(maest_blocks(state, maest_embed(state, video, keep)), (D,), state["norm.weight"],
                     state["norm.bias"], 1e-6)
    return x[:, 1:] if "cls_token" in state else x


def maest_logits(state, video):
    """models_vit.py forward: every token, blocks, x[:, 1:].mean(1) (with or without cls token), norm, head."""
    x = maest_blocks(state, maest_embed(state, video))[:, 1:].mean(1)
    x = F.layer_norm(x, (D,), state["norm.weight"], state["norm.bias"], 1e-6)
    return x @ state["head.weight"].T + state["head.bias"]


def mask_of(seed=0):
    from videomae.masking import build_masking
    return build_masking("tube", 0.75)(2, (2, 4, 4), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls_embed", [True, False])
def test_pretraining_encoder_equals_maest_with_and_without_cls_token(tmp_path, cls_embed):
    state = maest_file(cls_embed)
    torch.save({"model": state}, tmp_path / "maest.pth")
    # a model built with the default sinusoid: the checkpoint's learned tables replace it
    model = build_pretrain_model("tiny", depth=DEPTH, decoder_depth=1, cls_token=cls_embed, **GEO).eval()
    report = load_checkpoint(model, tmp_path / "maest.pth")
    assert any("learned separable tables" in what for _, what in report.adapted), str(report)
    assert model.cfg.encoder.pos_embed == "separable"
    assert ("encoder.cls_token" in report.loaded) == cls_embed
    split = split_tokens(mask_of())
    with torch.no_grad():
        ours = model.forward_encoder(VIDEO, split)
        ref = maest_encoder(state, VIDEO, split.keep)
    assert ours.shape == (2, 8, D)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    assert model(VIDEO, mask_of()).pred.shape == (2, 24, 2 * 8 * 8 * 3)


def test_cls_token_is_dropped_only_when_asked_and_the_report_says_what_that_does():
    state = maest_file(cls_embed=True)
    with pytest.raises(CheckpointError, match=r"has a cls token .*MODEL.CLS_TOKEN True.*drop_cls_token=True"):
        load_checkpoint(build_classifier("tiny", num_classes=CLASSES, depth=DEPTH, **GEO), state)
    model = build_classifier("tiny", num_classes=CLASSES, depth=DEPTH, **GEO).eval()
    report = load_checkpoint(model, state, drop_cls_token=True)
    why = dict(report.dropped)
    assert "outputs now differ" in why["cls_token"] and "outputs now differ" in why["pos_embed_class"]
    # what was loaded is the rest of the encoder, exactly: the no-cls formulas with the same tensors
    no_cls = {k: v for k, v in state.items() if k not in ("cls_token", "pos_embed_class")}
    norm = lambda x: F.layer_norm(x, (D,), state["norm.weight"], state["norm.bias"], 1e-6)  # noqa: E731
    with torch.no_grad():
        ours = norm(model.blocks(model.embed(VIDEO)))
        torch.testing.assert_close(ours, norm(maest_blocks(no_cls, maest_embed(no_cls, VIDEO))), rtol=0, atol=1e-5)
        with_cls = norm(maest_blocks(state, maest_embed(state, VIDEO))[:, 1:])
        moved = (ours - with_cls).norm() / with_cls.norm()
    assert moved > 0.01   # the drop is not harmless: that is why it has to be asked for


@pytest.mark.parametrize("cls_embed", [True, False])
def test_finetuned_maest_logits(tmp_path, cls_embed):
    state = maest_file(cls_embed, finetuned=True, seed=1)
    ckpt = open_checkpoint(state)
    assert ckpt.pool == ("mean" if cls_embed else "skip_first") and ckpt.has_cls_token == cls_embed
    model = build_classifier("tiny", num_classes=CLASSES, depth=DEPTH, cls_token=cls_embed, pool=ckpt.pool,
                             pos_embed="separable", **GEO).eval()
    report = load_checkpoint(model, ckpt, require_classifier=True)
    assert not report.new and {"fc_norm.weight", "fc_norm.bias"} <= set(report.loaded)   # MAE-ST's norm
    with torch.no_grad():
        torch.testing.assert_close(model(VIDEO), maest_logits(state, VIDEO), rtol=0, atol=1e-5)
    # evaluating the head with other pooling would score other features: refused
    other = build_classifier("tiny", num_classes=CLASSES, depth=DEPTH, cls_token=cls_embed,
                             pool="token0" if cls_embed else "mean", **GEO)
    with pytest.raises(CheckpointError, match="head was trained on .* but the model pools"):
        load_checkpoint(other, state, require_classifier=True)


def test_learned_joint_table_is_refused_not_dropped():
    state = maest_file(cls_embed=True, finetuned=True)
    del state["pos_embed_spatial"], state["pos_embed_temporal"], state["pos_embed_class"]
    state["pos_embed"] = 0.1 * torch.randn(1, 33, D)   # MAE-ST sep_pos_embed=False: learned, cls row first
    with pytest.raises(CheckpointError, match="learned joint position table, not the fixed sinusoid"):
        load_checkpoint(build_classifier("tiny", num_classes=CLASSES, depth=DEPTH, cls_token=True, **GEO), state)


def test_tools_read_a_finetuned_maest_file_as_one(tmp_path, synthetic_root):
    state = maest_file(cls_embed=False, finetuned=True, depth=4, seed=2)
    state["head.weight"], state["head.bias"] = torch.randn(8, D), torch.zeros(8)
    src = tmp_path / "maest_ft.pth"
    torch.save({"model": state}, src)
    result = run_tool("tools/test.py", "--config", "configs/demo/finetune.yaml", "--checkpoint", src,
                      "OUTPUT_DIR", tmp_path / "out", "DATA.LIST_DIR", synthetic_root, "DATA.ROOT", synthetic_root,
                      *TINY, "DATA.TEST_NUM_CLIPS", "1", "DATA.TEST_NUM_CROPS", "1")
    assert "MODEL.POOL skip_first" in result.stdout, result.stdout
    assert json.loads((tmp_path / "out" / "test_metrics.json").read_text())["videos"] == 8

    # the converter builds the model as the checkpoint's and stores the pooling for tools/test.py
    with_cls = maest_file(cls_embed=True, finetuned=True, depth=12, patch=16, seed=3)   # the tiny preset
    torch.save({"model": with_cls}, tmp_path / "cls.pth")
    run_tool("tools/convert_checkpoint.py", "--model", "videomae_vit_tiny_patch16_224", "--num-frames", "4",
             "--img-size", "32", "--src", tmp_path / "cls.pth", "--out", tmp_path / "ours.pt")
    converted = open_checkpoint(tmp_path / "ours.pt")
    assert converted.has_cls_token and converted.pool == "mean"
    assert torch.equal(converted.state["cls_token"], with_cls["cls_token"] + with_cls["pos_embed_class"])
    assert math.isclose(converted.state["fc_norm.weight"].sum().item(), with_cls["norm.weight"].sum().item())
