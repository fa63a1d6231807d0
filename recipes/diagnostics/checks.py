"""The lecture's babysitting checklist, run on a recipe before a long training run (``cli.py check``).

Each check returns a :class:`CheckResult` with PASS / WARN / FAIL (or SKIP), the numbers it measured and,
when it does not pass, the lecture's advice. The checks are plain functions over a model, a loss and a few
batches, so they work on any compiled Keras setup, not only on our recipes.
"""

from __future__ import annotations

import functools
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

# The classifier the hidden layers are measured with: N(0, (GAIN / sqrt(fan_in))^2), seeded. Hidden outputs
# of unit scale (what He and Xavier initialisation aim for) give logits of std GAIN, and a loss of about
# ln(C) + GAIN^2 / 2 = ln(C) + 0.03; outputs 10x too large, logits of std 2.5 and about ln(C) + 2 (FAIL).
RANDOM_CLASSIFIER_GAIN = 0.25
RANDOM_CLASSIFIER_SEED = 0


def classifier_layer(model: keras.Model):
    """The classifier: the last layer (nested ones included) that has a kernel, or None."""
    found = None
    for layer in model._flatten_layers(include_self=False, recursive=True):
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and len(kernel.shape) >= 2:
            found = layer
    return found


def _loss_status(value: float, expected: float, tolerance: float) -> str:
    relative = abs(value - expected) / expected
    if relative <= tolerance:
        return PASS
    return WARN if relative <= 3 * tolerance else FAIL


def _worst(*statuses: str) -> str:
    return max(statuses, key=[SKIP, PASS, WARN, FAIL].index)


def check_initial_loss(
    model: keras.Model, loss, x: np.ndarray, y: np.ndarray, num_classes: int, tolerance: float = 0.15
) -> CheckResult:
    """With regularisation off, the loss at initialisation is about ln(C): the network starts out
    guessing uniformly. ``y`` is one-hot (or what ``loss`` expects).

    Measured twice: on the model as built (a softmax applied twice, or a classifier initialised too large,
    shows here), and with the classifier's kernel (the last layer with one) replaced by a random one of
    std ``RANDOM_CLASSIFIER_GAIN / sqrt(fan_in)``. A zero-initialised classifier outputs ln(C) whatever the
    layers below it do; the random one turns the scale of the hidden layers' outputs into the loss. The
    model is left as it was (every weight, moving statistics included, is restored).
    """
    expected = math.log(num_classes)
    classifier = classifier_layer(model)
    outputs, probe = _outputs_as_built_and_with_a_random_classifier(model, classifier, x)
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
    status, advice = _loss_status(value, expected, tolerance), []
    if status != PASS:
        advice.append(
            "the network does not start near uniform predictions: the output layer's initial "
            "weights are probably too large (scale them down), or the loss is set up wrong."
        )
    if probe is not None:
        probe_status, note, probe_advice = _random_classifier_verdict(
            loss, y, probe, classifier.name, expected, tolerance, details
        )
        message += note
        advice += probe_advice
        status = _worst(status, probe_status)
    return CheckResult("initial loss", status, message, details, " ".join(advice))


def _outputs_as_built_and_with_a_random_classifier(
    model, classifier, x
) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's outputs on ``x``, and (when it has a classifier) those with the classifier's kernel
    replaced by a seeded random one of std ``RANDOM_CLASSIFIER_GAIN / sqrt(fan_in)``. Every weight, moving
    statistics included, is restored after."""
    snapshot = model.get_weights()
    try:
        outputs = keras.ops.convert_to_numpy(model(x, training=True))
        if classifier is None:
            return outputs, None
        shape = tuple(classifier.kernel.shape)
        std = RANDOM_CLASSIFIER_GAIN / math.sqrt(math.prod(shape[:-1]))
        rng = np.random.default_rng(RANDOM_CLASSIFIER_SEED)
        classifier.kernel.assign(rng.normal(0.0, std, shape).astype(classifier.kernel.dtype))
        return outputs, keras.ops.convert_to_numpy(model(x, training=True))
    finally:
        model.set_weights(snapshot)


def _random_classifier_verdict(
    loss, y, probe: np.ndarray, name: str, expected: float, tolerance: float, details: dict
) -> tuple[str, str, list[str]]:
    """Status, message addition and advice of the loss with a random classifier (``details`` gains its
    figures): far above ln(C) means the hidden layers' outputs are badly scaled."""
    probed = float(keras.ops.convert_to_numpy(loss(y, probe)))
    spread = float(np.sqrt(np.mean(np.var(probe.astype(np.float64), axis=-1))))
    details.update(
        {
            "classifier": name,
            "initial_loss_random_classifier": probed,
            "logit_std_random_classifier": spread,
        }
    )
    note = f"; {probed:.2f} with a random classifier (logit std {spread:.2g})"
    status = _loss_status(probed, expected, tolerance) if math.isfinite(probed) else FAIL
    if status == PASS:
        return status, note, []
    return (
        status,
        note,
        [
            f"with a random classifier ('{name}', std {RANDOM_CLASSIFIER_GAIN:g}/sqrt(fan_in)) "
            f"the logits have std {spread:.2g}, where hidden outputs of unit scale give about "
            f"{RANDOM_CLASSIFIER_GAIN:g}: the hidden layers' outputs are about "
            f"{spread / RANDOM_CLASSIFIER_GAIN:.3g}x too large (a zero-initialised classifier hides "
            "this until the first step). Check the hidden layers' initialisation (He for ReLU, Xavier "
            "for tanh: model.init=auto) and the input normalisation."
        ],
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

# The centred difference's h, as in layers.gradcheck: truncation error h^2 against round-off 1e-16 / h.
GRADIENT_STEP = 1e-4
MAX_ENTRIES = 30  # entries compared per input and per weight of each layer
TOO_SMALL = 1e-10  # gradients below this (both) are left uncompared: round-off, not a derivative


def custom_layers(model: keras.Model) -> list:
    """Layers whose class is not Keras's own: the ones whose gradients someone wrote."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if not type(layer).__module__.startswith("keras") and not isinstance(layer, keras.Model)
    ]


@dataclass
class EntryCounts:
    """What the gradient check found in one tensor (an input or a weight of a layer)."""

    checked: int = 0
    compared: int = 0  # entries whose relative error counts (nonzero, not a kink, not too small)
    kinks: int = 0  # entries where [x - h, x + h] crosses a kink: excluded
    too_small: int = 0  # entries where both gradients are below the comparable size: excluded
    max_error: float = 0.0


def classify_entry(
    analytic: float,
    f_plus: float,
    f_centre: float,
    f_minus: float,
    *,
    h: float,
    floor: float,
    tolerance: float,
) -> tuple[str, float]:
    """``("agree" | "differ" | "kink" | "too small", relative error)`` for one entry of a gradient.

    ``f_plus``, ``f_centre``, ``f_minus`` are the objective at ``x + h``, ``x``, ``x - h``. The centred
    difference crosses a kink (a ReLU at zero, a tie in a max) when ``[x - h, x + h]`` contains one: a kink
    of slopes ``a`` and ``b`` at distance ``d`` from ``x`` makes the difference miss the derivative by
    ``|b - a| (h - d) / 2h``, and makes the second difference ``f(x + h) - 2 f(x) + f(x - h)`` exactly
    ``(b - a)(h - d)``: an error that the second difference accounts for (``|D2| / 2h`` at least half of it)
    is a kink's. A smooth function has ``|D2| / 2h = h |f''| / 2``, far below a wrong gradient's error.
    """
    numeric = (f_plus - f_minus) / (2 * h)
    scale = max(abs(analytic), abs(numeric))
    if scale == 0.0:
        return "agree", 0.0
    if scale < floor:
        return "too small", 0.0
    error = abs(analytic - numeric) / scale
    if error < tolerance:
        return "agree", error
    if abs(f_plus - 2 * f_centre + f_minus) / (2 * h) >= 0.5 * abs(analytic - numeric):
        return "kink", error
    return "differ", error


def compare_gradients(
    layer, inputs, *, tolerance: float = 1e-6, max_checks: int = MAX_ENTRIES, seed: int = 0
) -> dict[str, EntryCounts]:
    """Per input and weight of ``layer`` (called on ``inputs`` in training mode, with one fixed random
    mask): the entries compared with centred finite differences in float64, as
    :func:`layers.gradcheck.gradcheck` does, sorted into agreeing, differing, kink crossings and too small.

    An entry is too small to compare when both gradients are below ``TOO_SMALL`` or below what round-off
    allows at ``tolerance``: ``10 * eps * sum|terms of f| / (h * tolerance)``, with ``eps`` float64's.
    """
    import tensorflow as tf

    from layers.gradcheck import projected_output

    h = GRADIENT_STEP
    f = projected_output(layer, inputs, training=True, seed=seed)
    terms, x_vars, weights = f.terms, f.x_vars, f.weights

    def objective(tensors) -> tuple[float, float]:
        t = terms(tensors)
        return float(tf.reduce_sum(t)), float(tf.reduce_sum(tf.abs(t)))

    with tf.GradientTape() as tape:
        value = tf.reduce_sum(terms(x_vars))
    grads = tape.gradient(value, x_vars + [w.value for w in weights])
    centre, magnitude = objective(x_vars)
    floor = max(TOO_SMALL, 10 * np.finfo(np.float64).eps * magnitude / (h * tolerance))

    rng = np.random.default_rng(seed + 1)
    found: dict[str, EntryCounts] = {}
    names = [f"input_{i}" for i in range(len(x_vars))] + [w.path for w in weights]
    for name, var, grad in zip(names, x_vars + weights, grads):
        analytic = np.zeros(tuple(var.shape)) if grad is None else np.asarray(grad, dtype=np.float64)
        base = keras.ops.convert_to_numpy(var).astype(np.float64)
        flat = base.reshape(-1)
        counts = found[name] = EntryCounts()
        for i in rng.choice(flat.size, size=min(max_checks, flat.size), replace=False):
            values = []
            for sign in (1.0, -1.0):
                bumped = flat.copy()
                bumped[i] += sign * h
                var.assign(bumped.reshape(base.shape))
                values.append(objective(x_vars)[0])
            var.assign(base)
            kind, error = classify_entry(
                float(analytic.reshape(-1)[i]),
                values[0],
                centre,
                values[1],
                h=h,
                floor=floor,
                tolerance=tolerance,
            )
            counts.checked += 1
            if kind == "kink":
                counts.kinks += 1
            elif kind == "too small":
                counts.too_small += 1
            else:
                counts.compared += 1
                counts.max_error = max(counts.max_error, error)
    return found


def _random_inputs(layer, rng):
    shapes = layer.input.shape if not isinstance(layer.input, list) else [t.shape for t in layer.input]
    if isinstance(shapes, list):
        return [rng.standard_normal((2, *s[1:])) for s in shapes]
    return rng.standard_normal((2, *shapes[1:]))


def check_gradients(model: keras.Model, tolerance: float = 1e-6) -> CheckResult:
    """Every custom layer's gradients against centred finite differences in float64 (see
    :func:`compare_gradients`), on two random N(0, 1) examples.

    Entries whose finite difference crosses a kink (ReLU, max) are excluded and counted; so are entries
    whose gradients are both too small to tell from round-off. FAIL when a compared entry's relative error
    reaches ``tolerance``; WARN when a tensor that has nonzero gradients had none left to compare.
    """
    layers_ = custom_layers(model)
    if not layers_:
        return CheckResult(
            "gradient check", SKIP, "no custom layers (Keras's own layers are tested upstream)"
        )
    rng = np.random.default_rng(0)
    found = {
        layer.name: compare_gradients(layer, _random_inputs(layer, rng), tolerance=tolerance)
        for layer in layers_
    }
    errors = {
        name: max((c.max_error for c in tensors.values()), default=0.0) for name, tensors in found.items()
    }
    kinks = {name: sum(c.kinks for c in tensors.values()) for name, tensors in found.items()}
    small = {name: sum(c.too_small for c in tensors.values()) for name, tensors in found.items()}
    unverified = {  # tensors with nonzero gradients of which no entry was left to compare
        f"{name}/{tensor}": c
        for name, tensors in found.items()
        for tensor, c in tensors.items()
        if c.compared == 0 and (c.kinks or c.too_small)
    }
    details = {
        "errors": errors,
        "kink_crossings": kinks,
        "too_small": small,
        "entries": {name: {t: asdict(c) for t, c in tensors.items()} for name, tensors in found.items()},
    }
    worst = max(errors, key=errors.get)
    message = f"max relative error {errors[worst]:.1e} ({worst}) over {len(errors)} custom layer(s)"
    notes = []
    if sum(kinks.values()):
        crossed = ", ".join(f"{n} {k}" for n, k in kinks.items() if k)
        notes.append(f"excluded where the difference crosses a kink (ReLU, max): {crossed} entries")
    if sum(small.values()):
        tiny = ", ".join(f"{n} {k}" for n, k in small.items() if k)
        notes.append(f"excluded as too small to compare: {tiny} entries")
    message += "".join(f"; {note}" for note in notes)
    if errors[worst] >= tolerance:
        return CheckResult(
            "gradient check",
            FAIL,
            message,
            details,
            f"the analytic gradient of '{worst}' disagrees with finite differences: its "
            "hand-written gradient (or a non-differentiable op) is wrong.",
        )
    if unverified:
        advice = f"no entry of {', '.join(unverified)} could be compared"
        if any(c.too_small for c in unverified.values()):
            advice += (
                f": gradients below {TOO_SMALL:g} (or below what float64 round-off allows) cannot be told "
                "apart from noise; scale the layer's inputs or weights up to check it (a gradient this "
                "small also vanishes in training)"
            )
        if any(c.kinks for c in unverified.values()):
            advice += (
                "; every difference crossed a kink: move the weights or inputs away from the kinks "
                "(ties in a max, zeros of a ReLU) to check them"
            )
        return CheckResult("gradient check", WARN, message, details, advice + ".")
    return CheckResult("gradient check", PASS, message, details)


# --------------------------------------------------------------------------------------------------
# 6. Activations and dead units at initialisation; the update ratio once momentum is steady
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
            "vanish. Use Xavier init for tanh/sigmoid, He init for ReLU (model.init=auto picks them).",
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


# Momentum takes ~1/(1 - momentum) steps to build up: the first Nesterov step at momentum 0.9 is (1 + 0.9)
# lr g against the steady lr g / (1 - 0.9), 5.3x smaller (10x without Nesterov). The update ratio is
# measured once the slowest moving average of the optimizer (SGD and RMSprop momentum, Adam's beta_1,
# RMSprop's rho) has reached 95% of its steady weight: ln(0.05) / ln(momentum) steps (29 at 0.9, 59 at
# 0.95), at least BURN_IN_MIN and at most BURN_IN_MAX.
BURN_IN_MIN, BURN_IN_MAX = 20, 100


def burn_in_steps(optimizer: keras.optimizers.Optimizer) -> int:
    """Steps before the update ratio is steady, from the optimizer's moving-average coefficients."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    coefficients = []
    for name in ("momentum", "beta_1", "rho"):
        try:
            coefficients.append(float(getattr(optimizer, name)))
        except (AttributeError, TypeError, ValueError):
            continue
    slowest = max((c for c in coefficients if 0 < c < 1), default=0.0)
    steps = math.ceil(math.log(0.05) / math.log(slowest)) if slowest else 0
    return min(BURN_IN_MAX, max(BURN_IN_MIN, steps))


def check_update_ratio(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 128,
    burn_in: int | None = None,
    steps: int = 5,
) -> CheckResult:
    """The update-to-weight ratio of the optimizer's steps (compiled ``model``): about 1e-3 is healthy.

    Trains ``burn_in`` steps first (default :func:`burn_in_steps`: until momentum is steady), then takes
    the median over the next ``steps`` steps of each step's median ratio over the layers' kernels. Batches
    of ``batch_size`` cycle through ``x``. The first step's ratio is in the details, for comparison.
    """
    from callbacks import UpdateRatioLogger

    if burn_in is None:
        burn_in = burn_in_steps(model.optimizer)
    batch_size = max(1, min(batch_size, len(x)))
    starts = list(range(0, len(x) - batch_size + 1, batch_size))
    logger = UpdateRatioLogger()
    logger.set_model(model)
    measured: list[dict[str, float]] = []
    first = None
    for step in range(burn_in + steps):
        start = starts[step % len(starts)]
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        if step == 0 or step >= burn_in:
            ratios = dict(logger.measure_step(functools.partial(model.train_on_batch, xb, yb)))
            if "update_ratio" not in ratios:
                return CheckResult("update ratio", SKIP, "no kernels to measure")
            if step == 0:
                first = ratios["update_ratio"]
            if step >= burn_in:
                measured.append(ratios)
        else:
            model.train_on_batch(xb, yb)
    details = {key: float(np.median([m[key] for m in measured])) for key in measured[0]}
    details.update({"first_step_update_ratio": first, "burn_in_steps": burn_in, "measured_steps": steps})
    ratio = details["update_ratio"]
    message = (
        f"update/weight ratio after {burn_in} burn-in steps: median {ratio:.1e} over {steps} steps "
        f"(first step {first:.1e}; about 1e-3 is healthy)"
    )
    if 1e-4 <= ratio <= 1e-2:
        return CheckResult("update ratio", PASS, message, details)
    advice = (
        "updates are tiny: the learning rate is probably too low"
        if ratio < 1e-4
        else "updates are large: the learning rate is probably too high"
    )
    return CheckResult("update ratio", WARN, message, details, advice)
