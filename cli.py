"""Command line: ``python cli.py VERB recipe=NAME key=value ...``.

Verbs: ``run`` (train and evaluate), ``list`` (recipes), ``show`` (resolved config as YAML), ``tune``,
``check`` and ``ensemble`` (average finished runs).
Errors in the command, the config or the data exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cuda_driver_loadable() -> bool:
    """Whether the NVIDIA driver library that TensorFlow needs for any GPU work (libcuda.so.1) loads here."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def quiet_import_tensorflow() -> None:
    """Import TensorFlow with stderr silenced: its C++ start-up notices (oneDNN, CUDA probing) are printed
    before TF_CPP_MIN_LOG_LEVEL is read. Without an NVIDIA driver, the devices are also listed while
    silenced, because TensorFlow's first device listing logs a CUDA ``cuInit`` error line there; where a
    driver exists that listing stays audible, since its errors then mean a GPU is present but unusable.
    An import error is re-raised with stderr restored. Call it before anything of ours is imported:
    ``import recipes`` imports Keras, and with it TensorFlow."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import tensorflow as tf

                if not cuda_driver_loadable():
                    tf.config.list_physical_devices()  # probes CUDA once per process; only the CPU is found
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


VERBS = {
    "run": "train and evaluate a recipe: python cli.py run recipe=resnet_small [key=value ...]",
    "list": "list the recipes with a one-line description each",
    "show": "print the resolved config of a recipe with overrides, as YAML",
    "tune": "keras-tuner search: tuner=random|grid|bayesian|hyperband|coarse_to_fine tune.max_trials=N",
    "check": "run the babysitting checklist (initial loss, overfit, learning rate, gradients, activations)",
    "ensemble": "average models' predictions on the test set: python cli.py ensemble DIR DIR ... "
    "(a run's best epochs: DIR checkpoints=K; a search's best trials: DIR top=K)",
}
EXIT_USAGE = 2
EXIT_CHECK_FAILED = 1
EXIT_INTERRUPTED = 130


def usage() -> str:
    lines = ["usage: python cli.py VERB recipe=NAME [key=value ...]", "", "verbs:"]
    lines += [f"  {verb:8s} {text}" for verb, text in VERBS.items()]
    lines += [
        "",
        "example: python cli.py run recipe=resnet_small optimizer.lr=0.05 trainer.epochs=30",
        "         python cli.py show recipe=resnet_small   (every key, its default and type)",
    ]
    return "\n".join(lines)


def split_recipe(args: list[str]) -> tuple[str, list[str]]:
    """``recipe=NAME`` (or a bare first word) and the remaining overrides; a second recipe is refused."""
    from recipes.config import ConfigError, given_twice

    recipe, rest = None, []
    for arg in args:
        if arg.startswith(("recipe=", "+recipe=")):
            if recipe is not None:
                raise given_twice("recipe", recipe, arg.split("=", 1)[1])
            recipe = arg.split("=", 1)[1]
        elif recipe is None and "=" not in arg and not rest:
            recipe = arg
        else:
            rest.append(arg)
    if not recipe:
        raise ConfigError("no recipe given: add recipe=NAME ('python cli.py list' shows them)")
    return recipe, rest


def cmd_list(args: list[str]) -> int:
    from recipes.config import ConfigError
    from recipes.registry import list_recipes

    if args:
        raise ConfigError(f"'list' takes no arguments, got: {' '.join(args)}")
    for recipe in list_recipes():
        print(f"{recipe.name:18s} {recipe.description}")
    return 0


def cmd_show(args: list[str]) -> int:
    from recipes.config import to_yaml
    from recipes.registry import get_recipe

    name, overrides = split_recipe(args)
    cfg = get_recipe(name).config(overrides)
    print(f"# recipe: {name}\n" + to_yaml(cfg), end="")
    return 0


def flops_text(pflops: float) -> str:
    """``0.0183`` -> ``"18.3 TFLOP"``: the largest unit that keeps the number at 1 or more."""
    for unit, scale in (("PFLOP", 1.0), ("TFLOP", 1e-3)):
        if pflops >= scale:
            return f"{pflops / scale:.3g} {unit}"
    return f"{pflops / 1e-6:.3g} GFLOP"


def cmd_run(args: list[str]) -> int:
    from recipes.engine.run import EXIT_DIVERGED, run

    name, overrides = split_recipe(args)
    result = run(name, overrides)
    m = result.metrics
    if result.diverged:
        print(
            f"\nTraining diverged and was stopped by the NaN guard: {result.messages[0]}\n"
            f"The last finite weights are in {result.out_dir / 'model.keras'}.",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    sample = " (bundled SAMPLE, not full CIFAR-10)" if m.get("data_is_sample") else ""
    tta = ""
    if m.get("tta"):
        shift = m.get("tta_translate") or 0
        views = f"flips and {shift}-px shifts" if shift else "flips"
        tta = f" with TTA over {views} ({m['test_accuracy_no_tta']:.4f} without)"
    compute = m["compute"]
    rate = compute["train_gflops_per_second"]
    work = flops_text(compute["train_pflops"]) + (f" at {rate:.0f} GFLOP/s" if rate else "")
    best = m["best_val_accuracy"]
    validation = "no validation set (data.val_size=0)" if best is None else f"best val accuracy {best:.4f}"
    print(
        f"\ntest accuracy {m['test_accuracy']:.4f}{tta}, "
        f"test loss {m['test_loss']:.4f} on {m['test_examples']:,} images{sample}; "
        f"{validation}; "
        f"{m['epochs_completed']} epochs in {m['train_seconds']:.0f} s ({work})"
    )
    if m.get("fit_diagnosis"):
        d = m["fit_diagnosis"]
        print(
            f"fit: {d['diagnosis']} (epoch {d['epoch']}: clean training accuracy "
            f"{d['train_clean_accuracy']:.4f}, validation {d['val_accuracy']:.4f}, gap {d['gap']:+.4f}): "
            f"{d['advice']}"
        )
    print(f"outputs in {result.out_dir}/")
    return 0


def cmd_check(args: list[str]) -> int:
    from recipes.diagnostics.checklist import format_table, run_checks

    name, overrides = split_recipe(args)
    results, out_dir = run_checks(name, overrides)
    print("\n" + format_table(results))
    failed = [r.name for r in results if r.status == "FAIL"]
    print(
        f"\nresults in {out_dir}/check.json"
        + (f"; FAILED: {', '.join(failed)}" if failed else "; no failures")
    )
    return EXIT_CHECK_FAILED if failed else 0


def cmd_tune(args: list[str]) -> int:
    from tuners.search import run_search

    name, rest = split_recipe(args)
    run_search(name, rest)
    return 0


def cmd_ensemble(args: list[str]) -> int:
    from recipes.engine.ensemble import format_table, run_ensemble

    dirs = [a for a in args if "=" not in a]
    result = run_ensemble(dirs, [a for a in args if "=" in a])
    report = result.report
    print(format_table(report))
    print(
        f"\nensemble test loss {report['ensemble_test_loss']:.4f} on {report['test_examples']:,} images "
        f"({report['data_source']}); results in {result.out_dir}/ensemble.json"
    )
    return 0


COMMANDS = {
    "run": cmd_run,
    "list": cmd_list,
    "show": cmd_show,
    "tune": cmd_tune,
    "check": cmd_check,
    "ensemble": cmd_ensemble,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else EXIT_USAGE
    verb, args = argv[0], argv[1:]
    quiet_import_tensorflow()  # before anything of ours: recipes imports Keras, and Keras TensorFlow
    from recipes.config import ConfigError, nearest
    from recipes.data import DataError
    from recipes.engine.run_dir import RunError

    if verb not in COMMANDS:
        print(
            f"error: unknown verb '{verb}'{nearest(verb, COMMANDS)}; expected one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        return COMMANDS[verb](args)
    except (ConfigError, DataError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            "\ninterrupted: run the same command again (same trainer.out_dir) to resume from the last "
            "completed epoch",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
