"""``python SCRIPT ARGS`` in a new process, without paying for TensorFlow's import in each one.

Importing TensorFlow costs 5-8 s of CPU, most of what a kill-and-resume or distributed test's process
spends. ``multiprocessing``'s fork server imports it (with Keras and our packages) once per test process,
and initialises nothing; each process started here is forked from it and runs SCRIPT as ``python`` would
(as ``__main__``, with its ``sys.argv``, environment and working directory). It is a process of its own
whose TensorFlow starts uninitialised: a SIGKILL ends it alone, a CPU split or ``TF_CONFIG`` takes effect
as in a new interpreter. What it cannot show is what TensorFlow prints while importing, or how a script
finds our packages: tests of those start ``sys.executable`` instead.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# imported once, in the fork server; not keras_tuner: it imports grpc, which does not support fork by default
PRELOAD = ["tensorflow", "keras", "matplotlib.figure", "cli", "recipes", "recipes.engine.run"]

_context = None


def _fork_server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload([*PRELOAD, __name__])
    return _context


def _child(script: str, args: list[str], env: dict, cwd: str, logs: str) -> None:
    """The forked process: ``python SCRIPT ARGS``'s environment, output files, exit status."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        out = os.open(os.path.join(logs, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, fd)
        os.close(out)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(script))
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:  # as the interpreter takes it: None is 0, a message is printed and is 1
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # what the interpreter runs at exit; multiprocessing's children skip it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Process:
    """``python SCRIPT ARGS`` started: :meth:`wait` gives its ``CompletedProcess`` (returncode -9 when it
    was SIGKILLed, as ``subprocess`` reports it)."""

    def __init__(self, script, args, *, env: dict | None = None, cwd=ROOT):
        self.args = [str(script), *map(str, args)]
        self._logs = tempfile.mkdtemp(prefix="process-")
        env = dict(os.environ if env is None else env)
        self._proc = _fork_server().Process(
            target=_child, args=(self.args[0], self.args[1:], env, str(cwd), self._logs), daemon=False
        )
        self._proc.start()

    def running(self) -> bool:
        return self._proc.is_alive()

    def kill(self) -> None:
        self._proc.kill()

    def wait(self, timeout: float = 240) -> subprocess.CompletedProcess:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            self._proc.kill()
            self._proc.join()
            shutil.rmtree(self._logs, ignore_errors=True)
            raise subprocess.TimeoutExpired(self.args, timeout)
        out, err = (Path(self._logs, name).read_text(errors="replace") for name in ("stdout", "stderr"))
        shutil.rmtree(self._logs, ignore_errors=True)
        return subprocess.CompletedProcess(self.args, self._proc.exitcode, out, err)


def run(script, *args: str, env: dict | None = None, cwd=ROOT, timeout: float = 240):
    """``subprocess.run([sys.executable, SCRIPT, *ARGS], capture_output=True, text=True)``, forked."""
    return Process(script, args, env=env, cwd=cwd).wait(timeout)
