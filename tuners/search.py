"""``python cli.py tune recipe=NAME tuner=... tune.max_trials=N [key=value ...]``."""

from __future__ import annotations

import copy
import json
import os
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

import keras_tuner as kt
import pandas as pd

from recipes.config import (
    MAX_EPOCHS,
    ConfigError,
    flat_fields,
    given_twice,
    merge_overrides,
    nearest,
    override_key,
    parse_value,
    spec,
)
from recipes.data import load_data
from recipes.engine.atomic import write_text
from recipes.engine.checkpoint import RunError
from recipes.engine.distribute import distribution
from recipes.engine.run_dir import resolve_out_dir
from recipes.registry import get_recipe
from tuners.atomic_state import torn_files
from tuners.coarse_to_fine import coarse_to_fine, keras_tuner_seed
from tuners.grid import ResumableGridSearch
from tuners.hypermodel import RecipeHyperModel
from tuners.results import best_row, log_scaled, plot_scores, trials_frame
from tuners.resume import reconcile
from tuners.search_dir import record_search

TUNERS = ("random", "grid", "bayesian", "hyperband", "coarse_to_fine")
# What a trial logs that keras-tuner can rank by: the compiled loss and accuracy, on the validation and the
# training images. keras-tuner infers the direction from the name (a loss is minimised, an accuracy
# maximised) and the search ranks its trials that way.
OBJECTIVES = ("val_accuracy", "val_loss", "accuracy", "loss")
MAX_TRIALS = 100_000


@dataclass
class TuneOptions:
    """The ``tuner=`` and ``tune.*`` options, typed and ranged like recipe keys."""

    tuner: str = spec("random", "search algorithm", choices=TUNERS)
    max_trials: int = spec(10, "trials (stage 1 for coarse_to_fine)", min=1, max=MAX_TRIALS)
    objective: str = spec(
        "val_accuracy",
        "metric the search ranks trials by (losses lowest, accuracies highest)",
        choices=OBJECTIVES,
    )
    # A coarse trial ranks a setting by a short but complete schedule (the recipe's, compressed into these
    # epochs): a few epochs tell a rate that learns from one that does not, at a fraction of a run's cost.
    coarse_epochs: int = spec(
        2,
        "epochs per trial of random, grid and bayesian searches and of coarse_to_fine's stage 1 "
        "(at most trainer.epochs)",
        min=1,
        max=MAX_EPOCHS,
    )
    fine_trials: int = spec(5, "coarse_to_fine: stage-2 trials", min=1, max=MAX_TRIALS)
    fine_epochs: int = spec(
        0,
        "coarse_to_fine: stage-2 epochs per trial (0 = trainer.epochs, the final run's)",
        min=0,
        max=MAX_EPOCHS,
    )
    top_k: int = spec(3, "coarse_to_fine: stage-1 trials the ranges narrow around", min=1, max=MAX_TRIALS)
    max_consecutive_failed_trials: int = spec(
        3, "stop the search after this many failed trials in a row", min=1, max=MAX_TRIALS
    )
    strategy: str = spec(
        "one_device",
        "each trial data parallel: keras-tuner's distribution_strategy, as trainer.strategy (mirrored: over "
        "the GPUs or trainer.cpu_replicas logical CPUs); multi_worker cannot run keras-tuner's fit",
        choices=("auto", "one_device", "mirrored"),
    )


def space_overrides(recipe, items: dict[str, str]) -> kt.HyperParameters | None:
    """Hyperparameters re-declared with user bounds: ``space.optimizer.lr=1e-3:0.3`` sets a numeric range
    (keeping its sampling), ``space.model.activation=relu,sigmoid`` the values of a choice. A choice takes
    any value its config key accepts, so a value the recipe's default space leaves out (mlp's sigmoid)
    comes back by naming it."""
    if not items:
        return None
    declared = kt.HyperParameters()
    recipe.search_space(declared)
    params = {p.name: p for p in declared.space}
    keys = flat_fields(recipe.config([]))
    hp = kt.HyperParameters()
    for key, text in items.items():
        if key not in params:
            raise ConfigError(
                f"space.{key}: not in {recipe.name}'s search space{nearest(key, params)}; "
                f"tunable keys: {', '.join(params)}"
            )
        param = params[key]
        if isinstance(param, kt.engine.hyperparameters.Choice):
            hp.Choice(key, _choice_values(key, text, param, keys.get(key)))
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


def _choice_values(key: str, text: str, param, config_field) -> list:
    """The values of ``space.KEY=a,b``: typed and checked as the config key's own values (for a key that
    is not a config key, among the declared ones)."""
    values = []
    for raw in (v.strip() for v in text.split(",")):
        if config_field is not None:
            _, f, tp = config_field
            choices = [str(c) for c in f.metadata.get("choices") or ()]
            if choices and raw not in choices:
                raise ConfigError(f"space.{key}={text}: {raw} is not one of {choices}{nearest(raw, choices)}")
            values.append(parse_value(f"space.{key}", raw, tp, f))
            continue
        kinds = {type(v) for v in param.values}
        kind = kinds.pop() if len(kinds) == 1 else str
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"space.{key}={text}: expected values like {param.values}") from None
        if value not in param.values:
            raise ConfigError(f"space.{key}={text}: {value} is not one of {param.values}")
        values.append(value)
    return list(dict.fromkeys(values))


def parse_tune_args(args: list[str]) -> tuple[TuneOptions, dict[str, str], list[str]]:
    """Split ``tuner=``, ``tune.*`` options and ``space.*`` bounds from the recipe overrides (which
    :func:`recipes.config.apply_overrides` checks later). Each is typed and range-checked, and a key
    given twice is refused."""
    options, space, rest = TuneOptions(), {}, []
    fields = flat_fields(options)
    valid = [f"tune.{name}" for name in fields if name != "tuner"]
    given: dict[str, str] = {}
    for arg in args:
        key, _, value = arg.partition("=")
        key = key.strip().lstrip("+")
        if key == "tuner" or key.startswith(("tune.", "space.")):
            if key in given:
                raise given_twice(key, given[key], value)
            given[key] = value
        if key == "tuner":
            _, f, tp = fields["tuner"]
            options.tuner = parse_value(key, value, tp, f)
        elif key.startswith("space."):
            space[key[len("space.") :]] = value
        elif key.startswith("tune."):
            name = key[len("tune.") :]
            if name not in fields or name == "tuner":
                raise ConfigError(f"unknown key '{key}'{nearest(key, valid)}; valid: {', '.join(valid)}")
            _, f, tp = fields[name]
            setattr(options, name, parse_value(key, value, tp, f))
        else:
            rest.append(arg)
    return options, space, rest


def trial_epochs(options: TuneOptions, final_epochs: int) -> dict[str, int]:
    """How long trials train, given ``trainer.epochs`` (what a final run of the best setting trains):

    - ``coarse``: a trial of random, grid and bayesian searches and of coarse_to_fine's stage 1,
      ``tune.coarse_epochs`` (2 by default), never more than a final run;
    - ``fine``: a trial of coarse_to_fine's stage 2, ``tune.fine_epochs`` or else the final run's epochs;
      at least ``coarse`` (a ConfigError otherwise): the narrowed ranges are ranked by longer training;
    - ``hyperband``: its ``max_epochs``, the final run's epochs; hyperband's own brackets start trials
      at a fraction of it (1/3, 1/9, ...) and promote the best, so its early rounds are its coarse stage.

    Each trial's learning-rate schedule spans the trial's own epochs.
    """
    coarse = min(options.coarse_epochs, final_epochs)
    fine = options.fine_epochs or final_epochs
    if options.tuner == "coarse_to_fine" and fine < coarse:
        raise ConfigError(
            f"tune.fine_epochs={options.fine_epochs} is shorter than stage 1's {coarse} epochs "
            "(tune.coarse_epochs): the fine stage trains at least as long"
        )
    return {"coarse": coarse, "fine": fine, "hyperband": final_epochs}


def _describe_epochs(tuner: str, epochs: dict[str, int]) -> str:
    if tuner == "coarse_to_fine":
        return f"stage-1 trials train {epochs['coarse']} epochs, stage-2 trials {epochs['fine']}"
    if tuner == "hyperband":
        return f"trials train up to {epochs['hyperband']} epochs"
    return f"trials train {epochs['coarse']} epochs"


def make_tuner(
    name: str,
    hypermodel,
    options: TuneOptions,
    directory: Path,
    seed: int,
    epochs: int,
    hyperparameters: kt.HyperParameters | None = None,
    distribution_strategy=None,
) -> kt.Tuner:
    """A keras-tuner tuner in ``directory/name`` that reloads an earlier search there (overwrite=False).

    ``seed`` (``trainer.seed``, 0 by default) reaches keras-tuner as ``seed + 1`` (see
    :func:`tuners.coarse_to_fine.keras_tuner_seed`): keras-tuner replaces a seed of 0 with a random one,
    which would make the default search draw different trials every time.
    """
    common = dict(
        objective=options.objective,
        directory=str(directory),
        project_name=name,
        overwrite=False,
        seed=keras_tuner_seed(seed),
        max_consecutive_failed_trials=options.max_consecutive_failed_trials,
        hyperparameters=hyperparameters,
        tune_new_entries=True,
        distribution_strategy=distribution_strategy,
    )
    if name == "random":
        return kt.RandomSearch(hypermodel, max_trials=options.max_trials, **common)
    if name == "grid":
        return ResumableGridSearch(hypermodel, max_trials=options.max_trials, **common)
    if name == "bayesian":
        return kt.BayesianOptimization(hypermodel, max_trials=options.max_trials, **common)
    return kt.Hyperband(hypermodel, max_epochs=epochs, **common)


def search_strategy(options: TuneOptions, cfg):
    """keras-tuner's ``distribution_strategy`` for ``tune.strategy`` (None: one device): the strategy that
    the trials' :func:`recipes.engine.training.build_training` enters too (``trainer.strategy`` is set to
    ``tune.strategy`` for them), so a trial builds and trains in one scope. With keras-tuner's
    chief/worker search, every worker process trains its trials this way."""
    trial = copy.deepcopy(cfg)
    trial.trainer.strategy = options.strategy
    dist = distribution(trial)
    return None if dist.name == "one_device" else dist.strategy


def best_command(recipe: str, overrides: list[str], values: dict) -> str:
    tuned = [f"{k}={_fmt(v)}" for k, v in values.items() if not k.startswith("tuner/")]
    fixed = [o for o in overrides if override_key(o) not in values and override_key(o) != "trainer.out_dir"]
    return "python cli.py run " + " ".join(shlex.quote(a) for a in [f"recipe={recipe}", *fixed, *tuned])


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def distributed_role() -> str | None:
    """``"chief"``, ``"worker"`` or None, from keras-tuner's environment variables; a setting keras-tuner
    would fail on later (with a traceback, or a gRPC error naming no variable) is a one-line
    :class:`ConfigError` here, and so is a chief that cannot listen on its port.

    keras-tuner's chief serves its oracle over gRPC with no authentication or TLS on
    ``KERASTUNER_ORACLE_IP``: when only the port and tuner id are set, bind to loopback.
    """
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID")
    ip = os.environ.get("KERASTUNER_ORACLE_IP")
    if tuner_id is None:
        if ip is not None:
            raise ConfigError(
                f"KERASTUNER_ORACLE_IP={ip} is set but KERASTUNER_TUNER_ID is not: for a distributed search "
                "set KERASTUNER_TUNER_ID=chief on the process that serves the oracle and tuner0, tuner1, ... "
                "on the workers (with KERASTUNER_ORACLE_PORT on all); for a search on this machine alone "
                "unset KERASTUNER_ORACLE_IP"
            )
        return None
    if not tuner_id.strip():
        raise ConfigError(
            "KERASTUNER_TUNER_ID is set but empty: set it to chief on the process that serves the oracle "
            "and to tuner0, tuner1, ... on the workers, or unset it for a search on this machine alone"
        )
    if "KERASTUNER_ORACLE_PORT" not in os.environ:
        raise ConfigError(
            "KERASTUNER_TUNER_ID is set but KERASTUNER_ORACLE_PORT is not: set both (and "
            "KERASTUNER_ORACLE_IP on a trusted network) for a distributed search"
        )
    port = oracle_port(os.environ["KERASTUNER_ORACLE_PORT"])
    ip = os.environ.setdefault("KERASTUNER_ORACLE_IP", "127.0.0.1")
    role = "chief" if "chief" in tuner_id else "worker"
    if role == "chief":
        check_chief_can_listen(ip, port)
    return role


def oracle_port(text: str) -> int:
    """``KERASTUNER_ORACLE_PORT`` as a TCP port number, or a one-line :class:`ConfigError`."""
    try:
        port = int(text.strip())
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ConfigError(
            f"KERASTUNER_ORACLE_PORT={text!r}: expected a port number 1..65535, "
            "the same on the chief and every worker"
        )
    return port


def _cannot_listen(ip: str, port: int, reason: str) -> ConfigError:
    return ConfigError(
        f"the chief cannot listen on {ip}:{port} ({reason}): another process holds the port, or "
        "KERASTUNER_ORACLE_IP is not an address of this machine; set KERASTUNER_ORACLE_PORT to a free port "
        "(the same on every worker) and start the chief again"
    )


def check_chief_can_listen(ip: str, port: int) -> None:
    """Bind ``ip:port`` once and let go, so that a taken port is reported before the data is loaded (and
    not as keras-tuner's gRPC "Failed to bind")."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(ip, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT does not count
            probe.bind(address)
    except OSError as e:
        raise _cannot_listen(ip, port, e.strerror or str(e)) from None


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
    if cfg.trainer.budget is not None:
        raise ConfigError(
            f"trainer.budget={cfg.trainer.budget} applies to 'run' only (it plans one training's steps); a "
            "search trains each trial for tune.coarse_epochs (and tune.fine_epochs): drop trainer.budget"
        )
    if recipe.search_space is None:
        raise ConfigError(f"recipe '{recipe_name}' declares no search space")
    strategy = search_strategy(options, cfg)  # before the data: the CPU split comes first
    bounds = space_overrides(recipe, space)
    epochs = trial_epochs(options, cfg.trainer.epochs)
    out_dir = resolve_out_dir(cfg, f"tune-{recipe_name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_data(cfg.data, seed=cfg.trainer.seed)
    fixed = [o for o in overrides if override_key(o) != "trainer.out_dir"]
    trials = merge_overrides(fixed, [f"trainer.strategy={options.strategy}"])  # the tuner's strategy
    hm = RecipeHyperModel(
        recipe_name, trials, num_classes=data.num_classes, input_shape=data.x_train.shape[1:]
    )
    search = dict(validation_data=(data.x_val, data.y_val), verbose=verbose)
    record_search(out_dir, recipe_name, fixed, options, cfg, data)  # for ensemble DIR top=K
    directory = out_dir / "tuner"
    made: list[kt.Tuner] = []  # the tuners built so far, for the trials table of a search that stops
    echo(
        f"Tuning {recipe_name} with {options.tuner} on {len(data.x_train):,} images ({data.source}); "
        f"{_describe_epochs(options.tuner, epochs)}; keras-tuner directory {directory}"
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
                coarse_epochs=epochs["coarse"],
                fine_trials=options.fine_trials,
                fine_epochs=epochs["fine"],
                top_k=options.top_k,
                objective=options.objective,
                seed=cfg.trainer.seed,
                max_consecutive_failed_trials=options.max_consecutive_failed_trials,
                hyperparameters=bounds,
                made=made,
                verbose=verbose,
                distribution_strategy=strategy,
            )
            frame, tuners = result.frame, [result.coarse, result.fine]
        else:
            tuner = make_tuner(
                options.tuner, hm, options, directory, cfg.trainer.seed, epochs["hyperband"], bounds, strategy
            )
            made.append(tuner)
            reconcile(tuner.oracle)
            tuner.search(data.x_train, data.y_train, epochs=epochs["coarse"], **search)
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
    except RunError:
        raise
    except RuntimeError as e:
        if "Failed to bind" in str(e):  # the chief's gRPC server: the port was taken after our check
            raise _cannot_listen(
                os.environ["KERASTUNER_ORACLE_IP"], int(os.environ["KERASTUNER_ORACLE_PORT"]), "in use"
            ) from None
        if "consecutive" in str(e) or "failed" in str(e).lower():
            first = str(e).splitlines()[0]
            if made:
                staged = options.tuner == "coarse_to_fine"
                frames = [trials_frame(t, stage=i + 1 if staged else None) for i, t in enumerate(made)]
                write_text(out_dir / "trials.csv", pd.concat(frames, ignore_index=True).to_csv(index=False))
                where = f"the message column of {out_dir / 'trials.csv'}"
            else:
                where = f"the trials under {directory}"
            raise RunError(f"search stopped: {first} (see {where})") from None
        raise
    write_text(out_dir / "trials.csv", frame.to_csv(index=False))
    plot_scores(
        frame, options.objective, set().union(*(log_scaled(t) for t in tuners)), out_dir / "scores.png"
    )
    done = frame[frame[options.objective].notna()]
    best = best_row(frame, tuners[0].oracle.objective)
    if best is None:
        raise RunError(f"no trial finished; see {out_dir / 'trials.csv'}")
    space = [hp.name for t in tuners for hp in t.oracle.get_space().space]
    values = {name: best[name] for name in dict.fromkeys(space) if name in best and best[name] == best[name]}
    command = best_command(recipe_name, overrides, values)
    score = best[options.objective]
    lowest = tuners[0].oracle.objective.direction == "min"
    echo(
        f"\n{len(done)} of {len(frame)} trials finished; best {options.objective} {score:.4f} "
        f"({'lowest' if lowest else 'highest'})"
    )
    echo(f"trials in {out_dir / 'trials.csv'}, plot in {out_dir / 'scores.png'}")
    echo(f"reproduce the best trial with:\n  {command}")
    return {"frame": frame, "best_command": command, "out_dir": out_dir}
