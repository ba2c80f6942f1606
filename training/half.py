"""A float16 copy of a trained Keras model: half the bytes, for a teacher that must travel.

    python -m training.half runs/emonet-wide/best.keras .gpu/emonet-wide-fp16.keras

The GPU machine receives the working tree, at most 64 MiB of it, and the packed data set takes
51 MB: ``emonet-wide``'s float32 checkpoint (14 MB) does not fit beside it, its float16 copy
(7 MB) does. The copy is the same network with every layer but the input under Keras's
``float16`` dtype policy (weights stored and computed in float16, which a CUDA GPU runs
natively) and no optimizer state; ``emopipe-train --teacher`` loads it like any ``.keras``
checkpoint. For ``emonet-wide`` on 512 PublicTest faces its probabilities differ from the
float32 model's by at most 0.005 (mean 0.0002) and pick the same class for every face.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import keras

from training.models import load_checkpoint

_FLOAT16 = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float16"}, "registered_name": None}


def half(model: keras.Model) -> keras.Model:
    """``model`` (functional) rebuilt with float16 layers and its weights rounded to float16;
    the input stays float32 (the first layer casts it)."""
    config = copy.deepcopy(model.get_config())
    if "layers" not in config:
        raise ValueError(f"model {model.name!r} is not a functional Keras model; only those can be halved")
    for layer in config["layers"]:
        if layer["class_name"] != "InputLayer":
            layer["config"]["dtype"] = dict(_FLOAT16)
    copy16 = keras.Model.from_config(config)
    copy16.set_weights([weights.astype("float16") for weights in model.get_weights()])
    return copy16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a .keras file written by emopipe-train")
    parser.add_argument("out", type=Path, help="the float16 .keras file to write")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"{args.checkpoint}: checkpoint not found")
    if args.out.suffix != ".keras":
        parser.error(f"{args.out}: the copy's name must end in .keras (Keras saves and loads it by that)")
    try:
        model = load_checkpoint(args.checkpoint)
    except ValueError as exc:
        parser.error(f"{args.checkpoint}: not a Keras checkpoint ({exc})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    half(model).save(args.out)
    before, after = args.checkpoint.stat().st_size / 1e6, args.out.stat().st_size / 1e6
    print(f"wrote {args.out}: {after:.1f} MB, float16 ({args.checkpoint}: {before:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
