"""Independent reference counts for the analytic FLOP counter: fvcore's FlopCountAnalysis.

fvcore traces the real model with torch.jit and counts per aten op. It is configured to the papers'
convention: convolutions, linear layers and matrix products count (one MAC each); batch norm, pooling
and element-wise ops do not.
"""

from __future__ import annotations

import torch
from fvcore.nn import FlopCountAnalysis

IGNORED_OPS = (
    "aten::batch_norm",
    "aten::group_norm",
    "aten::layer_norm",
    "aten::instance_norm",
    "aten::adaptive_avg_pool1d",
    "aten::adaptive_avg_pool2d",
    "aten::adaptive_avg_pool3d",
    "aten::upsample_nearest2d",
    "aten::upsample_bilinear2d",
)


def fvcore_gflops(model: torch.nn.Module, frames: int, size: int, channels: int = 3) -> float:
    """GMACs of one clip counted by fvcore on a real forward pass (model in eval mode)."""
    model.eval()
    clip = torch.randn(1, channels, frames, size, size)
    analysis = FlopCountAnalysis(model, clip)
    for op in IGNORED_OPS:
        analysis.set_op_handle(op, None)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        return analysis.total() / 1e9
