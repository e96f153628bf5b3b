"""Running a whole comparison: every strategy and the single-task baselines
over several seeds, then the tables and figures.

`run_comparison(ComparisonConfig(...))` writes into `output_dir`:

- `runs.json`: the configuration and every run (`RunResult.to_dict()`),
  rewritten after each run, so that an interrupted comparison keeps what
  it finished: run again with the same training set-up (`RESUME_FIELDS`),
  it keeps those runs and trains only the others;
- `results.md`: the markdown table (mean ± std over seeds of every task
  metric, both Δm% conventions, time per step and its ratio to EW);
- `results.csv`: the same numbers, one row per method;
- `task_weights.png`, `task_metrics.png`, `metric_vs_time.png` (see
  `keras_mtl.compare.plots`), unless `plots=False`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras

from keras_mtl import weighting
from keras_mtl.compare import label_budget, problems, report, runner
from keras_mtl.weighting.registry import lookup

# Five loss-based and six gradient-based strategies. The default run
# (multi_fashion, 20,000 training pairs, 10 epochs, 2 seeds, single-task
# baselines included: 24 trainings) used 11 CPU-minutes (657 CPU-seconds)
# on a 2-core machine, i.e. at most about 11 minutes of wall time on two
# idle cores.
DEFAULT_STRATEGIES = (
    "ew",
    "uw",
    "dwa",
    "rlw",
    "famo",
    "mgda",
    "pcgrad",
    "cagrad",
    "nash_mtl",
    "imtl",
    "upgrad",
)
DEFAULT_SEEDS = 2
QUICK_STRATEGIES = ("ew", "pcgrad")


@dataclasses.dataclass
class ComparisonConfig:
    """What to compare. None means the problem's default (or the quick one).

    Attributes:
        dataset: a name of `keras_mtl.compare.problems.PROBLEMS`.
        strategies: names of `keras_mtl.weighting.available()`.
        seeds: number of seeds (0, 1, ..., seeds - 1).
        epochs, train_size, test_size, batch_size, learning_rate: training
            set-up; None: the problem's defaults.
        stl: also train the single-task baselines (needed for Δm%).
        jit_compile: compile the training steps with XLA.
        output_dir: where the results go; default `runs/compare-<dataset>`.
        data_dir: where the data files are (see `keras_mtl.datasets.paths`).
        plots: save the PNG figures (needs matplotlib).
        quick: a tiny smoke configuration: 1 epoch on a few examples, one
            seed, EW and PCGrad (fields set explicitly still win).
        verbose: `fit`'s verbosity.
        task_train_sizes: None, or `{task: n}`: only n training examples
            keep that task's label (a subset drawn per seed), the others are
            marked missing for it (`keras_mtl.compare.label_budget`); the
            task's single-task baseline trains on those n examples.
    """

    dataset: str = "multi_fashion"
    strategies: tuple = DEFAULT_STRATEGIES
    seeds: int = DEFAULT_SEEDS
    epochs: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    stl: bool = True
    jit_compile: bool = False
    output_dir: str | None = None
    data_dir: str | None = None
    plots: bool = True
    quick: bool = False
    verbose: int = 0
    task_train_sizes: dict | None = None

    def resolved(self):
        """A copy with the problem's defaults filled in and names checked."""
        problem = problems.get(self.dataset)
        config = dataclasses.replace(self, dataset=problem.name)
        config.strategies = tuple(str(s).strip().lower() for s in self.strategies)
        if not config.strategies and not config.stl:
            raise ValueError("Nothing to run: no strategies and stl=False.")
        known = set(weighting.available())
        unknown = [s for s in config.strategies if s not in known]
        if unknown:
            # Aliases resolve too; the name in the table stays the one given.
            unknown = [s for s in unknown if lookup(s) is None]
        if unknown:
            raise ValueError(
                f"Unknown strategies {unknown}; valid names: "
                f"{', '.join(sorted(known))}."
            )
        if len(set(config.strategies)) != len(config.strategies):
            raise ValueError(f"Strategies repeat: {list(config.strategies)}.")
        if int(config.seeds) < 1:
            raise ValueError(f"seeds must be >= 1, got {config.seeds}.")
        if config.task_train_sizes:
            label_budget.check_task_sizes(config.task_train_sizes, problem.tasks)
            refusing = [
                name
                for name in config.strategies
                if not type(weighting.get(name)).supports_missing_tasks
            ]
            if refusing:
                raise ValueError(
                    f"task_train_sizes marks labels missing, which {refusing} "
                    "do not support: leave them out of the strategies."
                )
        defaults = {
            "epochs": problem.epochs,
            "train_size": problem.train_size,
            "test_size": problem.test_size,
        }
        if config.quick:
            defaults.update(problem.quick)
        for field, value in defaults.items():
            if getattr(config, field) is None:
                setattr(config, field, value)
        if config.batch_size is None:
            config.batch_size = problem.batch_size
        if config.learning_rate is None:
            config.learning_rate = problem.learning_rate
        if config.output_dir is None:
            config.output_dir = os.path.join("runs", f"compare-{problem.name}")
        return config


def _describe(run):
    parts = [
        f"{task}/{name} {value:.4f}"
        for task, values in run.metrics.items()
        for name, value in values.items()
    ]
    if len(parts) > 4:
        parts = parts[:4] + ["..."]
    return (
        f"{', '.join(parts)} ({run.train_seconds:.1f} s, "
        f"{1000 * run.step_seconds:.1f} ms/step)"
    )


def _notes(config, problem, data, wall_seconds):
    labelled = ""
    if config.task_train_sizes:
        labelled = (
            " Labelled training examples per task: "
            + ", ".join(
                f"{task} {min(size, len(data.train))}"
                for task, size in sorted(config.task_train_sizes.items())
            )
            + " (a subset per seed; the other labels marked missing)."
        )
    notes = [
        f"Data: {problem.title}; {len(data.train)} training and "
        f"{len(data.test)} test examples.{labelled}",
        f"Training: Adam (learning rate {config.learning_rate:g}), batch size "
        f"{config.batch_size}, {config.epochs} epochs, seeds 0..{config.seeds - 1}"
        f"{', XLA' if config.jit_compile else ''}; test metrics after the last "
        "epoch, mean ± std over seeds.",
        "stl: one model per task (the same network with that task's head "
        "only); its time per step and training time are summed over the "
        "task models.",
        f"{report.DROP_LABEL}: Navon et al. 2022, "
        "100/K Σ_k (-1)^δ_k (M_m,k - M_stl,k) / M_stl,k with δ_k = 1 when "
        "higher is better; positive = worse than single-task learning.",
        f"{report.IMPROVEMENT_LABEL}: Maninis et al. 2019 / LibMTL, "
        "100/T Σ_t (-1)^l_t (M_m,t - M_stl,t) / M_stl,t with l_t = 1 when "
        "lower is better; positive = better than single-task learning.",
        "ms/step: median wall time of a training step (first step left "
        "out); × EW: its ratio to equal weighting's.",
        f"Wall time of the whole comparison: {wall_seconds / 60:.1f} min.",
    ]
    return notes


def _save_runs(config, runs, path):
    payload = {
        "config": dataclasses.asdict(config),
        "runs": [run.to_dict() for run in runs],
    }
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as file:
        json.dump(payload, file, indent=1)
    os.replace(tmp, path)


# The fields of a `ComparisonConfig` a finished run depends on: a run kept
# in runs.json is reused only when all of them are the same.
RESUME_FIELDS = (
    "dataset",
    "epochs",
    "train_size",
    "test_size",
    "batch_size",
    "learning_rate",
    "jit_compile",
    "task_train_sizes",
)


def _finished_runs(config, path):
    """`{(method, seed): RunResult}` of the runs in `path` trained with the
    same set-up as `config` (empty when there is none)."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as file:
        saved = json.load(file)
    current = json.loads(json.dumps(dataclasses.asdict(config)))
    if any(saved["config"].get(key) != current[key] for key in RESUME_FIELDS):
        return {}
    runs = [runner.RunResult.from_dict(run) for run in saved["runs"]]
    return {(run.method, run.seed): run for run in runs}


def _print(line):
    print(line, flush=True)


def run_comparison(config, log=_print, progress=None):
    """Runs every configuration and writes the results (see module doc).

    Args:
        config: a `ComparisonConfig`.
        log: called with one progress line per run (None: silent).
        progress: None, or called after each run with `trained=True` (it
            trained) or False (kept from runs.json); the sweep's progress
            bar.

    Returns:
        A dict with "config" (resolved), "runs" (`RunResult` list), "rows"
        (`report.summarize` output), "table" (markdown) and "files" (paths
        written).
    """
    log = log or (lambda *_: None)
    progress = progress or (lambda trained: None)
    config = config.resolved()
    problem = problems.get(config.dataset)
    if config.plots:
        from keras_mtl.compare import plots

        plots.require_matplotlib()  # fail before training, not after
    os.makedirs(config.output_dir, exist_ok=True)
    start = time.perf_counter()
    data = problem.load(
        train_size=config.train_size,
        test_size=config.test_size,
        data_dir=config.data_dir,
        quick=config.quick,
    )
    methods = ([report.STL] if config.stl else []) + list(config.strategies)
    total = len(methods) * int(config.seeds)
    log(
        f"Comparing {len(methods)} methods x {config.seeds} seeds on "
        f"{problem.title} ({len(data.train)} train / {len(data.test)} test, "
        f"{config.epochs} epochs) -> {config.output_dir}"
    )
    runs_path = os.path.join(config.output_dir, "runs.json")
    finished = _finished_runs(config, runs_path)
    runs = []
    common = dict(
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        jit_compile=config.jit_compile,
        verbose=config.verbose,
    )
    for seed in range(int(config.seeds)):
        seed_data = data
        if config.task_train_sizes:
            seed_data = label_budget.limit_labels(data, config.task_train_sizes, seed)
        for method in methods:
            if (method, seed) in finished:
                runs.append(finished[(method, seed)])
                log(f"[{len(runs)}/{total}] seed {seed} {method}: kept from runs.json")
                progress(trained=False)
                continue
            keras.backend.clear_session()  # free the previous run's graphs
            if method == report.STL:
                run = runner.train_single_task(problem, seed_data, seed, **common)
            else:
                run = runner.train_strategy(problem, seed_data, method, seed, **common)
            runs.append(run)
            _save_runs(config, runs, runs_path)
            log(f"[{len(runs)}/{total}] seed {seed} {method}: {_describe(run)}")
            progress(trained=True)
    wall = time.perf_counter() - start
    directions = problem.directions()
    records = [run.to_dict() for run in runs]
    rows = report.summarize(records, directions, methods=methods)
    title = f"Multi-task comparison on {problem.title}"
    md_path = os.path.join(config.output_dir, "results.md")
    csv_path = os.path.join(config.output_dir, "results.csv")
    report.write_markdown(
        rows,
        directions,
        md_path,
        title,
        notes=_notes(config, problem, data, wall),
        percent_metrics=problem.percent_metrics,
    )
    report.write_csv(rows, directions, csv_path)
    files = [runs_path, md_path, csv_path]
    if config.plots:
        files += plots.save_all(
            records,
            rows,
            directions,
            config.output_dir,
            title=problem.name,
            percent_metrics=problem.percent_metrics,
        )
    table = report.markdown_table(rows, directions, problem.percent_metrics)
    return {
        "config": config,
        "runs": runs,
        "rows": rows,
        "table": table,
        "files": files,
        "wall_seconds": wall,
    }
