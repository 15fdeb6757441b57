"""Pretraining step time, side by side in one run:

  1. our PretrainVideoMAE vs HF transformers' VideoMAEForPreTraining, same config, same inputs;
  2. our step at mask ratio 0.0 vs the configured ratio (what the asymmetric encoder buys);
  3. forward FLOPs of our model (fvcore, with scaled_dot_product_attention counted);
  4. with --compile: our step compiled with fullgraph=True vs eager;
  5. the patch embedding alone, forward + backward: the Conv3d over every cube (as the official
     code runs it) vs the projection of the visible cubes only (what the model does).

    python benchmarks/model_step.py                      # ViT-B, 16x224x224, mask 0.9, batch 2, CPU
    python benchmarks/model_step.py --size small --device cuda --dtype bf16 --batch 16

Runs alternate between the contenders so drift in machine load hits both alike. Figures are
medians over `--repeats` timed steps after `--warmup` untimed ones.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from videomae.masking import build_masking
from videomae.models.masks import split_tokens
from videomae.models import build_pretrain_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sdpa_flop_handle(inputs, outputs):
    """fvcore counts one multiply-add as one flop: QK^T and AV are B*H*Nq*Nk*d each."""
    from fvcore.nn.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    *batch, nq, d = q
    nk = k[-2]
    return 2 * int(torch.tensor(batch).prod()) * nq * nk * d


def count_flops(model, video, mask) -> float:
    from fvcore.nn import FlopCountAnalysis

    class LossOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, v, m):
            return self.inner(v, m).loss

    analysis = FlopCountAnalysis(LossOnly(model), (video, mask))
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_handle)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return float(analysis.total())


def build_hf(ours, device, dtype):
    import transformers

    from videomae.convert import hf_config_kwargs

    config = transformers.VideoMAEConfig(**hf_config_kwargs(ours))
    model = transformers.VideoMAEForPreTraining(config)
    model.config._attn_implementation = "sdpa"
    return model.to(device=device, dtype=dtype).train()


def make_step(model, video, mask, hf: bool):
    num_masked = int(mask[0].sum())  # as training passes it: the strategy's count, no device read

    def step():
        model.zero_grad(set_to_none=True)
        if hf:
            loss = model(video.transpose(1, 2), bool_masked_pos=mask).loss
        else:
            loss = model(video, mask, num_masked=num_masked).loss
        loss.backward()
    return step


def patch_embed_steps(model, video, mask) -> dict:
    """Forward + backward of the cube embedding: Conv3d over all cubes vs visible cubes only."""
    proj = model.encoder.patch_embed.proj
    keep = split_tokens(mask).keep
    video = video.detach().requires_grad_(False)

    def conv3d_all():
        proj.zero_grad(set_to_none=True)
        F.conv3d(video, proj.weight, proj.bias, stride=proj.stride).float().sum().backward()

    def visible_only():
        proj.zero_grad(set_to_none=True)
        model.encoder.patch_embed(video, keep).float().sum().backward()

    return {"conv3d(all)": conv3d_all, "visible": visible_only}


def time_steps(steps: dict, warmup: int, repeats: int, device) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--mask-ratio", type=float, default=0.9)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-hf", action="store_true", help="skip the HF transformers comparison")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(fullgraph=True)")
    args = parser.parse_args()

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    ours = build_pretrain_model(args.size, num_frames=args.frames, img_size=args.img_size)
    ours = ours.to(device=device, dtype=dtype).train()
    gen = torch.Generator(device=device).manual_seed(0)
    video = torch.randn(args.batch, 3, args.frames, args.img_size, args.img_size, device=device, dtype=dtype)
    mask = build_masking("tube", args.mask_ratio)(args.batch, ours.grid_size, device=device, generator=gen)
    no_mask = torch.zeros_like(mask)
    # at ratio 0 the decoder predicts nothing; score it with one masked token so the step is a real
    # loss (the encoder still sees every token but one)
    no_mask[:, 0] = True

    print(f"VideoMAE-{args.size}, {args.frames}x{args.img_size}x{args.img_size}, batch {args.batch}, "
          f"{args.dtype}, {device}; tokens {ours.num_patches}, visible at {args.mask_ratio}: "
          f"{int((~mask[0]).sum())}")
    flops = count_flops(ours.float(), video.float(), mask) if device.type == "cpu" or dtype == torch.float32 else None
    ours.to(dtype)
    if flops:
        print(f"forward GFLOPs per clip (fvcore, multiply-add = 1): {flops / args.batch / 1e9:.1f} "
              f"at mask {args.mask_ratio}")

    steps = {"ours": make_step(ours, video, mask, hf=False),
             "ours@0.0": make_step(ours, video, no_mask, hf=False)}
    if not args.no_hf:
        steps["hf"] = make_step(build_hf(ours, device, dtype), video, mask, hf=True)
    if args.compile:
        steps["compiled"] = make_step(torch.compile(ours, fullgraph=True), video, mask, hf=False)
    steps.update(patch_embed_steps(ours, video, mask))
    med = time_steps(steps, args.warmup, args.repeats, device)
    for name, seconds in med.items():
        print(f"  {name:10s} median step {seconds * 1000:9.1f} ms")
    if "hf" in med:
        print(f"ours vs HF VideoMAEForPreTraining: {med['hf'] / med['ours']:.2f}x "
              "(HF time / our time; >= 1 means ours is no slower)")
    print(f"mask {args.mask_ratio} vs 0.0 speed-up: {med['ours@0.0'] / med['ours']:.2f}x")
    if "compiled" in med:
        print(f"compiled (fullgraph) vs eager: {med['ours'] / med['compiled']:.2f}x "
              "(eager time / compiled time; > 1 means compiling pays)")
    print(f"patch embedding fwd+bwd: Conv3d over all cubes {med['conv3d(all)'] * 1000:.2f} ms, visible cubes "
          f"only {med['visible'] * 1000:.2f} ms ({med['conv3d(all)'] / med['visible']:.1f}x)")


if __name__ == "__main__":
    main()
