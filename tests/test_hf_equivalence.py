"""Numerical agreement with HF transformers' VideoMAE built from the same config and weights."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from videomae.convert import from_hf_state_dict, hf_config_kwargs, to_hf_state_dict  # noqa: E402
from videomae.masking import build_masking  # noqa: E402
from videomae.models import build_classifier, build_pretrain_model  # noqa: E402

TINY = dict(img_size=32, patch_size=8, num_frames=8, tubelet_size=2, depth=3)


def hf_model(cls, ours):
    config = transformers.VideoMAEConfig(**hf_config_kwargs(ours))
    config._attn_implementation = "eager"
    model = cls(config).eval()
    # HF hard-codes eps 1e-5 for these two norms; ours is 1e-6 (official VideoMAE)
    for module in (getattr(getattr(model, "decoder", None), "norm", None), getattr(model, "fc_norm", None)):
        if module is not None:
            module.eps = 1e-6
    return model


@pytest.mark.parametrize("bias_style", ["query.bias", "q_bias"])
def test_pretraining_loss_and_pred_match_hf(bias_style):
    torch.manual_seed(0)
    ours = build_pretrain_model("tiny", decoder_depth=2, **TINY).eval()
    for p in ours.parameters():  # non-trivial biases and norms
        p.data.add_(0.02 * torch.randn_like(p))
    hf = hf_model(transformers.VideoMAEForPreTraining, ours)
    state = to_hf_state_dict(ours.state_dict(), "pretrain", bias_style=bias_style)
    if bias_style == "q_bias":  # the older file spelling, as HF's loader would rename it
        state = {k.replace("q_bias", "query.bias").replace("v_bias", "value.bias"): v
                 for k, v in state.items()}
    hf.load_state_dict(state, strict=True)

    gen = torch.Generator().manual_seed(1)
    video = torch.randn(2, 3, 8, 32, 32, generator=gen)
    mask = build_masking("tube", 0.75)(2, ours.grid_size, generator=gen)
    with torch.no_grad():
        out = ours(video, mask)
        ref = hf(video.transpose(1, 2), bool_masked_pos=mask)  # HF: (B, T, C, H, W)
    torch.testing.assert_close(out.pred, ref.logits, rtol=0, atol=1e-5)
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5


def test_classifier_logits_match_hf():
    torch.manual_seed(0)
    ours = build_classifier("tiny", num_classes=5, init_scale=1.0, **TINY).eval()
    for p in ours.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    hf = hf_model(transformers.VideoMAEForVideoClassification, ours)
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), "classifier"), strict=True)
    video = torch.randn(3, 3, 8, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = ours(video)
        ref = hf(video.transpose(1, 2)).logits
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["pretrain", "classifier"])
def test_state_dict_roundtrip(kind):
    build = build_pretrain_model if kind == "pretrain" else build_classifier
    ours = build("tiny", **TINY)
    state = ours.state_dict()
    back = from_hf_state_dict(to_hf_state_dict(state, kind), kind)
    assert set(back) == set(state)
    for key in state:
        assert torch.equal(back[key], state[key]), key
    # the older q_bias spelling reads back too
    back = from_hf_state_dict(to_hf_state_dict(state, kind, bias_style="q_bias"))
    assert set(back) == set(state)
