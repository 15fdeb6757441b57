"""Checkpoint interop: official VideoMAE v1/V2 layouts, MAE-ST, HF transformers, our own runs.
Each conversion is checked numerically against an independent computation."""
import math

import pytest
import torch
import torch.nn.functional as F

from videomae.convert import CheckpointError, load_checkpoint
from videomae.models import build_classifier, build_pretrain_model, sinusoid_table

CFG = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, depth=2)
D, HEADS = 192, 3


def randomize(state, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}


def reference_tokens(state, video, pos, prefix="", k_bias=None):
    """A ViT from the formulas, reading raw checkpoint tensors: conv3d cubes, + position table,
    pre-norm blocks with softmax(QK^T / sqrt(d)) V attention and a GELU MLP."""
    w = lambda name: state[prefix + name]  # noqa: E731
    kernel = w("patch_embed.proj.weight")
    x = F.conv3d(video, kernel, w("patch_embed.proj.bias"), stride=kernel.shape[2:])
    x = x.flatten(2).transpose(1, 2) + pos
    depth = 1 + max(int(k[len(prefix):].split(".")[1]) for k in state if k.startswith(prefix + "blocks."))
    for i in range(depth):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (D,), w(b + "norm1.weight"), w(b + "norm1.bias"), 1e-6)
        if (prefix + b + "attn.qkv.weight") in state:
            q, k, v = (h @ w(b + "attn.qkv.weight").T).chunk(3, -1)
            q, v = q + w(b + "attn.q_bias"), v + w(b + "attn.v_bias")
        else:  # MAE-ST: separate projections, all with biases (the key bias included)
            q, k, v = (h @ w(b + f"attn.{n}.weight").T + w(b + f"attn.{n}.bias") for n in "qkv")
        B, N, _ = q.shape
        q, k, v = (t.reshape(B, N, HEADS, -1).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        x = x + (attn @ v).transpose(1, 2).reshape(B, N, D) @ w(b + "attn.proj.weight").T + w(b + "attn.proj.bias")
        h = F.layer_norm(x, (D,), w(b + "norm2.weight"), w(b + "norm2.bias"), 1e-6)
        h = F.gelu(h @ w(b + "mlp.fc1.weight").T + w(b + "mlp.fc1.bias"))
        x = x + h @ w(b + "mlp.fc2.weight").T + w(b + "mlp.fc2.bias")
    return x


def reference_logits(state, video, prefix=""):
    x = reference_tokens(state, video, sinusoid_table(32, D), prefix).mean(1)
    x = F.layer_norm(x, (D,), state["fc_norm.weight"], state["fc_norm.bias"], 1e-6)
    return x @ state["head.weight"].T + state["head.bias"]


VIDEO = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(5))


def test_official_v1_pretraining_file_into_classifier(tmp_path):
    pretrain = build_pretrain_model("tiny", decoder_depth=1, **CFG)
    state = randomize(pretrain.state_dict())
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": state, "epoch": 799}, path)
    model = build_classifier("tiny", num_classes=5, **CFG).eval()
    report = load_checkpoint(model, path)
    dropped = {k for k, _ in report.dropped}
    assert {"mask_token", "encoder_to_decoder.weight", "norm.weight"} <= dropped
    assert any(k.startswith("decoder.blocks.") for k in dropped)
    assert set(report.new) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    # the encoder computes exactly what the formulas say with the file's tensors
    tokens = reference_tokens(state, VIDEO, sinusoid_table(32, D), prefix="encoder.")
    with torch.no_grad():
        torch.testing.assert_close(model.blocks(model.embed(VIDEO)), tokens, rtol=1e-4, atol=1e-5)


def test_official_finetuned_file_with_prefixes_for_testing(tmp_path):
    source = build_classifier("tiny", num_classes=5, init_scale=1.0, **CFG)
    state = randomize(source.state_dict(), seed=1)
    path = tmp_path / "finetuned.pth"
    torch.save({"module": {f"_orig_mod.module.{k}": v for k, v in state.items()}}, path)
    model = build_classifier("tiny", num_classes=5, **CFG).eval()
    report = load_checkpoint(model, path, require_classifier=True)
    assert not report.new and not report.dropped
    with torch.no_grad():
        torch.testing.assert_close(model(VIDEO), reference_logits(state, VIDEO), rtol=1e-4, atol=1e-5)


def test_v2_encoder_only_file_into_pretraining_model(tmp_path):
    encoder_only = {k[len("encoder."):]: v for k, v in build_pretrain_model("tiny", **CFG).state_dict().items()
                    if k.startswith("encoder.")}
    path = tmp_path / "vit_g_hybrid_pt_1200e_distill.pth"
    torch.save({"module": {f"backbone.{k}": v for k, v in encoder_only.items()}}, path)
    model = build_pretrain_model("tiny", **CFG)
    report = load_checkpoint(model, path)
    assert "mask_token" in report.new and any(k.startswith("decoder.") for k in report.new)
    assert torch.equal(model.encoder.blocks[1].attn.qkv.weight, encoder_only["blocks.1.attn.qkv.weight"])


def maest_state(grid_t=2, grid_hw=16, seed=3):
    """A MAE-ST checkpoint's encoder: separate q/k/v with biases (the key bias non-zero),
    separable learned position tables, a decoder and a class-token table that fine-tuning drops."""
    g = torch.Generator().manual_seed(seed)
    ours = build_classifier("tiny", num_classes=5, **CFG).state_dict()
    state = {}
    for key, value in ours.items():
        if key.endswith("attn.qkv.weight"):
            q, k, v = value.chunk(3)
            for name, part in zip("qkv", (q, k, v)):
                state[key.replace("qkv", name)] = part + 0.05 * torch.randn(part.shape, generator=g)
                state[key.replace("qkv.weight", f"{name}.bias")] = 0.1 * torch.randn(D, generator=g)
        elif key.endswith(("q_bias", "v_bias")):
            continue
        elif not key.startswith(("head.", "fc_norm.")):
            state[key] = value + 0.05 * torch.randn(value.shape, generator=g)
    state["pos_embed_spatial"] = 0.1 * torch.randn(1, grid_hw, D, generator=g)
    state["pos_embed_temporal"] = 0.1 * torch.randn(1, grid_t, D, generator=g)
    state["decoder_embed.weight"] = torch.randn(96, D, generator=g)
    state["decoder_pos_embed_spatial"] = torch.randn(1, grid_hw, 96, generator=g)
    return state


def test_maest_checkpoint_matches_its_formulas_key_bias_included(tmp_path):
    state = maest_state()
    path = tmp_path / "mae_st_pretrain.pth"
    torch.save({"model": state}, path)
    model = build_classifier("tiny", num_classes=5, pos_embed="separable", **CFG).eval()
    report = load_checkpoint(model, path)
    assert report.fmt == "maest"
    assert any("k.bias" in k or "k_bias" in k for k, _ in report.dropped)
    pos = state["pos_embed_spatial"].repeat(1, 2, 1) + state["pos_embed_temporal"].repeat_interleave(16, 1)
    expected = reference_tokens(state, VIDEO, pos)   # computed WITH the key bias
    with torch.no_grad():
        torch.testing.assert_close(model.blocks(model.embed(VIDEO)), expected, rtol=1e-4, atol=1e-5)


def test_position_tables_resized_to_a_new_grid(tmp_path):
    path = tmp_path / "mae_st.pth"
    torch.save({"model": maest_state()}, path)
    bigger = dict(CFG, num_frames=8, img_size=48)
    model = build_classifier("tiny", num_classes=5, pos_embed="separable", **bigger)
    report = load_checkpoint(model, path)
    assert any("grid (2, 4, 4) -> (4, 6, 6)" in what for _, what in report.adapted)
    assert model(torch.randn(1, 3, 8, 48, 48)).shape == (1, 5)
    # the fixed sinusoid of a checkpoint that stored it is rebuilt for the new grid
    state = build_classifier("tiny", num_classes=5, **CFG).state_dict()
    state["pos_embed"] = sinusoid_table(32, D)
    report = load_checkpoint(build_classifier("tiny", num_classes=5, **bigger), state)
    assert ("pos_embed", "fixed sinusoid, rebuilt for this model's grid") in report.dropped


def test_tubelet_inflation_keeps_static_clips_equal():
    source = build_pretrain_model("tiny", **CFG)
    target = build_pretrain_model("tiny", **dict(CFG, tubelet_size=4))
    report = load_checkpoint(target, randomize(source.state_dict()))
    assert any("tubelet 2 -> 4" in what for _, what in report.adapted)
    load_checkpoint(source, randomize(source.state_dict()))
    static = VIDEO[:, :, :1].repeat(1, 1, 4, 1, 1)
    with torch.no_grad():
        a = source.encoder.patch_embed(static)[:, :16]   # first temporal slice, frames 0-1
        b = target.encoder.patch_embed(static)[:, :16]   # frames 0-3
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_checkpoints_that_do_not_fit_are_clear_errors(tmp_path):
    wide = build_classifier("small", num_classes=5, **CFG).state_dict()
    with pytest.raises(CheckpointError, match=r"patch_embed.proj.weight has shape \(384, 3, 2, 8, 8\) but the model needs \(192, .*another model size"):
        load_checkpoint(build_classifier("tiny", num_classes=5, **CFG), wide)
    shallow = build_classifier("tiny", num_classes=5, **dict(CFG, depth=1)).state_dict()
    with pytest.raises(CheckpointError, match="missing .*blocks.1"):
        load_checkpoint(build_classifier("tiny", num_classes=5, **CFG), shallow)
    pretrain = build_pretrain_model("tiny", **CFG).state_dict()
    with pytest.raises(CheckpointError, match="pretraining checkpoint .*Fine-tune it first"):
        load_checkpoint(build_classifier("tiny", num_classes=5, **CFG), pretrain, require_classifier=True)
    old_head = build_classifier("tiny", num_classes=400, **CFG).state_dict()
    report = load_checkpoint(build_classifier("tiny", num_classes=5, **CFG), old_head)
    assert ("head.weight", "old head (400, 192) != (5, 192)") in report.dropped


class Payload:
    """Stands for arbitrary pickled code in an untrusted file."""


def test_untrusted_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(build_classifier("tiny", num_classes=5, **CFG), path)


transformers = pytest.importorskip("transformers")


def match_eps(hf):
    for module in (getattr(getattr(hf, "decoder", None), "norm", None), getattr(hf, "fc_norm", None)):
        if module is not None:
            module.eps = 1e-6  # HF hard-codes 1e-5 there
    return hf


def test_export_to_hf_folder_and_back(tmp_path):
    from videomae.convert.hf import export_hf

    ours = build_classifier("tiny", num_classes=5, init_scale=1.0, **CFG).eval()
    ours.load_state_dict(randomize(ours.state_dict(), seed=7))
    folder = export_hf(ours, tmp_path / "hf_cls")
    hf, info = transformers.VideoMAEForVideoClassification.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info.get("mismatched_keys"), info
    hf = match_eps(hf).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(VIDEO.transpose(1, 2)).logits, ours(VIDEO), rtol=0, atol=1e-5)
    back = build_classifier("tiny", num_classes=5, **CFG).eval()
    report = load_checkpoint(back, folder, require_classifier=True)
    assert report.fmt == "hf" and not report.new
    with torch.no_grad():
        torch.testing.assert_close(back(VIDEO), ours(VIDEO), rtol=0, atol=1e-6)


def test_hf_pretraining_folder_into_ours(tmp_path):
    from videomae.convert.hf import hf_config_kwargs

    ours = build_pretrain_model("tiny", decoder_depth=1, **CFG)
    config = transformers.VideoMAEConfig(**hf_config_kwargs(ours))
    torch.manual_seed(0)
    hf = transformers.VideoMAEForPreTraining(config)
    hf.save_pretrained(tmp_path / "hf_pre")
    hf = match_eps(transformers.VideoMAEForPreTraining.from_pretrained(tmp_path / "hf_pre")).eval()
    report = load_checkpoint(ours, tmp_path / "hf_pre")
    assert report.fmt == "hf" and not report.new and not report.adapted  # the config's eps is ours
    from videomae.masking import build_masking
    mask = build_masking("tube", 0.75)(2, ours.grid_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, ref = ours.eval()(VIDEO, mask), hf(VIDEO.transpose(1, 2), bool_masked_pos=mask)
    torch.testing.assert_close(out.pred, ref.logits, rtol=0, atol=1e-5)
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5
