"""Every numeric key has a range, a key given twice is refused, and out-of-range values fail up front."""

import math
import types
import typing

import numpy as np
import pytest

import cli
from recipes.config import ConfigError, apply_overrides, flat_dict, flat_fields
from recipes.registry import get_recipe, list_recipes
from tuners.search import TuneOptions, parse_tune_args

SAMPLE_RUN = ["data.name=sample", "data.train_limit=256", "data.val_size=100", "trainer.epochs=1"]


def _numeric_fields():
    """(label, key, field, type) of every int/float key of every recipe and of the tune options."""
    sources = [(r.name, r.config()) for r in list_recipes()] + [("tune", TuneOptions())]
    for label, cfg in sources:
        for key, (obj, f, tp) in flat_fields(cfg).items():
            if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
                tp = next(a for a in typing.get_args(tp) if a is not type(None))
            if tp in (int, float):
                yield label, key, f, tp, getattr(obj, f.name)


NUMERIC = list(_numeric_fields())


def test_the_walk_sees_the_keys_of_every_section():
    keys = {(label, key) for label, key, *_ in NUMERIC}
    for expected in [
        ("mlp", "trainer.seed"),
        ("mlp", "model.width"),
        ("mlp_dropconnect", "model.drop_rate"),
        ("resnet_small", "model.depth_blocks"),
        ("fast", "model.logit_scale"),
        ("fast", "optimizer.lr"),
        ("tune", "top_k"),
        ("tune", "fine_trials"),
    ]:
        assert expected in keys
    assert len(NUMERIC) > 60


@pytest.mark.parametrize("label, key, f, tp, default", NUMERIC, ids=[f"{n[0]}:{n[1]}" for n in NUMERIC])
def test_every_numeric_key_declares_a_finite_range_around_its_default(label, key, f, tp, default):
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    assert lo is not None and hi is not None, f"{label} {key}: declare min= and max= in its spec()"
    assert math.isfinite(lo) and math.isfinite(hi) and lo < hi
    if default is not None:
        assert lo <= default <= hi


@pytest.mark.parametrize("recipe", [r.name for r in list_recipes()])
def test_each_recipe_key_takes_its_max_and_refuses_beyond_it(recipe):
    defaults = get_recipe(recipe).config_class()
    for label, key, f, tp, _ in NUMERIC:
        if label != recipe:
            continue
        hi = f.metadata["max"]
        assert flat_dict(apply_overrides(defaults, [f"{key}={hi}"]))[key] == hi  # the max itself is accepted
        beyond = hi + 1 if tp is int else hi * 10
        with pytest.raises(ConfigError) as err:
            apply_overrides(defaults, [f"{key}={beyond}"])
        message = str(err.value)
        assert message.startswith(f"{key}=") and "expected a value <=" in message and "\n" not in message


def test_seeds_take_numpys_range_exactly():
    # numpy.random.seed (called by keras.utils.set_random_seed) takes 0..2**32-1 and nothing else
    np.random.seed(2**32 - 1)
    with pytest.raises(ValueError):
        np.random.seed(2**32)
    cfg = get_recipe("mlp").config(["trainer.seed=4294967295"])
    assert cfg.trainer.seed == 2**32 - 1
    for bad in ("4294967296", "-1", "99999999999999999999"):
        with pytest.raises(ConfigError, match=f"trainer.seed={bad}: expected a value"):
            get_recipe("mlp").config([f"trainer.seed={bad}"])


@pytest.mark.parametrize(
    "override",
    [
        "trainer.epochs=1000000000000",
        "trainer.batch_size=1099511627776",
        "data.train_limit=9223372036854775808",
        "model.width=10000000",
        "optimizer.weight_decay=1e30",
        "schedule.warmup_epochs=1e20",
    ],
)
def test_integers_and_rates_beyond_the_libraries_are_refused_in_one_line(override, capsys):
    assert cli.main(["show", "recipe=mlp", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {override.split('=')[0]}=") and "expected a value <=" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "first, second",
    [
        ("optimizer.lr=0.1", "optimizer.lr=0.2"),
        ("+optimizer.lr=0.1", "optimizer.lr=0.2"),
        ("trainer.epochs=1", "+trainer.epochs=2"),
        ("data.name=sample", "data.name=sample"),  # even the same value: which one was meant to change?
        ("model.width=8", "model.width=16"),
    ],
)
@pytest.mark.parametrize("verb", ["show", "run", "check", "tune"])
def test_a_key_given_twice_is_refused_naming_both_values(first, second, verb, capsys):
    assert cli.main([verb, "recipe=mlp", first, "trainer.verbose=silent", second]) == 2
    err = capsys.readouterr().err
    key = first.lstrip("+").split("=")[0]
    assert f"{key} is given twice" in err
    assert f"{key}={first.split('=')[1]}" in err and f"{key}={second.split('=')[1]}" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "args, key, values",
    [
        (["recipe=mlp", "recipe=fast"], "recipe", ("mlp", "fast")),
        (["mlp", "recipe=fast"], "recipe", ("mlp", "fast")),
        (["recipe=mlp", "+recipe=mlp"], "recipe", ("mlp", "mlp")),
        (["recipe=mlp", "tune.max_trials=2", "tune.max_trials=3"], "tune.max_trials", ("2", "3")),
        (["recipe=mlp", "tuner=random", "tuner=grid"], "tuner", ("random", "grid")),
        (["recipe=mlp", "tune.top_k=2", "+tune.top_k=2"], "tune.top_k", ("2", "2")),
        (
            ["recipe=mlp", "space.optimizer.lr=0.001:0.01", "space.optimizer.lr=0.01:0.1"],
            "space.optimizer.lr",
            ("0.001:0.01", "0.01:0.1"),
        ),
    ],
)
def test_recipe_and_tune_keys_given_twice_are_refused(args, key, values, capsys):
    assert cli.main(["tune", *args]) == 2
    err = capsys.readouterr().err
    assert f"{key} is given twice ({key}={values[0]} and {key}={values[1]})" in err
    assert err.count("\n") == 1


def test_the_tuner_layers_sampled_values_over_fixed_ones_without_repeating_a_key():
    import keras_tuner as kt

    from tuners import hypermodel

    hm = hypermodel("mlp", ["optimizer.lr=0.05", "trainer.epochs=7", "model.width=8"])
    hp = kt.HyperParameters()
    hp.Fixed("optimizer.lr", 0.003)
    overrides = hm.trial_overrides(hp)
    keys = [o.split("=")[0] for o in overrides]
    assert len(keys) == len(set(keys)) and "optimizer.lr=0.003" in overrides
    cfg = hm.config(hp, ["trainer.epochs=2"])
    assert cfg.optimizer.lr == 0.003 and cfg.trainer.epochs == 2 and cfg.model.width == 8


@pytest.mark.parametrize(
    "objective, nearest",
    [("val_acc", "val_accuracy"), ("val_losss", "val_loss"), ("acuracy", "accuracy"), ("foo", None)],
)
def test_an_objective_naming_no_metric_is_refused_with_the_valid_names(objective, nearest, capsys):
    assert cli.main(["tune", "recipe=mlp", f"tune.objective={objective}"]) == 2
    err = capsys.readouterr().err
    assert f"tune.objective={objective}: expected one of val_accuracy, val_loss, accuracy, loss" in err
    if nearest:
        assert f"did you mean '{nearest}'" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("objective", ["val_accuracy", "val_loss", "accuracy", "loss"])
def test_the_valid_objectives_are_accepted(objective):
    options, _, rest = parse_tune_args([f"tune.objective={objective}", "model.width=8"])
    assert options.objective == objective and rest == ["model.width=8"]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("tune.top_k=-1", "tune.top_k=-1: expected a value >= 1"),
        ("tune.top_k=0", "tune.top_k=0: expected a value >= 1"),
        ("tune.fine_trials=-3", "tune.fine_trials=-3: expected a value >= 1"),
        ("tune.fine_trials=0", "tune.fine_trials=0: expected a value >= 1"),  # keras-tuner: 0 = unlimited
        ("tune.max_trials=0", "tune.max_trials=0: expected a value >= 1"),
        ("tune.fine_epochs=-1", "tune.fine_epochs=-1: expected a value >= 0"),
        ("tune.max_trials=1000000000", "tune.max_trials=1000000000: expected a value <= 100000"),
        ("tune.top_k=two", "tune.top_k=two: expected an integer"),
    ],
)
def test_tune_counts_out_of_range_are_refused(override, expected, capsys):
    assert cli.main(["tune", "recipe=mlp", override]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


@pytest.mark.parametrize("lr", ["1e30", "1e38", "3e38", "1e300", "inf"])
def test_learning_rates_float32_cannot_hold_are_refused_up_front(lr, capsys, tmp_path):
    # float32 holds at most 3.4e38; above 1e6 the parser refuses before any data is loaded
    code = cli.main(["run", "recipe=mlp", *SAMPLE_RUN, f"optimizer.lr={lr}", f"trainer.out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: optimizer.lr=") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_the_largest_accepted_learning_rate_ends_as_the_nan_guards_exit(capsys, tmp_path):
    from recipes.engine.run import EXIT_DIVERGED

    args = ["run", "recipe=mlp", *SAMPLE_RUN, "model.width=16", "trainer.verbose=silent"]
    with pytest.warns(UserWarning, match="NaNGuard stopped training"):
        code = cli.main([*args, "optimizer.lr=1e6", f"trainer.out_dir={tmp_path}"])
    assert code == EXIT_DIVERGED == 3
    assert "stopped by the NaN guard" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides, side",
    [
        (["data.pad_mode=reflect", "data.crop_padding=32"], 32),
        (["data.pad_mode=reflect", "data.crop_padding=40"], 32),
        (["data.name=folder", "data.image_size=16", "data.pad_mode=reflect", "data.crop_padding=16"], 16),
    ],
)
def test_reflection_padding_as_wide_as_the_image_is_refused(overrides, side):
    import tensorflow as tf

    images = tf.zeros([1, side, side, 3])
    tf.pad(images, [[0, 0], [side - 1] * 2, [side - 1] * 2, [0, 0]], mode="REFLECT")  # one less works
    with pytest.raises(tf.errors.InvalidArgumentError):  # what the first epoch would have hit
        tf.pad(images, [[0, 0], [side] * 2, [side] * 2, [0, 0]], mode="REFLECT")
    with pytest.raises(ConfigError, match=f"expected a value below the image side \\({side}\\)"):
        get_recipe("resnet_small").config(overrides)
    fine = [o.replace(o.split("=")[1], str(side - 1)) if "crop_padding" in o else o for o in overrides]
    assert get_recipe("resnet_small").config(fine).data.crop_padding == side - 1
    zeros = [o.replace("reflect", "zeros") for o in overrides]
    assert get_recipe("resnet_small").config(zeros).data.pad_mode == "zeros"
