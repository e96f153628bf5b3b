"""Tests of MultiTaskModel: structure, training step, logs, saving, errors."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_fixtures import (
    TWO_TASK_LOSSES,
    RunningMeanWeighting,
    SumOfGradients,
    digits_data,
    two_task_data,
    two_task_mlp,
)

import keras_mtl


def _compile(model, **kwargs):
    kwargs.setdefault("optimizer", keras.optimizers.SGD(0.1))
    kwargs.setdefault("loss", TWO_TASK_LOSSES)
    model.compile(**kwargs)
    return model


def _batches(x, y, batch_size):
    """The batches `fit(x, y, batch_size=..., shuffle=False)` makes of the
    arrays, as a `tf.data` data set: Keras' array pipeline costs about 0.1 s
    a call, and every call on a model then passes the same kind of input, so
    that none traces (or compiles under XLA) the train function again."""
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def _names(variables):
    return [v.path for v in variables]


# --- Construction and task structure -------------------------------------


def test_outputs_must_be_a_dict_of_tensors():
    inputs = keras.Input((4,))
    out = keras.layers.Dense(1)(inputs)
    with pytest.raises(ValueError, match="dict"):
        keras_mtl.MultiTaskModel(inputs, [out, out])
    with pytest.raises(ValueError, match="dict"):
        keras_mtl.MultiTaskModel(inputs, {})


def test_task_order_follows_the_outputs_dict():
    inputs = keras.Input((4,))
    shared = keras.layers.Dense(3)(inputs)
    model = keras_mtl.MultiTaskModel(
        inputs,
        {"zeta": keras.layers.Dense(1)(shared), "alpha": keras.layers.Dense(2)(shared)},
    )
    assert model.task_names == ("zeta", "alpha")
    out = model.predict(np.zeros((2, 4)), verbose=0)
    assert list(out) == ["zeta", "alpha"]
    assert out["alpha"].shape == (2, 2)


def test_variable_roles_trunk_and_heads():
    model = two_task_mlp()
    assert _names(model.shared_variables) == ["trunk/kernel", "trunk/bias"]
    assert {t: _names(v) for t, v in model.task_variables.items()} == {
        "cls": ["cls_head/kernel", "cls_head/bias"],
        "reg": ["reg_head/kernel", "reg_head/bias"],
    }
    (rep,) = model.shared_representations
    assert tuple(rep.shape) == (None, 16)


def test_variable_roles_heads_at_different_depths():
    # Task "low" reads layer 1; task "high" reads layer 2 (built on layer 1).
    inputs = keras.Input((4,))
    h1 = keras.layers.Dense(5, name="layer1")(inputs)
    h2 = keras.layers.Dense(6, name="layer2")(h1)
    model = keras_mtl.MultiTaskModel(
        inputs,
        {
            "low": keras.layers.Dense(2, name="low_head")(h1),
            "high": keras.layers.Dense(2, name="high_head")(h2),
        },
    )
    assert _names(model.shared_variables) == ["layer1/kernel", "layer1/bias"]
    assert _names(model.task_variables["high"]) == [
        "layer2/kernel",
        "layer2/bias",
        "high_head/kernel",
        "high_head/bias",
    ]
    assert _names(model.task_variables["low"]) == ["low_head/kernel", "low_head/bias"]
    (rep,) = model.shared_representations
    assert tuple(rep.shape) == (None, 5)


def test_variable_roles_three_tasks_partial_sharing_and_nested_trunk():
    # A nested trunk model shared by all; a branch shared by "a" and "b" only.
    trunk_in = keras.Input((4,))
    trunk = keras.Model(trunk_in, keras.layers.Dense(8, name="t")(trunk_in), name="tr")
    inputs = keras.Input((4,))
    features = trunk(inputs)
    branch = keras.layers.Dense(6, name="branch")(features)
    model = keras_mtl.MultiTaskModel(
        inputs,
        {
            "a": keras.layers.Dense(1, name="ha")(branch),
            "b": keras.layers.Dense(1, name="hb")(branch),
            "c": keras.layers.Dense(1, name="hc")(features),
        },
    )
    assert _names(model.shared_variables) == [
        "t/kernel",
        "t/bias",
        "branch/kernel",
        "branch/bias",
    ]
    assert _names(model.task_variables["c"]) == ["hc/kernel", "hc/bias"]
    assert len(model.shared_representations) == 2


def test_from_trunk_builds_trunk_plus_heads():
    trunk_in = keras.Input((6,))
    trunk = keras.Model(trunk_in, keras.layers.Dense(4, name="body")(trunk_in))
    model = keras_mtl.MultiTaskModel.from_trunk(
        trunk, {"a": keras.layers.Dense(2, name="ha"), "b": keras.layers.Dense(1)}
    )
    assert model.task_names == ("a", "b")
    assert _names(model.shared_variables) == ["body/kernel", "body/bias"]
    out = model.predict(np.ones((3, 6)), verbose=0)
    assert out["a"].shape == (3, 2) and out["b"].shape == (3, 1)
    with pytest.raises(ValueError, match="heads"):
        keras_mtl.MultiTaskModel.from_trunk(trunk, [])


def test_set_variable_roles_overrides_and_validates():
    model = two_task_mlp()
    kernel = model.get_layer("cls_head").kernel
    model.set_variable_roles(shared=[*model.shared_variables, kernel])
    assert "cls_head/kernel" in _names(model.shared_variables)
    assert _names(model.task_variables["cls"]) == ["cls_head/bias"]
    with pytest.raises(ValueError, match="unknown tasks"):
        model.set_variable_roles(tasks={"nope": []})
    with pytest.raises(ValueError, match="not a trainable variable"):
        model.set_variable_roles(shared=[keras.Variable(1.0)])


# --- Training ------------------------------------------------------------


def test_equal_weighting_learns_digits_and_parity():
    """EW on real data (sklearn's 8x8 digits): both tasks well above chance."""
    x, y = digits_data()
    idx = np.random.default_rng(0).permutation(len(x))
    train, test = idx[:1400], idx[1400:]
    inputs = keras.Input((64,))
    h = keras.layers.Dense(64, activation="relu")(inputs)
    model = keras_mtl.MultiTaskModel(
        inputs,
        {
            "digit": keras.layers.Dense(10, activation="softmax")(h),
            "parity": keras.layers.Dense(1, activation="sigmoid")(h),
        },
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss={
            "digit": "sparse_categorical_crossentropy",
            "parity": "binary_crossentropy",
        },
        metrics={"digit": ["accuracy"], "parity": ["accuracy"]},
    )
    # `tf.data` batches, reshuffled every epoch as `fit` shuffles arrays
    # (Keras' array pipeline costs about 0.1 s an epoch).
    train_batches = (
        tf.data.Dataset.from_tensor_slices(
            (x[train], {k: v[train] for k, v in y.items()})
        )
        .shuffle(len(train), seed=0)
        .batch(32)
    )
    history = model.fit(train_batches, epochs=15, shuffle=False, verbose=0)
    result = model.evaluate(
        _batches(x[test], {k: v[test] for k, v in y.items()}, 32),
        verbose=0,
        return_dict=True,
    )
    assert result["digit_accuracy"] > 0.93, result
    assert result["parity_accuracy"] > 0.93, result
    assert history.history["loss"][-1] < history.history["loss"][0] / 5


def test_logs_hold_loss_task_losses_weights_and_metrics():
    model = _compile(
        two_task_mlp(),
        loss_weights={"cls": 2.0, "reg": 0.5},
        metrics={"cls": ["accuracy"], "reg": ["mae"]},
    )
    x, y = two_task_data()
    history = model.fit(
        x, y, epochs=2, batch_size=16, verbose=0, validation_data=(x, y)
    )
    logs = history.history
    for key in [
        "loss",
        "cls_loss",
        "reg_loss",
        "cls_weight",
        "reg_weight",
        "cls_accuracy",
        "reg_mae",
        "val_loss",
        "val_cls_loss",
        "val_cls_accuracy",
    ]:
        assert len(logs[key]) == 2, key
    np.testing.assert_allclose(logs["cls_weight"], [2.0, 2.0])
    np.testing.assert_allclose(logs["reg_weight"], [0.5, 0.5])
    # "loss" is the unweighted sum of the task losses (same data, batches).
    result = model.evaluate(x, y, verbose=0, return_dict=True, batch_size=16)
    np.testing.assert_allclose(
        result["loss"], result["cls_loss"] + result["reg_loss"], rtol=1e-5
    )
    np.testing.assert_allclose(logs["val_loss"][-1], result["loss"], rtol=1e-5)


def test_train_step_matches_hand_computed_sgd_update():
    """One SGD step equals w - lr * grad(sum_t w_t L_t) computed by hand."""
    model = _compile(two_task_mlp(), loss_weights=[2.0, 0.5])
    x, y = two_task_data(n=8)
    before = [v.numpy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        cls = TWO_TASK_LOSSES["cls"](y["cls"], pred["cls"])
        reg = keras.losses.MeanSquaredError()(y["reg"], pred["reg"])
        total = 2.0 * cls + 0.5 * reg
    grads = tape.gradient(total, model.trainable_variables)
    model.train_on_batch(x, y)
    for b, g, v in zip(before, grads, model.trainable_variables):
        np.testing.assert_allclose(v.numpy(), b - 0.1 * g.numpy(), atol=1e-6)


_SUM_RUNS = {}


def _trained_for_sum_checks(strategy_key, jit_compile):
    """Two epochs of 8-example SGD steps on the two-task MLP with BatchNorm
    in the trunk, from seed 3: the runs of the sum-equals-EW checks below.
    Cached per (strategy, jit_compile) so that the EW reference is trained
    (and compiled under XLA) once for both checks; the models are not
    changed afterwards."""
    key = (strategy_key, jit_compile)
    if key not in _SUM_RUNS:
        strategy = {
            "ew": lambda: "ew",
            "sum": SumOfGradients,
            "rep_sum": lambda: RepSum(rep_grad=True),
        }[strategy_key]()
        x, y = two_task_data(n=32)
        keras.utils.set_random_seed(3)
        model = _compile(
            two_task_mlp(batch_norm=True),
            loss_weighting=strategy,
            jit_compile=jit_compile,
        )
        model.fit(_batches(x, y, 8), epochs=2, shuffle=False, verbose=0)
        _SUM_RUNS[key] = model
    return _SUM_RUNS[key]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_gradient_path_with_sum_equals_equal_weighting(jit_compile):
    """Per-task gradients summed by a strategy give EW's update exactly.
    (The trunk holds a BatchNorm layer: the model and EW run of the
    rep-grad check below, trained once for both.)"""
    results = [
        [
            v.numpy()
            for v in _trained_for_sum_checks(key, jit_compile).trainable_variables
        ]
        for key in ("ew", "sum")
    ]
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=2e-6)


def test_gradient_path_gives_heads_their_own_unscaled_gradient():
    class FirstTaskOnly(SumOfGradients):
        def call(self, grads, losses=None, training=True):
            return grads[0], keras.ops.convert_to_tensor([1.0, 0.0])

    model = _compile(two_task_mlp(), loss_weighting=FirstTaskOnly())
    x, y = two_task_data(n=8)
    reg_head = model.get_layer("reg_head")
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        reg = keras.losses.MeanSquaredError()(y["reg"], pred["reg"])
    expected = reg_head.kernel.numpy() - 0.1 * tape.gradient(reg, reg_head.kernel)
    trunk_before = model.get_layer("trunk").kernel.numpy()
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        cls = TWO_TASK_LOSSES["cls"](y["cls"], pred["cls"])
    trunk_expected = trunk_before - 0.1 * tape.gradient(
        cls, model.get_layer("trunk").kernel
    )
    model.train_on_batch(x, y)
    np.testing.assert_allclose(reg_head.kernel.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(
        model.get_layer("trunk").kernel.numpy(), trunk_expected, atol=1e-6
    )


def test_xla_and_graph_steps_agree():
    x, y = two_task_data(n=32)
    results = []
    for jit in [False, True]:
        keras.utils.set_random_seed(5)
        model = _compile(
            two_task_mlp(), loss_weighting=RunningMeanWeighting(), jit_compile=jit
        )
        model.fit(_batches(x, y, 8), epochs=2, shuffle=False, verbose=0)
        results.append(
            [
                v.numpy()
                for v in model.trainable_variables + model.loss_weighting.weights
            ]
        )
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_tf_data_with_per_task_sample_weights():
    x, y = two_task_data(n=16)
    w = {"cls": np.ones(16, "float32"), "reg": np.zeros(16, "float32")}
    w["reg"][:4] = 1.0
    model = _compile(two_task_mlp())
    data = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(16)
    result = model.evaluate(data, verbose=0, return_dict=True)
    pred = model.predict(x, verbose=0)
    # Keras' "sum_over_batch_size": sum of weighted per-sample losses / batch.
    reg_expected = np.sum(((pred["reg"][:, 0] - y["reg"][:, 0]) ** 2) * w["reg"]) / 16
    np.testing.assert_allclose(result["reg_loss"], reg_expected, rtol=1e-5)
    history = model.fit(data, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_fit_with_numpy_dicts_and_single_sample_weight_array():
    x, y = two_task_data(n=16)
    model = _compile(two_task_mlp())
    history = model.fit(x, y, sample_weight=np.ones(16), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_epoch_end_hook_runs_without_a_user_callback():
    calls = []

    class CountingWeighting(keras_mtl.weighting.EqualWeighting):
        def on_epoch_end(self):
            calls.append(1)

    model = _compile(two_task_mlp(), loss_weighting=CountingWeighting())
    x, y = two_task_data(n=16)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert len(calls) == 3


# --- Saving --------------------------------------------------------------


def test_save_and_load_keep_predictions_and_strategy_state(tmp_path):
    x, y = two_task_data(n=32)
    model = _compile(
        two_task_mlp(batch_norm=True),
        loss_weighting=RunningMeanWeighting(),
        optimizer="adam",
        metrics={"cls": ["accuracy"]},
    )
    model.fit(_batches(x, y, 8), epochs=2, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_mtl.MultiTaskModel)
    assert loaded.task_names == model.task_names
    # Called directly: `predict` would trace a function per model to
    # compute the same outputs (inference mode, one batch of 32).
    predictions = model(x, training=False), loaded(x, training=False)
    assert list(predictions[0]) == list(predictions[1])
    for a, b in zip(*(p.values() for p in predictions)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert isinstance(loaded.loss_weighting, RunningMeanWeighting)
    for a, b in zip(model.loss_weighting.weights, loaded.loss_weighting.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert float(model.loss_weighting.count.numpy()) == 8.0
    # Training continues identically: same optimizer and strategy state.
    model.fit(_batches(x, y, 8), epochs=1, shuffle=False, verbose=0)
    loaded.fit(_batches(x, y, 8), epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_save_weights_and_checkpoint_resume_keep_strategy_state(tmp_path):
    x, y = two_task_data(n=32)

    def build():
        keras.utils.set_random_seed(11)
        return _compile(
            two_task_mlp(), loss_weighting=RunningMeanWeighting(), optimizer="adam"
        )

    reference = build()
    reference.fit(_batches(x, y, 8), epochs=2, shuffle=False, verbose=0)

    interrupted = build()
    interrupted.fit(_batches(x, y, 8), epochs=1, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "ckpt.weights.h5")
    interrupted.save_weights(path)
    resumed = build()
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(path)
    np.testing.assert_array_equal(
        resumed.loss_weighting.mean.numpy(), interrupted.loss_weighting.mean.numpy()
    )
    resumed.fit(_batches(x, y, 8), epochs=1, shuffle=False, verbose=0)
    for a, b in zip(reference.weights, resumed.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_recompiling_replaces_the_strategy_state():
    model = _compile(two_task_mlp(), loss_weighting=RunningMeanWeighting())
    count_before = len(model.weights)
    _compile(model, loss_weighting="ew")
    assert len(model.weights) == count_before - 2
    config = model.get_compile_config()
    assert config["loss_weighting"]["class_name"] == "EqualWeighting"


# --- Bad input: clear errors, nothing lost --------------------------------


def test_loss_dict_must_name_every_task():
    model = two_task_mlp()
    with pytest.raises(ValueError, match=r"missing tasks \['reg'\]"):
        model.compile(loss={"cls": "mse"})
    with pytest.raises(ValueError, match=r"unknown tasks \['typo'\]"):
        model.compile(loss={"cls": "mse", "reg": "mse", "typo": "mse"})
    with pytest.raises(ValueError, match="needs `loss`"):
        model.compile(loss=None)


def test_metrics_and_loss_weights_must_name_model_tasks():
    model = two_task_mlp()
    with pytest.raises(ValueError, match=r"`metrics`.*unknown tasks \['clss'\]"):
        model.compile(loss="mse", metrics={"clss": ["accuracy"]})
    with pytest.raises(ValueError, match=r"`loss_weights`.*missing tasks \['reg'\]"):
        model.compile(loss="mse", loss_weights={"cls": 1.0})
    with pytest.raises(ValueError, match="not both"):
        model.compile(loss="mse", loss_weights=[1, 1], loss_weighting="ew")


def test_targets_and_sample_weights_must_name_model_tasks():
    model = _compile(two_task_mlp())
    x, y = two_task_data(n=8)
    with pytest.raises(ValueError, match=r"missing tasks \['reg'\]"):
        model.fit(x, {"cls": y["cls"]}, verbose=0)
    with pytest.raises(ValueError, match=r"unknown tasks \['extra'\]"):
        model.fit(x, {**y, "extra": y["reg"]}, verbose=0)
    data = tf.data.Dataset.from_tensor_slices((x, y, {"nope": np.ones(8)})).batch(8)
    with pytest.raises(ValueError, match=r"sample_weight.*unknown tasks \['nope'\]"):
        model.fit(data, verbose=0)


def test_target_shape_mismatch_names_the_task():
    model = _compile(two_task_mlp())
    x, y = two_task_data(n=8)
    bad = dict(y, reg=np.zeros((8, 5), "float32"))
    with pytest.raises(ValueError, match="Task 'reg': target shape"):
        model.fit(x, bad, verbose=0)


def test_strategy_built_for_another_number_of_tasks():
    strategy = RunningMeanWeighting()
    strategy.build((3,))
    with pytest.raises(ValueError, match="3 tasks"):
        _compile(two_task_mlp(), loss_weighting=strategy)
    with pytest.raises(ValueError, match="Valid names: .*ew"):
        _compile(two_task_mlp(), loss_weighting="no_such_method")
    with pytest.raises(ValueError, match="on_nonfinite"):
        _compile(two_task_mlp(), on_nonfinite="ignore")


def _nan_batch_data():
    x, y = two_task_data(n=24)
    y["reg"][8:16] = np.nan  # the second batch of 8 has NaN targets
    return x, y


def test_nonfinite_loss_raises_naming_task_and_step_and_keeps_state():
    x, y = _nan_batch_data()
    model = _compile(
        two_task_mlp(), loss_weighting=RunningMeanWeighting(), optimizer="adam"
    )
    model.fit(x[:8], {k: v[:8] for k, v in y.items()}, batch_size=8, verbose=0)
    weights = [v.numpy() for v in model.weights]
    optimizer_state = [v.numpy() for v in model.optimizer.variables]
    with pytest.raises(FloatingPointError, match="Task 'reg'.*step 0 "):
        model.fit(x[8:16], {k: v[8:16] for k, v in y.items()}, batch_size=8, verbose=0)
    for before, after in zip(weights, model.weights):
        np.testing.assert_array_equal(before, after.numpy())
    for before, after in zip(optimizer_state, model.optimizer.variables):
        np.testing.assert_array_equal(before, after.numpy())


def test_nonfinite_loss_raises_at_the_right_step():
    x, y = _nan_batch_data()
    model = _compile(two_task_mlp())
    with pytest.raises(
        FloatingPointError, match="Task 'reg'.*step 1 .*epoch 1, batch 2"
    ):
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0)


# A skipped non-finite step (on_nonfinite="skip", graph mode and XLA):
# test_step_guard.py::test_a_skipped_step_changes_nothing.


def test_compile_config_round_trip_restores_strategy_and_options():
    model = _compile(
        two_task_mlp(),
        loss_weights={"cls": 3.0, "reg": 1.0},
        on_nonfinite="skip",
        metrics={"cls": ["accuracy"]},
    )
    config = model.get_compile_config()
    other = two_task_mlp()
    other.compile_from_config(config)
    assert isinstance(other.loss_weighting, keras_mtl.weighting.StaticWeighting)
    assert other.loss_weighting.task_weights == [3.0, 1.0]
    assert other._options.on_nonfinite == "skip"


def test_head_gradient_scales_multiply_each_task_own_gradient():
    class HalfHeads(SumOfGradients):
        def head_gradient_scales(self, losses, weights):
            return keras.ops.convert_to_tensor([0.5, 2.0])

    model = _compile(two_task_mlp(), loss_weighting=HalfHeads())
    x, y = two_task_data(n=8)
    heads = [model.get_layer("cls_head").kernel, model.get_layer("reg_head").kernel]
    with tf.GradientTape(persistent=True) as tape:
        pred = model(x, training=True)
        cls = TWO_TASK_LOSSES["cls"](y["cls"], pred["cls"])
        reg = keras.losses.MeanSquaredError()(y["reg"], pred["reg"])
    expected = [
        heads[0].numpy() - 0.1 * 0.5 * tape.gradient(cls, heads[0]),
        heads[1].numpy() - 0.1 * 2.0 * tape.gradient(reg, heads[1]),
    ]
    model.train_on_batch(x, y)
    for variable, value in zip(heads, expected):
        np.testing.assert_allclose(variable.numpy(), value, atol=1e-6)


# --- Per-task gradient engine: representation and shared-layer gradients --


class RepSum(SumOfGradients):
    supports_rep_grad = True


@pytest.mark.parametrize("jit_compile", [False, True])
def test_rep_grad_path_with_sum_equals_equal_weighting(jit_compile):
    """Summed representation gradients back-propagated once through the trunk
    give EW's update exactly (the chain rule is linear in the cotangent)."""
    results = [
        [v.numpy() for v in _trained_for_sum_checks(key, jit_compile).weights]
        for key in ("ew", "rep_sum")
    ]
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=2e-6)


def test_rep_grad_hands_the_strategy_one_row_per_task_over_the_batch():
    seen = {}

    class Recorder(RepSum):
        def call(self, grads, losses=None, training=True):
            seen["shape"] = tuple(grads.shape)
            return super().call(grads, losses, training)

    model = _compile(two_task_mlp(), loss_weighting=Recorder(rep_grad=True))
    x, y = two_task_data(n=8)
    model.train_on_batch(x, y)
    assert seen["shape"] in [(2, 8 * 16), (2, None)]
    with pytest.raises(ValueError, match="does not support rep_grad"):
        SumOfGradients(rep_grad=True)


def test_rep_grad_rejects_heads_that_read_the_inputs():
    inputs = keras.Input((4,))
    shared = keras.layers.Dense(3)(inputs)
    mixed = keras.layers.Concatenate()([shared, inputs])
    model = keras_mtl.MultiTaskModel(
        inputs,
        {"a": keras.layers.Dense(1)(mixed), "b": keras.layers.Dense(1)(shared)},
    )
    with pytest.raises(ValueError, match="read only the shared representation"):
        model.compile(loss="mse", loss_weighting=RepSum(rep_grad=True))


def test_last_shared_variables_are_the_layer_feeding_the_heads():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, name="first")(inputs)
    h = keras.layers.Dense(6, name="second")(h)
    h = keras.layers.Activation("relu")(h)
    model = keras_mtl.MultiTaskModel(
        inputs, {"a": keras.layers.Dense(1)(h), "b": keras.layers.Dense(1)(h)}
    )
    assert _names(model.last_shared_variables) == ["second/kernel", "second/bias"]
    nested_in = keras.Input((4,))
    trunk = keras.Model(nested_in, keras.layers.Dense(3, name="inner")(nested_in))
    nested = keras_mtl.MultiTaskModel.from_trunk(
        trunk, {"a": keras.layers.Dense(1), "b": keras.layers.Dense(1)}
    )
    assert _names(nested.last_shared_variables) == ["inner/kernel", "inner/bias"]


@pytest.mark.parametrize("which", ["last_layer", "all"])
def test_loss_strategy_receives_per_task_shared_gradients(which):
    seen = {}

    class NeedsGrads(keras_mtl.weighting.EqualWeighting):
        shared_gradients = which

        def call(self, losses, shared_grads=None, training=True):
            seen["grads"] = shared_grads
            return super().call(losses, training=training)

    model = _compile(
        two_task_mlp(batch_norm=True), loss_weighting=NeedsGrads(), run_eagerly=True
    )
    x, y = two_task_data(n=8)
    variables = (
        model.last_shared_variables if which == "last_layer" else model.shared_variables
    )
    with tf.GradientTape(persistent=True) as tape:
        pred = model(x, training=True)
        cls = TWO_TASK_LOSSES["cls"](y["cls"], pred["cls"])
        reg = keras.losses.MeanSquaredError()(y["reg"], pred["reg"])
    expected = np.stack(
        [
            np.concatenate([np.ravel(g) for g in tape.gradient(loss, variables)])
            for loss in (cls, reg)
        ]
    )
    model.train_on_batch(x, y)
    np.testing.assert_allclose(seen["grads"].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_differentiable_shared_gradients_give_the_double_backprop_update():
    """Objective sum(L) + (g_1 . g_2)^2 differentiated through the gradients."""

    class DotPenalty(keras_mtl.weighting.EqualWeighting):
        shared_gradients = "all"
        differentiable_gradients = True

        def call(self, losses, shared_grads=None, training=True):
            total, weights = super().call(losses, training=training)
            dot = keras.ops.sum(shared_grads[0] * shared_grads[1])
            return total + dot**2, weights

    model = _compile(two_task_mlp(), loss_weighting=DotPenalty())
    x, y = two_task_data(n=8)
    variables = model.trainable_variables
    shared = model.shared_variables
    before = [v.numpy() for v in variables]
    with tf.GradientTape() as outer:
        with tf.GradientTape(persistent=True) as inner:
            pred = model(x, training=True)
            cls = TWO_TASK_LOSSES["cls"](y["cls"], pred["cls"])
            reg = keras.losses.MeanSquaredError()(y["reg"], pred["reg"])
        g1 = inner.gradient(cls, shared)
        g2 = inner.gradient(reg, shared)
        dot = sum(tf.reduce_sum(a * b) for a, b in zip(g1, g2))
        objective = cls + reg + dot**2
    grads = outer.gradient(objective, variables)
    model.train_on_batch(x, y)
    for b, g, v in zip(before, grads, variables):
        np.testing.assert_allclose(v.numpy(), b - 0.1 * g.numpy(), atol=1e-6)


@pytest.mark.parametrize("strategy", ["ew", "sum", "rep_sum"])
def test_weight_regularizers_are_part_of_every_update(strategy):
    """An L2 kernel regulariser on the trunk adds 2*l2*W to its gradient."""
    strategies = {"ew": "ew", "sum": SumOfGradients(), "rep_sum": RepSum(rep_grad=True)}
    inputs = keras.Input((8,))
    shared = keras.layers.Dense(
        16, kernel_regularizer=keras.regularizers.L2(0.5), name="trunk"
    )(inputs)
    model = keras_mtl.MultiTaskModel(
        inputs,
        {
            "cls": keras.layers.Dense(3, name="cls_head")(shared),
            "reg": keras.layers.Dense(1, name="reg_head")(shared),
        },
    )
    _compile(model, loss_weighting=strategies[strategy])
    x, y = two_task_data(n=8)
    kernel = model.get_layer("trunk").kernel
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        total = TWO_TASK_LOSSES["cls"](y["cls"], pred["cls"])
        total += keras.losses.MeanSquaredError()(y["reg"], pred["reg"])
    expected = kernel.numpy() - 0.1 * (
        tape.gradient(total, kernel).numpy() + 2 * 0.5 * kernel.numpy()
    )
    model.train_on_batch(x, y)
    np.testing.assert_allclose(kernel.numpy(), expected, atol=1e-5)


def test_rep_grad_gramian_strategies_weigh_with_batch_summed_gradients():
    """As LibMTL's rep-grad mode: weights from the Gramian of the per-task
    representation gradients summed over the batch, update = the weighted
    per-example gradients."""
    seen = {}

    class RecordGramian(keras_mtl.weighting.GradientAggregation):
        requires = "gramian"
        supports_rep_grad = True

        def compute_weights(self, gramian, losses=None, training=True):
            seen["gramian"] = gramian
            return keras.ops.ones((2,))

    model = _compile(
        two_task_mlp(), loss_weighting=RecordGramian(rep_grad=True), run_eagerly=True
    )
    x, y = two_task_data(n=8)
    trunk = keras.Model(model.input, model.shared_representations[0])
    with tf.GradientTape(persistent=True) as tape:
        z = trunk(x, training=True)
        tape.watch(z)
        cls = TWO_TASK_LOSSES["cls"](y["cls"], model.get_layer("cls_head")(z))
        reg = keras.losses.MeanSquaredError()(y["reg"], model.get_layer("reg_head")(z))
    summed = np.stack(
        [tape.gradient(loss, z).numpy().sum(axis=0) for loss in (cls, reg)]
    )
    model.train_on_batch(x, y)
    np.testing.assert_allclose(
        seen["gramian"].numpy(), summed @ summed.T, rtol=1e-5, atol=1e-8
    )


def test_uniform_task_sampling_trains_one_task_per_step():
    model = _compile(two_task_mlp(), task_sampling="uniform")
    x, y = two_task_data(n=8)
    heads = [model.get_layer("cls_head").kernel, model.get_layer("reg_head").kernel]
    changed = []
    for _ in range(12):
        before = [h.numpy() for h in heads]
        model.train_on_batch(x, y)
        moved = [not np.array_equal(b, h.numpy()) for b, h in zip(before, heads)]
        assert sum(moved) == 1, moved  # exactly one head trained per step
        changed.append(moved.index(True))
    assert set(changed) == {0, 1}
    history = model.fit(x, y, batch_size=1, epochs=1, verbose=0)
    weights = history.history["cls_weight"][0] + history.history["reg_weight"][0]
    np.testing.assert_allclose(weights, 1.0, atol=1e-6)  # one task drawn per step
    with pytest.raises(ValueError, match="task_sampling"):
        _compile(two_task_mlp(), task_sampling="uniform", loss_weighting="dwa")
    with pytest.raises(ValueError, match="task_sampling must be"):
        _compile(two_task_mlp(), task_sampling="round_robin")


def test_one_task_model_keeps_the_task_prefix_on_metrics():
    inputs = keras.Input((8,))
    model = keras_mtl.MultiTaskModel(inputs, {"cls": keras.layers.Dense(3)(inputs)})
    model.compile(
        optimizer="sgd",
        loss={"cls": TWO_TASK_LOSSES["cls"]},
        metrics={"cls": ["accuracy"]},
        loss_weighting=keras_mtl.weighting.get(
            {"class_name": "dtp", "config": {"kpi": "accuracy"}}
        ),
    )
    x, y = two_task_data(n=16)
    history = model.fit(x, {"cls": y["cls"]}, epochs=1, verbose=0)
    assert "cls_accuracy" in history.history and "accuracy" not in history.history


@pytest.mark.parametrize("jit_compile", [False, True])
def test_gradient_strategy_with_own_variables_trains_them_through_transform_losses(
    jit_compile,
):
    """Hybrid IMTL: per-task gradients of e^s L - s, and s trained by the
    model's optimizer with gradient e^s L - 1 (LibMTL's IMTL)."""
    from keras_mtl.weighting.imtl_g import IMTLG

    x, y = two_task_data(n=16)
    models = {}
    for scaling in (False, True):
        model = two_task_mlp()
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=TWO_TASK_LOSSES,
            loss_weighting=IMTLG(loss_scaling=scaling),
            jit_compile=jit_compile,
        )
        models[scaling] = model
    # The task losses at the start, from the model's forward pass (no
    # `evaluate`: its own step would be traced, and compiled under XLA,
    # only for these two numbers).
    outputs = models[True](x)
    losses = {
        "cls_loss": float(TWO_TASK_LOSSES["cls"](y["cls"], outputs["cls"])),
        "reg_loss": float(keras.losses.MeanSquaredError()(y["reg"], outputs["reg"])),
    }
    for model in models.values():
        model.fit(_batches(x, y, 16), epochs=1, shuffle=False, verbose=0)
    strategy = models[True].loss_weighting
    assert [v.path for v in strategy.trainable_variables] == [strategy.loss_scales.path]
    # s starts at 0: its first SGD step is -0.1 * (e^0 L_t - 1).
    expected = [-0.1 * (losses[f"{t}_loss"] - 1.0) for t in ("cls", "reg")]
    np.testing.assert_allclose(strategy.loss_scales.numpy(), expected, rtol=1e-4)
    # At s = 0 the transformed losses have the losses' gradients: the model
    # moved as plain IMTL-G moved it.
    layers = [m.get_layer(n) for m in models.values() for n in ("trunk", "cls_head")]
    for a, b in zip(
        layers[0].get_weights() + layers[1].get_weights(),
        layers[2].get_weights() + layers[3].get_weights(),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # From then on e^s rescales each task's gradient.
    for model in models.values():
        model.fit(_batches(x, y, 16), epochs=1, shuffle=False, verbose=0)
    head = models[True].task_variables["reg"][0].numpy()
    assert not np.allclose(head, models[False].task_variables["reg"][0].numpy())


def _live_matmuls(model, num_tasks):
    """MatMul ops the traced training step runs (those its outputs and
    variable updates depend on: the traced graph also holds unused ones).
    Traced without AutoGraph: the step branches on tensors only through
    graph ops (a Python branch on a tensor would fail here), so the graph
    is the one AutoGraph gives (the same live ops, checked for both
    strategies and 3 to 5 tasks), without converting the step's source
    (most of the time of the trace)."""
    x = np.zeros((4, 5), "float32")
    y = {f"t{i}": np.zeros((4, 1), "float32") for i in range(num_tasks)}
    specs = tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape, a.dtype), (x, y))
    step = tf.function(model.train_step, autograph=False)
    graph = step.get_concrete_function(specs).graph
    stack = [t.op for t in graph.outputs] + list(graph.control_outputs)
    seen = {}
    while stack:
        op = stack.pop()
        if op.name not in seen:
            seen[op.name] = op
            stack.extend(t.op for t in op.inputs)
            stack.extend(op.control_inputs)
    return sum(op.type in ("MatMul", "BatchMatMulV2") for op in seen.values())


@pytest.mark.parametrize("strategy", ["mgda", "gradnorm"])
def test_a_task_gradient_runs_only_its_own_head(strategy):
    """Per-task gradients cost T head backward passes, not T^2: taken
    through the stacked losses, each task's pass also ran every other head
    with zero cotangents (the step's MatMuls grew as 21, 57, 183 for 3, 6,
    12 tasks). Linear growth: each extra task adds the same ops. (Checked
    on 3, 4 and 5 tasks, whose traces cost half those of 3, 6 and 12: any
    term in T^2 makes the two differences unequal there as well.)"""
    counts = {}
    for num_tasks in (3, 4, 5):
        inputs = keras.Input((5,))
        shared = keras.layers.Dense(6)(inputs)
        outputs = {f"t{i}": keras.layers.Dense(1)(shared) for i in range(num_tasks)}
        model = keras_mtl.MultiTaskModel(inputs, outputs)
        model.compile(optimizer="sgd", loss="mse", loss_weighting=strategy)
        counts[num_tasks] = _live_matmuls(model, num_tasks)
    assert counts[5] - counts[4] == counts[4] - counts[3], counts


def test_post_step_losses_leave_batch_norm_statistics_as_the_update_left_them():
    """FAMO recomputes the task losses after the update (a second forward
    pass in training mode on the same batch); BatchNorm's moving statistics
    must stay those of the step's own forward pass, as with any strategy."""
    x, y = two_task_data(n=16)
    statistics = {}
    for strategy in ("famo", "ew"):
        model = _compile(two_task_mlp(batch_norm=True), loss_weighting=strategy)
        bn = model.get_layer("bn")
        model.train_on_batch(x, y)
        statistics[strategy] = [bn.moving_mean.numpy(), bn.moving_variance.numpy()]
        assert not np.allclose(statistics[strategy][0], 0.0)
    # The moving statistics depend on the trunk's weights before the update
    # and on the batch only, not on the strategy.
    for famo, ew in zip(statistics["famo"], statistics["ew"]):
        np.testing.assert_array_equal(famo, ew)
