"""``callbacks/`` and ``layers/`` are leaf libraries: they import nothing of ``recipes``, ``tuners`` or
``cli.py``, plot through matplotlib's object API without touching the backend, and register what saved
files name so that a ``.keras`` file loads after ``import callbacks`` alone."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np

from callbacks import find_lr

ROOT = Path(__file__).resolve().parents[1]
OURS = ("recipes", "tuners", "cli")

NO_APP_MODULES = """
bad = sorted(m for m in sys.modules if m in ("recipes", "cli") or m.startswith(("recipes.", "tuners")))
assert not bad, f"the leaf libraries pulled in {bad}"
"""


def _python(code: str, *, leaf_check: bool = False, timeout: int = 120) -> str:
    """Run ``code`` in a fresh interpreter at the repository root; fail with its stderr's tail.

    ``leaf_check`` appends an assertion that no module of ours beyond the leaves was imported."""
    code = textwrap.dedent(code) + (NO_APP_MODULES if leaf_check else "")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MPLBACKEND", None)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_sources_import_nothing_of_the_application_and_no_pyplot():
    for path in sorted([*(ROOT / "callbacks").glob("*.py"), *(ROOT / "layers").glob("*.py")]):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or "", *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                names = []
            for name in names:
                assert name.split(".")[0] not in OURS, f"{path.name} imports {name}"
                assert name != "matplotlib.pyplot", f"{path.name} imports pyplot"
            if isinstance(node, ast.Attribute) and node.attr == "use":
                assert getattr(node.value, "id", None) != "matplotlib", f"{path.name} switches the backend"


def test_importing_and_using_them_loads_no_application_module():
    _python(
        """
        import sys

        import keras
        import numpy as np

        import callbacks
        import layers

        warmup = callbacks.warmup_schedule("cosine", 0.1, epochs=2, steps_per_epoch=5, warmup_epochs=1)
        schedule = callbacks.Replannable(warmup)
        model = keras.Sequential([keras.Input((4,)), layers.Maxout(3, pieces=2), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
        model.fit(np.ones((8, 4)), np.ones((8, 1)), batch_size=4, epochs=1, verbose=0,
                  callbacks=[callbacks.LearningRateLogger()])
        assert callbacks.schedule_position(model.optimizer) == (2, 2.0)
        assert callbacks.unwrap_optimizer(model.optimizer) is model.optimizer
        assert abs(callbacks.current_learning_rate(model.optimizer) - 0.02) < 1e-7  # step 1 of 5 warming up
        """,
        leaf_check=True,
    )


def test_plots_leave_the_backend_alone_and_write_pngs(tmp_path):
    _python(
        f"""
        import os
        from pathlib import Path

        import matplotlib

        matplotlib.use("svg")  # headless, and not the Agg that the old plotting code forced

        import keras
        import numpy as np

        from callbacks import ActivationStats, find_lr

        out = Path({str(tmp_path)!r})
        x = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32)
        y = x.sum(axis=1, keepdims=True)
        model = keras.Sequential(
            [keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
        )
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        model.fit(x, y, epochs=1, verbose=0, callbacks=[ActivationStats(x, plot_dir=out)])
        find_lr(model, x, y, min_lr=1e-4, max_lr=1.0, steps=12, batch_size=16).plot(out / "lr.png")
        assert matplotlib.get_backend().lower() == "svg", matplotlib.get_backend()
        for name in ("activations_epoch1.png", "lr.png"):
            assert (out / name).read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n", name
        assert sorted(os.listdir(out)) == ["activations_epoch1.png", "lr.png"]  # no temporary files left
        """
    )


def test_find_lr_applies_the_exponential_sweep_at_every_step():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    min_lr, max_lr, steps = 1e-4, 1e-2, 12
    y = x.sum(axis=1)
    result = find_lr(model, x, y, min_lr=min_lr, max_lr=max_lr, steps=steps, divergence_factor=1e9)
    expected = [min_lr * (max_lr / min_lr) ** (step / (steps - 1)) for step in range(steps)]
    # the rates are read back from the clone's optimizer, so this checks what each step applied (float32)
    np.testing.assert_allclose(result.learning_rates, expected, rtol=2e-6)
    assert result.diverged_at is None


def test_a_replannable_warmup_checkpoint_loads_after_import_callbacks_only(tmp_path):
    _python(
        f"""
        import sys
        from pathlib import Path

        import keras
        import numpy as np

        import callbacks

        path = Path({str(tmp_path)!r}) / "m.keras"
        decay = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=20)
        schedule = callbacks.Replannable(callbacks.Warmup(decay, warmup_steps=4, initial_lr=0.01))
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
        model.fit(np.ones((8, 3)), np.ones((8, 2)), batch_size=4, epochs=1, verbose=0)
        schedule.set_pace(start_step=2, start_position=2.0, pace=2.0)
        model.save(path)

        loaded = keras.saving.load_model(path)
        restored = loaded.optimizer._learning_rate
        assert type(restored) is callbacks.Replannable, type(restored)
        assert type(restored.schedule) is callbacks.Warmup, type(restored.schedule)
        steps = [0, 2, 3, 5, 9, 12]
        np.testing.assert_allclose(
            [float(restored(s)) for s in steps], [float(schedule(s)) for s in steps], rtol=1e-6
        )
        assert callbacks.schedule_position(loaded.optimizer) == (2, 2.0)
        """,
        leaf_check=True,
    )
