"""Bad input, tried and recorded: a clear error naming the culprit, or the
documented skip, and never a silently corrupted model or strategy state.

Complements the checks of `test_multi_task_model.py` (loss, metrics and
loss-weights dicts; missing/unknown targets in `fit`; target shape mismatch;
NaN targets with `RunningMeanWeighting`). Tests marked `xfail(strict=True)`
state the correct behaviour for inputs the library does not handle yet; their
reasons say what happens instead.
"""

import functools
import math
import os
import re
import warnings
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp

import keras_mtl
from keras_mtl.layers.task_routing_layer import TaskRoutingLayer
from keras_mtl.models.task_routed_model import task_routed_model
from keras_mtl.weighting.registry import registered_strategies


def _compile(model=None, **kwargs):
    model = two_task_mlp() if model is None else model
    kwargs.setdefault("optimizer", keras.optimizers.Adam(0.01))
    kwargs.setdefault("loss", TWO_TASK_LOSSES)
    model.compile(**kwargs)
    return model


def _state(model):
    """Every variable of the model (weights, strategy state and random
    generator states) and of its optimizer."""
    variables = [*model.variables, *model.optimizer.variables]
    return [(v.path, v.numpy()) for v in variables]


def _assert_unchanged(before, model):
    after = _state(model)
    assert [p for p, _ in before] == [p for p, _ in after]
    for (path, a), (_, b) in zip(before, after):
        np.testing.assert_array_equal(b, a, err_msg=path)


@pytest.fixture(scope="module")
def validating_model():
    """One compiled two-task model for the tests that only check that bad
    input is refused (built once: they neither train it nor read its
    state)."""
    return _compile()


# --- Task names -------------------------------------------------------------


def test_evaluate_targets_must_name_the_model_tasks(validating_model):
    model = validating_model
    x, y = two_task_data(n=8)
    with pytest.raises(ValueError, match=r"unknown tasks \['extra'\]"):
        model.evaluate(x, {**y, "extra": y["reg"]}, verbose=0)
    with pytest.raises(ValueError, match=r"missing tasks \['reg'\]"):
        model.evaluate(x, {"cls": y["cls"]}, verbose=0)


@pytest.mark.parametrize("kind", ["array", "list"])
def test_targets_must_be_a_dict_naming_the_tasks(kind, validating_model):
    model = validating_model
    x, y = two_task_data(n=8)
    targets = y["reg"] if kind == "array" else [y["cls"], y["reg"]]
    with pytest.raises(ValueError, match=r"dict \{task: y\}.*\['cls', 'reg'\]"):
        model.fit(x, targets, verbose=0)


def test_sample_weight_dicts_must_name_the_model_tasks(validating_model):
    model = validating_model
    x, y = two_task_data(n=8)
    weights = {"typo": np.ones(8, "float32")}
    # Keras' own check of the numpy structures names the stray key.
    with pytest.raises(ValueError, match="typo"):
        model.fit(x, y, sample_weight=weights, verbose=0)
    with pytest.raises(ValueError, match=r"`sample_weight`.*unknown tasks \['typo'\]"):
        model.train_on_batch(x, y, sample_weight=weights)


def test_weighted_metrics_and_static_weights_must_name_the_model_tasks():
    with pytest.raises(
        ValueError, match=r"`weighted_metrics`.*unknown tasks \['typo'\]"
    ):
        _compile(weighted_metrics={"typo": ["mae"]})
    static = keras_mtl.weighting.StaticWeighting
    with pytest.raises(ValueError, match=r"unknown \['typo'\]"):
        _compile(loss_weighting=static({"cls": 1.0, "reg": 1.0, "typo": 1.0}))
    with pytest.raises(ValueError, match=r"missing \['reg'\]"):
        _compile(loss_weighting=static({"cls": 1.0}))


# --- Target shapes and dtypes ------------------------------------------------


def test_integer_valued_float_labels_train_like_integer_labels():
    x, y = two_task_data(n=8)
    results = []
    for labels in (y["cls"], y["cls"].astype("float32")):
        keras.utils.set_random_seed(1)
        model = _compile()
        model.train_on_batch(x, dict(y, cls=labels))
        results.append([v.numpy() for v in model.weights])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "Non-integer float labels for a sparse categorical loss are silently "
        "truncated to integers (Keras casts them), so the model trains on "
        "other labels than given, without any error."
    ),
)
def test_non_integer_labels_for_a_sparse_loss_name_the_task():
    model = _compile()
    x, y = two_task_data(n=8)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="cls"):
        model.fit(x, dict(y, cls=y["cls"] + 0.5), verbose=0)


@pytest.mark.parametrize("source", ["numpy", "tf.data"])
def test_string_targets_name_the_task(source, validating_model):
    model = validating_model
    x, y = two_task_data(n=8)
    y = dict(y, cls=y["cls"].astype(str))
    with pytest.raises(ValueError, match=r"'cls'"):
        if source == "numpy":
            model.fit(x, y, verbose=0)
        else:
            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
            model.fit(data, shuffle=False, verbose=0)


def test_one_hot_targets_for_a_sparse_loss_name_the_task(validating_model):
    model = validating_model
    x, y = two_task_data(n=8)
    one_hot = np.eye(3, dtype="float32")[y["cls"]]
    with pytest.raises(ValueError, match=r"'cls'"):
        model.fit(x, dict(y, cls=one_hot), verbose=0)


def test_out_of_range_labels_name_the_task(validating_model):
    model = validating_model
    x, y = two_task_data(n=8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="cls"):
        model.fit(x, dict(y, cls=y["cls"] + 5), verbose=0)


def _sparse_ce(y_true, y_pred):
    return keras.losses.sparse_categorical_crossentropy(
        y_true, y_pred, from_logits=True
    )


def _total_mse(y_true, y_pred):  # one value for the whole batch
    return ops.mean(ops.square(y_true - y_pred))


@pytest.mark.parametrize(
    ("task", "loss", "message"),
    [
        ("cls", _sparse_ce, r"task 'cls'.*class labels"),
        ("reg", _total_mse, r"task 'reg'.*does not reduce over the last axis"),
    ],
)
def test_per_element_masks_that_cannot_split_the_targets_name_the_task(
    task, loss, message
):
    """Class labels (a function loss the compile-time check cannot know),
    or a loss that does not score elements one by one: refused at the
    first step, nothing trained."""
    model = _compile(
        loss=dict(TWO_TASK_LOSSES, **{task: loss}),
        missing_labels={task: {"value": -1, "per_element": True}},
    )
    before = [v.numpy() for v in model.weights]
    x, y = two_task_data(n=8)
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, verbose=0)
    for a, variable in zip(before, model.weights):
        np.testing.assert_array_equal(variable.numpy(), a)


def _private_mse(y_true, y_pred):
    return ops.mean(ops.square(y_true - y_pred), axis=-1)


@pytest.mark.parametrize(
    "loss",
    [
        pytest.param(lambda y_true, y_pred: _private_mse(y_true, y_pred), id="lambda"),
        pytest.param(_private_mse, id="underscore_name"),
    ],
)
def test_any_python_function_is_accepted_as_a_task_loss(loss):
    model = _compile(loss={"cls": TWO_TASK_LOSSES["cls"], "reg": loss})
    x, y = two_task_data(n=8)
    history = model.fit(x, y, verbose=0)
    assert np.isfinite(history.history["reg_loss"][0])


def test_targets_with_another_number_of_samples_are_refused(validating_model):
    model = validating_model
    x, y = two_task_data(n=8)
    with pytest.raises(ValueError, match=r"(?s)cardinality.*'y' sizes: 8, 5"):
        model.fit(x, dict(y, reg=y["reg"][:5]), verbose=0)


def _generator_dataset(batches):
    """A dataset of (x, y) batches whose batch size is unknown statically."""
    signature = (
        tf.TensorSpec((None, 8), tf.float32),
        {
            "cls": tf.TensorSpec((None,), tf.int32),
            "reg": tf.TensorSpec((None, 1), tf.float32),
        },
    )
    return tf.data.Dataset.from_generator(
        lambda: iter(batches), output_signature=signature
    )


def test_a_target_batch_of_another_size_names_the_task(validating_model):
    model = validating_model
    x, y = two_task_data(n=8)
    data = _generator_dataset([(x, dict(y, reg=y["reg"][:1]))])
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="reg"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "ran out of data": unknown length
            model.fit(data, shuffle=False, verbose=0)


# --- Empty batches -------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_dwa_model():
    """A compiled DWA model after one epoch on 8 samples (non-trivial
    optimizer and strategy state), built and traced once for the tests
    that check that an empty input changes nothing (each reads the state
    before and after) and for the saved file of the corrupted-file tests."""
    model = _compile(loss_weighting="dwa")
    x, y = two_task_data(n=8)
    model.fit(x, y, verbose=0)
    return model


def test_fit_on_zero_samples_trains_nothing(fitted_dwa_model):
    model = fitted_dwa_model
    x, y = two_task_data(n=8)
    before = _state(model)
    with pytest.warns(UserWarning, match="ran out of data"):
        history = model.fit(x[:0], {k: v[:0] for k, v in y.items()}, verbose=0)
    assert history.history == {}
    _assert_unchanged(before, model)


def _batch(x, y, start, stop):
    return x[start:stop], {k: v[start:stop] for k, v in y.items()}


_DWA_RUNS = {}


def _dwa_state_after(source):
    """The state of a DWA model (seed 1) after 2 epochs on the 8 samples of
    `two_task_data` in batches of 4, read from `source`: "tensor_slices"
    (a dataset of known length), "generator" (the same two batches, length
    unknown) or "generator_with_empty_batch" (an empty batch between them).
    Each is trained once (the generator run serves two tests)."""
    if source not in _DWA_RUNS:
        x, y = two_task_data(n=8)
        keras.utils.set_random_seed(1)
        model = _compile(loss_weighting="dwa")
        if source == "tensor_slices":
            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
        else:
            batches = [_batch(x, y, 0, 4), _batch(x, y, 4, 8)]
            if source == "generator_with_empty_batch":
                batches.insert(1, _batch(x, y, 4, 4))
            data = _generator_dataset(batches)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "ran out of data": unknown length
            model.fit(data, epochs=2, shuffle=False, verbose=0)
        _DWA_RUNS[source] = _state(model)
    return _DWA_RUNS[source]


def test_a_dataset_of_unknown_length_trains_like_the_same_batches():
    runs = [_dwa_state_after(s) for s in ("tensor_slices", "generator")]
    for (path, a), (_, b) in zip(*runs):
        np.testing.assert_array_equal(b, a, err_msg=path)


def test_train_on_an_empty_batch_is_refused_or_skipped(fitted_dwa_model):
    model = fitted_dwa_model
    x, y = two_task_data(n=8)
    before = _state(model)
    try:
        model.train_on_batch(x[:0], {k: v[:0] for k, v in y.items()})
    except ValueError as error:
        assert re.search(r"empty|no samples|0 samples", str(error)), error
    _assert_unchanged(before, model)


def test_an_empty_batch_in_a_dataset_leaves_no_trace():
    """Over two epochs, so that DWA's epoch-level state (from the epoch's
    mean losses) also sees the empty batch."""
    runs = [_dwa_state_after(s) for s in ("generator", "generator_with_empty_batch")]
    for (path, a), (_, b) in zip(*runs):
        np.testing.assert_array_equal(b, a, err_msg=path)


# --- NaN and Inf ---------------------------------------------------------------


def _bad_batch(kind):
    """A batch of 8 and the task whose loss is the first non-finite one."""
    x, y = two_task_data(n=8, seed=1)
    if kind == "nan_input":
        x[3, 2] = np.nan
        return x, y, "cls"
    if kind == "inf_target":
        y["reg"][5, 0] = np.inf
        return x, y, "reg"
    # Finite inputs and targets whose squared error overflows float32.
    y["reg"][0, 0] = 1e30
    return x, y, "reg"


@pytest.mark.parametrize(
    "strategy, on_nonfinite",
    [
        pytest.param("dwa", "raise", id="dwa-raise"),
        pytest.param("dwa", "skip", id="dwa-skip"),
        pytest.param("uw", "skip", id="uw-skip"),
        pytest.param("rlw", "skip", id="rlw-skip"),
        pytest.param("pcgrad", "raise", id="pcgrad-raise"),
        pytest.param(
            {"class_name": "graddrop", "config": {"rep_grad": True}},
            "skip",
            id="graddrop-rep_grad-skip",
        ),
    ],
)
def test_nonfinite_batches_leave_model_optimizer_and_strategy_untouched(
    strategy, on_nonfinite
):
    model = _compile(
        two_task_mlp(batch_norm=True),
        loss_weighting=keras_mtl.weighting.get(strategy),
        on_nonfinite=on_nonfinite,
    )
    # non-trivial optimizer and strategy state
    model.fit(_one_batch(*two_task_data(n=8)), shuffle=False, verbose=0)
    for kind in ("nan_input", "inf_target", "loss_overflow"):
        bad_x, bad_y, task = _bad_batch(kind)
        before = _state(model)
        if on_nonfinite == "raise":
            with pytest.raises(FloatingPointError, match=f"Task '{task}'.*step 0 "):
                model.fit(_one_batch(bad_x, bad_y), shuffle=False, verbose=0)
        else:
            with pytest.warns(RuntimeWarning, match=f"1 training step.*'{task}'"):
                model.fit(_one_batch(bad_x, bad_y), shuffle=False, verbose=0)
        _assert_unchanged(before, model)


def _one_batch(x, y):
    """The arrays as the one batch `fit` makes of them, as a `tf.data` data
    set: Keras' array pipeline costs about 0.1 s a call, and every fit on a
    model then passes the same kind of input (one trace of the step)."""
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))


def root_error(y_true, y_pred):
    """sqrt(squared error), but 0 * error where the target is > 1000: a
    finite loss whose gradient there is 0 * inf = NaN."""
    error = y_true - y_pred
    flagged = ops.where(y_true > 1e3, 0.0 * error, ops.square(error))
    return ops.mean(ops.sqrt(flagged), axis=-1)


@pytest.mark.parametrize(
    "strategy, on_nonfinite", [("ew", "raise"), ("pcgrad", "skip")]
)
def test_a_nonfinite_gradient_of_a_finite_loss_is_not_applied(strategy, on_nonfinite):
    model = _compile(
        loss={"cls": TWO_TASK_LOSSES["cls"], "reg": root_error},
        loss_weighting=strategy,
        on_nonfinite=on_nonfinite,
    )
    x, y = two_task_data(n=8)
    model.fit(_one_batch(x, y), shuffle=False, verbose=0)
    before = _state(model)
    y["reg"][0, 0] = 1e4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if on_nonfinite == "raise":
            with pytest.raises(FloatingPointError):
                model.fit(_one_batch(x, y), shuffle=False, verbose=0)
        else:
            model.fit(_one_batch(x, y), shuffle=False, verbose=0)
    _assert_unchanged(before, model)


# --- Strategy names --------------------------------------------------------------


def test_unknown_strategy_names_list_the_valid_names():
    names = keras_mtl.weighting.available()
    for call in (
        lambda: keras_mtl.weighting.get("dwaa"),
        lambda: _compile(loss_weighting="dwaa"),
    ):
        with pytest.raises(ValueError, match="'dwaa'") as error:
            call()
        assert all(name in str(error.value) for name in names)
    for identifier in (3, ["dwa"]):
        with pytest.raises(ValueError, match="Valid names: adaptive") as error:
            keras_mtl.weighting.get(identifier)
        assert type(identifier).__name__ in str(error.value)
    with pytest.raises(ValueError, match="'class_name' key"):
        keras_mtl.weighting.get({"config": {}})


def test_unknown_strategy_in_a_config_dict_lists_the_valid_names():
    with pytest.raises(ValueError, match="'nope'.*Valid names: adaptive"):
        keras_mtl.weighting.get({"class_name": "nope", "config": {}})


# --- Out-of-range hyperparameters --------------------------------------------------

NAN = float("nan")

# (registry name, bad keyword arguments); the error must name the argument.
BAD_HYPERPARAMETERS = [
    ("adaptive", {"temperature": 0.0}),
    ("adaptive", {"temperature": -1.0}),
    ("adaptive", {"mode": "sometimes"}),
    ("adaptive", {"normalize": "l1"}),
    ("aligned_mtl", {"scale_mode": "max"}),
    ("cagrad", {"c": -0.1}),
    ("cagrad", {"c": NAN}),
    ("cagrad", {"rescale": 5}),
    ("config", {"pref_vector": [1.0, 2.0, 3.0]}),
    ("cosmos", {"lambda_": -1.0}),
    ("cosmos", {"preference": [-1.0, 1.0]}),
    ("cosmos", {"preference": [1.0, 1.0, 1.0]}),
    ("crmogm", {"alpha": 1.5}),
    ("crmogm", {"weighting": "rlw"}),
    ("crmogm", {"initial_weights": [NAN, 1.0]}),
    ("db_mtl", {"beta": 1.0}),
    ("db_mtl", {"beta": -0.1}),
    ("db_mtl", {"beta_sigma": -1.0}),
    ("dtp", {"gamma": -1.0}),
    ("dtp", {"alpha": 0.0}),
    ("dtp", {"alpha": 1.5}),
    ("dtp", {"epsilon": -1.0}),
    ("dtp", {"max_kpi": 1.5}),
    ("dtp", {"warmup_steps": -1}),
    ("dtp", {"kpi": ""}),
    ("dualproj", {"norm_eps": -1.0}),
    ("dualproj", {"reg_eps": -1.0}),
    ("dwa", {"temperature": -2.0}),
    ("dwa", {"temperature": 0.0}),
    ("dwa", {"temperature": NAN}),
    ("dwa", {"mode": "batch"}),
    ("dwa", {"ema_decay": 1.0}),
    ("dwa", {"ema_decay": -0.5}),
    ("excess_mtl", {"robust_step_size": -1.0}),
    ("fairgrad", {"alpha": -1.0}),
    ("famo", {"learning_rate": 0.0}),
    ("famo", {"learning_rate": -1.0}),
    ("famo", {"weight_decay": -1.0}),
    ("famo", {"epsilon": -1.0}),
    ("famo", {"min_losses": [0.0, 0.0, 0.0]}),
    ("auto_lambda", {"weights": "sigmoid"}),
    ("auto_lambda", {"learning_rate": -1.0}),
    ("auto_lambda", {"initial": NAN}),
    ("auto_lambda", {"primary_tasks": ["depth"]}),
    ("graddrop", {"leak": -0.1}),
    ("graddrop", {"leak": 1.5}),
    ("graddrop", {"seed": 1.5}),
    ("gradnorm", {"alpha": -1.0}),
    ("gradnorm", {"weight_learning_rate": 0.0}),
    ("gradnorm", {"weight_optimizer": "rmsprop"}),
    ("gradnorm", {"initial_loss": "last_step"}),
    ("gradnorm", {"gradients_of": "first_layer"}),
    ("gradvac", {"beta": -0.1}),
    ("gradvac", {"beta": 1.5}),
    ("gradvac", {"group_type": 3}),
    ("gradvac", {"seed": 1.5}),
    ("imtl", {"loss_scaling": "yes"}),
    ("imtl_l", {"init": NAN}),
    ("krum", {"n_byzantine": -1}),
    ("krum", {"n_selected": 0}),
    ("krum", {"squared": "yes"}),
    ("logse", {"epsilon": 0.0}),
    ("logse", {"epsilon": -1.0}),
    ("mgda", {"normalization": "l1"}),
    ("moco", {"beta": 0.0}),
    ("moco", {"beta_sigma": -1.0}),
    ("moco", {"gamma": -1.0}),
    ("moco", {"gamma_sigma": -1.0}),
    ("moco", {"rho": -1.0}),
    ("modo", {"gamma": 0.0}),
    ("modo", {"rho": -1.0}),
    ("nash_mtl", {"update_weights_every": 0}),
    ("nash_mtl", {"optim_niter": 0}),
    ("nash_mtl", {"max_norm": -1.0}),
    ("nash_mtl", {"solver": "adam"}),
    ("orthogonal", {"penalty": -1.0}),
    ("orthogonal", {"reduction": "max"}),
    ("orthogonal", {"gradients_of": "first_layer"}),
    ("orthogonal", {"epsilon": -1.0}),
    ("pbi", {"theta": -1.0}),
    ("pbi", {"preference": [0.0, 0.0]}),
    ("pbi", {"reference": [NAN, 0.0]}),
    ("pcgrad", {"seed": 1.5}),
    ("pcgrad", {"seed": True}),
    ("rgw", {"distribution": "cauchy"}),
    ("rgw", {"seed": 1.5}),
    ("rlw", {"distribution": "cauchy"}),
    ("rlw", {"seed": 1.5}),
    ("sdmgrad", {"lambda_": -1.0}),
    ("sdmgrad", {"lr": 0.0}),
    ("sdmgrad", {"momentum": 1.0}),
    ("sdmgrad", {"n_iter": 0}),
    ("sdmgrad", {"pref_vector": [1.0, 2.0, 3.0]}),
    ("slaw", {"beta": 1.0}),
    ("slaw", {"beta": -0.1}),
    ("slaw", {"epsilon": -1.0}),
    ("slaw", {"warmup": "geometric"}),
    ("slw", {"gradients_of": "first_layer"}),
    ("slw", {"epsilon": -1.0}),
    ("softadapt", {"beta": NAN}),
    ("softadapt", {"variant": "fancy"}),
    ("softadapt", {"accuracy_order": 0}),
    ("softadapt", {"update_every": 0}),
    ("trimmed_mean", {"trim_number": -1}),
    ("trimmed_mean", {"trim_number": 1}),
    ("static", {"weights": []}),
    ("static", {"weights": [-1.0, 1.0]}),
    ("static", {"weights": [NAN, 1.0]}),
    ("static", {"weights": [1.0, 1.0, 1.0]}),
    ("stch", {"mu": 0.0}),
    ("stch", {"mu": -1.0}),
    ("stch", {"warmup_epochs": -1}),
    ("stch", {"preference": [-1.0, 2.0]}),
    ("stch", {"preference": [1.0, 1.0, 1.0]}),
    ("stch", {"ideal_point": [0.0, 0.0, 0.0]}),
    ("upgrad", {"norm_eps": -1.0}),
    ("upgrad", {"reg_eps": -1.0}),
    ("upgrad", {"pref_vector": [1.0, 2.0, 3.0]}),
    ("uw", {"task_types": ["regression", "ranking"]}),
    ("uw", {"task_types": ["regression"]}),
    ("uw", {"init": NAN}),
]


def _build_for_two_tasks(strategy):
    strategy.set_task_names(("cls", "reg"))
    strategy.build((2,) if strategy.requires == "losses" else (2, 6))


def _problem(name, kwargs, make, errors):
    """None if `make()` raises one of `errors` naming the argument, else what
    happened instead."""
    (argument,) = kwargs
    try:
        _build_for_two_tasks(make())
    except errors as error:
        if argument in str(error):
            return None
        return f"{name} {kwargs}: {type(error).__name__} {error}"
    except Exception as error:  # noqa: BLE001 - recorded as a problem
        return f"{name} {kwargs}: unexpected {type(error).__name__} {error}"
    return f"{name} {kwargs}: accepted"


def test_out_of_range_hyperparameters_name_the_argument():
    """Every row of the table raises an error naming the argument, directly
    (a ValueError) and through a config dict as in a saved model (Keras'
    `from_config` re-raises it as a TypeError quoting the message); the
    value is checked when the strategy is created, or when it learns the
    number of tasks."""
    problems = []
    for name, kwargs in BAD_HYPERPARAMETERS:
        direct = functools.partial(registered_strategies()[name], **kwargs)
        problems.append(_problem(name, kwargs, direct, ValueError))
        config = {"class_name": name, "config": kwargs}
        from_config = functools.partial(keras_mtl.weighting.get, config)
        problems.append(_problem(name, kwargs, from_config, (ValueError, TypeError)))
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)


def test_the_table_covers_every_strategy_with_hyperparameters():
    covered = {name for name, _ in BAD_HYPERPARAMETERS}
    without_arguments = {"ew", "gls"}
    assert set(keras_mtl.weighting.available()) - covered == without_arguments


@pytest.mark.parametrize("name", ["graddrop", "gradvac"])
def test_a_boolean_seed_is_refused_naming_seed(name):
    with pytest.raises(ValueError, match="seed"):
        registered_strategies()[name](seed=True)


def test_zero_tasks_are_refused_by_every_strategy():
    problems = []
    for name in keras_mtl.weighting.available():
        cls = registered_strategies()[name]
        strategy = cls([1.0]) if name == "static" else cls()
        shape = (0,) if strategy.requires == "losses" else (0, 6)
        try:
            strategy.build(shape)
            problems.append(f"{name}: accepted zero tasks")
        except ValueError as error:
            if "at least one task" not in str(error):
                problems.append(f"{name}: {error}")
    assert not problems, "\n".join(problems)


def test_task_routing_sigma_outside_zero_one_is_refused():
    for sigma in (-0.1, 1.0, 1.5, NAN, math.inf, "0.5", True):
        with pytest.raises(ValueError, match="sigma"):
            TaskRoutingLayer(num_tasks=2, sigma=sigma)


def test_task_routing_needs_tasks_and_a_valid_sigma_in_the_builder():
    for num_tasks in (0, -1):
        with pytest.raises(ValueError, match="num_tasks"):
            TaskRoutingLayer(num_tasks=num_tasks)
    with pytest.raises(ValueError, match="sigma"):
        task_routed_model(
            keras.Input((4,)),
            blocks=[keras.layers.Dense(4)],
            heads={"a": keras.layers.Dense(1), "b": keras.layers.Dense(1)},
            sigma=1.0,
        )


# --- Corrupted saved files ------------------------------------------------------


@pytest.fixture(scope="module")
def saved_model_path(tmp_path_factory, fitted_dwa_model):
    path = str(tmp_path_factory.mktemp("saved") / "model.keras")
    fitted_dwa_model.save(path)
    return path


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("corruption", ["truncated", "random_bytes", "empty"])
def test_a_corrupted_keras_file_is_refused_naming_the_file(
    saved_model_path, tmp_path, corruption
):
    with open(saved_model_path, "rb") as f:
        data = f.read()
    if corruption == "truncated":
        data = data[: len(data) // 2]
    elif corruption == "random_bytes":
        data = np.random.default_rng(0).bytes(len(data))
    else:
        data = b""
    path = _write(os.path.join(tmp_path, f"{corruption}.keras"), data)
    # Keras says "File not found" for any file that is not a valid zip.
    with pytest.raises(ValueError, match=re.escape(path)):
        keras.models.load_model(path)


def _rewrite_member(source, target, member, edit):
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item.filename)
            new.writestr(item, edit(data) if item.filename == member else data)
    return target


def test_corrupted_members_of_a_keras_file_are_refused(saved_model_path, tmp_path):
    """Valid zip archives with a damaged member raise (Keras' own messages,
    which do not name the file); none loads silently."""
    weights = _rewrite_member(
        saved_model_path,
        os.path.join(tmp_path, "weights.keras"),
        "model.weights.h5",
        lambda data: data[: len(data) // 2],
    )
    with pytest.raises(OSError, match="truncated file"):
        keras.models.load_model(weights)
    config = _rewrite_member(
        saved_model_path,
        os.path.join(tmp_path, "config.keras"),
        "config.json",
        lambda data: data[:-20],
    )
    with pytest.raises(ValueError):  # json.JSONDecodeError
        keras.models.load_model(config)


def test_a_saved_strategy_with_a_bad_hyperparameter_names_it(
    saved_model_path, tmp_path
):
    def negative_temperature(data):
        text = data.decode()
        assert '"temperature": 2.0' in text
        return text.replace('"temperature": 2.0', '"temperature": -2.0').encode()

    path = _rewrite_member(
        saved_model_path,
        os.path.join(tmp_path, "tampered.keras"),
        "config.json",
        negative_temperature,
    )
    with pytest.raises(TypeError, match="`temperature` must be a finite number > 0"):
        keras.models.load_model(path)


def test_a_strategy_state_that_is_not_finite_is_refused_before_training(tmp_path):
    """A file whose numbers are NaN loads without complaint; fit refuses to
    train from it, names the variable and what to do, and changes nothing."""
    model = _compile(loss_weighting="uw")
    x, y = two_task_data(n=8)
    model.fit(x, y, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    log_vars = loaded.loss_weighting.trainable_variables[0]
    log_vars.assign(np.array([np.nan, 0.0], "float32"))
    before = _state(loaded)
    with pytest.raises(ValueError, match=re.escape(log_vars.path) + ".*reset_state"):
        loaded.fit(x, y, verbose=0)
    _assert_unchanged(before, loaded)
    loaded.loss_weighting.reset_state()
    loaded.fit(x, y, verbose=0)
    assert all(np.all(np.isfinite(v.numpy())) for v in loaded.weights)


def test_batches_that_change_size_mid_epoch_train_like_the_same_batches_one_by_one():
    """A data set whose batches are 8, 5, 8 and 3 samples long (not only a
    short last batch) trains every sample once: the same weights as
    `train_on_batch` on the same batches, and each epoch log weighs a
    batch by its size."""
    x, y = two_task_data(n=24)
    sizes, bounds = [8, 5, 8, 3], np.cumsum([0, 8, 5, 8, 3])
    batches = [
        (x[a:b], {k: v[a:b] for k, v in y.items()})
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(batches),
        output_signature=(
            tf.TensorSpec((None, 8), tf.float32),
            {
                "cls": tf.TensorSpec((None,), tf.int32),
                "reg": tf.TensorSpec((None, 1), tf.float32),
            },
        ),
    )
    model = _compile(loss_weighting="dwa")
    reference = _compile(loss_weighting="dwa")
    reference.set_weights(model.get_weights())
    history = model.fit(dataset, verbose=0)
    losses = [reference.train_on_batch(*batch, return_dict=True) for batch in batches]
    # (fit also ends the epoch, which moves DWA's state; the layers' weights
    # and the optimizer see the same four steps.)
    for a, b in zip(
        model.trainable_variables + model.optimizer.variables,
        reference.trainable_variables + reference.optimizer.variables,
    ):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    assert int(model.optimizer.iterations.numpy()) == len(sizes)
    # fit's epoch log is the mean of the batches' losses weighted by their
    # sizes (train_on_batch logs each batch's own).
    for key in ("loss", "cls_loss", "reg_loss"):
        expected = np.average([log[key] for log in losses], weights=sizes)
        np.testing.assert_allclose(history.history[key][0], expected, rtol=1e-5)


def test_a_task_without_labels_for_a_whole_epoch_keeps_its_state():
    """With missing labels, an epoch in which one task has no labelled
    sample trains the other task, leaves the absent task's head (SGD) and
    its epoch-level strategy state (DWA's loss history) as they were, and
    logs it as documented: loss 0 and weight 0, not counted in `loss`."""
    model = _compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss_weighting="dwa",
        missing_labels={"reg": float("nan")},
    )
    x, y = two_task_data(n=16)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    strategy = model.loss_weighting
    history_before = [strategy.previous.numpy()[1], strategy.latest.numpy()[1]]
    head_before = [v.numpy() for v in model.task_variables["reg"]]
    cls_head_before = [v.numpy() for v in model.task_variables["cls"]]
    y["reg"][:] = np.nan
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert history.history["reg_loss"] == [0.0, 0.0]
    assert history.history["reg_weight"] == [0.0, 0.0]
    np.testing.assert_allclose(history.history["loss"], history.history["cls_loss"])
    assert [strategy.previous.numpy()[1], strategy.latest.numpy()[1]] == history_before
    for before, variable in zip(head_before, model.task_variables["reg"]):
        np.testing.assert_array_equal(variable.numpy(), before)
    assert not all(
        np.array_equal(before, variable.numpy())
        for before, variable in zip(cls_head_before, model.task_variables["cls"])
    )
