"""PNG curves of a run's history (loss, accuracy, learning rate against epochs), written atomically.

Figures are made with matplotlib's object API (:class:`matplotlib.figure.Figure`), which needs no
display and leaves the user's pyplot backend alone."""

from __future__ import annotations

from pathlib import Path

from recipes.engine.atomic import write_with


def new_figure(rows: int = 1, cols: int = 1, **kwargs):
    """A figure and its axes (a 2-D array of them, ``squeeze=False``), without pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_figure(fig, path: str | Path) -> Path:
    """Save a figure as PNG atomically."""
    path = Path(path)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def plot_history(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """``loss.png``, ``accuracy.png`` and ``learning_rate.png`` from per-epoch rows; returns the paths."""
    if not rows:
        return []
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
        fig, axes = new_figure(figsize=(6, 4), dpi=100)
        ax = axes[0, 0]
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
