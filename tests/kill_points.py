"""A process that kills itself with SIGKILL at a chosen point, for the kill-and-resume tests.

    python tests/kill_points.py step EPOCH:BATCH RECIPE key=value ...  # recipes.run, killed mid-epoch
    python tests/kill_points.py trial N cli.py-ARGS ...      # cli.main, killed as trial N starts
    python tests/kill_points.py write NAME:N cli.py-ARGS ... # cli.main, killed in NAME's N-th write

The kill lands at the same point every time (no polling of files, no timer to race): after the end of
batch BATCH of epoch EPOCH (both counted from 0), or when keras-tuner begins the N-th trial (from 1) of
the process, or in the N-th atomic write of a file named NAME, after its temporary is written and before
it replaces the old file. Nothing is cleaned up, as with a real ``kill -9`` or an out-of-memory kill.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def kill_now() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at_step(epoch: int, batch: int, recipe: str, overrides: list[str]) -> None:
    import keras

    import recipes

    class KillAtStep(keras.callbacks.Callback):
        def on_epoch_begin(self, current, logs=None):
            self.epoch = current

        def on_train_batch_end(self, current, logs=None):
            if self.epoch == epoch and current == batch:
                kill_now()

    recipes.run(recipe, overrides, extra_callbacks=[KillAtStep()])


def kill_at_trial(number: int, cli_args: list[str]) -> int:
    import cli

    cli.quiet_import_tensorflow()
    from keras_tuner.src.engine import base_tuner

    begin = base_tuner.BaseTuner.on_trial_begin
    started = [0]

    def on_trial_begin(self, trial):
        started[0] += 1
        if started[0] == number:
            kill_now()
        return begin(self, trial)

    base_tuner.BaseTuner.on_trial_begin = on_trial_begin
    return cli.main(cli_args)


def kill_at_write(name: str, number: int, cli_args: list[str]) -> int:
    import cli

    cli.quiet_import_tensorflow()
    import recipes.engine.atomic as atomic

    replace = atomic.os.replace
    writes = [0]

    class PatchedOs:  # recipes.engine.atomic's view of os, with a replace that kills at the chosen write
        def __getattr__(self, attr):
            return getattr(os, attr)

        @staticmethod
        def replace(src, dst):
            if Path(dst).name == name:
                writes[0] += 1
                if writes[0] == number:
                    kill_now()
            return replace(src, dst)

    atomic.os = PatchedOs()
    return cli.main(cli_args)


if __name__ == "__main__":
    mode, at, *rest = sys.argv[1:]
    if mode == "step":
        epoch, batch = (int(v) for v in at.split(":"))
        kill_at_step(epoch, batch, rest[0], rest[1:])
    elif mode == "write":
        name, number = at.rsplit(":", 1)
        sys.exit(kill_at_write(name, int(number), rest))
    else:
        sys.exit(kill_at_trial(int(at), rest))
    sys.exit(0)  # reached only when the kill point was never hit
