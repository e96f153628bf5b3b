"""The strategy contract table: every registered strategy with constructor
arguments for the two-task model of `model_fixtures.two_task_mlp`."""

import keras_mtl

# name -> (constructor kwargs, extra compile kwargs)
_KPI_METRICS = {"metrics": {"cls": ["accuracy"], "reg": ["accuracy"]}}

STRATEGY_TABLE = {
    "adaptive": ({"mode": "epoch", "normalize": "softmax"}, {}),
    "aligned_mtl": ({}, {}),
    "auto_lambda": ({"learning_rate": 0.05}, {}),
    "cagrad": ({}, {}),
    "config": ({}, {}),
    "cosmos": ({}, {}),
    "crmogm": ({}, {}),
    "db_mtl": ({}, {}),
    "dualproj": ({}, {}),
    "dtp": ({"kpi": "accuracy"}, _KPI_METRICS),
    "dwa": ({}, {}),
    "ew": ({}, {}),
    "excess_mtl": ({}, {}),
    "fairgrad": ({"alpha": 1.0}, {}),
    "famo": ({}, {}),
    "gls": ({}, {}),
    "imtl": ({}, {}),
    "imtl_l": ({}, {}),
    "krum": ({"n_byzantine": 0}, {}),
    "mgda": ({"normalization": "l2"}, {}),
    "pbi": ({}, {}),
    "rgw": ({"seed": 0}, {}),
    "rlw": ({"seed": 0}, {}),
    "sdmgrad": ({}, {}),
    "slw": ({}, {}),
    "softadapt": ({}, {}),
    "stch": ({"warmup_epochs": 0}, {}),
    "graddrop": ({"seed": 0}, {}),
    "gradnorm": ({}, {}),
    "gradvac": ({"seed": 0}, {}),
    "logse": ({}, {}),
    "moco": ({}, {}),
    "modo": ({}, {}),
    "nash_mtl": ({}, {}),
    "orthogonal": ({}, {}),
    "pcgrad": ({"seed": 0}, {}),
    "slaw": ({}, {}),
    "static": ({"weights": [1.0, 0.5]}, {}),
    "trimmed_mean": ({"trim_number": 0}, {}),
    "upgrad": ({}, {}),
    "uw": ({"task_types": ["classification", "regression"]}, {}),
}

# Strategies that need more than the two tasks of the table's model (Krum:
# at least n_byzantine + 3); tests/weighting/test_<module>.py trains them
# on three tasks instead.
NEEDS_MORE_TASKS = {"krum"}


def make_strategy(name):
    """A new instance of the table's strategy `name`."""
    kwargs, _ = STRATEGY_TABLE[name]
    cls = keras_mtl.weighting.registry.lookup(name)
    return cls(**kwargs)
