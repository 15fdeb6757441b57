"""Model FLOPs per clip and MFU (model FLOPs utilization).

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on one clip at the run's mask
ratio: it counts matmuls, convolutions and attention (fvcore's tracer misses
`scaled_dot_product_attention`). A training step costs forward + backward = 3 x the forward
(the backward computes gradients for inputs and weights: two matmuls per forward matmul), the
convention of the MFU figures in the PaLM paper and nanoGPT. MFU = achieved model FLOP/s over the
device's dense peak for the run's precision.
"""
from __future__ import annotations

import torch

# dense (no sparsity) peak TFLOP/s from the vendors' data sheets: (bf16/fp16, tf32 for fp32 runs)
PEAK_TFLOPS = {
    "B200": (2250.0, 1100.0),
    "H200": (989.4, 494.7),
    "GH200": (989.4, 494.7),
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.4, 494.7),   # SXM
    "A100": (312.0, 156.0),
    "L40S": (362.1, 183.0),
    "A10G": (70.0, 35.0),
    "A10": (125.0, 62.5),
    "RTX 4090": (165.2, 82.6),
    "V100": (125.0, 15.7),    # fp16 tensor cores; no tf32
}


def peak_flops(device: torch.device, precision: str, override_tflops: float = 0.0) -> float | None:
    """FLOP/s at 100% of the device, or None where unknown (CPUs, unlisted GPUs: set LOG.PEAK_TFLOPS)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (half, tf32) in PEAK_TFLOPS.items():  # the more specific names come first
        if key in name:
            return (tf32 if precision == "fp32" else half) * 1e12
    return None


@torch.no_grad()
def train_flops_per_clip(model: torch.nn.Module, inputs: tuple, kwargs: dict | None = None) -> float:
    """3 x the forward FLOPs of `model(*inputs)`, divided by the inputs' batch size."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()  # same FLOPs; no dropout randomness consumed
    try:
        with FlopCounterMode(display=False, custom_mapping=_cpu_attention()) as counter:
            model(*inputs, **(kwargs or {}))
    finally:
        model.train(was_training)
    return 3.0 * counter.get_total_flops() / inputs[0].shape[0]


def _cpu_attention() -> dict:
    """torch counts the CUDA attention kernels but not the CPU one; count it the same way, so a
    CPU run reports the FLOPs a GPU run does."""
    from torch.utils.flop_counter import sdpa_flop_count

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}

    def flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    return {op: flops}
