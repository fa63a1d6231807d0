"""SGD with per-variable learning-rate multipliers and lookahead, for the ``fast`` recipe.

Keras optimizers have one learning rate for every variable and an EMA with a fixed momentum. airbench
(Jordan 2024) trains batch-norm biases at 64x the rate of the kernels and pulls the weights back to a
slow copy every 5 steps with a decay that grows as ``(step / total)**3``: negligible early, strong at the
end. :class:`LookaheadSGD` is Keras's ``SGD`` with both, and optionally Muon steps for the conv kernels
(airbench94_muon, Jordan 2024: the momentum of each kernel, as a ``(inputs, filters)`` matrix, has its
singular values set near 1 by Newton-Schulz iterations, so that every direction of the update moves
alike; the kernel is kept at a fixed norm, so its step is a rotation whose size the rate sets).
"""

from __future__ import annotations

import warnings

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="recipes")
class LookaheadSGD(keras.optimizers.SGD):
    """``keras.optimizers.SGD`` plus learning-rate multipliers and a ramped lookahead.

    Args:
        lr_multipliers: ``{name fragment: factor}``; a variable whose path contains the fragment (first
            match wins) is updated with ``factor`` times the learning rate (``{"beta": 64.0}`` for batch-norm
            shifts). Weight decay is unaffected.
        lookahead_every: every this many steps, ``slow += (1 - d) * (fast - slow)`` then ``fast = slow``;
            0 turns lookahead off.
        lookahead_decay: ``d`` at the end of training; at step ``t`` it is ``decay * (t / total)**3``.
        total_steps: the planned number of steps (the ramp's length). At the last planned step the fast
            weights are replaced by the slow ones, as airbench does.
        muon_lr_scale: above 0, every 4-D variable (a ``Conv2D`` kernel, ``(h, w, inputs, filters)``)
            takes Muon steps at this many times the learning rate instead of SGD's: ``buf = mu buf + g``;
            the kernel is rescaled to Frobenius norm ``sqrt(filters)``, then moved by
            ``-rate * orthogonalize(g + mu buf)`` (Nesterov) or ``-rate * orthogonalize(buf)``, with no
            ``lr_multipliers`` factor. Other variables keep SGD. 0 turns it off.
        muon_momentum: ``mu`` of the Muon steps.
        muon_ns_steps: Newton-Schulz iterations per Muon step.
        Every other argument is ``SGD``'s.

    Example:
        >>> opt = LookaheadSGD(0.1, momentum=0.85, nesterov=True, lr_multipliers={"beta": 64.0},
        ...                    lookahead_every=5, lookahead_decay=0.95**5, total_steps=1000)
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        lr_multipliers: dict[str, float] | None = None,
        lookahead_every: int = 0,
        lookahead_decay: float = 0.95**5,
        total_steps: int = 1,
        muon_lr_scale: float = 0.0,
        muon_momentum: float = 0.6,
        muon_ns_steps: int = 3,
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
        if int(lookahead_every) != lookahead_every or lookahead_every < 0:
            raise ValueError(f"`lookahead_every` must be an integer >= 0. Received: {lookahead_every}")
        if not 0.0 <= lookahead_decay <= 1.0:
            raise ValueError(f"`lookahead_decay` must be in [0, 1]. Received: {lookahead_decay}")
        if int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(f"`total_steps` must be a positive integer. Received: {total_steps}")
        if not muon_lr_scale >= 0.0:
            raise ValueError(f"`muon_lr_scale` must be >= 0 (0 = off). Received: {muon_lr_scale}")
        if not 0.0 <= muon_momentum < 1.0:
            raise ValueError(f"`muon_momentum` must be in [0, 1). Received: {muon_momentum}")
        if int(muon_ns_steps) != muon_ns_steps or muon_ns_steps < 1:
            raise ValueError(f"`muon_ns_steps` must be an integer >= 1. Received: {muon_ns_steps}")
        self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}
        self.lookahead_every = int(lookahead_every)
        self.lookahead_decay = float(lookahead_decay)
        self.total_steps = int(total_steps)
        self.muon_lr_scale = float(muon_lr_scale)
        self.muon_momentum = float(muon_momentum)
        self.muon_ns_steps = int(muon_ns_steps)

    def multiplier(self, path: str) -> float:
        for fragment, factor in self.lr_multipliers.items():
            if fragment in path:
                return factor
        return 1.0

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._multipliers = [self.multiplier(v.path) for v in variables]
        # Keras builds the optimizer while tracing the first training step, and TensorFlow traces a step
        # that creates variables twice, dropping what the first trace assigned: initial values must come
        # from initializers. planned_steps is a variable so that a budget re-plan can shorten the run.
        self.planned_steps = self.add_variable(
            (), initializer=keras.initializers.Constant(float(self.total_steps)), name="planned_steps"
        )
        self._muon = [self.rate_sized_update(v) for v in variables]
        if self.muon_lr_scale > 0 and not any(self._muon):
            warnings.warn(
                "LookaheadSGD: muon_lr_scale > 0 but no variable is a conv kernel (4-D), so every variable "
                "takes SGD steps; set muon_lr_scale=0 (optimizer.muon_lr=0) to silence this",
                stacklevel=2,
            )
        self.muon_buffers = [
            self.add_variable_from_reference(v, "muon_momentum") if use else None
            for v, use in zip(variables, self._muon)
        ]
        self.slow_weights = [
            self.add_variable_from_reference(v, "slow", initializer=_copy_of(v))
            for v in (variables if self.lookahead_every else [])
        ]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        if self._muon[index]:
            self._muon_step(gradient, variable, learning_rate, self.muon_buffers[index])
        else:
            factor = self._multipliers[index]
            if factor != 1.0:
                learning_rate = ops.multiply(ops.cast(learning_rate, variable.dtype), factor)
            super().update_step(gradient, variable, learning_rate)
        if self.lookahead_every:
            self._lookahead(self.slow_weights[index], variable)

    def _muon_step(self, gradient, variable, learning_rate, buffer):
        momentum = self.muon_momentum
        gradient = ops.cast(gradient, variable.dtype)
        self.assign(buffer, ops.add(ops.multiply(buffer, momentum), gradient))
        direction = ops.add(gradient, ops.multiply(buffer, momentum)) if self.nesterov else buffer
        shape = variable.shape
        update = orthogonalize(ops.reshape(direction, (-1, shape[-1])), self.muon_ns_steps)
        rate = ops.multiply(ops.cast(learning_rate, variable.dtype), self.muon_lr_scale)
        norm = ops.sqrt(ops.sum(ops.square(variable)))
        rescaled = ops.multiply(variable, float(shape[-1]) ** 0.5 / (norm + 1e-12))
        self.assign(variable, ops.subtract(rescaled, ops.multiply(rate, ops.reshape(update, shape))))

    def _lookahead(self, slow, variable):
        step = ops.cast(self.iterations + 1, "float32")  # this update's 1-based number
        total = self.planned_steps
        last = ops.equal(step, total)
        due = ops.logical_or(ops.equal(ops.mod(self.iterations + 1, self.lookahead_every), 0), last)
        decay = self.lookahead_decay * ops.power(ops.minimum(step / total, 1.0), 3.0)
        decay = ops.where(last, 1.0, decay)  # the last planned step ends on the slow weights
        decay = ops.cast(decay, variable.dtype)
        moved = ops.add(slow, ops.multiply(1.0 - decay, ops.subtract(variable, slow)))
        new_slow = ops.where(due, moved, slow)
        self.assign(slow, new_slow)
        self.assign(variable, ops.where(due, new_slow, variable))

    def plain_update(self, step: int) -> bool:
        """Whether the update at ``step`` (0-based) is SGD's or Muon's alone: not a lookahead sync (every
        ``lookahead_every``-th update, and the last planned one), which also pulls the weights towards
        the slow ones (:func:`callbacks.plain_update` reads it, so that update-size monitors skip syncs)."""
        if not self.lookahead_every:
            return True
        return (step + 1) % self.lookahead_every != 0 and step + 1 != self.total_steps

    def rate_sized_update(self, variable) -> bool:
        """Whether ``variable`` takes Muon steps (a conv kernel, with ``muon_lr_scale > 0``): kept at a fixed
        norm and moved by an orthogonalised direction, so its step's size is the rate's, not the gradient's
        (:func:`callbacks.rate_sized_update` reads it, so that update-ratio warnings leave it out)."""
        return self.muon_lr_scale > 0 and len(variable.shape) == 4

    def set_total_steps(self, total_steps: int) -> None:
        """Move the end of the ramp (and the final switch to the slow weights) to ``total_steps``."""
        self.total_steps = int(total_steps)
        if self.built:
            self.planned_steps.assign(float(self.total_steps))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "lr_multipliers": dict(self.lr_multipliers),
            "lookahead_every": self.lookahead_every,
            "lookahead_decay": self.lookahead_decay,
            "total_steps": self.total_steps,
            "muon_lr_scale": self.muon_lr_scale,
            "muon_momentum": self.muon_momentum,
            "muon_ns_steps": self.muon_ns_steps,
        }


def orthogonalize(matrix, steps: int = 3):
    """``matrix`` with its singular values pushed towards 1 by ``steps`` quintic Newton-Schulz iterations
    (the coefficients of Jordan's Muon: they leave the values spread over about 0.5-1.5, which trains as well
    as the exact ``U V^T`` of the SVD at a fraction of the cost)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = matrix.shape[0] > matrix.shape[1]
    x = ops.transpose(matrix) if tall else matrix
    x = x / (ops.sqrt(ops.sum(ops.square(x))) + 1e-7)
    for _ in range(steps):
        gram = ops.matmul(x, ops.transpose(x))
        x = a * x + ops.matmul(b * gram + c * ops.matmul(gram, gram), x)
    return ops.transpose(x) if tall else x


def _copy_of(variable):
    """An initializer that starts a variable at ``variable``'s current value."""

    def initializer(shape, dtype=None):
        return ops.cast(ops.convert_to_tensor(variable), dtype or variable.dtype)

    return initializer
