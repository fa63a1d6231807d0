"""A/B of ``python cli.py run`` between two checkouts on one machine: did a change make runs slower?

    python benchmarks/run_ab.py --before /tmp/before [--rounds 3] recipe=fast trainer.epochs=3 ...

Runs the same command from this checkout and from ``--before`` (a ``git worktree`` of the old revision),
alternating, ``--rounds`` times each, so that slow drifts of a shared machine hit both alike. Reports the
median process wall time, the training images/s and the seconds of training that ``metrics.json``
records, and their ratios (after / before). A benchmark, not a test: run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(root: Path, args: list[str], out: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "cli.py"),
            "run",
            *args,
            f"trainer.out_dir={out}",
            "trainer.verbose=silent",
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{root}: the run failed:\n{proc.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "wall": wall,
        "images_per_second": metrics["images_per_second"],
        "train": metrics["train_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="checkout of the old revision")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("args", nargs="+", help="recipe=NAME key=value ...")
    opts = parser.parse_args()
    roots = {"before": Path(opts.before).resolve(), "after": ROOT}
    results: dict[str, list[dict]] = {name: [] for name in roots}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(opts.rounds):
            order = list(roots) if i % 2 == 0 else list(reversed(roots))
            for name in order:
                results[name].append(one_run(roots[name], opts.args, Path(tmp) / f"{name}-{i}"))
                print(f"round {i + 1} {name}: {results[name][-1]}", flush=True)
    print(f"\n{'':8s} {'wall s':>8s} {'images/s':>9s} {'train s':>8s}")
    medians = {}
    for name, rows in results.items():
        medians[name] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        m = medians[name]
        print(f"{name:8s} {m['wall']:8.1f} {m['images_per_second']:9.0f} {m['train']:8.1f}")
    ratio = {k: medians["after"][k] / medians["before"][k] for k in medians["after"]}
    print(
        f"{'ratio':8s} {ratio['wall']:8.3f} {ratio['images_per_second']:9.3f} {ratio['train']:8.3f}"
        "  (after / before)"
    )


if __name__ == "__main__":
    main()
