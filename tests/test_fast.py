"""The ``fast`` recipe: builds, trains on real images, whitens, starts from identities; TTA averages views."""

import json
import subprocess
import sys

import keras
import numpy as np

from recipes import run
from recipes.engine.evaluate import predict_tta
from tests.conftest import ROOT

SMOKE = [
    "data.name=sample",
    "data.train_limit=300",
    "data.val_size=100",
    "trainer.batch_size=50",
    "trainer.verbose=silent",
    "model.width1=8",
    "model.width2=16",
    "model.width3=16",
]


def test_fast_trains_on_real_images_and_freezes_the_whitening_bias(tmp_path):
    overrides = [*SMOKE, "trainer.epochs=2", "model.whiten_bias_epochs=1", f"trainer.out_dir={tmp_path}"]
    result = run("fast", overrides, echo=lambda *a: None)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 2
    assert metrics["tta"] is True and metrics["tta_translate"] == 1
    assert np.isfinite(metrics["test_loss"]) and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert result.metrics["test_accuracy"] == metrics["test_accuracy"]
    model = keras.saving.load_model(tmp_path / "model.keras")
    whiten = model.get_layer("whiten")
    # the saved whitening kernel is the fitted one, not the identity it was built with
    kernel = keras.ops.convert_to_numpy(whiten.kernel)
    assert not np.allclose(kernel[..., :12].reshape(12, 12), np.eye(12))
    assert float(keras.ops.convert_to_numpy(whiten.bias_gate)) == 0.0  # frozen from epoch 2 on
    # a fresh process loads the checkpoint (optimizer and all) and model.keras after `import recipes`
    load = (
        "import sys; sys.path.insert(0, sys.argv[1]); from recipes import load_model; "
        "m = load_model(sys.argv[2]); load_model(sys.argv[3]); print(type(m.optimizer).__name__)"
    )
    ckpt = sorted((tmp_path / "checkpoints").glob("epoch-*.keras"))[-1]
    proc = subprocess.run(
        [sys.executable, "-c", load, str(ROOT), str(ckpt), str(tmp_path / "model.keras")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "LookaheadSGD", proc.stderr[-1500:]


def test_each_trick_is_a_switch(tmp_path):
    from recipes.registry import get_recipe

    recipe = get_recipe("fast")
    cfg = recipe.config(
        [
            "model.whitening=false",
            "model.identity_init=false",
            "optimizer.lookahead_every=0",
            "optimizer.bias_lr_scale=1",
            "optimizer.muon_lr=0",
            "data.alternate_flip=false",
            "trainer.tta=false",
        ]
    )
    stats = {"mean": [0.0] * 3, "variance": [1.0] * 3, "num_classes": 10, "input_shape": (32, 32, 3)}
    model = recipe.build_model(cfg, stats)
    assert model.get_layer("whiten").__class__.__name__ == "Conv2D"
    conv = keras.ops.convert_to_numpy(model.get_layer("block2_conv1").kernel)
    assert conv[1, 1, 0, 0] != 1.0


def test_partial_identity_convs_copy_their_input_channels():
    from recipes.zoo.fast import PartialIdentity

    kernel = keras.ops.convert_to_numpy(PartialIdentity()((3, 3, 4, 6)))
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 4)).astype(np.float32)
    y = keras.ops.convert_to_numpy(keras.ops.conv(x, kernel, padding="same"))
    np.testing.assert_allclose(y[..., :4], x, atol=1e-6)  # the first 4 filters are identities
    assert np.abs(kernel[..., 4:]).sum() > 0  # the others are random


class PixelLinear(keras.Model):
    """Logits that depend on where each pixel is, so that every view gives different predictions."""

    def __init__(self):
        super().__init__(name="pixel_linear")
        self.w = np.random.default_rng(1).normal(size=(32 * 32 * 3, 10)).astype(np.float32) / 100

    def call(self, x):
        return keras.ops.matmul(keras.ops.reshape(x, (-1, 32 * 32 * 3)), self.w)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_tta_predicts_the_average_of_the_views():
    model = PixelLinear()
    x = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)

    def reflect(i):
        return -i if i < 0 else (2 * 31 - i if i > 31 else i)

    def shifted(img, d):  # out[i, j] = img[i + d, j + d], reflected at the border
        idx = [reflect(i + d) for i in range(32)]
        return img[:, idx][:, :, idx]

    def probs(view):
        return _softmax(view.reshape(len(view), -1) @ model.w)

    views = [x, x[:, :, ::-1]]
    for d in (-1, 1):
        views += [shifted(x, d), shifted(x, d)[:, :, ::-1]]
    expected = np.mean([probs(v) for v in views], axis=0)
    np.testing.assert_allclose(
        predict_tta(model, x, 8, tta=True, translate=1), expected, rtol=1e-4, atol=1e-5
    )
    flip_only = np.mean([probs(v) for v in views[:2]], axis=0)
    np.testing.assert_allclose(predict_tta(model, x, 8, tta=True), flip_only, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(predict_tta(model, x, 8, tta=False), probs(x), rtol=1e-4, atol=1e-5)


def test_alternating_flip_mirrors_each_image_the_other_way_on_the_next_epoch():
    from recipes.data.pipeline import train_dataset

    rng = np.random.default_rng(3)
    x = rng.integers(1, 256, (16, 32, 32, 3), dtype=np.uint8)
    x[:, :, :16] = 0  # left half black: an image is mirrored when its right half is black
    y = np.arange(16) % 10
    ds = train_dataset(
        x, y, num_classes=10, batch_size=16, seed=0, first_epoch=0, epochs=3, padding=0, alternate_flip=True
    )
    epochs = [images for images, _ in ds.as_numpy_iterator()]

    def mirrored(images):
        key = [np.sort(img.reshape(-1)).tobytes() for img in images]  # the same for an image and its mirror
        return {k: bool(img[:, 16:].max() == 0) for k, img in zip(key, images)}

    m0, m1, m2 = (mirrored(e) for e in epochs)
    assert 0 < sum(m0.values()) < 16  # the first epoch flips at random
    assert all(m1[k] != m0[k] for k in m0)  # then each image the other way
    assert m2 == m0


def _torch_sgd_trajectory(lr: float, l2: float, momentum: float, grad, w0: float, steps: int) -> float:
    """PyTorch's SGD (L2 added to the gradient, Nesterov momentum) written out from its documentation."""
    w, buf = w0, None
    for _ in range(steps):
        d = grad(w) + l2 * w
        buf = d if buf is None else momentum * buf + d
        w -= lr * (d + momentum * buf)
    return w


def _keras_sgd_trajectory(lr: float, weight_decay: float, momentum: float, grad, w0: float, steps: int):
    w = keras.Variable(np.float32(w0))
    opt = keras.optimizers.SGD(lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    for _ in range(steps):
        opt.apply_gradients([(keras.ops.convert_to_tensor(np.float32(grad(float(w.numpy())))), w)])
    return float(w.numpy())


def test_airbench_hyperparameters_give_the_reference_steps_and_decay():
    """airbench94 (batch 1024): lr 11.5 / kilostep on a summed loss, L2 0.0153 * 1024 / kilostep added to
    the gradient. Keras SGD with the converted values, on a mean loss, must move and decay alike."""
    from recipes.zoo.fast import airbench_hyperparameters

    batch, momentum = 256, 0.85
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    torch_lr, torch_l2 = 11.5 / kilostep, 0.0153 * batch / kilostep
    keras_hyper = airbench_hyperparameters(batch)

    # The step: every example's loss has gradient 0.01, so the summed loss's is batch * 0.01; no decay.
    moved_torch = 1.0 - _torch_sgd_trajectory(torch_lr, 0.0, momentum, lambda w: batch * 0.01, 1.0, 60)
    moved_keras = 1.0 - _keras_sgd_trajectory(keras_hyper["lr"], None, momentum, lambda w: 0.01, 1.0, 60)
    np.testing.assert_allclose(moved_keras, moved_torch, rtol=1e-4)

    # The decay: no data gradient, 200 steps. PyTorch's L2 goes through momentum and lags a few steps
    # behind the decoupled decay, hence 3%; a decay 10x off would be off by a factor of about 10.
    l2_torch = torch_l2 / torch_lr  # airbench's param-group weight_decay (wd / lr)
    kept_torch = _torch_sgd_trajectory(torch_lr, l2_torch, momentum, lambda w: 0.0, 1.0, 200)
    kept_keras = _keras_sgd_trajectory(
        keras_hyper["lr"], keras_hyper["weight_decay"], momentum, lambda w: 0.0, 1.0, 200
    )
    assert 0.2 < kept_torch < 0.8  # the decay is strong: a third to two thirds of the weight is gone
    np.testing.assert_allclose(np.log(kept_keras), np.log(kept_torch), rtol=0.03)


def test_a_budget_evaluates_with_the_views_its_plan_chose():
    from types import SimpleNamespace

    from recipes.engine.evaluate import allowed_views, evaluate_test
    from recipes.registry import get_recipe

    model = PixelLinear()
    model.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 255, (40, 32, 32, 3)).astype(np.float32)
    data = SimpleNamespace(x_test=x, y_test=rng.integers(0, 10, 40), num_classes=10)
    cfg = get_recipe("fast").config()  # trainer.tta with 1-pixel shifts: 6 views

    def probs(view):
        return _softmax(view.reshape(len(view), -1) @ model.w)

    assert allowed_views(cfg) == (6, 2, 1)
    flip_only = np.mean([probs(x), probs(x[:, :, ::-1])], axis=0).argmax(-1)
    two = evaluate_test(model, data, cfg, 16, views=2)
    assert (two["tta_views"], two["tta"], two["tta_translate"]) == (2, True, 0)
    assert two["test_accuracy"] == np.mean(flip_only == data.y_test)
    one = evaluate_test(model, data, cfg, 16, views=1)
    assert (one["tta_views"], one["tta"]) == (1, False)
    assert one["test_accuracy"] == one["test_accuracy_no_tta"] == np.mean(probs(x).argmax(-1) == data.y_test)
    assert evaluate_test(model, data, cfg, 16)["tta_views"] == 6  # no plan: the config's views
    assert allowed_views(get_recipe("fast").config(["trainer.tta=false"])) == (1,)
    assert allowed_views(get_recipe("fast").config(["trainer.tta_translate=0"])) == (2, 1)
