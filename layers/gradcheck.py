"""Gradient checking: the analytic gradient against centred finite differences, in float64.

The lecture's recipe: compare ``df/dx`` from backpropagation with ``(f(x + h) - f(x - h)) / 2h`` and look
at the relative error ``|a - n| / max(|a|, |n|)``; below 1e-7 is excellent, above 1e-2 is a bug. ``f`` is
the layer's output projected onto a fixed random tensor, so every output element contributes. Stochastic
layers are checked with a fixed mask: their seed generators are reset before every evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf


@dataclass
class GradCheckResult:
    max_relative_error: float
    errors: dict[str, float] = field(default_factory=dict)  # per input / weight
    checked: int = 0  # number of entries compared

    def passed(self, tolerance: float = 1e-6) -> bool:
        return self.max_relative_error < tolerance


def _float64_copy(obj):
    """The layer or functional model rebuilt in float64 with the same weights."""

    def clone_layer(layer):
        config = {**layer.get_config(), "dtype": "float64"}
        return type(layer).from_config(config)

    if isinstance(obj, keras.Model):
        inputs = [keras.Input(batch_shape=t.shape, dtype="float64") for t in obj.inputs]
        copy = keras.models.clone_model(
            obj, input_tensors=inputs if len(inputs) > 1 else inputs[0], clone_function=clone_layer
        )
    else:
        copy = clone_layer(obj)
    return copy


def _seed_generators(obj) -> list:
    found, seen = [], set()
    layers = obj._flatten_layers(include_self=True, recursive=True)
    for layer in layers:
        for value in vars(layer).values():
            if isinstance(value, keras.random.SeedGenerator) and id(value) not in seen:
                seen.add(id(value))
                found.append(value)
    return found


@dataclass
class ProjectedOutput:
    """A float64 copy of a layer whose output, projected onto a fixed random tensor, is the function
    checked: ``terms(tensors)`` is the element-wise product (its sum is ``f``), evaluated with the seed
    generators reset to one state, so stochastic layers draw the same mask every time. ``x_vars`` are the
    inputs as float64 variables and ``weights`` the copy's trainable weights, the variables to bump."""

    terms: object
    x_vars: list
    weights: list


def projected_output(layer_or_model, inputs, *, training: bool, seed: int) -> ProjectedOutput:
    """The set-up :func:`gradcheck` (and ``cli.py check``'s gradient check) differentiate: a built
    float64 copy of ``layer_or_model`` with its weights, and ``f = sum(output * projection)``."""
    multi = isinstance(inputs, (list, tuple))
    xs = [np.asarray(x, dtype=np.float64) for x in (inputs if multi else [inputs])]
    if not layer_or_model.built:
        layer_or_model(xs if multi else xs[0])
    original_weights = [np.asarray(w, dtype=np.float64) for w in layer_or_model.get_weights()]
    target = _float64_copy(layer_or_model)
    target(xs if multi else xs[0], training=training)  # build
    target.set_weights(original_weights)
    generators = _seed_generators(target)
    states = [keras.ops.convert_to_numpy(g.state) for g in generators]
    out_shape = keras.ops.shape(target(xs if multi else xs[0], training=training))
    projection = tf.constant(np.random.default_rng(seed).standard_normal(tuple(out_shape)))

    def terms(tensors) -> tf.Tensor:
        for g, s in zip(generators, states):
            g.state.assign(s)
        out = target(tensors if multi else tensors[0], training=training)
        return tf.cast(out, tf.float64) * projection

    return ProjectedOutput(terms, [tf.Variable(x) for x in xs], list(target.trainable_weights))


def gradcheck(
    layer_or_model, inputs, *, training: bool = False, eps: float = 1e-4, max_checks: int = 100, seed: int = 0
) -> GradCheckResult:
    """Maximum relative error between analytic and numeric gradients of a layer or a small model.

    Gradients are taken with respect to every input and every trainable weight; up to ``max_checks``
    randomly chosen entries of each are compared. ``eps = 1e-4`` balances, in float64, the truncation
    error of the centred difference (order ``eps**2``) against round-off (order ``1e-16 / eps``), which
    otherwise dominates for small gradient entries. ``inputs`` is one array or a list of arrays (a layer
    called on a list, such as ``StochasticDepth``). With ``training=True`` stochastic layers run in
    training mode with one fixed random mask.

    Example:
        >>> result = gradcheck(Maxout(4, pieces=3), np.random.randn(5, 6))
        >>> assert result.max_relative_error < 1e-6
    """
    f = projected_output(layer_or_model, inputs, training=training, seed=seed)
    x_vars, weights = f.x_vars, f.weights
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(f.terms(x_vars))
    grads = tape.gradient(value, x_vars + [w.value for w in weights])

    rng = np.random.default_rng(seed + 1)
    result = GradCheckResult(0.0)
    names = [f"input_{i}" for i in range(len(x_vars))] + [w.path for w in weights]
    for name, var, grad in zip(names, x_vars + weights, grads):
        analytic = np.zeros(tuple(var.shape)) if grad is None else np.asarray(grad, dtype=np.float64)
        base = keras.ops.convert_to_numpy(var).astype(np.float64)
        flat = base.reshape(-1)
        picks = rng.choice(flat.size, size=min(max_checks, flat.size), replace=False)
        worst = 0.0
        for i in picks:
            values = []
            for sign in (1.0, -1.0):
                bumped = flat.copy()
                bumped[i] += sign * eps
                var.assign(bumped.reshape(base.shape))
                values.append(float(tf.reduce_sum(f.terms(x_vars))))
            var.assign(base)
            numeric = (values[0] - values[1]) / (2 * eps)
            a = float(analytic.reshape(-1)[i])
            scale = max(abs(a), abs(numeric))
            error = abs(a - numeric) / scale if scale > 1e-12 else 0.0
            worst = max(worst, error)
        result.errors[name] = worst
        result.checked += len(picks)
        result.max_relative_error = max(result.max_relative_error, worst)
    return result
