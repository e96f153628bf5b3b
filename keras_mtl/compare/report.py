"""Tables of a comparison: per-task metrics, Δm% against single-task learning,
time per step.

Two conventions of the relative multi-task performance Δm% are in use; both
are computed, with the sign stated in every column name. Write M_m,k for the
value of metric k of the multi-task model m and M_b,k for that of the
single-task baseline b (the mean over the STL seeds).

- "drop" (lower is better), as Navon et al. (Nash-MTL, ICML 2022,
  arXiv:2202.01017) define it and as their code computes it
  (`experiments/nyuv2/utils.py::delta_fn` of AvivNavon/nash-mtl), followed
  by the tables of FAMO and later papers, marked "Δm% ↓":

      Δm% = 100 / K * Σ_k (-1)^δ_k (M_m,k - M_b,k) / M_b,k,
      δ_k = 1 if a higher value of metric k is better, 0 otherwise,

  averaged over all K metrics of all tasks. Positive means worse than STL.

- "improvement" (higher is better), as Maninis et al. (Attentive
  Single-Tasking of Multiple Tasks, CVPR 2019, arXiv:1904.08918) and
  Vandenhende et al. (Multi-Task Learning for Dense Prediction Tasks: A
  Survey, TPAMI 2021, arXiv:2004.13379; `calculate_multi_task_performance`
  of their code) define it:

      Δm% = 100 / T * Σ_t (-1)^l_t (M_m,t - M_b,t) / M_b,t,
      l_t = 1 if a lower value of the measure of task t is better, 0 otherwise.

  LibMTL's `count_improvement` (its "Δp", `LibMTL/utils.py`) computes the
  same sign, with several metrics per task averaged inside each task first:
  100 / T * Σ_t (1/M_t) Σ_m (-1)^w_t,m (B_t,m - N_t,m) / B_t,m with
  w_t,m = 1 when higher is better. Positive means better than STL. That
  per-task averaging is the one used here.

With one metric per task the two are exact negatives of each other; with
several metrics per task they also weigh the metrics differently (per metric
against per task).

Every number of a method is the mean over seeds with the sample standard
deviation (ddof=1) as spread; Δm% is computed per seed of the method against
the STL mean over seeds, then averaged (for STL itself its mean is 0 by
construction and its spread shows the seed noise of the baseline).
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

STL = "stl"
DROP = "delta_m_drop"
IMPROVEMENT = "delta_m_improvement"
DROP_LABEL = "Δm% ↓ (Nash-MTL)"
IMPROVEMENT_LABEL = "Δm% ↑ (Maninis/LibMTL)"


def _relative_improvements(metrics, baseline, directions):
    """{task: [signed relative change of each metric]}, positive = better."""
    changes = {}
    for task, specs in directions.items():
        values = []
        for name, higher_is_better in specs:
            new = float(metrics[task][name])
            base = float(baseline[task][name])
            if base == 0.0 or not math.isfinite(base):
                raise ValueError(
                    f"The baseline value of {task}/{name} is {base}: Δm% "
                    "divides by it and needs a finite non-zero value."
                )
            change = (new - base) / base
            values.append(change if higher_is_better else -change)
        changes[task] = values
    return changes


def delta_m_drop(metrics, baseline, directions):
    """Δm% in the Nash-MTL convention: mean relative drop, lower is better.

    Args:
        metrics: `{task: {metric: value}}` of the multi-task model.
        baseline: the same for the single-task baseline.
        directions: `{task: [(metric, higher_is_better), ...]}`: the metrics
            that count, and their direction.

    Returns:
        100 / K * Σ_k (-1)^δ_k (M_m,k - M_b,k) / M_b,k over all K metrics,
        δ_k = 1 where higher is better. Positive: worse than the baseline.

    Example:

    >>> from keras_mtl.compare.report import delta_m_drop
    >>> directions = {"a": [("acc", True)], "b": [("mae", False)]}
    >>> round(delta_m_drop(
    ...     {"a": {"acc": 0.9}, "b": {"mae": 1.1}},
    ...     {"a": {"acc": 1.0}, "b": {"mae": 1.0}},
    ...     directions,
    ... ), 6)
    10.0
    """
    changes = _relative_improvements(metrics, baseline, directions)
    flat = [value for values in changes.values() for value in values]
    if not flat:
        raise ValueError("Δm% needs at least one metric.")
    return -100.0 * float(np.mean(flat))


def delta_m_improvement(metrics, baseline, directions):
    """Δm% in the Maninis et al. / LibMTL convention: higher is better.

    Args:
        metrics, baseline, directions: as for `delta_m_drop`.

    Returns:
        100 / T * Σ_t mean_m[(-1)^l_t,m (M_m,t,m - M_b,t,m) / M_b,t,m],
        l = 1 where lower is better: the relative change of each metric,
        averaged inside each task, then over the T tasks. Positive: better
        than the baseline.

    Example:

    >>> from keras_mtl.compare.report import delta_m_improvement
    >>> directions = {"a": [("acc", True)], "b": [("mae", False)]}
    >>> round(delta_m_improvement(
    ...     {"a": {"acc": 0.9}, "b": {"mae": 1.1}},
    ...     {"a": {"acc": 1.0}, "b": {"mae": 1.0}},
    ...     directions,
    ... ), 6)
    -10.0
    """
    changes = _relative_improvements(metrics, baseline, directions)
    per_task = [float(np.mean(values)) for values in changes.values() if values]
    if not per_task:
        raise ValueError("Δm% needs at least one metric.")
    return 100.0 * float(np.mean(per_task))


def mean_std(values):
    """(mean, sample std with ddof=1; nan for fewer than two values)."""
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
    return float(np.mean(values)), std


def metric_columns(directions):
    """[(task, metric, higher_is_better)] in table order."""
    return [
        (task, name, higher)
        for task, specs in directions.items()
        for name, higher in specs
    ]


def summarize(runs, directions, methods=None):
    """One summary row per method from the runs of all seeds.

    Args:
        runs: sequence of run records (dicts with "method", "kind", "seed",
            "metrics" `{task: {metric: value}}`, "step_seconds",
            "train_seconds"), as `RunResult.to_dict()` gives.
        directions: `{task: [(metric, higher_is_better)]}`.
        methods: the row order (default: STL first, then first appearance).

    Returns:
        A list of dicts, one per method, with keys "method", "kind", "seeds",
        "<task>/<metric>" -> (mean, std), DROP and IMPROVEMENT -> (mean, std)
        or None without STL runs (or with a zero baseline value, with a
        warning), "step_ms" -> (mean, std), "step_ratio_ew"
        (None without EW runs) and "train_seconds" -> (mean, std).
    """
    by_method = {}
    for run in runs:
        by_method.setdefault(run["method"], []).append(run)
    if methods is None:
        methods = sorted(by_method, key=lambda m: (m != STL, list(by_method).index(m)))
    baseline = None
    if STL in by_method:
        baseline = {
            task: {
                name: mean_std(r["metrics"][task][name] for r in by_method[STL])[0]
                for name, _ in specs
            }
            for task, specs in directions.items()
        }
    ew_step = None
    if "ew" in by_method:
        ew_step = mean_std(r["step_seconds"] for r in by_method["ew"])[0]
    rows = []
    for method in methods:
        method_runs = by_method.get(method)
        if not method_runs:
            continue
        row = {
            "method": method,
            "kind": method_runs[0].get("kind", ""),
            "seeds": len(method_runs),
        }
        for task, name, _ in metric_columns(directions):
            row[f"{task}/{name}"] = mean_std(
                r["metrics"][task][name] for r in method_runs
            )
        row[DROP] = row[IMPROVEMENT] = None
        if baseline is not None:
            try:
                row[DROP] = mean_std(
                    delta_m_drop(r["metrics"], baseline, directions)
                    for r in method_runs
                )
                row[IMPROVEMENT] = mean_std(
                    delta_m_improvement(r["metrics"], baseline, directions)
                    for r in method_runs
                )
            except ValueError as error:
                # A zero baseline metric: report n/a rather than lose the
                # whole comparison.
                warnings.warn(f"Δm% of {method!r} not computed: {error}", stacklevel=2)
        step = mean_std(r["step_seconds"] for r in method_runs)
        row["step_ms"] = (1000.0 * step[0], 1000.0 * step[1])
        row["step_ratio_ew"] = step[0] / ew_step if ew_step else None
        row["train_seconds"] = mean_std(r["train_seconds"] for r in method_runs)
        rows.append(row)
    return rows


def _fmt(pair, digits, scale=1.0):
    if pair is None:
        return "n/a"
    mean, std = pair
    if mean is None or not math.isfinite(mean):
        return "n/a"
    text = f"{mean * scale:.{digits}f}"
    if std is not None and math.isfinite(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def markdown_table(rows, directions, percent_metrics=()):
    """The summary rows as a GitHub markdown table (mean ± std over seeds).

    Args:
        rows: `summarize` output.
        directions: `{task: [(metric, higher_is_better)]}`.
        percent_metrics: metric names shown in percent (e.g. "accuracy").
    """
    columns = metric_columns(directions)
    header = ["method", "kind", "seeds"]
    for task, name, higher in columns:
        unit = " %" if name in percent_metrics else ""
        header.append(f"{task} {name}{unit} {'↑' if higher else '↓'}")
    header += [DROP_LABEL, IMPROVEMENT_LABEL, "ms/step", "× EW", "train s"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        cells = [row["method"], row["kind"], str(row["seeds"])]
        for task, name, _ in columns:
            scale = 100.0 if name in percent_metrics else 1.0
            digits = 2 if name in percent_metrics else 4
            cells.append(_fmt(row[f"{task}/{name}"], digits, scale))
        cells.append(_fmt(row[DROP], 2))
        cells.append(_fmt(row[IMPROVEMENT], 2))
        cells.append(_fmt(row["step_ms"], 1))
        ratio = row["step_ratio_ew"]
        cells.append("n/a" if ratio is None else f"{ratio:.2f}")
        cells.append(_fmt((row["train_seconds"][0], math.nan), 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_rows(rows, directions):
    """The summary rows flattened for a CSV file: a list of flat dicts."""
    flat = []
    for row in rows:
        out = {"method": row["method"], "kind": row["kind"], "seeds": row["seeds"]}
        for task, name, _ in metric_columns(directions):
            mean, std = row[f"{task}/{name}"]
            out[f"{task}_{name}_mean"] = mean
            out[f"{task}_{name}_std"] = std
        for key in (DROP, IMPROVEMENT):
            mean, std = row[key] if row[key] is not None else (math.nan, math.nan)
            out[f"{key}_mean"] = mean
            out[f"{key}_std"] = std
        out["step_ms_mean"], out["step_ms_std"] = row["step_ms"]
        ratio = row["step_ratio_ew"]
        out["step_ratio_ew"] = math.nan if ratio is None else ratio
        out["train_seconds_mean"], out["train_seconds_std"] = row["train_seconds"]
        flat.append(out)
    return flat


def write_csv(rows, directions, path):
    """Writes `csv_rows(rows, directions)` to `path` (nan for missing)."""
    flat = csv_rows(rows, directions)
    if not flat:
        raise ValueError("No rows to write.")
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(flat[0]))
        writer.writeheader()
        for row in flat:
            writer.writerow(
                {
                    key: (f"{value:.6g}" if isinstance(value, float) else value)
                    for key, value in row.items()
                }
            )


def write_markdown(rows, directions, path, title, notes=(), percent_metrics=()):
    """Writes a markdown report: a title, notes (one bullet each), the table."""
    text = f"# {title}\n\n"
    if notes:
        text += "".join(f"- {note}\n" for note in notes) + "\n"
    text += markdown_table(rows, directions, percent_metrics) + "\n"
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
    return text


def directions_from(specs: Mapping[str, Sequence]) -> dict:
    """`{task: [(name, higher_is_better)]}` from `{task: [MetricSpec]}`."""
    return {
        task: [(spec.name, spec.higher_is_better) for spec in task_specs]
        for task, task_specs in specs.items()
    }
