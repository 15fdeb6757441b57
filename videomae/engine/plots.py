"""Pictures people would rather look at than read: the loss curve and masked reconstructions."""
from __future__ import annotations

import os

import numpy as np
import torch

from .host import to_numpy
from .logs import read_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_loss_curve(metrics_file: str, out_png: str, title: str = "pretraining loss") -> str:
    plt = _pyplot()
    rows = read_metrics(metrics_file, "train")
    steps, losses = [r["step"] for r in rows], [r["loss"] for r in rows]
    val = [r for r in read_metrics(metrics_file, "val") if "recon_common" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, losses, lw=1.5, label="train (own masks)")
    if val:   # pretraining's validation pass: held-out clips, the common random mask
        ax.plot([r["step"] for r in val], [r["recon_common"] for r in val], "o-", lw=1.5, ms=3,
                label="val (common random mask)")
        ax.legend(fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("masked reconstruction MSE")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def _to_image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in any range -> uint8 (H, W, C), scaled per image."""
    x = to_numpy(x.permute(1, 2, 0))
    x = (x - x.min()) / (x.max() - x.min() + 1e-8)
    return (x * 255).astype(np.uint8)


def _heat(x: torch.Tensor, top: float) -> np.ndarray:
    """(H, W) values >= 0 -> RGB float image on one colour scale [0, top]."""
    from matplotlib import colormaps

    return colormaps["magma"](to_numpy(x / max(top, 1e-12)).clip(0, 1))[..., :3]


class _TargetKind:
    def __init__(self, name: str, pixel_layout: bool, normalize_cubes: bool):
        self.name, self.pixel_layout, self.normalize_cubes = name, pixel_layout, normalize_cubes


def _target_kind(model) -> _TargetKind:
    """What the model's target is, for drawing: a model without a target object (built elsewhere)
    reconstructs pixels, normalized per `cfg.norm_target`."""
    target = getattr(model, "target", None)
    if target is None:
        norm = model.cfg.norm_target
        return _TargetKind("pixel" if norm else "pixel_raw", True, norm)
    return _TargetKind(target.name, bool(getattr(target, "pixel_layout", False)),
                       target.name != "pixel_raw")


@torch.no_grad()
def plot_reconstruction(model, video: torch.Tensor, masks: dict, out_png: str, frames: int = 4) -> dict[str, float]:
    """One clip: its input frames, then for each mask what the encoder sees and the masked cubes'
    targets vs predictions. `masks` maps a name to a (1, N) bool mask; several compare strategies on
    the same clip. Returns each mask's reconstruction loss.

    With normalized targets both are shown in the per-cube normalized space. Predictions are
    deliberately not mapped back to pixels with the true cubes' mean and std, which would borrow
    the answer and make the reconstruction look better than it is. A target that is not a cube of
    pixels (hog, teacher features) has no picture to draw: its row is the per-cube loss map (each
    reconstructed cube coloured by its MSE, one colour scale for all frames; black: not scored).
    """
    from ..models.targets import unnormalize, unpatchify

    plt = _pyplot()
    model.eval()
    grid, t, p = model.grid_size, model.tubelet_size, model.patch_size
    pixels = unnormalize(video[:1]).clamp(0, 1)[0]                     # C, T, H, W
    target = model.targets(video[:1])[0]                                # N, target width
    kind = _target_kind(model)
    cube = t * p * p * pixels.shape[0]                                  # values of one cube's pixels

    def volume(tokens):                                                 # (N, P) -> (C, T, H, W)
        return unpatchify(tokens[None].float(), grid, t, p)[0]

    def pixels_of(x):
        return to_numpy((x.clamp(0, 1) * 255).byte().permute(1, 2, 0))

    rows, losses = [("input", lambda i: pixels_of(pixels[:, i]))], {}
    for name, mask in masks.items():
        out = model(video[:1], mask[:1])
        losses[name] = float(out.loss)
        decoded = out.decoded[0].nonzero().flatten()     # the tokens `pred` covers, ascending
        pred_full, target_full = torch.zeros_like(target), torch.zeros_like(target)
        pred_full[decoded] = out.pred[0].to(target.dtype)
        target_full[decoded] = target[decoded]
        tag = f" ({name})"
        shown = volume((~mask[0]).float()[:, None].expand(-1, cube))    # 1 where the encoder looks
        rows.append((f"encoder sees{tag}", lambda i, shown=shown: pixels_of(pixels[:, i] * shown[:, i])))
        if not kind.pixel_layout:
            per_cube = (pred_full - target_full).pow(2).mean(-1)            # N; 0 where not decoded
            loss_map = volume(per_cube[:, None].expand(-1, cube))[0]        # T, H, W
            rows.append((f"loss per cube{tag}\n{kind.name}, loss {losses[name]:.3f}",
                         lambda i, x=loss_map: _heat(x[i], float(x.max()))))
            continue
        pred_img, target_img = volume(pred_full), volume(target_full)
        if kind.normalize_cubes:
            label = "norm. cubes" if kind.name == "pixel" else f"{kind.name}, norm. cubes"
            rows += [(f"target{tag}\n({label})", lambda i, x=target_img: _to_image(x[:, i])),
                     (f"prediction{tag}\nloss {losses[name]:.3f}", lambda i, x=pred_img: _to_image(x[:, i]))]
        else:  # raw pixel targets: the reconstruction is a picture in its own right
            rows.append((f"visible + predicted{tag}\nloss {losses[name]:.3f}",
                         lambda i, shown=shown, x=pred_img: pixels_of(pixels[:, i] * shown[:, i] + x[:, i])))
    frames = min(frames, pixels.shape[1])
    step = max(1, pixels.shape[1] // frames)
    fig, axes = plt.subplots(len(rows), frames, figsize=(2 * frames, 2 * len(rows)), dpi=110, squeeze=False)
    for r, (name, render) in enumerate(rows):
        for c in range(frames):
            ax = axes[r, c]
            ax.imshow(render(c * step))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0:
                ax.set_title(f"frame {c * step}", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_png) or ".", exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return losses
