import os
import warnings

import keras
import numpy as np
import pytest
from matplotlib.image import imread

from callbacks import FirstLayerFilters

RNG = np.random.default_rng(0)


def _cell_origin(k, cols, kh, kw, scale):
    """Top-left pixel of filter k's cell, by the layout FirstLayerFilters documents."""
    return 1 + (k // cols) * (kh * scale + 1), 1 + (k % cols) * (kw * scale + 1)


def _fit(model, x, callbacks, epochs=1):
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # the kernel stays as set
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, np.zeros((len(x), 1)), epochs=epochs, verbose=0, callbacks=callbacks)
    return [str(w.message) for w in caught if str(w.message).startswith("FirstLayerFilters")]


def _read_png(path):
    return np.round(imread(path)[..., :3] * 255).astype(int)  # PNG: floats in [0, 1]


def test_rgb_filters_land_in_their_cells(tmp_path):
    kernel = RNG.standard_normal((2, 3, 3, 5)).astype(np.float32)  # kh=2, kw=3, RGB in, 5 filters
    inputs = keras.Input((6, 6, 3))
    conv = keras.layers.Conv2D(5, (2, 3), name="first")
    x = keras.layers.Conv2D(2, 1, name="second")(conv(inputs))  # a later conv: not the one drawn
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(x)))
    conv.kernel.assign(kernel)
    messages = _fit(model, np.zeros((2, 6, 6, 3), np.float32), [FirstLayerFilters(path=tmp_path / "f.png")])
    assert messages == []
    image = _read_png(tmp_path / "f.png")
    cols, scale = 3, 48 // 3  # ceil(sqrt(5)) columns; a 3-wide kernel drawn 16x
    assert image.shape == (1 + 2 * (2 * scale + 1), 1 + 3 * (3 * scale + 1), 3)
    for k in range(5):
        f = kernel[:, :, :, k]
        expected = np.round(255 * (f - f.min()) / (f.max() - f.min()))  # all three channels together
        top, left = _cell_origin(k, cols, 2, 3, scale)
        for i in range(2):
            for j in range(3):
                pixel = image[top + i * scale + scale // 2, left + j * scale + scale // 2]
                np.testing.assert_array_equal(pixel, expected[i, j], err_msg=f"filter {k} tap {i},{j}")
        assert (image[top - 1, left : left + 3 * scale] == 255).all()  # the white line above the cell
    assert (image[34:, 99:] == 255).all()  # the sixth cell is empty
    assert os.listdir(tmp_path) == ["f.png"]  # written atomically: no temporary left


def test_other_inputs_show_the_first_channel_in_grey_even_when_nested(tmp_path):
    kernel = RNG.standard_normal((3, 3, 2, 4)).astype(np.float32)
    kernel[:, :, 1, :] *= 100.0  # the second channel must not enter the normalisation
    inputs = keras.Input((5, 5, 2))
    block = keras.Sequential([keras.layers.BatchNormalization(), keras.layers.Conv2D(4, 3, name="inner")])
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(block(inputs))))
    block.get_layer("inner").kernel.assign(kernel)
    _fit(model, np.zeros((2, 5, 5, 2), np.float32), [FirstLayerFilters(path=tmp_path / "f.png")])
    image = _read_png(tmp_path / "f.png")
    for k in range(4):
        f = kernel[:, :, 0, k]
        expected = np.round(255 * (f - f.min()) / (f.max() - f.min()))
        top, left = _cell_origin(k, 2, 3, 3, 16)
        block_centres = image[top + 8 : top + 48 : 16, left + 8 : left + 48 : 16]
        for c in range(3):
            np.testing.assert_array_equal(block_centres[..., c], expected)


def test_a_model_without_a_convolution_warns_once(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    messages = _fit(
        model, np.zeros((2, 3), np.float32), [FirstLayerFilters(path=tmp_path / "f.png")], epochs=2
    )
    assert len(messages) == 1 and "no Conv2D layer" in messages[0], messages
    assert not (tmp_path / "f.png").exists()


def test_it_needs_somewhere_to_draw():
    with pytest.raises(ValueError, match="path"):
        FirstLayerFilters()
