"""``trainer.budget``: durations, the plan arithmetic, and a real run that ends in time, schedule done."""

import json

import pytest

from recipes.budget import BudgetPlan, planned_config
from recipes.config import ConfigError, parse_duration
from recipes.registry import get_recipe
from recipes.train import run


@pytest.mark.parametrize(
    "text, seconds", [("600", 600.0), ("90s", 90.0), ("10min", 600.0), ("10m", 600.0), ("1.5h", 5400.0)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["ten", "-5", "0", "5 parsecs", "nanmin"])
def test_bad_budget_is_one_clear_line(bad):
    with pytest.raises(ConfigError) as err:
        get_recipe("mlp").config([f"trainer.budget={bad}"])
    assert str(err.value).startswith(f"trainer.budget={bad}: expected") and "\n" not in str(err.value)


def test_plan_stretches_every_epoch_length_of_the_schedule():
    cfg = get_recipe("resnet_small").config(["trainer.epochs=30", "schedule.warmup_epochs=2"])
    plan = BudgetPlan(
        budget_seconds=600,
        epochs=5,
        steps_per_epoch=100,
        total_steps=500,
        epoch_scale=500 / (30 * 351),
        seconds_per_step=1.0,
        calibration_seconds=1.0,
        reserved_seconds=10.0,
        configured_epochs=30,
        configured_steps_per_epoch=351,
    )
    planned = planned_config(cfg, plan)
    assert planned.trainer.epochs == 5
    # warmup was 2/30 of the schedule; it stays 2/30 of the planned 5 x 100 steps
    assert planned.schedule.warmup_epochs * plan.steps_per_epoch == pytest.approx(500 * 2 / 30)
    assert cfg.trainer.epochs == 30  # the original config is untouched


def test_budget_run_finishes_in_time_with_the_schedule_completed(tmp_path):
    budget = 12.0
    overrides = [
        "data.name=sample",
        "data.val_size=500",
        "model.width=64",
        "trainer.batch_size=64",
        "trainer.epochs=50",  # far more than fits: the plan shrinks the schedule
        f"trainer.budget={budget:g}s",
        "schedule.name=linear",
        "schedule.warmup_epochs=5",
        "schedule.final_lr_fraction=0.1",
        "trainer.verbose=silent",
        f"trainer.out_dir={tmp_path}",
    ]
    result = run("mlp", overrides, echo=lambda *a: None)
    report = json.loads((tmp_path / "metrics.json").read_text())["budget"]
    assert report == result.metrics["budget"]
    assert report["used_seconds"] <= budget * 1.1 + 2, report
    assert report["used_seconds"] >= budget * 0.5, report  # it used the time rather than stopping early
    assert report["schedule_completed"] and report["steps_done"] == report["total_steps"]
    assert report["epochs"] < 50
    lr = get_recipe("mlp").config().optimizer.lr
    assert report["final_learning_rate"] == pytest.approx(0.1 * lr, rel=1e-4)  # the decay's end value
    assert json.loads((tmp_path / "plan.json").read_text())["total_steps"] == report["total_steps"]


def test_budget_too_small_for_anything_says_so(tmp_path):
    with pytest.raises(ConfigError, match="trainer.budget=1s: a budget of 1s leaves no time to train"):
        run(
            "mlp",
            [
                "data.name=sample",
                "trainer.budget=1s",
                "trainer.verbose=silent",
                f"trainer.out_dir={tmp_path}",
            ],
            echo=lambda *a: None,
        )


@pytest.mark.parametrize(
    "seconds, step, per_epoch, spe, expected",
    [
        (100.0, 1.0, 0.0, 30, (100, 4)),  # no overhead: every second trains
        (100.0, 1.0, 5.0, 30, (85, 3)),  # 3 epochs cost 15 s of overhead: 85 steps fit, more than 60
        (100.0, 1.0, 5.0, 50, (90, 2)),
        (3.0, 1.0, 5.0, 50, (0, 1)),
    ],
)
def test_best_plan_counts_the_per_epoch_overhead(seconds, step, per_epoch, spe, expected):
    from recipes.budget import best_plan

    assert best_plan(seconds, step, per_epoch, spe) == expected
