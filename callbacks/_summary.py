"""TensorBoard output for the monitors: one event-file writer per monitor, opened on first use."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class EpochSummaries:
    """Histograms and images into ``log_dir`` with ``step=epoch`` (0-based, as Keras's own TensorBoard
    callback counts epochs), flushed after every epoch so a running TensorBoard sees them at once.

    Several monitors may share a ``log_dir`` (each adds its own event file, which TensorBoard reads as one
    run); pass ``run_dir / "tensorboard" / "monitors"`` to keep them beside Keras's ``train`` and
    ``validation`` runs.
    """

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self._writer = None

    def _open(self):
        import tensorflow as tf

        if self._writer is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        return tf, self._writer

    def histograms(self, prefix: str, values: dict[str, np.ndarray], step: int) -> None:
        """One histogram per entry, tagged ``<prefix>/<name>``."""
        tf, writer = self._open()
        with writer.as_default():
            for name, array in values.items():
                tf.summary.histogram(f"{prefix}/{name}", np.asarray(array, np.float32).ravel(), step=step)
        writer.flush()

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 image."""
        tf, writer = self._open()
        with writer.as_default():
            tf.summary.image(tag, np.asarray(pixels)[None], step=step)
        writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
