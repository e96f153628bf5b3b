"""When does sharing pay? The comparison over a grid of labelled sizes.

`run_sweep(config, task, sizes)` runs the comparison (every strategy of
`config`, the single-task baselines, every seed) once per labelled size of
`task` (`task_train_sizes={task: size}`, see `label_budget`), each into its
own folder `<output_dir>/<task>-<size>/`. A cell (one size, method and seed)
finished there is kept when the command runs again with the same set-up
(`comparison.RESUME_FIELDS`), so an interrupted sweep resumes where it
stopped. A progress bar over the whole grid estimates the time left from
the cells trained so far.

It writes `sweep.md` and `sweep.csv` (per size and method: every task
metric, mean ± std over seeds, and Δm% against single-task learning at that
size) and `sweep.png` (each task's first metric against the swept task's
labelled size, one line per method, single-task learning included, the seed
spread shaded). This is the question behind Gong et al. (IEEE Access 2019),
who compared strategies "with various amounts of training data per task":
how many labels must a task have before sharing stops helping it?
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time

from keras_mtl.compare import comparison, problems, report


def parse_sweep(text):
    """`(task, [sizes])` from `"left:250,1000,4000"` (sizes ascending)."""
    task, sep, sizes = str(text).partition(":")
    values = [v.strip() for v in sizes.split(",") if v.strip()]
    if (
        not sep
        or not task.strip()
        or not values
        or not all(v.isdigit() for v in values)
    ):
        raise ValueError(
            f"sweep: {text!r} is not <task>:<size>,<size>,..., e.g. left:250,1000,4000."
        )
    numbers = sorted({int(v) for v in values})
    if numbers[0] < 1:
        raise ValueError(f"sweep sizes must be at least 1, got {numbers}.")
    return task.strip(), numbers


def check_task(config, task):
    """The problem of `config`; refuses a swept task it does not have."""
    problem = problems.get(config.dataset)
    if task not in problem.tasks:
        raise ValueError(
            f"sweep names unknown task {task!r}; this data set's tasks: "
            f"{list(problem.tasks)}."
        )
    return problem


class GridProgress:
    """A text progress bar over the cells of the grid, with the time left
    estimated from the cells trained so far (kept cells cost nothing)."""

    def __init__(self, total, write=print, width=30):
        self.total, self.write, self.width = int(total), write, width
        self.done = self.trained = 0
        self.start = time.perf_counter()

    def __call__(self, trained):
        self.done += 1
        self.trained += int(bool(trained))
        self.write(self.line())

    def line(self):
        filled = round(self.width * self.done / max(self.total, 1))
        elapsed = time.perf_counter() - self.start
        left = self.total - self.done
        if left == 0:
            eta = "done"
        elif self.trained:
            eta = f"about {_minutes(elapsed / self.trained * left)} left"
        else:
            eta = "time left unknown"
        return (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
            f"cells, {_minutes(elapsed)} elapsed, {eta}"
        )


def _minutes(seconds):
    return f"{seconds / 60:.1f} min"


def run_sweep(config, task, sizes, log=print):
    """Runs the comparison at each labelled size of `task`; see the module
    docstring. Returns a dict with "rows" (one per size and method), "files"
    and "wall_seconds"."""
    base = config.resolved()
    problem = check_task(base, task)
    methods = ([report.STL] if base.stl else []) + list(base.strategies)
    progress = GridProgress(len(sizes) * len(methods) * int(base.seeds), log)
    start = time.perf_counter()
    rows, directions = [], problem.directions()
    for size in sizes:
        cell = dataclasses.replace(
            base,
            task_train_sizes={**(base.task_train_sizes or {}), task: int(size)},
            output_dir=os.path.join(base.output_dir, f"{task}-{size}"),
            plots=False,
        )
        result = comparison.run_comparison(cell, log=None, progress=progress)
        for row in result["rows"]:
            rows.append(dict(row, size=int(size)))
    md_path = os.path.join(base.output_dir, "sweep.md")
    csv_path = os.path.join(base.output_dir, "sweep.csv")
    _write_markdown(rows, directions, task, md_path, problem)
    _write_csv(rows, directions, csv_path)
    files = [md_path, csv_path]
    if base.plots:
        from keras_mtl.compare import plots

        files.append(
            plots.plot_sweep(
                rows,
                directions,
                task,
                os.path.join(base.output_dir, "sweep.png"),
                title=problem.name,
                percent_metrics=problem.percent_metrics,
            )
        )
    return {"rows": rows, "files": files, "wall_seconds": time.perf_counter() - start}


def _cell(value, scale=1.0):
    if value is None:
        return "n/a"
    mean, std = value
    return f"{scale * mean:.2f} ± {scale * std:.2f}"


def _write_markdown(rows, directions, task, path, problem):
    columns = report.metric_columns(directions)
    header = ["labelled " + task, "method"] + [f"{t} {m}" for t, m, _ in columns]
    header.append(report.DROP_LABEL)
    lines = [
        f"# When does sharing pay? {problem.title}, labelled size of {task!r}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [str(row["size"]), row["method"]]
        for t, m, _ in columns:
            scale = 100.0 if m in problem.percent_metrics else 1.0
            cells.append(_cell(row[f"{t}/{m}"], scale))
        cells.append(_cell(row[report.DROP]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Mean ± std over seeds. {report.DROP_LABEL}: against single-task learning "
        "trained on the same labelled examples at that size; positive = worse.",
    ]
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")


def _write_csv(rows, directions, path):
    columns = report.metric_columns(directions)
    fields = ["size", "method", "seeds"]
    for t, m, _ in columns:
        fields += [f"{t}/{m}", f"{t}/{m} std"]
    fields += ["delta_m", "delta_m std"]
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(fields)
        for row in rows:
            values = [row["size"], row["method"], row["seeds"]]
            for t, m, _ in columns:
                values += list(row[f"{t}/{m}"])
            values += list(row[report.DROP]) if row[report.DROP] else ["", ""]
            writer.writerow(values)
