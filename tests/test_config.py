import pytest

from recipes.config import ConfigError, apply_overrides, diff, flat_dict, from_dict, to_dict
from recipes.registry import get_recipe, list_recipes

REQUIRED_KEYS = [
    "data.name",
    "data.path",
    "data.train_limit",
    "data.val_size",
    "optimizer.name",
    "optimizer.lr",
    "optimizer.momentum",
    "optimizer.weight_decay",
    "schedule.name",
    "schedule.warmup_epochs",
    "trainer.epochs",
    "trainer.batch_size",
    "trainer.seed",
    "trainer.out_dir",
]


@pytest.mark.parametrize("recipe", [r.name for r in list_recipes()])
def test_every_recipe_has_the_required_keys(recipe):
    keys = flat_dict(get_recipe(recipe).config())
    assert set(REQUIRED_KEYS) <= set(keys)


def test_overrides_are_typed_and_merged():
    cfg = get_recipe("resnet_small").config(
        [
            "optimizer.lr=0.05",
            "trainer.epochs=3",
            "data.augment=false",
            "data.train_limit=100",
            "data.path=/x/y",
            "trainer.out_dir=null",
        ]
    )
    assert cfg.optimizer.lr == 0.05 and isinstance(cfg.optimizer.lr, float)
    assert cfg.trainer.epochs == 3 and isinstance(cfg.trainer.epochs, int)
    assert cfg.data.augment is False
    assert cfg.data.train_limit == 100
    assert cfg.data.path == "/x/y"
    assert cfg.trainer.out_dir is None
    assert cfg.optimizer.momentum == 0.9  # untouched keys keep their defaults


def test_defaults_are_not_shared_between_configs():
    a = get_recipe("resnet_small").config(["optimizer.lr=0.5"])
    b = get_recipe("resnet_small").config()
    assert a.optimizer.lr == 0.5 and b.optimizer.lr == 0.1


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.epoch=3", "did you mean 'trainer.epochs'"),
        ("trainer.epochs=ten", "trainer.epochs=ten: expected an integer"),
        ("trainer.epochs=-1", "trainer.epochs=-1: expected a value >= 1"),
        ("optimizer.lr=nan", "optimizer.lr=nan: expected a number"),
        ("optimizer.lr=0", "optimizer.lr=0.0: expected a value > 0"),
        ("optimizer.name=sgdd", "did you mean 'sgd'"),
        ("data.augment=maybe", "expected true or false"),
        ("trainer.epochs", "overrides are written key=value"),
        ("optimizer.lr=__import__('os')", "expected a number"),
    ],
)
def test_bad_overrides_name_the_key_value_and_fix(override, expected):
    with pytest.raises(ConfigError) as err:
        get_recipe("resnet_small").config([override])
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_recipe_suggests_the_nearest():
    with pytest.raises(ConfigError, match="did you mean 'resnet_small'"):
        get_recipe("resnet_smal")


def test_round_trip_through_dict_and_diff():
    recipe = get_recipe("resnet_small")
    cfg = recipe.config(["optimizer.lr=0.3"])
    again = from_dict(recipe.config_class, to_dict(cfg))
    assert diff(cfg, again) == {}
    assert diff(recipe.config(), cfg) == {"optimizer.lr": (0.1, 0.3)}


def test_values_are_parsed_not_evaluated():
    cfg = apply_overrides(get_recipe("resnet_small").config(), ["trainer.out_dir=1+1"])
    assert cfg.trainer.out_dir == "1+1"


def test_duplicate_recipe_names_are_refused():
    from recipes.registry import register_recipe

    with pytest.raises(ValueError, match="already registered"):
        register_recipe("resnet_small", "again", object)(lambda cfg, stats: None)
