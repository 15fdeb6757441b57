"""Reconstruction targets (videomae/targets): each against its definition written out here, the
registry and config alias, and tiny pretraining runs per target."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import final_json, losses, run_train
from videomae.engine.config import ConfigError, load_config
from videomae.models import IMAGENET_MEAN, IMAGENET_STD, EncoderConfig, build_pretrain_model
from videomae.targets import TARGET_REGISTRY, TeacherTarget, build_target

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)


def random_clip(shape, seed=0):
    """A normalized clip whose pixels are continuous in [0, 1] (no ties on HOG bin edges)."""
    pixels = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    return (pixels - MEAN) / STD


def enc_of(img=32, patch=8, frames=4, tubelet=2):
    return EncoderConfig(img_size=img, patch_size=patch, num_frames=frames, tubelet_size=tubelet)


# -- hog ---------------------------------------------------------------------------------------------
def numpy_hog(frame):
    """MaskFeat's HOG of one (C, H, W) frame, float64: (C, 9, H/8, W/8)."""
    C, H, W = frame.shape
    n = (np.arange(16) - 7.5) / 8.0
    g = np.exp(-0.5 * n ** 2)
    window = np.outer(g, g)
    window /= window.sum()
    weight = np.tile(window, (H // 16, W // 16))
    out = np.zeros((C, 9, H // 8, W // 8))
    for c in range(C):
        x = np.pad(frame[c], 1, mode="reflect")
        # Sobel [[1, 0, -1], [2, 0, -2], [1, 0, -1]] as cross-correlation, and its transpose
        gx = (x[:-2, :-2] + 2 * x[1:-1, :-2] + x[2:, :-2]) - (x[:-2, 2:] + 2 * x[1:-1, 2:] + x[2:, 2:])
        gy = (x[:-2, :-2] + 2 * x[:-2, 1:-1] + x[:-2, 2:]) - (x[2:, :-2] + 2 * x[2:, 1:-1] + x[2:, 2:])
        magnitude = np.sqrt(gx ** 2 + gy ** 2) * weight
        bins = np.floor(np.arctan2(gx, gy) / np.pi * 9).astype(int) % 9
        for y in range(H):
            for xx in range(W):
                out[c, bins[y, xx], y // 8, xx // 8] += magnitude[y, xx]
        for cy in range(H // 8):
            for cx in range(W // 8):
                norm = np.sqrt((out[c, :, cy, cx] ** 2).sum())
                out[c, :, cy, cx] /= max(norm, 1e-12)
    return out


def numpy_hog_tokens(video, tubelet, patch):
    """(B, N, tubelet*C*9*k*k) in the documented layout (dt, c, bin, cy, cx), tokens in raster order."""
    pixels = (video * STD + MEAN).double().numpy()
    B, C, T, H, W = pixels.shape
    k = patch // 8
    hogs = [[numpy_hog(pixels[b, :, f]) for f in range(T)] for b in range(B)]
    tokens = []
    for b in range(B):
        row = []
        for t in range(T // tubelet):
            for h in range(H // patch):
                for w in range(W // patch):
                    row.append(np.concatenate([hogs[b][t * tubelet + dt][:, :, h * k:(h + 1) * k, w * k:(w + 1) * k].ravel()
                                               for dt in range(tubelet)]))
        tokens.append(row)
    return torch.tensor(np.array(tokens), dtype=torch.float32)


@pytest.mark.parametrize("patch,img", [(8, 32), (16, 32), (16, 48)])
def test_hog_matches_numpy_formula(patch, img):
    enc = enc_of(img=img, patch=patch)
    video = random_clip((2, 3, 4, img, img), seed=patch + img)
    target = build_target("hog")
    got = target(video, enc)
    want = numpy_hog_tokens(video, 2, patch)
    assert got.shape == want.shape == (2, 2 * (img // patch) ** 2, target.width(enc))
    assert target.width(enc) == 2 * 3 * 9 * (patch // 8) ** 2
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    ids = torch.tensor([[0, 3, 5], [1, 2, 7]])
    torch.testing.assert_close(target(video, enc, ids), want[torch.arange(2)[:, None], ids], rtol=0, atol=1e-5)


def test_hog_refuses_cells_that_do_not_tile():
    with pytest.raises(ValueError, match="multiple of 8"):
        build_pretrain_model("tiny", target=build_target("hog"), img_size=48, patch_size=12, num_frames=4, depth=1)
    with pytest.raises(ValueError, match="multiple of 16"):
        build_pretrain_model("tiny", target=build_target("hog"), img_size=40, patch_size=8, num_frames=4, depth=1)


# -- frame_diff --------------------------------------------------------------------------------------
def test_frame_diff_is_its_definition():
    enc = enc_of(patch=8, tubelet=2)
    video = random_clip((2, 3, 6, 32, 32), seed=3)
    pixels = video * STD + MEAN
    B, C, T, H, W = pixels.shape
    p, t = 8, 2
    want = torch.zeros(B, (T // t) * (H // p) * (W // p), t * p * p * C)
    for b in range(B):
        n = 0
        for gt in range(T // t):
            for gh in range(H // p):
                for gw in range(W // p):
                    cube = torch.zeros(t, p, p, C)
                    for dt in range(t):
                        f = gt * t + dt
                        prev = max(f - 1, 0)   # the clip's first frame is its own previous frame
                        cube[dt] = (pixels[b, :, f] - pixels[b, :, prev])[:, gh * p:(gh + 1) * p,
                                                                          gw * p:(gw + 1) * p].permute(1, 2, 0)
                    flat = cube.reshape(-1, C)
                    flat = (flat - flat.mean(0)) / (flat.std(0, unbiased=True) + 1e-6)
                    want[b, n] = flat.reshape(-1)
                    n += 1
    got = build_target("frame_diff")(video, enc)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # before normalization: the clip's first frame differs by zero from itself, the others do not
    from videomae.targets import frame_differences
    diff = frame_differences(pixels)
    assert torch.count_nonzero(diff[:, :, 0]) == 0 and torch.equal(diff[:, :, 3], pixels[:, :, 3] - pixels[:, :, 2])


# -- teacher -----------------------------------------------------------------------------------------
TEACHER_KW = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, depth=2)


@pytest.fixture
def teacher_file(tmp_path):
    torch.manual_seed(0)
    model = build_pretrain_model("tiny", **TEACHER_KW)
    path = tmp_path / "teacher.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_teacher_targets_are_its_encoder_tokens(teacher_file):
    model, path = teacher_file
    enc = model.cfg.encoder
    video = random_clip((2, 3, 4, 32, 32), seed=5)
    ids = torch.tensor([[1, 4, 9, 30], [0, 2, 3, 31]])
    with torch.no_grad():
        tokens = model.eval().encoder.forward_tokens(video)
    teacher = TeacherTarget.load("pretrain_videomae_tiny_patch16_224", str(path), **TEACHER_KW)
    assert teacher.width(enc) == 192
    torch.testing.assert_close(teacher(video, enc), tokens, rtol=0, atol=0)
    torch.testing.assert_close(teacher(video, enc, ids), tokens[torch.arange(2)[:, None], ids], rtol=0, atol=0)
    normed = TeacherTarget.load("pretrain_videomae_tiny_patch16_224", str(path), norm=True, **TEACHER_KW)
    torch.testing.assert_close(normed(video, enc), F.layer_norm(tokens, (192,), eps=1e-6))


def test_teacher_is_frozen_and_outside_the_student(teacher_file):
    _, path = teacher_file
    teacher = TeacherTarget.load("pretrain_videomae_tiny_patch16_224", str(path), **TEACHER_KW)
    student = build_pretrain_model("tiny", target=teacher, decoder_depth=1, **TEACHER_KW)
    pixel = build_pretrain_model("tiny", decoder_depth=1, **TEACHER_KW)
    assert set(student.state_dict()) == set(pixel.state_dict())      # nothing of the teacher is saved
    ours = {id(p) for p in student.parameters()}
    assert not any(id(p) in ours for p in teacher.encoder.parameters())
    assert not any(p.requires_grad for p in teacher.encoder.parameters()) and not teacher.encoder.training
    assert student.decoder.head.out_features == 192
    video = random_clip((2, 3, 4, 32, 32), seed=6)
    mask = torch.zeros(2, 32, dtype=torch.bool)
    mask[:, :24] = True
    student.train()
    out = student(video, mask)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.encoder.parameters())
    assert not teacher.encoder.training


def test_teacher_grid_must_equal_the_students(teacher_file):
    _, path = teacher_file
    teacher = TeacherTarget.load("pretrain_videomae_tiny_patch16_224", str(path), **TEACHER_KW)
    with pytest.raises(ValueError, match=r"teacher .* token grid \(2, 4, 4\) but the student has \(2, 2, 2\)"):
        build_pretrain_model("tiny", target=teacher, **dict(TEACHER_KW, patch_size=16))


# -- registry and config -----------------------------------------------------------------------------
def test_builtin_targets_are_registered():
    assert {"pixel", "pixel_raw", "frame_diff", "hog", "teacher"} <= set(TARGET_REGISTRY)


@pytest.mark.parametrize("overrides,name", [
    ([], "pixel"),
    (["MODEL.NORM_TARGET", "False"], "pixel_raw"),
    (["MODEL.TARGET", "hog"], "hog"),
    (["MODEL.TARGET", "pixel_raw"], "pixel_raw"),
    (["MODEL.TARGET", "pixel_raw", "MODEL.NORM_TARGET", "False"], "pixel_raw"),
])
def test_norm_target_is_an_alias(overrides, name):
    from videomae.targets import target_from_config
    assert target_from_config(load_config(None, overrides)).name == name


@pytest.mark.parametrize("overrides,message", [
    (["MODEL.TARGET", "hog", "MODEL.NORM_TARGET", "False"],
     "MODEL.TARGET = 'hog' disagrees with MODEL.NORM_TARGET = False"),
    (["MODEL.TARGET", "hogg"], "is not a registered reconstruction target .*did you mean 'hog'"),
    (["MODEL.TARGET", "teacher"], "needs MODEL.TEACHER_CHECKPOINT"),
    (["MODEL.TARGET", "hog", "MODEL.TEACHER_NORM", "True"], "applies to MODEL.TARGET teacher, not hog"),
])
def test_target_config_mistakes_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)


def test_a_target_of_your_own_through_imports(tmp_path, monkeypatch):
    plugin = tmp_path / "my_target.py"
    plugin.write_text(
        "from videomae.targets import ReconstructionTarget, register_target\n"
        "from videomae.models.targets import cube_targets\n"
        "@register_target('mean_colour')\n"
        "class MeanColour(ReconstructionTarget):\n"
        "    def width(self, enc):\n"
        "        return enc.in_chans\n"
        "    def __call__(self, video, enc, ids=None):\n"
        "        cubes = cube_targets(video, enc.tubelet_size, enc.patch_size, normalize=False, ids=ids)\n"
        "        return cubes.view(*cubes.shape[:2], -1, enc.in_chans).mean(2)\n")
    monkeypatch.chdir(tmp_path)
    from videomae.engine.tasks import PretrainTask
    cfg = load_config(None, ["IMPORTS", "my_target.py", "MODEL.TARGET", "mean_colour",
                             "MODEL.NAME", "pretrain_videomae_tiny_patch16_224", "MODEL.NUM_FRAMES", "4",
                             "MODEL.IMG_SIZE", "32", "MODEL.PATCH_SIZE", "8", "MODEL.DEPTH", "1",
                             "TRAIN.VAL_VIDEOS", "0"])
    task = PretrainTask(cfg)
    lines = []
    task.log = lines.append
    model = task.build_model()
    assert model.decoder.head.out_features == 3
    assert any(line.startswith("target: mean_colour, 3 values per token") for line in lines)
    video = random_clip((1, 3, 4, 32, 32))
    mask = torch.zeros(1, 32, dtype=torch.bool)
    mask[:, 8:] = True
    out = model(video, mask)
    assert out.target.shape == (1, 24, 3)


# -- tiny pretraining runs ---------------------------------------------------------------------------
RUN = ["TRAIN.VAL_VIDEOS", 0, "TRAIN.BASE_LR", "1e-2"]


def lowered(values, what):
    """The last steps' mean below the first step's loss (one step alone is noisy)."""
    tail = sum(values[-3:]) / 3
    assert tail < values[0], f"{what}: loss did not go down: {values}"


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pixel", "pixel_raw", "frame_diff", "teacher"])
def test_tiny_run_lowers_the_loss(tmp_path, synthetic_root, target):
    extra = []
    if target == "teacher":
        torch.manual_seed(1)
        teacher = build_pretrain_model("tiny", img_size=32, patch_size=8, num_frames=4, depth=4)
        torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
        extra = ["MODEL.TEACHER_CHECKPOINT", tmp_path / "teacher.pt", "MODEL.TEACHER_NORM", "True"]
    result = run_train(tmp_path / "run", synthetic_root, *RUN, "MODEL.TARGET", target, *extra, "TRAIN.MAX_STEPS", 8)
    assert final_json(result.stdout)["status"] == "finished"
    assert f"target: {target}" in result.stdout + result.stderr
    lowered(losses(tmp_path / "run"), target)
    saved = torch.load(tmp_path / "run" / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert not any(k.startswith("teacher") for k in saved)
    if target == "teacher":   # the picture: the teacher comes back from the stored config's checkpoint
        check_visualize(tmp_path / "run" / "model.pt", synthetic_root, tmp_path / "pictures", "teacher")


def check_visualize(checkpoint, data_root, out, target):
    from helpers import run_tool

    video = sorted((data_root / "videos").glob("val_*.mp4"))[0]
    result = run_tool("tools/visualize.py", "--checkpoint", checkpoint, "--video", video, "--masks", "tube",
                      "--out", out)
    assert f"target {target}: no pixels to reconstruct" in result.stdout
    assert (out / f"{video.stem}.png").stat().st_size > 0 and "loss" in result.stdout


@pytest.mark.slow
def test_hog_run_lowers_the_loss_and_resumes_exactly(tmp_path, synthetic_root):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [*RUN, "MODEL.TARGET", "hog"]
    run_train(straight, synthetic_root, *common, "TRAIN.MAX_STEPS", 8)
    run_train(resumed, synthetic_root, *common, "TRAIN.MAX_STEPS", 4, "TRAIN.CKPT_STEPS", 4)
    second = run_train(resumed, synthetic_root, *common, "TRAIN.MAX_STEPS", 8)
    assert "resumed from step_00000004" in second.stdout + second.stderr
    a, b = losses(straight), losses(resumed)
    lowered(a, "hog")
    assert len(a) == len(b) == 8
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-6)
    weights = torch.load(straight / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert weights["decoder.head.weight"].shape[0] == 2 * 3 * 9   # one 8x8 cell per 8x8 cube, 2 frames
    check_visualize(straight / "model.pt", synthetic_root, tmp_path / "pictures", "hog")


# -- pictures ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hog", "frame_diff", "pixel_raw"])
def test_reconstruction_picture_per_target(tmp_path, name, monkeypatch):
    """hog draws the per-cube loss map (one colour scale, from the per-token MSE of the model's
    output); pixel-like targets draw their cubes."""
    from videomae.engine import plots

    torch.manual_seed(0)
    model = build_pretrain_model("tiny", target=build_target(name), decoder_depth=1, **TEACHER_KW)
    video = random_clip((1, 3, 4, 32, 32), seed=2)
    mask = torch.zeros(1, 32, dtype=torch.bool)
    mask[:, 5:29] = True
    heat = []
    monkeypatch.setattr(plots, "_heat", lambda x, top, real=plots._heat: heat.append((x.clone(), top)) or real(x, top))
    losses_ = plots.plot_reconstruction(model, video, {"random": mask}, str(tmp_path / "a.png"), frames=4)
    assert (tmp_path / "a.png").stat().st_size > 0
    with torch.no_grad():
        out = model(video, mask)
    assert losses_["random"] == pytest.approx(float(out.loss))
    if name != "hog":
        assert not heat
        return
    per_token = (out.pred[0] - out.target[0]).pow(2).mean(-1)            # the 24 masked tokens
    assert len(heat) == 4 and heat[0][1] == pytest.approx(float(per_token.max()))
    # frame 0 belongs to temporal slice 0: tokens 0..15 in raster order, cube (h, w) of 8x8 pixels
    frame = heat[0][0]
    for token in range(16):
        h, w = divmod(token, 4)
        want = float(per_token[token - 5]) if 5 <= token < 29 else 0.0
        assert float(frame[h * 8, w * 8]) == pytest.approx(want, abs=1e-6)


# -- the comparison runner ---------------------------------------------------------------------------
def test_compare_cells_per_target_and_the_target_column(tmp_path):
    import argparse
    import csv

    from helpers import ROOT
    from videomae.compare.report import write_report
    from videomae.compare.runner import plan

    args = argparse.Namespace(strategies="tube,random", ratios="0.9", seeds="0,1", eval="recon,knn",
                              targets="pixel,hog")
    cells, evals = plan(args)
    assert [c.name for c in cells[:4]] == ["pixel-tube-0.9-s0", "pixel-tube-0.9-s1", "pixel-random-0.9-s0",
                                           "pixel-random-0.9-s1"]
    assert len(cells) == 8 and cells[4].name == "hog-tube-0.9-s0"
    over = cells[4].overrides(str(tmp_path))
    assert over[over.index("MODEL.TARGET") + 1] == "hog"
    # without --targets: the cells and their folders as before, the config's target in the column
    plain, _ = plan(argparse.Namespace(strategies="tube", ratios="0.9", seeds="0", eval="knn", targets=""))
    assert plain[0].name == "tube-0.9-s0" and "MODEL.TARGET" not in plain[0].overrides(str(tmp_path))

    base = load_config(str(ROOT / "configs/demo/pretrain.yaml"))
    done = [(c, {"steps": 10, "wall_seconds": 1.0},
             {"effective_masked_share": 0.9, "metrics": {"recon_common": 0.1 * i, "recon_own": 0.1 * i,
                                                         "knn_top1": 10.0 * i}}) for i, c in enumerate(cells)]
    write_report(str(tmp_path), base, "configs/demo/pretrain.yaml", [], cells, evals, done)
    with open(tmp_path / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["target"], r["strategy"], r["seed"]) for r in rows[9:11:1]] == [("pixel", "random", "1"), ("pixel", "random", "1")]
    assert [(r["target"], r["strategy"], r["metric"]) for r in rows[12:13]] == [("hog", "tube", "recon_common")]
    text = (tmp_path / "summary.md").read_text()
    line = next(row for row in text.splitlines() if row.startswith("| hog / random | 90.0% |"))
    assert line.endswith("| 65.0 ± 7.1 (2) |")   # knn of cells 6 and 7
    assert "reconstruction targets: pixel, hog" in text
    assert "| hog / tube | knn_top1 | 40.0 ± 0.0 (2) |" in text   # hog - pixel, seed by seed: 40 and 40
    # a reconstruction loss is differenced within a target only (a HOG loss is not on the pixel scale)
    assert "| pixel / random | recon_common | 0.2 ± " in text and "| hog / tube | recon_common" not in text
    write_report(str(tmp_path), base, "configs/demo/pretrain.yaml", [], plain, ["knn"],
                 [(plain[0], {"steps": 10, "wall_seconds": 1.0}, {"effective_masked_share": 0.9,
                                                                  "metrics": {"knn_top1": 1.0}})])
    with open(tmp_path / "results.csv") as handle:
        assert next(csv.DictReader(handle))["target"] == "pixel_raw"   # the demo config's MODEL.TARGET


@pytest.mark.parametrize("extra,message", [
    (["--targets", "pixel,hogg"], "unknown reconstruction target hogg"),
    (["--targets", "pixel,hog", "MODEL.TARGET", "hog"], "MODEL.TARGET set per cell by --targets"),
])
def test_compare_target_usage_errors(tmp_path, capsys, extra, message):
    import importlib.util

    from helpers import ROOT
    from videomae.cli import run_tool

    spec = importlib.util.spec_from_file_location("compare_masking", ROOT / "tools" / "compare_masking.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    code = run_tool(tool.main, ["--config", str(ROOT / "configs/demo/pretrain.yaml"), "--out", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err


@pytest.mark.parametrize("name", ["frame_diff", "hog", "teacher"])
def test_pretraining_forward_with_a_target_compiles_as_one_graph(name, tmp_path):
    import torch._dynamo

    kw = dict(img_size=16, patch_size=8, num_frames=4, tubelet_size=2, depth=1)
    if name == "teacher":
        torch.save(build_pretrain_model("tiny", **kw).state_dict(), tmp_path / "t.pt")
        target = TeacherTarget.load("pretrain_videomae_tiny_patch16_224", str(tmp_path / "t.pt"), norm=True, **kw)
    else:
        target = build_target(name)
    model = build_pretrain_model("tiny", target=target, decoder_depth=1, **kw).train()
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 2:] = True
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(random_clip((2, 3, 4, 16, 16)), mask, num_masked=6)
    assert [str(b.reason) for b in explained.break_reasons] == [] and explained.graph_count == 1


def test_hf_export_refuses_a_decoder_that_predicts_other_targets():
    from videomae.convert.hf import hf_config_kwargs

    model = build_pretrain_model("tiny", target=build_target("hog"), img_size=32, patch_size=16, num_frames=4, depth=1)
    with pytest.raises(ValueError, match="predicts hog targets"):
        hf_config_kwargs(model)
    raw = build_pretrain_model("tiny", target=build_target("pixel_raw"), img_size=32, patch_size=16, num_frames=4,
                               depth=1)
    assert hf_config_kwargs(raw)["norm_pix_loss"] is False
