"""`MODEL.NAME` and the tools resolve our model names through our own table, not timm's global
registry: a module imported after `videomae` that registers the same names with timm (as the
official VideoMAE model files do) does not change what `MODEL.NAME` builds."""
import subprocess
import sys
import textwrap

import timm
import torch

from helpers import ROOT
from videomae.models import MODELS, PretrainVideoMAE, VideoClassifier, create_model

# the official modeling files register these names with timm's decorator, with their own signature
STAND_IN = textwrap.dedent("""
    from timm.models import register_model

    class Official:  # not our model
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    @register_model
    def pretrain_videomae_tiny_patch16_224(pretrained=False, **kwargs):
        return Official(**kwargs)

    @register_model
    def videomae_vit_tiny_patch16_224(pretrained=False, **kwargs):
        return Official(**kwargs)
""")

CHECK = textwrap.dedent("""
    import sys, timm
    import videomae
    from videomae.engine.config import load_config
    from videomae.engine.tasks import PretrainTask
    from videomae.engine.classification import build_classifier_from_cfg

    small = ["MODEL.NUM_FRAMES", "4", "MODEL.IMG_SIZE", "32", "MODEL.PATCH_SIZE", "8", "MODEL.DEPTH", "1",
             "MODEL.DECODER_DEPTH", "1", "IMPORTS", sys.argv[1]]
    cfg = load_config(None, ["MODEL.NAME", "pretrain_videomae_tiny_patch16_224", *small])
    # the stand-in (imported through IMPORTS, after videomae) now owns the names in timm's registry
    taken = type(timm.create_model("pretrain_videomae_tiny_patch16_224")).__name__
    pretrain = PretrainTask(cfg).build_model()
    cfg = load_config(None, ["TASK", "finetune", "MODEL.NAME", "videomae_vit_tiny_patch16_224",
                             "DATA.NUM_CLASSES", "3", *small])
    classifier = build_classifier_from_cfg(cfg)
    print(taken, type(pretrain).__name__, type(classifier).__name__, classifier.num_classes)
""")


def test_model_name_builds_ours_after_another_module_takes_the_timm_names(tmp_path):
    (tmp_path / "official_modeling.py").write_text(STAND_IN)
    result = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path / "official_modeling.py")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-4:] == ["Official", "PretrainVideoMAE", "VideoClassifier", "3"]


def test_the_table_holds_every_size_and_timm_still_finds_ours():
    assert {name for name in MODELS} >= {"pretrain_videomae_base_patch16_224", "videomae_vit_giant_patch14_224"}
    model = create_model("videomae_vit_tiny_patch16_224", num_classes=2, num_frames=2, img_size=32, depth=1)
    assert isinstance(model, VideoClassifier) and model(torch.zeros(1, 3, 2, 32, 32)).shape == (1, 2)
    # registration for timm users stays (in this process nothing registered over the names)
    assert isinstance(timm.create_model("pretrain_videomae_tiny_patch16_224", depth=1, img_size=32, num_frames=2),
                      PretrainVideoMAE)
