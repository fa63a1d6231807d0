"""How much arithmetic a model costs, so that a run can say what compute it used and at what rate.

Time-to-accuracy records are stated in compute as well as seconds (airbench94: 0.36 PFLOP for 94%), and
the compute a budget buys is the machine's rate times its seconds. :func:`forward_macs` counts the
multiply-accumulates of one example's forward pass through every layer that has a ``kernel`` (Keras's
convolutions and dense layers, and ours: ``PatchWhitening``, ``Maxout``, ``DropConnect``); element-wise
work (batch norm, activations, pooling) is left out, as such counts usually do. Training costs about three
forward passes (the backward pass computes gradients for the inputs and for the weights), two FLOPs per
multiply-accumulate: :func:`train_flops_per_example`.
"""

from __future__ import annotations

import math

import keras

TRAIN_FLOPS_PER_MAC = 6  # 2 FLOPs per multiply-accumulate, x3 for the forward and the backward pass


def _positions(shape) -> int:
    """How many times a kernel is applied per example: the product of the dimensions between the batch
    and the channel axis (1 for a plain ``(batch, features)`` tensor)."""
    dims = [int(d) for d in shape[1:-1]]
    return math.prod(dims) if dims else 1


def _flat_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flat_layers(layer)
        else:
            yield layer


def layer_macs(model: keras.Model) -> dict[str, int]:
    """Multiply-accumulates per example of each layer that has a kernel, by layer name.

    A kernel of rank 3 or more (``(kh, kw, in, out)``) is a convolution: it costs its size at every output
    position (a transposed one at every input position). A rank-2 kernel ``(in, out)`` is a dense map: its
    size at every input position (once per example for a flat input, per position for a dense layer applied
    to a sequence or a feature map). Layers without a ``kernel`` (separable convolutions, attention,
    embeddings) are not counted.
    """
    counts = {}
    for layer in _flat_layers(model):
        kernel = getattr(layer, "kernel", None)
        if kernel is None or not hasattr(kernel, "shape"):
            continue
        size = math.prod(int(d) for d in kernel.shape)
        try:
            per_output = len(kernel.shape) >= 3 and "Transpose" not in type(layer).__name__
            shape = layer.output.shape if per_output else layer.input.shape
        except (AttributeError, ValueError):
            raise ValueError(
                f"layer {layer.name!r} has no single defined input and output: count the compute of a "
                "model built on a keras.Input (a functional model, or a Sequential given an input shape)"
            ) from None
        counts[layer.name] = size * _positions(shape)
    return counts


def forward_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one example's forward pass (the sum of :func:`layer_macs`)."""
    return sum(layer_macs(model).values())


def train_flops_per_example(model: keras.Model) -> int:
    """About how many FLOPs one training example costs: forward and backward, ``6 x`` :func:`forward_macs`."""
    return TRAIN_FLOPS_PER_MAC * forward_macs(model)


def compute_report(model: keras.Model, images_trained: int, images_per_second: float | None) -> dict:
    """The arithmetic of a training: per image, in all, and the rate this session's training reached
    (``images_per_second`` of training time; None when it trained no epoch)."""
    macs = forward_macs(model)
    per_image = TRAIN_FLOPS_PER_MAC * macs
    rate = images_per_second * per_image if images_per_second else None
    return {
        "forward_macs_per_image": macs,
        "train_flops_per_image": per_image,
        "train_pflops": float(f"{images_trained * per_image / 1e15:.4g}"),
        "train_gflops_per_second": float(f"{rate / 1e9:.4g}") if rate else None,
    }
