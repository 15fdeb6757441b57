import math

import pytest
import timm
import torch
from einops import rearrange

import videomae  # noqa: F401  (registers models with timm)
from videomae.masking import build_masking, validate_mask
from videomae.models import (build_classifier, build_pretrain_model, patchify,
                             sinusoid_table, unpatchify)
from videomae.models.pos_embed import SeparablePosEmbed, resize_pos_embed


def official_sinusoid(n, d):
    """The numpy formula of official VideoMAE, written out independently."""
    import numpy as np

    table = np.array([[pos / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for pos in range(n)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float32)[None]


def test_base_encoder_matches_official_parameter_count():
    model = timm.create_model("pretrain_videomae_base_patch16_224")
    assert sum(p.numel() for p in model.encoder.parameters()) == 86_227_200
    assert model.decoder.head.out_features == 1536
    assert model.encoder_to_decoder.bias is None


def test_giant_head_and_grid():
    # meta device: the shapes without allocating a billion parameters
    with torch.device("meta"):
        model = timm.create_model("pretrain_videomae_giant_patch14_224")
    assert model.grid_size == (8, 16, 16)
    assert model.decoder.head.out_features == 2 * 14 * 14 * 3
    assert model.encoder.blocks[0].mlp.fc1.out_features == 6144


def test_token_counts_16x224_tube_90():
    model = build_pretrain_model("tiny", depth=1, decoder_depth=1)
    assert model.grid_size == (8, 14, 14) and model.num_patches == 1568
    mask = build_masking("tube", 0.9)(2, model.grid_size, generator=torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [1408, 1408]
    video = torch.randn(2, 3, 16, 224, 224)
    with torch.no_grad():
        latent = model.encoder(video, mask)
        out = model(video, mask)
    assert latent.shape == (2, 160, 192)
    assert out.pred.shape == (2, 1408, 1536)


def test_sinusoid_matches_official_formula():
    assert torch.equal(sinusoid_table(50, 64), official_sinusoid(50, 64))


def test_tokens_are_raster_order(tiny_kwargs):
    model = build_pretrain_model("tiny", **tiny_kwargs)
    embed = model.encoder.patch_embed
    video = torch.randn(1, 3, 4, 32, 32)
    tokens = embed(video)
    # token (t, h, w) must be the conv applied to exactly that cube
    t, h, w = 1, 2, 3
    cube = video[:, :, 2 * t:2 * t + 2, 8 * h:8 * h + 8, 8 * w:8 * w + 8]
    expected = (embed.proj.weight * cube).sum(dim=(1, 2, 3, 4)) + embed.proj.bias
    index = t * 16 + h * 4 + w
    torch.testing.assert_close(tokens[0, index], expected, rtol=1e-5, atol=1e-5)


def test_patchify_roundtrip_and_order():
    video = torch.randn(2, 3, 4, 16, 24)
    cubes = patchify(video, 2, 8)
    assert cubes.shape == (2, 2 * 2 * 3, 2 * 8 * 8, 3)
    # channel fastest, then dx, dy, dt
    assert torch.equal(cubes[1, 0, 0], video[1, :, 0, 0, 0])
    assert torch.equal(cubes[1, 0, 1], video[1, :, 0, 0, 1])
    assert torch.equal(cubes[1, 0, 8], video[1, :, 0, 1, 0])
    assert torch.equal(cubes[1, 0, 64], video[1, :, 1, 0, 0])
    assert torch.equal(unpatchify(cubes.flatten(2), (2, 2, 3), 2, 8), video)


def reference_loss(video, pred, mask, tubelet, patch, normalize=True):
    """Official VideoMAE's loss, re-derived with einops from the formulas."""
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None, None]
    pixels = video * std + mean
    if normalize:
        squeeze = rearrange(pixels, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c",
                            p0=tubelet, p1=patch, p2=patch)
        norm = (squeeze - squeeze.mean(dim=-2, keepdim=True)) / (
            squeeze.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
        target = rearrange(norm, "b n p c -> b n (p c)")
    else:
        target = rearrange(pixels, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2 c)",
                           p0=tubelet, p1=patch, p2=patch)
    labels = target[mask].reshape(video.shape[0], -1, target.shape[-1])
    return torch.nn.functional.mse_loss(pred, labels)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("tubelet", [2, 4])
def test_loss_recomputed_independently(normalize, tubelet, generator):
    model = build_pretrain_model("tiny", img_size=32, patch_size=8, num_frames=8, tubelet_size=tubelet,
                                 depth=2, decoder_depth=1, norm_target=normalize)
    video = torch.randn(3, 3, 8, 32, 32, generator=generator)
    mask = build_masking("random", 0.75)(3, model.grid_size, generator=generator)
    out = model(video, mask)
    assert out.pred.shape == (3, mask[0].sum(), tubelet * 8 * 8 * 3)
    expected = reference_loss(video, out.pred.detach(), mask, tubelet, 8, normalize)
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-6, atol=1e-7)


def test_pred_covers_masked_tokens_in_ascending_order(tiny_kwargs, generator):
    model = build_pretrain_model("tiny", **tiny_kwargs)
    video = torch.randn(2, 3, 4, 32, 32, generator=generator)
    mask = build_masking("random", 0.5)(2, model.grid_size, generator=generator)
    out = model(video, mask)
    full = model.targets(video)
    for b in range(2):
        idx = mask[b].nonzero().flatten()  # ascending
        # the model cuts out only the predicted cubes: the same numbers up to reduction order
        torch.testing.assert_close(out.target[b], full[b, idx], rtol=0, atol=1e-6)


def test_gradients_reach_encoder_and_decoder(tiny_kwargs, generator):
    model = build_pretrain_model("tiny", **tiny_kwargs)
    video = torch.randn(2, 3, 4, 32, 32, generator=generator)
    mask = build_masking("tube", 0.75)(2, model.grid_size, generator=generator)
    model(video, mask).loss.backward()
    for name in ("encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight",
                 "encoder.blocks.0.attn.q_bias", "encoder_to_decoder.weight", "mask_token",
                 "decoder.head.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("bad, message, in_forward", [
    (lambda m: m.long(), "torch.bool", True),
    (lambda m: m[:, :-1], "shape", True),
    (lambda m: torch.cat([m[:1], ~m[1:]]), "same number", False),  # needs a device read: not in forward
])
def test_bad_masks_are_value_errors(tiny_kwargs, bad, message, in_forward):
    model = build_pretrain_model("tiny", **tiny_kwargs)
    mask = build_masking("random", 0.75)(2, model.grid_size, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=message):
        validate_mask(bad(mask), model.grid_size)
    if in_forward:
        with pytest.raises(ValueError, match=message):
            model(torch.randn(2, 3, 4, 32, 32), bad(mask))
    with pytest.raises(ValueError, match="num_masked says 5"):
        validate_mask(mask, model.grid_size, expected=5)


def test_decoder_masking_scores_only_encoder_masked(tiny_kwargs, generator):
    model = build_pretrain_model("tiny", img_size=32, patch_size=8, num_frames=8, depth=2, decoder_depth=1)
    video = torch.randn(2, 3, 8, 32, 32, generator=generator)
    enc_mask = build_masking("tube", 0.75)(2, model.grid_size, generator=generator)
    dec_mask = build_masking("running_cell", 0.5)(2, model.grid_size, generator=generator)
    out = model(video, enc_mask, decoder_mask=dec_mask)
    n = model.num_patches
    assert out.pred.shape == (2, n // 2, 2 * 8 * 8 * 3)  # the decoder keeps half the tokens
    assert torch.equal(out.decoded, ~dec_mask)
    # loss: mean over decoded tokens that the encoder masked, recomputed by hand
    target = model.targets(video)
    errs = []
    for b in range(2):
        idx = (~dec_mask[b]).nonzero().flatten()
        scored = enc_mask[b, idx]
        per_token = (out.pred[b].detach() - target[b, idx]).pow(2).mean(-1)
        errs.append(per_token[scored])
    torch.testing.assert_close(out.loss.detach(), torch.cat(errs).mean(), rtol=1e-6, atol=1e-7)


def test_classifier_forward_and_head_init(tiny_kwargs):
    model = build_classifier("tiny", num_classes=7, head_drop_rate=0.5, drop_path_rate=0.1, **tiny_kwargs)
    assert model.head.weight.abs().max() < 1e-3  # trunc-normal .02 scaled by 0.001
    assert isinstance(model.norm, torch.nn.Identity) and model.fc_norm is not None
    model.eval()
    video = torch.randn(3, 3, 4, 32, 32)
    logits = model(video)
    assert logits.shape == (3, 7)
    # mean pooling over all tokens, then fc_norm, then head
    feats = model.fc_norm(model.blocks(model.embed(video)).mean(1))
    torch.testing.assert_close(logits, model.head(feats))
    keys = set(model.state_dict())
    assert {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "fc_norm.weight", "head.weight"} <= keys
    assert "norm.weight" not in keys


def test_timm_names_and_kwargs():
    model = timm.create_model("videomae_vit_small_patch16_224", num_classes=174, num_frames=8,
                              img_size=112, drop_path_rate=0.1)
    assert model.grid_size == (4, 7, 7) and model.head.out_features == 174
    with pytest.raises(TypeError, match="unexpected model argument"):
        timm.create_model("videomae_vit_small_patch16_224", frames=8)
    with pytest.raises(ValueError, match="not downloaded"):
        timm.create_model("pretrain_videomae_small_patch16_224", pretrained=True)


def test_layer_scale_and_grad_checkpointing_match(tiny_kwargs, generator):
    torch.manual_seed(0)
    model = build_pretrain_model("tiny", init_values=0.1, **tiny_kwargs)
    assert model.encoder.blocks[0].gamma_1 is not None
    video = torch.randn(2, 3, 4, 32, 32, generator=generator)
    mask = build_masking("tube", 0.5)(2, model.grid_size, generator=generator)
    plain = model(video, mask).loss
    model.set_grad_checkpointing(True)
    checkpointed = model(video, mask).loss
    torch.testing.assert_close(plain, checkpointed)


def test_separable_pos_embed_layout_and_resize():
    pe = SeparablePosEmbed((3, 2, 2), 8)
    table = pe()
    # token (t, s) = spatial[s] + temporal[t] in raster order
    torch.testing.assert_close(table[0, 1 * 4 + 3], pe.pos_embed_spatial[0, 3] + pe.pos_embed_temporal[0, 1])
    bigger = resize_pos_embed(pe, (6, 4, 4))
    assert bigger().shape == (1, 6 * 16, 8)


def test_resize_grid_changes_frame_count(tiny_kwargs):
    model = build_classifier("tiny", num_classes=3, **tiny_kwargs)
    model.resize_grid(num_frames=8, img_size=48)
    assert model.grid_size == (4, 6, 6)
    assert model(torch.randn(1, 3, 8, 48, 48)).shape == (1, 3)
    torch.testing.assert_close(model.pos_embed(), sinusoid_table(math.prod((4, 6, 6)), 192))


@pytest.mark.parametrize("tubelet, patch", [(2, 8), (1, 4)])
def test_visible_cube_embedding_equals_the_conv3d_path(tubelet, patch, generator):
    """Projecting the gathered cubes with the Conv3d weight as a matrix == running the Conv3d on the
    whole clip and keeping the visible tokens."""
    model = build_pretrain_model("tiny", img_size=32, patch_size=patch, num_frames=4, tubelet_size=tubelet, depth=1)
    embed = model.encoder.patch_embed
    assert isinstance(embed.proj, torch.nn.Conv3d) and embed.proj.weight.shape == (192, 3, tubelet, patch, patch)
    video = torch.randn(3, 3, 4, 32, 32, generator=generator)
    mask = build_masking("random", 0.75)(3, model.grid_size, generator=generator)
    keep = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)[:, :int((~mask[0]).sum())]
    with torch.no_grad():
        conv = torch.nn.functional.conv3d(video, embed.proj.weight, embed.proj.bias, stride=(tubelet, patch, patch))
        conv = conv.flatten(2).transpose(1, 2)                                   # [B, N, D]
        torch.testing.assert_close(embed(video), conv, rtol=0, atol=1e-5)
        visible = conv.gather(1, keep[..., None].expand(-1, -1, conv.shape[-1]))
        torch.testing.assert_close(embed(video, keep), visible, rtol=0, atol=1e-5)
    assert (keep.diff(dim=1) > 0).all()  # ascending token order


def test_checkpoint_keys_unchanged(tiny_kwargs):
    model = build_pretrain_model("tiny", **tiny_kwargs)
    keys = set(model.state_dict())
    assert {"encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias"} <= keys
    assert not any("_orig_mod" in k for k in keys)


def test_drop_path_takes_its_decisions_from_the_given_noise(tiny_kwargs, generator):
    model = build_classifier("tiny", num_classes=3, drop_path_rate=0.5, **tiny_kwargs).train()
    video = torch.randn(4, 3, 4, 32, 32, generator=generator)
    noise = torch.rand(4, model.random_draws, generator=generator)
    assert model.random_draws == 2 * len(model.blocks)
    a, b = model(video, drop_noise=noise), model(video, drop_noise=noise)
    torch.testing.assert_close(a, b)                       # no draw from the global generator
    # a sample's output depends on its own row of noise only
    torch.testing.assert_close(model(video[2:], drop_noise=noise[2:]), a[2:])
    # noise >= keep probability drops every branch that has drop path: block 1 (rate 0.5) becomes
    # the identity, block 0 (rate 0: stochastic depth grows linearly from 0) still runs
    dropped = model(video, drop_noise=torch.ones_like(noise))
    with torch.no_grad():
        expected = model.head(model.fc_norm(model.blocks[0](model.embed(video)).mean(1)))
    torch.testing.assert_close(dropped, expected)
    assert build_classifier("tiny", num_classes=3, **tiny_kwargs).random_draws == 0
