"""Where a training step's time goes: TensorFlow's profiler over a recipe's steps, grouped by kind of op.

    python benchmarks/profile_step.py [--recipe fast] [--steps 20] [key=value ...]

Builds the recipe's training exactly as ``cli.py run`` does (bundled sample data; the monitors off, so the
step is the step), trains a few warm-up steps, then records ``--steps`` steps with
``tf.profiler.experimental`` and reads the trace back (``*.xplane.pb``). Every op TensorFlow ran on its
compute threads is put in a group: that of the layer whose name scope it runs in (convolution, batch norm,
activation, pooling: a GELU's multiplications count as activation, their gradients too), else by its type
(element-wise arithmetic, reductions, optimizer and variable updates, other). The report gives each group's
share of the op time, the input pipeline's CPU time per step and the steps' wall time. The convolutions'
achieved rate is their FLOPs (forward, input gradient, filter gradient: 3 x 2 x the multiply-adds) over
their share of the op time applied to the step's wall time, to set beside the conv3x3 figure of
``benchmarks/machine_limit.py``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GROUPS = (  # (group, substrings of op types), first match wins
    ("convolution", ("Conv2D", "Conv3D", "DepthwiseConv")),
    ("batch norm", ("BatchNorm",)),
    ("activation", ("Erf", "Gelu", "Relu", "Elu", "Tanh", "Sigmoid", "Softplus", "UnaryOpsComposition")),
    ("pooling", ("Pool",)),
    ("optimizer and variables", ("ResourceApply", "Assign", "ReadVariable", "VarHandle")),
    ("reductions", ("Sum", "Mean", "Max", "Min", "Prod", "ArgMax", "BiasAddGrad")),
    (
        "element-wise",
        (
            "Mul",
            "Add",
            "Sub",
            "Div",
            "Square",
            "Sqrt",
            "Rsqrt",
            "Select",
            "Neg",
            "Exp",
            "Log",
            "Maximum",
            "Minimum",
            "Cast",
            "Pow",
            "Reciprocal",
            "BiasAdd",
            "Greater",
            "Less",
        ),
    ),
)
WRAPPERS = {"Process", "ExecutorDoneCallback", "RunAsync", "FunctionRun"}  # spans that contain ops


def layer_groups(model) -> dict[str, str]:
    """Layer name -> group, for the layers whose ops are grouped by the layer they belong to (a GELU's
    multiplications are the activation's time, a batch norm's reductions the batch norm's)."""
    import keras

    kinds = (
        (keras.layers.Conv2D, "convolution"),
        (keras.layers.BatchNormalization, "batch norm"),
        ((keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU), "activation"),
        (
            (keras.layers.MaxPooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.AveragePooling2D),
            "pooling",
        ),
    )
    found = {}
    for layer in model._flatten_layers(include_self=False):
        for kind, group in kinds:
            if isinstance(layer, kind):
                found[layer.name] = group
        if type(layer).__name__ == "PatchWhitening":  # a fixed-filter convolution
            found[layer.name] = "convolution"
    return found


def group_of(op_name: str, layers: dict[str, str]) -> str:
    """The group of an op named ``scope/.../op:Type``: its layer's, else by its type."""
    scope, _, op_type = op_name.rpartition(":")
    for part in scope.split("/"):
        for name in (part, re.sub(r"_\d+$", "", part)):  # Keras suffixes a layer's scope with _1, _2...
            if name in layers:
                return layers[name]
    for group, needles in GROUPS:
        if any(n in op_type for n in needles):
            return group
    return "other"


def read_trace(log_dir: str, layers: dict[str, str]) -> tuple[dict[str, float], float, float]:
    """(seconds per group of compute ops, seconds of input-pipeline work, wall seconds the steps spanned)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)[0]
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(path).read_bytes())
    host = next(p for p in space.planes if p.name == "/host:CPU")
    groups: dict[str, float] = collections.defaultdict(float)
    pipeline = 0.0
    steps: list[tuple[int, int]] = []
    for line in host.lines:
        for event in line.events:
            name = host.event_metadata[event.metadata_id].name
            op_type = name.split(":")[-1].strip()
            if line.name.startswith("tf_Compute") and op_type not in WRAPPERS:
                groups[group_of(name, layers)] += event.duration_ps * 1e-12
            elif line.name.startswith("tf_data_private_threadpool") and op_type == "Process":
                pipeline += event.duration_ps * 1e-12
            elif line.name == "python" and "multi_step_on_iterator" in name and "inference" not in name:
                start = line.timestamp_ns * 1000 + event.offset_ps
                steps.append((start, start + event.duration_ps))
    wall = (max(e for _, e in steps) - min(s for s, _ in steps)) * 1e-12 if steps else 0.0
    return dict(groups), pipeline, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. trainer.precision=mixed_bfloat16"
    )
    args = parser.parse_args()
    import keras
    import tensorflow as tf

    from recipes.data import load_data
    from recipes.engine.compute import forward_macs, layer_macs
    from recipes.engine.training import build_training
    from recipes.registry import get_recipe

    recipe = get_recipe(args.recipe)
    cfg = recipe.config(["data.name=sample", "trainer.epochs=100", *args.overrides])
    data = load_data(cfg.data, allow_download=False)
    from recipes.engine.run import precision_policy

    with precision_policy(cfg.trainer.precision):
        training = build_training(recipe, cfg, data, monitors=False)
        model = training.model
        model.fit(training.train_ds, epochs=1, steps_per_epoch=5, verbose=0)  # trace and warm up
        began = time.perf_counter()
        model.fit(training.train_ds, epochs=1, steps_per_epoch=args.steps, verbose=0)
        plain_step = (time.perf_counter() - began) / args.steps
        log_dir = tempfile.mkdtemp(prefix="profile-step-")
        tf.profiler.experimental.start(log_dir)
        model.fit(training.train_ds, epochs=1, steps_per_epoch=args.steps, verbose=0)
        tf.profiler.experimental.stop()
    groups, pipeline, wall = read_trace(log_dir, layer_groups(model))
    total = sum(groups.values())
    step = wall / args.steps if wall else plain_step
    macs = forward_macs(model)
    print(
        f"{args.recipe}, batch {training.batch_size}, precision {cfg.trainer.precision}: "
        f"{step * 1000:.0f} ms per step profiled ({plain_step * 1000:.0f} ms unprofiled), "
        f"{training.batch_size / plain_step:.0f} images/s"
    )
    print(f"op time (summed over TensorFlow's compute threads): {total / args.steps * 1000:.0f} ms per step")
    for group, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {group:26s} {seconds / total:6.1%}")
    print(f"input pipeline: {pipeline / args.steps * 1000:.0f} ms of CPU per step")
    convs = {layer.name for layer in model._flatten_layers() if isinstance(layer, keras.layers.Conv2D)}
    conv_macs = sum(v for name, v in layer_macs(model).items() if name in convs)
    conv_share = groups.get("convolution", 0.0) / total if total else 0.0
    # training FLOPs: forward, input gradient and filter gradient, 2 FLOPs per multiply-add each
    step_flops, conv_flops = (6.0 * m * training.batch_size for m in (macs, conv_macs))
    print(
        f"model: {2 * macs / 1e6:.0f} MFLOP forward per image ({conv_macs / macs:.0%} in convolutions); "
        f"the whole step at {step_flops / plain_step / 1e9:.0f} GFLOP/s"
    )
    if conv_share:
        print(
            f"convolutions alone: about {conv_flops / (plain_step * conv_share) / 1e9:.0f} GFLOP/s (their "
            "FLOPs over their share of the op time applied to the step's wall time)"
        )


if __name__ == "__main__":
    main()
