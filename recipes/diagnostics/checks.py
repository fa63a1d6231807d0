"""The lecture's babysitting checklist, run on a recipe before a long training run (``cli.py check``).

Each check returns a :class:`CheckResult` with PASS / WARN / FAIL (or SKIP), the numbers it measured and,
when it does not pass, the lecture's advice. The checks are plain functions over a model, a loss and a few
batches, so they work on any compiled Keras setup, not only on our recipes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"


@dataclass
class CheckResult:
    name: str
    status: str
    message: str
    details: dict = field(default_factory=dict)
    advice: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _loss_from_logits(loss) -> bool | None:
    return getattr(loss, "from_logits", None)


def _is_probability_output(outputs: np.ndarray) -> bool:
    return bool(np.all(outputs >= -1e-6) and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3))


# --------------------------------------------------------------------------------------------------
# 1. Initial loss
# --------------------------------------------------------------------------------------------------


def check_initial_loss(
    model: keras.Model, loss, x: np.ndarray, y: np.ndarray, num_classes: int, tolerance: float = 0.15
) -> CheckResult:
    """With regularisation off, the loss at initialisation is about ln(C): the network starts out
    guessing uniformly. ``y`` is one-hot (or what ``loss`` expects)."""
    expected = math.log(num_classes)
    outputs = keras.ops.convert_to_numpy(model(x, training=True))
    value = float(keras.ops.convert_to_numpy(loss(y, outputs)))
    details = {"initial_loss": value, "expected": expected}
    message = f"{value:.2f} (expected {expected:.2f} for {num_classes} classes)"
    from_logits = _loss_from_logits(loss)
    if from_logits and _is_probability_output(outputs):
        return CheckResult(
            "initial loss",
            FAIL,
            message + "; the model outputs probabilities",
            details,
            "softmax is applied twice: the model ends in a softmax but the loss expects "
            "logits (from_logits=True). Remove the final softmax, or use from_logits=False.",
        )
    if from_logits is False and not _is_probability_output(outputs):
        return CheckResult(
            "initial loss",
            FAIL,
            message + "; the model outputs unnormalised scores",
            details,
            "the loss expects probabilities (from_logits=False) but the model "
            "outputs logits: use from_logits=True, or end the model in a softmax.",
        )
    if not math.isfinite(value):
        return CheckResult(
            "initial loss",
            FAIL,
            message,
            details,
            "the loss is not finite at initialisation: check the inputs for NaN and the "
            "labels for values outside 0..C-1.",
        )
    relative = abs(value - expected) / expected
    if relative <= tolerance:
        return CheckResult("initial loss", PASS, message, details)
    status = WARN if relative <= 3 * tolerance else FAIL
    return CheckResult(
        "initial loss",
        status,
        message,
        details,
        "the network does not start near uniform predictions: the output layer's initial "
        "weights are probably too large (scale them down), or the loss is set up wrong.",
    )


# --------------------------------------------------------------------------------------------------
# 2. Regularisation raises the loss
# --------------------------------------------------------------------------------------------------


def _kernels(model: keras.Model) -> list:
    return [w for w in model.trainable_weights if len(w.shape) >= 2]


def check_regularisation(
    build_model: Callable[[], keras.Model],
    make_optimizer: Callable[[float], keras.optimizers.Optimizer],
    loss,
    x: np.ndarray,
    y: np.ndarray,
    weight_decay: float,
) -> CheckResult:
    """Turning regularisation up must raise the regularised objective and shrink the weights.

    Keras applies weight decay outside the loss (decoupled), so the check measures both halves: the
    objective ``loss + sum(model.losses) + wd/2 * sum ||W||^2`` (the L2 form of decay) with the decay turned
    up 10x, and one optimizer step with and without the decay, whose kernel norms must differ in the right
    direction (the decay really reaches the weights).
    """
    strong = max(weight_decay, 1e-4) * 10
    base = build_model()
    outputs = base(x, training=True)
    data_loss = float(keras.ops.convert_to_numpy(loss(y, outputs)))
    explicit = float(sum(keras.ops.convert_to_numpy(v) for v in base.losses)) if base.losses else 0.0
    sq_norm = float(
        sum(np.sum(keras.ops.convert_to_numpy(w).astype(np.float64) ** 2) for w in _kernels(base))
    )
    off, on = data_loss + explicit, data_loss + explicit + strong / 2 * sq_norm
    start = base.get_weights()

    def step_norm(wd: float) -> float:
        model = build_model()
        model.set_weights(start)
        model.compile(optimizer=make_optimizer(wd), loss=loss)
        model.train_on_batch(x, y)
        return float(
            sum(np.sum(keras.ops.convert_to_numpy(w).astype(np.float64) ** 2) for w in _kernels(model))
        )

    plain, decayed = step_norm(0.0), step_norm(strong)
    details = {
        "loss_without": off,
        "loss_with": on,
        "weight_decay": strong,
        "kernel_sq_norm_step_without_decay": plain,
        "kernel_sq_norm_step_with_decay": decayed,
    }
    shrink = 1 - math.sqrt(decayed / plain) if plain > 0 else 0.0
    message = (
        f"objective {off:.3f} -> {on:.3f} with weight decay {strong:g}; one step shrinks the "
        f"kernels {shrink:.2%} more"
    )
    if not on > off:
        return CheckResult(
            "regularisation",
            FAIL,
            message,
            details,
            "the objective does not rise with regularisation: the model has no kernels?",
        )
    if not decayed < plain * (1 - 1e-7):
        return CheckResult(
            "regularisation",
            FAIL,
            message,
            details,
            "weight decay does not reach the kernels: check optimizer.weight_decay and "
            "exclude_from_weight_decay (only biases and norm parameters belong there).",
        )
    return CheckResult("regularisation", PASS, message, details)


# --------------------------------------------------------------------------------------------------
# 3. Overfit a tiny subset
# --------------------------------------------------------------------------------------------------


def check_overfit(model: keras.Model, x: np.ndarray, y: np.ndarray, max_steps: int = 300) -> CheckResult:
    """A compiled model (regularisation and augmentation off) must reach 100% training accuracy on a
    tiny subset; otherwise the loss curve tells whether the rate is too high, too low or the model broken."""
    losses, reached = [], None
    for step in range(max_steps):
        logs = model.train_on_batch(x, y, return_dict=True)
        losses.append(float(logs["loss"]))
        if not math.isfinite(losses[-1]):
            break
        if step % 10 == 9 or step == max_steps - 1:
            acc = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == np.argmax(y, -1)))
            if acc == 1.0:
                reached = step + 1
                break
    details = {
        "examples": len(x),
        "steps": len(losses),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "steps_to_100pct": reached,
        "losses": losses,
    }
    if reached is not None:
        return CheckResult(
            "overfit tiny subset",
            PASS,
            f"100% training accuracy on {len(x)} examples after {reached} steps "
            f"(loss {losses[0]:.3f} -> {losses[-1]:.3g})",
            details,
        )
    finite = [v for v in losses if math.isfinite(v)]
    message = (
        f"not 100% on {len(x)} examples after {len(losses)} steps (loss {losses[0]:.3f} -> {losses[-1]:.3g})"
    )
    if len(finite) < len(losses) or max(finite) > 3 * losses[0]:
        advice = (
            "the loss exploded: the learning rate is too high; lower optimizer.lr by 10x "
            "(or run the learning-rate range test)"
        )
    elif finite[-1] > 0.9 * finite[0]:
        advice = (
            "the loss hardly moved: the learning rate is too low, or the model is broken (check that "
            "the gradients reach every layer)"
        )
    else:
        advice = "the loss falls but too slowly: the learning rate is probably too low; try 3x higher"
    return CheckResult("overfit tiny subset", FAIL, message, details, advice)


# --------------------------------------------------------------------------------------------------
# 4. Learning rate range test
# --------------------------------------------------------------------------------------------------


def check_learning_rate(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    lr: float,
    *,
    steps: int = 100,
    batch_size: int = 64,
    plot_path: Path | None = None,
) -> CheckResult:
    """Run the range test; WARN when the configured rate lies outside the region where the loss falls."""
    from callbacks import find_lr

    result = find_lr(model, x, y, min_lr=1e-5, max_lr=10.0, steps=steps, batch_size=batch_size)
    if plot_path is not None:
        result.plot(plot_path)
    low, high = result.falling_range
    details = {
        "configured_lr": lr,
        "falling_from": low,
        "falling_to": high,
        "suggestion": result.suggestion,
        "diverged_at": result.diverged_at,
    }
    message = (
        f"loss falls for rates {low:.2g}..{high:.2g}"
        + (f", explodes from {result.diverged_at:.2g}" if result.diverged_at else "")
        + f"; configured optimizer.lr={lr:g}"
    )
    if low <= lr <= high:
        return CheckResult("learning rate", PASS, message, details)
    return CheckResult(
        "learning rate",
        WARN,
        message,
        details,
        f"optimizer.lr is outside the falling region; try optimizer.lr={result.suggestion:.2g}",
    )


# --------------------------------------------------------------------------------------------------
# 5. Gradient check of custom layers
# --------------------------------------------------------------------------------------------------


def custom_layers(model: keras.Model) -> list:
    """Layers whose class is not Keras's own: the ones whose gradients someone wrote."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if not type(layer).__module__.startswith("keras") and not isinstance(layer, keras.Model)
    ]


def check_gradients(model: keras.Model, tolerance: float = 1e-6) -> CheckResult:
    from layers import gradcheck

    layers_ = custom_layers(model)
    if not layers_:
        return CheckResult(
            "gradient check", SKIP, "no custom layers (Keras's own layers are tested upstream)"
        )
    rng = np.random.default_rng(0)
    errors = {}
    for layer in layers_:
        shapes = layer.input.shape if not isinstance(layer.input, list) else [t.shape for t in layer.input]
        if isinstance(shapes, list):
            inputs = [rng.standard_normal((2, *s[1:])) for s in shapes]
        else:
            inputs = rng.standard_normal((2, *shapes[1:]))
        errors[layer.name] = gradcheck(layer, inputs, training=True, max_checks=30).max_relative_error
    worst = max(errors, key=errors.get)
    message = f"max relative error {errors[worst]:.1e} ({worst}) over {len(errors)} custom layer(s)"
    if errors[worst] < tolerance:
        return CheckResult("gradient check", PASS, message, {"errors": errors})
    return CheckResult(
        "gradient check",
        FAIL,
        message,
        {"errors": errors},
        f"the analytic gradient of '{worst}' disagrees with finite differences: its "
        "hand-written gradient (or a non-differentiable op) is wrong.",
    )


# --------------------------------------------------------------------------------------------------
# 6. Activations, dead units and update ratio at initialisation
# --------------------------------------------------------------------------------------------------


def check_activations(model: keras.Model, probe: np.ndarray, plot_path: Path | None = None) -> CheckResult:
    """Dead units, collapsing or saturating activations at initialisation (the lecture's histograms)."""
    from callbacks import ActivationStats, DeadUnitMonitor

    stats = ActivationStats(probe)
    values = stats.measure(model)
    if not values:
        return CheckResult("activations", SKIP, "no activation layers to inspect")
    if plot_path is not None:
        stats.plot(plot_path)
    dead = DeadUnitMonitor(probe)
    dead.set_model(model)
    dead.on_train_begin()
    dead_values = dead.measure()
    names = [k.split("/", 1)[1] for k in values if k.startswith("act_std/")]
    stds = [values[f"act_std/{n}"] for n in names]
    saturated = {k.split("/", 1)[1]: v for k, v in values.items() if k.startswith("saturated/")}
    worst_dead = max((v for k, v in dead_values.items() if "/" in k), default=0.0)
    shrink = stds[-1] / stds[0] if stds[0] > 0 else 0.0
    details = {**values, **dead_values, "std_last_over_first": shrink}
    message = (
        f"activation std {stds[0]:.3g} (first) -> {stds[-1]:.3g} (last of {len(names)}); "
        f"dead fraction {dead_values.get('dead_fraction', 0.0):.0%} (worst layer {worst_dead:.0%})"
        + (f"; saturated up to {max(saturated.values()):.0%}" if saturated else "")
    )
    if shrink < 0.01:
        return CheckResult(
            "activations",
            FAIL,
            message + ": activations collapse towards zero",
            details,
            "the weights are too small: activations shrink layer by layer, so gradients "
            "vanish. Use Xavier init for tanh/sigmoid, He init for ReLU (model.init=he).",
        )
    if saturated and max(saturated.values()) > 0.5:
        return CheckResult(
            "activations",
            FAIL,
            message + ": units saturate",
            details,
            "the weights are too large for a saturating nonlinearity: most units sit at "
            "their bounds with zero gradient. Use Xavier init, or ReLU with He init.",
        )
    if worst_dead > 0.5:
        return CheckResult(
            "activations",
            WARN,
            message,
            details,
            "more than half of a layer's units are dead at initialisation: check the "
            "init and the biases, or try Leaky ReLU.",
        )
    if shrink < 0.1 or (saturated and max(saturated.values()) > 0.2):
        return CheckResult(
            "activations",
            WARN,
            message,
            details,
            "activation scale drifts across layers: check the initialisation.",
        )
    return CheckResult("activations", PASS, message, details)


def check_update_ratio(model: keras.Model, x: np.ndarray, y: np.ndarray) -> CheckResult:
    """The update-to-weight ratio of one optimizer step (compiled ``model``): about 1e-3 is healthy."""
    from callbacks import UpdateRatioLogger

    logger = UpdateRatioLogger()
    logger.set_model(model)
    details = dict(logger.measure_step(lambda: model.train_on_batch(x, y)))
    ratio = details.get("update_ratio")
    if ratio is None:
        return CheckResult("update ratio", SKIP, "no kernels to measure")
    message = f"update/weight ratio of one step: median {ratio:.1e} (about 1e-3 is healthy)"
    if 1e-4 <= ratio <= 1e-2:
        return CheckResult("update ratio", PASS, message, details)
    advice = (
        "updates are tiny: the learning rate is probably too low"
        if ratio < 1e-4
        else "updates are large: the learning rate is probably too high"
    )
    return CheckResult("update ratio", WARN, message, details, advice)
