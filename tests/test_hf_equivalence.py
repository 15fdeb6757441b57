"""Numerical agreement with the installed HF transformers' VideoMAE, through the public path only:
`export_hf` -> `from_pretrained`, and HF `save_pretrained` -> `load_checkpoint`. CI runs this file
on the newest and on the oldest supported transformers (tools/ci/hf_versions.sh)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from videomae.convert import from_hf_state_dict, hf_config_kwargs, load_checkpoint, to_hf_state_dict  # noqa: E402
from videomae.convert.hf import attention_layout, check_hf_keys, export_hf, hf_model_keys  # noqa: E402
from videomae.masking import build_masking  # noqa: E402
from videomae.models import build_classifier, build_pretrain_model  # noqa: E402

TINY = dict(img_size=32, patch_size=8, num_frames=8, tubelet_size=2, depth=3)
VIDEO = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(2))
MASK = build_masking("tube", 0.75)(2, (4, 4, 4), generator=torch.Generator().manual_seed(1))
HF_CLASS = {"pretrain": "VideoMAEForPreTraining", "classifier": "VideoMAEForVideoClassification"}


def ours_model(kind, seed=0):
    torch.manual_seed(seed)
    model = (build_pretrain_model("tiny", decoder_depth=2, **TINY) if kind == "pretrain"
             else build_classifier("tiny", num_classes=5, init_scale=1.0, **TINY))
    for p in model.parameters():  # non-trivial biases and norms
        p.data.add_(0.02 * torch.randn_like(p))
    return model.eval()


def match_eps(hf):
    """HF hard-codes eps 1e-5 in decoder.norm and fc_norm; ours is 1e-6 (official VideoMAE)."""
    for module in (getattr(getattr(hf, "decoder", None), "norm", None), getattr(hf, "fc_norm", None)):
        if module is not None:
            module.eps = 1e-6
    return hf.eval()


def outputs(model, kind, hf=False):
    with torch.no_grad():
        video = VIDEO.transpose(1, 2) if hf else VIDEO  # HF: (B, T, C, H, W)
        if kind == "classifier":
            return (model(video).logits if hf else model(video)), None
        out = model(video, bool_masked_pos=MASK) if hf else model(video, MASK)
        return (out.logits if hf else out.pred), out.loss


def assert_same_outputs(ours, hf, kind):
    (a, loss_a), (b, loss_b) = outputs(ours, kind), outputs(hf, kind, hf=True)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    if kind == "pretrain":
        assert abs(loss_a.item() - loss_b.item()) <= 1e-5


@pytest.mark.parametrize("kind", ["pretrain", "classifier"])
def test_export_loads_into_installed_transformers(kind, tmp_path):
    ours = ours_model(kind)
    folder = export_hf(ours, tmp_path / kind)
    hf, info = getattr(transformers, HF_CLASS[kind]).from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info.get("mismatched_keys"), info
    assert not any(p.is_meta for p in hf.parameters())
    assert_same_outputs(ours, match_eps(hf), kind)


@pytest.mark.parametrize("kind", ["pretrain", "classifier"])
def test_hf_folder_with_key_bias_into_ours(kind, tmp_path):
    """A trained HF model: non-zero q/v biases and a non-zero key bias (transformers releases whose
    key projection has a bias train it). Where the installed version's key has no bias, a forward
    hook adds it in HF's own forward and the file gets the `key.bias` tensors such a release writes.
    The config keeps HF's default layer_norm_eps (1e-12), which config.json then leaves out."""
    ref = ours_model(kind)
    kwargs = {k: v for k, v in hf_config_kwargs(ref).items() if k != "layer_norm_eps"}
    torch.manual_seed(3)
    hf = getattr(transformers, HF_CLASS[kind])(transformers.VideoMAEConfig(**kwargs))
    assert hf.config.layer_norm_eps == 1e-12
    for p in hf.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    key_biases = {}
    for name, module in hf.named_modules():
        if name.endswith("attention.attention.key"):
            bias = 0.5 * torch.randn(module.out_features)
            key_biases[f"{name}.bias"] = bias
            if module.bias is not None:
                module.bias.data.copy_(bias)
            else:
                module.register_forward_hook(lambda m, args, out, b=bias: out + b)
    hf.save_pretrained(tmp_path / "hf")
    file = tmp_path / "hf" / "model.safetensors"
    if file.exists():
        stored = load_file(file)
        if not all(k in stored for k in key_biases):
            save_file({**stored, **key_biases}, file, metadata={"format": "pt"})
    else:  # transformers < 4.35 saves pytorch_model.bin by default
        file = tmp_path / "hf" / "pytorch_model.bin"
        torch.save({**torch.load(file, weights_only=True), **key_biases}, file)

    ours = (build_pretrain_model("tiny", decoder_depth=2, **TINY) if kind == "pretrain"
            else build_classifier("tiny", num_classes=5, **TINY))
    report = load_checkpoint(ours, tmp_path / "hf")
    assert report.fmt == "hf" and not report.new
    dropped = [k for k, why in report.dropped if "key bias" in why]
    assert len(dropped) == len(key_biases) == TINY["depth"] + (2 if kind == "pretrain" else 0)
    assert any(key == "LayerNorm eps" and "-> 1e-12" in what for key, what in report.adapted), str(report)
    assert {m.eps for n, m in ours.named_modules() if n.endswith("norm1")} == {1e-12}
    assert_same_outputs(ours.eval(), match_eps(hf), kind)


def test_layer_norm_eps_is_read_from_the_config(tmp_path):
    """A large eps makes the difference visible: ignoring it would move the logits far beyond 1e-5."""
    folder = export_hf(ours_model("classifier"), tmp_path / "src")
    hf = transformers.VideoMAEForVideoClassification.from_pretrained(folder, layer_norm_eps=0.5)
    assert hf.config.layer_norm_eps == 0.5
    hf.save_pretrained(tmp_path / "hf")
    ours = build_classifier("tiny", num_classes=5, **TINY)
    report = load_checkpoint(ours, tmp_path / "hf")
    assert ("LayerNorm eps", "1e-06 -> 0.5 in 6 norms (HF config layer_norm_eps)") in report.adapted
    assert_same_outputs(ours.eval(), match_eps(hf), "classifier")
    # and the export writes the eps the model now runs with
    assert hf_config_kwargs(ours)["layer_norm_eps"] == 0.5


def test_export_refuses_keys_the_installed_class_does_not_have():
    ours = ours_model("classifier")
    config = transformers.VideoMAEConfig(**hf_config_kwargs(ours))
    expected = hf_model_keys(config, "classifier")
    state = to_hf_state_dict(ours.state_dict(), "classifier", **attention_layout(expected))
    check_hf_keys(state, expected)  # the installed layout passes
    state["videomae.encoder.layer.0.attention.attention.extra"] = torch.zeros(1)
    state.pop("classifier.weight")
    with pytest.raises(ValueError, match=rf"transformers {transformers.__version__}.*missing \['classifier.weight'\]"
                                         r".*unexpected \['videomae.encoder.layer.0.attention.attention.extra'\]"):
        check_hf_keys(state, expected)


@pytest.mark.parametrize("kind", ["pretrain", "classifier"])
@pytest.mark.parametrize("layout", [dict(bias_style="q_bias"), dict(bias_style="query.bias"),
                                    dict(bias_style="query.bias", key_bias=True)])
def test_every_attention_layout_reads_back(kind, layout):
    """The three layouts transformers versions use (only one of them is installed here)."""
    ours = ours_model(kind)
    state = ours.state_dict()
    hf_state = to_hf_state_dict(state, kind, **layout)
    assert any(k.endswith("key.bias") for k in hf_state) == layout.get("key_bias", False)
    back = from_hf_state_dict(hf_state)
    dropped = {k for k in back if k.endswith("k_bias_dropped")}
    assert set(back) - dropped == set(state)
    for key in state:
        assert torch.equal(back[key], state[key]), key
