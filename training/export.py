"""Export a trained Keras model to the ONNX file the classify service loads.

    emopipe-export runs/emonet/best.keras services/classify/models/emotion.onnx

The contract: input float32 ``[N,S,S,1]`` of raw grey pixels 0..255 (scaling is inside the
graph), output ``[N,7]`` softmax probabilities in FER-2013 order, dynamic batch. The model
describes itself: ``labels`` (JSON list) and ``input_size`` (S, read from the Keras model's
own input shape: 48 for FER-2013) are written into its metadata, and serving reads them
from there. Constant scales are folded into the weights they feed
(``training.fold``), so the input scaling costs no separate pass over the pixels.

Two options make the shipped model (both recorded in the metadata):

    emopipe-export averaged.keras emotion.onnx --flip-average --int8

``--flip-average`` averages each face's answer with its mirror image's inside the graph
(``training.flip``); ``--int8`` quantizes the graph, calibrated on Training faces
(``training.quantize``), which makes one pass about 1.8x faster on one CPU core, so both
together run at about the speed of one float pass. The float
export matches Keras to 1e-4; the int8 one is an approximation whose accuracy is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import onnx

from emopipe.labels import EMOTIONS, NUM_CLASSES
from services.classify.model import PREPROCESSING
from training.data import DEFAULT_DATA
from training.flip import METADATA_VALUE as FLIP_METADATA
from training.flip import add_flip_average
from training.fold import fold_scales
from training.models import as_float32, load_checkpoint
from training.quantize import CALIBRATION_FACES, calibration_faces, quantize
from training.quantize import METADATA_VALUE as INT8_METADATA

INPUT_PIXELS = "raw grey pixel values 0..255 (normalised inside the graph)"
OUTPUT_FORMAT = f"float32 [N,{NUM_CLASSES}], softmax probabilities in the order of 'labels'"


def input_size(model: keras.Model) -> int:
    """The side S of the square grey faces ``model`` takes (input shape ``(None, S, S, 1)``)."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 1 or not isinstance(shape[1], int):
        raise ValueError(f"model {model.name!r} has input shape {shape}, not (None, S, S, 1) grey faces")
    return shape[1]


def _with_dynamic_batch(model: onnx.ModelProto) -> None:
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "N"


def export(
    model: keras.Model,
    path: Path,
    extra_metadata: dict[str, str] | None = None,
    flip_average: bool = False,
    int8_calibration: np.ndarray | None = None,
    preprocessing: str = "none",
) -> None:
    """Write ``model`` as ONNX to ``path`` with its self-description in the metadata.

    ``flip_average`` adds test-time flip averaging to the graph; ``int8_calibration``
    (uint8 ``[N,S,S]`` Training faces) quantizes it to int8, calibrated on those faces
    (after ``preprocessing``, the one the model was trained with: recorded in the metadata,
    and done by serving before the graph).
    """
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing {preprocessing!r} (known: {', '.join(PREPROCESSING)})")
    size = input_size(model)
    model(np.zeros((1, size, size, 1), "float32"))  # a loaded model must be called once before export
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        model.export(str(raw), format="onnx", verbose=False)
        proto = onnx.load(str(raw))
    _with_dynamic_batch(proto)
    fold_scales(proto)  # exact: the input scaling moves into the first convolution's weights
    options: dict[str, str] = {}
    if flip_average:
        add_flip_average(proto)
        options["test_time_augmentation"] = FLIP_METADATA
    if int8_calibration is not None:
        proto = quantize(proto, PREPROCESSING[preprocessing](int8_calibration))
        options["precision"] = INT8_METADATA
    metadata = {
        "labels": json.dumps(list(EMOTIONS)),
        "input_size": str(size),
        "input_format": f"float32 [N,{size},{size},1], {INPUT_PIXELS}",
        "output_format": OUTPUT_FORMAT,
        "architecture": model.name,
        "parameters": str(model.count_params()),
        **({"preprocessing": preprocessing} if preprocessing != "none" else {}),
        **options,
        **(extra_metadata or {}),
    }
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "emopipe"
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a .keras file written by emopipe-train")
    parser.add_argument("output", type=Path, help="where to write the .onnx model")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="extra metadata entry")
    parser.add_argument(
        "--flip-average", action="store_true", help="average each face's answer with its mirror image's, in the graph"
    )
    parser.add_argument("--int8", action="store_true", help="quantize to int8, calibrated on Training faces")
    parser.add_argument(
        "--preprocessing",
        choices=sorted(PREPROCESSING),
        default="none",
        help="what the model was trained on (the recipe's preprocessing): recorded for serving",
    )
    parser.add_argument(
        "--calibration-data",
        type=Path,
        default=DEFAULT_DATA,
        help="FER-2013 (image-folder root or Kaggle CSV) whose Training faces calibrate --int8",
    )
    parser.add_argument(
        "--calibration-faces", type=int, default=CALIBRATION_FACES, help="how many Training faces calibrate --int8"
    )
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"{args.checkpoint}: checkpoint not found")
    extra = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--meta {item!r}: expected KEY=VALUE")
        extra[key] = value
    calibration = None
    if args.int8:
        if args.calibration_faces < 1:
            parser.error(f"--calibration-faces {args.calibration_faces}: need at least one face")
        if not args.calibration_data.exists():
            parser.error(f"--calibration-data {args.calibration_data}: not found")
        calibration = calibration_faces(args.calibration_data, args.calibration_faces)
    model = as_float32(load_checkpoint(args.checkpoint))  # a float16 checkpoint (the teacher) runs in float32
    export(model, args.output, extra, args.flip_average, calibration, args.preprocessing)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
