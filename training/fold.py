"""Exact algebraic folds of constant scales into the weights of an exported ONNX graph.

Keras exports two element-wise multiplies that onnxruntime runs as separate kernels:

* the input scaling ``Rescaling(1/255)``: ``pixels * s (+ 0)`` feeding the first convolution;
* a batch norm after a dense layer: ``MatMul(x, W) * g`` (its shift stays as an ``Add``,
  which onnxruntime fuses with the ``MatMul`` into one ``Gemm``).

Both fold into the weights they feed: ``conv(s * x, W) = conv(x, s * W)`` (zero padding stays
zero) and ``(x @ W) * g = x @ (W * g)``. The graph still takes raw 0..255 pixels; the scaling
now lives in the first convolution's weights. Anything that does not match a pattern exactly
(a non-zero offset, a shared weight, a second consumer) is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

# Ops that move values without changing them: the scale passes through them unchanged.
_LAYOUT_OPS = {"Reshape", "Transpose"}


class _Graph:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.init = {t.name: t for t in graph.initializer}

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if name in n.input]

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        found = self.consumers(name)
        outputs = {o.name for o in self.graph.output}
        return found[0] if len(found) == 1 and name not in outputs else None

    def const(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.init[name]) if name in self.init else None

    def const_operand(self, node: onnx.NodeProto, other: str) -> np.ndarray | None:
        """The initializer operand of binary ``node`` whose other operand is ``other``."""
        if len(node.input) != 2 or other not in node.input:
            return None
        name = node.input[1] if node.input[0] == other else node.input[0]
        return self.const(name)

    def set_const(self, name: str, value: np.ndarray) -> None:
        self.init[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    def used_once(self, name: str) -> bool:
        return len(self.consumers(name)) == 1

    def bypass(self, node: onnx.NodeProto, source: str) -> None:
        """Remove ``node``, feeding its consumers from ``source`` instead."""
        for other in self.consumers(node.output[0]):
            other.input[:] = [source if i == node.output[0] else i for i in other.input]
        self.graph.node.remove(node)


def _fold_input_scale(g: _Graph, graph_input: str) -> bool:
    mul = g.only_consumer(graph_input)
    if mul is None or mul.op_type != "Mul":
        return False
    scale = g.const_operand(mul, graph_input)
    if scale is None or scale.size != 1:
        return False
    removable = [(mul, graph_input)]  # (node, the operand that carries the data)
    tip = mul.output[0]
    add = g.only_consumer(tip)
    if add is not None and add.op_type == "Add":
        offset = g.const_operand(add, tip)
        if offset is None or np.any(offset != 0):
            return False  # conv(s*x + o) with zero padding is not conv(x, s*W)
        removable.append((add, tip))
        tip = add.output[0]
    node = g.only_consumer(tip)
    while node is not None and node.op_type in _LAYOUT_OPS:
        node = g.only_consumer(node.output[0])
    if node is None or node.op_type != "Conv" or not g.used_once(node.input[1]):
        return False
    weight = g.const(node.input[1])
    if weight is None:
        return False
    g.set_const(node.input[1], weight * scale.reshape(()))
    for node, data in reversed(removable):
        g.bypass(node, data)
    return True


def _fold_matmul_scales(g: _Graph) -> int:
    folded = 0
    for matmul in [n for n in g.graph.node if n.op_type == "MatMul"]:
        weight = g.const(matmul.input[1])
        mul = g.only_consumer(matmul.output[0])
        if weight is None or weight.ndim != 2 or mul is None or mul.op_type != "Mul":
            continue
        scale = g.const_operand(mul, matmul.output[0])
        if scale is None or scale.size not in (1, weight.shape[1]) or not g.used_once(matmul.input[1]):
            continue
        g.set_const(matmul.input[1], weight * scale.reshape(-1))
        g.bypass(mul, matmul.output[0])
        folded += 1
    return folded


def fold_scales(model: onnx.ModelProto) -> int:
    """Fold constant scales into weights in place; returns how many multiplies were removed."""
    g = _Graph(model.graph)
    folded = sum(_fold_input_scale(g, value.name) for value in model.graph.input)
    folded += _fold_matmul_scales(g)
    used = {i for n in model.graph.node for i in n.input}
    for tensor in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(tensor)
    return folded
