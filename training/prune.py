"""Narrow a trained VGG-style net to a slimmer architecture, keeping its strongest channels.

    python -m training.prune runs/x/averaged.keras --to emonet-slim --out runs/x/pruned.keras

The target architecture has the same layers as the checkpoint, with fewer filters in some
convolutions. Each convolution keeps the output channels whose batch-norm scale ``|gamma|``
is largest (the network-slimming criterion), in their original order; the layer after it
keeps the matching input channels. Batch-norm statistics are then measured again on
FER-2013 Training, because removed channels shift the means downstream. The result needs a
short fine-tuning run (``emopipe-train --init``) to recover its accuracy.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import keras
import numpy as np
from keras import layers

from training.average import recalibrate_on_training
from training.data import DEFAULT_CACHE, DEFAULT_DATA
from training.models import ARCHITECTURES, build, load_checkpoint

log = logging.getLogger("emopipe.prune")

_WEIGHTED = (layers.Conv2D, layers.BatchNormalization, layers.Dense)


def _weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, _WEIGHTED)]


def _strongest(norm: keras.layers.Layer, count: int) -> np.ndarray:
    """Indices of the ``count`` channels with the largest ``|gamma|``, in channel order."""
    if norm.gamma is None:
        raise ValueError(f"{norm.name} has no scale (gamma) to rank its channels by")
    gamma = np.abs(keras.ops.convert_to_numpy(norm.gamma))
    return np.sort(np.argsort(-gamma, kind="stable")[:count])


def prune_into(source: keras.Model, target: keras.Model) -> keras.Model:
    """Copy ``source``'s weights into the narrower ``target``, dropping the weakest channels.

    Both must have the same sequence of convolution, batch-norm and dense layers; every
    convolution must be followed by a batch norm (whose scale ranks its channels)."""
    src, dst = _weighted_layers(source), _weighted_layers(target)
    kinds = [type(layer).__name__ for layer in src]
    if kinds != [type(layer).__name__ for layer in dst]:
        raise ValueError(f"{target.name} does not have the layers of {source.name}: cannot prune one into the other")
    kept_in: np.ndarray | None = None  # channels of the previous layer's output that survive
    for i, (old, new) in enumerate(zip(src, dst, strict=True)):
        weights = old.get_weights()
        if isinstance(old, layers.BatchNormalization):
            new.set_weights([w[kept_in] if kept_in is not None else w for w in weights])
            continue
        kernel, rest = weights[0], weights[1:]
        if kept_in is not None:
            kernel = kernel[..., kept_in, :]
        out_old, out_new = weights[0].shape[-1], new.kernel.shape[-1]
        if out_new > out_old:
            raise ValueError(f"{new.name} has {out_new} outputs, more than the {out_old} of {old.name}")
        if out_new == out_old:
            kept_out = None
        elif i + 1 < len(src) and isinstance(src[i + 1], layers.BatchNormalization):
            kept_out = _strongest(src[i + 1], out_new)
        else:
            raise ValueError(f"{old.name} is not followed by a batch norm, so its channels cannot be ranked")
        if kept_out is not None:
            kernel = kernel[..., kept_out]
            rest = [w[kept_out] for w in rest]
        new.set_weights([kernel, *rest])
        kept_in = kept_out
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="trained .keras model to narrow")
    parser.add_argument("--to", required=True, choices=sorted(ARCHITECTURES), help="the narrower architecture")
    parser.add_argument("--out", type=Path, required=True, help="where to write the pruned .keras model")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="image-folder root or Kaggle CSV")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the packed data set is kept")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"checkpoint not found: {args.checkpoint}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    source = load_checkpoint(args.checkpoint)
    model = prune_into(source, build(args.to))
    log.info(
        "pruned %s (%d parameters) into %s (%d)", args.checkpoint, source.count_params(), args.to, model.count_params()
    )
    recalibrate_on_training(model, args.data, args.cache)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
