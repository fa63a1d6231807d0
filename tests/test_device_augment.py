"""``data.augment_on``: the augmentation drawn in the pipeline and applied in the train step gives the very
batches, and so the very training, that the pipeline's own augmentation gives."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from recipes import run
from recipes.config import ConfigError, to_yaml
from recipes.data import load_data
from recipes.data.pipeline import apply_augmentation, train_dataset
from recipes.engine.device_augment import AugmentingTrainStep, augments_on_device, set_train_augmentation
from recipes.engine.run_dir import check_resume
from recipes.engine.training import build_training
from recipes.registry import get_recipe
from tests.distributed_worker import train_steps

TINY = ["data.name=sample", "data.train_limit=256", "data.val_size=100", "trainer.verbose=silent"]


def test_drawn_params_crop_flip_and_cut_out_as_numpy_does():
    images = np.arange(2 * 5 * 5 * 1, dtype=np.float32).reshape(2, 5, 5, 1) + 1
    params = {
        "offset": tf.constant([[0, 3], [2, 1]], tf.int32),
        "mirror": tf.constant([1, 0]),
        "hole": tf.constant([[-1, 3], [1, 1]], tf.int32),  # the first corner lies above the image
    }
    got = apply_augmentation(tf.constant(images), params, padding=2, cutout=2).numpy()
    expected = []
    for i, ((dy, dx), mirror, (top, left)) in enumerate([((0, 3), True, (-1, 3)), ((2, 1), False, (1, 1))]):
        view = np.pad(images[i], ((2, 2), (2, 2), (0, 0)))[dy : dy + 5, dx : dx + 5]
        view = view[:, ::-1] if mirror else view.copy()
        view[max(top, 0) : top + 2, max(left, 0) : left + 2] = 0
        expected.append(view)
    np.testing.assert_array_equal(got, np.stack(expected))
    reflected = apply_augmentation(
        tf.constant(images), {"offset": params["offset"]}, padding=2, pad_mode="reflect"
    )
    np.testing.assert_array_equal(
        reflected.numpy()[0], np.pad(images[0], ((2, 2), (2, 2), (0, 0)), "reflect")[:5, 3:8]
    )


@pytest.mark.parametrize(
    "settings",
    [
        dict(padding=4),
        dict(padding=2, pad_mode="reflect", alternate_flip=True),
        dict(padding=0, cutout=6, flip=False),
        dict(padding=3, cutout=5),
    ],
)
def test_the_device_pipeline_yields_the_host_pipelines_draws(settings):
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8), rng.integers(0, 10, 40)
    common = dict(num_classes=10, batch_size=16, seed=7, first_epoch=1, epochs=3, **settings)
    host = list(train_dataset(x, y, **common))
    device = list(train_dataset(x, y, on_device=True, **common))
    assert len(host) == len(device) == 4
    for (xh, yh), ((images, params), yd) in zip(host, device):
        assert images.dtype == tf.uint8  # a quarter of float32's bytes to copy to the accelerator
        np.testing.assert_array_equal(yh.numpy(), yd.numpy())
        applied = apply_augmentation(
            tf.cast(images, tf.float32),
            params,
            padding=settings["padding"],
            cutout=settings.get("cutout", 0),
            pad_mode=settings.get("pad_mode", "zeros"),
        )
        np.testing.assert_array_equal(xh.numpy(), applied.numpy())
    plain = list(train_dataset(x, y, augment=False, **common))  # the same images, not augmented
    assert any(not np.array_equal(a.numpy(), p.numpy()) for (a, _), (p, _) in zip(host, plain))


@pytest.mark.parametrize(
    "recipe, extra",
    [("mlp", ["model.width=16"]), ("resnet_small", ["model.depth_blocks=1", "model.width=8"])],
)
def test_training_with_device_augmentation_matches_the_pipelines(recipe, extra):
    common = [
        *TINY,
        *extra,
        "data.augment=true",
        "data.cutout=4",
        "trainer.batch_size=64",
        "trainer.epochs=1",
    ]
    host_losses, host_weights, _ = train_steps(recipe, [*common, "data.augment_on=host"])
    device_losses, device_weights, _ = train_steps(recipe, [*common, "data.augment_on=device"])
    assert len(host_losses) == 4 and np.ptp(host_losses) > 1e-4
    np.testing.assert_allclose(device_losses, host_losses, rtol=1e-6, atol=1e-6)
    for h, d in zip(host_weights, device_weights):
        np.testing.assert_allclose(d, h, rtol=1e-6, atol=1e-6)


def test_build_training_wires_the_place_it_is_given():
    recipe = get_recipe("resnet_small")
    for place, wrapped, images_dtype in (("device", True, tf.uint8), ("host", False, tf.float32)):
        cfg = recipe.config([*TINY, "model.depth_blocks=1", "model.width=8", f"data.augment_on={place}"])
        data = load_data(cfg.data, seed=cfg.trainer.seed)
        training = build_training(recipe, cfg, data, monitors=False)
        assert isinstance(training.model.train_step, AugmentingTrainStep) is wrapped
        x_spec = training.train_ds.element_spec[0]
        images = x_spec[0] if wrapped else x_spec
        assert images.dtype == images_dtype
        if wrapped:
            assert set(x_spec[1]) == {"offset", "mirror"}  # resnet_small: crops and flips, no cutout


def test_device_augmentation_compiles_under_xla_as_on_a_gpu():
    # trainer.jit_compile=auto turns XLA on with a GPU, where augment_on=auto applies the draws in the step:
    # every op of the augmentation must compile (rehearsed here on the CPU, against the pipeline's run)
    common = [*TINY, "model.width=16", "data.augment=true", "data.cutout=4", "data.pad_mode=reflect"]
    common += ["trainer.batch_size=64", "trainer.epochs=1"]
    host_losses, host_weights, _ = train_steps("mlp", [*common, "data.augment_on=host"])
    xla_losses, xla_weights, _ = train_steps(
        "mlp", [*common, "data.augment_on=device", "trainer.jit_compile=true"]
    )
    np.testing.assert_allclose(xla_losses, host_losses, rtol=1e-4, atol=1e-5)
    for h, d in zip(host_weights, xla_weights):
        np.testing.assert_allclose(d, h, rtol=1e-4, atol=1e-5)


def _model():
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    return model


def test_the_wrapper_is_put_on_once_taken_off_and_never_saved(tmp_path):
    cfg = get_recipe("resnet_small").config(["data.augment_on=device", "data.cutout=3"])
    model = _model()
    set_train_augmentation(model, cfg, True)
    set_train_augmentation(model, cfg, True)  # again (a tuner's second build): one wrapper, not two
    step = model.train_step
    assert isinstance(step, AugmentingTrainStep) and not isinstance(step.wrapped, AugmentingTrainStep)
    assert (step.padding, step.cutout, step.pad_mode) == (4, 3, "zeros")
    x = np.zeros((8, 4, 4, 3), np.uint8)
    params = {
        "offset": np.full((8, 2), 4, np.int32),
        "mirror": np.zeros(8, np.int32),
        "hole": np.zeros((8, 2), np.int32),
    }
    ds = tf.data.Dataset.from_tensors(((x, params), np.eye(2, dtype=np.float32)[np.arange(8) % 2]))
    model.fit(ds, epochs=1, verbose=0, shuffle=False)
    model.save(tmp_path / "m.keras")  # the wrapper is no weight or layer of the model
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert not isinstance(loaded.train_step, AugmentingTrainStep)
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])
    before = model.get_weights()[0].copy()
    model.train_on_batch(np.ones((8, 4, 4, 3), np.float32), np.eye(2, dtype=np.float32)[np.arange(8) % 2])
    assert not np.array_equal(model.get_weights()[0], before)  # a plain batch passes through (check, users)
    set_train_augmentation(model, cfg, False)
    assert not isinstance(model.train_step, AugmentingTrainStep) and "train_step" not in vars(model)
    assert model.train_function is None  # traced again with the class's own step at the next fit


def test_a_model_without_an_input_shape_is_refused_in_one_line():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(keras.ops.reshape(x, (-1, 48)))

    cfg = get_recipe("resnet_small").config(["data.augment_on=device"])
    for model in (Subclassed(), keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(2)])):
        with pytest.raises(ConfigError, match="needs a model whose input shape is known") as e:
            set_train_augmentation(model, cfg, True)
        assert "data.augment_on=host" in str(e.value) and "\n" not in str(e.value)


def test_a_run_resumes_with_the_augmentation_moved(tmp_path):
    # the same batches either way: moving it is no change of the run, unlike a change of what is drawn
    recipe = get_recipe("resnet_small")
    (tmp_path / "config.yaml").write_text(to_yaml(recipe.config(["data.augment_on=device"])))
    check_resume(tmp_path, recipe, recipe.config(["data.augment_on=host"]))
    with pytest.raises(ConfigError, match="data.cutout: 0 -> 4"):
        check_resume(tmp_path, recipe, recipe.config(["data.augment_on=host", "data.cutout=4"]))


def test_where_the_augmentation_runs():
    def cfg(*overrides):
        return get_recipe("resnet_small").config(list(overrides))

    assert not augments_on_device(cfg())  # auto, and no GPU here
    assert augments_on_device(cfg("data.augment_on=device"))
    assert not augments_on_device(cfg("data.augment_on=host"))
    assert not augments_on_device(cfg("data.augment_on=device", "data.augment=false"))  # nothing to apply
    assert not augments_on_device(cfg("data.augment_on=device", "data.crop_padding=0", "data.flip=false"))
    assert augments_on_device(
        cfg("data.augment_on=device", "data.crop_padding=0", "data.flip=false", "data.cutout=2")
    )


def test_auto_puts_it_on_a_visible_gpu(monkeypatch):
    gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    real = tf.config.list_physical_devices
    monkeypatch.setattr(
        tf.config, "list_physical_devices", lambda kind=None: [gpu] if kind == "GPU" else real(kind)
    )
    assert augments_on_device(get_recipe("resnet_small").config())


@pytest.mark.parametrize("bad", ["gpu", "Device", "", "cpu"])
def test_a_bad_place_is_refused_with_the_choices(bad):
    with pytest.raises(ConfigError) as e:
        get_recipe("resnet_small").config([f"data.augment_on={bad}"])
    message = str(e.value)
    assert message.startswith(f"data.augment_on={bad}") and "auto" in message and "device" in message
    assert "\n" not in message


def test_a_run_records_where_it_augmented(tmp_path):
    overrides = [
        *TINY,
        "model.depth_blocks=1",
        "model.width=8",
        "trainer.epochs=1",
        "data.augment_on=device",
        f"trainer.out_dir={tmp_path}",
    ]
    result = run("resnet_small", overrides, echo=lambda *a: None)
    assert result.metrics["augment_on"] == "device"
    assert json.loads((tmp_path / "metrics.json").read_text())["augment_on"] == "device"
