"""Back-to-back budget runs of one command: the accuracy a time budget buys, and its spread.

    python benchmarks/budget_runs.py --runs 3 recipe=fast trainer.budget=600 \\
        data.path=../shared/data/cifar10/cifar-10-python.tar.gz

Runs ``python cli.py run ARGS`` ``--runs`` times, one after the other (each in its own process and run
directory under ``--out``), and reports for each the test accuracy (with the recipe's TTA, and without),
the wall time the budget counted, the epochs and steps trained, the final evaluation's views and the
achieved GFLOP/s; then the mean and the spread. Appends every run to ``--out/budget_runs.csv``.
A benchmark, not a test: run nothing else meanwhile, and name the machine beside its figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = [
    "run",
    "args",
    "test_accuracy",
    "test_accuracy_no_tta",
    "wall_seconds",
    "epochs",
    "steps",
    "calibration_steps",
    "tta_views",
    "gflops",
    "schedule_completed",
]


def one_run(args: list[str], out_dir: Path) -> dict:
    """One ``cli.py run`` into ``out_dir``; its ``metrics.json`` in the table's fields."""
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", *args, f"trainer.out_dir={out_dir}"]
    proc = subprocess.run([*cmd, "trainer.verbose=epoch"], cwd=ROOT, capture_output=True, text=True)
    (out_dir.parent / f"{out_dir.name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    m = json.loads((out_dir / "metrics.json").read_text())
    budget = m.get("budget") or {}
    return {
        "run": out_dir.name,
        "args": " ".join(args),
        "test_accuracy": m["test_accuracy"],
        "test_accuracy_no_tta": m["test_accuracy_no_tta"],
        "wall_seconds": m["wall_seconds"],
        "epochs": m["epochs_completed"],
        "steps": budget.get("steps_done"),
        "calibration_steps": budget.get("calibration_steps"),
        "tta_views": m.get("tta_views"),
        "gflops": (m.get("compute") or {}).get("train_gflops_per_second"),
        "schedule_completed": budget.get("schedule_completed"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="runs/budget_runs", help="a folder for the run directories")
    parser.add_argument("args", nargs="+", help="the run's key=value arguments (recipe=... first)")
    a = parser.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for i in range(a.runs):
        row = one_run(a.args, out / f"{stamp}-{i + 1}")
        rows.append(row)
        print(
            f"run {i + 1}: {row['test_accuracy']:.4f} (TTA; {row['test_accuracy_no_tta']:.4f} plain) in "
            f"{row['wall_seconds']:.0f} s, {row['epochs']} epochs, {row['steps']} steps, "
            f"{row['tta_views']} views, {row['gflops']} GFLOP/s",
            flush=True,
        )
    table = out / "budget_runs.csv"
    new = not table.exists()
    with table.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    accuracies = [r["test_accuracy"] for r in rows]
    spread = f", spread {min(accuracies):.4f}-{max(accuracies):.4f}" if len(rows) > 1 else ""
    print(f"mean {statistics.mean(accuracies):.4f} over {len(rows)} runs{spread}; rows appended to {table}")


if __name__ == "__main__":
    main()
