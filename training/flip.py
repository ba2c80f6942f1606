"""Test-time flip averaging: each face's probabilities averaged with its mirror image's.

A face and its mirror image show the same expression, and a network trained with flips
answers the two a little differently; averaging the two answers is worth about one point
of PublicTest accuracy for the shipped model. :func:`flip_averaged` computes it for any
model run from Python (a distillation teacher, ``training.average``'s accuracy); the
shipped model does it inside its graph (:func:`add_flip_average`, ``emopipe-export
--flip-average``), so serving still runs one model on raw faces:

    pixels [N,48,48,1] -> Reshape (NCHW) -> Concat(x, x mirrored) [2N,1,48,48]
        -> the network -> probabilities [2N,7] -> Reshape [2,N,7] -> ReduceMean -> [N,7]

The batch stays dynamic. The cost is the network's, twice (as one batch of 2N).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

METADATA_VALUE = "horizontal flip: probabilities of the face and its mirror image averaged"


def flip_averaged(predict: Callable[[np.ndarray], np.ndarray], faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``predict``'s ``[N,C]`` probabilities for ``faces`` (``[N,H,W]``) one pass, and each row
    averaged with the row for the face's mirror image; faces and mirrors run as one batch of 2N."""
    both = predict(np.concatenate([faces, faces[:, :, ::-1]]))
    plain = both[: len(faces)]
    return plain, (plain + both[len(faces) :]) / 2


def _first_layout_node(graph: onnx.GraphProto, input_name: str) -> onnx.NodeProto:
    consumers = [n for n in graph.node if input_name in n.input]
    if len(consumers) != 1 or consumers[0].op_type not in {"Reshape", "Transpose"}:
        found = [n.op_type for n in consumers]
        raise ValueError(f"expected the input {input_name!r} to feed one Reshape/Transpose to NCHW, found {found}")
    return consumers[0]


def add_flip_average(model: onnx.ModelProto) -> None:
    """Rewrite ``model`` (in place) to average its output over each face and its mirror image.

    ``model`` is an emotion model as ``training.export`` writes it: input ``[N,H,W,1]``,
    first node a Reshape or Transpose to NCHW, output ``[N,C]`` probabilities.
    """
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ValueError(f"expected one input and one output, got {len(graph.input)} and {len(graph.output)}")
    if any(n.name.startswith("flip_average") for n in graph.node):
        raise ValueError("the model already averages over flips")
    classes = graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    if classes <= 0:
        raise ValueError("the model's output has no fixed class dimension")
    layout = _first_layout_node(graph, graph.input[0].name)
    nchw = layout.output[0]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1], np.int64), "flip_average/starts"),
            numpy_helper.from_array(np.array([np.iinfo(np.int64).min], np.int64), "flip_average/ends"),
            numpy_helper.from_array(np.array([3], np.int64), "flip_average/axes"),  # W in NCHW
            numpy_helper.from_array(np.array([-1], np.int64), "flip_average/steps"),
            numpy_helper.from_array(np.array([2, -1, classes], np.int64), "flip_average/pairs_shape"),
        ]
    )
    for node in graph.node:
        if node is not layout:
            node.input[:] = ["flip_average/both" if name == nchw else name for name in node.input]
    output = graph.output[0].name
    producer = next(n for n in graph.node if output in n.output)
    producer.output[:] = ["flip_average/probabilities" if name == output else name for name in producer.output]
    head = [
        helper.make_node(
            "Slice",
            [nchw, "flip_average/starts", "flip_average/ends", "flip_average/axes", "flip_average/steps"],
            ["flip_average/mirrored"],
            name="flip_average/mirror",
        ),
        helper.make_node(
            "Concat", [nchw, "flip_average/mirrored"], ["flip_average/both"], axis=0, name="flip_average/concat"
        ),
    ]
    tail = [
        helper.make_node(
            "Reshape",
            ["flip_average/probabilities", "flip_average/pairs_shape"],
            ["flip_average/pairs"],
            name="flip_average/pairs",
        ),
        _reduce_mean(graph, _opset(model), "flip_average/pairs", output),
    ]
    nodes = list(graph.node)
    at = nodes.index(layout) + 1
    del graph.node[:]
    graph.node.extend(nodes[:at] + head + nodes[at:] + tail)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _reduce_mean(graph: onnx.GraphProto, opset: int, source: str, output: str) -> onnx.NodeProto:
    """Mean over axis 0; opset 18 moved ReduceMean's axes from an attribute to an input."""
    if opset >= 18:
        graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "flip_average/axis0"))
        return helper.make_node(
            "ReduceMean", [source, "flip_average/axis0"], [output], keepdims=0, name="flip_average/mean"
        )
    return helper.make_node("ReduceMean", [source], [output], axes=[0], keepdims=0, name="flip_average/mean")
