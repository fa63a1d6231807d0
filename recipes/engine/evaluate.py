"""The final evaluation on the test set, with test-time augmentation (TTA) over flips and shifts."""

from __future__ import annotations

import time

import keras
import numpy as np


def tta_views(x: np.ndarray, translate: int = 0) -> list[np.ndarray]:
    """The image batch and its mirror image; with ``translate``, also both shifted by ``translate`` pixels
    up-left and down-right (reflection fills the border), each with its mirror image."""
    views = [x, x[:, :, ::-1]]
    if translate:
        t = translate
        padded = np.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
        h, w = x.shape[1:3]
        for dy, dx in ((0, 0), (2 * t, 2 * t)):
            shifted = padded[:, dy : dy + h, dx : dx + w]
            views += [shifted, shifted[:, :, ::-1]]
    return views


def eval_passes(cfg) -> int:
    """Forward passes over the test set the final evaluation makes: one per TTA view."""
    if not cfg.trainer.tta:
        return 1
    return 6 if cfg.trainer.tta_translate else 2  # the image, two shifts, and each one's mirror image


def allowed_views(cfg) -> tuple[int, ...]:
    """The view counts a budget may evaluate with: the configured one, then the cheaper ones it falls
    back to (the image and its mirror image; the image alone)."""
    return tuple(v for v in (6, 2, 1) if v <= eval_passes(cfg))


def _views_setting(cfg, views: int | None) -> tuple[bool, int]:
    """``(tta, translate)`` for ``views`` passes (None: the configured ones)."""
    t = cfg.trainer
    if views is None or views >= eval_passes(cfg):
        return t.tta, t.tta_translate if t.tta else 0
    return views >= 2, 0


def predict_views(model, x: np.ndarray, batch_size: int, tta: bool, translate: int = 0) -> list[np.ndarray]:
    """The logits of each of :func:`tta_views` (only of ``x`` without ``tta``); the first is ``x``'s."""
    views = tta_views(x, translate) if tta else [x]
    return [
        keras.ops.convert_to_numpy(model.predict(np.ascontiguousarray(v), batch_size=batch_size, verbose=0))
        for v in views
    ]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def predict_tta(model, x: np.ndarray, batch_size: int, tta: bool, translate: int = 0) -> np.ndarray:
    """Class probabilities; with ``tta``, the mean over :func:`tta_views` of the softmax outputs."""
    return np.mean([softmax(z) for z in predict_views(model, x, batch_size, tta, translate)], axis=0)


def evaluate_test(model: keras.Model, data, cfg, batch_size: int, views: int | None = None) -> dict:
    """Test accuracy (with TTA when ``trainer.tta``) and without, the plain test loss, and the seconds.
    ``views``: at most this many TTA views (a budget's plan: :func:`allowed_views`), None: the config's."""
    start = time.perf_counter()
    tta, translate = _views_setting(cfg, views)
    logits = predict_views(model, data.x_test.astype(np.float32), batch_size, tta, translate)
    probs = np.mean([softmax(z) for z in logits], axis=0)
    plain = softmax(logits[0])
    onehot = keras.ops.one_hot(data.y_test, data.num_classes)
    return {
        "status": "completed",
        "test_accuracy": float(np.mean(probs.argmax(-1) == data.y_test)),
        "test_accuracy_no_tta": float(np.mean(plain.argmax(-1) == data.y_test)),
        "test_loss": float(keras.ops.convert_to_numpy(model.loss(onehot, logits[0]))),
        "test_examples": len(data.x_test),
        "tta": tta,
        "tta_translate": translate,
        "tta_views": len(logits),
        "eval_seconds": round(time.perf_counter() - start, 2),
    }
