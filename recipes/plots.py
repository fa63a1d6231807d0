"""PNG curves of a run's history (loss, accuracy, learning rate against epochs), written atomically."""

from __future__ import annotations

from pathlib import Path

from recipes.atomic import write_with


def figure_module():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Save a figure as PNG atomically and close it."""
    path = Path(path)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    figure_module().close(fig)
    return path


def plot_history(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """``loss.png``, ``accuracy.png`` and ``learning_rate.png`` from per-epoch rows; returns the paths."""
    if not rows:
        return []
    plt = figure_module()
    out_dir = Path(out_dir)
    epochs = [row["epoch"] for row in rows]
    written = []
    panels = [
        ("loss", ["loss", "val_loss"], "cross-entropy", False),
        ("accuracy", ["accuracy", "val_accuracy"], "accuracy", False),
        ("learning_rate", ["learning_rate"], "learning rate", True),
    ]
    for name, keys, ylabel, log in panels:
        keys = [k for k in keys if any(k in row for row in rows)]
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for key in keys:
            ax.plot(epochs, [row.get(key, float("nan")) for row in rows], marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if log and all(row.get(k, 0) > 0 for row in rows for k in keys):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        written.append(save_figure(fig, out_dir / f"{name}.png"))
    return written
