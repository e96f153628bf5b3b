"""Missing labels masked element by element:
`compile(missing_labels={task: {"value": v, "per_element": True}})`.

A task masked per element loses only the elements of its target equal to
the sentinel; its loss is the mean over the labelled elements (with every
element labelled, the plain Keras loss), a sample with one labelled element
makes the task present, and its metrics average over the labelled elements.
The closed-form checks call `TaskLosses` itself and run on both backends;
the ones that train a `MultiTaskModel` run on TensorFlow.
"""

import keras
import numpy as np
import pytest
from backends import compiled
from keras import ops
from model_fixtures import TWO_TASK_LOSSES, two_task_mlp
from test_missing_labels import RecordingSum

import keras_mtl
from keras_mtl.models._targets import PerElement, label_mask, masked_for_metrics
from keras_mtl.models._task_losses import TaskLosses, resolve_losses

NAN = float("nan")
PER_ELEMENT = {"value": NAN, "per_element": True}
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
both_backends = pytest.mark.both_backends

# Targets of 3 samples x 3 elements: sample 1 has no label, samples 0 and 2
# two each. Labelled errors: 1, 2 (sample 0), 3, 2 (sample 2).
TARGET = np.array([[1.0, NAN, 3.0], [NAN, NAN, NAN], [0.0, 2.0, NAN]], "float32")
PRED = np.array([[2.0, 5.0, 1.0], [1.0, 1.0, 1.0], [3.0, 0.0, 7.0]], "float32")
WEIGHTS = np.array([1.0, 2.0, 3.0], "float32")


def _task_losses(loss, rule):
    return TaskLosses(["t"], resolve_losses(["t"], loss), {"t": rule}, (), 0.0)


def _values(task_losses, target=TARGET, pred=PRED, weights=None):
    def step(target, pred, weights):
        sample_weights = {} if weights is None else {"t": weights}
        values = task_losses({"t": target}, {"t": pred}, sample_weights)
        return values.losses, values.counts

    losses, counts = compiled(step)(target, pred, weights)
    return float(ops.convert_to_numpy(losses)[0]), float(
        ops.convert_to_numpy(counts)[0]
    )


# --- Closed-form losses (TaskLosses, both backends) ---------------------------


@both_backends
@pytest.mark.parametrize(
    ("loss", "weights", "expected"),
    [
        # (1 + 4 + 9 + 4) / 4 labelled elements.
        ("mse", None, 18.0 / 4),
        ("mae", None, 8.0 / 4),
        # Weights 1 (sample 0) and 3 (sample 2): (1 + 4) + 3 (9 + 4), over
        # the 4 labelled elements (Keras' sum_over_batch_size rule).
        ("mse", WEIGHTS, 44.0 / 4),
        ("mse", WEIGHTS[:, None], 44.0 / 4),  # (B, 1) weights: the same
        (keras.losses.MeanSquaredError(reduction="sum"), None, 18.0 / 3),
        (
            keras.losses.MeanSquaredError(reduction="mean_with_sample_weight"),
            WEIGHTS,
            44.0 / (2 * 1.0 + 2 * 3.0),
        ),
    ],
)
def test_the_loss_is_the_mean_over_labelled_elements(loss, weights, expected):
    """The closed forms of `_masked_terms`: S / D with S the weighted sum of
    the labelled elements' losses and D their count (`"sum"`: the sample
    mean D = 3 of the Keras loss, `"mean_with_sample_weight"`: the sum of
    their weights)."""
    got, count = _values(_task_losses(loss, PerElement(NAN)), weights=weights)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert count == 4.0


@both_backends
def test_a_plain_sentinel_still_drops_the_whole_sample():
    """The per-sample rule is unchanged: samples 0 and 2 each hold a NaN,
    so the task has no labelled sample (loss 0, count 0), where per element
    it keeps four values."""
    got, count = _values(_task_losses("mse", NAN))
    assert (got, count) == (0.0, 0.0)
    target = TARGET.copy()
    target[0] = [1.0, 1.0, 3.0]  # sample 0 fully labelled: errors 1, 16, 4
    got, count = _values(_task_losses("mse", NAN), target=target)
    np.testing.assert_allclose(got, 21.0 / 3, rtol=1e-6)
    assert count == 1.0


@both_backends
@pytest.mark.parametrize("rule", [NAN, "sample_weight"])
def test_column_sample_weights_of_a_one_unit_head_weigh_samples(rule):
    """Weights of shape (B, 1) for (B, 1) targets weigh each sample, as
    (B,) weights do (they once broadcast against the (B,) loss values to
    (B, B)). Sentinel: sample 1 is NaN; weights 1, 2, 3; squared errors
    1 and 9 of samples 0 and 2: (1 + 27) / 2. "sample_weight": weight 0
    drops sample 1; (1 * 1 + 3 * 9) / 2 again."""
    target = np.array([[1.0], [NAN], [0.0]], "float32")
    weights = WEIGHTS[:, None]
    if rule == "sample_weight":
        target = np.nan_to_num(target)
        weights = weights * np.array([[1.0], [0.0], [1.0]], "float32")
    pred = np.array([[2.0], [1.0], [3.0]], "float32")
    for weight in (weights, weights[:, 0]):
        got, count = _values(_task_losses("mse", rule), target, pred, weight)
        np.testing.assert_allclose(got, 28.0 / 2, rtol=1e-6)
        assert count == 2.0


@both_backends
def test_with_every_element_labelled_it_is_the_keras_loss():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(5, 4)).astype("float32")
    pred = rng.normal(size=(5, 4)).astype("float32")
    weights = rng.uniform(0.5, 2.0, size=(5,)).astype("float32")
    for loss in (
        keras.losses.MeanSquaredError(),
        keras.losses.MeanAbsoluteError(),
        keras.losses.Huber(delta=0.5),
        keras.losses.LogCosh(),
    ):
        want = float(loss(target, pred, sample_weight=weights))
        got, count = _values(
            _task_losses(loss, PerElement(-99.0)), target, pred, weights
        )
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=loss.name)
        assert count == 20.0


@both_backends
def test_an_integer_sentinel_masks_binary_labels_element_by_element():
    """Multi-label binary targets with -1 for an unknown label: the binary
    cross-entropy of the three known labels (logits 0: log 2 each; logit
    2 for label 1: log(1 + e^-2))."""
    target = np.array([[1, -1], [0, 1]], "int32")
    pred = np.array([[0.0, 5.0], [0.0, 2.0]], "float32")
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    got, count = _values(_task_losses(loss, PerElement(-1)), target, pred)
    expected = (2 * np.log(2.0) + np.log1p(np.exp(-2.0))) / 3
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert count == 3.0


@both_backends
def test_class_labels_cannot_be_masked_per_element():
    target = np.array([0, 2], "int32")
    pred = np.zeros((2, 3), "float32")
    with pytest.raises(ValueError, match=r"task 'seg'.*class labels"):
        label_mask(PerElement(-1), "seg", target, pred, None)


@both_backends
def test_a_loss_over_the_whole_vector_is_refused_naming_the_task():
    def total_mse(y_true, y_pred):  # reduces over every axis
        return ops.mean(ops.square(y_true - y_pred))

    with pytest.raises(ValueError, match=r"task 't'.*does not reduce over the last"):
        _values(_task_losses(total_mse, PerElement(NAN)))


@both_backends
def test_metrics_see_the_labelled_elements_alone():
    """`masked_for_metrics` folds a per-element task's elements into the
    batch with the unlabelled ones masked, in a compiled step: MAE over the
    4 labelled elements (|errors| 1, 2, 3, 2), and the MSE weighted by the
    samples' weights repeated over their elements, (1 (1 + 4) + 3 (9 + 4))
    / (1 + 1 + 3 + 3)."""
    mae, mse = keras.metrics.MeanAbsoluteError(), keras.metrics.MeanSquaredError()

    def update(target, pred, weights):
        y, y_pred, sample_weights = masked_for_metrics(
            {"t": PerElement(NAN)}, ["t"], {"t": target}, {"t": pred}, {"t": weights}
        )
        mae.update_state(y["t"], y_pred["t"])
        mse.update_state(y["t"], y_pred["t"], sample_weights["t"])
        return ops.shape(y["t"])[0]

    folded = compiled(update, layers=[mae, mse])(TARGET, PRED, WEIGHTS)
    assert int(folded) == 9
    np.testing.assert_allclose(float(mae.result()), 8.0 / 4, rtol=1e-6)
    np.testing.assert_allclose(float(mse.result()), 44.0 / 8, rtol=1e-6)


# --- Training a model (TensorFlow) ---------------------------------------------


def _vector_model(seed=0):
    """A trunk with a classification head and a 3-value regression head."""
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((6,))
    shared = keras.layers.Dense(8, activation="tanh", kernel_initializer=init)(inputs)
    return keras_mtl.MultiTaskModel(
        inputs,
        {
            "cls": keras.layers.Dense(3, kernel_initializer=init, name="cls")(shared),
            "vec": keras.layers.Dense(3, kernel_initializer=init, name="vec")(shared),
        },
    )


def _vector_data(n=12, seed=0, missing=0.4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    vec = rng.normal(size=(n, 3)).astype("float32")
    vec[rng.random((n, 3)) < missing] = NAN
    vec[0] = [NAN, NAN, NAN]  # one sample without any label
    vec[1] = [0.5, 0.5, 0.5]  # one with every label
    return x, {"cls": rng.integers(0, 3, size=(n,)).astype("int32"), "vec": vec}


def _compiled(missing=None, loss_weighting="ew", jit=False, **kw):
    model = _vector_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss={"cls": CE, "vec": "mse"},
        loss_weighting=loss_weighting,
        missing_labels={"vec": PER_ELEMENT} if missing is None else missing,
        jit_compile=jit,
        **kw,
    )
    return model


def test_one_sgd_step_equals_the_step_on_the_labelled_elements_only():
    """Under XLA (the other model tests here run in a plain graph)."""
    import tensorflow as tf

    x, y = _vector_data()
    model = _compiled(jit=True)
    reference = _vector_model()
    reference.set_weights(model.get_weights())
    labelled = ~np.isnan(y["vec"])
    with tf.GradientTape() as tape:
        pred = reference(x, training=True)
        vec_loss = tf.reduce_mean(
            (tf.boolean_mask(pred["vec"], labelled) - y["vec"][labelled]) ** 2
        )
        total = CE(y["cls"], pred["cls"]) + vec_loss
    grads = tape.gradient(total, reference.trainable_variables)
    for variable, grad in zip(reference.trainable_variables, grads):
        variable.assign(variable - 0.1 * grad)
    history = model.fit(x, y, batch_size=12, epochs=1, shuffle=False, verbose=0)
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history.history["vec_loss"][0], float(vec_loss), 1e-5)


def test_one_labelled_element_makes_the_task_present_and_none_absent():
    """Every sample has a single labelled element: per element the task is
    present (the strategy gets mask 1 and a gradient row), where the plain
    sentinel finds no labelled sample. With every element NaN it is absent:
    mask 0, a zero row, loss 0 and its head untouched."""
    x, y = _vector_data(n=6, missing=0.0)
    y["vec"] = np.full((6, 3), NAN, "float32")
    y["vec"][np.arange(6), np.arange(6) % 3] = 1.0
    for rule, present in ((PER_ELEMENT, 1.0), (NAN, 0.0)):
        model = _compiled({"vec": rule}, RecordingSum())
        model.fit(x, y, batch_size=6, epochs=1, verbose=0)
        strategy = model.loss_weighting
        np.testing.assert_array_equal(strategy.last_mask.numpy(), [1.0, present])
        assert (strategy.row_norms.numpy()[1] > 0.0) == bool(present)

    y["vec"][:] = NAN
    model = _compiled(loss_weighting=RecordingSum())
    head = [v.numpy() for v in model.task_variables["vec"]]
    history = model.fit(x, y, batch_size=6, epochs=1, verbose=0)
    strategy = model.loss_weighting
    np.testing.assert_array_equal(strategy.last_mask.numpy(), [1.0, 0.0])
    assert strategy.row_norms.numpy()[1] == 0.0
    assert history.history["vec_loss"] == [0.0]
    for before, variable in zip(head, model.task_variables["vec"]):
        np.testing.assert_array_equal(variable.numpy(), before)


def test_epoch_loss_and_metrics_average_over_the_labelled_elements():
    """Two batches of 4 samples, the first with one labelled element a
    sample (4 elements), the second with all 12: the epoch's `vec_loss` is
    the mean over the 16 labelled elements (each batch weighs by its
    elements), and so are `mae` and the weighted `mse`."""
    x, y = _vector_data(n=8, missing=0.0)
    y["vec"][:4] = NAN
    y["vec"][np.arange(4), np.arange(4) % 3] = 2.0
    weights = np.arange(1, 9).astype("float32")
    model = _compiled(metrics={"vec": ["mae"]}, weighted_metrics={"vec": ["mse"]})
    result = model.evaluate(
        x,
        y,
        sample_weight={"cls": np.ones(8, "float32"), "vec": weights},
        batch_size=4,
        verbose=0,
        return_dict=True,
    )
    error = ops.convert_to_numpy(model(x)["vec"]) - y["vec"]
    labelled = ~np.isnan(y["vec"])
    element_weights = np.broadcast_to(weights[:, None], (8, 3))[labelled]
    sq = error[labelled] ** 2
    batch_losses = [
        np.sum((weights[:, None] * np.nan_to_num(error) ** 2)[s]) / np.sum(labelled[s])
        for s in (slice(0, 4), slice(4, 8))
    ]
    expected_loss = np.average(batch_losses, weights=[4, 12])
    np.testing.assert_allclose(result["vec_loss"], expected_loss, rtol=1e-5)
    np.testing.assert_allclose(
        result["vec_mae"], np.mean(np.abs(error[labelled])), rtol=1e-5
    )
    np.testing.assert_allclose(
        result["vec_mse"], np.average(sq, weights=element_weights), rtol=1e-5
    )


def test_save_and_load_keep_the_per_element_rule(tmp_path):
    x, y = _vector_data()
    missing = {"cls": -1, "vec": PER_ELEMENT}
    model = _compiled(missing)
    model.fit(x, y, batch_size=12, epochs=1, verbose=0)
    path = str(tmp_path / "per_element.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    saved = loaded.get_compile_config()["missing_labels"]
    assert saved["cls"] == -1 and saved["vec"]["per_element"] is True
    assert np.isnan(saved["vec"]["value"])
    rule = loaded._options.task_losses.missing_labels["vec"]
    assert isinstance(rule, PerElement) and np.isnan(rule.value)
    expected = model.evaluate(x, y, batch_size=12, verbose=0, return_dict=True)
    got = loaded.evaluate(x, y, batch_size=12, verbose=0, return_dict=True)
    np.testing.assert_allclose(got["vec_loss"], expected["vec_loss"], rtol=1e-6)
    # The loss is the per-element one, not the per-sample one (which drops
    # every sample holding a NaN).
    per_sample = _compiled({"vec": NAN})
    per_sample.set_weights(model.get_weights())
    other = per_sample.evaluate(x, y, batch_size=12, verbose=0, return_dict=True)
    assert abs(other["vec_loss"] - got["vec_loss"]) > 1e-3


# --- Bad options --------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ({"reg": {"value": NAN, "per_element": "yes"}}, r"task 'reg'.*True or False"),
        ({"reg": {"per_element": True}}, r"task 'reg'.*no 'value'"),
        ({"reg": {"value": NAN, "per_elem": True}}, r"task 'reg'.*\['per_elem'\]"),
        ({"reg": {"value": "x", "per_element": True}}, r"task 'reg'.*must be a"),
        ({"reg": {"value": {}, "per_element": True}}, r"task 'reg'.*a sentinel"),
        (
            {"reg": {"value": "sample_weight", "per_element": True}},
            r"task 'reg'.*needs a sentinel",
        ),
        ({"cls": {"value": -1, "per_element": True}}, r"task 'cls'.*scores the whole"),
        ({"value": NAN, "per_element": True}, r"given per task.*\['cls', 'reg'\]"),
    ],
)
def test_bad_per_element_options_name_the_task(missing, message):
    model = two_task_mlp()
    with pytest.raises(ValueError, match=message):
        model.compile(optimizer="sgd", loss=TWO_TASK_LOSSES, missing_labels=missing)


def test_per_element_false_is_the_plain_sentinel():
    model = two_task_mlp()
    model.compile(
        optimizer="sgd",
        loss=TWO_TASK_LOSSES,
        missing_labels={"cls": {"value": -1, "per_element": False}},
    )
    assert model._options.task_losses.missing_labels == {"cls": -1}
