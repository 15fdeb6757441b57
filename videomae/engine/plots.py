"""Pictures people would rather look at than read: the loss curve and masked reconstructions."""
from __future__ import annotations

import os

import numpy as np
import torch

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
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, losses, lw=1.5)
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
    x = x.float()
    x = (x - x.min()) / (x.max() - x.min() + 1e-8)
    return (x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


@torch.no_grad()
def plot_reconstruction(model, video: torch.Tensor, mask: torch.Tensor, out_png: str, frames: int = 4) -> str:
    """One clip: input frames, what the encoder sees, and the masked cubes' targets vs predictions.

    Targets are per-cube normalized pixels; predictions are shown in the same normalized space.
    They are deliberately not mapped back to pixels with the true cubes' mean and std, which
    would borrow the answer and make the reconstruction look better than it is.
    """
    from ..models.targets import unnormalize, unpatchify

    plt = _pyplot()
    model.eval()
    out = model(video[:1], mask[:1])
    grid, t, p = model.grid_size, model.tubelet_size, model.patch_size
    pixels = unnormalize(video[:1]).clamp(0, 1)[0]                     # C, T, H, W
    target = model.targets(video[:1])[0]                                # N, P
    pred_full, target_full = torch.zeros_like(target), torch.zeros_like(target)
    idx = out.decoded[0].nonzero().flatten()
    pred_full[idx] = out.pred[0].float()
    target_full[idx] = target[idx]
    visible = (~mask[0]).float()[:, None].expand_as(target).contiguous()
    shown = unpatchify(visible[None], grid, t, p)[0]                   # 1 where the encoder looks
    pred_img = unpatchify(pred_full[None], grid, t, p)[0]
    target_img = unpatchify(target_full[None], grid, t, p)[0]
    step = max(1, pixels.shape[1] // frames)

    def pixels_of(x):
        return (x.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()

    rows = [("input", lambda i: pixels_of(pixels[:, i])),
            ("encoder sees", lambda i: pixels_of(pixels[:, i] * shown[:, i]))]
    if model.cfg.norm_target:
        rows += [("target (norm. cubes)", lambda i: _to_image(target_img[:, i])),
                 ("prediction", lambda i: _to_image(pred_img[:, i]))]
    else:  # raw pixel targets: the reconstruction is a picture in its own right
        rows += [("visible + predicted", lambda i: pixels_of(pixels[:, i] * shown[:, i] + pred_img[:, i]))]
    fig, axes = plt.subplots(len(rows), frames, figsize=(2 * frames, 2 * len(rows)), dpi=110)
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
    return out_png
