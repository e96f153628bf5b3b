"""Figures of a comparison, saved as PNG files (matplotlib, Agg backend).

- `task_weights.png`: each strategy's weight of every task over the epochs
  (the `<task>_weight` logs: the effective weight on each task's loss
  gradient, averaged over the epoch's steps), mean over seeds with the
  range of the seeds shaded.
- `task_metrics.png`: one panel per task metric, a bar per method (mean
  over seeds) with the standard deviation as error bar; the dashed line is
  the single-task baseline. The y axis is zoomed on the bars: differences
  between methods are often about 1%.
- `metric_vs_time.png`: Δm% (Maninis/LibMTL convention, higher is better)
  against the training time of a run (mean over seeds, both with their
  standard deviation); without single-task runs, the mean metric over tasks.

matplotlib is imported only here, inside the functions: it is needed only
for the figures (`pip install "keras-mtl[examples]"`).
"""

from __future__ import annotations

import math
import os

import numpy as np

from keras_mtl.compare import report

_INSTALL_HINT = (
    "The comparison figures need matplotlib, which is not installed. Install "
    'it with `pip install "keras-mtl[examples]"` (or `pip install '
    '"matplotlib>=3.8"`), or run the comparison with --noplots.'
)


def require_matplotlib():
    """Imports matplotlib with the Agg backend; a clear ImportError if absent."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n, columns=4):
    columns = max(1, min(columns, n))
    return int(math.ceil(n / columns)), columns


def plot_task_weights(runs, path, title=""):
    """Saves the task weights over training, one panel per strategy.

    Returns:
        `path`, or None when no run logged task weights (only STL).
    """
    plt = require_matplotlib()
    by_method = {}
    for run in runs:
        if run["task_weights"] and any(run["task_weights"].values()):
            by_method.setdefault(run["method"], []).append(run["task_weights"])
    if not by_method:
        return None
    rows, columns = _grid(len(by_method))
    fig, axes = plt.subplots(
        rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False
    )
    for ax, (method, seeds) in zip(axes.flat, by_method.items()):
        tasks = list(seeds[0])
        for task in tasks:
            curves = [s[task] for s in seeds if s.get(task)]
            length = min(len(c) for c in curves)
            values = np.asarray([c[:length] for c in curves], dtype=np.float64)
            epochs = np.arange(1, length + 1)
            (line,) = ax.plot(epochs, values.mean(axis=0), marker=".", label=task)
            if len(curves) > 1:
                ax.fill_between(
                    epochs,
                    values.min(axis=0),
                    values.max(axis=0),
                    color=line.get_color(),
                    alpha=0.2,
                )
        ax.set_title(method)
        ax.set_xlabel("epoch")
        ax.set_ylabel("task weight")
        ax.grid(alpha=0.3)
        if len(tasks) <= 6:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(by_method) :]:
        ax.axis("off")
    fig.suptitle(title or "Task weights during training (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_task_metrics(rows, directions, path, title="", percent_metrics=()):
    """Saves per-task metric bars with error bars (one panel per metric)."""
    plt = require_matplotlib()
    columns = report.metric_columns(directions)
    n_rows, n_cols = _grid(len(columns))
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(max(3.6, 0.45 * len(rows) + 1.5) * n_cols, 3.2 * n_rows),
        squeeze=False,
    )
    names = [row["method"] for row in rows]
    positions = np.arange(len(rows))
    for ax, (task, metric, higher) in zip(axes.flat, columns):
        scale = 100.0 if metric in percent_metrics else 1.0
        means = np.asarray([row[f"{task}/{metric}"][0] for row in rows]) * scale
        stds = np.nan_to_num(np.asarray([row[f"{task}/{metric}"][1] for row in rows]))
        stds = stds * scale
        colors = ["0.55" if n == report.STL else "C0" for n in names]
        low = float(np.nanmin(means - stds))
        high = float(np.nanmax(means + stds))
        margin = max(0.15 * (high - low), 1e-3 * max(abs(high), 1.0))
        bottom = low - margin
        ax.bar(
            positions,
            means - bottom,
            bottom=bottom,
            yerr=stds,
            color=colors,
            capsize=3,
        )
        if report.STL in names:
            ax.axhline(means[names.index(report.STL)], color="0.3", ls="--", lw=1)
        ax.set_ylim(bottom, high + margin)
        ax.set_xticks(positions)
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize="small")
        unit = " (%)" if metric in percent_metrics else ""
        ax.set_title(f"{task}: {metric}{unit} {'↑' if higher else '↓'}")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    fig.suptitle(title or "Test metrics per task (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metric_vs_time(rows, directions, path, title=""):
    """Saves the multi-task metric against the training time per method.

    Returns:
        `path`, or None when there is nothing comparable to plot (no STL
        runs and tasks with different metrics).
    """
    plt = require_matplotlib()
    has_delta = any(row[report.IMPROVEMENT] is not None for row in rows)
    if has_delta:
        points = [row for row in rows if row[report.IMPROVEMENT] is not None]
        ys = [row[report.IMPROVEMENT] for row in points]
        ylabel = report.IMPROVEMENT_LABEL + " vs single-task"
    else:
        columns = report.metric_columns(directions)
        if len({name for _, name, _ in columns}) != 1:
            return None
        points = rows
        ys = []
        for row in points:
            per_seed_means = [row[f"{t}/{m}"][0] for t, m, _ in columns]
            ys.append((float(np.mean(per_seed_means)), math.nan))
        ylabel = f"mean {columns[0][1]} over tasks"
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for row, (y, y_std) in zip(points, ys):
        x, x_std = row["train_seconds"]
        color = "0.4" if row["method"] == report.STL else "C0"
        ax.errorbar(
            x,
            y,
            xerr=None if not np.isfinite(x_std) else x_std,
            yerr=None if not np.isfinite(y_std) else y_std,
            fmt="o",
            color=color,
            capsize=3,
        )
        ax.annotate(
            row["method"],
            (x, y),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize="small",
        )
    if has_delta:
        ax.axhline(0.0, color="0.3", ls="--", lw=1)
    ax.set_xlabel("training time of a run (s)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Multi-task performance against training time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(rows, directions, task, path, title="", percent_metrics=()):
    """Saves each task's first metric against the labelled size of the swept
    `task` (log scale), one line per method, the seed spread shaded."""
    plt = require_matplotlib()
    panels = [(t, specs[0][0], specs[0][1]) for t, specs in directions.items()]
    n_rows, n_cols = _grid(len(panels))
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(4.2 * n_cols, 3.2 * n_rows), squeeze=False
    )
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for ax, (panel_task, metric, higher) in zip(axes.flat, panels):
        scale = 100.0 if metric in percent_metrics else 1.0
        for i, method in enumerate(methods):
            points = sorted(
                (row["size"], *row[f"{panel_task}/{metric}"])
                for row in rows
                if row["method"] == method
            )
            sizes = np.asarray([p[0] for p in points], float)
            means = np.asarray([p[1] for p in points]) * scale
            stds = np.nan_to_num(np.asarray([p[2] for p in points])) * scale
            stl = method == report.STL
            color = "0.2" if stl else f"C{i % 10}"
            ax.plot(
                sizes,
                means,
                marker="o",
                color=color,
                ls="--" if stl else "-",
                label="single-task" if stl else method,
            )
            ax.fill_between(sizes, means - stds, means + stds, color=color, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel(f"labelled training examples of {task}")
        unit = " (%)" if metric in percent_metrics else ""
        ax.set_title(f"{panel_task}: {metric}{unit} {'↑' if higher else '↓'}")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(title or "Test metrics against the labelled size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_all(runs, rows, directions, output_dir, title="", percent_metrics=()):
    """Saves the three figures in `output_dir`; returns the written paths."""
    written = [
        plot_task_weights(
            runs,
            os.path.join(output_dir, "task_weights.png"),
            title=f"{title}: task weights during training" if title else "",
        ),
        plot_task_metrics(
            rows,
            directions,
            os.path.join(output_dir, "task_metrics.png"),
            title=f"{title}: test metrics (mean ± std over seeds)" if title else "",
            percent_metrics=percent_metrics,
        ),
        plot_metric_vs_time(
            rows,
            directions,
            os.path.join(output_dir, "metric_vs_time.png"),
            title=f"{title}: performance vs training time" if title else "",
        ),
    ]
    return [path for path in written if path is not None]
