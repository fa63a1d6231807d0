"""Reach every layer a model tracks, nested ones included, and record what chosen layers output.

``keras.Model(model.input, [layer.output ...])`` only reaches the top-level layers of Sequential and
functional models: a convolution inside a custom layer's ``keras.Sequential`` (keras-io's compact
transformer tokenizer) or inside a subclassed model has no ``output`` of its own. Instead, the monitors run
the probe batch through the whole model once, eagerly, while each target layer's ``call`` is wrapped by a
recorder, and put the original ``call`` back afterwards. A target that was never called eagerly (unused,
or called only inside a ``tf.function`` of its parent) is returned as unreached, for the monitor to name.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf


def tracked_layers(model: keras.layers.Layer) -> list:
    """Every layer Keras tracks under ``model`` (sublayers of custom layers, nested Sequential and
    functional models, attributes of subclassed models), each once, depth first in the order each
    container holds them: forward order for Sequential and functional containers, attribute order for
    subclassed ones."""
    found: list = []
    seen: set[int] = set()

    def visit(layer) -> None:
        for sub in getattr(layer, "_layers", None) or []:
            if id(sub) not in seen:
                seen.add(id(sub))
                found.append(sub)
                visit(sub)

    visit(model)
    return found


def unique_names(items: list) -> list[str]:
    """Log-key names for layers, or for ``(layer, k)`` call sites (the k-th call of a layer in one
    forward pass, k from 0: ``<layer>_call<k + 1>`` after the first); a name used twice (possible across
    nested models) gets ``_2``, ``_3``..."""
    names: list[str] = []
    used: set[str] = set()
    for item in items:
        layer, k = item if isinstance(item, tuple) else (item, 0)
        base = layer.name if k == 0 else f"{layer.name}_call{k + 1}"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        names.append(name)
    return names


def _eager() -> bool:
    """True while tensors have values; False while Keras builds a layer or TensorFlow traces a function."""
    return keras.backend.backend() != "tensorflow" or tf.executing_eagerly()


class CallRecorder:
    """While open, every eager call of each of ``layers`` is noted: the order in which the layers are
    first entered (``order``: forward order, however deeply nested) and, with ``keep_outputs``, each call's
    first output as a float32 NumPy array. A layer called several times in one forward pass (one ``ReLU``
    instance reused after every convolution of a subclassed model) has one call site per call:
    ``outputs[(id(layer), k)]`` lists the k-th call's outputs over the forward passes, ``sites`` the
    ``(layer, k)`` pairs in the order first seen. Call :meth:`next_pass` between forward passes. Closing
    restores the layers' ``call``.

    Example:
        >>> with CallRecorder(layers) as recorder:
        ...     model(x, training=False)
        >>> recorder.outputs[(id(layers[0]), 0)]
    """

    def __init__(self, layers: list, keep_outputs: bool = True):
        self.layers = list(layers)
        self.keep_outputs = keep_outputs
        self.outputs: dict[tuple[int, int], list[np.ndarray]] = {}
        self.sites: list[tuple] = []
        self.order: list = []
        self._calls: dict[int, int] = {}  # calls of each layer in the current forward pass
        self._entered: set[int] = set()
        self._saved: list = []

    def next_pass(self) -> None:
        self._calls = {}

    def _wrap(self, layer, original):
        @functools.wraps(original)
        def recording_call(*args, **kwargs):
            eager = _eager()  # False inside a build's or a trace's symbolic call
            if eager and id(layer) not in self._entered:
                self._entered.add(id(layer))
                self.order.append(layer)
            out = original(*args, **kwargs)
            if eager:
                k = self._calls.get(id(layer), 0)
                self._calls[id(layer)] = k + 1
                first = out[0] if isinstance(out, (list, tuple)) else out
                if self.keep_outputs:
                    if (id(layer), k) not in self.outputs:
                        self.outputs[(id(layer), k)] = []
                        self.sites.append((layer, k))
                    self.outputs[(id(layer), k)].append(keras.ops.convert_to_numpy(first).astype(np.float32))
            return out

        return recording_call

    def __enter__(self) -> CallRecorder:
        for layer in self.layers:
            # Layer.__call__ looks ``self.call`` up at every call, so an instance attribute shadows the
            # method. object.__setattr__ bypasses Keras's attribute tracking.
            own = vars(layer).get("call")
            self._saved.append((layer, own))
            object.__setattr__(layer, "call", self._wrap(layer, layer.call))
        return self

    def __exit__(self, *exc) -> None:
        for layer, own in reversed(self._saved):
            if own is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", own)
        self._saved = []


def record_outputs(model: keras.Model, layers: list, batches: list) -> tuple[list[tuple], list]:
    """Run ``batches`` through ``model`` eagerly in inference mode, recording ``layers``' outputs.

    Returns ``[(layer, key name, outputs over all batches)]``, one per call site in forward order (the
    k-th call of a layer called several times per pass is named ``<layer>_call<k>``), and the layers
    reached; a layer missing from the latter was never called eagerly.
    """
    with CallRecorder(layers) as recorder:
        for batch in batches:
            recorder.next_pass()
            model(batch, training=False)
    names = unique_names(recorder.sites)
    measured = [
        (layer, name, np.concatenate(recorder.outputs[(id(layer), k)]))
        for (layer, k), name in zip(recorder.sites, names)
    ]
    return measured, recorder.order


def warn_unreached(warn, layers: list, reached: list) -> None:
    """Name, once each (``warn`` is a ``_util.WarnOnce``), the ``layers`` a forward pass did not reach."""
    reached_ids = {id(layer) for layer in reached}
    for layer in layers:
        if id(layer) not in reached_ids:
            warn(
                f"unreached/{id(layer)}",
                f"layer '{layer.name}' was not called eagerly when the probe batch ran through the model "
                "(unused, or called inside a tf.function of its own), so it is not measured.",
            )
