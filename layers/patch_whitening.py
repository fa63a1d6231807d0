"""Patch whitening (Page 2018; Jordan 2024, airbench): a first convolution fixed to whiten image patches."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="layers")
class PatchWhitening(keras.layers.Layer):
    """A ``kernel_size`` x ``kernel_size`` valid convolution whose filters whiten the input's patches.

    :meth:`adapt` takes a sample of this layer's inputs, computes the covariance of their ``k x k x C``
    patches, and sets the ``d = k*k*C`` filters to its eigenvectors scaled by ``1 / sqrt(eigenvalue +
    eps)``, so that the outputs have (nearly) identity covariance: every direction of patch space starts
    on the same scale, which is what lets the layers after it train fast at a high learning rate. The bias
    starts at ``-W @ mean`` (zero-mean outputs). The filters come in ``+v, -v`` pairs (``2d`` output
    channels), so a following ReLU/GELU keeps both signs of every direction.

    The kernel is a frozen (non-trainable) weight; the bias trains while the non-trainable ``bias_gate``
    is 1 and stops receiving gradient once it is set to 0 (airbench trains it for the first 3 epochs).

    Args:
        kernel_size: patch side (airbench: 2).
        eps: added to the eigenvalues before the inverse square root; caps the gain of the
            low-variance (noise) directions.
        negate: add the ``-v`` filters (output channels ``2 * k*k*C`` instead of ``k*k*C``).

    Example:
        >>> whiten = PatchWhitening(2)
        >>> whiten.adapt(normalized_images[:5000])
        >>> x = keras.layers.Activation("gelu")(whiten(x))
    """

    def __init__(self, kernel_size: int = 2, eps: float = 5e-4, negate: bool = True, **kwargs):
        super().__init__(**kwargs)
        if int(kernel_size) != kernel_size or kernel_size < 1:
            raise ValueError(f"`kernel_size` must be a positive integer. Received: kernel_size={kernel_size}")
        if not eps >= 0:
            raise ValueError(f"`eps` must be >= 0. Received: eps={eps}")
        self.kernel_size = int(kernel_size)
        self.eps = float(eps)
        self.negate = bool(negate)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("PatchWhitening needs a known number of input channels")
        k = self.kernel_size
        d = k * k * int(channels)
        self.patch_dim = d
        filters = 2 * d if self.negate else d
        eye = np.eye(d, dtype="float32").reshape(k, k, int(channels), d)
        initial = np.concatenate([eye, -eye], axis=-1) if self.negate else eye
        self.kernel = self.add_weight(
            name="kernel",
            shape=(k, k, int(channels), filters),
            initializer=keras.initializers.Constant(initial),
            trainable=False,
        )
        self.bias = self.add_weight(name="bias", shape=(filters,), initializer="zeros")
        self.bias_gate = self.add_weight(name="bias_gate", shape=(), initializer="ones", trainable=False)

    def call(self, inputs):
        y = ops.conv(inputs, self.kernel, strides=1, padding="valid")
        # Same value either way; the gate only decides whether the bias receives gradient.
        gate = ops.cast(self.bias_gate, y.dtype)
        bias = ops.cast(self.bias, y.dtype)
        return y + gate * bias + (1.0 - gate) * ops.stop_gradient(bias)

    def compute_output_shape(self, input_shape):
        k = self.kernel_size
        filters = self.patch_dim * (2 if self.negate else 1)
        spatial = [None if s is None else s - k + 1 for s in input_shape[1:3]]
        return (input_shape[0], *spatial, filters)

    def patches(self, images) -> np.ndarray:
        """All ``k x k`` patches of ``images`` (N, H, W, C), flattened in the kernel's order: (P, k*k*C)."""
        x = np.asarray(images, dtype=np.float64)
        k = self.kernel_size
        n, h, w, c = x.shape
        windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # N,H',W',C,k,k
        return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, k * k * c)

    def patch_moments(self, images, chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the patches of ``images``, accumulated in chunks (float64)."""
        total, outer, count = 0.0, 0.0, 0
        for start in range(0, len(images), chunk):
            p = self.patches(images[start : start + chunk])
            total = total + p.sum(axis=0)
            outer = outer + p.T @ p
            count += len(p)
        mean = total / count
        return mean, (outer - count * np.outer(mean, mean)) / max(count - 1, 1)

    def adapt(self, images) -> None:
        """Set the filters and bias from a sample of this layer's inputs (float, N x H x W x C)."""
        images = keras.ops.convert_to_numpy(images)
        if not self.built:
            self.build(images.shape)
        mean, cov = self.patch_moments(images)
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        order = np.argsort(eigenvalues)[::-1]  # strongest direction first
        eigenvalues, eigenvectors = np.clip(eigenvalues[order], 0.0, None), eigenvectors[:, order]
        w = eigenvectors / np.sqrt(eigenvalues + self.eps)  # (d, d): column j is filter j
        b = -mean @ w
        if self.negate:
            w, b = np.concatenate([w, -w], axis=1), np.concatenate([b, -b])
        k, c = self.kernel_size, images.shape[-1]
        self.kernel.assign(w.reshape(k, k, c, -1).astype("float32"))
        self.bias.assign(b.astype("float32"))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "kernel_size": self.kernel_size,
            "eps": self.eps,
            "negate": self.negate,
        }


def adapt_whitening(model: keras.Model, images, max_images: int = 5000) -> int:
    """Adapt every :class:`PatchWhitening` layer of a functional/Sequential model to ``images`` (raw model
    inputs), each on what reaches it (after the normalisation layer, say). Returns how many were adapted."""
    count = 0
    sample = np.asarray(images[:max_images], dtype=np.float32)
    for layer in model.layers:
        if isinstance(layer, PatchWhitening):
            reach = keras.Model(model.inputs, layer.input)
            layer.adapt(reach.predict(sample, batch_size=500, verbose=0))
            count += 1
    return count
