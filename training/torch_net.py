"""The Keras emotion CNNs as plain PyTorch modules, with their weights copied both ways.

``training.torch_train`` trains in plain PyTorch because Keras's PyTorch backend is slow
for these networks: it transposes every activation between channels-last and PyTorch's
layout around each convolution and builds batch norm from element-wise operations, so
one ``emonet-wide`` step of 256 faces on a 2-core CPU takes 3.4 s there under
``mixed_bfloat16``, against 1.05 s for the same network in PyTorch under bfloat16 autocast
(see the model card). The Keras model stays the one definition of each architecture
(``training.models``): :class:`TorchNet` is built by reading its layers, and
:func:`copy_to_keras` writes trained weights back into it, so every checkpoint a run
keeps is an ordinary ``.keras`` file that averaging, export and evaluation read.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import torch
from torch import nn
from torch.nn import functional

# The layer types of training.models; anything else is refused by name.
_ACTIVATIONS = {"linear": None, "relu": functional.relu, "softmax": None}


class _NHWCFlatten(nn.Module):
    """Keras's ``Flatten`` of a channels-last tensor: the dense weights that follow expect
    height, width, channel order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x.permute(0, 2, 3, 1), 1)


class _GlobalAveragePool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class _Scale(nn.Module):
    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


class _Activated(nn.Module):
    def __init__(self, inner: nn.Module, activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.inner, self.activation = inner, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.inner(x))


class TorchNet(nn.Module):
    """A chain of Keras layers (``model.layers`` in order) as PyTorch modules.

    Takes raw pixels ``[N,48,48,1]`` (channels last, as the Keras model does) and returns
    the **logits** of the final softmax layer; :meth:`probabilities` applies it. Each
    PyTorch module with weights is paired with the Keras layer it came from in
    ``self.pairs`` (by its index in ``model.layers``, as layer names differ between two
    builds of one architecture) for :func:`copy_from_keras` and :func:`copy_to_keras`."""

    def __init__(self, model: keras.Model) -> None:
        super().__init__()
        self.pairs: list[tuple[int, nn.Module]] = []
        self.architecture = model.name
        modules: list[nn.Module] = []
        last = model.layers[-1]
        if not (isinstance(last, keras.layers.Dense) and last.get_config()["activation"] == "softmax"):
            raise ValueError(f"model {model.name!r} does not end in a softmax Dense layer")
        for index, layer in enumerate(model.layers):
            module = self._convert(index, layer, softmax_ok=layer is last)
            if module is not None:
                modules.append(module)
        self.body = nn.Sequential(*modules)
        copy_from_keras(model, self)

    def _convert(self, index: int, layer: keras.layers.Layer, softmax_ok: bool) -> nn.Module | None:
        config = layer.get_config()
        if isinstance(layer, keras.layers.InputLayer):
            return None
        if isinstance(layer, keras.layers.Rescaling):
            return _Scale(float(config["scale"]), float(config["offset"]))
        if isinstance(layer, keras.layers.Conv2D):
            if (
                tuple(config["strides"]) != (1, 1)
                or config["padding"] != "same"
                or tuple(config["dilation_rate"]) != (1, 1)
            ):
                raise ValueError(f"layer {layer.name}: only stride-1, undilated, 'same'-padded convolutions convert")
            kh, kw = config["kernel_size"]
            conv = nn.Conv2d(
                layer.input.shape[-1], config["filters"], (kh, kw), padding=(kh // 2, kw // 2), bias=config["use_bias"]
            )
            return self._pair(index, layer, conv, config["activation"], softmax_ok)
        if isinstance(layer, keras.layers.Dense):
            dense = nn.Linear(layer.input.shape[-1], config["units"], bias=config["use_bias"])
            return self._pair(index, layer, dense, config["activation"], softmax_ok)
        if isinstance(layer, keras.layers.BatchNormalization):
            if not (config["center"] and config["scale"]):
                raise ValueError(f"layer {layer.name}: batch norm without centre and scale does not convert")
            cls = nn.BatchNorm2d if len(layer.input.shape) == 4 else nn.BatchNorm1d
            norm = cls(layer.input.shape[-1], eps=config["epsilon"], momentum=1.0 - config["momentum"])
            self.pairs.append((index, norm))
            return norm
        if isinstance(layer, keras.layers.ReLU):
            if config.get("max_value") is not None or config.get("negative_slope", 0.0) or config.get("threshold", 0.0):
                raise ValueError(f"layer {layer.name}: only the plain ReLU converts")
            return nn.ReLU()
        if isinstance(layer, keras.layers.MaxPooling2D):
            if config["padding"] != "valid":
                raise ValueError(f"layer {layer.name}: only 'valid' max-pooling converts")
            return nn.MaxPool2d(tuple(config["pool_size"]), tuple(config["strides"]))
        if isinstance(layer, keras.layers.GlobalAveragePooling2D):
            return _GlobalAveragePool()
        if isinstance(layer, keras.layers.Flatten):
            return _NHWCFlatten()
        if isinstance(layer, keras.layers.Dropout):
            return nn.Dropout(config["rate"])
        raise ValueError(f"layer {layer.name} ({type(layer).__name__}) has no PyTorch counterpart here")

    def _pair(
        self, index: int, layer: keras.layers.Layer, module: nn.Module, activation: str, softmax_ok: bool
    ) -> nn.Module:
        if activation not in _ACTIVATIONS or (activation == "softmax" and not softmax_ok):
            raise ValueError(f"layer {layer.name}: activation {activation!r} does not convert")
        self.pairs.append((index, module))
        act = _ACTIVATIONS[activation]
        return module if act is None else _Activated(module, act)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body(pixels.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))

    def probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(pixels).float(), dim=1)


def _keras_to_torch(module: nn.Module, weights: list[np.ndarray]) -> list[np.ndarray]:
    if isinstance(module, nn.Conv2d):  # Keras kernels are (h, w, in, out); PyTorch's (out, in, h, w)
        return [weights[0].transpose(3, 2, 0, 1), *weights[1:]]
    if isinstance(module, nn.Linear):
        return [weights[0].T, *weights[1:]]
    return weights  # batch norm: gamma, beta, moving mean, moving variance


def _torch_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The tensors of ``module`` in the order of its Keras layer's ``get_weights()``."""
    names: tuple[str, ...] = ("weight", "bias", "running_mean", "running_var")
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        names = ("weight", "bias") if getattr(module, "bias", None) is not None else ("weight",)
    return [getattr(module, name) for name in names]


def _check_same(net: TorchNet, model: keras.Model) -> None:
    if model.name != net.architecture:
        raise ValueError(f"Keras model {model.name!r} is not the architecture {net.architecture!r} of this network")


@torch.no_grad()
def copy_from_keras(model: keras.Model, net: TorchNet) -> None:
    """Set ``net``'s weights (and batch-norm statistics) to ``model``'s."""
    _check_same(net, model)
    for index, module in net.pairs:
        layer = model.layers[index]
        source = layer.get_weights()
        for tensor, value in zip(_torch_tensors(module), _keras_to_torch(module, source), strict=True):
            if tuple(tensor.shape) != value.shape:
                raise ValueError(f"layer {layer.name}: weight of shape {value.shape}, expected {tuple(tensor.shape)}")
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(value, np.float32)))


@torch.no_grad()
def copy_to_keras(net: TorchNet, model: keras.Model) -> keras.Model:
    """Write ``net``'s weights (and batch-norm statistics) into ``model``; returns it."""
    _check_same(net, model)
    for index, module in net.pairs:
        values = [tensor.detach().float().cpu().numpy() for tensor in _torch_tensors(module)]
        if isinstance(module, nn.Conv2d):
            values[0] = values[0].transpose(2, 3, 1, 0)
        elif isinstance(module, nn.Linear):
            values[0] = values[0].T
        model.layers[index].set_weights(values)
    return model
