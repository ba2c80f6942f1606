"""Static int8 quantization of an exported emotion model, tuned for onnxruntime on x86 CPUs.

Calibrated on Training faces (never PublicTest), weights int8 per output channel,
activations uint8 with ranges fixed by the calibration (so a face's answer does not depend
on the rest of its batch), written in the QDQ format that onnxruntime fuses into
``QLinearConv`` kernels. Three choices, each measured (see the model card):

* ``reduce_range``: weights use 7 bits. On CPUs without AVX-512 VNNI (AVX2 only, such as
  the machine the card quotes), onnxruntime multiplies uint8 by int8 with ``vpmaddubsw``,
  whose 16-bit sums saturate with full-range weights; without this the shipped model fell
  from 66.7% to 54.4% PublicTest.
* The first convolution stays float32: with one input channel it does little arithmetic, and
  as an int8 kernel it was the slowest layer (175 us of 1,180 us per flip-averaged face);
  float32 also keeps the raw pixels' full precision.
* A ``Relu`` (an identity: its input is a max of ReLU outputs) sits between the first
  max-pool and the first quantization. Without it, onnxruntime's QDQ propagation moves the
  quantization in front of the pool, which then runs as a uint8 NCHW pool at 390 us instead
  of the float NCHWc pool's 18 us.

    emopipe-export runs/x/averaged.keras emotion.onnx --flip-average --int8
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from training.data import load_folder_subset, load_splits, sample

METADATA_VALUE = "int8 (static, per-channel weights, uint8 activations; first convolution float32)"
# How many Training faces calibrate the shipped model (emopipe-export --calibration-faces).
CALIBRATION_FACES = 512


def calibration_faces(source: Path, count: int = CALIBRATION_FACES, seed: int = 0) -> np.ndarray:
    """``count`` Training faces, uint8 ``[count,48,48]``, drawn at random with ``seed``."""
    source = Path(source)
    if source.is_dir():
        images = load_folder_subset(source / "train", count, seed)[0]  # all of them if too few
        where = source / "train"
    else:
        (images, _), _ = load_splits(source)
        where = source
    if len(images) < count:
        raise ValueError(f"{where} has {len(images)} Training faces, fewer than the {count} asked for calibration")
    return images if len(images) == count else images[sample(len(images), count, seed)]


class _Faces(CalibrationDataReader):
    def __init__(self, input_name: str, faces: np.ndarray, batch: int = 32) -> None:
        self._batches = iter(
            {input_name: faces[i : i + batch, ..., None].astype(np.float32)} for i in range(0, len(faces), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _first_block(graph: onnx.GraphProto) -> tuple[onnx.NodeProto, list[onnx.NodeProto]]:
    """The first Conv and the element-wise/pool nodes that follow it up to and including its
    first MaxPool (``Relu``, ``MaxPool``), each the only consumer of the one before."""
    conv = next((n for n in graph.node if n.op_type == "Conv"), None)
    if conv is None:
        raise ValueError("the model has no Conv node to quantize")
    chain: list[onnx.NodeProto] = []
    tip = conv
    while not chain or chain[-1].op_type != "MaxPool":
        consumers = [n for n in graph.node if tip.output[0] in n.input]
        if len(consumers) != 1 or consumers[0].op_type not in {"Relu", "MaxPool"}:
            return conv, chain
        tip = consumers[0]
        chain.append(tip)
    return conv, chain


def _guard_pool(model: onnx.ModelProto, pool: onnx.NodeProto) -> None:
    """Put an (identity) Relu between ``pool`` and the QuantizeLinear nodes that read it."""
    graph = model.graph
    readers = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == pool.output[0]]
    if not readers:
        return
    guarded = f"{pool.output[0]}/guarded"
    for node in readers:
        node.input[0] = guarded
    nodes = list(graph.node)
    nodes.insert(
        nodes.index(pool) + 1, helper.make_node("Relu", [pool.output[0]], [guarded], name=f"{pool.name}/guard")
    )
    del graph.node[:]
    graph.node.extend(nodes)


def quantize(model: onnx.ModelProto, faces: np.ndarray) -> onnx.ModelProto:
    """An int8 copy of float ``model``, calibrated on uint8 ``[N,48,48]`` ``faces``."""
    if faces.ndim != 3 or len(faces) == 0:
        raise ValueError(f"calibration faces must be a non-empty [N,H,W] array, got shape {faces.shape}")
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / name for name in ("float.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        prepared = onnx.load(str(pre))
        conv, chain = _first_block(prepared.graph)
        quantize_static(
            str(pre),
            str(out),
            _Faces(prepared.graph.input[0].name, faces),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "Relu", "MaxPool"],
            nodes_to_exclude=[conv.name, *(n.name for n in chain)],
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        quantized = onnx.load(str(out))
    if chain and chain[-1].op_type == "MaxPool":
        pool = next(n for n in quantized.graph.node if n.name == chain[-1].name)
        _guard_pool(quantized, pool)
    onnx.checker.check_model(quantized)
    return quantized
