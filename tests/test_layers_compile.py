"""The custom layers under XLA (jit_compile) and mixed precision, in one small model."""

import keras
import numpy as np
import pytest

from layers import DropConnect, Maxout, StochasticDepth


def _model():
    inputs = keras.Input((8,))
    a = Maxout(8, pieces=2)(inputs)
    b = DropConnect(8, rate=0.3, activation="relu")(a)
    x = StochasticDepth(0.8)([a, b])
    outputs = keras.layers.Dense(3, dtype="float32")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("policy, jit", [("float32", True), ("mixed_bfloat16", False)])
def test_trains_under_xla_and_mixed_precision(policy, jit):
    keras.config.set_dtype_policy(policy)
    try:
        model = _model()
        model.compile(
            optimizer="sgd",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit,
        )
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((32, 8)).astype(np.float32), rng.integers(0, 3, 32)
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        if policy == "mixed_bfloat16":
            assert model.layers[1].compute_dtype == "bfloat16"
            assert model.layers[1].kernel.dtype == "float32"
    finally:
        keras.config.set_dtype_policy("float32")
