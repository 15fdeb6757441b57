"""The pretraining and classifier forwards compile as one graph, and a compiled run resumes exactly."""
import pytest
import torch
import torch._dynamo

from helpers import losses, run_train
from videomae.masking import MASKING_REGISTRY, build_masking
from videomae.models import build_classifier, build_pretrain_model

TINY = dict(img_size=16, patch_size=8, num_frames=8, tubelet_size=2, depth=2)  # drop path on block 1


def graph_breaks(model, *args, **kwargs) -> list[str]:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(*args, **kwargs)
    return [str(b.reason) for b in explained.break_reasons] + \
        ([] if explained.graph_count == 1 else [f"{explained.graph_count} graphs"])


@pytest.mark.parametrize("name", sorted(MASKING_REGISTRY))
@pytest.mark.parametrize("with_decoder_mask", [False, True])
def test_pretraining_forward_has_no_graph_breaks(name, with_decoder_mask):
    model = build_pretrain_model("tiny", decoder_depth=1, drop_path_rate=0.1, **TINY).train()
    grid, gen = model.grid_size, torch.Generator().manual_seed(0)
    strategy = build_masking(name, 0.5 if name == "running_cell" else 0.75)
    kwargs = dict(num_masked=strategy.num_masked(grid), drop_noise=torch.rand(2, model.random_draws))
    if with_decoder_mask:
        decoder = build_masking("running_cell", 0.5)
        kwargs.update(decoder_mask=decoder(2, grid, generator=gen), num_decoder_masked=decoder.num_masked(grid))
    video = torch.randn(2, 3, 8, 16, 16, generator=gen)
    assert graph_breaks(model, video, strategy(2, grid, generator=gen), **kwargs) == []


def test_classifier_forward_has_no_graph_breaks():
    model = build_classifier("tiny", num_classes=3, drop_path_rate=0.1, **TINY).train()
    video = torch.randn(2, 3, 8, 16, 16)
    assert graph_breaks(model, video, drop_noise=torch.rand(2, model.random_draws)) == []
    assert graph_breaks(model.eval(), video) == []


@pytest.mark.slow
def test_compiled_run_stopped_and_resumed_equals_the_straight_run(tmp_path, synthetic_root):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["MODEL.COMPILE", True, "MODEL.DROP_PATH", 0.1]
    run_train(straight, synthetic_root, *common, "TRAIN.MAX_STEPS", 2)
    run_train(resumed, synthetic_root, *common, "TRAIN.MAX_STEPS", 1)
    second = run_train(resumed, synthetic_root, *common, "TRAIN.MAX_STEPS", 2)
    assert "resumed from step_00000001" in second.stdout + second.stderr
    torch.testing.assert_close(torch.tensor(losses(resumed)), torch.tensor(losses(straight)), rtol=1e-5, atol=1e-6)
    weights = torch.load(resumed / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert "encoder.patch_embed.proj.weight" in weights
    assert not [k for k in weights if "_orig_mod" in k]
