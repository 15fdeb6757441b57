"""The official `use_mean_pooling=False` classifier: final norm, then the head reads token 0 (the
first cube's token; there is no cls token). HF's VideoMAEForVideoClassification, a port of the
official code, is the independent implementation, in both directions."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from videomae.convert import hf_config_kwargs, load_checkpoint  # noqa: E402
from videomae.convert.hf import export_hf  # noqa: E402
from videomae.models import build_classifier  # noqa: E402

TINY = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, depth=2)
VIDEO = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))


def token0_classifier(seed=0):
    torch.manual_seed(seed)
    model = build_classifier("tiny", num_classes=5, use_mean_pooling=False, init_scale=1.0, **TINY)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return model.eval()


def hf_logits(hf):
    with torch.no_grad():
        return hf.eval()(VIDEO.transpose(1, 2)).logits


def test_hf_token0_classifier_into_ours(tmp_path):
    config = transformers.VideoMAEConfig(**{**hf_config_kwargs(token0_classifier()), "use_mean_pooling": False})
    torch.manual_seed(1)
    hf = transformers.VideoMAEForVideoClassification(config)
    for p in hf.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    ours = build_classifier("tiny", num_classes=5, use_mean_pooling=False, **TINY)
    report = load_checkpoint(ours, tmp_path / "hf", require_classifier=True)
    assert not report.new and not report.dropped, str(report)
    with torch.no_grad():
        logits = ours.eval()(VIDEO)
    torch.testing.assert_close(logits, hf_logits(hf), rtol=0, atol=1e-5)
    # not the mean of the tokens: that would move the logits far beyond the tolerance
    with torch.no_grad():
        mean_pooled = ours.head(ours.forward_tokens(VIDEO, None, None).mean(1))
    assert (mean_pooled - logits).abs().max() > 1e-2


def test_our_token0_classifier_exports_to_hf(tmp_path):
    ours = token0_classifier()
    folder = export_hf(ours, tmp_path / "out")
    hf, info = transformers.VideoMAEForVideoClassification.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert hf.config.use_mean_pooling is False
    with torch.no_grad():
        logits = ours(VIDEO)
    torch.testing.assert_close(logits, hf_logits(hf), rtol=0, atol=1e-5)
