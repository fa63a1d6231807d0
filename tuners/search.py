"""``python cli.py tune recipe=NAME tuner=... tune.max_trials=N [key=value ...]``."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import keras_tuner as kt

from recipes.config import ConfigError, nearest
from recipes.data import load_data
from recipes.engine.atomic import write_text
from recipes.engine.checkpoint import RunError
from recipes.engine.run_dir import resolve_out_dir
from recipes.registry import get_recipe
from tuners.atomic_state import torn_files
from tuners.coarse_to_fine import coarse_to_fine
from tuners.grid import ResumableGridSearch
from tuners.hypermodel import RecipeHyperModel
from tuners.results import log_scaled, plot_scores, trials_frame
from tuners.resume import reconcile

TUNERS = ("random", "grid", "bayesian", "hyperband", "coarse_to_fine")


@dataclass
class TuneOptions:
    tuner: str = "random"
    max_trials: int = 10  # trials (stage 1 for coarse_to_fine)
    objective: str = "val_accuracy"
    fine_trials: int = 5  # coarse_to_fine: stage-2 trials
    fine_epochs: int = 0  # coarse_to_fine: stage-2 epochs (0 = twice trainer.epochs)
    top_k: int = 3  # coarse_to_fine: stage-1 trials the ranges narrow around
    max_consecutive_failed_trials: int = 3


def space_overrides(recipe, items: dict[str, str]) -> kt.HyperParameters | None:
    """Hyperparameters re-declared with user bounds: ``space.optimizer.lr=1e-3:0.3`` narrows a numeric range
    (keeping its sampling), ``space.model.activation=relu,elu`` restricts a choice."""
    if not items:
        return None
    declared = kt.HyperParameters()
    recipe.search_space(declared)
    params = {p.name: p for p in declared.space}
    hp = kt.HyperParameters()
    for key, text in items.items():
        if key not in params:
            raise ConfigError(
                f"space.{key}: not in {recipe.name}'s search space{nearest(key, params)}; "
                f"tunable keys: {', '.join(params)}"
            )
        param = params[key]
        if isinstance(param, kt.engine.hyperparameters.Choice):
            kinds = {type(v) for v in param.values}
            kind = kinds.pop() if len(kinds) == 1 else str
            try:
                values = [kind(v) for v in text.split(",")]
            except ValueError:
                raise ConfigError(f"space.{key}={text}: expected values like {param.values}") from None
            unknown = [v for v in values if v not in param.values]
            if unknown:
                raise ConfigError(f"space.{key}={text}: {unknown[0]} is not one of {param.values}")
            hp.Choice(key, values)
            continue
        try:
            low, high = (float(v) for v in text.split(":"))
        except ValueError:
            raise ConfigError(
                f"space.{key}={text}: expected LOW:HIGH, for example space.{key}="
                f"{param.min_value:g}:{param.max_value:g}"
            ) from None
        if not low < high or (param.sampling == "log" and low <= 0):
            raise ConfigError(
                f"space.{key}={text}: expected 0 < LOW < HIGH"
                if param.sampling == "log"
                else f"space.{key}={text}: expected LOW < HIGH"
            )
        if isinstance(param, kt.engine.hyperparameters.Int):
            hp.Int(key, int(low), int(high), sampling=param.sampling)
        else:
            hp.Float(key, low, high, sampling=param.sampling)
    return hp


def parse_tune_args(args: list[str]) -> tuple[TuneOptions, dict[str, str], list[str]]:
    """Split ``tuner=``, ``tune.*`` options and ``space.*`` bounds from the recipe overrides."""
    options, space, rest = TuneOptions(), {}, []
    fields = {f: type(getattr(options, f)) for f in vars(options)}
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "tuner":
            if value not in TUNERS:
                raise ConfigError(
                    f"tuner={value}: expected one of {', '.join(TUNERS)}{nearest(value, TUNERS)}"
                )
            options.tuner = value
        elif key.startswith("space."):
            space[key[len("space.") :]] = value
        elif key.startswith("tune."):
            name = key[len("tune.") :]
            if name not in fields or name == "tuner":
                valid = [f"tune.{f}" for f in fields if f != "tuner"]
                raise ConfigError(f"unknown key '{key}'{nearest(key, valid)}; valid: {', '.join(valid)}")
            try:
                setattr(options, name, fields[name](value))
            except ValueError:
                raise ConfigError(f"{key}={value}: expected {fields[name].__name__}") from None
        else:
            rest.append(arg)
    if options.max_trials < 1:
        raise ConfigError(f"tune.max_trials={options.max_trials}: expected a value >= 1")
    return options, space, rest


def make_tuner(
    name: str,
    hypermodel,
    options: TuneOptions,
    directory: Path,
    seed: int,
    epochs: int,
    hyperparameters: kt.HyperParameters | None = None,
) -> kt.Tuner:
    """A keras-tuner tuner in ``directory/name`` that reloads an earlier search there (overwrite=False).

    ``seed`` (``trainer.seed``, 0 by default) reaches keras-tuner as ``seed + 1``: keras-tuner replaces a
    seed of 0 with a random one, which would make the default search draw different trials every time.
    """
    common = dict(
        objective=options.objective,
        directory=str(directory),
        project_name=name,
        overwrite=False,
        seed=seed + 1,
        max_consecutive_failed_trials=options.max_consecutive_failed_trials,
        hyperparameters=hyperparameters,
        tune_new_entries=True,
    )
    if name == "random":
        return kt.RandomSearch(hypermodel, max_trials=options.max_trials, **common)
    if name == "grid":
        return ResumableGridSearch(hypermodel, max_trials=options.max_trials, **common)
    if name == "bayesian":
        return kt.BayesianOptimization(hypermodel, max_trials=options.max_trials, **common)
    return kt.Hyperband(hypermodel, max_epochs=epochs, **common)


def best_command(recipe: str, overrides: list[str], values: dict) -> str:
    tuned = [f"{k}={_fmt(v)}" for k, v in values.items() if not k.startswith("tuner/")]
    fixed = [
        o for o in overrides if o.split("=", 1)[0] not in values and not o.startswith("trainer.out_dir=")
    ]
    return "python cli.py run " + " ".join(shlex.quote(a) for a in [f"recipe={recipe}", *fixed, *tuned])


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def distributed_role() -> str | None:
    """``"chief"``, ``"worker"`` or None, from keras-tuner's environment variables.

    keras-tuner's chief serves its oracle over gRPC with no authentication or TLS on
    ``KERASTUNER_ORACLE_IP``: when only the port and tuner id are set, bind to loopback.
    """
    if "KERASTUNER_TUNER_ID" not in os.environ:
        return None
    if "KERASTUNER_ORACLE_PORT" not in os.environ:
        raise ConfigError(
            "KERASTUNER_TUNER_ID is set but KERASTUNER_ORACLE_PORT is not: set both (and "
            "KERASTUNER_ORACLE_IP on a trusted network) for a distributed search"
        )
    os.environ.setdefault("KERASTUNER_ORACLE_IP", "127.0.0.1")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def run_search(recipe_name: str, args: list[str], *, echo=print, verbose="auto") -> dict:
    """Run (or resume) a search and write ``trials.csv``, ``scores.png`` and the keras-tuner directory.

    In keras-tuner's distributed mode the chief serves the oracle and writes the outputs when every trial is
    done; workers run trials and return.
    """
    options, space, overrides = parse_tune_args(args)
    role = distributed_role()
    if role and options.tuner == "coarse_to_fine":
        raise ConfigError(
            "tuner=coarse_to_fine runs two searches in turn; distribute each stage's search "
            "separately, or use tuner=random"
        )
    recipe = get_recipe(recipe_name)
    cfg = recipe.config(overrides)
    if recipe.search_space is None:
        raise ConfigError(f"recipe '{recipe_name}' declares no search space")
    bounds = space_overrides(recipe, space)
    out_dir = resolve_out_dir(cfg, f"tune-{recipe_name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_data(cfg.data, seed=cfg.trainer.seed)
    fixed = [o for o in overrides if not o.startswith("trainer.out_dir=")]
    hm = RecipeHyperModel(
        recipe_name, fixed, num_classes=data.num_classes, input_shape=data.x_train.shape[1:]
    )
    search = dict(validation_data=(data.x_val, data.y_val), verbose=verbose)
    epochs = cfg.trainer.epochs
    directory = out_dir / "tuner"
    echo(
        f"Tuning {recipe_name} with {options.tuner} on {len(data.x_train):,} images ({data.source}); "
        f"keras-tuner directory {directory}"
    )
    try:
        if options.tuner == "coarse_to_fine":
            result = coarse_to_fine(
                hm,
                data.x_train,
                data.y_train,
                (data.x_val, data.y_val),
                directory=str(directory),
                coarse_trials=options.max_trials,
                coarse_epochs=epochs,
                fine_trials=options.fine_trials,
                fine_epochs=options.fine_epochs or 2 * epochs,
                top_k=options.top_k,
                objective=options.objective,
                seed=cfg.trainer.seed,
                max_consecutive_failed_trials=options.max_consecutive_failed_trials,
                verbose=verbose,
            )
            frame, tuners = result.frame, [result.coarse, result.fine]
        else:
            tuner = make_tuner(options.tuner, hm, options, directory, cfg.trainer.seed, epochs, bounds)
            reconcile(tuner.oracle)
            tuner.search(data.x_train, data.y_train, epochs=epochs, **search)
            if role == "worker":
                worker = os.environ["KERASTUNER_TUNER_ID"]
                echo(f"worker {worker}: no more trials; the chief writes the results")
                return {"frame": None, "best_command": None, "out_dir": out_dir}
            frame, tuners = trials_frame(tuner), [tuner]
    except json.JSONDecodeError as e:
        torn = torn_files(directory)
        names = ", ".join(str(p) for p in torn) or f"a file under {directory}"
        trials_only = torn and all(p.name == "trial.json" for p in torn)
        fix = "delete those trial folders" if trials_only else f"delete {directory} to start afresh"
        raise RunError(
            f"cannot resume the search: keras-tuner state {names} is torn ({e}), left by a search killed "
            f"mid-write by an older version of this project; {fix}"
        ) from None
    except RuntimeError as e:
        if "consecutive" in str(e) or "failed" in str(e).lower():
            raise RunError(
                f"search stopped: {str(e).splitlines()[0]} (see the message column of "
                f"{out_dir / 'trials.csv'})"
            ) from None
        raise
    write_text(out_dir / "trials.csv", frame.to_csv(index=False))
    plot_scores(
        frame, options.objective, set().union(*(log_scaled(t) for t in tuners)), out_dir / "scores.png"
    )
    done = frame[frame[options.objective].notna()]
    if done.empty:
        raise RunError(f"no trial finished; see {out_dir / 'trials.csv'}")
    best = done.loc[done[options.objective].idxmax()]
    space = [hp.name for t in tuners for hp in t.oracle.get_space().space]
    values = {name: best[name] for name in dict.fromkeys(space) if name in best and best[name] == best[name]}
    command = best_command(recipe_name, overrides, values)
    score = best[options.objective]
    echo(f"\n{len(done)} of {len(frame)} trials finished; best {options.objective} {score:.4f}")
    echo(f"trials in {out_dir / 'trials.csv'}, plot in {out_dir / 'scores.png'}")
    echo(f"reproduce the best trial with:\n  {command}")
    return {"frame": frame, "best_command": command, "out_dir": out_dir}
