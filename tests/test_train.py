"""End to end: real runs of the CLI on a few hundred images of the bundled sample."""

import json
import shutil
import signal

import keras
import numpy as np
import pytest
import yaml

import callbacks  # noqa: F401  (registers Warmup, which the saved optimizer uses)
from recipes import run
from recipes.config import merge_overrides
from tests import processes
from tests.conftest import ROOT, run_cli

SMOKE = ["data.name=sample", "data.train_limit=256", "data.val_size=100", "trainer.batch_size=64"]
FILES = [
    "config.yaml",
    "run_info.json",
    "history.csv",
    "metrics.json",
    "model.keras",
    "loss.png",
    "accuracy.png",
    "learning_rate.png",
    "state.json",
]


def test_one_epoch_run_writes_every_output_and_the_model_takes_raw_images(tmp_path, sample_arrays):
    out = tmp_path / "run"
    proc = run_cli(
        "run",
        "recipe=resnet_small",
        *SMOKE,
        "trainer.epochs=1",
        f"trainer.out_dir={out}",
        "model.width=8",
        "model.depth_blocks=1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "BUNDLED CIFAR-10 SAMPLE" in proc.stdout
    assert "cuInit" not in proc.stderr  # no CUDA probing noise (on a machine without an NVIDIA driver)
    assert "Downloading data from" not in proc.stdout
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "test_accuracy",
        "test_loss",
        "test_examples",
        "best_val_accuracy",
        "epochs_completed",
        "train_seconds",
        "images_per_second",
        "data_source",
        "versions",
    ):
        assert key in metrics, key
    assert metrics["data_is_sample"] is True and metrics["test_examples"] == 1000
    assert metrics["epochs_completed"] == 1
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    for key in (
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "learning_rate",
        "dead_fraction",
        "update_ratio",
        "grad_norm_ratio",
        "train_clean_accuracy",
    ):
        assert key in header, key
    # the train/val diagnosis is made from the last epoch's clean training and validation accuracy
    last = dict(zip(header, (out / "history.csv").read_text().splitlines()[-1].split(",")))
    diagnosis = metrics["fit_diagnosis"]
    assert diagnosis["train_clean_accuracy"] == pytest.approx(float(last["train_clean_accuracy"]))
    gap = float(last["train_clean_accuracy"]) - float(last["val_accuracy"])
    assert diagnosis["gap"] == pytest.approx(gap)
    assert diagnosis["diagnosis"] in {"overfitting", "underfitting", "neither"} and "fit: " in proc.stdout
    assert (out / "filters.png").read_bytes()[:4] == b"\x89PNG"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard" / "monitors"), size_guidance={"tensors": 0}).Reload()
    tags = events.Tags()["tensors"]  # TF2 summaries are stored as tensors
    assert any(t.startswith("gradients/") for t in tags) and "first_layer_filters" in tags, tags
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["width"] == 8 and config["trainer"]["out_dir"] == str(out)
    info = json.loads((out / "run_info.json").read_text())
    assert info["seed"] == 0 and "model.width=8" in info["overrides"] and "keras" in info["versions"]
    # ResNet-8 at width 8 counted by hand: stem, stage 1, stages 2-3 (strided conv, conv, 1x1 shortcut), head
    macs = 32 * 32 * 27 * 8 + 2 * 32 * 32 * 9 * 64 + 16 * 16 * 9 * 8 * 16 + 16 * 16 * 9 * 256 + 16 * 16 * 128
    macs += 8 * 8 * 9 * 16 * 32 + 8 * 8 * 9 * 32 * 32 + 8 * 8 * 16 * 32 + 32 * 10
    compute = metrics["compute"]
    assert compute["forward_macs_per_image"] == macs
    trained = (info["train_examples"] // 64) * 64  # one epoch
    assert compute["train_pflops"] == pytest.approx(trained * 6 * macs / 1e15, rel=1e-3)
    # a few GFLOP: the closing line picks the unit that fits
    assert compute["train_gflops_per_second"] > 0 and "GFLOP at" in proc.stdout

    model = keras.saving.load_model(out / "model.keras")
    x_test, y_test = sample_arrays[2], sample_arrays[3]
    probs = model.predict(x_test.astype(np.float32), verbose=0)  # raw 0-255 pixels
    assert probs.shape == (1000, 10)
    # the saved model reproduces the recorded accuracy (flip TTA is on by default for resnet_small)
    flipped = model.predict(x_test[:, :, ::-1].astype(np.float32), verbose=0)
    both = keras.ops.softmax(probs) + keras.ops.softmax(flipped)
    assert np.mean(np.argmax(both, -1) == y_test) == pytest.approx(metrics["test_accuracy"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run of a tiny resnet_small, trained once for the module, and its overrides less
    ``trainer.out_dir``: tests compare with it or work on a copy."""
    args = [
        *merge_overrides(SMOKE, ["data.train_limit=128"]),
        "trainer.epochs=2",
        "model.width=4",
        "model.depth_blocks=1",
        "trainer.verbose=silent",
    ]
    out = tmp_path_factory.mktemp("finished") / "run"
    run("resnet_small", [*args, f"trainer.out_dir={out}"], echo=lambda *a: None)
    return out, args


def test_same_seed_gives_identical_weights(tmp_path, finished):
    first, args = finished
    run("resnet_small", [*args, f"trainer.out_dir={tmp_path / 'b'}"], echo=lambda *a: None)
    weights = [keras.saving.load_model(out / "model.keras").get_weights() for out in (first, tmp_path / "b")]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_resume_refuses_a_different_config(tmp_path, capsys, finished):
    import cli

    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    changed = [*(a for a in finished[1] if a != "trainer.epochs=2"), f"trainer.out_dir={out}"]
    capsys.readouterr()
    code = cli.main(["run", "recipe=resnet_small", *changed, "optimizer.lr=0.3", "trainer.epochs=3"])
    err = capsys.readouterr().err
    assert code == 2  # a one-line error, not an exception (the CLI's own process is tested elsewhere)
    assert "optimizer.lr: 0.1 -> 0.3" in err and "trainer.epochs: 2 -> 3" in err


def test_killed_run_resumes_from_its_last_epoch(tmp_path):
    out = tmp_path / "run"
    overrides = [
        *merge_overrides(SMOKE, ["data.train_limit=512"]),
        "trainer.epochs=4",
        "model.width=4",
        "model.depth_blocks=1",
        f"trainer.out_dir={out}",
    ]
    args = ["run", "recipe=resnet_small", *overrides]
    # SIGKILLed by its own callback after batch 3 of epoch 2: epoch 1 is checkpointed, epoch 2 half done
    killed = processes.run(ROOT / "tests" / "kill_points.py", "step", "1:3", "resnet_small", *overrides)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = out / "state.json"
    done = json.loads(state.read_text())["epochs_completed"]
    assert done == 1
    assert not (out / "metrics.json").exists()

    resumed = processes.run(ROOT / "cli.py", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resumed {out} from epoch {done}/4" in resumed.stdout
    history = (out / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3", "4"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 4
    # the schedule continued at the right step: the last epoch's rate is the cosine's value there
    lr_column = history[0].split(",").index("learning_rate")
    last_lr = float(history[-1].split(",")[lr_column])
    steps = 4 * 8  # 4 epochs of 8 steps (512 training images / 64)
    warmup = 2 * 8
    decay_step = steps - 1 - warmup
    expected = 0.1 * 0.5 * (1 + np.cos(np.pi * decay_step / (steps - warmup)))
    assert last_lr == pytest.approx(expected, rel=1e-4)


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, finished):
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    args = [*finished[1], f"trainer.out_dir={out}"]
    newest = out / "checkpoints" / "epoch-002.keras"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a crash mid-copy
    (out / "metrics.json").unlink()
    messages = []
    with pytest.warns(UserWarning, match="epoch-002.keras is damaged"):
        result = run("resnet_small", args, echo=messages.append)
    assert result.resumed_from == 1
    assert result.metrics["epochs_completed"] == 2


def test_diverging_run_exits_non_zero_and_says_so(tmp_path):
    out = tmp_path / "run"
    proc = processes.run(
        ROOT / "cli.py",
        "run",
        "recipe=mlp",
        *SMOKE,
        "trainer.epochs=2",
        "optimizer.lr=1e4",
        "model.width=32",
        f"trainer.out_dir={out}",
    )
    assert proc.returncode == 3
    assert "NaN guard" in proc.stderr and "optimizer.lr=" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "diverged"
    model = keras.saving.load_model(out / "model.keras")
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
