"""``trainer.budget``: durations, the plan arithmetic, and a real run that ends in time, schedule done."""

import dataclasses
import json
import time

import keras
import pytest

from callbacks import Replannable
from recipes import run
from recipes.config import ConfigError, parse_duration
from recipes.engine.budget import BudgetKeeper, BudgetPlan, fit_schedule_to_plan
from recipes.engine.training import build_optimizer
from recipes.registry import get_recipe


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


def test_the_plan_stretches_the_whole_configured_schedule_of_the_one_optimizer():
    # 30 configured epochs of 351 steps (warmup 2 epochs, linear decay to 0.1x), planned as 5 x 100 steps
    cfg = get_recipe("resnet_small").config(
        ["trainer.budget=600", "schedule.name=linear", "schedule.final_lr_fraction=0.1"]
    )
    optimizer = build_optimizer(cfg, steps_per_epoch=351)
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
        schedule_steps=30 * 351,
    )
    fit_schedule_to_plan(optimizer, plan)
    schedule = optimizer._learning_rate
    lr = cfg.optimizer.lr
    # warmup was 2/30 of the schedule (702 steps of 10,530); it stays 2/30 of the planned 500 steps
    warmup_end = 500 * 2 / 30
    assert float(schedule(warmup_end)) == pytest.approx(lr, rel=1e-3)
    assert float(schedule(warmup_end / 2)) == pytest.approx(lr / 2, rel=1e-2)
    # the linear decay from lr at 2/30 to 0.1 lr at step 500, on a straight line
    mid = (warmup_end + 500) / 2
    assert float(schedule(mid)) == pytest.approx(lr * (1 + 0.1) / 2, rel=1e-3)
    assert float(schedule(500)) == pytest.approx(0.1 * lr, rel=1e-4)


def _mlp_under_budget(tmp_path, budget: float, *extra: str) -> list[str]:
    """Overrides for a small mlp run on the sample whose 50 epochs far exceed ``budget`` seconds."""
    return [
        "data.name=sample",
        "model.width=64",
        "trainer.batch_size=64",
        "trainer.epochs=50",
        f"trainer.budget={budget:g}s",
        "trainer.verbose=silent",
        f"trainer.out_dir={tmp_path}",
        *extra,
    ]


def test_budget_run_finishes_in_time_with_the_schedule_completed(tmp_path):
    budget = 12.0
    overrides = _mlp_under_budget(
        tmp_path,
        budget,
        "data.val_size=500",
        "schedule.name=linear",
        "schedule.warmup_epochs=5",
        "schedule.final_lr_fraction=0.1",
    )
    result = run("mlp", overrides, echo=lambda *a: None)
    report = json.loads((tmp_path / "metrics.json").read_text())["budget"]
    assert report == result.metrics["budget"]
    assert report["used_seconds"] <= budget * 1.1 + 2, report
    assert report["used_seconds"] >= budget * 0.5, report  # it used the time rather than stopping early
    # the plan, or its last re-plan when the machine's speed changed after calibration
    planned_steps = report["replans"][-1]["total_steps"] if report["replans"] else report["total_steps"]
    assert report["schedule_completed"] and report["steps_done"] == planned_steps
    assert report["epochs"] < 50
    lr = get_recipe("mlp").config().optimizer.lr
    assert report["final_learning_rate"] == pytest.approx(0.1 * lr, rel=1e-4)  # the decay's end value
    assert json.loads((tmp_path / "plan.json").read_text())["total_steps"] == report["total_steps"]


def test_replannable_compresses_the_rest_of_the_schedule_and_round_trips():
    linear = keras.optimizers.schedules.PolynomialDecay(1.0, decay_steps=100, end_learning_rate=0.0)
    schedule = Replannable(linear)
    assert float(schedule(30)) == pytest.approx(0.7)  # the identity until a re-plan
    schedule.set_pace(40, 40.0, 2.0)  # at step 40, the remaining 60 steps of schedule in 30
    assert float(schedule(55)) == pytest.approx(1 - 70 / 100)
    assert float(schedule(70)) == pytest.approx(0.0)  # the decay's end, 30 steps early
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert float(clone(55)) == pytest.approx(0.3) and clone.get_config()["pace"] == 2.0


def _keeper_on_a_fake_clock(monkeypatch, plan):
    import recipes.engine.budget

    now = [0.0]
    monkeypatch.setattr(recipes.engine.budget.time, "perf_counter", lambda: now[0])
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    linear = keras.optimizers.schedules.PolynomialDecay(
        1.0, decay_steps=plan.total_steps, end_learning_rate=0.0
    )
    model.compile(optimizer=keras.optimizers.SGD(Replannable(linear)), loss="mse")
    model.optimizer.build(model.trainable_variables)
    records = []
    keeper = BudgetKeeper(plan, clock=0.0, on_replan=records.append)
    keeper.set_model(model)
    keeper.on_train_begin()

    def epoch(index: int, ends_at: float, logs: dict | None = None) -> None:
        model.optimizer.iterations.assign((index + 1) * plan.steps_per_epoch)
        now[0] = ends_at
        keeper.on_epoch_end(index, logs)

    return model, epoch, records


def _plan(**changes) -> BudgetPlan:
    fields = dict(
        budget_seconds=100.0,
        epochs=10,
        steps_per_epoch=10,
        total_steps=100,
        epoch_scale=1.0,
        seconds_per_step=0.8,
        calibration_seconds=1.0,
        reserved_seconds=5.0,
        configured_epochs=10,
        configured_steps_per_epoch=10,
        final_eval_seconds=5.0,
    )
    return BudgetPlan(**{**fields, **changes})


def test_budget_keeper_compresses_the_schedule_when_epochs_slow_down(monkeypatch):
    plan = _plan()  # 10 epochs of 10 steps in 100 s, 5 s kept for the final evaluation
    model, epoch, records = _keeper_on_a_fake_clock(monkeypatch, plan)
    epoch(0, 9.0)  # 9 s per epoch: 10 epochs and the final 5 s fit in 100 s, no room for an 11th
    assert records == []
    # 12 s: at the median pace of 10.5 s (1.05 s a step) the 80 planned steps would end at 110 s; 74 s
    # are left, and keeping 5% of the budget (5 s) spare, 69 s hold 65 steps: 6 epochs and 5 steps
    epoch(1, 21.0)
    assert records == [
        {
            "after_epoch": 2,
            "epochs": 9,
            "total_steps": 85,
            "last_epoch_steps": 5,
            "seconds_per_epoch": 10.5,
            "slower": True,
        }
    ]
    assert plan.stop_epoch == 9 and plan.stop_steps == 5 and plan.replans == records
    schedule = model.optimizer._learning_rate
    # the remaining 80 positions of the schedule run in 65 steps: position 20 + (t - 20) * 80/65
    assert float(schedule(55)) == pytest.approx(1 - (20 + 35 * 80 / 65) / 100, rel=1e-5)
    assert float(schedule(85)) == pytest.approx(0.0, abs=1e-6)
    now, index = 21.0, 2
    while not model.stop_training:  # the machine stays slow: the plan shrinks as the pace settles
        now += 12.0
        epoch(index, now)
        index += 1
    assert index == plan.stop_epoch and now + plan.final_eval_seconds <= plan.budget_seconds
    assert all(r["slower"] for r in records) and len(records) >= 2
    assert float(schedule(plan.planned_total_steps)) == pytest.approx(0.0, abs=1e-6)  # decay done


def test_the_first_epoch_is_timed_without_the_tracing_it_paid(monkeypatch):
    import recipes.engine.budget

    plan = _plan(epoch_overhead_seconds=0.5)  # 10 steps an epoch
    model, epoch, records = _keeper_on_a_fake_clock(monkeypatch, plan)
    keeper = BudgetKeeper(plan, clock=0.0, on_replan=records.append)
    keeper.set_model(model)
    keeper.set_params({"steps": 10})
    now = [0.0]
    monkeypatch.setattr(recipes.engine.budget.time, "perf_counter", lambda: now[0])
    keeper.on_train_begin()
    keeper.on_epoch_begin(0)
    for step, ends_at in enumerate([3.0, *range(4, 13)]):  # the first step traced for 2 s; then 1 s each
        now[0] = ends_at
        keeper.on_train_batch_end(step)
    model.optimizer.iterations.assign(10)
    now[0] = 14.0  # validation, and its own first trace
    keeper.on_epoch_end(0, {"loss": 1.0, "val_loss": 1.0})
    assert keeper._costs == [pytest.approx(9 / 9 * 10 + 0.5)]  # 9 steps' pace x 10, and the overhead
    model.optimizer.iterations.assign(20)
    now[0] = 26.0  # 12 s: at the median of 10.5 and 12 s the 80 planned steps no longer fit
    keeper.on_epoch_end(1, {"loss": 1.0, "val_loss": 1.0})
    assert records[-1]["seconds_per_epoch"] == pytest.approx((10.5 + 12.0) / 2)


def test_budget_keeper_does_not_chase_one_slow_epoch(monkeypatch):
    # 15 epochs of 11 s and the final 5 s: 5 s to spare, less than the 5% a grown plan would keep
    plan = _plan(budget_seconds=175.0, epochs=15, total_steps=150)
    model, epoch, records = _keeper_on_a_fake_clock(monkeypatch, plan)
    now = 0.0
    for index, cost in enumerate([11, 11, 11, 15, 11, 11, 10, 11, 11, 11, 11, 11, 11, 11, 11]):
        now += cost
        epoch(index, now)
    # at a pace of the last epoch, or of the last three's mean, the 15 s epoch would have cut the plan
    assert records == [] and model.stop_training and now + 5.0 <= 175.0


def test_budget_keeper_stretches_the_schedule_when_epochs_run_faster(monkeypatch):
    plan = _plan()  # 10 epochs planned in 100 s, 5 s kept for the final evaluation
    model, epoch, records = _keeper_on_a_fake_clock(monkeypatch, plan)
    epoch(0, 5.0)  # 5 s per epoch: one epoch's evidence is not enough to grow the plan
    assert records == []
    epoch(1, 10.0)  # 85 s left; keeping 5% of the budget spare, 16 more epochs fit (8 were planned)
    assert records == [
        {
            "after_epoch": 2,
            "epochs": 18,
            "total_steps": 180,
            "last_epoch_steps": 10,
            "seconds_per_epoch": 5.0,
            "slower": False,
        }
    ]
    schedule = model.optimizer._learning_rate
    # the remaining 80 positions of the schedule now span 160 steps: position 20 + (t - 20) / 2
    assert float(schedule(100)) == pytest.approx(1 - (20 + 80 / 2) / 100, rel=1e-5)
    assert float(schedule(180)) == pytest.approx(0.0, abs=1e-6)
    for index in range(2, 17):  # a steady pace: the margin stays, and the plan does not creep
        epoch(index, 5.0 * (index + 1))
        assert not model.stop_training
    epoch(17, 90.0)  # the grown plan's last epoch, then the final evaluation's 5 s, 5 s to spare
    assert model.stop_training and len(records) == 1


def test_budget_keeper_grows_a_plan_at_most_to_max_epochs(monkeypatch):
    plan = _plan()
    assert plan.max_epochs == 20
    model, epoch, records = _keeper_on_a_fake_clock(monkeypatch, plan)
    epoch(0, 1.0)
    epoch(1, 2.0)  # 1 s per epoch: 91 more would fit, but a plan grows to at most twice its length
    assert records[-1]["epochs"] == 20 and plan.stop_epoch == 20


def test_budget_keeper_stops_when_not_even_one_epoch_fits(monkeypatch):
    plan = _plan()
    model, epoch, records = _keeper_on_a_fake_clock(monkeypatch, plan)
    epoch(0, 8.0)
    with pytest.warns(UserWarning, match="not even one more step fits"):
        epoch(1, 94.0)  # a median of 47 s an epoch (4.7 s a step) with 1 s left before the final evaluation
    assert model.stop_training and records[-1]["epochs"] == 2 and records[-1]["total_steps"] == 20
    assert plan.stop_steps == 10  # a resume before epoch 2's checkpoint trains it whole


class _Slowdown(keras.callbacks.Callback):
    """The machine slows down after the first epoch: every later epoch takes ``seconds`` longer."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_epoch_begin(self, epoch, logs=None):
        if epoch:
            time.sleep(self.seconds)


def test_a_run_that_slows_down_is_replanned_and_stops_at_the_new_plan(tmp_path):
    # The arithmetic of a re-plan is tested on a fake clock above; this checks the wiring in a real run.
    # No time assertion: on a loaded machine a single slowed epoch can outlast what is left. 30 s, not 20:
    # under CI's load, set-up and calibration once took 12 s and the final evaluation was estimated at 10.
    budget = 30.0
    overrides = _mlp_under_budget(tmp_path, budget, "data.val_size=100")
    lines = []
    result = run("mlp", overrides, echo=lines.append, extra_callbacks=[_Slowdown(0.3 * budget)])
    report = result.metrics["budget"]
    if report["epochs"] > 2:  # after the second epoch the epochs left no longer fit
        assert report["replans"], report
        assert result.metrics["epochs_completed"] == report["replans"][-1]["epochs"] < report["epochs"]
        assert report["steps_done"] == report["replans"][-1]["total_steps"]  # a last epoch ends partway
        compute = result.metrics["compute"]  # counts the steps trained, not whole epochs
        images = report["steps_done"] * 64
        assert compute["train_pflops"] == pytest.approx(
            images * compute["train_flops_per_image"] / 1e15, rel=1e-3
        )
        assert json.loads((tmp_path / "plan.json").read_text())["replans"] == report["replans"]
        assert any("slower than planned" in line for line in lines)


def test_a_run_planned_too_short_is_stretched_and_ends_in_time(tmp_path, monkeypatch):
    # Calibration that catches a slow moment plans too few epochs; simulate it by cutting the calibrated
    # plan to a third, at least 3 epochs (growing waits for two timed ones). 30 s of short epochs fit 10 or
    # more on the slowest 2-core machine, idle or with one core busy elsewhere, so the keeper grows the plan,
    # and the run still ends in time with its schedule completed. (Planning on a quarter of the time left
    # instead gave 5-6 epochs idle but 2 under CI's load, too few to grow, and the test failed there; 20 s
    # failed once under the other test worker's load, as its sibling above did.)
    import recipes.engine.run

    budget = 30.0
    real_calibrate = recipes.engine.run.calibrate

    def pessimistic_calibrate(*args, **kwargs):
        plan = real_calibrate(*args, **kwargs)
        assert plan.epochs > 3, f"too loaded a machine: {budget:g} s fit only {plan.epochs} epochs"
        epochs = max(3, plan.epochs // 3)  # a third of what fits: room to grow even if the load rises
        total = epochs * plan.steps_per_epoch + plan.calibration_steps
        configured = plan.configured_epochs * plan.configured_steps_per_epoch
        return dataclasses.replace(plan, epochs=epochs, total_steps=total, epoch_scale=total / configured)

    monkeypatch.setattr(recipes.engine.run, "calibrate", pessimistic_calibrate)
    overrides = _mlp_under_budget(
        tmp_path,
        budget,
        "data.train_limit=500",  # short epochs: the plan has several, and a re-plan acts at epoch ends
        "data.val_size=100",
        "schedule.name=linear",
        "schedule.final_lr_fraction=0.1",
    )
    lines = []
    result = run("mlp", overrides, echo=lines.append)
    report = result.metrics["budget"]
    assert any(not r["slower"] for r in report["replans"]), report
    assert report["epochs"] < max(r["epochs"] for r in report["replans"]) <= 2 * report["epochs"]
    assert result.metrics["epochs_completed"] == report["replans"][-1]["epochs"]
    assert any("faster than planned" in line and "stretched" in line for line in lines)
    assert report["schedule_completed"] and report["steps_done"] == report["replans"][-1]["total_steps"]
    lr = get_recipe("mlp").config().optimizer.lr
    assert report["final_learning_rate"] == pytest.approx(0.1 * lr, rel=1e-4)
    assert report["used_seconds"] <= budget * 1.1 + 2, report


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
    from recipes.engine.budget import best_plan

    assert best_plan(seconds, step, per_epoch, spe) == expected


@pytest.mark.parametrize(
    "seconds, step, per_epoch, spe, most, expected",
    [
        (100.0, 1.0, 0.0, 30, 1000, 100),  # no overhead: every second trains, the last epoch partway
        (100.0, 1.0, 5.0, 30, 1000, 85),  # 4 epochs (20 s of overhead) hold 80, 3 hold all 85 that fit
        (100.0, 1.0, 5.0, 50, 1000, 90),  # 2 epochs: 90 steps; a third epoch would leave 85
        (100.0, 1.0, 5.0, 30, 40, 40),  # capped at the most the plan may grow to
        (4.0, 1.0, 5.0, 30, 1000, 0),  # one epoch's overhead alone overruns
        (10.5, 2.0, 0.0, 3, 1000, 5),  # 5 whole steps in 10.5 s, the second epoch 2 steps in
    ],
)
def test_steps_that_fit_counts_partial_epochs_and_their_overhead(
    seconds, step, per_epoch, spe, most, expected
):
    from recipes.engine.budget import steps_that_fit

    assert steps_that_fit(seconds, step, per_epoch, spe, most) == expected


def test_the_keeper_ends_the_last_epoch_partway_where_the_plan_says(tmp_path):
    import numpy as np

    plan = _plan(epochs=4, total_steps=40)
    # a re-plan after epoch 1: end after 25 steps, that is 5 steps into epoch 3
    record = {"after_epoch": 1, "epochs": 3, "total_steps": 25, "last_epoch_steps": 5}
    plan.replans.append({**record, "seconds_per_epoch": 1.0, "slower": True})
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((400, 2), "float32")
    history = model.fit(
        x,
        x[:, :1],
        batch_size=4,
        epochs=plan.max_epochs,
        steps_per_epoch=10,
        verbose=0,
        callbacks=[BudgetKeeper(plan, clock=None)],
    )
    assert int(model.optimizer.iterations) == 25 and len(history.history["loss"]) == 3


@pytest.mark.parametrize(
    "record, steps_per_epoch, says",
    [
        ({"epochs": 9, "total_steps": 85, "last_epoch_steps": 5}, 10, "epoch 9, 5 of its 10 steps (85 steps"),
        ({"epochs": 9, "total_steps": 90, "last_epoch_steps": 10}, 10, "epoch 9 (90 steps in all)"),
        (
            {"epochs": 9, "total_steps": 90},
            10,
            "epoch 9 (90 steps in all)",
        ),  # a plan.json before partial epochs
        ({"epochs": 2, "total_steps": 20, "last_epoch_steps": 10}, 10, "no further step fits"),
    ],
)
def test_a_replan_says_where_it_ends(record, steps_per_epoch, says):
    from recipes.engine.progress import replan_line

    line = replan_line(
        {"after_epoch": 2, "seconds_per_epoch": 10.5, "slower": True, **record}, steps_per_epoch
    )
    assert says in line


def _calibration_model(lr: float, schedule_steps: int):
    """A linear regression under SGD on a Replannable linear decay, and 64 batches of its data."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64 * 8, 4)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    linear = keras.optimizers.schedules.PolynomialDecay(lr, decay_steps=schedule_steps, end_learning_rate=0.0)
    model.compile(optimizer=keras.optimizers.SGD(Replannable(linear)), loss="mse")
    model.optimizer.build(model.trainable_variables)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    return model, ds


def _calibrate(model, ds, budget: float, configured_epochs: int):
    import numpy as np

    from recipes.engine.budget import calibrate

    return calibrate(
        model,
        ds,
        budget_seconds=budget,
        elapsed_seconds=0.0,
        steps_per_epoch=64,
        configured_epochs=configured_epochs,
        eval_images=np.zeros((16, 4), "float32"),
        eval_batch_size=16,
        val_examples=0,
    )


def test_calibration_steps_stay_trained_and_count_in_the_plan():
    from recipes.engine.budget import CALIBRATION_STEPS

    model, ds = _calibration_model(0.01, schedule_steps=64 * 50)
    before = [w.copy() for w in model.get_weights()]
    plan = _calibrate(model, ds, budget=60.0, configured_epochs=50)
    assert plan.calibration_steps == CALIBRATION_STEPS
    assert int(model.optimizer.iterations) == CALIBRATION_STEPS
    assert any(not (a == b).all() for a, b in zip(before, model.get_weights()))
    assert plan.total_steps == plan.epochs * plan.steps_per_epoch + CALIBRATION_STEPS
    # the kept steps read the schedule at its own pace; the rest of it spreads over the plan's other steps
    fit_schedule_to_plan(model.optimizer, plan)
    schedule = model.optimizer._learning_rate
    end = 64 * 50
    assert float(schedule.position(CALIBRATION_STEPS)) == pytest.approx(CALIBRATION_STEPS)
    assert float(schedule.position(plan.total_steps)) == pytest.approx(end, rel=1e-5)
    halfway = (CALIBRATION_STEPS + plan.total_steps) / 2
    assert float(schedule.position(halfway)) == pytest.approx((CALIBRATION_STEPS + end) / 2, rel=1e-5)


@pytest.mark.parametrize(
    "lr, configured_epochs, why",
    [
        (0.01, 1, "a schedule of 64 steps: 30 calibration steps would be half of it"),
        (1e30, 50, "the calibration diverged: its weights are not finite"),
    ],
)
def test_calibration_steps_are_undone_when_they_cannot_stay(lr, configured_epochs, why):
    model, ds = _calibration_model(lr, schedule_steps=64 * configured_epochs)
    before = [w.copy() for w in model.get_weights()]
    plan = _calibrate(model, ds, budget=60.0, configured_epochs=configured_epochs)
    assert plan.calibration_steps == 0, why
    assert int(model.optimizer.iterations) == 0
    assert all((a == b).all() for a, b in zip(before, model.get_weights())), why
    assert plan.total_steps == plan.epochs * plan.steps_per_epoch


@pytest.mark.parametrize(
    "per_pass, allowed, budget, expected",
    [
        (5.0, (6, 2, 1), 600.0, 6),  # 30 s of 600: within a tenth
        (15.0, (6, 2, 1), 600.0, 2),  # 90 s would pass 60 s; 30 s fits
        (40.0, (6, 2, 1), 600.0, 1),  # even two views (80 s) would not fit
        (100.0, (6, 2, 1), 600.0, 1),  # nothing fits: the plain pass, the least there is
        (15.0, (2, 1), 600.0, 2),
        (1.0, (1,), 600.0, 1),  # trainer.tta=false stays one view however cheap
    ],
)
def test_final_evaluation_views_fit_a_tenth_of_the_budget(per_pass, allowed, budget, expected):
    from recipes.engine.budget import EVAL_SHARE, eval_views_that_fit

    assert EVAL_SHARE == 0.10
    assert eval_views_that_fit(per_pass, allowed, budget) == expected


@pytest.mark.parametrize("train_limit, batch", [(500, 64), (2000, 100)])
def test_calibration_trains_on_batches_the_first_epoch_does_not_start_with(train_limit, batch):
    import numpy as np

    from recipes.data import load_data
    from recipes.engine.budget import CALIBRATION_STEPS
    from recipes.engine.training import _datasets, calibration_dataset

    cfg = get_recipe("mlp").config(
        ["data.name=sample", f"data.train_limit={train_limit}", f"trainer.batch_size={batch}"]
    )
    data = load_data(cfg.data, seed=0)
    calibration = [x.numpy() for x, _ in calibration_dataset(cfg, data, batch)]
    assert len(calibration) >= CALIBRATION_STEPS  # 7 batches an epoch still give 30 steps
    train, _ = _datasets(cfg, data, batch, 256, 0, None, 1)
    first_epoch = [x.numpy() for x, _ in train]
    assert not any(np.array_equal(c, f) for c in calibration[:5] for f in first_epoch[:5])


def test_a_budget_run_without_validation_trains_on_every_image(tmp_path, capsys):
    import cli

    args = _mlp_under_budget(tmp_path, 12.0, "data.train_limit=500", "data.val_size=0")
    assert cli.main(["run", "recipe=mlp", *args]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_examples"] == 500 and metrics["best_val_accuracy"] is None
    # the plan is made over all 500 images (7 whole batches an epoch); the steps it fits in each epoch,
    # and whether the schedule completes, depend on this machine's pace over 12 s (other tests cover them)
    budget = metrics["budget"]
    assert budget["configured_steps_per_epoch"] == 500 // 64
    assert 1 <= budget["steps_per_epoch"] <= 500 // 64
    assert "fit_diagnosis" not in metrics
    header = (tmp_path / "history.csv").read_text().splitlines()[0].split(",")
    assert "accuracy" in header and "val_accuracy" not in header
    assert "no validation set (data.val_size=0)" in capsys.readouterr().out


def test_the_keeper_announces_a_short_last_epoch_to_the_update_ratio_logger():
    import keras
    import numpy as np

    from callbacks import UpdateRatioLogger

    plan = _plan(epochs=4, total_steps=40)
    record = {"after_epoch": 1, "epochs": 3, "total_steps": 25, "last_epoch_steps": 5}
    plan.replans.append({**record, "seconds_per_epoch": 1.0, "slower": True})
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 2)).astype("float32")
    logger, seen = UpdateRatioLogger(), []

    class Kernels(keras.callbacks.Callback):  # the kernel before and after every step
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(np.array(model.layers[0].kernel))

        def on_train_end(self, logs=None):
            seen.append(np.array(model.layers[0].kernel))

    history = model.fit(
        x,
        x.sum(axis=1, keepdims=True),
        batch_size=4,
        epochs=plan.max_epochs,
        steps_per_epoch=10,
        shuffle=False,
        verbose=0,
        callbacks=[BudgetKeeper(plan, clock=None, listeners=[logger, "not a callback"]), logger, Kernels()],
    )
    assert int(model.optimizer.iterations) == 25
    # the third epoch ends after its 5th step (step 24 of the run): that step's ratio, by the formula
    want = np.linalg.norm(seen[25] - seen[24]) / np.linalg.norm(seen[24])
    assert history.history["update_ratio"][2] == pytest.approx(want, rel=1e-4)
