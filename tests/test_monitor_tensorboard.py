import keras
import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

from callbacks import ActivationStats, FirstLayerFilters, GradientStats


def test_monitors_write_histograms_and_the_filter_image(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6, 6, 3)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(h)))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    log_dir = tmp_path / "tb"
    callbacks = [
        GradientStats(x, y, log_dir=log_dir, max_overhead=None),
        ActivationStats(
            x, log_dir=log_dir, max_overhead=None
        ),  # monitors may share one folder: one event file each
        FirstLayerFilters(log_dir=log_dir),
    ]
    model.fit(x, y, epochs=2, verbose=0, callbacks=callbacks)

    events = EventAccumulator(str(log_dir), size_guidance={"histograms": 0, "images": 0, "tensors": 0})
    events.Reload()
    # TF2 summaries are stored as tensors, tagged as written, one per epoch (step = epoch)
    steps = {tag: [e.step for e in events.Tensors(tag)] for tag in events.Tags()["tensors"]}
    assert steps == {
        "gradients/conv": [0, 1],
        "gradients/head": [0, 1],
        "activations/conv": [0, 1],
        "first_layer_filters": [0, 1],
    }
    # a histogram is (bucket, [left edge, right edge, count]): it counts every gradient value / activation
    counts = {
        tag: make_ndarray(events.Tensors(tag)[1].tensor_proto)[:, 2].sum() for tag in steps if "/" in tag
    }
    assert counts["gradients/conv"] == 3 * 3 * 3 * 4 + 4
    assert counts["gradients/head"] == 4 * 4 * 4 * 2 + 2
    assert counts["activations/conv"] == 8 * 4 * 4 * 4
    image = events.Tensors("first_layer_filters")[1].tensor_proto
    assert len(image.string_val) == 3  # width, height, PNG bytes
    assert image.string_val[2][:8] == b"\x89PNG\r\n\x1a\n"
    assert int(image.string_val[0]) == 1 + 2 * (3 * 16 + 1)  # 4 filters: 2 columns of 3x3 taps drawn 16x
