"""ONNX translations of PyTorch ops that the exporter's defaults make imprecise in onnxruntime.

``GroupNorm`` is exported by default as ``InstanceNormalization`` on the grouped tensor. onnxruntime sums
each group's statistics in one float32 pass over C/G * H * W values, which loses ~7e-4 at the detection
input size (1344 x 1344: a 168 x 168 stride-8 level); the GroupNorm of the input projection (and of a
``gn`` backbone) then shifts every feature. Within :func:`precise_symbolics` GroupNorm's mean and
variance are computed in two shorter stages (over W, then over the C/G * H rows) and in two passes (the
variance of the centred values), which brings onnxruntime within ~3e-6 of a float64 reference
(``docs/onnx.md``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

GROUP_NORM = "aten::group_norm"


def _constant(g: object, values: list[int] | float) -> object:
    dtype = torch.float32 if isinstance(values, float) else torch.long
    return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))


def _mean(g: object, x: object, axis: int, opset: int) -> object:
    """``ReduceMean`` over one axis, keeping it (its axes became an input in opset 18)."""
    if opset >= 18:
        return g.op("ReduceMean", x, _constant(g, [axis]), keepdims_i=1)
    return g.op("ReduceMean", x, axes_i=[axis], keepdims_i=1)


def _group_norm_symbolic(opset: int):
    def group_norm(g, x, num_groups, weight, bias, eps, cudnn_enabled):
        from torch.onnx import symbolic_helper

        groups = symbolic_helper._get_const(num_groups, "i", "num_groups")
        epsilon = symbolic_helper._get_const(eps, "f", "eps")
        sizes = x.type().varyingSizes() or []
        width = sizes[-1] if len(sizes) > 2 and isinstance(sizes[-1], int) else 1
        # (N, G, C/G * H, W): two stages of at most max(C/G * H, W) values instead of one of C/G * H * W.
        grouped = g.op("Reshape", x, _constant(g, [0, groups, -1, width]))

        def mean(value):
            return _mean(g, _mean(g, value, 3, opset), 2, opset)

        centered = g.op("Sub", grouped, mean(grouped))
        variance = mean(g.op("Mul", centered, centered))
        normalised = g.op("Div", centered, g.op("Sqrt", g.op("Add", variance, _constant(g, float(epsilon)))))
        output = g.op("Reshape", normalised, g.op("Shape", x))
        channel_axes = _constant(g, list(range(1, len(sizes) - 1)))
        if not symbolic_helper._is_none(weight):
            output = g.op("Mul", output, g.op("Unsqueeze", weight, channel_axes))
        if not symbolic_helper._is_none(bias):
            output = g.op("Add", output, g.op("Unsqueeze", bias, channel_axes))
        return output

    return group_norm


@contextlib.contextmanager
def precise_symbolics(opset: int) -> Iterator[None]:
    """Export ``GroupNorm`` with the two-stage, two-pass statistics at ``opset`` inside the block."""
    torch.onnx.register_custom_op_symbolic(GROUP_NORM, _group_norm_symbolic(opset), opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(GROUP_NORM, opset)
