"""A separable-position pretraining checkpoint of our own continues at another clip length or
resolution: the encoder's and the decoder's learned tables are resized on load (bicubic over space,
linear over time, as torch's interpolate with align_corners=False), checked against the
interpolation formulas written out here; a fixed sinusoid is rebuilt for the new grid."""
import math

import torch

from videomae.convert import load_checkpoint
from videomae.models import build_pretrain_model, sinusoid_table

SMALL = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, depth=1, decoder_depth=1)   # grid (2, 4, 4)
BIG = dict(SMALL, img_size=48, num_frames=6)                                                     # grid (3, 6, 6)


def cubic_matrix(n_in, n_out, a=-0.75):
    """Keys' cubic convolution (a = -0.75), source x = (i + 0.5) n_in / n_out - 0.5, border taps clamped."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        x = (i + 0.5) * n_in / n_out - 0.5
        x0 = math.floor(x)
        t = x - x0
        near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1          # noqa: E731  |d| <= 1
        far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a     # noqa: E731  1 < |d| < 2
        for offset, w in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            m[i, min(max(x0 + offset, 0), n_in - 1)] += w
    return m


def linear_matrix(n_in, n_out):
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        x = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        x0 = math.floor(x)
        m[i, x0] += 1 - (x - x0)
        m[i, min(x0 + 1, n_in - 1)] += x - x0
    return m


def resized(spatial, temporal, old, new):
    (t0, h0, w0), (t1, h1, w1) = old, new
    grid = spatial.reshape(h0, w0, -1).double()
    s = torch.einsum("ai,ijd,bj->abd", cubic_matrix(h0, h1), grid, cubic_matrix(w0, w1)).reshape(1, h1 * w1, -1)
    t = (linear_matrix(t0, t1) @ temporal[0].double())[None]
    return s.float(), t.float()


def test_our_separable_pretraining_checkpoint_continues_at_another_grid(tmp_path):
    torch.manual_seed(0)
    source = build_pretrain_model("tiny", pos_embed="separable", **SMALL)
    state = {k: v + 0.1 * torch.randn_like(v) for k, v in source.state_dict().items()}
    torch.save({"model": state}, tmp_path / "model.pt")
    for kind in ("separable", "sinusoid"):   # a sinusoid model switches to the checkpoint's tables first
        model = build_pretrain_model("tiny", pos_embed=kind, **BIG)
        report = load_checkpoint(model, tmp_path / "model.pt")
        assert ("encoder.pos_embed", "grid (2, 4, 4) -> (3, 6, 6)") in report.adapted, str(report)
        assert ("decoder_pos_embed", "grid (2, 4, 4) -> (3, 6, 6)") in report.adapted, str(report)
        assert not report.new and not report.dropped
        for key_prefix, module in (("encoder.pos_embed.", model.encoder.pos_embed),
                                   ("decoder_pos_embed.", model.decoder_pos_embed)):
            spatial, temporal = resized(state[key_prefix + "pos_embed_spatial"],
                                        state[key_prefix + "pos_embed_temporal"], (2, 4, 4), (3, 6, 6))
            torch.testing.assert_close(module.pos_embed_spatial.data, spatial, rtol=0, atol=1e-5)
            torch.testing.assert_close(module.pos_embed_temporal.data, temporal, rtol=0, atol=1e-5)
        assert model(torch.randn(1, 3, 6, 48, 48), torch.rand(1, 108).argsort(1) < 81).loss.isfinite()


def test_a_stored_sinusoid_decoder_table_is_rebuilt_for_the_new_grid():
    state = build_pretrain_model("tiny", **SMALL).state_dict()
    state["decoder_pos_embed"] = sinusoid_table(32, 96)
    model = build_pretrain_model("tiny", **BIG)
    report = load_checkpoint(model, state)
    assert ("decoder_pos_embed", "fixed sinusoid, rebuilt for this model's grid") in report.dropped
    assert torch.equal(model.decoder_pos_embed(), sinusoid_table(108, 96))
