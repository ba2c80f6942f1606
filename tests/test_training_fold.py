"""training.fold: constant scales folded into weights give the same outputs with fewer ops."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from training.fold import fold_scales

RNG = np.random.default_rng(7)


def _const(name: str, value: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], out_shape: list) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 6, 6, 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _keras_like(offset: float = 0.0, second_reader: bool = False, shared_weights: bool = False) -> onnx.ModelProto:
    """pixels*s (+o) -> Reshape NCHW -> Conv -> Relu -> GAP -> Squeeze -> MatMul*g+b, the shape
    of a Keras export with Rescaling and a batch-normed dense layer."""
    conv_w = RNG.normal(size=(4, 1, 3, 3))
    nodes = [
        helper.make_node("Mul", ["pixels", "s"], ["scaled"]),
        helper.make_node("Add", ["scaled", "o"], ["shifted"]),
        helper.make_node("Reshape", ["shifted", "nchw"], ["x"]),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Squeeze", ["p", "axes"], ["f"]),
        helper.make_node("MatMul", ["f", "dense"], ["m"]),
        helper.make_node("Mul", ["m", "gamma"], ["mg"]),
        helper.make_node("Add", ["mg", "beta"], ["out"]),
    ]
    inits = [
        _const("s", 1 / 255),
        _const("o", offset),
        numpy_helper.from_array(np.array([-1, 1, 6, 6], dtype=np.int64), "nchw"),
        _const("w", conv_w),
        _const("b", RNG.normal(size=4)),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
        _const("dense", RNG.normal(size=(4, 5))),
        _const("gamma", RNG.normal(size=5)),
        _const("beta", RNG.normal(size=5)),
    ]
    if second_reader:  # a second Conv reads the scaled input (and the same weights)
        nodes[-1] = helper.make_node("Add", ["mg", "beta"], ["y"])
        nodes += [
            helper.make_node("Conv", ["x", "w"], ["c2"], pads=[1, 1, 1, 1]),
            helper.make_node("ReduceSum", ["c2"], ["z"], keepdims=0),
            helper.make_node("Add", ["y", "z"], ["out"]),
        ]
    if shared_weights:  # the conv and dense weights are read a second time, by unscaled paths
        nodes[-1] = helper.make_node("Add", ["mg", "beta"], ["y"])
        nodes += [
            helper.make_node("Reshape", ["pixels", "nchw"], ["raw"]),
            helper.make_node("Conv", ["raw", "w"], ["c3"], pads=[1, 1, 1, 1]),
            helper.make_node("ReduceMean", ["c3"], ["z3"], keepdims=0),
            helper.make_node("MatMul", ["f", "dense"], ["m2"]),
            helper.make_node("Add", ["y", "m2"], ["y2"]),
            helper.make_node("Add", ["y2", "z3"], ["out"]),
        ]
    return _model(nodes, inits, ["N", 5])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": x})[0]


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _pixels() -> np.ndarray:
    return RNG.integers(0, 256, (3, 6, 6, 1)).astype(np.float32)


def test_input_scale_and_dense_scale_fold_into_weights_with_the_same_outputs() -> None:
    model = _keras_like()
    x = _pixels()
    before = _run(model, x)
    assert fold_scales(model) == 2
    onnx.checker.check_model(model)
    assert _ops(model) == ["Reshape", "Conv", "Relu", "GlobalAveragePool", "Squeeze", "MatMul", "Add"]
    assert model.graph.node[0].input[0] == "pixels"
    assert {t.name for t in model.graph.initializer} == {"nchw", "w", "b", "axes", "dense", "beta"}
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


def test_a_nonzero_offset_keeps_the_input_scaling() -> None:
    # conv(s*x + o) differs from conv(x, s*W) at the zero-padded border, so it must not fold
    model = _keras_like(offset=-1.0)
    x = _pixels()
    before = _run(model, x)
    assert fold_scales(model) == 1  # only the dense layer's scale
    assert _ops(model)[:3] == ["Mul", "Add", "Reshape"]
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


def test_a_scaled_input_read_twice_is_left_alone() -> None:
    model = _keras_like(second_reader=True)
    x = _pixels()
    before = _run(model, x)
    assert fold_scales(model) == 1
    assert _ops(model)[0] == "Mul"
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


def test_weights_read_by_another_node_are_left_alone() -> None:
    model = _keras_like(shared_weights=True)
    x = _pixels()
    before = _run(model, x)
    assert fold_scales(model) == 0
    assert _ops(model)[:2] == ["Mul", "Add"] and "gamma" in {t.name for t in model.graph.initializer}
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma_shape", [(5,), (1, 5)])
def test_dense_scale_of_either_broadcast_shape_folds(gamma_shape: tuple[int, ...]) -> None:
    model = _keras_like()
    gamma = next(t for t in model.graph.initializer if t.name == "gamma")
    gamma.CopyFrom(_const("gamma", RNG.normal(size=gamma_shape)))
    x = _pixels()
    before = _run(model, x)
    assert fold_scales(model) == 2
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)
