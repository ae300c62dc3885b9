"""Independent reference counts for the analytic FLOP counter: fvcore's FlopCountAnalysis.

fvcore traces the real model with torch.jit and counts per aten op. It is configured to the papers'
convention: only convolutions, linear layers and matrix products count (one MAC each); its default
handles for batch norm, pooling and upsampling are cleared, element-wise ops were never counted.
"""

from __future__ import annotations

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import (
    addmm_flop_jit,
    bmm_flop_jit,
    conv_flop_jit,
    einsum_flop_jit,
    linear_flop_jit,
    matmul_flop_jit,
)

COUNTED_OPS = {
    "aten::_convolution": conv_flop_jit,
    "aten::addmm": addmm_flop_jit,
    "aten::bmm": bmm_flop_jit,
    "aten::einsum": einsum_flop_jit,
    "aten::matmul": matmul_flop_jit,
    "aten::mm": matmul_flop_jit,
    "aten::linear": linear_flop_jit,
}


def fvcore_gflops(model: torch.nn.Module, frames: int, size: int, channels: int = 3) -> float:
    """GMACs of one clip counted by fvcore on a real forward pass (model in eval mode)."""
    model.eval()
    clip = torch.randn(1, channels, frames, size, size)
    analysis = FlopCountAnalysis(model, clip).clear_op_handles().set_op_handle(**COUNTED_OPS)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        return analysis.total() / 1e9
