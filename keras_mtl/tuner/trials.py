"""Reading a finished search: failed trials and a table of results.

keras-tuner catches the exception of a failing trial, records it in the
trial and goes on; `tuner.search()` only raises after
`max_consecutive_failed_trials` (default 3) failures in a row. A search of
one or two trials that all fail (for example because tensorboard is
missing: every trial on the TensorFlow backend imports it) therefore
returns quietly, and `get_best_hyperparameters()` then returns a trial
that never trained. Call `check_trials(tuner)` after `search`.
"""

from __future__ import annotations

from keras_mtl.tuner._keras_tuner import keras_tuner
from keras_mtl.tuner.hypermodel import STRATEGY_HP

_Status = keras_tuner.engine.trial.TrialStatus
_FAILED = (_Status.FAILED, _Status.INVALID)


def _last_lines(message, count=12):
    lines = (message or "no error message recorded").strip().splitlines()
    return "\n".join("    " + line for line in lines[-count:])


def check_trials(tuner, max_failed=0):
    """Raises when trials of a search failed; returns the completed trials.

    Args:
        tuner: a keras-tuner `Tuner` after `search`.
        max_failed: how many failed trials to accept (e.g. a strategy that
            diverges with `on_nonfinite="raise"`). Default 0.

    Returns:
        The list of completed `keras_tuner` trials.

    Raises:
        RuntimeError: when no trial ran, none completed, or more than
            `max_failed` failed; the message gives each failed trial's
            hyperparameters and the end of its traceback.
    """
    trials = list(tuner.oracle.trials.values())
    if not trials:
        raise RuntimeError("The tuner ran no trial: call tuner.search(...) first.")
    failed = [t for t in trials if t.status in _FAILED]
    completed = [t for t in trials if t.status == _Status.COMPLETED]
    if completed and len(failed) <= max_failed:
        return completed
    lines = [
        f"{len(failed)} of {len(trials)} trials failed and {len(completed)} "
        f"completed (max_failed={max_failed})."
    ]
    if any("tensorboard" in (t.message or "") for t in failed):
        lines.append(
            "keras-tuner imports tensorboard in every trial on the TensorFlow "
            "backend: pip install tensorboard."
        )
    for trial in failed:
        lines.append(
            f"Trial {trial.trial_id} ({trial.status}) with hyperparameters "
            f"{trial.hyperparameters.values}:\n{_last_lines(trial.message)}"
        )
    raise RuntimeError("\n".join(lines))


def trial_table(tuner):
    """The trials of a search as rows of plain values, best first.

    Each row is a dict with `trial_id`, `status`, `score` (the objective as
    recorded by the tuner; None when the trial did not complete),
    `strategy`, `hyperparameters` (the trial's values: the active ones and
    the tuner's own, such as Hyperband's `tuner/epochs`) and `metrics` (the
    best recorded value of each metric).
    """
    rows = []
    for trial in tuner.oracle.trials.values():
        hp = trial.hyperparameters
        declared = {p.name for p in hp.space}
        values = {
            name: value
            for name, value in hp.values.items()
            if name not in declared or hp.is_active(name)
        }
        metrics = {
            name: trial.metrics.get_best_value(name) for name in trial.metrics.metrics
        }
        rows.append(
            {
                "trial_id": trial.trial_id,
                "status": trial.status,
                "score": None if trial.score is None else float(trial.score),
                "strategy": values.get(STRATEGY_HP),
                "hyperparameters": values,
                "metrics": metrics,
            }
        )
    direction = getattr(tuner.oracle.objective, "direction", "min")
    sign = 1.0 if direction == "min" else -1.0

    def order(row):
        if row["score"] is None:
            return (1, 0.0)
        return (0, sign * row["score"])

    return sorted(rows, key=order)


__all__ = ["check_trials", "trial_table"]
